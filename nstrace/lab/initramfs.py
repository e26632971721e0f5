"""The guest's initramfs: busybox, the kernel's own 9p modules, and an init that mounts the host's root
read-only, relays the command's stdout and stderr to ports of their own, and reports how many bytes
each stream carried and the command's exit status."""

from __future__ import annotations

import shlex
from pathlib import Path

GUEST_PRINTK = "7 4 1 7"  # /proc/sys/kernel/printk while the command runs: NMI backtrace headers are pr_info
BUSYBOX = "/bin/busybox"  # from busybox-static: the initramfs has no libc

# Writable scratch the guest gets on top of the read-only host root; pip, pytest and Python's tempfile
# need these.  Writes vanish with the guest.  Not /root: on this machine it holds the Python (pyenv)
# that has pytest, which a tmpfs would hide; HOME points into /tmp instead.
GUEST_TMPFS = ("/tmp", "/run", "/var/tmp", "/dev/shm")


class _Cpio:
    """Writer for the "newc" cpio format the kernel unpacks as initramfs (no staging directory needed)."""

    def __init__(self, out):
        self.out = out
        self.ino = 1

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        fields = [self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.out.write(header + name.encode() + b"\0")
        self.out.write(b"\0" * (-(len(header) + len(name) + 1) % 4))
        self.out.write(data + b"\0" * (-len(data) % 4))
        self.ino += 1

    def dir(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def chardev(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def close(self) -> None:
        self._entry("TRAILER!!!", 0)


def scratch_mounts(cwd: str, needed: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The writable tmpfs mounts for a guest whose command runs in cwd: never one that hides cwd or a
    path the command needs (its program: `lab -- ARGS` runs this nstrace's interpreter, and a
    checkout's .venv may live under /tmp, as in CI)."""
    keep = (cwd, *needed)
    return tuple(p for p in GUEST_TMPFS if not any(under(k, p) for k in keep))


def under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


# Mounted by init over the host's: a working directory under one of them is not the host's.
GUEST_MOUNTS = ("/proc", "/sys", "/dev")


def can_bring_back(cwd: str, scratch: tuple[str, ...]) -> bool:
    """Whether files written in cwd can come back: cwd is a directory of the host's root in the guest
    (not / itself, which holds every other mount, nor inside a mount the guest makes)."""
    return cwd != "/" and not any(under(cwd, m) for m in (*GUEST_MOUNTS, *scratch))


# The ports (virtio_console) the host gives a guest, by name: init's control channel (its markers
# out, the host's acknowledgement in), the command's stdout and stderr, and the tar of the files it
# wrote.  Names, not numbers: /dev/vport<device>p<port> numbers the device by probe order.
PORTS = ("nstrace.control", "nstrace.stdout", "nstrace.stderr", "nstrace.files")

# How long after the command exits a process it left behind may keep its stdout or stderr open.  Until
# every writer has closed a stream it has not ended; after this the stragglers are killed and the
# stream is reported as one that did not end (the host's error).  Only a command that leaves a writer
# behind waits at all.
STREAM_GRACE_S = 2


def streams(*, merge_stderr: bool, bring_back: bool) -> tuple[str, ...]:
    """The streams init sends on the port of that name, each ending with the end mark."""
    return ("stdout", *(() if merge_stderr else ("stderr",)), *(("files",) if bring_back else ()))


def end_mark(token: str) -> bytes:
    """What init writes after a stream's last byte.  It starts with a NUL, which text never holds, so
    the host can pass text on at once and keep back only a tail that may be the mark's beginning."""
    return b"\0NSTRACE-LAB-END-" + token.encode() + b"\0"


def init_script(modules: list[str], argv: list[str], cwd: str, env: dict[str, str], token: str,
                scratch: tuple[str, ...] = GUEST_TMPFS, *, merge_stderr: bool = True,
                bring_back: bool = False) -> str:
    """The init that runs argv; `token` (letters and digits) makes the end mark of its streams."""
    host_mounts = [
        "mount -t proc proc /host/proc",
        "mount -t sysfs sysfs /host/sys",
        "mount -t devtmpfs devtmpfs /host/dev",
        "mkdir -p /host/dev/pts /host/dev/shm",
        "mount -t devpts devpts /host/dev/pts",
        # What udev makes on a booted system and devtmpfs does not: without them `-o /dev/stdout` in a
        # guest would write a regular file of that name.
        "ln -s /proc/self/fd /host/dev/fd && ln -s fd/0 /host/dev/stdin && ln -s fd/1 /host/dev/stdout "
        "&& ln -s fd/2 /host/dev/stderr",
        # Not mounted by default, and the kernel-function layer needs both (kernel-notes/build-machines.md: tracefs).
        "mount -t tracefs tracefs /host/sys/kernel/tracing",
        "mount -t bpf bpf /host/sys/fs/bpf",
        "mount -t debugfs debugfs /host/sys/kernel/debug",
        # As systemd would: until cgroup2 is mounted the kernel lists no v2 line in /proc/<pid>/cgroup
        # (kernel/cgroup/cgroup.c proc_cgroup_show skips the default root while cgrp_dfl_visible is false).
        "mount -t cgroup2 cgroup2 /host/sys/fs/cgroup",
        *(f"mount -t tmpfs -o mode=1777 tmpfs /host{path}" for path in scratch),
        "mkdir -p -m 1777 /host/run/tmp",
    ]
    if bring_back:
        # The command's working directory becomes an overlay: the host's files below, what the command
        # writes above, on a tmpfs of the initramfs that only init sees (the command runs chrooted into
        # the host's root).  After the command, init sends the upper layer as a tar on its own port and
        # the host writes its regular files, the way nstrace writes every output file (outfiles.py).
        # The host's root stays read-only throughout: no guest can write a file of this machine.
        here = shlex.quote("/host" + cwd)
        host_mounts += [
            "mkdir -p /upper && mount -t tmpfs -o mode=0700 tmpfs /upper && mkdir /upper/u /upper/w",
            f"mount -t overlay overlay -o lowerdir={here},upperdir=/upper/u,workdir=/upper/w {here}",
        ]
    # Not a plain `chroot /host`: the kernel refuses CLONE_NEWUSER to a chrooted task
    # (kernel/user_namespace.c create_user_ns: current_chrooted() -> EPERM), and the tests create
    # user namespaces. As switch_root does, the host root is moved onto / first; chroot(".") then
    # lands on the top mount of the namespace root, which current_chrooted() accepts. This shell
    # keeps the initramfs as its own root and still finds busybox, the ports, its pipes and /upper.
    move_root = "cd /host && mount --move /host /"
    run = "cd \"$1\" || exit 125; shift; exec \"$@\""
    command = " ".join(shlex.quote(w) for w in [
        "chroot", ".", "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
        "/bin/sh", "-c", run, "nstrace-lab", cwd, *argv,
    ])
    relayed = list(streams(merge_stderr=merge_stderr, bring_back=False))
    mark = _printf(end_mark(token))
    # fd 3 is the boot channel (ttyS1): why setup failed, before the ports exist.  Raw, so the tty's
    # line discipline neither turns \n into \r\n nor echoes anything back.
    fail = 'fail() { echo "FAIL $*" >&3; echo "FAIL $*"; poweroff -f; }'
    # The ports appear once virtio_console has talked to qemu, a little after its probe.
    find_port = ('port() { for p in /sys/class/virtio-ports/*; do '
                 '[ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && [ -c "/dev/${p##*/}" ] && '
                 '{ echo "/dev/${p##*/}"; return 0; }; done; return 1; }')
    wait_ports = ('i=0; until ctl=$(port nstrace.control) && out=$(port nstrace.stdout) && '
                  'err=$(port nstrace.stderr) && files=$(port nstrace.files); do i=$((i+1)); '
                  '[ $i -gt 1000 ] && fail no virtio ports; sleep 0.01; done')
    lines = [
        "#!/bin/busybox sh",
        "/bin/busybox --install -s",
        "export PATH=/bin:/sbin:/usr/bin:/usr/sbin",
        "mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev",
        # the kernel's UTS name until someone sets one is "(none)" (init/version.c, UTS_NODENAME): a session
        # header, a page's title and show would name the guest so
        "hostname nstrace-lab",
        "stty -F /dev/ttyS1 raw -echo; exec 3>/dev/ttyS1",
        fail,
        find_port,
        *(f"insmod /modules/{m}.ko || fail insmod {m}" for m in modules),
        # ro: the guest must never write the host's files; remap: the host root spans several devices.
        "mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose host /host "
        "|| fail mount 9p host root",
        *(f"{m} || fail {shlex.quote(m)}" for m in host_mounts),
        wait_ports,
        # Init opens every port now and holds it until poweroff: virtio_console lets one open file have
        # a port at a time (drivers/char/virtio_console.c port_fops_open: -EBUSY, 5.10 and 6.1), so the
        # command can open none of them, and neither send a tar nor a marker of init's.
        f'exec 4<>"$ctl" {_FD["files"]}>"$files" {_FD["stdout"]}>"$out" {_FD["stderr"]}>"$err"',
        "say() { echo \"$*\" >&4; }",
        f"{move_root} || fail {shlex.quote(move_root)}",
        'say "RELEASE $(uname -r)"',
        f"echo {GUEST_PRINTK} > /proc/sys/kernel/printk",
        *(f"mkfifo /{name}; cat </{name} >&{_FD[name]} & {name}_relay=$!" for name in relayed),
        "say BEGIN",
        # The command writes into pipes, never into a port: a write to a port takes at most 32 KiB
        # (drivers/char/virtio_console.c port_fops_write, 5.10 and 6.1) and many programs do not write
        # the rest (Python's text layer, unbuffered, drops it), where a pipe takes all.
        f'{command} </dev/null >/stdout {"2>&1" if merge_stderr else "2>/stderr"} 3>&- 4>&- 5>&- 6>&- 7>&-',
        "rc=$?",
        *_end_relays(relayed),
        *(f"printf '{mark}' >&{_FD[name]}" for name in relayed),
        *([f"tar -cf - -C /upper/u . >&{_FD['files']} || say FAIL tar of the files written",
           f"printf '{mark}' >&{_FD['files']}"] if bring_back else []),
        'say "EXIT $rc"',
        # Until the host has every stream's end, a port may still hold data (qemu stops taking a
        # port's data while the host's pipe is full), and poweroff would drop it.
        "read -r ack <&4",
        "poweroff -f",
    ]
    return "\n".join(lines) + "\n"


# The file descriptors of the ports init holds, besides 4, the control port (3 is ttyS1).
_FD = {"stdout": 6, "stderr": 7, "files": 5}


def _printf(data: bytes) -> str:
    """data as a printf(1) format: octal escapes for what is not a letter or digit."""
    return "".join(chr(b) if chr(b).isalnum() else f"\\{b:03o}" for b in data)


def _end_relays(names: list[str]) -> list[str]:
    """Wait for every writer of the command's streams to close them.  A stream whose relay still runs
    STREAM_GRACE_S after the command exited is reported (CUT NAME), and whatever else runs is killed,
    so that the relay reads the stream to its end: everything written until then still arrives."""
    cut = " ".join(f'alive ${n}_relay && say "CUT {n}";' for n in names)
    relays = " ".join(f"${n}_relay" for n in names)
    return [
        'alive() { read -r _ _ state _ </proc/$1/stat 2>/dev/null && [ "$state" != Z ]; }',
        # The watchdog spares init, itself and the relays; kernel threads ignore every signal
        # (kernel/kthread.c kthreadd: ignore_signals(), which the threads it starts inherit; 6.1).
        f"( sleep {STREAM_GRACE_S}; {cut} read -r self _ </proc/self/stat; "
        f'for p in /proc/[0-9]*; do p=${{p#/proc/}}; case " 1 $self {relays} " in *" $p "*) ;; '
        "*) kill -9 $p 2>/dev/null;; esac; done ) & dog=$!",
        f"wait {relays}; kill $dog 2>/dev/null",
    ]


def write_initramfs(path: Path, init: str, modules: list[tuple[str, bytes]]) -> None:
    with open(path, "wb") as out:
        cpio = _Cpio(out)
        for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "host", "modules"):
            cpio.dir(d)
        cpio.chardev("dev/console", 5, 1)  # init's stdout before devtmpfs is mounted
        cpio.file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
        for name, image in modules:
            cpio.file(f"modules/{name}.ko", image)
        cpio.file("init", init.encode(), 0o755)
        cpio.close()
