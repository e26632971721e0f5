"""nstrace check and nstrace demo on the running kernel, and proof the launcher leaves nothing."""

import json
import os
import subprocess

import pytest
from nshelpers import ELSEWHERE, NSTRACE

from nstrace.check import catalogue, checker, launcher, scenario
from nstrace.check.launcher import Launcher
from nstrace.errors import LauncherError
from nstrace.linux import procns


def same_host_state(before, after):
    """Nothing added. (Another launcher's leftovers from a killed run may be reaped meanwhile.)"""
    assert set(after.pop("state")) <= set(before.pop("state"))
    assert after == before


def host_state():
    """What a launcher could leave behind, as the host sees it."""
    def out(*argv):
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    mounts = sorted(line.split(" - ")[0].split(" ", 4)[4] for line in open("/proc/self/mountinfo"))
    children = sorted(p.pid for p in __import__("psutil").Process().children(recursive=True))
    return {"mounts": mounts, "netns": out("ip", "netns", "list"), "links": out("ip", "-o", "link", "show"),
            "children": children,
            # the launcher's own entries: the boot cache beside them (core-*.btf) is made by any load
            "state": sorted(n for n in os.listdir(launcher.STATE_DIR) if n.startswith(("launcher-", "work-")))
            if launcher.STATE_DIR.exists() else []}


def test_whole_catalogue_passes_and_leaves_nothing():
    before = host_state()
    res = subprocess.run([str(NSTRACE), "check", "--json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr
    results = json.loads(res.stdout)
    assert {r["scenario"] for r in results} == set(catalogue.CATALOGUE)
    # a scenario this kernel cannot run is skipped, and says why (the 7.x mount-namespace births here)
    assert all(r["ok"] or r["skipped"] for r in results)
    # every operation was traced, and its documented tracepoint steps were observed here
    for r in results:
        for op in r["operations"]:
            unseeable = any(c["check"] == "visible" for c in op["checks"])  # a death, where none is visible
            if op["op"] != "facts" and not unseeable:
                assert op["record"], (r["scenario"], op)
                observed = {s["name"] for s in op["kernel_path"] if s["status"] == "observed"}
                if op["op"] in ("clone", "clone3", "unshare", "setns"):
                    assert f"syscalls:sys_enter_{op['op']}" in observed
    same_host_state(before, host_state())


def test_check_table_and_exit_code():
    res = subprocess.run([str(NSTRACE), "check", "unshare-uts", "fail-eperm"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "unshare-uts" in res.stdout and "PASS" in res.stdout and "2 passed, 0 failed" in res.stdout


def test_check_list_counts_the_catalogue_and_speaks_json():
    res = subprocess.run([str(NSTRACE), "check", "--list"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    names = [line.split()[0] for line in res.stdout.splitlines()]
    assert names == list(catalogue.CATALOGUE) and res.stderr == f"nstrace: {len(names)} scenarios\n", res.stderr
    res = subprocess.run([str(NSTRACE), "check", "--list", "--json"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)  # one document, nothing else on stdout
    assert listed == [{"scenario": sc.name, "summary": sc.summary} for sc in catalogue.CATALOGUE.values()]
    res = subprocess.run([str(NSTRACE), "check", "--json", "--list", "unshare-uts", "fail-eperm"],
                         capture_output=True, text=True, timeout=60)
    assert [sc["scenario"] for sc in json.loads(res.stdout)] == ["unshare-uts", "fail-eperm"]
    assert res.stderr == "nstrace: 2 scenarios\n"
    res = subprocess.run([str(NSTRACE), "check", "--list", "no-such-scenario"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown scenario" in res.stderr


def test_unknown_scenario():
    res = subprocess.run([str(NSTRACE), "check", "no-such-scenario"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "unknown scenario" in res.stderr


def test_a_scenario_failing_midway_is_undone(tracer):
    """Resources made before a scenario breaks are all undone, and the failure is reported."""
    def broken(lnch):
        lnch.holder(["uts", "net"])
        lnch.netns("broken")
        lnch.bind_ns(lnch.holder(["ipc"]), "ipc")
        raise LauncherError("broken on purpose after making things")

    before = host_state()
    sc = scenario.Scenario("broken", "fails midway", broken)
    with checker.tracer_for_check() as t:
        result = checker.run_scenario(sc, t)
    assert not result.ok and "broken on purpose" in result.error
    same_host_state(before, host_state())


def test_killed_launcher_is_cleaned_by_the_next(tmp_path):
    """A launcher killed mid-scenario (SIGKILL) leaves a state file; the next launcher undoes it."""
    script = ("import sys, time\nfrom nstrace.check.launcher import Launcher\n"
              f"l = Launcher(state_dir={str(tmp_path)!r})\nl.holder(['uts'])\nl.netns('killed')\n"
              "print(l.id, flush=True)\ntime.sleep(600)\n")
    # run elsewhere: from the checkout, `python -c` would import its nstrace, which has no built _bpf/
    proc = subprocess.Popen([str(NSTRACE.parent / "python"), "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=ELSEWHERE)
    run_id = proc.stdout.readline().strip()
    assert run_id
    assert f"nstrace-{run_id}-killed" in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                       text=True).stdout
    [state] = tmp_path.glob("launcher-*.json")
    made = [r for r in json.loads(state.read_text())["resources"] if r["kind"] == "process"]
    assert len(made) == 2, "util-linux unshare and its sleep child"
    proc.kill()
    proc.wait()
    with Launcher(state_dir=tmp_path):
        pass  # constructing one reaps the dead one's leftovers
    assert f"nstrace-{run_id}" not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                    text=True).stdout
    assert list(tmp_path.iterdir()) == []
    assert all(procns.start_ticks(r["value"]) != r["start"] for r in made), "a holder survived"


@pytest.mark.parametrize("op,flags", [("clone", "NEWPID|NEWNS|NEWUTS"), ("clone3", "newtime,newnet"),
                                      ("unshare", "CLONE_NEWPID|newuser"), ("setns", "NEWNET|NEWUTS")])
def test_demo(op, flags):
    res = subprocess.run([str(NSTRACE), "demo", "--op", op, "--flags", flags], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "== What the kernel did" in out and "== Namespaces" in out and "== Kernel path of" in out
    assert "result: trace matches the documented path" in out
    if op == "clone":
        assert "pid=1" in out and "hostname=nstrace-demo" in out and "proc_pids=[1]" in out


def test_demo_unknown_flag():
    res = subprocess.run([str(NSTRACE), "demo", "--flags", "NEWPID|NEWBOGUS"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "unknown flag 'NEWBOGUS'" in res.stderr and "NEWPID" in res.stderr


def test_demo_clone_newtime_is_refused():
    res = subprocess.run([str(NSTRACE), "demo", "--op", "clone", "--flags", "NEWTIME"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2 and "clone3" in res.stderr


def test_the_lab_table_names_kernel_5_10_as_typed():
    """tabulate reads "5.10" as the number 5.1 unless told not to parse numbers."""
    from nstrace.view import reports
    table = reports.lab_table([{"kernel": "5.10", "release": "5.10.0-46-amd64", "summary": "tests: 1 passed",
                                "duration_s": 12.0}])
    assert table.splitlines()[-1].split()[0] == "5.10", table
