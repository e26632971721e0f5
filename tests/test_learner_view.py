"""The kernel path as a learner reads it, in `show`, `render` and `demo`, on this machine (no function
layer here: see tests/test_learner_kernelpath.py for the lab side).

The sessions in tests/data/ were recorded by `nstrace demo --record` inside `nstrace lab` guests:
Debian 12's 6.1 (clone NEWPID|NEWNS|NEWUTS) and sid's 7.2 (setns NEWUTS). They are real kernels'
records, replayed here as `show` and `render` replay any session on any machine.
"""

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest
from nshelpers import NSTRACE, loader_programs, programs_left_after

from nstrace.kernel import sourcelines
from nstrace.session import _schema as _session_schema
from nstrace.session import reader
from nstrace.study import callpath, pathcheck
from nstrace.view import reports, table

DATA = Path(__file__).resolve().parent / "data"
CLONE_61 = DATA / "lab-6.1-demo-clone.jsonl"
SETNS_72 = DATA / "lab-7.2-demo-setns.jsonl"


def _main(sess, op):
    return next(r for r in sess.records if r.op == op and r.changed and r.kernel_path)


def _nstrace(*args):
    return subprocess.run([str(NSTRACE), *args], capture_output=True, text=True, timeout=120)


def test_show_nests_the_clone_path_with_new_shared_and_lines():
    done = _nstrace("show", str(CLONE_61), "--op", "clone")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    line = sourcelines.where("copy_namespaces", "6.1.0-57-amd64").line
    assert re.search(rf"^ {{4}}copy_namespaces\(NEWNS\|NEWUTS\|NEWPID\) = 0 +[\d.]+ +kernel/nsproxy\.c:{line}$", out, re.M), out
    assert re.search(r"^ {6}create_new_namespaces\(NEWNS\|NEWUTS\|NEWPID\) = nsproxy \w+ \(count 1\) ", out, re.M), out
    for func, entry, mark in (("copy_mnt_ns", "mnt", "new"), ("copy_utsname", "uts", "new"), ("copy_pid_ns", "pid", "new"),
                              ("copy_ipcs", "ipc", "shared"), ("copy_net_ns", "net", "shared"),
                              ("copy_cgroup_ns", "cgroup", "shared")):
        assert re.search(rf"^ {{8}}{func}\(NEWNS\|NEWUTS\|NEWPID\) = {entry}:\[\d+\] {mark} ", out, re.M), (func, out)
    # a plain fork of the same session: the early return, and why
    assert "/* no CLONE_NEW* flag: the child shares its parent's nsproxy" in out
    assert "(as in" not in out  # 6.1's own lines


def test_an_older_session_gets_its_lines_and_marks_when_loaded(tmp_path):
    """A session written before steps had `line` and `created` shows the same path."""
    old = tmp_path / "old.jsonl"
    with open(CLONE_61) as src, open(old, "w") as dst:
        for text in src:
            obj = json.loads(text)
            for s in obj.get("kernel_path") or []:
                for key in ("line", "line_from", "created"):
                    s.pop(key, None)
            dst.write(json.dumps(obj) + "\n")
    assert '"created"' not in old.read_text()
    assert _nstrace("show", str(old)).stdout == _nstrace("show", str(CLONE_61)).stdout


def test_json_steps_have_line_and_created_within_the_schema():
    done = _nstrace("show", str(CLONE_61), "--json", "--op", "clone")
    records = [json.loads(line) for line in done.stdout.splitlines()]
    main = next(r for r in records if r["changed"])
    exits = {s["func"]: s for s in main["kernel_path"] if s["kind"] == "exit"}
    assert {f: s["created"] for f, s in exits.items() if "created" in s} == {
        "copy_mnt_ns": True, "copy_utsname": True, "copy_ipcs": False, "copy_pid_ns": True, "copy_cgroup_ns": False,
        "copy_net_ns": False, "copy_time_ns": False}
    assert all(isinstance(s["line"], int) and "line_from" not in s for s in main["kernel_path"])
    for rec in records:
        _session_schema.validate(rec)
    bad = copy.deepcopy(main)
    bad["kernel_path"][0]["created"] = "yes"
    with pytest.raises(Exception, match="created"):
        _session_schema.validate(bad)


def test_setns_view_shows_its_arguments_and_the_switch():
    sess = reader.load(SETNS_72)
    rec = _main(sess, "setns")
    text = table.row(rec)
    assert re.search(r"__x64_sys_setns\(fd \d+ = uts:\[\d+\], nstype NEWUTS\) = 0 ", text), text
    assert "/* prepare_nsset copies the caller's nsproxy with flags 0" in text
    assert re.search(r"utsns_install\(nsset, uts:\[(\d+)\]\) = 0", text).group(1) == str(rec.target["inode"])
    assert re.search(r"/\* nsproxy (\w+) \(count (\d+)\) -> (\w+) \(count 1\); old \1 kept: its count was \2", text), text
    assert sourcelines.where("switch_task_namespaces", "7.2.13+deb14-amd64").text in text


def test_one_view_of_documented_and_observed():
    sess = reader.load(SETNS_72)
    rec = _main(sess, "setns")
    hooks, tracepoints = pathcheck.recorded_hooks(sess.availability)
    results = pathcheck.compare(rec, hooks, tracepoints, sess.kernel["release"])
    by = {r.name: r for r in results}
    assert pathcheck.passed(results)
    # observed steps carry their values, nested as the notes nest them
    assert by["create_new_namespaces"].depth == by["prepare_nsset"].depth + 1 == 2
    assert by["copy_utsname"].values.endswith(" shared (count 1)") and by["copy_utsname"].duration_us > 0
    # 7.2 keeps an initial namespace's count at 1: said once, not for each of the seven copies
    assert text_of(results).count("the kernel keeps its count fixed at 1") == 1
    assert by["utsns_install"].status == "observed" and by["utsns_install"].source.startswith("kernel/utsname.c:")
    # documented steps that did not happen say why
    assert by["prepare_nsset"].status == "not observable" and "inlined" in by["prepare_nsset"].reason
    assert by["netns_install"].status == "not expected"
    text = "\n".join(reports.documented_and_observed(results))
    assert re.search(r"^ {4}utsns_install +observed +\(nsset, uts:\[\d+\]\) = 0 ", text, re.M), text


def text_of(results):
    return "\n".join(reports.documented_and_observed(results))


def test_a_call_observed_where_the_notes_do_not_put_it_fails():
    """pathcheck holds each observed call to its documented caller: utsns_install moved inside
    create_new_namespaces (as no kernel calls it) is out of place."""
    sess = reader.load(SETNS_72)
    rec = copy.deepcopy(_main(sess, "setns"))
    path = rec.kernel_path
    install = [s for s in path if s["func"] == "utsns_install"]
    for s in install:
        path.remove(s)
    at = next(i for i, s in enumerate(path) if s["func"] == "copy_time_ns" and s["kind"] == "exit") + 1
    path[at:at] = install
    hooks, tracepoints = pathcheck.recorded_hooks(sess.availability)
    [moved] = [r for r in pathcheck.compare(rec, hooks, tracepoints) if r.name == "utsns_install"]
    assert moved.status == "out of place" and moved.failed
    assert moved.reason == "called from create_new_namespaces, the notes say __x64_sys_setns"


def test_html_links_each_step_to_its_line_at_that_version(tmp_path):
    page = tmp_path / "p.html"
    assert _nstrace("render", str(CLONE_61), "--format", "html", "-o", str(page)).returncode == 0
    text = page.read_text()
    spot = sourcelines.where("copy_namespaces", "6.1.0-57-amd64")
    assert f'href="https://elixir.bootlin.com/linux/v{spot.version}/source/kernel/nsproxy.c#L{spot.line}"' in text
    assert re.search(r'class="step d4 observed created( row)?">(<summary class="row">)?<span class="name">.*?copy_pid_ns</a>', text), "copy_pid_ns made new"
    assert re.search(r'class="step d4 observed( row)?">(<summary class="row">)?<span class="name">.*?copy_net_ns</a>.*?shared', text)


def test_demo_hint_names_the_lab_command_for_this_run():
    done = _nstrace("demo", "--op", "unshare", "--flags", "NEWUTS|NEWIPC")
    if "kernel functions: not observable here" not in done.stdout:
        pytest.skip("this kernel has a function layer: the hint is only for kernels without one")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "`nstrace lab --kernel 6.1 -- demo --op unshare --flags 'NEWUTS|NEWIPC'` shows them" in done.stdout
    # the documented steps say where to read them, in the nearest covered version here
    assert re.search(r"copy_utsname +not observable .* kernel/utsname\.c:\d+", done.stdout), done.stdout


def test_tree_keeps_a_call_whose_exit_was_dropped():
    """A record that filled up before a call returned: the call stays, with no exit, and its
    callers still close."""
    rec = copy.deepcopy(_main(reader.load(CLONE_61), "clone"))
    rec.kernel_path = [s for s in rec.kernel_path if not (s["func"] == "copy_pid_ns" and s["kind"] == "exit")]
    [top] = callpath.tree(rec.kernel_path)
    [inner] = top.calls[:1]
    pid = next(c for c in inner.calls if c.func == "copy_pid_ns")
    assert pid.exit is None and callpath.result(pid) == "(no exit seen)" and top.exit is not None


def test_an_entry_only_hook_is_a_leaf_of_the_call_it_fired_in():
    """7.x: __ns_tree_add_raw (hooked on entry only) fires inside copy_mnt_ns; it must not swallow the
    rest of the path as its callees, and it says it has no exit by design, not that one was lost."""
    rec = copy.deepcopy(_main(reader.load(CLONE_61), "clone"))
    at = next(i for i, s in enumerate(rec.kernel_path) if s["func"] == "copy_mnt_ns" and s["kind"] == "enter")
    rec.kernel_path.insert(at + 1, {"func": "__ns_tree_add_raw", "file": "kernel/nstree.c", "kind": "enter",
                                    "ts_ns": rec.kernel_path[at]["ts_ns"] + 1, "short": ""})
    [top] = callpath.tree(rec.kernel_path)
    [inner] = top.calls[:1]
    mnt = next(c for c in inner.calls if c.func == "copy_mnt_ns")
    [added] = mnt.calls
    assert added.func == "__ns_tree_add_raw" and added.calls == [] and mnt.exit is not None
    assert [c.func for c in inner.calls] == list(callpath.COPY_ENTRY)
    assert callpath.result(added) == "(entry only)"


def test_demo_exits_before_the_kernel_has_detached_and_nothing_lingers():
    """demo leaves its detaching to a holder (bpf/teardown.py): run() returning proves the holder
    keeps no pipe of ours open, and the programs are gone soon after."""
    before = set(loader_programs())
    done = _nstrace("demo", "--op", "unshare", "--flags", "NEWUTS")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not programs_left_after(before), "the demo's programs outlived the holder"
