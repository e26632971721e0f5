"""A namespace's life as the views tell it (issue 24, "lifetimes are first-class"): a death's row in the
table, the graph's births, joins and deaths, an nsproxy's members.

The sessions are real: `nstrace lab --kernel 6.1|sid -- watch --json -- sh -c ...` (a pid namespace
unshared, a uts namespace held by a bind mount and unmounted, an ipc namespace dying with its process;
on sid also a uts namespace held by an fd, then closed, and a net namespace). tests/test_deaths.py
checks, in the lab, that the kernel side says these things.
"""

import dataclasses
from pathlib import Path

import pytest

from nstrace.session import reader
from nstrace.view import graph, table

DATA = Path(__file__).parent / "data"


def deaths(name):
    session = reader.load(DATA / name)
    return session, [r for r in session.records if r.op == "free"]


def test_a_death_row_says_which_namespace_how_long_what_it_ran_in_and_who_held_it():
    _, [rcu, umount, exited] = deaths("watch-6.1-deaths.jsonl")
    text = table.row(umount, path=False)
    assert "died: uts:[4026532157], lived 2.071 s" in text
    assert "ran in umount (pid 154), its own call" in text
    assert "held last by a bind mount of its ns file, released by the umount of umount (pid 154)" in text
    assert "held last by sleep (pid 155), which exited" in table.row(exited, path=False)


def test_an_rcu_free_is_no_tasks_in_the_table():
    """Before: `swapper/0  0  free  NEWPID`, the task the softirq interrupted, as if it freed it."""
    _, [rcu, *_] = deaths("watch-6.1-deaths.jsonl")
    first, *details = table.row(rcu, path=False).splitlines()
    assert first.split()[1:5] == ["(softirq)", "-", "-", "free"]
    assert details[:3] == ["    died: pid:[4026532157], lived 143.653 ms",
                           "    ran in an RCU callback (softirq): no task is its caller",
                           "    held last by: not seen (its last reference was dropped before this free, "
                           "out of nstrace's view)"]


def test_a_death_whose_birth_was_not_seen_says_so():
    _, [rcu, *_] = deaths("watch-6.1-deaths.jsonl")
    unseen = dataclasses.replace(rcu, ns={**rcu.ns, "lived_ns": None})
    assert "died: pid:[4026532157], born before the trace (or its birth was not seen)" in table.row(unseen)


def test_the_ns_id_is_shown_where_the_kernel_has_one():
    _, [pid, *_] = deaths("watch-7.2-deaths.jsonl")
    assert "died: pid:[4026532155] ns_id 11, lived 53.935 ms" in table.row(pid, path=False)
    assert "ran in kworker/0:1 (pid 11), a workqueue worker" in table.row(pid, path=False)


def test_an_nsproxy_row_shows_its_members_before_and_after():
    session = reader.load(DATA / "watch-7.2-deaths.jsonl")
    [uts] = [r for r in session.records if r.op == "unshare" and r.changed == ["uts"]][:1]
    line = table.nsproxy_members(uts)
    before, after = uts.nsproxy["before"], uts.nsproxy["after"]
    assert line.startswith(f"nsproxy {before} -> {after}: mnt {uts.ns_before['mnt']}, ")
    assert f"uts {uts.ns_before['uts']} -> {uts.ns_after['uts']}" in line
    assert "pid " not in line.replace("pid_for_children", "") and "user" not in line  # not the nsproxy's
    assert line in table.row(uts)


@pytest.mark.parametrize("name", ["watch-6.1-deaths.jsonl", "watch-7.2-deaths.jsonl"])
def test_the_graph_draws_each_birth_and_death(name):
    session, frees = deaths(name)
    g = graph.graph(session.records)
    died = [e for e in g["edges"] if e["kind"] == "died"]
    assert len(died) == len(frees) == len(g["deaths"])
    for edge, rec in zip(died, frees):
        node = g["namespaces"][edge["from"]]
        assert (node["type"], node["inode"]) == (rec.ns["type"], rec.ns["inode"])
        assert node["born"] and node["died"] == edge["n"]  # every one was born in the trace
    source = graph.dot_of(g, session.records, session.started)
    assert source.count("arrowhead=tee") == len(frees)
    assert "in an RCU callback (softirq)" in source or "in kworker/0:1 (pid 11)" in source


def test_an_inode_reused_after_a_death_is_another_node():
    """Before 6.18 a namespace has no ns_id, and its inode number is the next one's once it died
    (kernel-notes/lifetime-and-identity.md): the sid session's two uts namespaces, without their
    ns_id, are two nodes, not one that died and came back."""
    session = reader.load(DATA / "watch-7.2-deaths.jsonl")
    records = [dataclasses.replace(r, ns_id_before=None, ns_id_after=None,
                                   ns=r.ns and {**r.ns, "ns_id": None}) for r in session.records]
    g = graph.graph(records)
    uts = [n for n, info in g["namespaces"].items() if info["type"] == "uts"]
    assert uts == ["ns-uts-4026532155", "ns-uts-4026532155-2"], g["namespaces"]
    assert all(g["namespaces"][n]["born"] < g["namespaces"][n]["died"] for n in uts)
