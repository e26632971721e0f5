"""Reading BTF through libbpf: struct layouts, data-section offsets, kernel functions.

Used to place the ``const volatile`` options in ``.rodata`` (offsets come from
the object's own BTF, so C and Python cannot drift apart), to check the
ctypes mirror of ``struct nstrace_event``, and to ask the running kernel's
BTF whether a function exists (a function missing from BTF was inlined or
renamed and cannot take an fentry probe).
"""

import ctypes

from . import libbpf
from .libbpf import BtfMember, BtfType, BtfVarSecinfo


def _name(btf, off):
    raw = libbpf.lib().btf__name_by_offset(btf, off)
    return raw.decode() if raw else ""


def _type(btf, type_id):
    return libbpf.lib().btf__type_by_id(btf, type_id).contents


def _find(btf, name, kind):
    type_id = libbpf.lib().btf__find_by_name_kind(btf, name.encode(), kind)
    if type_id < 0:
        raise KeyError(name)
    return type_id


def struct_members(btf, struct_name):
    """[(name, byte offset, byte size)] of a struct's members, in order."""
    type_id = _find(btf, struct_name, libbpf.BTF_KIND_STRUCT)
    t = _type(btf, type_id)
    members = ctypes.cast(ctypes.addressof(t) + ctypes.sizeof(BtfType),
                          ctypes.POINTER(BtfMember * t.vlen)).contents
    out = []
    for m in members:
        bit_off = m.offset & 0xFFFFFF if t.kflag else m.offset
        size = libbpf.lib().btf__resolve_size(btf, m.type)
        out.append((_name(btf, m.name_off), bit_off // 8, size))
    return out


def struct_size(btf, struct_name):
    """sizeof(struct struct_name) in bytes."""
    return _type(btf, _find(btf, struct_name, libbpf.BTF_KIND_STRUCT)).size


class _BtfEnum(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


def enum_values(btf, enum_name):
    """{name: value} of an enum type."""
    t = _type(btf, _find(btf, enum_name, libbpf.BTF_KIND_ENUM))
    items = ctypes.cast(ctypes.addressof(t) + ctypes.sizeof(BtfType),
                        ctypes.POINTER(_BtfEnum * t.vlen)).contents
    return {_name(btf, e.name_off): e.val for e in items}


def datasec_vars(btf, section):
    """{variable name: (byte offset, byte size)} of a data section such as ``.rodata``."""
    try:
        sec_id = _find(btf, section, libbpf.BTF_KIND_DATASEC)
    except KeyError:
        return {}
    sec = _type(btf, sec_id)
    infos = ctypes.cast(ctypes.addressof(sec) + ctypes.sizeof(BtfType),
                        ctypes.POINTER(BtfVarSecinfo * sec.vlen)).contents
    return {_name(btf, _type(btf, v.type).name_off): (v.offset, v.size) for v in infos}


class KernelBtf:
    """The running kernel's BTF (/sys/kernel/btf/vmlinux), freed on close."""

    def __init__(self):
        self._btf = libbpf.check_ptr(libbpf.lib().btf__load_vmlinux_btf(), "loading kernel BTF")

    def has_function(self, name):
        """True if the kernel's BTF has FUNC name (so fentry can target it)."""
        return libbpf.lib().btf__find_by_name_kind(self._btf, name.encode(), libbpf.BTF_KIND_FUNC) >= 0

    def has_enum_value(self, enum_name, name):
        """True if the kernel's enum enum_name has the value name (e.g. a BPF helper in bpf_func_id)."""
        try:
            return name in enum_values(self._btf, enum_name)
        except KeyError:
            return False

    def has_member(self, struct_name, member):
        try:
            return any(m[0] == member for m in struct_members(self._btf, struct_name))
        except KeyError:
            return False

    def close(self):
        if self._btf:
            libbpf.lib().btf__free(self._btf)
            self._btf = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
