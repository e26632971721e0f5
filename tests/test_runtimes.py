"""Real runtimes, each under `nstrace watch -- strace -f ...` (tests/runtimes.py): util-linux unshare and
nsenter, `ip netns`, bubblewrap, runc with a busybox rootfs made here from Debian's busybox-static (no
registry). nstrace and strace must see the same calls (op, flags, return value, thread), nothing lost,
and the namespaces a runtime's process reports from inside (/proc/self/ns) must be its record's ns_after.
"""

import os
import subprocess
import time
import uuid

import pytest

from runtimes import SHOW_NS, Run, have, ns_links, runc_bundle

pytestmark = pytest.mark.root("runs container runtimes and loads BPF programs")


def agree(run):
    assert run.returncode == 0, run.stderr
    only_ours, only_strace = run.differences()
    assert not only_ours and not only_strace, (only_ours, only_strace)
    assert run.calls, "strace saw no namespace call: nothing was compared"
    assert not run.lost(), run.summary


def inside_matches(run, links):
    """The runtime's process printed `links` from inside: the record that moved a process there (its
    ns_after says them all, its ns_before not) exists; returns it."""
    assert links, "the process inside printed no ns links"
    candidates = [r for r in run.records if r["ns_after"] and r["ns_before"]
                  and all(r["ns_after"].get(t) == i for t, i in links.items())
                  and any(r["ns_before"].get(t) != i for t, i in links.items())]
    assert candidates, (links, [r["ns_after"] for r in run.records if r["ns_after"]])
    return candidates[0]


def test_util_linux_unshare(tmp_path):
    out = tmp_path / "inside"
    run = Run(["unshare", "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--fork",
               "sh", "-c", f"{SHOW_NS} > {out}"], tmp_path)
    agree(run)
    links = ns_links(out.read_text())
    rec = inside_matches(run, {t: links[t] for t in ("mnt", "uts", "ipc", "net", "cgroup")})
    assert rec["op"] == "unshare" and set(rec["changed"]) >= {"mnt", "uts", "ipc", "net", "cgroup", "pid_for_children"}
    # the forked child is the one in the new pid namespace: its clone's ns_after has it
    [fork] = [r for r in run.records if r["op"] in ("clone", "clone3") and r["comm"] == "unshare"]
    assert fork["ns_after"]["pid"] == links["pid"] != fork["ns_before"]["pid"]


@pytest.fixture
def holder():
    """A process in new net, uts and ipc namespaces, to enter."""
    proc = subprocess.Popen(["unshare", "--net", "--uts", "--ipc", "sleep", "60"])
    for _ in range(100):
        if os.stat(f"/proc/{proc.pid}/ns/uts").st_ino != os.stat("/proc/self/ns/uts").st_ino:
            break
        time.sleep(0.02)
    yield proc.pid
    proc.kill()
    proc.wait()


def test_util_linux_nsenter(tmp_path, holder):
    out = tmp_path / "inside"
    run = Run(["nsenter", "-t", str(holder), "--net", "--uts", "--ipc", "sh", "-c", f"{SHOW_NS} > {out}"], tmp_path)
    agree(run)
    setns = [r for r in run.records if r["op"] == "setns"]
    assert {r["target"]["type"] for r in setns} >= {"net", "uts", "ipc"}
    links = ns_links(out.read_text())
    for entry in ("net", "uts", "ipc"):
        assert links[entry] == os.stat(f"/proc/{holder}/ns/{entry}").st_ino
    rec = inside_matches(run, {t: links[t] for t in ("net", "uts", "ipc")})
    assert rec["op"] == "setns"


def test_ip_netns(tmp_path):
    name = f"nstrace-rt-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "inside"
    try:
        add = Run(["ip", "netns", "add", name], tmp_path)
        agree(add)
        [made] = [r for r in add.records if r["op"] == "unshare" and "CLONE_NEWNET" in r["flags"]]
        held = os.stat(f"/run/netns/{name}").st_ino
        assert made["ns_after"]["net"] == held  # the bind mount holds the namespace the unshare made
        exe = Run(["ip", "netns", "exec", name, "sh", "-c", f"readlink /proc/self/ns/net > {out}"], tmp_path)
        agree(exe)
        assert ns_links(out.read_text())["net"] == held
        [entered] = [r for r in exe.records if r["op"] == "setns" and r["target"]["type"] == "net"]
        assert entered["ns_after"]["net"] == entered["target"]["inode"] == held
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.mark.skipif(not have("bwrap"), reason="bubblewrap not installed (scripts/setup.sh installs it)")
def test_bubblewrap(tmp_path):
    out = tmp_path / "inside"
    run = Run(["bwrap", "--unshare-all", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
               "--bind", str(tmp_path), str(tmp_path), "sh", "-c", f"{SHOW_NS} > {out}"], tmp_path)
    agree(run)
    links = ns_links(out.read_text())
    rec = inside_matches(run, links)
    assert rec["op"] in ("clone", "clone3") and "CLONE_NEWUSER" in rec["flags"] and rec["comm"] == "bwrap"


@pytest.mark.skipif(not have("runc"), reason="runc not installed (scripts/setup.sh installs it)")
def test_runc_with_a_busybox_rootfs(tmp_path):
    bundle = runc_bundle(tmp_path / "bundle", ["/bin/sh", "-c", SHOW_NS])
    out = tmp_path / "inside"
    cid = f"nstrace-rt-{uuid.uuid4().hex[:8]}"
    try:
        # the container's stdout is runc's: what it shows, read back from a file
        run = Run(["sh", "-c", f'exec runc run --bundle {bundle} {cid} > {out}'], tmp_path)
    finally:
        subprocess.run(["runc", "delete", "--force", cid], capture_output=True)
    agree(run)
    links = ns_links(out.read_text())
    assert set(links) >= {"mnt", "uts", "ipc", "pid", "net"}
    rec = inside_matches(run, {t: links[t] for t in ("mnt", "uts", "ipc", "net")})
    assert rec["comm"].startswith("runc:["), rec["comm"]  # runc's nsexec stages name themselves
    ops = {r["op"] for r in run.records if r["comm"].startswith("runc:[")}
    assert ops & {"clone", "clone3"} and "unshare" in ops, ops
