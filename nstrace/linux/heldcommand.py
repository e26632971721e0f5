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

import _signal  # signal's functions and numbers without its enums: see below
import errno
import os
import struct

from ..errors import CommandNotRun, UsageError

# What Python itself changes at start-up and exec would keep: ignored signals stay ignored, and
# blocked ones blocked, across execve (fs/exec.c flush_signal_handlers(), 6.12; the mask is the
# task's own, exec leaves it). COMMAND must start as from a shell: nstrace blocks the signals it
# reads from its signalfd (Inbox) before forking it.
_RESET_SIGNALS = tuple(getattr(_signal, name) for name in ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGHUP")
                       if hasattr(_signal, name))

# The signals `watch -- COMMAND` reads as messages (Inbox) instead of taking them as interruptions.
WATCHED_SIGNALS = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP)

# This module is imported before `watch -- COMMAND` forks COMMAND and starts loading its probes
# (nstrace.bpf.preload): through _signal, not signal, whose import (its IntEnums, enum) would cost
# 4 ms before that (bench: short command). Only a signal's name needs signal.Signals.


def signal_name(signo):
    """"SIGTERM" for 15; "signal 99" for a number without a name."""
    import signal
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


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
        self.killed_by = None       # the signal that killed it, if one did
        self._pidfd = None

    def release(self, argv, user=None):
        """Exec argv (searched in PATH) as `user` (a User; None: as nstrace runs). Returns once
        the exec has happened; raises CommandNotRun (126/127, as env(1)) if it could not."""
        self.argv = list(argv)
        if not argv[0]:
            # found nowhere, as env(1) and a shell say; Python's execvp() would raise ValueError
            self.cancel()
            raise CommandNotRun(f"cannot run '': {os.strerror(errno.ENOENT)}", 127)
        ids = (user.uid, user.gid, ",".join(map(str, user.groups))) if user else ("", "", "")
        words = [str(i).encode() for i in ids] + [os.fsencode(a) for a in argv]
        message = b"\0".join(words)
        try:
            view = memoryview(message)
            while view:
                view = view[os.write(self._go, view):]
        except BrokenPipeError:
            pass  # it died at its gate (a terminal's ^C meanwhile): its status says so
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
                                127 if err == errno.ENOENT and what == "run" else 126)

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
        self.killed_by = -code if code < 0 else None
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def signal(self, signo):
        if self.status is None:
            try:
                os.kill(self.pid, signo)
            except ProcessLookupError:
                pass

    @property
    def name(self):
        """COMMAND's name as a status line may show it (escaped: the caller typed it, any bytes)."""
        from .comm import safe_comm
        return safe_comm(os.fsencode(self.argv[0])) if self.argv else "COMMAND"

    @property
    def signal_name(self):
        """The name of the signal that killed COMMAND ("SIGTERM"), or None."""
        return None if self.killed_by is None else signal_name(self.killed_by)

    def outcome(self):
        """What became of COMMAND, in words: "exit status 3", "killed by SIGTERM (exit status 143)"."""
        name = self.signal_name
        return f"killed by {name} (exit status {self.status})" if name else f"exit status {self.status}"

    def in_group_of(self, pgrp):
        """True while COMMAND is in process group pgrp: then a terminal's signal to that (foreground)
        group reached COMMAND as well."""
        try:
            return os.getpgid(self.pid) == pgrp
        except OSError:
            return False


def _gate(go_r, go_w, err_r, err_w):
    """The child: wait for the word, become the user, exec. Never returns."""
    try:
        os.close(go_w)
        os.close(err_r)
        for signo in _RESET_SIGNALS:
            _signal.signal(signo, _signal.SIG_DFL)
        # after the dispositions: a signal already pending then acts as it would on COMMAND
        _signal.pthread_sigmask(_signal.SIG_SETMASK, ())
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


def block_watched():
    """Block the signals an Inbox reads, in this thread and the threads it starts from now on."""
    _signal.pthread_sigmask(_signal.SIG_BLOCK, WATCHED_SIGNALS)


def unblock_watched():
    """Take them as interruptions again (Python's handlers), pending ones first."""
    _signal.pthread_sigmask(_signal.SIG_UNBLOCK, WATCHED_SIGNALS)


# A terminal's signals come from the line discipline: drivers/tty/n_tty.c __isig() calls
# kill_pgrp(pgrp, sig, 1), whose priv=1 is SEND_SIG_PRIV, which kernel/signal.c
# __send_signal_locked() turns into si_code SI_KERNEL; kill(2) gives SI_USER, sigqueue(3)
# SI_QUEUE, tgkill(2) SI_TKILL (6.18; tests/test_watch_interactive.py sends ^C through a pty).
SI_KERNEL = 0x80
_SFD_NONBLOCK, _SFD_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC  # include/uapi/linux/signalfd.h
_SIGINFO = struct.Struct("IiiII")  # struct signalfd_siginfo's ssi_signo, ssi_errno, ssi_code, ssi_pid, ssi_uid
_SIGINFO_SIZE = 128


class Signal:
    """One signal read: its number, who sent it (a pid; 0: the kernel), and whether a terminal sent
    it to its foreground process group."""

    def __init__(self, signo, code, sender):
        self.signo, self.sender = signo, sender
        self.from_terminal = code == SI_KERNEL

    @property
    def name(self):
        return signal_name(self.signo)


class Inbox:
    """The watched signals as a readable fd (signalfd(2)), each with who sent it (its siginfo).

    The signals must be blocked in every thread (block_watched) before one can arrive: a signal
    that finds a thread not blocking it is delivered there, not queued for the fd.
    """

    def __init__(self):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        mask = (ctypes.c_ulong * (1024 // (8 * ctypes.sizeof(ctypes.c_ulong))))()  # glibc's sigset_t
        bits = 8 * ctypes.sizeof(ctypes.c_ulong)
        for signo in WATCHED_SIGNALS:
            mask[(signo - 1) // bits] |= 1 << ((signo - 1) % bits)
        fd = libc.signalfd(-1, ctypes.byref(mask), _SFD_NONBLOCK | _SFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), "signalfd")
        self._fd = fd

    def fileno(self):
        return self._fd

    def read(self):
        """The signals that came since the last read, oldest first (none: an empty list)."""
        got = []
        while True:
            try:
                data = os.read(self._fd, 16 * _SIGINFO_SIZE)
            except BlockingIOError:
                return got
            for at in range(0, len(data), _SIGINFO_SIZE):
                signo, _errno, code, sender, _uid = _SIGINFO.unpack_from(data, at)
                got.append(Signal(signo, code, sender))
