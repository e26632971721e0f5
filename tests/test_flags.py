"""The flag decoder and parser: every CLONE_* flag round-trips."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nstrace.errors import UsageError
from nstrace.kernel import flags as fl


@pytest.mark.parametrize("op,name,value", [(op, name, value) for op in ("clone3", "unshare")
                                             for name, value in fl.flag_table(op).items()])
def test_every_flag_round_trips(op, name, value):
    assert fl.decode_flags(value, op) == [name]
    assert fl.encode_flags([name], op) == value
    short = fl.short([name])
    for text in (name, short, short.lower(), name.lower()):
        assert fl.parse_flags(text, op) == value


# include/uapi/linux/sched.h of 7.2.13 (Debian's linux-libc-dev 7.2.13-1), the newest lab kernel: what
# 7.1 added beside the flags the machine's own headers have (test_the_installed_headers_flags_are_known)
SCHED_H_7_2 = {"CLONE_AUTOREAP": 1 << 34, "CLONE_NNP": 1 << 35, "CLONE_PIDFD_AUTOKILL": 1 << 36,
               "CLONE_EMPTY_MNTNS": 1 << 37, "UNSHARE_EMPTY_MNTNS": 0x00100000}


@pytest.mark.parametrize("name,value", SCHED_H_7_2.items())
def test_the_7_1_flags_are_decoded(name, value):
    op = "unshare" if name.startswith("UNSHARE_") else "clone3"
    assert fl.flag_table(op)[name] == value
    assert fl.decode_flags(value, op) == [name]


def test_the_installed_headers_flags_are_known():
    """Every CLONE_* and UNSHARE_* the machine's linux/sched.h defines is in probes/uapi.def, same value."""
    text = open("/usr/include/linux/sched.h").read()
    defined = {name: int(value.replace("ULL", ""), 0) if "<<" not in value else 1 << int(value.split("<<")[1].strip(" )"))
               for name, value in re.findall(r"^#define\s+((?:CLONE|UNSHARE)_\w+)\s+\(?([0-9xXa-fA-FUL]+(?:\s*<<\s*\d+)?)", text, re.M)}
    defined = {name: value for name, value in defined.items() if not name.startswith("CLONE_ARGS_SIZE")}  # sizes
    assert defined, "no flags found in linux/sched.h"
    known = {**fl.CLONE_FLAGS, **fl.UNSHARE_FLAGS}
    assert {name: known.get(name) for name in defined} == defined


def test_unshare_reads_its_own_flag_where_clone_has_parent_settid():
    """0x00100000 is CLONE_PARENT_SETTID to clone and clone3, UNSHARE_EMPTY_MNTNS to unshare (7.1+)."""
    assert fl.decode_flags(0x00100000, "clone") == ["CLONE_PARENT_SETTID"]
    assert fl.decode_flags(0x00100000, "clone3") == ["CLONE_PARENT_SETTID"]
    assert fl.decode_flags(0x00100000, "unshare") == ["UNSHARE_EMPTY_MNTNS"]
    assert fl.parse_flags("EMPTY_MNTNS", "unshare") == 0x00100000
    assert fl.parse_flags("EMPTY_MNTNS", "clone3") == 1 << 37
    assert fl.parse_flags("PARENT_SETTID", "clone3") == 0x00100000
    with pytest.raises(UsageError):
        fl.parse_flags("PARENT_SETTID", "unshare")
    assert fl.short(fl.decode_flags(0x00100000 | fl.CLONE_FLAGS["CLONE_NEWUTS"], "unshare")) == "UNSHARE_EMPTY_MNTNS|NEWUTS"
    # unshare has none of clone3's wide flags: check_unshare_flags() refuses them (kernel/fork.c, 7.2.13)
    assert fl.decode_flags(1 << 37, "unshare") == ["0x2000000000"]


@pytest.mark.parametrize("op,flags", [("unshare", 0x00100000), ("clone3", 1 << 37)])
def test_an_empty_mount_namespace_is_a_mount_namespace(op, flags):
    assert fl.requested_types(flags, op) == ["mnt"]
    assert fl.empty_mount_ns(flags, op)
    assert fl.requested_types(0x00100000, "clone3") == [], "PARENT_SETTID makes nothing"


def test_separators_and_case():
    v = fl.CLONE_FLAGS["CLONE_NEWPID"] | fl.CLONE_FLAGS["CLONE_NEWNS"]
    assert fl.parse_flags("NEWPID|NEWNS") == v
    assert fl.parse_flags("clone_newpid, newns") == v
    assert fl.parse_flags("0x20020000") == v
    assert fl.short(fl.decode_flags(v, "unshare")) == "NEWNS|NEWPID"


@pytest.mark.parametrize("bad", ["NEWFOO", "", "NEWPID||NEWNS", "pid"])
def test_unknown_names_are_usage_errors(bad):
    with pytest.raises(UsageError) as exc:
        fl.parse_flags(bad)
    assert "\n" not in str(exc.value)


def test_clone_low_byte_is_a_signal_not_flags():
    assert fl.decode_flags(0x80 | 17, "clone") == []
    assert fl.decode_flags(0x80, "clone3") == ["CLONE_NEWTIME"]
    assert fl.exit_signal_name(17) == "SIGCHLD"


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_decode_encode_is_identity(value):
    for op in ("clone3", "unshare"):
        assert fl.encode_flags(fl.decode_flags(value, op), op) == value


def test_ns_types():
    assert fl.parse_ns_types("net,UTS|newpid") == ["net", "uts", "pid"]
    assert fl.ns_types_in(fl.parse_flags("NEWTIME|NEWUSER")) == ["user", "time"]
    with pytest.raises(UsageError):
        fl.parse_ns_types("bogus")


def test_clone_and_setns_read_only_what_they_take():
    """clone() keeps the low 32 bits of its flags (kernel/fork.c, 7.2.13): clone3's wide flags are no
    flags of its; setns's nstype is CLONE_NEW* flags alone (check_setns_flags(), kernel/nsproxy.c)."""
    assert fl.decode_flags(1 << 37, "clone") == ["0x2000000000"] and fl.requested_types(1 << 37, "clone") == []
    with pytest.raises(UsageError):
        fl.parse_flags("EMPTY_MNTNS", "clone")
    assert fl.decode_flags(fl.CLONE_FLAGS["CLONE_NEWNET"] | 1 << 37, "setns") == ["CLONE_NEWNET", "0x2000000000"]
    assert set(fl.flag_table("setns")) == set(fl.NS_TYPES.values())
