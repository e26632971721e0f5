"""watch's options mean what they say, and each failure has its own exit code and one clear line.

--pid with a thread id, empty --op/--comm/--record, names no process can have; demo and check
without the privilege to make namespaces; tracefs there but not readable, or not mountable; a BPF
object the kernel refuses. Real processes, real setpriv, real mounts in a private mount namespace,
the real verifier.
"""

import json
import os
import struct
import subprocess
import sys

import pytest
from nshelpers import ELSEWHERE, NSTRACE

from nstrace.bpf import loader
from nstrace.errors import LibbpfError
from nstrace.trace.tracer import Options, Tracer

pytestmark = pytest.mark.root("traces, drops privileges with setpriv, mounts")

# Root's uid with only what tracing takes (CAP_BPF, CAP_PERFMON): no CAP_SYS_ADMIN
TRACE_CAPS_ONLY = ["setpriv", "--inh-caps=-all,+bpf,+perfmon", "--ambient-caps=-all,+bpf,+perfmon",
                   "--bounding-set=-all,+bpf,+perfmon"]
NOBODY_TRACING = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=+bpf,+perfmon",
                  "--ambient-caps=+bpf,+perfmon"]


def nstrace(*args, prefix=(), **kw):
    return subprocess.run([*prefix, str(NSTRACE), *args], capture_output=True, text=True, timeout=60, **kw)


def assert_one_line_error(res, code, *words):
    assert res.returncode == code, (res.returncode, res.stderr)
    assert res.stderr.startswith("nstrace: error: ") and res.stderr.count("\n") == 1, res.stderr
    for word in words:
        assert word in res.stderr, res.stderr


@pytest.mark.parametrize("args,words", [
    (["--op", ""], ["--op", "valid are"]), (["--comm", " , "], ["--comm"]), (["--record", ""], ["--record"]),
    (["--comm", "systemd-journald"], ["15 bytes"]),           # 16: the kernel keeps 15
    (["--comm", "esc\x1b[31m"], ["as nstrace shows it"]),     # shown as esc\x1b[31m, never raw
    (["--comm", "\\x41"], ["as nstrace shows it"]),           # 'A' is shown as A
], ids=["op-empty", "comm-blank", "record-empty", "comm-long", "comm-raw-escape", "comm-not-canonical"])
def test_empty_or_impossible_filters_are_refused(args, words):
    assert_one_line_error(nstrace("watch", *args, "--duration", "0.1"), 2, *words)


@pytest.mark.parametrize("args,words", [
    (["--ns", str(2**64 + 3)], ["ns_id is 1 to 18446744073709551615"]),  # C cut it to 3, and followed ns_id 3
    (["--ns", "0"], ["ns_id is 1 to"]),
    (["--ns", f"net:{2**32}"], ["inode is 1 to 4294967295"]),
    (["--ns", "net:[4026531840"], ["TYPE:INODE"]),
    (["--ns", "\u0663"], ["TYPE:INODE"]),                     # Arabic-Indic 3
    (["--pid", "\u0661"], ["--pid", "not a process id"]),    # Arabic-Indic 1: click.INT took it as 1
    (["--pid", str(2**32 + 1)], ["--pid", "not a process id"]),
], ids=["ns_id-past-u64", "ns_id-0", "inode-past-u32", "ns-one-bracket", "ns-arabic-indic", "pid-arabic-indic",
        "pid-past-pid_t"])
def test_numbers_no_record_can_hold_are_refused(args, words):
    assert_one_line_error(nstrace("watch", *args, "--duration", "0.1"), 2, *words)


@pytest.mark.parametrize("args, words", [
    (["watch", "--count", "\u0663"], ["--count", "not a number of records"]),     # click.IntRange took it as 3
    (["watch", "--count", "1_0"], ["--count", "not a number of records"]),
    (["watch", "--buffer-kib", "\u0664\u0660\u0669\u0666"], ["--buffer-kib", "in ASCII digits"]),
    (["watch", "--duration", "\u0661"], ["--duration", "not a number of seconds"]),  # click.FloatRange took it
    (["watch", "--duration", "inf"], ["--duration", "not a number of seconds"]),
    (["watch", "--duration", "1e400"], ["--duration", "not a number of seconds"]),
    (["ls", "--pid", "\u0661"], ["--pid", "not a process id"]),                    # click.INT took it as 1
    (["lab", "--kernel", "6.1", "--timeout", "\u0666\u0660", "--", "doctor"], ["--timeout", "not a number"]),
], ids=["count-arabic-indic", "count-underscore", "buffer-arabic-indic", "duration-arabic-indic", "duration-inf",
        "duration-huge", "ls-pid-arabic-indic", "lab-timeout-arabic-indic"])
def test_every_number_option_takes_ascii_digits_only(args, words):
    """Every number on the command line is read as ASCII decimal digits, as --pid and --ns are:
    click's int and float types take whatever int() and float() do."""
    assert_one_line_error(nstrace(*args), 2, *words)


def _unseen_here():
    """The ops whose probes `nstrace doctor` says are not attached on this kernel."""
    from nstrace.kernel.functions import PER_TYPE_DEATHS, TREE_DEATH
    res = nstrace("doctor", "--json")
    assert res.returncode == 0, res.stderr
    attached = {r["probe"] for r in json.loads(res.stdout)["probes"] if r["attached"]}
    return {op for op, seen in (("exec", "sched:sched_prepare_exec" in attached),
                                ("open_tree", "syscalls:sys_exit_open_tree" in attached),
                                ("fsmount", "syscalls:sys_exit_fsmount" in attached),
                                ("free", attached & {TREE_DEATH, *PER_TYPE_DEATHS})) if not seen}


def test_an_op_this_kernel_cannot_see_is_said_and_the_watch_goes_on():
    """--op free where no death can be hooked (this host: no function layer), exec before 6.10,
    open_tree and fsmount without their 7.x flags: one warning line each, and the other ops are traced."""
    unseen = _unseen_here()
    res = nstrace("watch", "--json", "--op", "free,exec,open_tree,fsmount,unshare", "-o", "-",
                  "--", "unshare", "--uts", "true")
    assert res.returncode == 0, res.stderr
    warned = {line.split()[3] for line in res.stderr.splitlines() if line.startswith("nstrace: warning: --op ")}
    assert warned == unseen, res.stderr
    assert all("matches nothing here" in line for line in res.stderr.splitlines() if "warning" in line)
    assert [json.loads(line)["op"] for line in res.stdout.splitlines()] == ["unshare"]


THREAD = """
import sys, threading
from nstrace.linux import syscalls
def thread():
    print(threading.get_native_id(), flush=True)
    sys.stdin.readline()
    syscalls.unshare(0x04000000)  # CLONE_NEWUTS: this thread alone
    print("done", flush=True)
t = threading.Thread(target=thread)
t.start()
t.join()
sys.stdin.readline()
"""


def test_pid_of_a_thread_follows_its_process():
    proc = subprocess.Popen([sys.executable, "-c", THREAD], cwd=ELSEWHERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        tid = int(proc.stdout.readline())
        assert tid != proc.pid and os.path.exists(f"/proc/{tid}")  # no listing shows it, but it is there
        watch = subprocess.Popen([str(NSTRACE), "watch", "--pid", str(tid), "--json", "--count", "1"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        note = watch.stderr.readline()
        assert f"--pid {tid}: a thread of process {proc.pid}" in note, note
        assert "tracing live" in watch.stderr.readline()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "done\n"
        out, err = watch.communicate(timeout=15)
    finally:
        proc.kill()
        proc.wait()
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    rec = json.loads(out)
    assert (rec["op"], rec["pid"], rec["tid"]) == ("unshare", proc.pid, tid)


@pytest.mark.parametrize("command", [["demo"], ["demo", "--op", "unshare", "--flags", "NEWUTS"], ["check", "unshare-uts"]])
def test_making_namespaces_without_cap_sys_admin_is_not_privileged(command):
    """Root's uid with CAP_BPF and CAP_PERFMON traces, but cannot make the namespaces: exit 3, not a MISMATCH."""
    res = nstrace(*command, prefix=TRACE_CAPS_ONLY)
    assert_one_line_error(res, 3, "CAP_SYS_ADMIN")
    assert "MISMATCH" not in res.stdout


def in_private_mounts(script):
    """A shell script in a new, private mount namespace: what it mounts is never the host's."""
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                          capture_output=True, text=True, timeout=60)


def test_tracefs_mounted_but_not_readable():
    # tracefs is root's alone (0700): a user with CAP_BPF and CAP_PERFMON cannot look tracepoints up
    res = in_private_mounts("umount -l /sys/kernel/tracing 2>/dev/null || true; "
                            "mount -t tracefs nodev /sys/kernel/tracing; "
                            f"exec {' '.join(NOBODY_TRACING)} {NSTRACE} watch --duration 0.2")
    assert_one_line_error(res, 3, "tracefs", "is mounted", "may not read it")
    assert "not mounted" not in res.stderr


def test_tracefs_not_mounted_and_not_mountable_by_this_user():
    res = in_private_mounts("umount -l /sys/kernel/tracing 2>/dev/null || true; "
                            f"exec {' '.join(NOBODY_TRACING)} {NSTRACE} watch --duration 0.2")
    assert_one_line_error(res, 3, "tracefs is not mounted", "CAP_SYS_ADMIN")


def _refused_object(path):
    """A copy of nstrace's BPF object whose sys_enter_unshare program ends in an instruction that is
    not one (opcode 0): the kernel's verifier refuses the whole object at load."""
    data = bytearray(open(loader.OBJECT_PATH, "rb").read())
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i):
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    names_at = section(shstrndx)[1]
    for i in range(shnum):
        name, offset, size = section(i)
        if data[names_at + name:].split(b"\0", 1)[0] == b"tracepoint/syscalls/sys_enter_unshare":
            data[offset + size - 8:offset + size] = bytes(8)
            break
    else:
        raise AssertionError("no sys_enter_unshare section")
    path.write_bytes(bytes(data))
    return path


def test_the_kernels_refusal_is_the_error_shown(tmp_path):
    """Closing after a failed load must not read the object's .bss (no fd: "fd of map .bss"), which
    hid the kernel's refusal behind a second error."""
    bad = _refused_object(tmp_path / "refused.bpf.o")
    tracer = Tracer(Options(), object_path=bad)
    with pytest.raises(LibbpfError) as e:
        tracer.start()
    assert "the kernel refused nstrace's BPF programs" in str(e.value), e.value
    assert ".bss" not in str(e.value)
    assert tracer.lost == {"ringbuf": 0, "inflight": 0}  # and after, nothing reads the dead object either


@pytest.mark.parametrize("args,words", [(["--record", ""], ["--record"]), (["--picture", "svg", "-o", " "], ["file name"])],
                         ids=["record-empty", "picture-out-blank"])
def test_demo_refuses_an_empty_file_name(args, words):
    assert_one_line_error(nstrace("demo", *args), 2, *words)


def test_root_of_a_user_namespace_is_not_privileged():
    """Root inside an unprivileged user namespace holds every capability, but only over that
    namespace: the kernel checks CAP_BPF and CAP_PERFMON in the initial one (kernel/bpf/syscall.c
    bpf_capable(), 6.18). nstrace says so before it loads anything."""
    res = nstrace("watch", "--duration", "0.1",
                  prefix=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          "unshare", "--user", "--map-root-user"])
    assert_one_line_error(res, 3, "user namespace")
