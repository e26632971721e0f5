"""The flag decoder and parser: every CLONE_* flag round-trips."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nstrace.errors import UsageError
from nstrace.kernel import flags as fl


@pytest.mark.parametrize("name,value", fl.CLONE_FLAGS.items())
def test_every_flag_round_trips(name, value):
    assert fl.decode_flags(value, "unshare") == [name]
    assert fl.encode_flags([name]) == value
    short = name.removeprefix("CLONE_")
    for text in (name, short, short.lower(), name.lower()):
        assert fl.parse_flags(text) == value


def test_separators_and_case():
    v = fl.CLONE_FLAGS["CLONE_NEWPID"] | fl.CLONE_FLAGS["CLONE_NEWNS"]
    assert fl.parse_flags("NEWPID|NEWNS") == v
    assert fl.parse_flags("clone_newpid, newns") == v
    assert fl.parse_flags("0x20020000") == v
    assert fl.short(fl.decode_flags(v)) == "NEWNS|NEWPID"


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
    assert fl.encode_flags(fl.decode_flags(value, "unshare")) == value


def test_ns_types():
    assert fl.parse_ns_types("net,UTS|newpid") == ["net", "uts", "pid"]
    assert fl.ns_types_in(fl.parse_flags("NEWTIME|NEWUSER")) == ["user", "time"]
    with pytest.raises(UsageError):
        fl.parse_ns_types("bogus")
