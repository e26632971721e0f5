"""`nstrace watch -- COMMAND`: COMMAND and its descendants from the first instruction, nothing else,
ending with COMMAND, exiting with its status; the trace on stderr or -o FILE, never in COMMAND's
stdout. Real commands (util-linux unshare, sh), real users (nobody), real signals; a real process
doing unshare all the while beside them, which must never appear."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
from nshelpers import NSTRACE, loader_programs, programs_left_after
from test_cli import prog_ids_held_by, wait_gone

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
    """The JSON lines of a watch -- COMMAND: on stderr, between nstrace's status lines."""
    return [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]


def summary_of(res):
    return json.loads(res.stderr.split("nstrace: summary ", 1)[1].splitlines()[0])


def test_only_the_command_and_its_descendants_from_the_first_instruction(bystander):
    """sh's first child is unshare, whose unshare() comes within microseconds of its exec: it is in
    the trace because the probes were attached before sh ran. The bystander's calls are not."""
    res = watch("--json", "--", "sh", "-c", "unshare --uts true; unshare --ipc --net sh -c 'exit 0' & wait")
    assert res.returncode == 0, res.stderr
    recs = records(res)
    assert sorted(tuple(r["flags"]) for r in recs) == [("CLONE_NEWIPC", "CLONE_NEWNET"), ("CLONE_NEWUTS",)], recs
    assert all(r["op"] == "unshare" and r["ret"] == 0 and r["comm"] == "unshare" for r in recs)
    assert bystander not in {r["pid"] for r in recs}
    summary = summary_of(res)
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
    assert "total" in res.stderr and "total" not in res.stdout  # the summary, with the trace


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
    text = table.stderr.split("\n\n")[0]
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
    assert [json.loads(line)["flags"] for line in shown.stdout.splitlines()] == [["CLONE_NEWIPC"], ["CLONE_NEWNET"]]
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
    summary = summary_of(res)
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
    """reports.counts_table stands in for tabulate's "simple" format (whose import costs a short
    command ~50 ms): the same text, for any counts."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from tabulate import tabulate

    from nstrace.view import reports

    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(["clone", "clone3", "unshare", "setns", "total"]),
                              st.integers(min_value=0, max_value=10**12)), min_size=1, max_size=5))
    def same(rows):
        rows = [list(r) for r in rows]
        assert reports.counts_table(rows, ["op", "events"]) == tabulate(rows, headers=["op", "events"],
                                                                          tablefmt="simple")
    same()


# --- the trace has a stream of its own (issue 22) ----------------------------------------------

PRINTS = "for i in 1 2 3 4 5 6 7; do echo line $i; unshare --uts true; done"
LINES = [f"line {i}" for i in range(1, 8)]


def test_the_trace_and_the_commands_output_never_share_a_stream(tmp_path):
    """COMMAND keeps stdout: the trace goes to stderr (as strace's), or with -o to a file of its own,
    which `render` then takes as it is (it failed on prog's lines between the JSON)."""
    res = watch("--json", "--", "sh", "-c", PRINTS)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == LINES
    assert len(records(res)) == 7
    assert all(line.startswith(("{", "nstrace: ")) for line in res.stderr.splitlines()), res.stderr

    trace = tmp_path / "trace.jsonl"
    res = watch("--json", "-o", str(trace), "--", "sh", "-c", PRINTS)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == LINES
    assert all(line.startswith("nstrace: ") for line in res.stderr.splitlines()), res.stderr
    assert [json.loads(line)["flags"] for line in trace.read_text().splitlines()] == [["CLONE_NEWUTS"]] * 7
    drawn = subprocess.run([str(NSTRACE), "render", str(trace), "--format", "perfetto", "-o",
                            str(tmp_path / "trace.json")], capture_output=True, text=True, timeout=60)
    assert drawn.returncode == 0, drawn.stderr

    table = tmp_path / "trace.txt"
    res = watch("--output", str(table), "--", "sh", "-c", PRINTS)
    assert res.stdout.splitlines() == LINES
    text = table.read_text()
    assert text.startswith("TIME ") and text.count("NEWUTS") == 7 and "command: pid" in text, text
    assert "NEWUTS" not in res.stderr

    # '-': stdout, as asked (a quiet command's trace into a pipe)
    res = watch("--json", "-o", "-", "--", "unshare", "--uts", "true")
    assert [json.loads(line)["flags"] for line in res.stdout.splitlines()] == [["CLONE_NEWUTS"]]


def test_o_takes_a_system_wide_trace_too(tmp_path):
    trace = tmp_path / "trace.jsonl"
    proc = subprocess.Popen([str(NSTRACE), "watch", "--json", "-o", str(trace), "--comm", "unshare", "--count", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "tracing live" in proc.stderr.readline()
        subprocess.run(["unshare", "--uts", "true"], check=True)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and out == "", err
    [rec] = [json.loads(line) for line in trace.read_text().splitlines()]
    assert rec["comm"] == "unshare" and rec["flags"] == ["CLONE_NEWUTS"]


def test_o_and_record_cannot_be_one_file(tmp_path):
    path = tmp_path / "same.jsonl"
    res = watch("--json", "-o", str(path), "--record", f"{tmp_path}/./same.jsonl", "--", "true")
    assert res.returncode == 2 and res.stderr.startswith("nstrace: error: -o ") and res.stderr.count("\n") == 1, \
        res.stderr


def _block_stops():
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))


@pytest.mark.parametrize("parent_blocks", [False, True], ids=["as-started", "started-blocked"])
def test_the_command_starts_with_no_signal_blocked_or_ignored(parent_blocks):
    """nstrace blocks SIGINT, SIGTERM and SIGHUP to read them from a signalfd; a blocked mask
    survives fork and exec: COMMAND must start as it would from here, whatever nstrace inherited."""
    show = ["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]
    res = watch("--", *show, preexec_fn=_block_stops if parent_blocks else None)
    assert res.returncode == 0, res.stderr
    assert res.stdout == subprocess.run(show, capture_output=True, text=True).stdout
    assert "SigBlk:\t0000000000000000" in res.stdout


# --- --count: the summary says what was shown; the programs go when the trace ends ------------

# ten unshare() calls within microseconds: one batch of the reader
BURST = "import ctypes, time\nlibc = ctypes.CDLL(None)\ntime.sleep(0.3)\nfor _ in range(10):\n" \
        "    libc.unshare(0x04000000)\n"


@pytest.mark.parametrize("how", [["--json", "--record"], ["--json"], []], ids=["recorded", "json", "table"])
def test_count_the_summary_and_the_end_line_agree_with_what_was_shown(tmp_path, how):
    """--count 3 shows 3 records: the summary's total is 3, and the end line of the record file
    agrees; records read beyond them are counted as read and not shown."""
    session = tmp_path / "s.jsonl"
    args = [*how, str(session)] if "--record" in how else how
    res = watch(*args, "--count", "3", "--", sys.executable, "-c", BURST)
    assert res.returncode == 0, res.stderr
    if "--json" in how:
        assert len(records(res)) == 3
        summary = summary_of(res)
        assert summary["total"] == 3 and summary["events"] == {"unshare": 3}, summary
        assert 3 + summary["unshown"] <= 10
    else:
        assert res.stderr.count("NEWUTS") == 3
        assert re.search(r"^total +3$", res.stderr, re.M), res.stderr
        unshown = re.search(r"^read after --count was reached, not shown: (\d+)$", res.stderr, re.M)
        assert unshown is None or 0 < int(unshown.group(1)) <= 7
    if "--record" in how:
        end = json.loads(session.read_text().splitlines()[-1])
        assert end["records"] == 3 == end["summary"]["total"], end


def test_count_detaches_the_programs_when_the_trace_ends_not_when_the_command_does():
    proc = subprocess.Popen([str(NSTRACE), "watch", "--json", "--count", "1", "--", "sh", "-c",
                             "sleep 0.5; unshare --uts true; sleep 5; exit 4"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert "tracing live" in proc.stderr.readline()
        ours = prog_ids_held_by(proc.pid)
        assert ours
        for line in proc.stderr:
            if "runs on, no longer traced" in line:
                break
        assert not wait_gone(ours, timeout=3), "the programs stayed attached while COMMAND ran on"
        assert proc.poll() is None  # still waiting for COMMAND
        # the holder that detached them is no zombie of nstrace's meanwhile: COMMAND is its one child
        children = psutil.Process(proc.pid).children()
        assert [c.name() for c in children] == ["sh"] and children[0].status() != psutil.STATUS_ZOMBIE
        rest = proc.stderr.read()
        assert proc.wait(timeout=10) == 4
        assert "nstrace: sh (pid " in rest and "exited: exit status 4" in rest, rest
    finally:
        proc.kill()
        proc.wait()


# --- what COMMAND is ---------------------------------------------------------------------------

def test_an_empty_command_name_is_one_error_line():
    res = watch("--", "")
    assert res.returncode == 127, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("nstrace: error: ")]
    assert errors == ["nstrace: error: cannot run '': No such file or directory"], res.stderr


def test_a_double_dash_with_nothing_after_it_is_a_usage_error():
    """Not a system-wide watch, which would run until stopped (this one times out then)."""
    for args in (["--"], ["--json", "--count", "1", "--"]):
        res = watch(*args, timeout=20)
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("nstrace: error: nothing after --") and res.stderr.count("\n") == 1, res.stderr
