"""The kernel path as a learner reads it, on a kernel whose functions can be probed: nested calls,
new or shared per copy_*, the nsproxy switch, setns's arguments and the source line of each step.

Like tests/test_kernelpath.py these need fentry/fexit or kprobes: on our build machines they skip
with that reason, and `nstrace lab` runs them inside Debian's kernels (tests/test_lab.py).
"""

import re
import subprocess

import pytest
from nshelpers import NSTRACE, flag, nsop, wait_for

from nstrace.kernel import functions, sourcelines
from nstrace.study import callpath

pytestmark = [pytest.mark.kernelpath, pytest.mark.root("attaches the kernel-function layer"),
              pytest.mark.usefixtures("function_layer")]


def _line(func):
    return sourcelines.where(func, sourcelines.running_release())


def test_clone_steps_carry_their_line_and_new_or_shared(tracer):
    """The JSON steps: `line` is the definition's line in this kernel's version, `created` on each
    copy_* exit says which namespaces clone(NEWPID|NEWNS|NEWUTS) built."""
    flags = flag("pid") | flag("mnt") | flag("uts")
    with nsop({"op": "clone", "flags": flags}) as rep:
        [rec] = wait_for(tracer, lambda r: r.pid == rep["pid"] and r.op == "clone" and r.changed)
        created = {s["func"]: s["created"] for s in rec.kernel_path if s["kind"] == "exit" and "created" in s}
        assert created == {"copy_mnt_ns": True, "copy_utsname": True, "copy_pid_ns": True, "copy_ipcs": False,
                           "copy_cgroup_ns": False, "copy_net_ns": False, "copy_time_ns": False}, created
        for s in rec.kernel_path:
            spot = _line(s["func"])
            assert (s["file"], s["line"]) == ((spot.file, spot.line) if spot else (s["file"], None)), s
        # nested: copy_namespaces > create_new_namespaces > the seven copy_*
        [top] = [c for c in callpath.tree(rec.kernel_path) if c.func == "copy_namespaces"]
        [inner] = [c for c in top.calls if c.func == "create_new_namespaces"]
        assert [c.func for c in inner.calls] == list(callpath.COPY_ENTRY)
        # every call has its duration, but the hooks on entry alone (7.x: __ns_tree_add_raw)
        timed = [c for c in top.walk() if c.func not in functions.ENTRY_ONLY]
        assert all(c.duration_us is not None and c.duration_us >= 0 for c in timed), [
            (c.func, c.enter, c.exit) for c in timed if c.duration_us is None]


def test_demo_shows_the_nested_path_with_new_shared_and_source_lines():
    res = subprocess.run([str(NSTRACE), "demo", "--flags", "NEWPID|NEWNS|NEWUTS"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    view = out[out.index("== Kernel path of clone"):]
    rows = {m.group(2): (len(m.group(1)), m.group(3)) for m in
            re.finditer(r"^( *)(\w+) +observed +(.*?) {2,}", view, re.M)}
    # documented depth: copy_process > copy_namespaces > create_new_namespaces > copy_*
    assert rows["copy_namespaces"][0] < rows["create_new_namespaces"][0] < rows["copy_pid_ns"][0], view
    assert rows["copy_namespaces"][1] == "(NEWNS|NEWUTS|NEWPID) = 0"
    for func in ("copy_mnt_ns", "copy_utsname", "copy_pid_ns"):
        assert re.search(r" new( \(count 1\))?$", rows[func][1]), (func, rows[func])
    for func in ("copy_net_ns", "copy_ipcs", "copy_cgroup_ns"):
        # (the count: 2 or more, the caller's and this copy's; 7.2 keeps an initial namespace's at 1)
        assert re.search(r" shared( \(count \d+\))?$", rows[func][1]), (func, rows[func])
    spot = _line("copy_namespaces")
    assert re.search(rf"copy_namespaces .* kernel/nsproxy\.c:{spot.line}\b", view), view
    assert "not observable" not in view.split("copy_namespaces")[1].split("task:task_newtask")[0]


def test_demo_setns_shows_its_arguments_install_and_switch():
    res = subprocess.run([str(NSTRACE), "demo", "--op", "setns", "--flags", "NEWUTS"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    view = res.stdout[res.stdout.index("== Kernel path of setns"):]
    assert re.search(r"__x64_sys_setns +observed +\(fd \d+ = uts:\[\d+\], nstype NEWUTS\) = 0", view), view
    assert re.search(r"create_new_namespaces +observed +\(0\) = nsproxy \w+", view), view
    assert "/* prepare_nsset copies the caller's nsproxy with flags 0" in view
    assert re.search(r"utsns_install +observed +\(nsset, uts:\[\d+\]\) = 0", view), view
    switch = re.search(r"switch_task_namespaces +observed +\(current, nsproxy (\w+) -> (\w+)\) = void", view)
    assert switch, view
    # the counts that decide the old nsproxy's fate: its own before the put, the new one's
    fate = re.search(rf"/\* nsproxy {switch.group(1)} \(count (\d+)\) -> {switch.group(2)} \(count 1\); "
                     rf"old {switch.group(1)} (kept|freed): its count was (\d+)", view)
    assert fate and fate.group(1) == fate.group(3) and (fate.group(2) == "freed") == (fate.group(1) == "1"), view
    assert re.search(r"copy_utsname +observed +\(0\) = uts:\[\d+\] shared", view), view


def test_show_of_a_recorded_demo_nests_a_plain_fork_with_its_why(tmp_path):
    """A plain fork (the launcher's, recorded by demo, which keeps forks) in the show table:
    copy_namespaces returns 0 at once, and says why."""
    path = tmp_path / "demo.jsonl"
    res = subprocess.run([str(NSTRACE), "demo", "--flags", "NEWUTS", "--record", str(path)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    shown = subprocess.run([str(NSTRACE), "show", str(path), "--op", "clone"], capture_output=True, text=True,
                           timeout=120)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert re.search(r"^ {4}copy_namespaces\((\w|\|)*\) = 0 +[\d.]+ +kernel/nsproxy\.c:\d+$", text, re.M), text
    assert "/* no CLONE_NEW* flag: the child shares its parent's nsproxy" in text
    assert re.search(r"^ {8}copy_utsname\(NEWUTS\) = uts:\[\d+\] new ", text, re.M), text
