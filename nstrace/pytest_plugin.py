"""nstrace's pytest plugin, registered through the `pytest11` entry point: wherever nstrace is installed,
every test may ask for the fixture ``nstrace_trace``.

    def test_unshare_makes_a_net_and_a_uts_namespace(nstrace_trace):
        with nstrace_trace() as t:
            subprocess.run(["unshare", "--net", "--uts", "true"], check=True)
        assert t.created("net") and t.created("uts")
        assert not t.joined()

``nstrace_trace`` is ``nstrace.trace``, remembering the traces it made: when the test fails, pytest's
report shows the records of each block as `nstrace watch`'s table. Where tracing cannot run (not
root, no BPF, no libbpf), a test that asks for it is skipped, with nstrace's own reason.

A client of the public API only (``import nstrace``): it imports nothing of nstrace at pytest's
start but the package face, which imports nothing.
"""

import contextlib
import functools

import pytest

import nstrace

_TRACES = pytest.StashKey[list]()


@functools.cache
def _cannot_trace():
    """Why tracing cannot run in this process, or None: asked once, by tracing an empty block."""
    from nstrace.errors import KernelSupportError, LibbpfError, PrivilegeError
    try:
        with nstrace.trace():
            pass
    except (PrivilegeError, KernelSupportError, LibbpfError) as e:
        return f"nstrace cannot trace here: {e}"
    return None


@pytest.fixture
def nstrace_trace(request):
    """nstrace.trace, for this test: ``with nstrace_trace(...) as t:`` (the same arguments). Skips the
    test where tracing cannot run; a failed test's report shows the records of each block."""
    why = _cannot_trace()
    if why:
        pytest.skip(why)
    traces = request.node.stash.setdefault(_TRACES, [])

    @functools.wraps(nstrace.trace)
    @contextlib.contextmanager
    def trace(**kwargs):
        with nstrace.trace(**kwargs) as t:
            traces.append(t)
            yield t
    return trace


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    traces = item.stash.get(_TRACES, None)
    if traces and report.when == "call" and report.failed:
        for n, t in enumerate(traces, 1):
            what = f"block {n} of {len(traces)}" if len(traces) > 1 else "the block"
            report.sections.append((f"nstrace: the records of {what} ({len(t.records)}, lost {t.lost})",
                                    str(t) if t.records else "(no records)"))
