"""Shared fixtures: a live tracer on the real kernel, and namespace operations to trace.

Everything here runs for real: the BPF object is loaded into the running
kernel, operations are real syscalls made by real processes, and /proc is
the real one. These tests need root; CI runs them as root.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The tests exercise nstrace as installed in .venv (the wheel scripts/setup.sh builds), not this
# checkout's files: `python -m pytest` puts the checkout first on sys.path, so it goes to the end,
# behind site-packages, before anything imports nstrace (bench/ is still found there; tests/test_wheel.py
# checks which nstrace was imported).
_checkout = [p for p in sys.path if Path(p or os.curdir).resolve() == ROOT]
sys.path[:] = [p for p in sys.path if p not in _checkout] + _checkout

import pytest  # noqa: E402

from nstrace.tracing.tracer import Options, Tracer  # noqa: E402

from nshelpers import namespace_holder  # noqa: E402


def root_skip_reason(why):
    """Why a test that needs root is skipped here, or None when running as root (as CI does)."""
    return None if os.geteuid() == 0 else f"{why}: needs root (CI runs as root)"


def pytest_collection_modifyitems(config, items):
    """`@pytest.mark.root("why")` (or `pytestmark = pytest.mark.root("why")`): skipped, saying why,
    unless running as root. The one place that knows how root is told."""
    for item in items:
        marker = item.get_closest_marker("root")
        if marker:
            reason = root_skip_reason(marker.args[0] if marker.args else "runs as root")
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def session_tracer():
    if root_skip_reason("loads BPF programs into the kernel"):
        pytest.skip(root_skip_reason("loads BPF programs into the kernel"))
    with Tracer(Options(poll_ms=20)) as t:
        yield t


@pytest.fixture
def function_layer(tracer):
    """For the tests of the kernel-function layer (`pytest.mark.usefixtures("function_layer")`):
    skipped, saying why, on a kernel where no function can be hooked, ours among them. Asked of the
    session's tracer when the first such test runs, not while pytest collects. The lab suite runs
    them in QEMU guests (`nstrace lab`, tests/test_lab.py), where they must pass."""
    if not any(h.kind for h in tracer.hooks):
        why = tracer.hooks[0].reason if tracer.hooks else "no function hooks planned"
        pytest.skip(f"this kernel has neither fentry nor kprobes ({why}): `nstrace lab` runs these in QEMU guests")


@pytest.fixture
def tracer(session_tracer):
    """The session's tracer, drained: what other tests did while nobody read it is gone,
    so the ring buffer has room and every record seen is this test's."""
    while session_tracer.poll(0):
        pass
    return session_tracer


@pytest.fixture(scope="session")
def ns_holder():
    """A process living in new namespaces of all eight types, to setns into (nshelpers.namespace_holder):
    it lives until the session ends, however long the suite runs."""
    if root_skip_reason("creates namespaces of every type"):
        pytest.skip(root_skip_reason("creates namespaces of every type"))
    with namespace_holder() as pid:
        yield pid
