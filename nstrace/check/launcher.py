"""The launcher: makes namespaces on purpose, remembers everything it made, undoes it all.

Every resource (process, mount, network namespace, link, directory) is written
to a state file under /run/nstrace before it is made, so that a launcher
killed mid-scenario is cleaned up by the next one (see :func:`reap_stale`).
Cleanup runs in reverse order of creation and goes on past individual
failures; what could not be undone is reported, never ignored.

A state file is obeyed by root: the next launcher kills, unmounts and
deletes what it names. So the directory and each file must be root's alone
(nstrace/linux/trusted_paths.py; anything else is refused with one line, exit 7), and
a file may only name what a launcher makes: processes by pid and start
time, mounts and directories inside its own work-<id> directory, network
namespaces named nstrace-<id>-*.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from ..errors import LauncherError
from ..linux import procns, trusted_paths
from ..linux.mounts import MS_BIND, mount, umount

STATE_DIR = Path("/run/nstrace")
PREFIX = "nstrace-"
PR_SET_PDEATHSIG = 1

# setpriv(1) arguments that leave a process no privilege at all (see Launcher.holder).
UNPRIVILEGED = ("setpriv", "--no-new-privs", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all")

# ip(8) global options that take no argument and change nothing by themselves.
IP_FLAG_OPTIONS = {"4", "6", "0", "d", "details", "s", "stats", "statistics", "o", "oneline", "j", "json",
                   "p", "pretty", "br", "brief", "c", "color", "r", "resolve", "a", "all", "h", "human"}


def _die_with(parent):
    """A preexec_fn: the child gets SIGKILL when the launcher dies, even by SIGKILL.

    Without it a killed launcher's children live on until the next launcher
    reaps them (reap_stale); with it nothing privileged outlives us.
    """
    import ctypes
    lib = ctypes.CDLL(None, use_errno=True)  # resolved here: between fork and exec only the call itself runs

    def preexec():
        lib.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the prctl took effect
            os._exit(1)
    return preexec


class Held:
    """A process of ours holding still (python -m nstrace.check.nsop): its report, and how to let go."""

    def __init__(self, proc, report):
        self.proc = proc
        self.report = report
        self.pid = report["pid"]

    def release(self, timeout=10):
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Launcher:
    """One run's resources. Use as a context manager: leaving it undoes everything."""

    def __init__(self, state_dir=STATE_DIR):
        self.state_dir = Path(os.path.abspath(state_dir))
        trusted_paths.trusted_dir(self.state_dir, create=True)
        reap_stale(self.state_dir)
        self.id = uuid.uuid4().hex[:8]
        self.state_file = self.state_dir / f"launcher-{os.getpid()}-{self.id}.json"
        self.workdir = self.state_dir / f"work-{self.id}"
        self.resources = []
        self._held = []
        self._record("dir", str(self.workdir))
        self.workdir.mkdir(mode=0o755)  # (the umask can only take bits away)

    # --- bookkeeping ---------------------------------------------------------------

    def _record(self, kind, value, **extra):
        self.resources.append({"kind": kind, "value": value, **extra})
        trusted_paths.write_whole(str(self.state_file), json.dumps({"pid": os.getpid(), "start": procns.start_ticks(os.getpid()),
                                                             "resources": self.resources}))

    def name(self, what):
        """A name for something this run makes, recognisable as ours (nstrace-<id>-what)."""
        return f"{PREFIX}{self.id}-{what}"

    # --- making things ---------------------------------------------------------------

    def nsop(self, spec, timeout=10):
        """Run one namespace operation in a held process (nstrace.check.nsop); return a Held."""
        proc = subprocess.Popen([sys.executable, "-m", "nstrace.check.nsop", json.dumps(spec)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                cwd="/",  # imports the installed nstrace (check/scenario.py run_inside says why)
                                preexec_fn=_die_with(os.getpid()))
        self._record("process", proc.pid, start=procns.start_ticks(proc.pid))
        line = proc.stdout.readline()
        if not line:
            proc.wait(timeout)
            raise LauncherError(f"namespace operation {spec.get('op')} did not report (exit {proc.returncode})")
        held = Held(proc, json.loads(line))
        self._held.append(held)
        return held

    def holder(self, types):
        """A process living in new namespaces of the given types; returns its pid.

        util-linux unshare --fork: the forked child is inside the new PID and time namespaces too.
        The holder only has to exist, so it keeps no privilege: setpriv empties its capability
        bounding set (and so every capability set at the exec of sleep) and sets no_new_privs.
        Joining it still works: setns checks the caller's capabilities over the target
        namespace's owning user namespace, not the holder's. --keep-caps lets setpriv drop
        the bounding set inside a new user namespace, where the exec would otherwise have
        taken CAP_SETPCAP away first. --kill-child: the holder dies with its unshare, which
        dies with this launcher (PR_SET_PDEATHSIG).
        """
        args = {"mnt": "--mount", "uts": "--uts", "ipc": "--ipc", "net": "--net", "pid": "--pid",
                "user": "--user", "cgroup": "--cgroup", "time": "--time"}
        proc = subprocess.Popen(["unshare", *(args[t] for t in types), "--fork", "--kill-child", "--keep-caps",
                                 *UNPRIVILEGED, "sleep", "3600"],
                                stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_die_with(os.getpid()))
        self._record("process", proc.pid, start=procns.start_ticks(proc.pid))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            kids = psutil.Process(proc.pid).children() if proc.poll() is None else []
            if kids and kids[0].name() == "sleep" and procns.ns_links(kids[0].pid):
                self._record("process", kids[0].pid, start=procns.start_ticks(kids[0].pid))
                return kids[0].pid
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        err = proc.stderr.read().decode(errors="replace").strip() if proc.poll() is not None else "timeout"
        raise LauncherError(f"could not start a process in new {','.join(types)} namespaces: {err}")

    def spawn(self, argv, **popen_kw):
        """A longer-lived process of ours (a real program, or `python -m` a module of nstrace.check),
        recorded at once, killed at cleanup and with this launcher; a Popen. `ip` is confined as in run()."""
        self._confine(argv)
        proc = subprocess.Popen(argv, preexec_fn=_die_with(os.getpid()), **popen_kw)
        self._record("process", proc.pid, start=procns.start_ticks(proc.pid))
        return proc

    def bind_ns(self, pid, ns_type):
        """Bind-mount /proc/<pid>/ns/<type> on a file of ours: keeps the namespace alive."""
        path = self.workdir / f"{ns_type}-{pid}"
        path.touch(mode=0o644)
        self._record("mount", str(path))
        mount(f"/proc/{pid}/ns/{ns_type}", path, None, MS_BIND)
        return path

    def netns(self, what):
        """A network namespace made by `ip netns add` (bind-mounted under /run/netns)."""
        name = self.name(what)
        self._record("netns", name)
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        return name

    def run(self, argv, **kw):
        """A short command that must succeed. `ip` may only touch network namespaces of ours."""
        self._confine(argv)
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, **kw)
        if res.returncode:
            raise LauncherError(f"{' '.join(argv)} failed: {res.stderr.strip()}")
        return res.stdout

    def _confine(self, argv):
        """Raise LauncherError unless an `ip` command is confined to a network namespace we made.

        Scenarios must never change the host's network: every `ip` command runs as
        `ip [opts] -n OURS ...` or `ip [opts] netns exec OURS ...`, and any `netns X` inside
        it (moving a link) names one of ours too. Anything else is refused before it runs.
        """
        if not argv or os.path.basename(str(argv[0])) != "ip":
            return
        ours = {r["value"] for r in self.resources if r["kind"] == "netns"}
        args = [str(a) for a in argv[1:]]
        confined = None
        i = 0
        while i < len(args) and args[i].startswith("-"):
            opt = args[i].lstrip("-")
            if opt in ("n", "netns") and i + 1 < len(args):
                confined = args[i + 1]
                i += 2
            elif opt in IP_FLAG_OPTIONS:
                i += 1
            else:  # -batch, -force, -rc ...: anything we cannot judge is refused
                raise LauncherError(f"refusing `{' '.join(argv)}`: ip option {args[i]} is not allowed in a scenario")
        rest = args[i:]
        if confined is None and rest[:2] == ["netns", "exec"] and len(rest) > 2:
            confined, rest = rest[2], []  # what runs inside is confined to it
        if confined not in ours:
            raise LauncherError(f"refusing `{' '.join(argv)}`: it would touch the host's network; "
                                f"confine it with -n <a netns of this launcher> or `ip netns exec`")
        for j, word in enumerate(rest[:-1]):
            if word == "netns" and rest[j + 1] not in ours:
                raise LauncherError(f"refusing `{' '.join(argv)}`: netns {rest[j + 1]} is not one of this launcher's")

    def kill(self, pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    # --- undoing ---------------------------------------------------------------------

    def cleanup(self):
        """Undo everything, newest first; raise LauncherError naming what could not be undone."""
        for held in self._held:
            held.release()
        left = _undo(self.resources)
        self.resources = []
        if not left:
            self.state_file.unlink(missing_ok=True)
        if left:
            raise LauncherError("could not undo: " + "; ".join(left))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()


def _unexpected(res, state_dir):
    """Why a resource is none a launcher of state_dir makes (None if it is one)."""
    if not isinstance(res, dict):
        return "not a resource"
    kind, value = res.get("kind"), res.get("value")
    if kind == "process":
        start = res.get("start")
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 1 and \
            (start is None or isinstance(start, int) and not isinstance(start, bool))
    elif kind == "netns":
        ok = isinstance(value, str) and re.fullmatch(re.escape(PREFIX) + r"[0-9a-f]{8}-[A-Za-z0-9_.-]+", value)
    elif kind in ("dir", "mount"):
        work = r"work-[0-9a-f]{8}" + ("" if kind == "dir" else r"/[A-Za-z0-9_.-]+")
        ok = isinstance(value, str) and re.fullmatch(re.escape(str(state_dir)) + "/" + work, value) \
            and ".." not in value.split("/")
    else:
        ok = False
    return None if ok else f"{kind} {value!r}"


def _undo(resources):
    left = []
    for res in reversed(resources):
        kind, value = res["kind"], res["value"]
        try:
            if kind == "process":
                if res.get("start") is not None and procns.start_ticks(value) == res["start"]:  # never a reused pid
                    os.kill(value, signal.SIGKILL)
                    _reap(value)
            elif kind == "mount":
                if os.path.ismount(value):
                    umount(value)
            elif kind == "netns":
                if Path("/run/netns", value).exists():
                    subprocess.run(["ip", "netns", "del", value], check=True, capture_output=True)
            elif kind == "dir":
                shutil.rmtree(value, ignore_errors=False) if Path(value).exists() else None
        except (OSError, subprocess.CalledProcessError) as e:
            left.append(f"{kind} {value}: {e}")
    return left


def _reap(pid):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG | 0x40000000)  # __WALL
            if done:
                return
        except ChildProcessError:  # not our child: wait for it to vanish
            if procns.start_ticks(pid) is None:
                return
        time.sleep(0.01)


def reap_stale(state_dir=STATE_DIR):
    """Undo what launchers that died (SIGKILL, crash) left behind; return what was undone.

    Raises UnsafePath if the directory or a state file could have
    been written by another user, LauncherError if a state file names
    something no launcher makes.
    """
    undone = []
    state_dir = Path(os.path.abspath(state_dir))
    try:
        trusted_paths.trusted_dir(state_dir)
    except FileNotFoundError:
        return undone
    for state in state_dir.glob("launcher-*.json"):
        try:
            text = trusted_paths.read_file(str(state))
            data = json.loads(text) if text is not None else None
        except (OSError, ValueError):
            continue  # gone meanwhile, or cut short by a crash mid-write (write_whole makes that rare)
        if not (isinstance(data, dict) and isinstance(data.get("pid"), int) and isinstance(data.get("resources"), list)):
            raise LauncherError(f"{state} is not a launcher state file: remove it by hand")
        bad = [why for why in (_unexpected(r, state_dir) for r in data["resources"]) if why]
        if bad:
            raise LauncherError(f"{state} names {bad[0]}, which no launcher makes: nothing was undone; "
                                f"remove the file by hand")
        if procns.start_ticks(data["pid"]) == data.get("start"):
            continue  # that launcher is alive
        left = _undo(data["resources"])
        if left:
            raise LauncherError(f"a previous launcher (pid {data['pid']}) left {'; '.join(left)}: "
                                f"remove by hand, then delete {state}")
        undone += data["resources"]
        state.unlink()
    return undone
