"""The benchmark starts and produces a well-formed table and JSON (`python -m bench --quick`).

The benchmark itself is not part of the test suite: its full run takes
minutes and its figures depend on the machine. This only checks that it runs
end to end on the real kernel with tiny durations, so it does not rot.
"""

import json
import subprocess
import sys

import pytest

from nshelpers import ROOT


@pytest.mark.root("loads BPF programs")
def test_quick_benchmark_table_and_json(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--tools", "strace", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)  # a 15 s run; the bound is for a hang, not for speed
    assert r.returncode == 0, r.stderr[-2000:]
    doc = json.loads(out.read_text())
    figures = {(f["figure"], f["variant"]): f for f in doc["figures"]}
    for key in [("churn: slowdown", "nstrace / untraced"), ("unshare: slowdown", "nstrace / untraced"),
                ("start: exec -> first event captured", "nstrace"), ("getppid()", "untraced")]:
        f = figures[key]
        assert f["n"] >= 1 and f["min"] <= f["median"] <= f["max"], key
    assert any(f["figure"] == "kernel ns per probe hit" for f in doc["figures"])
    # numbers are in the unit their row names, in the JSON as in the table: no start takes under 5 ms
    start = figures[("start: exec -> first event captured", "nstrace")]
    assert start["unit"] == "ms" and 5 < start["median"] < 60_000, start
    # every target of issue 5 is stated, with a verdict or the reason it was not measured
    assert {t["target"] for t in doc["targets"]} == {"live", "shutdown", "churn", "unshare", "rate", "memory", "probe",
                                                     "library", "live-26", "live-bpftrace", "command", "command-ns",
                                                     "probe-26", "unshare-26"}
    # where start-up goes (issue 26): each step, and the verifier's time for the bodies by name
    steps = {f["variant"] for f in doc["figures"] if f["figure"] == "start-up breakdown"}
    assert {"nstrace: object load (bpf(), the verifier)", "nstrace: attach"} <= steps, steps
    per_program = {f["variant"] for f in doc["figures"] if f["figure"] == "start-up breakdown: verifier per program"}
    assert {"nstrace: sys_enter", "nstrace: sys_exit"} <= per_program, per_program
    # the library's enter and exit (issue 25), in every repetition's fresh process
    library = [f for f in doc["figures"] if f["figure"] == "library: nstrace.trace()"]
    assert len(library) == 6 and all(f["n"] >= 1 and f["unit"] == "ms" for f in library), library
    assert all(t["holds"] in (True, False, None) and t["detail"] for t in doc["targets"])
    # the same on stdout, as a table
    assert "| figure" in r.stdout and ("HOLDS" in r.stdout or "MISSED" in r.stdout)
    for tool, state in doc["tools"].items():
        assert state == "available" or any(tool in n for n in doc["notes"])
    check_hook_set_rows(doc, r.stdout)


def check_hook_set_rows(doc, stdout):
    """Every hook set has a row in every "hook set:" figure: measured, or refused with the reason."""
    from bench import hooks

    rows = [f for f in doc["figures"] if f["figure"].startswith("hook set: ")]
    base = {f["variant"]: f for f in rows if f["figure"] == "hook set: untraced baseline"}
    assert set(base) == {"unshare()", "getppid()"} and all(f["n"] >= 1 for f in base.values())
    sets = doc["hook_sets"]
    assert set(sets) == {k for k, _, _ in hooks.HOOK_SETS}
    # the hook set nstrace uses loads here by definition; fentry is the one this kernel may refuse
    assert sets["tracepoints"]["status"] == "measured"
    for _, figure, unit, _ in hooks.FIGURES:
        got = [f for f in rows if f["figure"] == figure]
        assert len(got) == len(hooks.HOOK_SETS) and all(f["unit"] == unit for f in got), figure
        for (key, label, _), f in zip(hooks.HOOK_SETS, got):
            assert f["variant"].startswith(label), (figure, f["variant"])
            if sets[key]["status"] == "measured":
                assert f["n"] >= 1 and f["min"] <= f["median"] <= f["max"], (figure, key)
            else:
                assert sets[key]["status"].startswith("refused: ") and sets[key]["error"]
                assert f["n"] == 0 and f["median"] is None and sets[key]["status"] in f["variant"]
    for key, s in sets.items():
        if s["status"] == "measured":
            # the programs really fired: each unshare() ran an entry and an exit program, and counted once in each
            assert min(s["bpf_runs_per_unshare"]) >= 2 and min(s["hits_per_unshare"]) >= 1, key
    slowdown = [f for f in rows if f["figure"] == "hook set: unshare loop slowdown" and f["n"]]
    assert all(f["min"] > 0.5 for f in slowdown)
    assert any(n.startswith("hook set cheapest for the traced syscalls") for n in doc["notes"])
    assert any(n.startswith("hook set cheapest for the rest of the machine") for n in doc["notes"])
    assert "| hook set: getppid tax" in stdout
