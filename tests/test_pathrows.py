"""The kernel path's rows are right on every lab kernel: each call under its real caller with its
real return kind, no step claimed for a kernel that has no such function, the deaths documented per
version, and words that say what the numbers are.

The sessions in tests/data/ were recorded by `nstrace demo --record` inside `nstrace lab` guests
(5.10, 6.1, 6.12, 7.2), and are replayed here as `show` replays any session.
"""

from pathlib import Path

import pytest

from nstrace.session import reader
from nstrace.study import callpath, pathcheck
from nstrace.view import reports

DATA = Path(__file__).resolve().parent / "data"
NEWNS_61 = DATA / "lab-6.1-demo-newns.jsonl"      # clone NEWNS|NEWUTS|NEWPID, and the three deaths
SETNS_72 = DATA / "lab-7.2-demo-setns.jsonl"
NEWUTS = {"5.10": DATA / "lab-5.10-demo-newuts.jsonl", "6.12": DATA / "lab-6.12-demo-newuts.jsonl",
          "7.2": DATA / "lab-7.2-demo-newuts.jsonl"}


def _compare(sess, rec):
    hooks, tracepoints = pathcheck.recorded_hooks(sess.availability)
    return pathcheck.compare(rec, hooks, tracepoints, sess.kernel["release"])


def _main(sess, op):
    return next(r for r in sess.records if r.op == op and r.changed and r.kernel_path)


def test_alloc_mnt_ns_returns_its_namespace_under_copy_mnt_ns():
    """alloc_mnt_ns returns a struct mnt_namespace * (fs/namespace.c, 6.1): its row says which,
    nested in copy_mnt_ns, in the path and beside the documented one, before the syscall returns."""
    sess = reader.load(NEWNS_61)
    rec = _main(sess, "clone")
    rows = {call.func: (depth, text) for depth, text, _, _, _, call in callpath.path_rows(rec)}
    inode = rec.ns_after["mnt"]
    assert rows["alloc_mnt_ns"] == (rows["copy_mnt_ns"][0] + 1, f"alloc_mnt_ns() = mnt:[{inode}] (count 1)")
    results = _compare(sess, rec)
    names = [r.name for r in results]
    at = names.index("alloc_mnt_ns")
    assert names[at - 1] == "copy_mnt_ns" and at < names.index("syscalls:sys_exit_clone"), names
    alloc = results[at]
    assert alloc.status == "observed" and alloc.values == f"() = mnt:[{inode}] (count 1)"
    assert alloc.depth == results[at - 1].depth + 1
    assert pathcheck.passed(results)


def test_an_undocumented_call_is_listed_under_its_caller():
    """7.2's __ns_tree_add_raw, inside copy_utsname, is not in clone's documented path: its row
    follows copy_utsname's, one level in, not the end of the table."""
    sess = reader.load(NEWUTS["7.2"])
    results = _compare(sess, _main(sess, "clone"))
    names = [r.name for r in results]
    at = names.index("__ns_tree_add_raw")
    assert results[at].status == "undocumented"
    assert names[at - 1] == "copy_utsname" and names[at + 1] == "copy_ipcs", names
    assert results[at].depth == results[at - 1].depth + 1


def _deaths(path):
    sess = reader.load(path)
    return sess, [(r, {s.name: s for s in _compare(sess, r)}) for r in sess.records if r.op == "free"]


def test_6_1_deaths_are_its_own_free_functions_and_no_tree():
    """On 6.1 each type's free function is the death step, documented; __ns_tree_remove (6.18+)
    is not in that kernel, so it is not expected, and nothing calls it inlined or renamed."""
    _, deaths = _deaths(NEWNS_61)
    death = {"mnt": "free_mnt_ns", "uts": "free_uts_ns", "pid": "delayed_free_pidns"}
    assert sorted(r.ns["type"] for r, _ in deaths) == sorted(death)
    for rec, by in deaths:
        func = death[rec.ns["type"]]
        assert by[func].status == "observed", (func, by[func])
        tree = by["__ns_tree_remove"]
        assert tree.status == "not expected" and "6.18" in tree.reason and "inlined" not in tree.reason, tree
        assert pathcheck.passed(by.values()), [(s.name, s.status, s.reason) for s in by.values() if s.failed]


@pytest.mark.parametrize("series,death", [("5.10", "free_uts_ns"), ("6.12", "free_uts_ns"), ("7.2", "__ns_tree_remove")])
def test_each_kernel_documents_its_own_death_function(series, death):
    _, [(rec, by)] = _deaths(NEWUTS[series])
    assert by[death].status == "observed"
    other = "free_uts_ns" if death == "__ns_tree_remove" else "__ns_tree_remove"
    assert by[other].status == "not expected", by[other]
    assert pathcheck.passed(by.values()), [(s.name, s.status, s.reason) for s in by.values() if s.failed]


def test_validate_nsset_is_not_on_the_nsfs_path():
    """setns with an nsfs fd goes through validate_ns; validate_nsset and check_setns_flags are the
    pidfd path's (kernel/nsproxy.c, 5.10 to 7.2): not expected here, not "inlined"."""
    sess = reader.load(SETNS_72)
    by = {r.name: r for r in _compare(sess, _main(sess, "setns"))}
    assert by["validate_ns"].status == "not observable" and "inlined" in by["validate_ns"].reason
    for func in ("validate_nsset", "check_setns_flags"):
        assert by[func].status == "not expected" and "pidfd" in by[func].reason, by[func]


def test_the_old_nsproxy_count_says_who_holds_it():
    """The count beside the caller's is every other task sharing that nsproxy (a fork without
    CLONE_NEW* shares its parent's), not only the caller's children and threads."""
    sess = reader.load(SETNS_72)
    [switch] = [c for top in callpath.tree(_main(sess, "setns").kernel_path) for c in top.walk()
                if c.func == "switch_task_namespaces"]
    text = callpath.switch_summary(switch)
    assert "every other task that shares it" in text and "children and threads" not in text, text


def test_a_clone_names_the_parent_and_the_child_nsproxy():
    """clone does not switch anyone's nsproxy: the two ids are the parent's and the child's."""
    rec = _main(reader.load(NEWNS_61), "clone")
    line = reports.nsproxy_line(rec)
    assert line == (f"nsproxy: the parent's {rec.nsproxy['before']}, the child's {rec.nsproxy['after']} "
                    "(short ids, not addresses)")
    setns = _main(reader.load(SETNS_72), "setns")
    assert reports.nsproxy_line(setns).startswith(f"task->nsproxy: {setns.nsproxy['before']} -> ")
