"""Study mode: each step of a kernel path explains itself.

What a step does and the kernel-notes paragraph of the concept it teaches are facts of
kernel-notes/paths.toml (`does`, `notes`, and the paragraph's `gist` in [concept]); they ship in the
wheel, every record's steps carry them in JSON, and `--explain` prints them under each row of
`demo` and `show`. Held here: each pointer to its anchor, each hooked function to a text, the
installed package to them outside the checkout, and the views on the lab's sessions (5.10, 6.1,
6.12, 7.2) and on this machine's own demo (syscall layer only).
"""

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from nshelpers import NSTRACE

from nstrace.kernel import documented
from nstrace.kernel.functions import FUNCTIONS
from nstrace.session import reader

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "kernel-notes"
DATA = Path(__file__).resolve().parent / "data"
SESSIONS = {"5.10": DATA / "lab-5.10-demo-newuts.jsonl", "6.1": DATA / "lab-6.1-demo-newns.jsonl",
            "6.12": DATA / "lab-6.12-demo-newuts.jsonl", "7.2": DATA / "lab-7.2-demo-newuts.jsonl"}
PATHS = tomllib.loads((NOTES / "paths.toml").read_text())


def _nstrace(*args, cwd=None):
    return subprocess.run([str(NSTRACE), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


def test_every_notes_pointer_names_a_concept_whose_anchor_exists():
    steps = [*PATHS["function"].values(), *PATHS["tracepoint"].values()]
    pointers = {f["notes"] for f in steps if "notes" in f}
    assert pointers == set(PATHS["concept"]), pointers ^ set(PATHS["concept"])
    for pointer, concept in PATHS["concept"].items():
        file, anchor = pointer.split("#")
        text = (NOTES / file).read_text()
        assert text.count(f'<a id="{anchor}"></a>') == 1, pointer
        assert len(concept["gist"]) > 60, pointer


def test_the_concepts_the_issue_names_are_pointed_to():
    """pid for children, nsproxy sharing, refcounts and freeing, setns's nsset, mount copying."""
    assert documented.notes_pointer("copy_pid_ns") == "pid.md#pid-for-children"
    assert "alloc_pid(p->nsproxy->pid_ns_for_children" in (NOTES / "pid.md").read_text().split(
        '<a id="pid-for-children"></a>')[1].split("\n\n")[0]
    assert documented.notes_pointer("copy_namespaces") == "clone.md#nsproxy-sharing"
    assert documented.notes_pointer("switch_task_namespaces") == "lifetime-and-identity.md#refcounts-and-freeing"
    assert documented.notes_pointer("utsns_install") == "setns.md#nsset"
    assert documented.notes_pointer("copy_mnt_ns") == "mnt.md#mount-copying"


def test_every_hooked_function_and_documented_step_says_what_it_does():
    assert [f for f in FUNCTIONS[1:] if not documented.does(f)] == []
    steps = {s["name"] for op in PATHS["op"].values() for s in op["step"]}
    assert sorted(s for s in steps if not documented.does(s)) == []


def test_the_installed_package_has_the_texts_outside_the_checkout(tmp_path):
    """The wheel ships paths.toml: show --explain in a directory with no kernel-notes beside it."""
    done = _nstrace("show", "--explain", str(SESSIONS["6.1"]), "--op", "clone", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = re.sub(r"\s*\n\s*\|\s+", " ", done.stdout)
    assert "notes: kernel-notes/pid.md#pid-for-children: " + documented.gist("pid.md#pid-for-children") in said
    import importlib.util
    installed = Path(importlib.util.find_spec("nstrace").origin).parent / "kernel" / "paths.toml"
    assert tomllib.loads(installed.read_text())["concept"] == PATHS["concept"]


def _explained_rows(out):
    """{function: (its row, the --explain lines under it)} of show's kernel-path table."""
    rows, current = {}, None
    for line in out.splitlines():
        m = re.match(r"^ {4}( *)(\w+)\(", line)
        if m and not line.lstrip().startswith("| "):
            current = m.group(2)
            rows[current] = (line, [])
        elif current and line.lstrip().startswith("| "):
            rows[current][1].append(line.strip()[2:])
    return rows


@pytest.mark.parametrize("series", SESSIONS)
def test_show_explain_puts_each_step_s_text_under_its_row(series):
    done = _nstrace("show", "--explain", str(SESSIONS[series]), "--op", "clone")
    assert done.returncode == 0, done.stderr
    rows = _explained_rows(done.stdout)
    line, under = rows["copy_utsname"]
    said = " ".join(under)
    assert re.sub(r"\s+", " ", said).startswith("does: " + documented.does("copy_utsname")), under
    assert "notes: kernel-notes/clone.md#nsproxy-sharing" in said
    for func, (_, under) in rows.items():
        assert under and under[0].startswith("does: "), (func, under)
    # without --explain the table is as it was
    plain = _nstrace("show", str(SESSIONS[series]), "--op", "clone").stdout
    assert "| does:" not in plain and plain.splitlines() == [
        x for x in done.stdout.splitlines() if not x.lstrip().startswith("| ")]


def test_a_gist_is_said_once_a_record_then_named():
    done = _nstrace("show", "--explain", str(SESSIONS["6.1"]), "--op", "clone")
    text = done.stdout
    gist_start = documented.gist("clone.md#nsproxy-sharing")[:30]
    record = text.partition("NEWNS|NEWUTS|NEWPID")[2]
    assert record.count(gist_start) == 1 and "notes: kernel-notes/clone.md#nsproxy-sharing (above)" in record


def test_json_steps_carry_does_and_notes_within_the_schema():
    done = _nstrace("show", "--json", str(SESSIONS["7.2"]))
    assert done.returncode == 0, done.stderr
    steps = [s for line in done.stdout.splitlines() for s in json.loads(line)["kernel_path"]]
    entries = [s for s in steps if s["kind"] == "enter"]
    assert entries and all(s["does"] == documented.does(s["func"]) for s in entries)
    assert {s["notes"] for s in entries if s["func"] == "copy_pid_ns"} == {"kernel-notes/pid.md#pid-for-children"}
    assert not any("does" in s for s in steps if s["kind"] == "exit")  # said once a call, on its entry
    # and a session carrying them reads back (the schema holds the two fields)
    sess = reader.load(SESSIONS["7.2"])
    assert any("does" in s for r in sess.records for s in r.kernel_path)


def test_explain_is_for_the_table():
    done = _nstrace("show", "--json", "--explain", str(SESSIONS["7.2"]))
    assert done.returncode == 2 and done.stderr.startswith("nstrace: error: --explain is for the table"), done.stderr


@pytest.mark.root("runs demo: a clone with CLONE_NEWUTS, traced")
def test_demo_explain_on_this_machine_explains_the_documented_steps():
    """Here only the syscall layer runs: the documented steps nstrace cannot observe still say what
    they do, under their rows; the JSON of check carries the same."""
    done = _nstrace("demo", "--flags", "NEWUTS", "--explain")
    assert done.returncode == 0, done.stderr
    table = done.stdout.split("== Kernel path of")[1]
    at = table.index("\n        copy_utsname ")
    under = table[at:].split("\n")[2:5]
    assert under[0].strip() == "| does: " + documented.does("copy_utsname")[:len(under[0].strip()) - 8], under
    assert "| notes: kernel-notes/clone.md#nsproxy-sharing" in table
    plain = _nstrace("demo", "--flags", "NEWUTS")
    assert "| does:" not in plain.stdout


@pytest.mark.lab
@pytest.mark.root("boots a 6.1 guest and runs demo in it as root")
def test_demo_explain_on_6_1_in_the_lab(tmp_path):
    """The function layer runs only in the lab: one 6.1 boot, demo --explain there, its path rows
    right (alloc_mnt_ns under copy_mnt_ns, returning the new mount namespace, before the syscall's
    exit) and each observed step explained; the session it brings back carries the texts."""
    done = subprocess.run([str(NSTRACE), "lab", "--kernel", "6.1", "--", "demo", "--explain", "--record", "d.jsonl"],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "result: trace matches the documented path" in out
    table = out.split("== Kernel path of")[1]
    m = re.search(r"^ {8}copy_utsname +observed +\(NEWNS\|NEWUTS\|NEWPID\) = uts:\[\d+\] new .*\n"
                  r" {10}\| does: (.*)\n", table, re.M)
    assert m and documented.does("copy_utsname").startswith(m.group(1).strip()), table
    mnt = re.search(r"^ {10}alloc_mnt_ns +observed +\(\) = mnt:\[(\d+)\] \(count 1\)", table, re.M)
    assert mnt and table.index("copy_mnt_ns ") < mnt.start() < table.index("syscalls:sys_exit_clone"), table
    assert "undocumented" not in table and "nsproxy: the parent's " in out
    sess = reader.load(tmp_path / "d.jsonl")
    [clone] = [r for r in sess.records if r.op == "clone" and r.changed]
    entries = {s["func"]: s for s in clone.kernel_path if s["kind"] == "enter"}
    assert entries["copy_pid_ns"]["notes"] == "kernel-notes/pid.md#pid-for-children"
    assert entries["alloc_mnt_ns"]["does"] == documented.does("alloc_mnt_ns")
