"""nstrace's pytest plugin (nstrace/pytest_plugin.py, the pytest11 entry point) as a user's test suite has
it: pytest sessions of their own, run from a directory outside this checkout (whose pyproject.toml
leaves the plugin out of nstrace's own suite), importing nstrace as installed."""

import os
import re
import subprocess
import tempfile
import textwrap

import pytest
from nshelpers import PYTHON, ROOT

pytestmark = pytest.mark.root("loads BPF programs, and runs a test suite as another user")

# The README's example, verbatim between its markers (tests/test_readme.py style: the README is what users copy)
README_EXAMPLE = re.search(r"<!-- pytest example -->\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)

FAILING = textwrap.dedent("""
    import subprocess

    def test_expects_a_mount_namespace_too(nstrace_trace):
        with nstrace_trace() as t:
            subprocess.run(["unshare", "--uts", "true"], check=True)
        assert t.created("mnt")
""")


def suite(source, *args, user=None, env=None):
    """pytest over one test file holding `source`, in a directory of its own that every user may read."""
    with tempfile.TemporaryDirectory(prefix="nstrace-plugin-") as where:
        os.chmod(where, 0o755)
        path = os.path.join(where, "test_user_suite.py")
        with open(path, "w") as f:
            f.write(source)
        os.chmod(path, 0o644)
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"] if user else []
        return subprocess.run([*as_user, PYTHON, "-m", "pytest", "-p", "no:cacheprovider", "-rs", *args, path],
                              capture_output=True, text=True, timeout=300, cwd=where,
                              env={**os.environ, "HOME": where, **(env or {})})


def test_the_readme_example_passes():
    assert README_EXAMPLE, "README.md has no <!-- pytest example --> block"
    res = suite(README_EXAMPLE.group(1))
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]


def test_a_failure_shows_the_records_of_the_block_as_a_table():
    res = suite(FAILING)
    assert res.returncode == 1, res.stdout[-3000:]
    section = res.stdout.split("nstrace: the records of the block (1, lost 0)", 1)[1]
    header, row = section.splitlines()[1:3]
    assert header.split()[:6] == ["TIME", "COMM", "PID", "TID", "OP", "FLAGS"], section
    assert row.split()[1] == "unshare" and row.split()[4] == "unshare" and row.split()[5] == "NEWUTS", section
    assert "uts" in section.splitlines()[3], section


def test_a_passing_test_shows_nothing():
    res = suite(FAILING.replace('t.created("mnt")', 't.created("uts")'), "-rA")
    assert res.returncode == 0 and "nstrace: the records" not in res.stdout, res.stdout[-3000:]


@pytest.mark.parametrize("user, env, reason", [
    ("65534", {}, "nstrace needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN): running as not root"),
    (None, {"NSTRACE_LIBBPF": "/nonexistent/libbpf.so.1"}, "libbpf not found (/nonexistent/libbpf.so.1)"),
])
def test_it_skips_where_tracing_cannot_run_saying_why(user, env, reason):
    res = suite(FAILING, user=user, env=env)
    assert res.returncode == 0 and "1 skipped" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]
    assert f"nstrace cannot trace here: {reason}" in res.stdout, res.stdout[-3000:]


def test_the_fixture_is_nstrace_trace():
    source = textwrap.dedent("""
        import inspect
        import nstrace

        def test_same_signature(nstrace_trace):
            assert inspect.signature(nstrace_trace) == inspect.signature(nstrace.trace)
            assert nstrace_trace.__doc__ == nstrace.trace.__doc__
            with nstrace_trace(ops="setns") as t:
                pass
            assert t.records == [] and t.lost == 0
    """)
    res = suite(source)
    assert res.returncode == 0, res.stdout[-3000:]
