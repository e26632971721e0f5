"""Run a command under a stock Debian kernel booted in QEMU, with this machine's root shared read-only.

Why this exists (shared/kernel-env.md): the build machines' kernel has no kprobes and refuses fentry, so
the kernel-function layer of nstrace can only be exercised on another kernel.  Debian's own kernels have
both; QEMU's TCG boots them here in seconds, and because the guest chroots into the host's root (9p,
read-only) the host's Python, virtualenvs, libbpf and compiled BPF objects run in it unchanged.

Flow: resolve a kernel name to Debian package(s) (lab.apt) -> download and unpack once into a cache
(lab.kernels) -> build a tiny busybox initramfs that loads the kernel's own 9p modules (lab.initramfs)
-> boot, run the command, read its output and exit status from its own serial port between unique
marker lines (here).
"""

from __future__ import annotations

import dataclasses
import os
import re
import selectors
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, TextIO

from ..errors import BootError, GuestLockup, GuestTimeout, LabError, ToolMissing
from . import apt, kernels
from .host import last_line, require
from .initramfs import BUSYBOX, init_script, scratch_mounts, write_initramfs

BOOT_TIMEOUT_S = 150

# The guest kernel's command line.  Its console (ttyS0) carries kernel messages only; the command's
# output has a port of its own (ttyS1, see init_script), so no kernel message can split it.  A hang
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
GUEST_CPUS = "2"
GUEST_BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "LANG": "C.UTF-8",
    # stdout is the serial console, a tty: keep colour codes (pytest, ls) out of the captured output.
    "TERM": "dumb",
    # The host root is read-only in the guest: stop Python from trying to write __pycache__.
    "PYTHONDONTWRITEBYTECODE": "1",
}


@dataclasses.dataclass(frozen=True)
class GuestResult:
    kernel: str
    kernel_release: str  # `uname -r` inside the guest
    returncode: int
    output: str  # the command's stdout+stderr, from its own serial port (no kernel messages in it)
    duration_s: float  # qemu start to qemu exit
    boot_s: float  # qemu start until the command started
    console: str = dataclasses.field(default="", repr=False)  # the kernel's console (ttyS0)


def run_in_guest(kernel: str, argv: list[str], *, cwd: str, env: dict[str, str] | None = None,
                 timeout: float = 600, log: TextIO | None = None,
                 kernel_args: tuple[str, ...] = (), tcg_thread: str = TCG_THREAD) -> GuestResult:
    """Boot `kernel`, run `argv` in `cwd` on the read-only host root, return its exit status and output.

    `env` is added to a small base environment (PATH, HOME=/tmp, LANG, PYTHONDONTWRITEBYTECODE); the
    host's own environment is not passed on.  `log` receives the command's output as it arrives.
    `kernel_args` are added to KERNEL_ARGS.  A lockup, stall or panic raises GuestLockup at once.
    `tcg_thread`: "single" (one host thread runs every vCPU) or "multi" (a thread per vCPU), see
    TCG_THREAD; "multi" is there to reproduce the hang it causes (scripts/lab-lockup-loop.py).  `timeout`
    covers the guest (boot + command), not a first download of the kernel.
    Writable in the guest: tmpfs on /tmp, /run, /var/tmp, /dev/shm; everything else is read-only (so
    run pytest with `-p no:cacheprovider`, and create virtualenvs under /tmp).
    """
    if not argv:
        raise LabError("empty command")
    if not os.path.isabs(cwd) or not os.path.isdir(cwd):
        raise LabError(f"working directory {cwd!r} is not an absolute directory on this machine")
    full_env = dict(GUEST_BASE_ENV, **(env or {}))
    for key in full_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LabError(f"bad environment variable name {key!r}")
    qemu = require("qemu-system-x86_64")
    if not Path(BUSYBOX).exists():
        raise ToolMissing(f"{BUSYBOX} missing: install busybox-static")

    spec = apt.resolve(kernel)
    unpacked = kernels.prepare(spec)
    modules = kernels.load_order(unpacked)
    marker = f"NSTRACE-LAB-{uuid.uuid4().hex}"
    scratch = scratch_mounts(cwd)
    if "/tmp" not in scratch:
        # The working directory lives under /tmp (a CI checkout, say): a tmpfs there would hide it.
        # Python, pytest and HOME then write to /run/tmp instead.
        full_env.setdefault("TMPDIR", "/run/tmp")
        if full_env.get("HOME") == "/tmp":
            full_env["HOME"] = "/run/tmp"
    init = init_script([m for m, _ in modules], argv, cwd, full_env, marker, scratch)

    with tempfile.TemporaryDirectory(prefix="nstrace-lab-") as tmp:
        initrd = Path(tmp) / "initrd.cpio"
        write_initramfs(initrd, init, modules)
        command = [
            qemu,
            # kernel-env.md: -enable-kvm hangs on these machines (no nested virtualisation); TCG only.
            "-accel", f"tcg,thread={tcg_thread}", "-cpu", "max", "-smp", GUEST_CPUS, "-m", GUEST_MEMORY,
            "-display", "none", "-monitor", "none", "-no-reboot", "-nic", "none",
            "-kernel", str(unpacked.vmlinuz), "-initrd", str(initrd),
            "-append", " ".join((*KERNEL_ARGS, *kernel_args)),
            "-virtfs", "local,path=/,mount_tag=host,security_model=none,readonly=on,multidevs=remap",
            # ttyS0: the kernel's console on qemu's stdout; ttyS1: the command's channel (a pipe)
            "-serial", "stdio", "-serial", "chardev:out",
        ]
        try:
            return _supervise(command, kernel, marker, timeout, log)
        except (BootError, GuestTimeout) as first:
            # TCG guests very rarely panic or stall before the command starts (seen a few times in
            # dozens of boots here); one more boot tells a fluke from a real failure. A failure
            # after the command began is the command's, a lockup is never a fluke, and a caller's
            # own short timeout is theirs.
            if first.began or isinstance(first, GuestLockup) or \
                    (isinstance(first, GuestTimeout) and timeout <= BOOT_TIMEOUT_S):
                raise
            return _supervise(command, kernel, marker, timeout, log)


def _die_with_parent() -> None:
    # qemu lives in its own session (so Ctrl-C reaches us, not the guest); if nstrace is killed
    # outright (SIGKILL, a test's timeout) the guest must not run on: PR_SET_PDEATHSIG.
    import ctypes
    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)


# After the console first shows a lockup, the guest's own panic should end qemu within seconds;
# this is how long the host waits for it (the stacks still print) before killing qemu itself.
LOCKUP_GRACE_S = 60


def _supervise(command: list[str], kernel: str, marker: str, timeout: float, log: TextIO | None) -> GuestResult:
    start = time.monotonic()
    out_r, out_w = os.pipe()
    command = [*command, "-chardev", f"file,id=out,path=/proc/self/fd/{out_w}"]
    # Own process group: a Ctrl-C meant for us must not reach qemu before we kill it ourselves.
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_die_with_parent,
                                pass_fds=(out_w,))
    finally:
        os.close(out_w)
    channel = os.fdopen(out_r, "rb", buffering=0)
    console, output, errors = bytearray(), bytearray(), bytearray()
    begin_at = lockup_at = None
    lockup = re.compile("|".join(LOCKUP_PATTERNS).encode())

    def deadline() -> float:
        # A healthy guest reaches the command in 5-25 s: a stalled boot is cut short and retried.
        limit = start + (timeout if begin_at else min(timeout, BOOT_TIMEOUT_S))
        return min(limit, lockup_at + LOCKUP_GRACE_S) if lockup_at else limit

    try:
        for stream, chunk in _read_until_exit(proc, (proc.stdout, proc.stderr, channel), deadline):
            if stream is proc.stdout:
                console += chunk
                if lockup_at is None and lockup.search(console[-len(chunk) - 200:]):
                    lockup_at = time.monotonic()
            elif stream is channel:
                output += chunk
                if log is not None:
                    log.write(chunk.decode(errors="replace"))
                    log.flush()
                if begin_at is None and f"{marker} BEGIN".encode() in output:
                    begin_at = time.monotonic()
            else:
                errors += chunk
        try:  # every pipe closed: qemu is exiting, but may not have yet
            proc.wait(max(0.0, deadline() - time.monotonic()))
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        for pipe in (proc.stdout, proc.stderr, channel):
            pipe.close()
    duration = time.monotonic() - start
    text = console.decode(errors="replace").replace("\r\n", "\n")
    out = output.decode(errors="replace")
    began = begin_at is not None

    if lockup_at is not None or lockup.search(console):
        raise GuestLockup(f"guest {kernel} locked up {'while the command ran' if began else 'during boot'}: "
                          f"{lockup_report(text).splitlines()[0]}", text, out, began)
    if timed_out:
        phase = "the command" if began else "boot"
        limit = timeout if began else min(timeout, BOOT_TIMEOUT_S)
        raise GuestTimeout(f"guest {kernel} timed out after {limit:g} s during {phase}; "
                           f"last output line: {last_line(out or text)!r}", text, out, began)
    return _parse_console(text, out, kernel, marker, duration, (begin_at or start) - start, proc.returncode,
                          errors.decode(errors="replace"))


def lockup_report(console: str) -> str:
    """The part of a guest console that tells why it hung: from the first lockup, stall or panic
    line to the end (every CPU's stack under KERNEL_ARGS), or the console's last lines if none."""
    match = re.search("|".join(LOCKUP_PATTERNS), console)
    lines = console[match.start():].splitlines() if match else console.splitlines()[-60:]
    return "\n".join(lines) if lines else "(empty console)"


def _read_until_exit(proc: subprocess.Popen, streams, deadline) -> Iterator[tuple[object, bytes]]:
    with selectors.DefaultSelector() as selector:
        for pipe in streams:
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline() - time.monotonic()
            if remaining <= 0:
                return
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                else:
                    yield key.fileobj, chunk


def _parse_console(text: str, out: str, kernel: str, marker: str, duration: float, boot: float, qemu_rc: int,
                   qemu_stderr: str) -> GuestResult:
    failed = re.search(rf"{marker} FAIL (.*)$", out, re.M)
    if failed:
        raise BootError(f"guest {kernel} could not set up: {failed.group(1).strip()}", text, out)
    release = re.search(rf"{marker} RELEASE (\S+)", out)
    begin = out.find(f"{marker} BEGIN\n")
    end = re.search(rf"\n{marker} EXIT (-?\d+)\n", out)
    if release is None or begin < 0 or end is None:
        panic = re.search(r"Kernel panic[^\n]*", text)
        if panic:
            reason = panic.group(0)
        elif begin >= 0:
            reason = "guest died while the command ran"
        elif qemu_rc != 0:
            reason = f"qemu exited with {qemu_rc}: {last_line(qemu_stderr)}"
        else:
            reason = f"no start marker; last console line: {last_line(text)!r}"
        raise BootError(f"guest {kernel}: {reason}", text, out, begin >= 0)
    output = out[begin + len(marker) + len(" BEGIN\n") : end.start()]
    return GuestResult(kernel=kernel, kernel_release=release.group(1), returncode=int(end.group(1)),
                       output=output, duration_s=duration, boot_s=boot, console=text)
