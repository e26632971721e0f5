"""nstrace as a Python library (nstrace/api.py, README "Python library"): trace(), run(), ls(), load(),
Record and Trace, on the real kernel, with real programs (util-linux unshare and nsenter, sh) and real
users; and the same API inside a Debian kernel under QEMU, where the function layer runs."""

import ctypes
import errno
import json
import os
import shutil
import signal
import subprocess
import textwrap
import threading
import time

import pytest
from nshelpers import ELSEWHERE, NSTRACE, PYTHON
from test_cli import kernel_prog_ids, prog_ids_held_by, wait_gone

import nstrace
from nstrace.errors import CommandNotRun, PrivilegeError, UsageError

pytestmark = pytest.mark.root("loads BPF programs and makes namespaces")

CLONE_NEWUTS = 0x04000000
_libc = ctypes.CDLL(None, use_errno=True)


def unshare(flags):
    assert _libc.unshare(flags) == 0, os.strerror(ctypes.get_errno())


def in_child(fn):
    """fn() in a forked child (the test process keeps its namespaces); the child's pid, reaped."""
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    return pid


# --- trace() ---------------------------------------------------------------------------------

def test_the_blocks_first_line_is_traced():
    """The probes are live when `with` enters: a call on the block's first line is a record, with every
    field of the JSON record as an attribute."""
    with nstrace.trace() as t:
        child = in_child(lambda: unshare(CLONE_NEWUTS))
    [rec] = t.records
    assert (rec.op, rec.pid, rec.flags, rec.ret, rec.errno, rec.changed) == \
        ("unshare", child, ["CLONE_NEWUTS"], 0, None, ["uts"])
    assert rec.ns_before["uts"] != rec.ns_after["uts"] and rec.nsproxy["before"] != rec.nsproxy["after"]
    assert rec.created("uts") and rec.created() and not rec.created("net") and not rec.joined()
    assert t.created("uts") and not t.joined() and t.lost == 0 and t.exit_status is None
    assert json.loads(rec.to_json())["op"] == "unshare" and "\n" not in rec.to_json()


def test_the_block_is_the_process_its_threads_and_descendants_and_nothing_else():
    """Every thread of the process that runs the block, and every process it forks, is traced; another
    process, which is no descendant, is not, though it works all the while."""
    churn = "import ctypes, time\nwhile True:\n    ctypes.CDLL(None).unshare(0x08000000); time.sleep(0.002)"
    # started from a shell that exits at once: reparented to init, it is no descendant of ours
    started = subprocess.run(["sh", "-c", '"$0" -c "$1" >/dev/null 2>&1 & echo $!', PYTHON, churn],
                             capture_output=True, text=True, check=True)
    bystander = int(started.stdout)
    tids = []
    try:
        time.sleep(0.2)
        with nstrace.trace() as t:
            # a thread's namespaces are its own: they go with it
            thread = threading.Thread(target=lambda: (tids.append(threading.get_native_id()), unshare(CLONE_NEWUTS)))
            thread.start()
            thread.join()
            subprocess.run(["unshare", "--net", "true"], check=True)
            time.sleep(0.1)
    finally:
        os.kill(bystander, signal.SIGKILL)
    assert [(r.pid, r.tid, r.flags) for r in t.records if r.comm != "unshare"] == \
        [(os.getpid(), tids[0], ["CLONE_NEWUTS"])], t.records
    assert [r.flags for r in t.records if r.comm == "unshare"] == [["CLONE_NEWNET"]], t.records


def test_another_process_and_its_descendants_with_pid():
    holder = subprocess.Popen(["sh", "-c", "read line; unshare --uts true"], stdin=subprocess.PIPE, text=True)
    try:
        with nstrace.trace(pid=holder.pid) as t:
            in_child(lambda: unshare(CLONE_NEWUTS))  # this process: not followed
            holder.communicate("go\n", timeout=10)
    finally:
        holder.kill()
    assert [(r.comm, r.ppid) for r in t.records] == [("unshare", holder.pid)], t.records


def test_filters_are_watchs():
    with nstrace.trace(ops="setns", types=["uts"]) as t:
        in_child(lambda: unshare(CLONE_NEWUTS))
    assert t.records == []
    with nstrace.trace(types="net") as t:
        subprocess.run(["unshare", "--uts", "true"], check=True)
        subprocess.run(["unshare", "--net", "true"], check=True)
    assert [r.flags for r in t.records] == [["CLONE_NEWNET"]]


def test_a_block_that_raises_still_has_its_records():
    with pytest.raises(KeyError):
        with nstrace.trace() as t:
            in_child(lambda: unshare(CLONE_NEWUTS))
            raise KeyError("the block's own")
    assert [r.op for r in t.records] == ["unshare"]


def test_records_beyond_the_ring_buffer_are_counted_and_warned():
    """Records wait in the kernel until the block ends: what does not fit is counted, and said."""
    loop = "import ctypes\nlibc = ctypes.CDLL(None)\nfor _ in range(30000):\n    libc.unshare(0x04000000)\n"
    with pytest.warns(RuntimeWarning, match=r"records lost \(\d+ ringbuf\)"):
        with nstrace.trace() as t:
            subprocess.run([PYTHON, "-c", loop], check=True)
    assert t.lost > 0 and len(t.records) + t.lost == 30000, (len(t.records), t.lost)


def test_bad_arguments_are_the_commands_usage_errors():
    for kwargs, words in (({"ops": "nope"}, "unknown operation 'nope'"), ({"types": ["uts", "bogus"]}, "bogus"),
                          ({"namespaces": "net:x"}, "TYPE:INODE"), ({"pid": "1"}, "an int"),
                          ({"pid": 2**22 + 12345}, "no such process")):
        with pytest.raises(UsageError, match=words):
            with nstrace.trace(**kwargs):
                pass
    with nstrace.trace() as t:
        pass
    with pytest.raises(UsageError, match="valid types are mnt, uts"):
        t.created("NEWUTS")


# --- leaving, and a thousand blocks --------------------------------------------------------------

def test_leaving_does_not_wait_for_the_detach():
    """The kernel detaches a tracepoint in a grace period or two each (bpf/teardown.py): leaving the block
    hands that to a holder, so the programs are still attached a moment after the block has ended, and
    gone soon after."""
    before = prog_ids_held_by(os.getpid())  # a session tracer of other tests, if one ran first
    with nstrace.trace():
        ids = prog_ids_held_by(os.getpid()) - before
        started = time.monotonic()
    left = time.monotonic() - started
    attached = ids & kernel_prog_ids()
    assert ids and not ids & prog_ids_held_by(os.getpid())
    assert attached or left < 0.2, f"leaving took {left:.3f} s: it waited for the detach"
    assert not wait_gone(ids, timeout=10)


THOUSAND = textwrap.dedent("""
    import json, os, threading
    import nstrace

    def fds():
        return sorted(os.listdir("/proc/self/fd"))

    def prog_ids():
        ids = set()
        for fd in os.listdir("/proc/self/fdinfo"):
            try:
                with open(f"/proc/self/fdinfo/{fd}") as f:
                    ids |= {int(line.split()[1]) for line in f if line.startswith("prog_id:")}
            except FileNotFoundError:
                pass
        return ids

    with nstrace.trace():  # the first block imports what every block uses
        pass
    before, ids = fds(), set()
    for n in range(1000):
        with nstrace.trace() as t:
            if n % 100 == 0:
                ids |= prog_ids()
    print(json.dumps({"fds": [before, fds()], "threads": [threading.active_count(), len(os.listdir("/proc/self/task"))],
                      "children": open(f"/proc/self/task/{os.getpid()}/children").read().split(),
                      "held": sorted(prog_ids()), "ids": sorted(ids), "lost": t.lost}))
""")


def test_a_thousand_blocks_leave_no_fd_program_thread_or_process_behind():
    res = subprocess.run([PYTHON, "-c", THOUSAND], capture_output=True, text=True, timeout=900, cwd=ELSEWHERE)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout)
    assert out["fds"][0] == out["fds"][1], out["fds"]
    assert out["threads"] == [1, 1] and not out["children"] and not out["held"], out
    assert len(out["ids"]) >= 10 * 9, out["ids"]  # nine syscall-layer programs at least, per block sampled
    assert not wait_gone(set(out["ids"]), timeout=60), "programs of the blocks outlived their holders"


def test_the_holder_keeps_the_probes_links_and_nothing_else():
    """bpf/teardown.py: the holder takes the fds it is given (the probes' links), not every BPF fd of
    the process: a library's caller may hold BPF objects of its own, whose detach stays theirs."""
    from nstrace.bpf import teardown
    from nstrace.tracing.tracer import Options, Tracer
    tracer = Tracer(Options(pid=os.getpid()))
    tracer.start()
    try:
        links = tracer._obj.link_fds()
        map_ids = {int(line.split()[1]) for fd in os.listdir("/proc/self/fdinfo")
                   for line in _fdinfo("self", fd) if line.startswith("map_id:")}
        holder = teardown.hand_over(links)
        try:
            deadline = time.monotonic() + 3  # the holder closes what it does not keep as it starts
            while (not (held := _holder_fdinfo(os.getpid()))["links"] or held["maps"] & map_ids) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            holder.let_go()
    finally:
        tracer.close()
    assert len(held["links"]) == len(links), held
    assert not held["maps"] & map_ids, "the holder took BPF maps it was not given"


def _fdinfo(pid, fd):
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}") as f:
            return f.read().splitlines()
    except OSError:
        return []


def _holder_fdinfo(me):
    """The fds of the holder: the process that is not us and holds links to the programs we hold."""
    ours = prog_ids_held_by(me)
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me):
        try:
            fds = os.listdir(f"/proc/{pid}/fdinfo")
        except OSError:
            continue
        infos = [_fdinfo(pid, fd) for fd in fds]
        links = [i for i in infos if any(line.startswith("link_id:") for line in i)
                 and {int(line.split()[1]) for line in i if line.startswith("prog_id:")} & ours]
        if links:
            return {"links": links, "maps": {int(line.split()[1]) for i in infos for line in i
                                             if line.startswith("map_id:")}}
    return {"links": [], "maps": set()}  # not forked yet


def test_created_and_joined_on_sessions_from_lab_kernels():
    """The question a test asks, of records Debian's kernels made (tests/data, recorded in lab guests):
    a clone into three new namespaces; an unshare, then a setns into what it made."""
    from nshelpers import ROOT
    clone = nstrace.load(ROOT / "tests" / "data" / "lab-6.1-demo-clone.jsonl").records[1]
    assert [t for t in TYPES if clone.created(t)] == ["mnt", "uts", "pid"] and not clone.joined()
    setns = nstrace.load(ROOT / "tests" / "data" / "lab-7.2-demo-setns.jsonl")
    made, joined = (next(r for r in setns.records if r.op == op) for op in ("unshare", "setns"))
    assert [t for t in TYPES if made.created(t)] == ["uts"] and not made.joined()
    assert [t for t in TYPES if joined.joined(t)] == ["uts"] and not joined.created()
    assert setns.created("uts") and setns.joined("uts") and not setns.created("net")


TYPES = ("mnt", "uts", "ipc", "pid", "net", "user", "cgroup", "time")


# --- run() -----------------------------------------------------------------------------------

def test_run_is_watch_command():
    t = nstrace.run(["sh", "-c", "unshare --uts --net true; exit 3"])
    assert t.exit_status == 3 and t.created("net") and t.created("uts") and not t.joined()
    assert [(r.comm, r.op) for r in t.records] == [("unshare", "unshare")]


def test_run_as_another_user():
    t = nstrace.run(["unshare", "--uts", "true"], user="nobody")
    [rec] = t.records
    assert t.exit_status == 1 and (rec.uid, rec.errno, rec.ret) == (65534, "EPERM", -errno.EPERM)
    assert not rec.created("uts")


def test_run_a_command_that_cannot_run():
    with pytest.raises(CommandNotRun, match="cannot run no-such-command-here") as e:
        nstrace.run(["no-such-command-here"])
    assert e.value.exit_code == 127
    with pytest.raises(UsageError, match="no such user"):
        nstrace.run(["true"], user="no-such-user-here")
    with pytest.raises(UsageError, match="list of words"):
        nstrace.run("true")


def test_run_interrupted_kills_the_command():
    """As subprocess.run: an exception while waiting (Ctrl-C in a notebook) kills the command."""
    def interrupt(signo, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            nstrace.run(["sleep", "30"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - started < 10
    # this process's own: another suite's `sleep 30` on the machine is not this one's to judge
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _ppid(p) == os.getpid() and _cmdline(p) == "sleep30"]


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", "")
    except OSError:
        return ""


def _ppid(pid):
    """pid's parent (0 if gone): the field after the parenthesised comm of /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rpartition(b")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


# --- the JSON line, load() and ls() ------------------------------------------------------------

def test_to_json_is_the_line_watch_json_writes(tmp_path):
    """native/batch.c writes watch --json's lines; each record loaded from them gives its line back."""
    out = tmp_path / "trace.jsonl"
    res = subprocess.run([str(NSTRACE), "watch", "--json", "-o", str(out), "--", "sh", "-c",
                          "unshare --uts --net true; nsenter --target $$ --uts true; unshare --user true"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = out.read_text().splitlines()
    t = nstrace.load(out)
    assert len(lines) >= 3 and [r.to_json() for r in t.records] == lines
    assert t.lost is None  # a plain capture has no end line to count it


def test_load_is_show(tmp_path):
    session = tmp_path / "s.jsonl"
    res = subprocess.run([str(NSTRACE), "watch", "--record", str(session), "--", "unshare", "--uts", "true"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    t = nstrace.load(str(session))
    assert [r.flags for r in t.records] == [["CLONE_NEWUTS"]] and t.lost == 0 and t.exit_status == 0
    assert str(t).splitlines()[1:] == _show_rows(session)
    damaged = tmp_path / "d.jsonl"
    damaged.write_text(session.read_text().replace('"op":"unshare"', '"op":"unshare","ret":"x"', 1))
    shown = subprocess.run([str(NSTRACE), "show", str(damaged)], capture_output=True, text=True)
    with pytest.raises(UsageError) as e:
        nstrace.load(damaged)
    assert shown.returncode == e.value.exit_code == 2 and shown.stderr == f"nstrace: error: {e.value}\n"


def _show_rows(path):
    out = subprocess.run([str(NSTRACE), "show", str(path)], capture_output=True, text=True, check=True).stdout
    return out.split("\n\n")[0].splitlines()[1:]


def test_ls_is_ls_json():
    listed = subprocess.run([str(NSTRACE), "ls", "--json"], capture_output=True, text=True, check=True)
    by_cli = {(n["type"], n["inode"]): n for n in json.loads(listed.stdout)["namespaces"]}
    mine = {(n.type, n.inode): n for n in nstrace.ls()}
    own = {(entry, os.stat(f"/proc/self/ns/{entry}").st_ino) for entry in ("mnt", "uts", "ipc", "net", "user")}
    assert own <= set(mine) and own <= set(by_cli)
    for key in own:
        n = mine[key]
        assert isinstance(n, nstrace.Namespace)
        cli = by_cli[key]
        assert set(cli) <= {f for f in vars(n)} and (n.ns_id, n.owner) == (cli["ns_id"], cli["owner"])


# --- what the library never does ---------------------------------------------------------------

NEVER_PRINTS = textwrap.dedent("""
    import warnings
    import nstrace
    from nstrace.errors import NstraceError
    warnings.simplefilter("ignore")  # what it has to say (records lost...) is a warning: the caller's to show
    with nstrace.trace() as t:
        pass
    nstrace.run(["true"])
    nstrace.ls()
    for bad in (lambda: nstrace.run(["no-such-command-here"]), lambda: nstrace.load("/nonexistent"),
                lambda: nstrace.trace(ops="x").__enter__()):
        try:
            bad()
        except NstraceError:
            pass
    print("still here")
""")


def test_the_library_never_prints_or_exits():
    res = subprocess.run([PYTHON, "-c", NEVER_PRINTS], capture_output=True, text=True, timeout=120, cwd=ELSEWHERE)
    assert (res.returncode, res.stdout, res.stderr) == (0, "still here\n", "")


def test_errors_carry_the_commands_message():
    """Not root: the same PrivilegeError line the command prints, and nothing traced."""
    script = ("import nstrace\nfrom nstrace.errors import NstraceError\ntry:\n    nstrace.trace().__enter__()\n"
              "except NstraceError as e:\n"
              "    print(type(e).__name__, e.exit_code, e)\n")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    lib = subprocess.run([*as_nobody, PYTHON, "-c", script], capture_output=True, text=True, cwd=ELSEWHERE)
    cli = subprocess.run([*as_nobody, str(NSTRACE), "watch"], capture_output=True, text=True, cwd=ELSEWHERE)
    assert cli.returncode == PrivilegeError.exit_code
    assert lib.stdout == f"PrivilegeError {cli.returncode} {cli.stderr.removeprefix('nstrace: error: ')}", lib.stderr


def test_import_nstrace_imports_nothing_else():
    """The command line starts at nstrace/__init__.py: the library's face must not slow it down."""
    code = "import sys, nstrace; print(sorted(m for m in sys.modules if m.startswith('nstrace')))"
    res = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True, cwd=ELSEWHERE)
    assert res.stdout.strip() == "['nstrace']"


def test_a_block_imports_no_more_than_the_tracer_needs():
    """A process's first block pays for what it imports: psutil (ls()'s) and the notebook view are not
    among it (bench --only library)."""
    code = ("import sys, nstrace\nwith nstrace.trace(): pass\n"
            "print([m for m in ('psutil', 'nstrace.view.notebook', 'nstrace.view.page') if m in sys.modules])")
    res = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True, cwd=ELSEWHERE)
    assert res.stdout.strip() == "[]"


def test_the_model_is_imported_while_the_probes_load():
    """nstrace.trace, before it is called, has not imported the record model (dataclasses and inspect
    behind it: ~10 ms): the first block imports it while its probes load (bench --only library). Every
    name of the package still comes when asked for, the model's classes and a notebook's view of
    them included."""
    code = ("import sys, nstrace\nnstrace.trace\n"
            "print([m for m in ('nstrace.record.model', 'dataclasses') if m in sys.modules])\n"
            "from nstrace.record import model\n"
            "print(nstrace.Record is model.Record, nstrace.Step is model.Step, nstrace.KernelPath is model.KernelPath,"
            " model.html_view is not None)")
    res = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True, cwd=ELSEWHERE)
    assert res.stdout.splitlines() == ["[]", "True True True True"], res.stdout


def test_trace_is_the_function_whatever_is_imported():
    """No sub-package is named trace (the tracer's is nstrace/tracing/): importing the tracer leaves
    nstrace.trace the function, as an import of a sub-package binds its name on the package."""
    code = ("import nstrace.tracing.tracer, nstrace, nstrace.tracing.watch\n"
            "print(callable(nstrace.trace), nstrace.trace.__module__)")
    res = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True, cwd=ELSEWHERE)
    assert res.stdout.split() == ["True", "nstrace.api"]


TYPED = textwrap.dedent("""
    import subprocess
    import nstrace

    with nstrace.trace(ops="unshare", types=["uts", "net"], namespaces=4026531840) as t:
        subprocess.run(["unshare", "--uts", "true"])
    ok: bool = t.created("uts") and not t.records[0].joined()
    funcs: list[str] = [step.func for step in t.records[0].path]
    status: int | None = nstrace.run(["true"], user=65534).exit_status
    inodes: list[int] = [n.inode for n in nstrace.ls()]
    lost: int | None = nstrace.load("session.jsonl").lost
    line: str = t.records[0].to_json()
    wrong: int = t.records[0].path
""")


def test_a_users_program_type_checks_against_the_package(tmp_path):
    """py.typed: a user's type checker reads the installed package's annotations (mypy --strict), and
    finds the one line that is wrong."""
    from mypy import api
    program = tmp_path / "user.py"
    program.write_text(TYPED)
    out, err, status = api.run(["--strict", "--no-incremental", "--python-executable", PYTHON, str(program)])
    assert status == 1 and out.count("error:") == 1, out + err
    wrong = TYPED.splitlines().index("wrong: int = t.records[0].path") + 1
    assert f'user.py:{wrong}: error: Incompatible types in assignment (expression has type "KernelPath"' in out, out


# --- the function layer, in a Debian kernel under QEMU -------------------------------------------

IN_GUEST = textwrap.dedent("""
    import ctypes, json
    import nstrace
    with nstrace.trace() as t:
        assert ctypes.CDLL(None).unshare(0x04000000) == 0  # CLONE_NEWUTS (os.unshare is Python 3.12's)
    [rec] = t.records
    print(json.dumps({"function_layer": t.function_layer, "created": rec.created("uts"),
                      "steps": [(s.func, s.kind, s.created) for s in rec.path],
                      "html": "copy_utsname" in rec.path._repr_html_()}))
""")


@pytest.mark.lab
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed")
def test_the_function_layer_in_a_lab_guest():
    """A Python program run in a 6.1 guest (as `nstrace lab` runs one: this machine's root, its
    interpreter and its installed nstrace) imports nstrace and gets the kernel path of its unshare."""
    from nstrace.lab import guest
    result = guest.run_in_guest("6.1", [PYTHON, "-c", IN_GUEST], cwd="/", timeout=600)
    assert result.returncode == 0, result.output[-3000:] + result.console[-2000:]
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["function_layer"] and out["created"] and out["html"], out
    steps = [tuple(s) for s in out["steps"]]
    assert ("ksys_unshare", "enter", None) in steps and ("copy_utsname", "exit", True) in steps, steps


EMPTY_MNTNS = textwrap.dedent("""
    import ctypes, json, os
    import nstrace
    libc = ctypes.CDLL(None, use_errno=True)
    with nstrace.trace() as t:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if libc.unshare(0x00100000) == 0 else 1)  # UNSHARE_EMPTY_MNTNS (7.1 uapi)
        os.waitpid(pid, 0)
    [rec] = [r for r in t.records if r.op == "unshare"]  # and the free of that namespace, where deaths are seen
    print(json.dumps({"ret": rec.ret, "flags": rec.flags, "changed": rec.changed, "created": rec.created("mnt"),
                      "ops": [r.op for r in t.records]}))
""")


@pytest.mark.lab
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed")
def test_an_empty_mount_namespace_is_created_and_its_flag_named():
    """7.1's UNSHARE_EMPTY_MNTNS shares its bit with CLONE_PARENT_SETTID: unshare's own flag table names
    it, and says it makes a mount namespace (probes/uapi.def), the caller's new one."""
    from nstrace.lab import guest
    result = guest.run_in_guest("sid", [PYTHON, "-c", EMPTY_MNTNS], cwd="/", timeout=600)
    assert result.returncode == 0, result.output[-3000:] + result.console[-2000:]
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["ret"] == 0 and out["flags"] == ["UNSHARE_EMPTY_MNTNS"] and out["changed"] == ["mnt"], out
    assert out["created"], out

