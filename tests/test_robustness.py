"""Robustness and safety: hostile names, kernel addresses, races with /proc, bad input, the launcher.

Everything runs against the real kernel as root: real processes name themselves with
prctl(PR_SET_NAME), real pids are reused through /proc/sys/kernel/ns_last_pid, real
namespace inodes are recycled, real setpriv drops real privileges.
"""

import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nshelpers import ELSEWHERE, NSTRACE, wait_for

from nstrace.check.launcher import Launcher
from nstrace.errors import LauncherError, UsageError
from nstrace.kernel import flags as fl
from nstrace.linux import nsfs, procns, syscalls
from nstrace.linux.comm import safe_comm

NEWUTS = fl.CLONE_FLAGS["CLONE_NEWUTS"]
PR_SET_NAME = 15
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 7}  # README, "Exit codes"


def unescape(text):
    """The inverse of comm.safe_comm, written from its documented rules."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        kind = text[i + 1]
        if kind in "\\nt":
            out += {"\\": b"\\", "n": b"\n", "t": b"\t"}[kind]
            i += 2
        elif kind == "x":
            out.append(int(text[i + 2:i + 4], 16))  # < 0x80: that character; >= 0x80: that raw byte
            i += 4
        else:
            width = 4 if kind == "u" else 8
            out += chr(int(text[i + 2:i + 2 + width], 16)).encode("utf-8", "surrogatepass")
            i += 2 + width
    return bytes(out)


# --- 1. hostile command names -------------------------------------------------------------

@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=15) | st.text(max_size=15).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_safe_comm_is_printable_unambiguous_and_json_safe(raw):
    text = safe_comm(raw)
    assert text.isprintable(), text          # no control character, no escape sequence, no newline
    assert unescape(text) == raw             # nothing is lost, no two names look alike
    assert json.loads(json.dumps(text, ensure_ascii=False)) == text
    text.encode("utf-8")                     # valid UTF-8: no lone surrogate survives


def test_safe_comm_examples():
    assert safe_comm(b"\x1b[2J\n\xff") == "\\x1b[2J\\n\\xff"
    # a raw 0x85 byte, U+0085 (NEL) and a literal backslash-x-8-5 all look different
    assert len({safe_comm(b"\x85"), safe_comm("\x85".encode()), safe_comm(b"\\x85")}) == 3
    assert safe_comm("a\u202eb".encode()) == "a\\u202eb"  # bidi override: shown, not obeyed
    assert safe_comm("ns-é".encode()) == "ns-é"


HOSTILE = b"\x1b[2J\x1b]0;x\x07\n\xffz"  # clear screen, set title, bell, newline, not UTF-8: 13 bytes

HOSTILE_CHILD = """
import ctypes, sys
from nstrace.linux import syscalls
sys.stdin.readline()
ctypes.CDLL(None).prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0)  # PR_SET_NAME
syscalls.unshare(0x04000000)
print("done", flush=True)
sys.stdin.readline()
"""


def hostile_watch(*args):
    """Run `nstrace watch --pid CHILD --count 1 ARGS` while CHILD renames itself HOSTILE and unshares."""
    child = subprocess.Popen([sys.executable, "-c", HOSTILE_CHILD, HOSTILE.hex()], cwd=ELSEWHERE,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        watch = subprocess.Popen([str(NSTRACE), "watch", "--pid", str(child.pid), "--count", "1", *args],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert b"tracing live" in watch.stderr.readline()
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "done\n"
        with open(f"/proc/{child.pid}/comm", "rb") as f:
            assert f.read() == HOSTILE + b"\n"  # the kernel really holds the hostile name
        out, err = watch.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
    assert watch.returncode == 0, err
    return out, child.pid


def test_hostile_comm_in_table(tracer):
    out, pid = hostile_watch()
    for bad in (b"\x1b", b"\x07", b"\xff", b"\r"):
        assert bad not in out
    lines = out.decode("utf-8").splitlines()
    rows = [line for line in lines if re.match(r"\d\d:\d\d:\d\d\.\d{3} ", line)]
    assert len(rows) == 1, out
    # the whole record is one row (plus indented detail lines): no line was broken by the name
    assert rows[0].split()[1].startswith("\\x1b[2J") and f" {pid} " in rows[0]
    for line in lines[1:lines.index("")]:
        assert line in rows or line.startswith("    "), line


def test_hostile_comm_in_json(tracer):
    out, pid = hostile_watch("--json")
    assert b"\x1b" not in out and b"\xff" not in out
    [line] = out.decode("utf-8").splitlines()
    rec = json.loads(line)
    assert rec["pid"] == pid and rec["comm"] == safe_comm(HOSTILE) == "\\x1b[2J\\x1b]0;x\\x07\\n\\xffz"
    assert unescape(rec["comm"]) == HOSTILE


# --- 2. kernel addresses ---------------------------------------------------------------------

KERNEL_POINTER = re.compile(r"(0x)?ffff[0-9a-f]{12}|\b[0-9a-f]{16}\b", re.I)


def _values(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _values(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _values(v)
    else:
        yield obj


def watch_one_unshare(*args):
    child = subprocess.Popen(["sh", "-c", "read x; unshare --uts --ipc true"], stdin=subprocess.PIPE, text=True)
    watch = subprocess.Popen([str(NSTRACE), "watch", "--json", "--pid", str(child.pid), "--count", "1", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "tracing live" in watch.stderr.readline()
    child.communicate("go\n", timeout=10)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    return out, json.loads(out)


def test_no_kernel_address_without_raw_addresses(tracer):
    out, rec = watch_one_unshare()
    assert not KERNEL_POINTER.search(out), KERNEL_POINTER.search(out)
    for v in _values(rec):
        if isinstance(v, int):
            assert v < 0xFFFF800000000000, v  # no address smuggled out as a decimal either
    for key in ("before", "after"):
        assert re.fullmatch(r"[0-9a-f]{8}", rec["nsproxy"][key]), rec["nsproxy"]
    assert rec["nsproxy"]["before"] != rec["nsproxy"]["after"]  # unshare made a new nsproxy


def test_raw_addresses_shows_kernel_addresses(tracer):
    _, rec = watch_one_unshare("--raw-addresses")
    for key in ("before", "after"):
        assert re.fullmatch(r"0xffff[0-9a-f]{12}", rec["nsproxy"][key]), rec["nsproxy"]


# --- 5. races with /proc ------------------------------------------------------------------------

def fork_unshare(hold_s=0.0, then=None):
    """A child of ours that unshares its UTS namespace, stays hold_s, then exits (or runs then())."""
    pid = os.fork()
    if pid == 0:
        try:
            syscalls.unshare(NEWUTS)
            time.sleep(hold_s)
            if then:
                then()
        finally:
            os._exit(0)
    return pid


def unshare_record(tracer, pid):
    [rec] = wait_for(tracer, lambda r: r.pid == pid and r.op == "unshare")
    return rec


def test_exited_before_proc_read_is_gone(tracer):
    pid = fork_unshare()
    os.waitpid(pid, 0)
    rec = unshare_record(tracer, pid)
    assert rec.proc_check == {"status": "gone", "pid": pid, "reason": "exited"}


def test_zombie_is_gone_not_a_partial_match(tracer):
    # exited, not yet reaped: /proc still shows its pid and user links, nothing else
    pid = fork_unshare()
    try:
        deadline = time.monotonic() + 5
        while procns._stat(pid)[0] != "Z" and time.monotonic() < deadline:
            time.sleep(0.005)
        assert set(procns.ns_links(pid)) == {"pid", "user"}
        rec = unshare_record(tracer, pid)
        assert rec.proc_check == {"status": "gone", "pid": pid, "reason": "exited"}
    finally:
        os.waitpid(pid, 0)


def _fork_with_pid(want, tries=50):
    """Fork a sleeping child that gets pid `want`, by writing ns_last_pid; None if others forked first."""
    for _ in range(tries):
        with open("/proc/sys/kernel/ns_last_pid", "w") as f:
            f.write(str(want - 1))
        pid = os.fork()
        if pid == 0:
            time.sleep(30)
            os._exit(0)
        if pid == want:
            return pid
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return None


def test_reused_pid_is_gone_not_mismatch(tracer):
    # P lives past a clock tick: /proc gives start times in ticks (10 ms), so a pid reused
    # within the tick P was born in cannot be told apart from P through /proc.
    p = fork_unshare(hold_s=0.05)
    os.waitpid(p, 0)
    q = _fork_with_pid(p)
    assert q == p, "could not get the freed pid back through ns_last_pid"
    try:
        rec = unshare_record(tracer, p)
        # Q lives in the host's UTS namespace, P's record says a new one: reading Q's links
        # would be a "mismatch"; the start time says it is another process
        assert procns.ns_links(q)["uts"] != rec.ns_after["uts"]
        assert rec.proc_check == {"status": "gone", "pid": p, "reason": "pid reused"}
    finally:
        os.kill(q, signal.SIGKILL)
        os.waitpid(q, 0)


def _unshare_many(n, report_w):
    """In a child: unshare(CLONE_NEWUTS) n times, report (inode, ns_id) after each, then hold."""
    seen = []
    for _ in range(n):
        syscalls.unshare(NEWUTS)
        seen.append((os.stat("/proc/self/ns/uts").st_ino, procns.ns_ids(os.getpid())["uts"]))
    os.write(report_w, (json.dumps(seen) + "\n").encode())
    time.sleep(30)


@pytest.fixture
def recycler(tracer):
    """A child that made 8 UTS namespaces in turn (inodes recycled), holding the last; its records."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _unshare_many(8, w)
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r) as f:
            seen = [tuple(x) for x in json.loads(f.readline())]
        records = wait_for(tracer, lambda rec: rec.pid == pid and rec.op == "unshare", count=8)
        yield pid, seen, records
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_reused_inode_is_told_apart_by_ns_id(recycler):
    pid, seen, records = recycler
    by_inode = {}
    for inode, ns_id in seen:
        by_inode.setdefault(inode, set()).add(ns_id)
    reused = {inode: ids for inode, ids in by_inode.items() if len(ids) > 1}
    assert reused, f"no UTS inode was reused in 8 namespaces: {seen}"
    assert len({ns_id for _, ns_id in seen}) == 8  # ns_id never repeats
    # the kernel record carries the same ns_id NS_GET_ID reports, so records tell them apart too
    assert [(r.ns_after["uts"], r.ns_id_after["uts"]) for r in records] == seen
    for r in records:
        assert r.changed == ["uts"] and r.ns_id_before["uts"] != r.ns_id_after["uts"]


def test_proc_check_compares_ns_id(recycler):
    pid, seen, records = recycler
    inode, now_id = seen[-1]
    stale = [ns_id for i, ns_id in seen[:-1] if i == inode]
    assert stale, seen  # an earlier, dead namespace had the inode the child is in now
    start = records[-1].start_time_ns
    assert procns.check(pid, pid, start, {"uts": inode})["status"] == "match"  # the inode alone is fooled
    assert procns.check(pid, pid, start, {"uts": inode}, {"uts": now_id})["status"] == "match"
    res = procns.check(pid, pid, start, {"uts": inode}, {"uts": stale[0]})
    assert res["status"] == "mismatch"
    assert res["diff"] == {"uts": {"kernel": inode, "proc": inode, "kernel_ns_id": stale[0], "proc_ns_id": now_id}}
    # a whole record checked with its ns_ids
    assert procns.check(pid, pid, start, records[-1].ns_after, records[-1].ns_id_after)["status"] == "match"


def test_ns_get_id_missing_falls_back_to_inodes(recycler, monkeypatch):
    pid, seen, records = recycler
    # NS_GET_ID is what this kernel answers; an nsfs ioctl number no kernel defines gets the
    # ENOTTY an older kernel gives NS_GET_ID, from the real nsfs
    fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            fcntl.ioctl(fd, 0x8008B77F, bytes(8))
        assert e.value.errno == errno.ENOTTY
    finally:
        os.close(fd)
    monkeypatch.setattr(nsfs, "NS_GET_ID", 0x8008B77F)
    monkeypatch.setattr(procns, "_ns_get_id_works", None)
    inode, now_id = seen[-1]
    stale = [ns_id for i, ns_id in seen[:-1] if i == inode]
    assert procns.ns_ids(pid) is None and procns._ns_get_id_works is False
    # inode-only, as before NS_GET_ID: no error, no false mismatch
    res = procns.check(pid, pid, records[-1].start_time_ns, {"uts": inode}, {"uts": stale[0]})
    assert res == {"status": "match", "pid": pid}


# --- 6. bad input, every command ----------------------------------------------------------------

def nstrace(*args, as_nobody=False, **kw):
    argv = [*(NOBODY if as_nobody else []), str(NSTRACE), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)


def assert_one_line_error(res, code):
    assert res.returncode == code, (res.returncode, res.stderr)
    assert res.stderr.startswith("nstrace: error: ") and res.stderr.count("\n") == 1, res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("args", [
    ["watch", "--pid", "0"], ["watch", "--pid", "abc"], ["watch", "--pid", "-1"], ["watch", "--type", ","],
    ["watch", "--duration", "-1"], ["watch", "--count", "-5"],
    ["watch", "--buffer-kib", "3"], ["watch", "--buffer-kib", "99999999999"], ["watch", "--comm"],
    ["doctor", "--bogus"], ["doctor", "extra"],
    ["check", "--bogus"], ["check", "no-such-scenario"], ["check", "--json", "unshare-uts", "nope"],
    ["demo", "--op", "fork"], ["demo", "--flags", ""], ["demo", "--flags", "NEWBOGUS"], ["demo", "--flags", "|"],
    ["demo", "--op", "clone", "--flags", "NEWTIME"], ["demo", "--op", "setns", "--flags", "VM"],
    ["lab"], ["lab", "--kernel", "6.1", "--timeout", "1"], ["lab", "--kernel"],
    ["lab", "--kernel", "6.1", "--timeout", "nan"], ["lab", "--kernel", "6.1", "--timeout", "inf"],
    ["lab", "--kernel", "6.1", "--timeout", "1e308"],
])
def test_bad_input_every_command(args):
    assert_one_line_error(nstrace(*args), 2)


@pytest.mark.parametrize("command", [["watch"], ["doctor"], ["check", "unshare-uts"], ["demo"]])
def test_not_privileged_every_command(command):
    res = nstrace(*command, as_nobody=True)
    assert_one_line_error(res, 3)
    assert "needs root" in res.stderr


def test_a_bare_nstrace_prints_its_help_plainly():
    """No command: the help `nstrace --help` prints, as text on stderr (not one escaped error line),
    and exit 2: no command is bad input (README: exit codes)."""
    bare, asked = nstrace(), nstrace("--help")
    assert asked.returncode == 0 and asked.stdout.startswith("Usage: nstrace ") and "\n  watch " in asked.stdout
    assert bare.returncode == 2 and bare.stdout == "" and bare.stderr == asked.stdout, bare.stderr
    assert "\\x0a" not in bare.stderr and "Traceback" not in bare.stderr


def test_lab_unknown_kernel_is_bad_input():
    assert_one_line_error(nstrace("lab", "--kernel", "no-such-kernel"), 2)


def test_duration_nan_is_bad_input():
    assert_one_line_error(nstrace("watch", "--duration", "nan"), 2)


def test_oversized_ring_buffer_is_bad_input():
    assert_one_line_error(nstrace("watch", "--buffer-kib", "4194304", "--duration", "0.1"), 2)


def test_demo_refuses_flags_that_are_not_namespaces():
    assert_one_line_error(nstrace("demo", "--flags", "VM"), 2)


def in_private_mounts(script):
    """Run a shell script in a new, private mount namespace: what it mounts is never the host's."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=60)


def test_kernel_without_btf(tracer):
    # /sys/kernel/btf hidden under an empty tmpfs, in our own mount namespace
    res = in_private_mounts(f"mount -t tmpfs none /sys/kernel/btf; exec {NSTRACE} watch --duration 0.2")
    assert_one_line_error(res, 4)
    assert "CONFIG_DEBUG_INFO_BTF" in res.stderr


def test_missing_tracefs(tracer, tmp_path):
    # /sys/kernel without a tracing directory (BTF kept): tracefs cannot be mounted anywhere
    res = in_private_mounts(f"mkdir -p {tmp_path}/btf; mount --bind /sys/kernel/btf {tmp_path}/btf; "
                            f"mount -t tmpfs none /sys/kernel; mkdir /sys/kernel/btf; "
                            f"mount --move {tmp_path}/btf /sys/kernel/btf; "
                            f"exec {NSTRACE} watch --duration 0.2")
    assert_one_line_error(res, 4)
    assert "tracefs" in res.stderr and "No such file or directory" in res.stderr


def test_read_only_tracefs_is_enough(tracer):
    # attaching only reads tracefs (a tracepoint's id): a read-only mount works
    res = in_private_mounts(f"umount -l /sys/kernel/tracing 2>/dev/null || true; "
                            f"mount -t tracefs -o ro nodev /sys/kernel/tracing; "
                            f"exec {NSTRACE} watch --json --duration 0.3")
    assert res.returncode == 0, res.stderr
    assert "tracing live" in res.stderr


def test_tracefs_read_only_filesystem_under_it(tracer):
    # tracefs not mounted and /sys/kernel read-only: mounting on a read-only directory still works
    res = in_private_mounts("umount -l /sys/kernel/tracing 2>/dev/null || true; "
                            "mount -o remount,bind,ro /sys/kernel 2>/dev/null || mount -o bind,ro /sys/kernel /sys/kernel; "
                            f"exec {NSTRACE} watch --duration 0.3")
    assert res.returncode == 0, res.stderr


# Property tests: the parsers and the whole CLI never trace back, and every error is one line.

@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=40) | st.lists(st.sampled_from(
    [*fl.CLONE_FLAGS, *(n.removeprefix("CLONE_").lower() for n in fl.CLONE_FLAGS), "0x20000", "7", "", " ",
     "bogus", "0x", "-1", "NEWNET\n"]), max_size=5).map(lambda xs: "|".join(xs)))
def test_parse_flags_property(text):
    try:
        value = fl.parse_flags(text)
    except UsageError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert isinstance(value, int) and value >= 0
    assert fl.parse_flags(hex(value)) == value


@settings(max_examples=3000, deadline=None)
@given(st.text(max_size=40) | st.lists(st.sampled_from(
    [*fl.NS_TYPES, *fl.NS_TYPES.values(), "NEWNS", "newnet", "net", "bogus", "", " "]), max_size=5).map(",".join))
def test_parse_ns_types_property(text):
    try:
        types = fl.parse_ns_types(text)
    except UsageError as e:
        assert "\n" not in str(e) and str(e)
        return
    assert types and set(types) <= set(fl.NS_TYPES)


TOKENS = ["--pid", "--comm", "--op", "--type", "--all", "--json", "--duration", "--count", "--raw-addresses",
          "--no-proc-check", "--buffer-kib", "--flags", "--list", "--bogus", "-h", "--version",
          "1", "0", "-1", "-0", "1e999", "nan", "abc", "NEWPID|NEWNS", "clone", "setns", "uts,net", "",
          "unshare-uts", "no-such", "\x1b[31m", "é", "4096", "99999999999999999999"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["watch", "check", "demo", "doctor", "nosuch"]),
       # no NUL and no lone surrogate: an argv word cannot hold either (execve takes C strings of bytes)
       st.lists(st.sampled_from(TOKENS) | st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=8),
                max_size=4))
def test_cli_property(command, args):
    # as nobody: whatever parses cleanly stops at the privilege check (3) instead of running
    res = nstrace(command, *args, as_nobody=True)
    assert res.returncode in EXIT_CODES, res
    assert "Traceback" not in res.stderr
    if res.returncode:
        assert res.stderr.startswith("nstrace: error: ") and res.stderr.count("\n") == 1, res.stderr
    else:
        assert res.stderr == "", res.stderr


def test_cli_main_in_process_never_raises(capsys):
    from nstrace.cli.main import main
    for argv in (["watch", "--pid", "x"], ["demo", "--flags", "NOPE"], ["check", "zzz"], ["--nope"],
                 ["lab", "--timeout", "-1", "--kernel", "6.1"], ["watch", "--type", "bogus"]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("nstrace: error: ") and err.count("\n") == 1, (argv, err)


# --- 7. the launcher ------------------------------------------------------------------------------

def caps_of(pid):
    status = dict(line.split(":\t", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":\t" in line)
    return {k: int(status[k], 16) for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}, \
        int(status["NoNewPrivs"])


def test_holders_keep_no_privilege_and_can_still_be_joined(tmp_path):
    with Launcher(state_dir=tmp_path) as lnch:
        for types in (["uts", "net"], ["user", "uts", "pid"]):
            holder = lnch.holder(types)
            caps, nnp = caps_of(holder)
            assert caps == dict.fromkeys(caps, 0) and nnp == 1, (types, caps, nnp)
            for t in types:
                h = lnch.nsop({"op": "setns", "ns_path": f"/proc/{holder}/ns/{t}", "flags": 0})
                assert h.report["ret"] == 0 and h.report.get("errno") is None, h.report
                entry = "pid_for_children" if t == "pid" else t
                assert h.report["ns"][entry] == os.stat(f"/proc/{holder}/ns/{t}").st_ino


LAUNCHER_SCRIPT = """
import sys, time
from nstrace.check.launcher import Launcher
l = Launcher(state_dir=sys.argv[1])
h = l.holder(["uts", "net"])
n = l.nsop({"op": "unshare", "flags": 0x04000000})
print(h, n.pid, flush=True)
time.sleep(600)
"""


def test_killed_launcher_leaves_no_process_running(tmp_path):
    """Killed with SIGKILL, the launcher's children die with it at once, not at the next launcher."""
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER_SCRIPT, str(tmp_path)], cwd=ELSEWHERE,
                            stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    state = json.loads(next(tmp_path.glob("launcher-*.json")).read_text())
    made = [(r["value"], r["start"]) for r in state["resources"] if r["kind"] == "process"]
    assert len(made) == 3 and set(pids) <= {p for p, _ in made}
    assert all(procns.start_ticks(p) == s for p, s in made)
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while any(procns._alive_ticks(p, p) == s for p, s in made) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p for p, s in made if procns._alive_ticks(p, p) == s], "a launcher child outlived it"
    with Launcher(state_dir=tmp_path):
        pass  # the state file (and its netns-less leftovers) is still reaped


def test_launcher_run_refuses_the_hosts_network(tmp_path):
    host_links = socket.if_nameindex()
    with Launcher(state_dir=tmp_path) as lnch:
        ours = lnch.netns("guard")
        refused = [
            ["ip", "link", "add", "nst-evil", "type", "dummy"],
            ["/sbin/ip", "link", "set", "lo", "down"],
            ["ip", "-n", "nstrace-00000000-other", "link", "show"],  # the right shape, not ours
            ["ip", "netns", "exec", "nstrace-00000000-other", "true"],
            ["ip", "-n", ours, "link", "add", "nst-a", "type", "veth", "peer", "name", "nst-b", "netns", "1"],
            ["ip", "-batch", "/dev/null"],
            ["ip", "-n"],
            ["ip", "netns", "exec"],
        ]
        for argv in refused:
            with pytest.raises(LauncherError) as e:
                lnch.run(argv)
            assert e.value.exit_code == 6 and "\n" not in str(e.value), argv
        # confined commands run
        lnch.run(["ip", "-n", ours, "link", "add", "nst-d", "type", "veth", "peer", "name", "nst-e"])
        assert "nst-d" in lnch.run(["ip", "-o", "-n", ours, "link", "show"])
        assert "nst-d" in lnch.run(["ip", "netns", "exec", ours, "ip", "-o", "link", "show"])
        lnch.run(["true"])  # not ip: not the guard's business
    assert socket.if_nameindex() == host_links


# --- 8. faults: a full disk, stdout on /dev/full or closed, a reader that goes away --------------

def _unshares(n, stop=None):
    """n unshares (until stop, a process, has ended)."""
    for _ in range(n):
        if stop is not None and stop.poll() is not None:
            return
        subprocess.run(["unshare", "--uts", "true"], check=True)


def test_watch_record_on_a_full_disk(tracer, tmp_path):
    # a real full disk: a 256 KiB tmpfs in watch's own mount namespace, filled up once it is live
    disk = tmp_path / "disk"
    disk.mkdir()
    script = (f"mount -t tmpfs -o size=256k none {disk}; {NSTRACE} watch --comm unshare --record {disk}/s.jsonl; "
              f"rc=$?; tail -c 300 {disk}/s.jsonl | tr -d '\\n' | tail -c 80 >&2; exit $rc")
    watch = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert "tracing live" in watch.stderr.readline()
    subprocess.run(["nsenter", f"--mount=/proc/{watch.pid}/ns/mnt", "sh", "-c",
                    f"dd if=/dev/zero of={disk}/fill bs=4k 2>/dev/null; true"], check=True)
    _unshares(400, stop=watch)
    err = watch.communicate(timeout=30)[1]
    assert watch.returncode == 7, err
    [line] = [line for line in err.splitlines() if line.startswith("nstrace: error:")]
    assert f"cannot write session file {disk}/s.jsonl: No space left on device" in line
    assert "Traceback" not in err


def test_stdout_on_dev_full(tracer, tmp_path):
    session = tmp_path / "s.jsonl"
    rec = subprocess.Popen([str(NSTRACE), "watch", "--comm", "unshare", "--count", "1", "--record", str(session)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert "tracing live" in rec.stderr.readline()
    _unshares(1)
    assert rec.wait(timeout=30) == 0
    for args in (["show", str(session)], ["show", "--json", str(session)], ["render", str(session), "--format", "perfetto"]):
        with open("/dev/full", "w") as full:
            res = subprocess.run([str(NSTRACE), *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
        assert res.returncode == 7 and res.stderr.endswith("nstrace: error: cannot write to stdout: No space left on device\n"), \
            (args, res.stderr)
    for args in (["--json"], []):
        with open("/dev/full", "w") as full:
            watch = subprocess.Popen([str(NSTRACE), "watch", "--comm", "unshare", *args], stdout=full,
                                     stderr=subprocess.PIPE, text=True)
        assert "tracing live" in watch.stderr.readline()
        _unshares(30, stop=watch)
        err = watch.communicate(timeout=30)[1]
        assert watch.returncode == 7 and "nstrace: error: cannot write to stdout: No space left on device" in err, err
        assert "Traceback" not in err


def test_stdout_closed(tmp_path):
    for args in (["show", "/etc/hostname"], ["watch", "--duration", "0.2"], ["ls"]):
        res = subprocess.run([str(NSTRACE), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             timeout=60, preexec_fn=lambda: os.close(1))
        assert_one_line_error(res, 7)
        assert "stdout is closed" in res.stderr


def _piped_to_head(command, lines):
    """bash: `nstrace COMMAND | head -LINES`; (nstrace's exit code, its stderr)."""
    r, w = os.pipe()
    rc_r, rc_w = os.pipe()
    script = f"{NSTRACE} {command} 2>&{w} {rc_w}>&- | head -{lines} >/dev/null; echo ${{PIPESTATUS[0]}} >&{rc_w}"
    proc = subprocess.Popen(["bash", "-c", script], pass_fds=(w, rc_w), stdin=subprocess.DEVNULL)
    os.close(w)
    os.close(rc_w)
    return proc, os.fdopen(r), os.fdopen(rc_r)


def test_broken_pipe_ends_quietly_and_closes_the_record(tracer, tmp_path):
    session = tmp_path / "s.jsonl"
    for command, lines, record in (("watch --json --comm unshare", 1, False),
                                   (f"watch --comm unshare --record {session}", 2, True),
                                   (f"watch --json --comm unshare --record {session}", 1, True)):
        proc, err, rc = _piped_to_head(command, lines)
        assert "tracing live" in err.readline()
        _unshares(20, stop=proc)
        proc.wait(timeout=30)
        rest = err.read()
        assert rc.read().strip() == "0", (command, rest)
        assert "error" not in rest and "Traceback" not in rest and "Exception" not in rest, (command, rest)
        if "--json" in command:
            assert "nstrace: summary {" in rest, rest
        if record:
            last = json.loads(session.read_text().splitlines()[-1])
            assert last["kind"] == "end" and last["records"] >= lines, last
            assert f"session written to {session}" in rest
    proc, err, rc = _piped_to_head(f"show --json {session}", 1)
    proc.wait(timeout=30)
    rest = err.read()
    assert rc.read().strip() == "0" and "Traceback" not in rest and "error" not in rest, rest


def test_watch_and_ls_never_import_the_session_validator(tmp_path):
    # the validator is for reading sessions: watch (even --record) and ls must not pay for it
    for args in (["watch", "--duration", "0.1"], ["watch", "--duration", "0.1", "--record", str(tmp_path / "s.jsonl")],
                 ["ls"]):
        res = subprocess.run([sys.executable, "-X", "importtime", "-m", "nstrace", *args], capture_output=True,
                             text=True, timeout=60, cwd=ELSEWHERE)
        assert res.returncode == 0, res.stderr[-2000:]
        imported = {line.rsplit("|", 1)[-1].strip() for line in res.stderr.splitlines() if line.startswith("import time:")}
        assert not {m for m in imported if "jsonschema" in m or m == "nstrace.session._schema"}, args
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "nstrace", "show", str(tmp_path / "s.jsonl")],
                         capture_output=True, text=True, timeout=60, cwd=ELSEWHERE)
    assert "nstrace.session._schema" in res.stderr and "| jsonschema" not in res.stderr  # (the check is not blind)
