"""`nstrace compare`: one scenario recorded on several kernels, read as one path.

The sessions in tests/data/ are real: `nstrace lab --kernel 5.10 --kernel sid -- demo --flags NEWUTS
--record d.jsonl` (and --kernel 6.12) on 2026-12-06, Debian's 5.10.262 (kprobes), 6.12.118 and sid's
7.2.13 (fentry). Compare needs no root and no lab: sessions are files. The last test boots one pair of
guests for `nstrace lab --compare`.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from nshelpers import NSTRACE

from nstrace.cli.lab import COMPARE_RECORD, _recording
from nstrace.errors import UsageError
from nstrace.kernel import renames, sourcelines
from nstrace.session import reader
from nstrace.study import compare, pathcheck

DATA = Path(__file__).resolve().parent / "data"
K510 = DATA / "lab-5.10-demo-newuts.jsonl"
K612 = DATA / "lab-6.12-demo-newuts.jsonl"
K72 = DATA / "lab-7.2-demo-newuts.jsonl"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _compare(*paths):
    return compare.compare([reader.load(p) for p in paths])


def _match(result, op, flags=()):
    return next(m for m in result.matches if m.op == op and m.flags == tuple(flags))


def _row(m, name):
    return next(r for r in m.rows if name in r.name.split(" / "))


def _nstrace(*args, user=()):
    return subprocess.run([*user, str(NSTRACE), *args], capture_output=True, text=True, timeout=120)


def test_the_sessions_are_lab_sessions_of_the_kernels_they_name():
    for path, release, hook in ((K510, "5.10.", "kprobe"), (K612, "6.12.", "fentry"), (K72, "7.2.", "fentry")):
        sess = reader.load(path)
        assert sess.kernel["release"].startswith(release), sess.kernel
        hooks = {a["probe"]: a["hook"] for a in sess.availability if a["layer"] == "function" and a["attached"]}
        assert hooks["copy_namespaces"] == hook, hooks
        assert [(r.op, r.changed) for r in sess.records] == [("clone", []), ("clone", ["uts"]), ("free", [])]


def test_records_are_matched_by_op_and_flags_in_order():
    result = _compare(K510, K72)
    assert [(m.op, m.flags, m.ordinal) for m in result.matches] == [
        ("clone", (), 1), ("clone", ("CLONE_NEWUTS",), 1), ("free", ("CLONE_NEWUTS",), 1)]
    assert all(all(m.records) for m in result.matches)
    assert [s.label for s in result.sides] == [reader.load(K510).kernel["release"], reader.load(K72).kernel["release"]]


def test_a_record_one_session_lacks_is_said_and_the_others_still_match(tmp_path):
    """Drop 7.2's plain clone: the NEWUTS clones are still each other's, the plain one stands alone."""
    lines = K72.read_text().splitlines()
    header, records, end = lines[0], lines[1:-1], json.loads(lines[-1])
    kept = [r for r in records if json.loads(r)["changed"] or json.loads(r)["op"] != "clone"]
    end["records"] = len(kept)
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join([header, *kept, json.dumps(end)]) + "\n")
    result = _compare(K510, short)
    plain = _match(result, "clone")
    assert plain.records[1] is None and [n.kind for n in plain.notes] == ["missing_record"]
    assert all(c.absent == "no_record" for r in plain.rows for c in r.cells[1:])
    assert not any(r.notes for r in plain.rows)  # said once, of the record, not on every step
    assert all(_match(result, "clone", ["CLONE_NEWUTS"]).records)


def test_paths_are_aligned_by_call_structure_not_position():
    """7.2's clone has one step more (__ns_tree_add_raw, inside copy_utsname): it gets a row of its own
    one level down, and every other step stays beside its namesake."""
    m = _match(_compare(K510, K72), "clone", ["CLONE_NEWUTS"])
    assert [(r.depth, r.name) for r in m.rows] == [
        (0, "copy_namespaces"), (1, "create_new_namespaces"), (2, "copy_mnt_ns"), (2, "copy_utsname"),
        (3, "__ns_tree_add_raw"), (2, "copy_ipcs"), (2, "copy_pid_ns"), (2, "copy_cgroup_ns"), (2, "copy_net_ns"),
        (2, "copy_time_ns"), (1, "timens_on_fork")]
    for row in m.rows:
        if row.name != "__ns_tree_add_raw":
            assert [c.func for c in row.cells] == [row.name, row.name] and all(c.call for c in row.cells), row
    uts = _row(m, "copy_utsname")
    assert [c.values for c in uts.cells] == ["= uts:[4026532155] new", "= uts:[4026532155] new (count 1)"]


def test_a_call_inlined_on_one_kernel_has_what_it_called_lined_up_below_it(tmp_path):
    """None of the four Debian kernels inlines a function nstrace hooks where another hooks it, so this
    is 5.10's real session as 5.10 would have recorded it with create_new_namespaces inlined: its steps
    gone (the copy_* one depth up, straight under copy_namespaces), its availability what the hook plan
    says of a function in neither BTF nor kallsyms. The copy_* still line up with 7.2's, under it."""
    lines = K510.read_text().splitlines()
    header = json.loads(lines[0])
    [plan] = [a for a in header["availability"] if a["probe"] == "create_new_namespaces"]
    plan.update(hook=None, attached=False, reason="not in this kernel's BTF or symbols: inlined or renamed", why="")
    rec = json.loads(lines[2])
    assert rec["changed"] == ["uts"]
    rec["kernel_path"] = [s for s in rec["kernel_path"] if s["func"] != "create_new_namespaces"]
    lines[0], lines[2] = json.dumps(header), json.dumps(rec)
    inlined = tmp_path / "inlined.jsonl"
    inlined.write_text("\n".join(lines) + "\n")
    m = _match(_compare(inlined, K72), "clone", ["CLONE_NEWUTS"])
    assert [(r.depth, r.name) for r in m.rows] == [(r.depth, r.name) for r in _match(_compare(K510, K72), "clone",
                                                                                      ["CLONE_NEWUTS"]).rows]
    made = _row(m, "create_new_namespaces")
    assert made.cells[0].call is None and made.cells[0].absent == "inlined" and made.cells[1].call
    assert [n.text for n in made.notes] == ["inlined on 5.10"]
    for name in ("copy_mnt_ns", "copy_utsname", "copy_time_ns"):
        assert all(c.call for c in _row(m, name).cells), name


def test_the_rename_is_found():
    """free_nsproxy (5.10, 6.12) is nsproxy_free on 7.2: one row, both names, the rename's source."""
    result = _compare(K510, K612, K72)
    row = _match(result, "free", ["CLONE_NEWUTS"]).rows[0]
    assert row.name == "free_nsproxy / nsproxy_free"
    assert [c.func for c in row.cells] == ["free_nsproxy", "free_nsproxy", "nsproxy_free"]
    assert all(c.call for c in row.cells) and [n.kind for n in row.notes] == ["renamed"]
    [found] = [n for n in result.findings if n.kind == "renamed"]
    assert found.text.startswith("free_nsproxy on 5.10, 6.12; nsproxy_free on 7.2: ")
    assert "deactivate_nsproxy" in found.text and "linux-source-7.2" in found.text


def test_the_renames_agree_with_the_kernels_sources():
    """Each rename's old name is in the covered sources up to a version and its new one from the
    next on, never both in one (where source-lines.toml follows both)."""
    every = sourcelines.covered()
    for r in renames.RENAMES:
        old, new = renames.defining_series(r.old), renames.defining_series(r.new)
        assert old, r
        assert not set(old) & set(new), r
        if new:
            assert every.index(max(old, key=every.index)) < every.index(min(new, key=every.index)), r
        else:  # the data follows only the old name: it must be gone where the rename says the new one is
            assert "7.2" not in old, r


def test_moved_lines_are_reported_from_each_kernels_source():
    result = _compare(K510, K72)
    m = _match(result, "clone", ["CLONE_NEWUTS"])
    lines = {}
    for row in m.rows:
        for cell, release in zip(row.cells, ("5.10.0-46-amd64", "7.2.13+deb14-amd64")):
            spot = sourcelines.where(cell.func, release)
            assert (cell.file, cell.line) == ((spot.file, spot.line) if spot else (None, None)), (row.name, release)
        lines[row.name] = [c.line for c in row.cells]
    assert lines["copy_namespaces"][0] != lines["copy_namespaces"][1]
    moved = {n.text.split(":")[0]: n.text for n in result.findings if n.kind == "moved_line"}
    a, b = lines["copy_namespaces"]
    assert moved["copy_namespaces"] == f"copy_namespaces: kernel/nsproxy.c {a} (5.10), {b} (7.2)"
    assert "free_nsproxy / nsproxy_free" in moved  # the renamed function moved too


def test_a_missing_function_is_reported_with_why():
    """On 5.10 __ns_tree_add_raw and __ns_tree_remove do not exist (the namespace tree came in 6.18);
    on 7.2 free_uts_ns exists but is not hooked (the tree's removal sees every death)."""
    result = _compare(K510, K72)
    add = _row(_match(result, "clone", ["CLONE_NEWUTS"]), "__ns_tree_add_raw")
    assert add.cells[0].call is None and add.cells[0].absent == "new" and add.cells[1].call
    assert [n.text for n in add.notes] == ["new: not in 5.10"]
    free = _match(result, "free", ["CLONE_NEWUTS"])
    remove, uts = _row(free, "__ns_tree_remove"), _row(free, "free_uts_ns")
    assert remove.cells[0].absent == "new" and remove.cells[1].call
    assert uts.cells[0].call and uts.cells[1].absent == "not_hooked"
    assert uts.cells[1].reason.startswith("not needed here: __ns_tree_remove sees every namespace's death")
    assert uts.cells[1].line == sourcelines.where("free_uts_ns", "7.2.13").line  # where it is, though unhooked
    texts = [n.text for n in result.findings if n.kind == "new"]
    assert any(t.startswith("__ns_tree_add_raw on 5.10: the kernel's source has no such function (in 7.2,")
               and t.endswith("hooked and seen on 7.2 (fentry)") for t in texts), texts


def test_counts_and_ns_ids_are_said_where_they_exist():
    result = _compare(K510, K612, K72)
    counts = {n.text.split(":")[0]: n.text for n in result.findings if n.kind == "counts"}
    assert counts["copy_utsname"].startswith("copy_utsname: a count (refs) on 6.12 (1), 7.2 (1); none on 5.10 ")
    # 7.2 keeps the initial mount namespace's count fixed and the probes do not read it; 6.12 counts it
    assert "7.2 (an initial namespace" in counts["copy_mnt_ns"] and "6.12 (3)" in counts["copy_mnt_ns"]
    [ids] = [n.text for n in result.findings if n.kind == "ns_id"]
    assert "in the records of 7.2, not 5.10, 6.12" in ids


@pytest.mark.root("records a demo on this machine's kernel")
def test_a_kernel_without_the_function_layer_says_so_once(tmp_path):
    """This machine's kernel hooks no function (no kprobes, fentry refused): its column says so in each
    cell, and the comparison once, with the session's own reason, not as a difference on every row."""
    host = tmp_path / "host.jsonl"
    done = _nstrace("demo", "--flags", "NEWUTS", "--record", str(host))
    assert done.returncode == 0, done.stderr
    sess = reader.load(host)
    if any(a["attached"] for a in sess.availability if a["layer"] == "function"):
        pytest.skip("this kernel hooks functions: the lab's sessions show that case")
    result = compare.compare([sess, reader.load(K72)])
    m = _match(result, "clone", ["CLONE_NEWUTS"])
    assert len(m.rows) == 11 and all(r.cells[0].absent == "no_layer" and not r.notes for r in m.rows)
    [why] = [n.text for n in result.findings if n.kind == "no_layer"]
    assert why.endswith(pathcheck.common_reason(sess.availability))
    assert not [n for n in result.findings if n.kind in ("no_path", "not_hooked", "new")]


def test_the_records_own_differences(tmp_path):
    """A record that differs beyond what it is matched on says how: its flags, its changed entries."""
    lines = K72.read_text().splitlines()
    rec = json.loads(lines[2])
    assert rec["flags"] == ["CLONE_NEWUTS"]
    rec["flags"], rec["changed"] = ["CLONE_VFORK", "CLONE_NEWUTS"], ["uts", "time_for_children"]
    lines[2] = json.dumps(rec)
    other = tmp_path / "other.jsonl"
    other.write_text("\n".join(lines) + "\n")
    notes = {n.kind: n.text for n in _match(_compare(K510, other), "clone", ["CLONE_NEWUTS"]).notes}
    assert notes["flags"] == "clone NEWUTS: flags NEWUTS on 5.10; VFORK|NEWUTS on 7.2"
    assert notes["changed"] == "clone NEWUTS: changed uts on 5.10; uts, time_for_children on 7.2"


def test_the_command_as_nobody_table_and_json():
    """Sessions are files: any user compares them, no root, no lab."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) not installed")
    done = _nstrace("compare", str(K510), str(K72), user=NOBODY)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    header = next(line for line in out.splitlines() if line.lstrip().startswith("step "))
    assert re.search(r"step\s+5\.10\.0-46-amd64\s+line\s+7\.2\.13\+deb14-amd64\s+line\s+differs", header), header
    assert re.search(r"^\s+free_nsproxy / nsproxy_free\s.*nsproxy\.c:\d+.*nsproxy\.c:64\s+renamed", out, re.M), out
    assert re.search(r"^ {8}__ns_tree_add_raw\s+\(not yet in this kernel\)\s+\(inode \d+\)\s+nstree\.c:\d+\s+"
                     r"new: not in 5\.10$", out, re.M), out
    doc = json.loads(_nstrace("compare", "--json", str(K510), str(K72), user=NOBODY).stdout)
    assert [k["short"] for k in doc["kernels"]] == ["5.10", "7.2"]
    free = next(r for r in doc["records"] if r["op"] == "free")
    assert [c["func"] for c in free["steps"][0]["cells"]] == ["free_nsproxy", "nsproxy_free"]
    assert {f["kind"] for f in doc["findings"]} >= {"renamed", "new", "not_hooked", "moved_line", "counts", "ns_id"}


def test_bad_input_is_one_error_line(tmp_path):
    for args, what in (((str(K510),), "compare needs two sessions or more"),
                       ((str(K510), str(tmp_path / "none.jsonl")), "cannot read session file")):
        done = _nstrace("compare", *args)
        assert done.returncode == 2 and done.stderr.startswith(f"nstrace: error: {what}"), done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr
    cut = tmp_path / "cut.jsonl"
    cut.write_text(K72.read_text().replace('"op":"free"', '"op":"frees"'))
    done = _nstrace("compare", str(K510), str(cut))
    assert done.returncode == 2 and re.match(r"nstrace: error: .*cut\.jsonl:\d+: field op", done.stderr), done.stderr


def test_a_file_name_reaches_the_terminal_escaped(tmp_path):
    odd = tmp_path / "k\x1b[31m.jsonl"
    shutil.copy(K510, odd)
    done = _nstrace("compare", str(odd), str(K72))
    assert done.returncode == 0 and "\x1b" not in done.stdout and "k\\x1b[31m.jsonl" in done.stdout


@pytest.mark.parametrize("command, expected", [
    (["demo", "--flags", "NEWUTS"], (["demo", "--record", COMPARE_RECORD, "--flags", "NEWUTS"], COMPARE_RECORD)),
    (["demo", "--record", "./mine.jsonl"], (["demo", "--record", "./mine.jsonl"], "mine.jsonl")),
    (["watch", "--record=w.jsonl", "--", "unshare", "-u", "true"],
     (["watch", "--record=w.jsonl", "--", "unshare", "-u", "true"], "w.jsonl")),
    # COMMAND's own --record is not watch's
    (["watch", "--", "prog", "--record", "x"], (["watch", "--record", COMPARE_RECORD, "--", "prog", "--record", "x"],
                                                COMPARE_RECORD)),
])
def test_lab_compare_records_each_guests_run(command, expected):
    assert _recording(command) == expected


@pytest.mark.parametrize("command, message", [
    (["check"], "check records none"),
    (["demo", "--record", "/tmp/d.jsonl"], "outside the current directory"),
    (["demo", "--record", "../d.jsonl"], "outside the current directory"),
])
def test_lab_compare_refuses_what_it_cannot_compare(command, message):
    with pytest.raises(UsageError, match=message):
        _recording(command)


@pytest.mark.lab
@pytest.mark.root("boots guests and runs nstrace in them as root")
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed")
def test_lab_compare_end_to_end(tmp_path):
    """`nstrace lab --kernel 5.10 --kernel sid --compare -- demo --flags NEWUTS`: both guests record,
    their sessions come back named per kernel, and the comparison follows their output."""
    res = subprocess.run([str(NSTRACE), "lab", "--kernel", "5.10", "--kernel", "sid", "--compare", "--", "demo",
                          "--flags", "NEWUTS"], capture_output=True, text=True, timeout=1800, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nstrace-compare-5.10.jsonl", "nstrace-compare-sid.jsonl"]
    out = res.stdout[res.stdout.index("\nComparing 2 sessions"):]
    assert re.search(r"^  5\.10: nstrace-compare-5\.10\.jsonl, 5\.10\.\S+, 3 records$", out, re.M), out
    assert re.search(r"^  7\.2: nstrace-compare-sid\.jsonl, 7\.2\.\S+, 3 records$", out, re.M), out
    assert re.search(r"^\s+free_nsproxy / nsproxy_free\s.*renamed", out, re.M), out
    assert re.search(r"^\s+__ns_tree_add_raw\s.*new: not in 5\.10$", out, re.M), out
    assert not any(line.startswith("[") for line in out.splitlines()), out  # after every guest line
    again = _nstrace("compare", *(str(tmp_path / f"nstrace-compare-{k}.jsonl") for k in ("5.10", "sid")))
    assert again.returncode == 0 and again.stdout.split("\n== ", 1)[1] == out.split("\n== ", 1)[1]
