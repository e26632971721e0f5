"""A command held at a gate: forked now, run (exec'd) only when told.

`nstrace watch -- COMMAND` traces COMMAND from its first instruction. So the
process that becomes COMMAND is forked first, before the BPF object is even
loaded (it inherits none of nstrace's BPF fds), and waits on a pipe; its pid
goes into the tracer's table of followed processes; only once the probes are
attached is it told to exec. Whatever it does then, and whatever its
descendants do, is traced; nothing it did before exec can be a record (it
only reads the pipe).

Everything the child runs between fork and exec is plain os calls: the parent
may have threads by then (the loader's), and only async-signal-safe work is
safe in a forked child of a threaded process.
"""

import os
import signal

from ..errors import CommandNotRun, UsageError

# What Python itself changes at start-up and exec would keep: ignored signals stay ignored
# across execve (fs/exec.c flush_signal_handlers(), 6.12). COMMAND must start as from a shell.
_RESET_SIGNALS = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGINT") if hasattr(signal, name))


class User:
    """Who COMMAND runs as: uid, gid and supplementary groups (as strace -u: initgroups)."""

    def __init__(self, name_or_uid):
        import pwd
        try:
            entry = pwd.getpwuid(int(name_or_uid)) if name_or_uid.isdigit() else pwd.getpwnam(name_or_uid)
        except (KeyError, ValueError):
            raise UsageError(f"--user {name_or_uid!r}: no such user") from None
        self.name, self.uid, self.gid = entry.pw_name, entry.pw_uid, entry.pw_gid
        self.groups = os.getgrouplist(entry.pw_name, entry.pw_gid)


class HeldCommand:
    """A forked child waiting to exec a command. release() runs it; cancel() lets it exit unrun."""

    def __init__(self):
        go_r, go_w = os.pipe()      # nstrace -> child: what to run (EOF alone: nothing)
        err_r, err_w = os.pipe()    # child -> nstrace: errno of a failed exec; closed by a good one
        pid = os.fork()
        if pid == 0:
            _gate(go_r, go_w, err_r, err_w)  # never returns
        os.close(go_r)
        os.close(err_w)
        self.pid, self._go, self._err = pid, go_w, err_r
        self.argv = None
        self.status = None          # exit code as a shell gives it, once reaped
        self._pidfd = None

    def release(self, argv, user=None):
        """Exec argv (searched in PATH) as `user` (a User; None: as nstrace runs). Returns once
        the exec has happened; raises CommandNotRun (126/127, as env(1)) if it could not."""
        self.argv = list(argv)
        ids = (user.uid, user.gid, ",".join(map(str, user.groups))) if user else ("", "", "")
        words = [str(i).encode() for i in ids] + [os.fsencode(a) for a in argv]
        message = b"\0".join(words)
        try:
            view = memoryview(message)
            while view:
                view = view[os.write(self._go, view):]
        finally:
            os.close(self._go)
            self._go = None
        answer = b""
        while True:
            chunk = os.read(self._err, 64)
            if not chunk:
                break
            answer += chunk
        os.close(self._err)
        self._err = None
        if answer:
            err = int(answer.split(b":")[0])
            self.wait()
            what = "set the user of" if answer.endswith(b":user") else "run"
            raise CommandNotRun(f"cannot {what} {argv[0]}: {os.strerror(err)}",
                                127 if err == 2 and what == "run" else 126)

    def cancel(self):
        """Let the child exit without running anything, and reap it."""
        if self._go is not None:
            os.close(self._go)
            self._go = None
        if self._err is not None:
            os.close(self._err)
            self._err = None
        if self.status is None:
            self.wait()

    def fileno(self):
        """A pidfd (5.3+): readable once COMMAND has exited, for poll()."""
        if self._pidfd is None:
            self._pidfd = os.pidfd_open(self.pid)
        return self._pidfd

    def exited(self):
        """True once COMMAND has exited (reaped: status set)."""
        if self.status is None:
            pid, wstatus = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._reaped(wstatus)
        return self.status is not None

    def wait(self):
        if self.status is None:
            self._reaped(os.waitpid(self.pid, 0)[1])
        return self.status

    def _reaped(self, wstatus):
        code = os.waitstatus_to_exitcode(wstatus)
        self.status = 128 - code if code < 0 else code  # killed by signal N: 128 + N, as a shell says
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def signal(self, signo):
        if self.status is None:
            try:
                os.kill(self.pid, signo)
            except ProcessLookupError:
                pass


def _gate(go_r, go_w, err_r, err_w):
    """The child: wait for the word, become the user, exec. Never returns."""
    try:
        os.close(go_w)
        os.close(err_r)
        for signo in _RESET_SIGNALS:
            signal.signal(signo, signal.SIG_DFL)
        message = b""
        while True:
            chunk = os.read(go_r, 65536)
            if not chunk:
                break
            message += chunk
        os.close(go_r)
        words = message.split(b"\0")
        if len(words) < 4:
            os._exit(127)  # cancelled: nothing to run
        uid, gid, groups, argv = words[0], words[1], words[2], words[3:]
        if uid:
            try:
                os.setgroups([int(g) for g in groups.split(b",") if g])
                os.setgid(int(gid))
                os.setuid(int(uid))
            except OSError as e:
                os.write(err_w, f"{e.errno}:user".encode())
                os._exit(126)
        try:
            os.execvp(argv[0], argv)
        except OSError as e:
            os.write(err_w, f"{e.errno}".encode())
    except BaseException:  # noqa: BLE001 - a forked child must never run on in nstrace's code
        pass
    os._exit(127)
