"""Start-up: watch loads its object while the command line is imported (nstrace/bpf/preload.py), and
libbpf loads without calling into Python for every line it prints."""

import ctypes
import os
import signal
import subprocess
import threading
import time

import pytest

from nstrace.bpf import hookplan, libbpf, loader, preload
from nstrace.bpf.probeset import ProbeSet
from nstrace.errors import LibbpfError
from nstrace.tracing.tracer import Options, Tracer


@pytest.mark.parametrize("args,fields", [
    (["watch"], {}),
    (["watch", "--json", "--comm", "x"], {}),
    (["watch", "--all", "--raw-addresses"], {"trace_all": True, "raw_addresses": True}),
    (["watch", "--pid", "42", "--buffer-kib=256"], {"pid": 42, "ringbuf_bytes": 256 * 1024}),
    (["watch", "--pid=7", "--buffer-kib", "8"], {"pid": 7, "ringbuf_bytes": 8192}),
    (["watch", "--pid", "x"], None),
    (["watch", "--json", "--", "unshare", "--uts", "true"], {"command": True}),
    (["watch", "--comm", "bash", "unshare", "-r"], {"command": True}),
    (["watch", "--comm=bash", "-u", "nobody", "--all", "ip", "netns"], {"command": True, "trace_all": True}),
    (["watch", "--json", "--"], {}),
    (["watch", "-o", "out", "sh"], {"command": True}),
    (["watch", "--output", "-", "--json"], {}),
    (["watch", "--help"], None),
    (["doctor"], None),
    ([], None),
])
def test_guess(args, fields):
    assert preload.guess(args) == fields


# A value for every option of `nstrace watch`, other than its default. A new option must be added
# here: the test below then tells whether it changes the BPF object and preload's guess misses it.
WATCH_SAMPLES = {
    "pid": ["--pid", "1"], "comm": ["--comm", "bash"], "ops": ["--op", "setns"], "types": ["--type", "uts"],
    "trace_all": ["--all"], "as_json": ["--json"], "duration": ["--duration", "2"], "count": ["--count", "3"],
    "raw_addresses": ["--raw-addresses"], "no_proc_check": ["--no-proc-check"],
    "buffer_kib": ["--buffer-kib", "256"], "record_path": ["--record", "/tmp/x.jsonl"],
    "container": ["--container", "0123456789ab"], "ns": ["--ns", "net:4026531840"],
    "user": ["--user", "nobody", "--", "true"], "command": ["--", "unshare", "--uts", "true"],
    "output_path": ["-o", "/tmp/x.txt"],
}


def _object_settings(argv):
    """What the object of `nstrace watch ARGV` depends on: as the command line parses, and as
    nstrace.bpf.preload guesses it from the raw words."""
    from nstrace.cli import watch
    ctx = watch.watch.make_context("watch", list(argv))
    guessed = preload.guess(["watch", *argv])
    params = dict(ctx.params)
    if params["command"]:
        # watch follows COMMAND's pid, known once forked: a stand-in for it, on both sides
        assert guessed.pop("command") is True and params["pid"] is None
        params["pid"] = guessed["pid"] = 4242
    tracer = Tracer(watch.watch_options(**params))
    return tracer.probes.settings([]), ProbeSet(**guessed).settings([]) if guessed is not None else None


def test_every_watch_option_is_sampled():
    from nstrace.cli import watch
    assert {p.name for p in watch.watch.params if p.name != "help"} == set(WATCH_SAMPLES)


@pytest.mark.parametrize("name", sorted(WATCH_SAMPLES))
def test_preload_guesses_every_option_that_changes_the_object(name):
    """preload parses argv by hand, before click is imported: for each watch option, the object it
    would load must be the one the parsed command line asks for, or the watch loads twice."""
    parsed, guessed = _object_settings(WATCH_SAMPLES[name])
    assert guessed == parsed, f"--{name} changes the object, and nstrace.bpf.preload.guess() does not follow it"


@pytest.fixture
def loads(monkeypatch):
    """The threads that loaded an object, in order."""
    seen = []
    real = ProbeSet.load

    def load(self, *args, **kwargs):
        seen.append("main" if threading.get_ident() == threading.main_thread().ident else "preload")
        return real(self, *args, **kwargs)
    monkeypatch.setattr(ProbeSet, "load", load)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, ())
    yield seen
    preload.discard()
    # watch -- COMMAND's begin() blocks SIGINT, SIGTERM and SIGHUP: every later child would inherit that
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    preload.blocked = False


root = pytest.mark.root("loads BPF programs")


@root
def test_the_preloaded_object_is_taken_when_the_options_agree(loads):
    preload.begin(["watch", "--json", "--buffer-kib", "256"])
    with Tracer(Options(ringbuf_bytes=256 * 1024)) as tracer:
        assert tracer.attached and tracer._obj
    assert loads == ["preload"]  # the main thread loaded nothing


@root
def test_the_thread_attaches_so_tracing_is_live_before_the_command_line_is_parsed(loads):
    """An unshare done after the thread finished, before any Tracer.start(), is in the trace."""
    preload.begin(["watch", "--json"])
    preload._thread.join()
    before_start = subprocess.run(["unshare", "--uts", "true"], check=True)
    with Tracer(Options()) as tracer:
        assert loads == ["preload"] and tracer.attached
        seen = []
        for _ in range(20):
            seen += [r for r in tracer.poll(100) if r.op == "unshare" and r.comm == "unshare"]
            if seen:
                break
    assert seen and seen[0].ret == 0, before_start


@root
@pytest.mark.parametrize("args,yields", [(["watch", "--json"], True), (["watch", "--", "true"], False),
                                         (["watch", "--pid", "1"], False)])
def test_the_main_thread_yields_the_cpu_to_the_load_of_a_plain_watch(loads, monkeypatch, args, yields):
    """Plain `watch`: the main thread's nice value is 10 higher until the thread has attached (so the
    verifier is not slowed by the command line's imports on a busy machine), and as before once it has.
    With a COMMAND or --pid the main thread's work is on the way to tracing too: it keeps its priority."""
    def main_nice():  # the main thread's
        return os.getpriority(os.PRIO_PROCESS, os.getpid())
    before, during = main_nice(), []
    real = ProbeSet.load

    def load(self, *a, **k):
        done = real(self, *a, **k)
        deadline = time.monotonic() + 2
        while main_nice() == before and yields and time.monotonic() < deadline:
            time.sleep(0.001)  # the main thread lowers itself once the load has begun
        during.append(main_nice())
        return done
    monkeypatch.setattr(ProbeSet, "load", load)
    preload.begin(args)
    held = preload.take_command()
    try:
        pre = preload.take()
        if pre:
            pre.close()
    finally:
        if held:
            held.cancel()
    assert during == [before + 10 if yields else before]
    assert main_nice() == before


@root
def test_with_pid_the_thread_loads_but_leaves_attaching_to_start(loads):
    """--pid fills the descendant table first: a probe attached before that would miss the process."""
    preload.begin(["watch", "--pid", str(os.getpid())])
    pre = preload.take()
    try:
        assert pre.obj and not pre.attached
    finally:
        pre.close()
    with Tracer(Options(pid=os.getpid())) as tracer:
        assert "sched_process_exit" in tracer.attached


@root
def test_with_a_command_the_thread_follows_it_and_attaches(loads):
    """watch -- COMMAND: the child is forked before the thread (it holds no BPF fd), its pid is the
    object's filter and the table's first entry, and the probes are attached before it runs."""
    def bpf_fds(pid):  # this test process may hold some of other tests' tracers
        out = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except FileNotFoundError:
                continue  # the listing's own
            out += [target] if "bpf" in target or "perf_event" in target else []
        return sorted(out)
    ours = bpf_fds(os.getpid())
    preload.begin(["watch", "--json", "--", "unshare", "--uts", "true"])
    held = preload.take_command()
    try:
        pre = preload.take()
        assert bpf_fds(held.pid) == ours
        try:
            assert pre.attached and pre.pid == held.pid
            assert pre.settings()["rodata"]["filter_tgid"] == held.pid
            assert [k.value for k in pre.obj.map_keys("tracked", ctypes.c_uint32)] == [held.pid]
        finally:
            pre.close()
    finally:
        held.cancel()
    assert held.status == 127 and held.argv is None  # cancelled: it ran nothing
    assert loads == ["preload"]


@root
def test_a_wrong_guess_is_closed_and_the_right_object_loaded(loads):
    preload.begin(["watch", "--all"])
    with Tracer(Options()) as tracer:
        assert tracer.attached
        assert tracer.probes.settings()["rodata"]["trace_all"] is False
    assert loads == ["preload", "main"]
    assert preload.take() is None


@root
def test_a_failed_guess_leaves_nothing_behind(loads):
    """As root, so the thread gets past the privilege check: the ring buffer size is what fails."""
    preload.begin(["watch", "--buffer-kib", "3"])  # not a power of two: ProbeSet refuses it in the thread
    assert preload.take() is None and loads == []
    preload.begin(["watch", "--buffer-kib", "4"])  # the same guess with a size the kernel takes loads
    good = preload.take()
    try:
        assert good is not None and good.obj and loads == ["preload"]
    finally:
        good.close()


@root
def test_a_load_that_fails_still_says_why():
    """Loads run without libbpf's printer; a failed one is made again, listening, for the reason."""
    if hookplan.fentry_refusal() is None:
        pytest.skip("this kernel loads fentry programs: no load to see fail here")
    with loader.BpfObject() as obj:
        for name in obj.program_names():
            obj.set_autoload(name, name == "fentry_copy_namespaces")
        obj.set_rodata("trace_all", True)
        with pytest.raises(LibbpfError) as exc:
            obj.load()
    assert exc.value.errno and "[libbpf: " in str(exc.value)
    assert any("prog 'fentry_copy_namespaces'" in line for line in libbpf.last_messages(40))


@pytest.mark.root("plans the hooks and asks the kernel what it has, as the thread does")
def test_the_preload_thread_imports_only_what_loading_needs():
    """The thread that loads while click is imported pulls in the loader and the hook plan alone (and
    watch -- COMMAND the held command before it): not
    dataclasses (with inspect, ast and dis behind it), re or enum, which cost the start-up as much as the
    verifier does (bench --only startup). Run in a fresh interpreter, from /, as nstrace starts."""
    import sys
    ProbeSet(kernel_path=False)._open().close()  # what is built once per boot, built (it may import more)
    probe = ("import sys; from nstrace.bpf import loader, preload, probeset; from nstrace.linux import heldcommand; "
             "p = probeset.ProbeSet(); p.hooks = p.plan(); p.settings(); p._open().close(); "
             "print(' '.join(sorted(m for m in ('dataclasses', 'inspect', 're', 'enum', 'click', 'pathlib', "
             "'tomllib', 'json', 'threading', 'functools', 'collections') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/", check=True)
    assert done.stdout.split() == [], done.stdout


@pytest.mark.root("loads and attaches the probes")
def test_links_a_holder_keeps_are_closed_without_threads(monkeypatch):
    """watch -- COMMAND hands its links to a holder (bpf/teardown.py): closing ours then only drops a
    reference, so detach_all starts none of the threads that wait out grace periods side by side
    (a dozen, in every short watch). The holder's exit still detaches everything."""
    from nshelpers import loader_programs, programs_left_after

    from nstrace.bpf import teardown
    before = set(loader_programs())
    probes = ProbeSet(kernel_path=False).load()
    probes.attach()
    started = []
    start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self.name), start(self))[1])
    holder = teardown.hand_over(probes.obj.link_fds())
    assert holder
    try:
        probes.close()
    finally:
        holder.let_go()
    monkeypatch.undo()
    assert started == []
    assert not programs_left_after(before)


def test_watch_leaves_without_the_interpreters_finalization():
    """`nstrace watch` exits as soon as its last line is written (cli/main.py _leave()): what the
    interpreter would run at its exit (here an atexit function that prints) does not run. The other
    commands end as always."""
    probe = ("import atexit, sys, nstrace.cli.main as m\n"
             "atexit.register(lambda: print('finalized', file=sys.stderr))\n"
             "sys.argv = ['nstrace', sys.argv[1], '--help']\nm.main()\n")
    import sys
    for command, finalized in (("watch", False), ("ls", True)):
        done = subprocess.run([sys.executable, "-c", probe, command], capture_output=True, text=True, cwd="/")
        assert done.returncode == 0, done.stderr
        assert ("finalized" in done.stderr) == finalized, (command, done.stderr)


def test_the_command_line_of_watch_imports_no_pathlib_nor_json():
    """What `watch -- COMMAND` imports before COMMAND runs is time on every traced command (bench:
    short command): pathlib (the record reader's library path) and json (the first JSON line) are not
    part of it. Run in a fresh interpreter, from /, as nstrace starts."""
    import sys
    probe = ("import sys, nstrace.cli.main, nstrace.cli.watch, nstrace.tracing.watch, nstrace.view.table; "
             "print(' '.join(m for m in ('pathlib', 'json') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/", check=True)
    assert done.stdout.split() == [], done.stdout
