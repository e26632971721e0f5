"""The ctypes mirror in nstrace/record/events.py against the compiled object's BTF."""

import ctypes

import pytest

from nstrace.bpf import btf, libbpf, loader
from nstrace.record import events, steps


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


def test_head_is_the_event_up_to_its_steps():
    assert ctypes.sizeof(events.EventHead) == events.HEAD_SIZE == events.Event.steps.offset


def test_constants_match(object_btf):
    # the array bounds the mirror uses are the ones C was compiled with
    members = dict((m[0], m[2]) for m in btf.struct_members(object_btf, "nstrace_event"))
    assert members["steps"] == events.MAX_STEPS * ctypes.sizeof(events.Step)
    ns = dict((m[0], m[2]) for m in btf.struct_members(object_btf, "nstrace_ns_set"))
    assert ns["inum"] == events.NS_SLOTS * 4


@pytest.mark.parametrize("enum_name,table,prefix", [
    ("nstrace_op", events.OPS, "OP_"),
    ("nstrace_target_kind", events.TARGET_KINDS, "TARGET_"),
    ("nstrace_step_kind", events.STEP_KINDS, "STEP_"),
    ("nstrace_step_value", events.STEP_VALUES, "VAL_"),
])
def test_enums_match(object_btf, enum_name, table, prefix):
    c_enum = btf.enum_values(object_btf, enum_name)
    py = {prefix + (name or "none").upper(): value for value, name in table.items()}
    assert py == c_enum


def test_function_table_matches(object_btf):
    c_enum = btf.enum_values(object_btf, "nstrace_func")
    assert c_enum.pop("FN_MAX") == len(steps.FUNCTIONS)
    assert {name: value for value, name in enumerate(steps.FUNCTIONS) if name} == \
        {name.removeprefix("FN_"): value for name, value in c_enum.items()}


def test_options_are_rodata(object_btf):
    """The options user space sets before load live in .rodata (const volatile)."""
    assert set(btf.datasec_vars(object_btf, ".rodata")) >= {
        "trace_all", "filter_tgid", "id_key", "raw_addresses", "wakeup_bytes"}
    assert set(btf.datasec_vars(object_btf, ".bss")) >= {"lost_events", "lost_inflight"}


def test_libbpf_is_at_least_1_0():
    assert libbpf.version() >= (1, 0)
