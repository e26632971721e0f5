"""Whether KVM runs a guest on this machine, asked once per boot of it.

KVM boots a lab kernel in well under a second where TCG takes seconds, but on the build machines
(themselves VMs without nested virtualisation) `/dev/kvm` exists and does not work: qemu aborts at
once ("failed to set MSR 0x10a") or hangs (kernel-notes/build-machines.md).  So the first guest of a boot tries: it
starts the kernel under KVM with no initramfs and waits a few seconds for its banner on the console.
The verdict is kept in /run/nstrace/kvm-<boot id>.txt for the rest of the boot, root's alone like
every file there (trusted_paths), because it decides how root starts qemu.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time

from ..linux import trusted_paths
from .host import require

STATE_DIR = "/run/nstrace"
PROBE_TIMEOUT_S = 8.0


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _state_file() -> str:
    return os.path.join(STATE_DIR, f"kvm-{_boot_id()}.txt")


def verdict(image_fd: int) -> tuple[bool, str, bool]:
    """(KVM works, why not, the answer was already known this boot).  image_fd: a kernel to try."""
    path = _state_file()
    try:
        trusted_paths.trusted_dir(STATE_DIR, create=True)
        cached = trusted_paths.read_file(path)
    except OSError:
        cached = None  # no /run/nstrace: the answer is only not kept
    if cached is not None:
        works, _, why = cached.strip().partition(" ")
        return works == "yes", why, True
    works, why = probe(image_fd)
    try:
        trusted_paths.write_whole(path, f"{'yes' if works else 'no'} {why}\n")
    except OSError:
        pass
    return works, why, False


def probe(image_fd: int) -> tuple[bool, str]:
    """Start the kernel under KVM and see whether it prints its banner within PROBE_TIMEOUT_S."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, f"/dev/kvm: {e.strerror}"
    os.close(fd)
    command = [require("qemu-system-x86_64"), "-accel", "kvm", "-cpu", "host", "-m", "256M", "-nodefaults",
               "-display", "none", "-no-reboot", "-kernel", f"/proc/self/fd/{image_fd}",
               # no initramfs: the kernel panics at the root mount, and panic=-1 ends qemu
               "-append", "console=ttyS0 loglevel=8 panic=-1", "-serial", "stdio"]
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            pass_fds=(image_fd,), start_new_session=True)
    console, errors = bytearray(), bytearray()
    deadline = time.monotonic() + PROBE_TIMEOUT_S
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, console)
            selector.register(proc.stderr, selectors.EVENT_READ, errors)
            while selector.get_map() and b"Linux version" not in console:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fileobj.fileno(), 65536)
                    if chunk:
                        key.data.extend(chunk)
                    else:
                        selector.unregister(key.fileobj)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if b"Linux version" in console:
        return True, ""
    lines = [line.strip() for line in errors.decode(errors="replace").splitlines() if line.strip()]
    if lines:
        # "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion ..." -> the last part
        return False, "qemu -accel kvm: " + re.sub(r"^(qemu-system-\S+: )?(\S+:\d+: )?", "", lines[-1])
    return False, f"a KVM guest printed nothing within {PROBE_TIMEOUT_S:g} s"
