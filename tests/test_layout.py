"""The ctypes mirror in nstrace/events.py against the compiled object's BTF."""

import ctypes

import pytest

from nstrace import btf, events, libbpf, loader


@pytest.fixture(scope="module")
def object_btf():
    obj = loader.BpfObject()  # opening needs no privileges: nothing is loaded
    yield obj.btf
    obj.close()


@pytest.mark.parametrize("struct_name,mirror", [
    ("nstrace_event", events.Event),
    ("nstrace_ns_set", events.NsSet),
    ("nstrace_step", events.Step),
])
def test_mirror_matches_btf(object_btf, struct_name, mirror):
    c_members = btf.struct_members(object_btf, struct_name)
    py_members = [(name, getattr(mirror, name).offset, getattr(mirror, name).size)
                  for name, *_ in mirror._fields_]
    assert py_members == c_members
    assert ctypes.sizeof(mirror) == btf.struct_size(object_btf, struct_name)


def test_constants_match(object_btf):
    # the array bounds the mirror uses are the ones C was compiled with
    members = dict((m[0], m[2]) for m in btf.struct_members(object_btf, "nstrace_event"))
    assert members["steps"] == events.MAX_STEPS * ctypes.sizeof(events.Step)
    ns = dict((m[0], m[2]) for m in btf.struct_members(object_btf, "nstrace_ns_set"))
    assert ns["inum"] == events.NS_SLOTS * 4


def test_options_are_rodata(object_btf):
    """The options user space sets before load live in .rodata (const volatile)."""
    assert set(btf.datasec_vars(object_btf, ".rodata")) >= {
        "trace_all", "filter_tgid", "id_key", "raw_addresses", "wakeup_bytes"}
    assert set(btf.datasec_vars(object_btf, ".bss")) >= {"lost_events", "lost_inflight"}


def test_libbpf_is_at_least_1_0():
    assert libbpf.version() >= (1, 0)
