"""nstrace watch as a user runs it: the real command, real processes, real signals."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from nshelpers import ELSEWHERE, NSTRACE, ROOT

from nstrace.errors import KernelSupportError
from nstrace.tracing.tracer import BODY_PROGRAMS, SYSCALL_PROGRAMS

REQUIRED_KEYS = {"ts", "op", "pid", "tid", "comm", "uid", "flags", "raw_flags", "ret", "errno", "child_pid",
                 "target", "ns_before", "ns_after", "changed", "nsproxy", "proc_check"}


class Watch:
    """`nstrace watch ARGS` in the background, started and known to be live."""

    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen([str(NSTRACE), "watch", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        line = self.proc.stderr.readline()
        assert "tracing live" in line, line + self.proc.stderr.read()

    def stop(self, sig=signal.SIGINT, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.communicate(timeout=timeout)

    def finish(self, timeout=10):
        """Wait for a --count watch to end by itself."""
        return self.proc.communicate(timeout=timeout)


def run_nstrace(*args, **kw):
    return subprocess.run([str(NSTRACE), *args], capture_output=True, text=True, timeout=60, **kw)


def test_json_lines(tracer):
    w = Watch("--json", "--comm", "unshare", "--count", "2")
    subprocess.run(["unshare", "--uts", "true"], check=True)
    subprocess.run(["unshare", "--ipc", "--net", "true"], check=True)
    out, err = w.finish()
    assert w.proc.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 2, out
    for rec in records:
        assert REQUIRED_KEYS <= set(rec)
        assert set(rec["ns_before"]) == {"mnt", "uts", "ipc", "pid", "pid_for_children", "net", "user",
                                         "cgroup", "time", "time_for_children"}
    assert records[0]["flags"] == ["CLONE_NEWUTS"] and records[0]["changed"] == ["uts"]
    assert records[1]["flags"] == ["CLONE_NEWIPC", "CLONE_NEWNET"]
    assert records[1]["changed"] == ["ipc", "net"]
    assert all(r["comm"] == "unshare" and r["op"] == "unshare" for r in records)
    summary = [line for line in err.splitlines() if line.startswith("nstrace: summary ")]
    assert summary and json.loads(summary[0].split(" ", 2)[2])["lost"] == {"ringbuf": 0, "inflight": 0}


def test_table_and_summary(tracer):
    w = Watch("--comm", "unshare")
    subprocess.run(["unshare", "--pid", "--fork", "true"], check=True)
    out, err = w.stop()  # records already in the ring buffer are drained on the way out
    assert w.proc.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:6] == ["TIME", "COMM", "PID", "TID", "OP", "FLAGS"]
    rows = [line for line in lines if " unshare " in line and "NEWPID" in line]
    assert rows, out
    assert any("pid_for_children" in line and "->" in line for line in lines)
    assert "lost events: 0" in out and "unshare" in out.split("op ")[-1]


def test_pid_filter_follows_descendants(tracer):
    shell = subprocess.Popen(["sh", "-c", "read x; unshare --uts sh -c 'unshare --ipc true'"],
                             stdin=subprocess.PIPE, text=True)
    w = Watch("--json", "--pid", str(shell.pid), "--count", "2")
    subprocess.run(["unshare", "--net", "true"], check=True)  # not a descendant
    shell.communicate("go\n", timeout=10)
    out, err = w.finish()
    records = [json.loads(line) for line in out.splitlines()]
    assert [r["flags"] for r in records] == [["CLONE_NEWUTS"], ["CLONE_NEWIPC"]], out + err


def test_type_and_op_filters(tracer):
    # --comm: only this test's unshare(1) runs, not another unshare(IPC) elsewhere on the machine
    w = Watch("--json", "--type", "ipc", "--op", "unshare", "--comm", "unshare", "--count", "1")
    subprocess.run(["unshare", "--uts", "true"], check=True)
    subprocess.run(["unshare", "--ipc", "true"], check=True)
    out, _ = w.finish()
    [rec] = [json.loads(line) for line in out.splitlines()]
    assert rec["flags"] == ["CLONE_NEWIPC"]


def prog_ids_held_by(pid):
    """Ids of the BPF programs process pid holds (its fds' fdinfo: prog_id)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                ids |= {int(line.split()[1]) for line in f if line.startswith("prog_id:")}
        except FileNotFoundError:
            pass
    return ids


def kernel_prog_ids():
    """Every BPF program the kernel has loaded, from its own list (bpftool prog show)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out)}


def wait_gone(ids, timeout=5):
    # the kernel frees links and programs when the last fd closes (RCU: allow a moment)
    deadline = time.monotonic() + timeout
    while ids & kernel_prog_ids() and time.monotonic() < deadline:
        time.sleep(0.05)
    return ids & kernel_prog_ids()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_stopping_leaves_no_probe(tracer, sig):
    w = Watch()
    ids = prog_ids_held_by(w.proc.pid)
    from nstrace.bpf.probeset import (
        EXEC_PROGRAMS,  # attached on this kernel (6.10+: sched_prepare_exec)
    )
    assert len(ids) == len(SYSCALL_PROGRAMS + EXEC_PROGRAMS + BODY_PROGRAMS), \
        "the syscall layer's nine programs, its two bodies and the exec pair"
    assert ids <= kernel_prog_ids()
    out, err = w.stop(sig)
    if sig != signal.SIGKILL:
        assert w.proc.returncode == 0 and "lost events:" in out, err
    assert not wait_gone(ids)


# --- bad input: one line on stderr, a documented exit code, no traceback ------

@pytest.mark.parametrize("args,code", [
    (["watch", "--bogus"], 2),
    (["watch", "--type", "bogus"], 2),
    (["watch", "--op", "spawn"], 2),
    (["watch", "--pid", "-3"], 2),
    (["watch", "--pid", "999999999"], 2),
    (["watch", "--count", "0"], 2),
    (["watch", "--buffer-kib", "1000"], 2),
    (["nosuchcommand"], 2),
])
def test_bad_input(args, code):
    res = run_nstrace(*args)
    assert res.returncode == code, res.stderr
    assert res.stderr.startswith("nstrace: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr


def test_not_root():
    res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          str(NSTRACE), "watch"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3, res.stderr
    assert res.stderr.count("\n") == 1 and "needs root" in res.stderr


def test_missing_libbpf():
    res = run_nstrace("watch", env={**os.environ, "NSTRACE_LIBBPF": "/nonexistent/libbpf.so.1"})
    assert res.returncode == 5 and res.stderr.count("\n") == 1 and "libbpf not found" in res.stderr


def test_missing_btf():
    from nstrace.bpf import features
    with pytest.raises(KernelSupportError, match="CONFIG_DEBUG_INFO_BTF"):
        features.check_btf("/nonexistent/vmlinux")


def test_tracefs_not_mountable(tmp_path):
    from nstrace.bpf import tracefs
    with pytest.raises(KernelSupportError, match="mounting it failed"):
        tracefs.ensure_tracefs(tmp_path / "no" / "such" / "dir")  # the real mount(2) fails: ENOENT


def test_python_dash_m():
    res = subprocess.run([sys.executable, "-m", "nstrace", "--help"], capture_output=True, text=True, cwd=ELSEWHERE)
    assert res.returncode == 0 and "watch" in res.stdout


def test_exit_codes_are_one_table_and_the_readme_says_it():
    """errors.ExitCode is the table; the README's lists the same codes, and every error class
    exits with one of them."""
    import inspect
    import re

    from nstrace import errors

    section = (ROOT / "README.md").read_text().split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(n) for n in re.findall(r"^\| (\d+) \|", section, re.M)}
    table = {v for k, v in vars(errors.ExitCode).items() if k.isupper()}
    assert documented == table
    for _, cls in inspect.getmembers(errors, inspect.isclass):
        if issubclass(cls, errors.NstraceError):
            assert cls.exit_code in table, cls
