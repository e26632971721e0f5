"""Real runtimes under `nstrace watch -- strace -f ...`: both tracers see the same calls of one run.

strace runs as watch's COMMAND, and traces the runtime with ptrace: every clone, clone3, fork, vfork,
unshare and setns the runtime and its descendants make is then in both traces, with the same thread ids (both see
the initial pid namespace's), and can be compared one for one: op, flags, return value. The runtime's
own processes print their /proc/self/ns links from inside, for the records' ns_after. Shared by
tests/test_runtimes.py (util-linux, iproute2, bubblewrap, runc in CI) and scripts/runtime-compare.py
(podman, docker, lxc: daemons and images, run by hand).
"""

import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

NSTRACE = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "nstrace"
CALLS = "clone,clone3,fork,vfork,unshare,setns"
_LINE = re.compile(r"^(?P<tid>\d+) +(?P<call>clone3?|v?fork|unshare|setns)\((?P<args>.*)\) += (?P<ret>-?\d+|\?)(?: (?P<errno>E[A-Z0-9]+))?")
_LINK = re.compile(r"^(?P<type>[a-z_]+):\[(?P<inode>\d+)\]$")


def parse_strace(text):
    """[(tid, op, sorted flags, ret)] from `strace -f -o FILE` output: ret as the kernel's (-errno)."""
    pending, calls = {}, []
    for line in text.splitlines():
        tid = line.split(" ", 1)[0]
        if line.endswith("<unfinished ...>"):
            pending[tid] = line[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"^(\d+) +<\.\.\. (\w+) resumed>(.*)$", line)
        if resumed:
            line = pending.pop(resumed.group(1), f"{tid} {resumed.group(2)}(") + resumed.group(3)
        m = _LINE.match(line)
        if not m or m.group("ret") == "?":
            continue  # a call that never returned (the process was killed in it)
        call, args = m.group("call"), m.group("args")
        if call == "clone":
            flags = re.search(r"flags=([A-Z0-9_|]+)", args).group(1).split("|")
        elif call == "clone3":
            flags = re.search(r"flags=([A-Z0-9_|]+|0)", args).group(1).split("|")
        elif call in ("fork", "vfork"):
            flags = ["CLONE_VFORK", "CLONE_VM"] if call == "vfork" else []  # kernel/fork.c: what each passes
        elif call == "unshare":
            flags = args.split("|")
        else:
            flags = args.split(", ", 1)[1].split("|")
        flags = sorted(f for f in flags if f.startswith("CLONE_"))  # the exit signal is not a flag
        ret = int(m.group("ret"))
        if ret == -1 and m.group("errno"):
            ret = -getattr(errno, m.group("errno"), 0) or ret
        calls.append((int(m.group("tid")), call, flags, ret))
    return calls


def ns_links(text):
    """{type: inode} of the "type:[inode]" lines in text."""
    return {m.group("type"): int(m.group("inode")) for m in map(_LINK.match, text.split()) if m}


class Run:
    """One run of argv under `nstrace watch --all --json -- strace -f ...`."""

    def __init__(self, argv, workdir, *, watch_args=(), timeout=120, env=None):
        workdir = Path(workdir)
        self.strace_out = workdir / "strace.txt"
        trace = workdir / "nstrace.jsonl"  # the runtime's own output is stdout and stderr
        res = subprocess.run([str(NSTRACE), "watch", "--all", "--json", "-o", str(trace), *watch_args, "--",
                              "strace", "-f", "-qq", "-o", str(self.strace_out), "-e", f"trace={CALLS}", *argv],
                             capture_output=True, text=True, timeout=timeout, env=env)
        self.returncode, self.stderr = res.returncode, res.stderr
        lines = trace.read_text().splitlines() if trace.exists() else []
        self.records = [json.loads(line) for line in lines if line.startswith("{")]
        summary = res.stderr.split("nstrace: summary ", 1)[1].splitlines()[0] if "summary " in res.stderr else "{}"
        self.summary = json.loads(summary)
        self.strace_pid = (self.summary.get("command") or {}).get("pid")
        self.calls = parse_strace(self.strace_out.read_text()) if self.strace_out.exists() else []

    def nstrace_calls(self):
        """The records as strace shows calls; strace's own forks (it is COMMAND) left out."""
        return [(r["tid"], r["op"], sorted(r["flags"]), r["ret"]) for r in self.records if r["pid"] != self.strace_pid]

    def differences(self):
        """(only nstrace saw, only strace saw): both empty when the traces agree."""
        ours, theirs = sorted(self.nstrace_calls()), sorted(self.calls)
        return [c for c in ours if c not in theirs], [c for c in theirs if c not in ours]

    def lost(self):
        return sum((self.summary.get("lost") or {}).values())

    def record_that_moved(self, tid):
        """The last record that put thread tid (or, for a clone, its child) in new namespaces."""
        moved = [r for r in self.records if (r["op"] in ("unshare", "setns") and r["tid"] == tid and r["ret"] == 0)
                 or (r["op"] in ("clone", "clone3") and r["child_tid"] == tid)]
        return moved[-1] if moved else None


def busybox_rootfs(root):
    """A root file system of Debian's busybox-static: /bin/busybox and its applets as links."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    root = Path(root)
    for d in ("bin", "proc", "dev", "sys", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in ("sh", "readlink", "cat", "true", "sleep", "echo"):
        (root / "bin" / applet).symlink_to("busybox")
    return root


SHOW_NS = "for e in mnt uts ipc pid net cgroup user; do readlink /proc/self/ns/$e; done"


def runc_bundle(bundle, args):
    """An OCI bundle (runc spec, then ours): busybox rootfs, read-only, no terminal, running args."""
    bundle = Path(bundle)
    busybox_rootfs(bundle / "rootfs")
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["root"] = {"path": "rootfs", "readonly": True}
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle


def pid_of(name):
    out = subprocess.run(["pidof", "-s", name], capture_output=True, text=True).stdout.strip()
    return int(out) if out else None


def have(tool):
    return shutil.which(tool) is not None


def os_release():
    return os.uname().release
