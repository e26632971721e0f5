#!/usr/bin/env python3
"""The runtime comparison of tests/test_runtimes.py for the runtimes CI cannot run: podman, docker, lxc.

They need a daemon (docker), or more set-up than a test should make (an image, a container config),
so this script is run by hand, as root, after `bash scripts/setup.sh` and an install of the runtimes
Debian has (`apt-get install podman lxc docker.io`):

    .venv/bin/python scripts/runtime-compare.py [podman] [docker] [lxc]

Each runtime runs a container of a busybox-static root file system (made here; no registry: docker
gets it by `docker import`) whose process prints its /proc/self/ns links. nstrace and strace trace
the same process tree (podman and lxc: `nstrace watch -- strace -f RUNTIME ...`; docker, whose
containers containerd starts: `nstrace watch --pid` and `strace -f -p` on containerd), and the script
reports, per runtime: whether both saw the same calls (op, flags, return value, thread), events lost,
whether the process's namespaces from inside are a record's ns_after, which comm names the calls came
from, and the container nstrace attributed them to. Exit status 0 only if every runtime tried agreed.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from runtimes import NSTRACE, SHOW_NS, Run, busybox_rootfs, ns_links, parse_strace  # noqa: E402

# Our machines' hard RLIMIT_NOFILE and RLIMIT_NPROC are below what runtimes ask for, and raising them takes
# CAP_SYS_RESOURCE, which they do not have: the runtimes are asked for what the limit allows.
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


def report(name, run, inside, note=""):
    only_ours, only_strace = run.differences()
    comms = sorted({r["comm"] for r in run.records if r["pid"] != run.strace_pid})
    moved = [r for r in run.records if r["ns_after"] and r["ns_before"] and inside
             and all(r["ns_after"].get(t) == i for t, i in inside.items() if t in ("mnt", "uts", "ipc", "net"))
             and any(r["ns_before"].get(t) != i for t, i in inside.items())]
    attributed = sorted({json.dumps(r["container"], sort_keys=True) for r in run.records if r["container"]})
    ok = run.returncode == 0 and not only_ours and not only_strace and bool(run.calls) and not run.lost() \
        and bool(moved)
    print(f"== {name}: {'AGREE' if ok else 'DIFFER'}{' (' + note + ')' if note else ''}")
    print(f"   exit {run.returncode}; strace saw {len(run.calls)} calls, nstrace {len(run.nstrace_calls())}; "
          f"lost {run.lost()}")
    for what, calls in (("only nstrace", only_ours), ("only strace", only_strace)):
        for call in calls[:10]:
            print(f"   {what}: {call}")
    print(f"   inside: {inside or 'nothing printed'}")
    print("   the record that moved it there: " +
          (f"{moved[0]['op']} by {moved[0]['comm']} (pid {moved[0]['pid']})" if moved else "NONE"))
    print(f"   callers (kernel comm): {', '.join(comms)}")
    print(f"   containers attributed: {', '.join(attributed) or 'none'}")
    if run.returncode:
        print("   stderr: " + " | ".join(run.stderr.strip().splitlines()[-4:]))
    return ok


def podman(work):
    if not shutil.which("podman"):
        return None, "podman not installed (apt-get install podman)"
    rootfs = busybox_rootfs(work / "rootfs")
    out = work / "inside"
    argv = ["sh", "-c", f"exec podman run --rm --network none {' '.join(ULIMITS)} --rootfs {rootfs} "
            f"/bin/sh -c '{SHOW_NS}' > {out}"]
    run = Run(argv, work, timeout=300)
    return report("podman", run, ns_links(out.read_text()) if out.exists() else {}), None


def lxc(work):
    if not shutil.which("lxc-start"):
        return None, "lxc not installed (apt-get install lxc)"
    rootfs = busybox_rootfs(work / "rootfs")
    (rootfs / "show.sh").write_text(f"#!/bin/sh\n{SHOW_NS} > /tmp/inside\nsleep 1\n")
    (rootfs / "show.sh").chmod(0o755)
    name = f"nstrace-{uuid.uuid4().hex[:8]}"
    conf = work / "lxc.conf"
    conf.write_text(f"lxc.uts.name = {name}\nlxc.rootfs.path = dir:{rootfs}\nlxc.net.0.type = empty\n"
                    f"lxc.mount.auto = proc:rw sys:ro\nlxc.init.cmd = /show.sh\nlxc.prlimit.nofile = 1024\n")
    run = Run(["lxc-start", "-n", name, "-f", str(conf), "-F", "-l", "ERROR", "-o", str(work / "lxc.log")], work,
              timeout=300)
    inside = rootfs / "tmp" / "inside"
    ok = report("lxc (lxc-start)", run, ns_links(inside.read_text()) if inside.exists() else {})
    return ok, None


def docker(work):
    if not shutil.which("dockerd"):
        return None, "docker.io not installed (apt-get install docker.io)"
    sock = work / "docker.sock"
    env = dict(os.environ, DOCKER_HOST=f"unix://{sock}")
    # No bridge and no iptables (neither exists in our VMs), vfs (no overlay): the least engine that runs
    daemon = subprocess.Popen(["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
                               "--storage-driver=vfs", "--data-root", str(work / "root"), "--exec-root",
                               str(work / "exec"), "-p", str(work / "docker.pid"), "-H", f"unix://{sock}"],
                              stdout=open(work / "dockerd.log", "w"), stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            if subprocess.run(["docker", "info"], env=env, capture_output=True).returncode == 0:
                break
            if daemon.poll() is not None:
                tail = (work / "dockerd.log").read_text().strip().splitlines()[-3:]
                return None, "dockerd exited: " + " | ".join(tail)
            time.sleep(0.1)
        else:
            return None, "dockerd did not answer within 30 s"
        rootfs = busybox_rootfs(work / "rootfs")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "import", "-", "nstrace-busybox:compare"], stdin=tar.stdout, env=env, check=True,
                       capture_output=True)
        tar.wait()
        containerd = next((p.pid for p in _children(daemon.pid) if p.name().startswith("containerd")), None)
        if not containerd:
            return None, "dockerd started no containerd of its own"
        # containerd starts the shims, and they runc: its descendants, for both tracers
        strace_out = work / "strace.txt"
        watch = subprocess.Popen([str(NSTRACE), "watch", "--all", "--json", "--pid", str(containerd)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert "tracing live" in watch.stderr.readline()
        tracer = subprocess.Popen(["strace", "-f", "-qq", "-o", str(strace_out), "-e",
                                   "trace=clone,clone3,unshare,setns", "-p", str(containerd)])
        time.sleep(1)
        res = subprocess.run(["docker", "run", "--rm", "--network", "none", *ULIMITS, "nstrace-busybox:compare",
                              "/bin/sh", "-c", SHOW_NS], env=env, capture_output=True, text=True, timeout=120)
        time.sleep(1)
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=30)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
        run = _Finished(out, err, strace_out, containerd, res.returncode)
        return report("docker (dockerd, containerd, runc)", run, ns_links(res.stdout),
                      note="traced at containerd: --pid and strace -p"), None
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()


def _children(pid):
    import psutil
    return psutil.Process(pid).children(recursive=True)


class _Finished(Run):
    """A Run made of a system-wide watch's output and strace -p's file (docker)."""

    def __init__(self, out, err, strace_out, traced_pid, returncode):
        self.returncode, self.stderr = returncode, err
        self.records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        summary = err.split("nstrace: summary ", 1)[1].splitlines()[0] if "summary " in err else "{}"
        self.summary = json.loads(summary)
        self.strace_pid = None
        # strace -p starts after the watch: calls nstrace saw first are left out by time, not here;
        # both were running before `docker run`, so both saw all of its
        self.calls = parse_strace(strace_out.read_text()) if strace_out.exists() else []


RUNTIMES = {"podman": podman, "docker": docker, "lxc": lxc}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runtimes", nargs="*", help=f"any of {', '.join(RUNTIMES)} (default: all)")
    a = p.parse_args(argv)
    unknown = [r for r in a.runtimes if r not in RUNTIMES]
    if unknown:
        p.error(f"unknown runtime {unknown[0]!r}: valid are {', '.join(RUNTIMES)}")
    if os.geteuid():
        sys.exit("runtime-compare: run as root")
    results = {}
    for name in a.runtimes or RUNTIMES:
        with tempfile.TemporaryDirectory(prefix=f"nstrace-{name}-") as tmp:
            try:
                ok, why = RUNTIMES[name](Path(tmp))
            except Exception as e:  # noqa: BLE001 - a report, not a test: say what broke and go on
                ok, why = False, f"{type(e).__name__}: {e}"
        if why:
            print(f"== {name}: NOT RUN: {why}")
        results[name] = ok
    failed = [n for n, ok in results.items() if ok is False]
    print(f"\n{sum(ok is True for ok in results.values())} agreed, {len(failed)} differed, "
          f"{sum(ok is None for ok in results.values())} not run")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
