"""`nstrace watch -- COMMAND`: COMMAND and its descendants from the first instruction, nothing else,
ending with COMMAND, exiting with its status. Real commands (util-linux unshare, sh), real users
(nobody), real signals; a real process doing unshare all the while beside them, which must never
appear."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from nshelpers import NSTRACE, loader_programs, programs_left_after

pytestmark = pytest.mark.root("loads BPF programs and runs commands as other users")

# unshare(CLONE_NEWUTS) in a loop, as a process that is not COMMAND's descendant
CHURN = "import ctypes, time\nlibc = ctypes.CDLL(None)\nwhile True:\n    libc.unshare(0x04000000); time.sleep(0.002)\n"


@pytest.fixture(scope="module")
def bystander():
    proc = subprocess.Popen([sys.executable, "-c", CHURN])
    yield proc.pid
    proc.kill()
    proc.wait()


def watch(*args, timeout=60, **kw):
    return subprocess.run([str(NSTRACE), "watch", *args], capture_output=True, text=True, timeout=timeout, **kw)


def records(res):
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_only_the_command_and_its_descendants_from_the_first_instruction(bystander):
    """sh's first child is unshare, whose unshare() comes within microseconds of its exec: it is in
    the trace because the probes were attached before sh ran. The bystander's calls are not."""
    res = watch("--json", "--", "sh", "-c", "unshare --uts true; unshare --ipc --net sh -c 'exit 0' & wait")
    assert res.returncode == 0, res.stderr
    recs = records(res)
    assert sorted(tuple(r["flags"]) for r in recs) == [("CLONE_NEWIPC", "CLONE_NEWNET"), ("CLONE_NEWUTS",)], recs
    assert all(r["op"] == "unshare" and r["ret"] == 0 and r["comm"] == "unshare" for r in recs)
    assert bystander not in {r["pid"] for r in recs}
    summary = json.loads(res.stderr.split("nstrace: summary ", 1)[1])
    assert summary["command"]["exit_status"] == 0 and summary["total"] == 2
    assert "tracing live (" in res.stderr and "function hooks attached); running the command" in res.stderr


def test_the_first_unshare_of_a_command_that_starts_with_it():
    """util-linux unshare makes its unshare() call right after exec: it must not race the tracer."""
    for _ in range(3):
        res = watch("--json", "--", "unshare", "--uts", "true")
        assert res.returncode == 0, res.stderr
        [rec] = records(res)
        assert rec["flags"] == ["CLONE_NEWUTS"] and rec["ret"] == 0


@pytest.mark.parametrize("script,status", [("exit 3", 3), ("kill -TERM $$", 128 + signal.SIGTERM),
                                           ("kill -KILL $$", 128 + signal.SIGKILL)])
def test_it_exits_with_the_commands_status(script, status):
    res = watch("--", "sh", "-c", script)
    assert res.returncode == status, res.stderr
    assert "total" in res.stdout  # the summary, as after any watch


@pytest.mark.parametrize("name,mode,code,words", [
    ("no-such-command-here", None, 127, ["cannot run no-such-command-here", "No such file"]),
    ("not-executable", 0o644, 126, ["not-executable", "Permission denied"]),
    ("not-a-program", 0o755, 126, ["not-a-program", "Exec format error"]),
], ids=["not-found", "not-executable", "not-a-program"])
def test_a_command_that_cannot_run_is_one_error_line(tmp_path, name, mode, code, words):
    argv = [name]
    if mode is not None:
        path = tmp_path / name
        path.write_bytes(b"\x00\x01 no program")
        path.chmod(mode)
        argv = [str(path)]
    res = watch("--json", "--", *argv)
    assert res.returncode == code, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("nstrace: error: ")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), res.stderr
    assert res.stdout == ""


def test_as_another_user_like_strace_u():
    """--user nobody: the calls are nobody's, and fail as nobody's do (no CAP_SYS_ADMIN). The flags
    of the failed call are all there, in the JSON and in the table (issue 17: they were cut)."""
    flags = ["--mount", "--cgroup", "--uts", "--ipc", "--net", "--pid"]
    res = watch("--json", "--user", "nobody", "--", "unshare", *flags, "true")
    assert res.returncode == 1, res.stderr  # unshare's own status: it failed
    [rec] = records(res)
    assert rec["uid"] == 65534 and rec["errno"] == "EPERM" and rec["ret"] == -errno.EPERM
    assert set(rec["flags"]) == {"CLONE_NEWNS", "CLONE_NEWCGROUP", "CLONE_NEWUTS", "CLONE_NEWIPC", "CLONE_NEWNET",
                                 "CLONE_NEWPID"}
    table = watch("-u", "65534", "unshare", *flags, "true", env={**os.environ, "COLUMNS": "220"})
    text = table.stdout.split("\n\n")[0]
    for name in ("NEWNS", "NEWCGROUP", "NEWUTS", "NEWIPC", "NEWNET", "NEWPID"):
        assert name in text, text
    assert "~" not in text, text


def test_as_the_caller_by_default():
    res = watch("--json", "--", "unshare", "--uts", "true")
    [rec] = records(res)
    assert rec["uid"] == os.getuid()


def test_an_unknown_user_or_a_user_without_a_command_is_refused():
    res = watch("--user", "no-such-user-here", "--", "true")
    assert res.returncode == 2 and "no such user" in res.stderr, res.stderr
    res = watch("--user", "nobody", "--duration", "0.1")
    assert res.returncode == 2 and "--user" in res.stderr, res.stderr
    res = watch("--pid", "1", "--", "true")
    assert res.returncode == 2 and "--pid" in res.stderr, res.stderr


def test_every_watch_option_works_with_a_command(tmp_path):
    """--record (and show of it), --op, --type, --comm, --count, --all, --no-proc-check, --raw-addresses."""
    script = "unshare --uts true; unshare --ipc true; unshare --net true; sh -c true"
    session = tmp_path / "s.jsonl"
    res = watch("--record", str(session), "--op", "unshare", "--type", "ipc,net", "--", "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    shown = subprocess.run([str(NSTRACE), "show", "--json", str(session)], capture_output=True, text=True)
    assert [r["flags"] for r in records(shown)] == [["CLONE_NEWIPC"], ["CLONE_NEWNET"]]
    # --all: unshare --fork's plain fork() is a clone (sh's vfork() is a syscall of its own, not traced)
    res = watch("--json", "--all", "--no-proc-check", "--raw-addresses", "--comm", "unshare", "--",
                "sh", "-c", "unshare --fork true; sh -c true")
    recs = records(res)
    # unshare(0) first: util-linux unshare with no namespace asked for calls it all the same
    assert [(r["comm"], r["op"]) for r in recs] in ([("unshare", "unshare"), ("unshare", "clone")],
                                                    [("unshare", "unshare"), ("unshare", "clone3")]), recs
    assert recs[1]["flags"] == ["CLONE_CHILD_CLEARTID", "CLONE_CHILD_SETTID"]
    assert all(r["proc_check"] is None and r["nsproxy"]["before"].startswith("0x") for r in recs)
    # --count ends the trace; nstrace still exits with the command's status, once it has exited
    res = watch("--json", "--count", "1", "--", "sh", "-c", script + "; sleep 0.3; exit 5")
    assert res.returncode == 5 and len(records(res)) == 1, res.stderr
    assert "runs on, no longer traced" in res.stderr


def test_a_descendant_left_running_is_counted_and_not_followed():
    res = watch("--json", "--", "sh", "-c", "(sleep 2; unshare --uts true) & unshare --ipc true")
    summary = json.loads(res.stderr.split("nstrace: summary ", 1)[1])
    assert [r["flags"] for r in records(res)] == [["CLONE_NEWIPC"]]
    assert summary["command"]["untraced"] >= 1  # the subshell (and its sleep)


def test_sigterm_is_passed_on_and_watch_ends_with_the_command():
    proc = subprocess.Popen([str(NSTRACE), "watch", "--", "sleep", "30"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "tracing live" in proc.stderr.readline()
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


def test_nstrace_exits_before_the_kernel_has_detached_and_nothing_lingers():
    """The teardown goes on in a holder after nstrace exits (bpf/teardown.py): subprocess.run()
    returning proves the holder keeps no pipe of ours open; the programs go soon after."""
    before = set(loader_programs())
    res = watch("--json", "--", "true")
    assert res.returncode == 0, res.stderr
    assert not programs_left_after(before), "nstrace's programs outlived the holder"


def test_loader_programs_sees_a_live_watch():
    proc = subprocess.Popen([str(NSTRACE), "watch", "--", "sleep", "1"], stderr=subprocess.PIPE, text=True,
                            stdout=subprocess.DEVNULL)
    try:
        assert "tracing live" in proc.stderr.readline()
        assert loader_programs()
    finally:
        proc.wait(timeout=10)


def test_the_summary_table_is_laid_out_as_tabulate_would():
    """display.counts_table stands in for tabulate's "simple" format (whose import costs a short
    command ~50 ms): the same text, for any counts."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from tabulate import tabulate

    from nstrace.view import display

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["clone", "clone3", "unshare", "setns", "total"]),
                              st.integers(min_value=0, max_value=10**12)), min_size=1, max_size=5))
    def same(rows):
        rows = [list(r) for r in rows]
        assert display.counts_table(rows, ["op", "events"]) == tabulate(rows, headers=["op", "events"],
                                                                          tablefmt="simple")
    same()
