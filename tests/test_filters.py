"""The filters of watch, show and render: one value (nstrace/record/filters.py Filter), parsed and
refused alike by each command, and declared once (nstrace/cli/params.py). What C does with the same
values is tests/test_batch.py's; these need no root: show reads a session recorded on sid's 7.2."""

import subprocess

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nshelpers import NSTRACE, ROOT

from nstrace.cli.params import Pid
from nstrace.errors import UsageError
from nstrace.kernel import flags as fl
from nstrace.record import filters, layout
from nstrace.record.filters import Filter, Ns

# 5 records: the uts namespace a demo's unshare made is inode 4026532137, ns_id 14; the host's, 2
SESSION = ROOT / "tests" / "data" / "lab-7.2-demo-setns.jsonl"
U32, U64 = 2**32 - 1, 2**64 - 1


def nstrace(*args):
    return subprocess.run([str(NSTRACE), *args], capture_output=True, text=True, timeout=60)


def shown_ops(*args):
    res = nstrace("show", str(SESSION), "--json", *args)
    assert res.returncode == 0, res.stderr
    return [line.split('"op":"')[1].split('"')[0] for line in res.stdout.splitlines()]


def assert_refused(res, *words):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert res.stderr.startswith("nstrace: error: ") and res.stderr.count("\n") == 1, res.stderr
    for word in words:
        assert word in res.stderr, res.stderr


# --- --ns -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,ns", [
    ("0" * 5000 + "14", Ns(None, None, 14)), ("net:" + "0" * 5000 + "1", Ns("net", 1, None)),
    ("net:4026531840", Ns("net", 4026531840, None)),
    ("net:[4026531840]", Ns("net", 4026531840, None)),   # as lsns and /proc/PID/ns write it
    (" uts:1 ", Ns("uts", 1, None)),
    (f"uts:{U32}", Ns("uts", U32, None)),
    ("14", Ns(None, None, 14)),
    (str(U64), Ns(None, None, U64)),
])
def test_a_namespace_is_type_and_inode_or_an_ns_id(text, ns):
    assert Filter.parse(ns=(text,)).namespaces == (ns,)


@pytest.mark.parametrize("text,words", [
    ("net:[4026531840", ["TYPE:INODE"]), ("net:4026531840]", ["TYPE:INODE"]), ("net:[[1]]", ["TYPE:INODE"]),
    ("\u0663", ["TYPE:INODE"]),                      # Arabic-Indic 3: int() takes it, str.isdigit() too
    ("net:\u0664\u0660\u0662\u0666", ["TYPE:INODE"]),
    ("\uff11\uff14", ["TYPE:INODE"]),                # fullwidth 14
    ("\u00b2", ["TYPE:INODE"]),                      # str.isdigit(), but int() refuses it: was a traceback
    ("+14", ["TYPE:INODE"]), ("1_4", ["TYPE:INODE"]), ("-1", ["TYPE:INODE"]), ("bogus:1", ["TYPE:INODE"]),
    ("0", ["ns_id is 1 to 18446744073709551615"]), (str(2**64), ["ns_id is 1 to"]),
    (str(2**64 + 3), ["ns_id is 1 to"]), ("9" * 40, ["ns_id is 1 to"]),
    ("9" * 5000, ["ns_id is 1 to"]), ("0" * 5000 + "7" * 30, ["ns_id is 1 to"]),  # int() refuses 4300 digits
    ("net:" + "9" * 5000, ["inode is 1 to"]), ("0" * 5000, ["ns_id is 1 to"]),
    ("net:0", ["inode is 1 to 4294967295"]), (f"net:{2**32}", ["inode is 1 to"]), (f"net:[{2**32}]", ["inode is 1 to"]),
])
def test_a_namespace_no_record_can_hold_is_refused(text, words):
    with pytest.raises(UsageError) as e:
        Filter.parse(ns=(text,))
    for word in words:
        assert word in str(e.value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=24))
def test_any_ns_text_is_taken_or_refused_in_one_line(text):
    """Never another exception; what is taken is ASCII, its number in range and as written."""
    try:
        ns = filters.parse_ns(text)
        Filter(namespaces=(ns,))  # parse_ns reads, Filter refuses: a value out of range fails here
    except UsageError as e:
        assert "\n" not in str(e)
        return
    number = ns.ns_id if ns.type is None else ns.inode
    assert text.strip().isascii() and str(number) in text
    assert 0 < number <= (U64 if ns.type is None else U32)


# --- the other fields, and the value -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs,words", [
    ({"ops": ("bogus",)}, ["unknown operation", *layout.OPS.values()]),
    ({"ops": (" , ",)}, ["--op: no operation given", "vfork"]),
    ({"types": ("bogus",)}, ["unknown namespace type"]),
    ({"comm": ("\\x00",)}, ["none of them NUL"]),  # the kernel's comm ends at its first NUL: C matched ""
    ({"comm": ("a" * 16,)}, ["1 to 15 bytes"]),
    ({"comm": (",".join("c" * 17),)}, ["at most 16 --comm"]),
    ({"ns": (",".join(str(n) for n in range(1, 18)),)}, ["at most 16 --ns"]),
    ({"container": ("",)}, ["--container: no container"]),
])
def test_values_no_record_can_match_are_refused(kwargs, words):
    with pytest.raises(UsageError) as e:
        Filter.parse(**kwargs)
    for word in words:
        assert word in str(e.value)


def test_a_filter_is_one_immutable_value():
    f = Filter.parse(comm=("bash,ip",), ops=("setns", "clone"), types=("NEWNET|uts",), container=("abc",),
                     ns=("net:[4026531840]", "14"))
    assert f == Filter(comms=("bash", "ip"), ops=("setns", "clone"), types=("net", "uts"), containers=("abc",),
                       namespaces=(("net", 4026531840, None), (None, None, 14)))
    assert Filter.parse() == Filter() and hash(f) == hash(Filter(**vars(f)))
    with pytest.raises(AttributeError):
        f.ops = ()


def test_to_c_is_the_same_filter():
    c = Filter.parse(comm=("bash",), ops=("clone", "free"), types=("net",), container=("x",),
                     ns=("net:4026531840", str(U64))).to_c()
    assert c.ops_mask == sum(1 << n for n, name in layout.OPS.items() if name in ("clone", "free"))
    assert (c.ncomms, c.comms[0].value) == (1, b"bash")
    assert c.types_mask == fl.CLONE_FLAGS["CLONE_NEWNET"] and c.containers == 1
    assert c.nns == 2 and list(c.ns_type_bit[:2]) == [fl.CLONE_FLAGS["CLONE_NEWNET"], 0]
    assert list(c.ns_inum[:2]) == [4026531840, 0] and list(c.ns_id[:2]) == [0, U64]
    # an escaped name is the kernel's bytes in C: C compares task->comm as it is
    assert Filter(comms=("tab\\there",)).to_c().comms[0].value == b"tab\there"


# --- --pid ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["\u0663", "\uff13", "+3", "3_0", "0", "-1", "2147483648", "99999999999",
                                  str(2**32 + 1), "", "9" * 5000])
def test_a_pid_is_ascii_digits_of_a_pid_t(text):
    with pytest.raises(click.BadParameter, match="not a process id"):
        Pid().convert(text, None, None)


@pytest.mark.parametrize("text,pid", [("1", 1), (" 42 ", 42), ("2147483647", 2**31 - 1), ("0" * 5000 + "7", 7)])
def test_a_pid_in_range_is_taken(text, pid):
    assert Pid().convert(text, None, None) == pid


# --- the command lines ----------------------------------------------------------------------------------

@pytest.mark.parametrize("command", [["watch"], ["show"], ["render"]])
def test_help_lists_every_op_and_type(command):
    res = nstrace(*command, "--help")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stdout.split())
    assert f"Only these operations: {', '.join(layout.OPS.values())}" in text
    assert ", ".join(fl.NS_TYPES) in text
    for option in ("--pid", "--comm", "--op", "--type", "--container", "--ns"):
        assert option in res.stdout


def test_show_filters_by_ns_id_inode_and_lsns_form():
    uts_made = ["unshare", "clone", "setns"]  # it made it; a clone inside it; a setns into it
    assert shown_ops("--ns", "14") == uts_made
    assert shown_ops("--ns", "uts:4026532137") == uts_made
    assert shown_ops("--ns", "uts:[4026532137]") == uts_made
    assert shown_ops("--ns", "2") == ["clone", "unshare", "clone", "setns"]  # the host's: left, or never entered


@pytest.mark.parametrize("args,words", [
    (["--ns", str(2**64 + 14)], ["ns_id is 1 to 18446744073709551615"]),  # C cut it to 14: watch and show differed
    (["--ns", "\u0661\u0664"], ["TYPE:INODE"]),      # Arabic-Indic 14: show took it as 14
    (["--ns", "uts:[4026532137"], ["TYPE:INODE"]),
    (["--ns", f"uts:{2**32 + 4026532137}"], ["inode is 1 to 4294967295"]),
    (["--pid", "\u0661\u0665\u0666"], ["--pid", "not a process id"]),  # Arabic-Indic 156
    (["--pid", str(2**32 + 156)], ["--pid", "not a process id"]),
    (["--op", "nope"], ["unknown operation", "open_tree"]),
    (["--ns", "9" * 5000], ["ns_id is 1 to"]),      # int() refuses past 4300 digits: was a traceback
], ids=["ns_id-past-u64", "ns-arabic-indic", "ns-one-bracket", "inode-past-u32", "pid-arabic-indic", "pid-past-pid_t",
        "op-unknown", "ns-5000-digits"])
@pytest.mark.parametrize("command", ["show", "render"])
def test_show_and_render_refuse_what_watch_refuses(command, args, words):
    assert_refused(nstrace(command, str(SESSION), *args), *words)
