"""Run a command under a stock Debian kernel booted in QEMU, with this machine's root shared read-only.

Why this exists (kernel-notes/build-machines.md): the build machines' kernel has no kprobes and refuses fentry, so
the kernel-function layer of nstrace can only be exercised on another kernel.  Debian's own kernels have
both; QEMU's TCG boots them here in seconds, and because the guest chroots into the host's root (9p,
read-only) the host's Python, virtualenvs, libbpf and compiled BPF objects run in it unchanged.

Flow: resolve a kernel name to Debian package(s) (lab.apt) -> download once and keep the kernel and the
modules a guest loads (lab.kernels) -> build a tiny busybox initramfs that loads them (lab.initramfs)
-> boot under KVM where it works (lab.kvm), else TCG -> run the command; read its stdout, stderr and
the files it wrote from ports of their own, each ended by a mark of init's, and init's markers (the
exit status) from a control port; once every stream's end mark is here the host says so on that
port, and only then does the guest power off (here).
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import re
import selectors
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, TextIO

from ..errors import BootError, GuestFailure, GuestInterrupted, GuestLockup, GuestTimeout, LabError, ToolMissing
from . import apt, kernels, kvm
from .host import last_line, require
from .initramfs import (BUSYBOX, PORTS, STREAM_GRACE_S, can_bring_back, end_mark, init_script, scratch_mounts,
                        streams, write_initramfs)
from .status import Status, quiet

BOOT_TIMEOUT_S = 150

# The guest kernel's command line.  Its console (ttyS0) carries kernel messages only; the command's
# stdout and stderr have ports of their own (virtio_console, initramfs.PORTS), as have init's markers,
# and why a boot failed has a serial port (ttyS1), so no kernel message can split the output.  A hang
# must end the run at once with every CPU's stack, not at the timeout (kernel/watchdog.c, 6.1-7.2):
# softlockup_panic panics on a soft lockup, softlockup_all_cpu_backtrace first has every other CPU
# print its stack (NMI), panic=-1 with qemu's -no-reboot ends qemu on the panic, and hung_task_panic
# does the same for a task stuck in D state for 120 s (kernel/hung_task.c).  loglevel=5 lets the
# stack dumps through (printed at KERN_DEFAULT, 4; `quiet` allows only levels below 4) and keeps the
# boot's info chatter off the slow emulated UART; init raises it to 7 once booted (initramfs.GUEST_PRINTK).
KERNEL_ARGS = ("console=ttyS0", "loglevel=5", "panic=-1", "softlockup_panic=1",
               "softlockup_all_cpu_backtrace=1", "hung_task_panic=1")
# What on the kernel's console means the guest is wedged: each ends the run as GuestLockup.  (Not an
# RCU stall warning: under TCG on a busy host a slow grace period is no hang, and a real one ends in
# a soft lockup anyway.)
LOCKUP_PATTERNS = (r"watchdog: BUG: soft lockup", r"INFO: task \S+ blocked for more than",
                   r"Kernel panic - not syncing")
# TCG with one host thread for every vCPU, not a thread per vCPU (qemu's default, MTTCG): under
# MTTCG a vCPU can translate a block of kernel code while another vCPU is patching it (text_poke_bp,
# arch/x86/kernel/alternative.c), and keep the stale translation; a CPU that then runs the patched
# site traps on an int3 that memory no longer holds, forever (kernel-notes/text-patching-under-tcg.md).
# One thread cannot translate and store at once, so that window does not exist.
TCG_THREAD = "single"
GUEST_MEMORY = "1536M"
GUEST_CPUS = 2
GUEST_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    # Output goes to a port, not a terminal: no colour codes or cursor movement (pytest, ls).
    "TERM": "dumb",
    # The host root is read-only in the guest: stop Python from trying to write __pycache__.
    "PYTHONDONTWRITEBYTECODE": "1",
}


@dataclasses.dataclass(frozen=True)
class GuestResult:
    kernel: str
    kernel_release: str  # `uname -r` inside the guest
    returncode: int
    output: str  # the command's stdout (and its stderr, unless split), from its own port: no kernel message in it
    duration_s: float  # qemu start to qemu exit
    boot_s: float  # qemu start until the command started
    console: str = dataclasses.field(default="", repr=False)  # the kernel's console (ttyS0)
    errors: str = ""  # the command's stderr, when split from its output
    files: bytes | None = dataclasses.field(default=None, repr=False)  # tar of what it wrote in cwd (bring_back)
    accel: str = ""  # "kvm", or "tcg" and why not KVM


Sink = Callable[[bytes], None]


def run_in_guest(kernel: str, argv: list[str], *, cwd: str, env: dict[str, str] | None = None,
                 timeout: float = 600, log: TextIO | None = None, stdout: Sink | None = None,
                 stderr: Sink | None = None, bring_back: bool = False, kernel_args: tuple[str, ...] = (),
                 tcg_thread: str = TCG_THREAD, cpus: int = GUEST_CPUS, accel: str | None = None,
                 status: Status = quiet, should_stop: Callable[[], bool] | None = None) -> GuestResult:
    """Boot `kernel`, run `argv` in `cwd` on the read-only host root, return its exit status and output.

    `env` is added to a small base environment (PATH, HOME=/tmp, LANG, PYTHONDONTWRITEBYTECODE); the
    host's own environment is not passed on.  The command's output arrives as it is written: to
    `stdout(bytes)` if given, and as text to `log`.  With `stderr(bytes)` given, the command's stderr
    is kept apart (GuestResult.errors); otherwise it is part of the output.  `bring_back`: what the
    command writes under cwd is kept in GuestResult.files (a tar) instead of vanishing with the guest.
    `kernel_args` are added to KERNEL_ARGS.  A lockup, stall or panic raises GuestLockup at once.
    `tcg_thread`: "single" (one host thread runs every vCPU) or "multi" (a thread per vCPU), see
    TCG_THREAD; "multi" is there to reproduce the hang it causes (scripts/lab-lockup-loop.py).
    `accel`: "kvm" or "tcg"; by default KVM where it works (kvm.py), else TCG.  `timeout` covers the
    guest (boot + command), not a first download of the kernel.  `status` receives progress lines
    (download, boot); `should_stop()` true ends the guest (GuestInterrupted).
    Writable in the guest: tmpfs on /tmp, /run, /var/tmp, /dev/shm, and cwd with `bring_back`;
    everything else is read-only (so run pytest with `-p no:cacheprovider`, and create virtualenvs
    under /tmp).
    """
    if not argv:
        raise LabError("empty command")
    if not os.path.isabs(cwd) or not os.path.isdir(cwd):
        raise LabError(f"working directory {cwd!r} is not an absolute directory on this machine")
    cwd = os.path.normpath(cwd)
    full_env = dict(GUEST_BASE_ENV, **(env or {}))
    for key in full_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LabError(f"bad environment variable name {key!r}")
    qemu = require("qemu-system-x86_64")
    if not Path(BUSYBOX).exists():
        raise ToolMissing(f"{BUSYBOX} missing: install busybox-static")

    scratch = scratch_mounts(cwd, tuple(a for a in argv[:1] if os.path.isabs(a)))
    if "/tmp" not in scratch:
        # The working directory lives under /tmp (a CI checkout, say): a tmpfs there would hide it.
        # Python, pytest and HOME then write to /run/tmp instead.
        full_env.setdefault("TMPDIR", "/run/tmp")
        if full_env.get("HOME") == "/tmp":
            full_env["HOME"] = "/run/tmp"
    if bring_back and not can_bring_back(cwd, scratch):
        raise LabError(f"files written in {cwd} cannot come back from the guest: run it in a directory of "
                       "your own (not /, /proc, /sys, /dev or a tmpfs the guest mounts)")

    spec = apt.resolve(kernel, status)
    unpacked = kernels.prepare(spec, status)
    image_fd, modules = kernels.boot_files(unpacked)
    token = uuid.uuid4().hex
    init = init_script([m for m, _ in modules], argv, cwd, full_env, token, scratch,
                       merge_stderr=stderr is None, bring_back=bring_back)
    ended = streams(merge_stderr=stderr is None, bring_back=bring_back)
    try:
        accel, why_not_kvm = _accelerator(accel, image_fd, status)
        if accel == "kvm":
            machine = ["-accel", "kvm", "-cpu", "host"]
        else:
            # kernel-notes/build-machines.md: -enable-kvm hangs or aborts on these machines (no nested virtualisation).
            machine = ["-accel", f"tcg,thread={tcg_thread}", "-cpu", "max"]
        with tempfile.TemporaryDirectory(prefix="nstrace-lab-") as tmp:
            initrd = Path(tmp) / "initrd.cpio"
            write_initramfs(initrd, init, modules)
            command = [
                qemu, *machine, "-smp", str(cpus), "-m", GUEST_MEMORY,
                # No default devices (VGA, IDE, floppy, parallel port, NIC): fewer to probe at boot.
                "-nodefaults", "-display", "none", "-no-reboot",
                # The ELF kernel boots by its PVH entry: nothing to decompress under emulation (bzimage.py).
                "-kernel", f"/proc/self/fd/{image_fd}", "-initrd", str(initrd),
                "-append", " ".join((*KERNEL_ARGS, *kernel_args)),
                "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
                # ttyS0: the kernel's console on qemu's stdout; ttyS1: why setup failed (boot)
                "-serial", "stdio", "-serial", "chardev:boot",
                # init's markers, the command's stdout, stderr and files: a port each (initramfs.PORTS)
                "-device", "virtio-serial-pci,id=ports",
                *(arg for nr, name in enumerate(PORTS, 1) for arg in
                  ("-device", f"virtserialport,bus=ports.0,nr={nr},chardev={name.split('.')[1]},name={name}")),
            ]
            status(f"booting {unpacked.release} under QEMU (" + ("KVM" if accel == "kvm" else
                   f"TCG, {tcg_thread}-threaded" + (", no KVM here" if why_not_kvm else "")) + ")")

            def attempt() -> GuestResult:
                return _supervise(command, kernel, ended, end_mark(token), timeout, log, stdout, stderr, image_fd,
                                  status, should_stop, accel + (f" ({why_not_kvm})" if why_not_kvm else ""))

            try:
                return attempt()
            except (BootError, GuestTimeout) as first:
                # TCG guests very rarely panic or stall before the command starts (seen a few times in
                # dozens of boots here); one more boot tells a fluke from a real failure. A failure
                # after the command began is the command's, a lockup is never a fluke, and a caller's
                # own short timeout is theirs.
                if first.began or isinstance(first, GuestLockup) or \
                        (isinstance(first, GuestTimeout) and timeout <= BOOT_TIMEOUT_S):
                    raise
                status(f"the guest failed before the command started ({first}); booting once more")
                return attempt()
    finally:
        os.close(image_fd)


def _accelerator(accel: str | None, image_fd: int, status) -> tuple[str, str]:
    """("kvm" or "tcg", why not KVM when it is TCG by default)."""
    if accel in ("kvm", "tcg"):
        return accel, ""
    if accel is not None:
        raise LabError(f"unknown accelerator {accel!r}: kvm or tcg")
    works, why, known = kvm.verdict(image_fd)
    if not known:
        status("KVM " + ("works here" if works else f"does not work here ({why}): TCG") +
               " (asked once per boot of this machine)")
    return ("kvm", "") if works else ("tcg", f"no KVM: {why}")


def _die_with_parent() -> None:
    # qemu lives in its own session (so Ctrl-C reaches us, not the guest); if nstrace is killed
    # outright (SIGKILL, a test's timeout) the guest must not run on: PR_SET_PDEATHSIG.
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


# After the console first shows a lockup, the guest's own panic should end qemu within seconds;
# this is how long the host waits for it (the stacks still print) before killing qemu itself.
LOCKUP_GRACE_S = 60

# The tar of the files a command wrote is held in memory: more than this is refused.
FILES_MAX_BYTES = 512 << 20


def _supervise(command: list[str], kernel: str, ended: tuple[str, ...], mark: bytes, timeout: float,
               log: TextIO | None, on_stdout: Sink | None, on_stderr: Sink | None, image_fd: int, status,
               should_stop, accel: str) -> GuestResult:
    start = time.monotonic()
    # One pipe per channel; qemu writes each through /proc/self/fd/N (a "file" chardev).  The control
    # port also carries the host's acknowledgement into the guest: a socket pair, qemu's end a "socket"
    # chardev (qemu 7.2 takes no input path for a "file" one).  Its host end stays open until qemu has
    # exited: at a hang-up qemu would close the port, and init's writes to it would block.
    pipes = {name: os.pipe() for name in ("boot", "stdout", "stderr", "files")}
    pipes["control"] = tuple(s.detach() for s in socket.socketpair())
    command = [*command, *(arg for name, (_, w) in pipes.items() for arg in (
        "-chardev", f"socket,id={name},fd={w}" if name == "control" else f"file,id={name},path=/proc/self/fd/{w}"))]
    # Own process group: a Ctrl-C meant for us must not reach qemu before we kill it ourselves.
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_die_with_parent,
                                pass_fds=(image_fd, *(w for _, w in pipes.values())))
    finally:
        for _, w in pipes.values():
            os.close(w)
    readers = {name: os.fdopen(r, "rb", buffering=0) for name, (r, _) in pipes.items()}
    got = {name: bytearray() for name in ("console", "qemu", *pipes)}
    text_log = codecs.getincrementaldecoder("utf-8")(errors="replace") if log is not None else None
    begin_at = lockup_at = None
    acked = False
    passed = {"stdout": 0, "stderr": 0}  # bytes of each stream handed on

    def deliver(name: str, data: bytes) -> None:
        sink = on_stderr if name == "stderr" and on_stderr is not None else on_stdout
        if sink is not None:
            sink(data)
        if text_log is not None:
            log.write(text_log.decode(data))
            log.flush()

    lockup = re.compile("|".join(LOCKUP_PATTERNS).encode())
    channels = {proc.stdout: "console", proc.stderr: "qemu", **{f: name for name, f in readers.items()}}
    interrupted = too_big = False

    def deadline() -> float:
        # A healthy guest reaches the command in 2-25 s: a stalled boot is cut short and retried.
        limit = start + (timeout if begin_at else min(timeout, BOOT_TIMEOUT_S))
        return min(limit, lockup_at + LOCKUP_GRACE_S) if lockup_at else limit

    try:
        for stream, chunk in _read_until_exit(channels, deadline, should_stop):
            if stream is None:
                interrupted = True
                break
            name = channels[stream]
            if name == "files" and len(got["files"]) + len(chunk) > FILES_MAX_BYTES:
                too_big = True
                break
            got[name] += chunk
            if name == "console":
                if lockup_at is None and lockup.search(got["console"][-len(chunk) - 200:]):
                    lockup_at = time.monotonic()
            elif name in ("stdout", "stderr"):
                # All but a tail that may be the start of the end mark, which is not the command's.
                ready = len(got[name]) - _mark_begun(got[name], mark)
                if ready > passed[name]:
                    deliver(name, bytes(got[name][passed[name]:ready]))
                    passed[name] = ready
            elif name == "control" and begin_at is None and re.search(rb"^BEGIN$", got["control"], re.M):
                begin_at = time.monotonic()
                status(f"booted in {begin_at - start:.1f} s")
            if not acked and name != "console" and _all_here(got, ended, mark):
                acked = True
                try:
                    os.write(readers["control"].fileno(), b"\n")  # the guest may power off now
                except OSError:
                    pass  # qemu is gone already (a panic): what arrived is judged below
        try:  # every pipe closed: qemu is exiting, but may not have yet
            proc.wait(0 if interrupted or too_big else max(0.0, deadline() - time.monotonic()))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = not (interrupted or too_big)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pipe in (proc.stdout, proc.stderr, *readers.values()):
            pipe.close()
    duration = time.monotonic() - start
    whole = {name: got[name].endswith(mark) for name in ended}
    for name in ("stdout", "stderr"):
        if len(got[name]) > passed[name] and not whole.get(name):
            deliver(name, bytes(got[name][passed[name]:]))  # no end mark: the held tail was the command's
    data = {name: bytes(got[name][:-len(mark)] if whole.get(name) else got[name])
            for name in ("stdout", "stderr", "files")}
    text = got["console"].decode(errors="replace").replace("\r\n", "\n")
    out = data["stdout"].decode(errors="replace")
    began = begin_at is not None
    control = got["control"].decode(errors="replace")
    end = re.search(r"^EXIT (-?\d+)$", control, re.M)

    if lockup_at is not None or lockup.search(got["console"]):
        raise GuestLockup(f"guest {kernel} locked up {'while the command ran' if began else 'during boot'}: "
                          f"{lockup_report(text).splitlines()[0]}", text, out, began)
    if interrupted:
        raise GuestInterrupted(f"guest {kernel} stopped: interrupted", text, out, began)
    if too_big:
        raise LabError(f"guest {kernel}: the files the command wrote exceed {FILES_MAX_BYTES >> 20} MiB")
    if timed_out:
        phase = "the command's output (the command had exited)" if end else "the command" if began else "boot"
        limit = timeout if began else min(timeout, BOOT_TIMEOUT_S)
        raise GuestTimeout(f"guest {kernel} timed out after {limit:g} s during {phase} (--timeout); "
                           f"last output line: {last_line(out or text)!r}", text, out, began)
    # ttyS1 is init's until the command begins; after that anything on it is the command's.
    failed = re.search(r"^FAIL (.*)$", control, re.M) or \
        (None if began else re.search(r"^FAIL (.*)$", got["boot"].decode(errors="replace"), re.M))
    if failed:
        raise BootError(f"guest {kernel} could not set up: {failed.group(1).strip()}", text, out, began)
    release = re.search(r"^RELEASE (\S+)$", control, re.M)
    if release is None or not began or end is None:
        panic = re.search(r"Kernel panic[^\n]*", text)
        qemu_rc = proc.returncode
        if panic:
            reason = panic.group(0)
        elif began:
            reason = "guest died while the command ran"
        elif qemu_rc != 0:
            reason = f"qemu exited with {qemu_rc}: {last_line(got['qemu'].decode(errors='replace'))}"
        else:
            reason = f"no start marker; last console line: {last_line(text)!r}"
        raise BootError(f"guest {kernel}: {reason}", text, out, began)
    for name in ended:
        problem = _unended(name, whole[name], len(got[name]), control)
        if problem:
            raise GuestFailure(f"guest {kernel}: {problem}", text, out, began)
    return GuestResult(kernel=kernel, kernel_release=release.group(1), returncode=int(end.group(1)),
                       output=out, duration_s=duration, boot_s=begin_at - start, console=text,
                       errors=data["stderr"].decode(errors="replace"),
                       files=data["files"] if "files" in ended and data["files"] else None, accel=accel)


def _unended(name: str, whole: bool, arrived: int, control: str) -> str | None:
    """Why stream `name` did not come whole: its end mark never arrived, or init says it cut it."""
    what = "the files the command wrote" if name == "files" else f"the command's {name}"
    if not whole:
        return f"{what} was cut: its end never arrived ({arrived} bytes did)"
    if re.search(rf"^CUT {name}$", control, re.M):
        return (f"{what} did not end: a process the command left behind still held it open "
                f"{STREAM_GRACE_S} s after the command exited, and was killed")
    return None


def _mark_begun(data: bytearray, mark: bytes) -> int:
    """How many of data's last bytes are the beginning of the end mark (all of it, at the end)."""
    for size in range(min(len(mark), len(data)), 0, -1):
        if data.endswith(mark[:size]):
            return size
    return 0


def _all_here(got: dict[str, bytearray], ended: tuple[str, ...], mark: bytes) -> bool:
    """Whether init has exited the command and every stream's end mark has arrived."""
    return bool(re.search(rb"^EXIT -?\d+$", got["control"], re.M)) and \
        all(got[name].endswith(mark) for name in ended)


def lockup_report(console: str) -> str:
    """The part of a guest console that tells why it hung: from the first lockup, stall or panic
    line to the end (every CPU's stack under KERNEL_ARGS), or the console's last lines if none."""
    match = re.search("|".join(LOCKUP_PATTERNS), console)
    lines = console[match.start():].splitlines() if match else console.splitlines()[-60:]
    return "\n".join(lines) if lines else "(empty console)"


def _read_until_exit(streams, deadline, should_stop) -> Iterator[tuple[object, bytes]]:
    """(stream, chunk) as they come until every stream is closed or the deadline passes; (None, b"")
    once should_stop() turns true (it is asked at least every STOP_POLL_S)."""
    with selectors.DefaultSelector() as selector:
        for pipe in streams:
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map():
            if should_stop is not None and should_stop():
                yield None, b""
                return
            remaining = deadline() - time.monotonic()
            if remaining <= 0:
                return
            for key, _ in selector.select(min(remaining, STOP_POLL_S)):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                else:
                    yield key.fileobj, chunk


STOP_POLL_S = 0.25
