"""7.1's empty mount namespaces (clone3 CLONE_EMPTY_MNTNS, unshare UNSHARE_EMPTY_MNTNS): skipped, and
refused by demo, on a kernel before 7.1 with the reason; checked scenarios, demo and the JSON record in
the lab's sid guest (7.2), where the kernel has them."""

import json
import shutil
import subprocess
import textwrap

import pytest
from nshelpers import NSTRACE, PYTHON

from nstrace.check import scenario

pytestmark = pytest.mark.root("makes namespaces and loads BPF programs")

SCENARIOS = ["empty-mntns-clone3", "empty-mntns-unshare"]
BEFORE_7_1 = scenario.lacks_empty_mntns(0x00100000, "unshare") is not None


@pytest.mark.skipif(not BEFORE_7_1, reason="this kernel has the 7.1 flags (the sid guest test runs them)")
def test_skipped_before_7_1_with_the_reason():
    res = subprocess.run([str(NSTRACE), "check", "--json", *SCENARIOS], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr
    results = json.loads(res.stdout)
    assert [r["scenario"] for r in results] == SCENARIOS
    for r, flag in zip(results, ("CLONE_EMPTY_MNTNS", "UNSHARE_EMPTY_MNTNS")):
        assert r["skipped"].endswith(f"has no {flag}: Linux 7.1+"), r


@pytest.mark.skipif(not BEFORE_7_1, reason="this kernel has the 7.1 flags (the sid guest test runs them)")
@pytest.mark.parametrize("op", ["unshare", "clone3"])
def test_demo_says_the_kernel_lacks_it(op):
    res = subprocess.run([str(NSTRACE), "demo", "--op", op, "--flags", "EMPTY_MNTNS"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 4 and res.stderr.count("\n") == 1, res.stdout + res.stderr
    assert "Linux 7.1+" in res.stderr and "--kernel sid" in res.stderr


def test_demo_takes_only_the_ops_namespace_flags():
    """unshare has no CLONE_PARENT_SETTID: its bit is UNSHARE_EMPTY_MNTNS; clone3 has no UNSHARE_ flag."""
    res = subprocess.run([str(NSTRACE), "demo", "--op", "unshare", "--flags", "PARENT_SETTID"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "unknown flag 'PARENT_SETTID'" in res.stderr, res.stderr
    res = subprocess.run([str(NSTRACE), "demo", "--op", "clone3", "--flags", "UNSHARE_EMPTY_MNTNS"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "unknown flag" in res.stderr, res.stderr


IN_GUEST = textwrap.dedent("""
    import json, os, subprocess, sys, tempfile
    nstrace = sys.argv[1]
    # a scratch directory the guest can write: /tmp is the host's, read-only, when nstrace lives there (CI)
    record = os.path.join(tempfile.mkdtemp(), "d.jsonl")
    check = subprocess.run([nstrace, "check", "--json", *sys.argv[2:]], capture_output=True, text=True)
    demo = subprocess.run([nstrace, "demo", "--op", "clone3", "--flags", "EMPTY_MNTNS", "--record", record],
                          capture_output=True, text=True)
    records = [json.loads(line) for line in open(record) if line.startswith("{")] if demo.returncode == 0 else []
    # with other types, whose inside view reads /proc (ipc) and whose uid map is written through it (user)
    mixed = subprocess.run([nstrace, "demo", "--op", "unshare", "--flags", "EMPTY_MNTNS|NEWUSER|NEWIPC"],
                           capture_output=True, text=True)
    print(json.dumps({"check": check.returncode, "results": json.loads(check.stdout or "[]"), "demo": demo.returncode,
                      "demo_out": demo.stdout + demo.stderr[-1000:],
                      "records": [r for r in records if r.get("op") == "clone3"],
                      "mixed": mixed.returncode, "mixed_out": mixed.stdout + mixed.stderr[-2000:]}))
""")


@pytest.mark.lab
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed")
def test_the_scenarios_and_demo_in_the_sid_guest():
    from nstrace.lab import guest
    result = guest.run_in_guest("sid", [PYTHON, "-c", IN_GUEST, str(NSTRACE), *SCENARIOS], cwd="/", timeout=900)
    assert result.returncode == 0, result.output[-3000:] + result.console[-2000:]
    out = json.loads(result.output.strip().splitlines()[-1])
    assert out["check"] == 0 and [(r["scenario"], r["ok"]) for r in out["results"]] == [(n, True) for n in SCENARIOS], out
    assert out["demo"] == 0, out["demo_out"]
    assert "mounts=1" in out["demo_out"], out["demo_out"]  # the child sees one mount, its root
    assert out["mixed"] == 0, out["mixed_out"]
    assert "mounts=1" in out["mixed_out"] and "msg_queues=0" in out["mixed_out"], out["mixed_out"]
    [rec] = out["records"]
    assert rec["flags"] == ["CLONE_EMPTY_MNTNS"] and rec["changed"] == ["mnt"], rec
    # the kernel added CLONE_NEWNS (kernel_clone(), kernel/fork.c 7.2.13): create_new_namespaces sees both
    [entry] = [s for s in rec["kernel_path"] if s["func"] == "create_new_namespaces" and s["kind"] == "enter"]
    assert set(entry["flags"]) >= {"CLONE_NEWNS", "CLONE_EMPTY_MNTNS"}, entry
