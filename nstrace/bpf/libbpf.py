"""A small ctypes binding to the system libbpf (>= 1.0).

Only the calls nstrace needs, each declared with its C prototype. libbpf 1.x
returns NULL and sets errno for constructors and a negative errno for
everything else; :func:`check` and :func:`check_ptr` turn both into
:class:`~nstrace.errors.LibbpfError` with the last lines libbpf printed.
"""

import ctypes
import errno as errno_mod
import os

from ..errors import LibbpfError

MIN_VERSION = (1, 0)

# enum bpf_prog_type, include/uapi/linux/bpf.h
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_PROG_TYPE_KPROBE = 2
BPF_PROG_TYPE_TRACEPOINT = 5
BPF_PROG_TYPE_RAW_TRACEPOINT = 17
BPF_PROG_TYPE_TRACING = 26

# enum btf_func_linkage / kinds, include/uapi/linux/btf.h
BTF_KIND_STRUCT = 4
BTF_KIND_ENUM = 6
BTF_KIND_FUNC = 12
BTF_KIND_DATASEC = 15

# enum libbpf_print_level
LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
RING_BUFFER_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

_lib = None
KEPT_MESSAGES = 40
_messages = []  # the last KEPT_MESSAGES of libbpf's lines
_print_cb = None


class BtfType(ctypes.Structure):
    """struct btf_type: name_off, info (vlen in bits 0-15, kind in 24-28), size or type."""

    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32), ("size", ctypes.c_uint32)]

    @property
    def kind(self):
        return (self.info >> 24) & 0x1F

    @property
    def vlen(self):
        return self.info & 0xFFFF

    @property
    def kflag(self):
        return self.info >> 31


class BtfMember(ctypes.Structure):
    """struct btf_member: offset in bits (bitfield size in the top byte when kflag)."""

    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32), ("offset", ctypes.c_uint32)]


class BtfVarSecinfo(ctypes.Structure):
    """struct btf_var_secinfo: a variable's place in a DATASEC, in bytes."""

    _fields_ = [("type", ctypes.c_uint32), ("offset", ctypes.c_uint32), ("size", ctypes.c_uint32)]


class OpenOpts(ctypes.Structure):
    """struct bpf_object_open_opts as of libbpf 1.0 (later versions only append: sz says which)."""

    _fields_ = [("sz", ctypes.c_size_t), ("object_name", ctypes.c_char_p), ("relaxed_maps", ctypes.c_bool),
                ("pin_root_path", ctypes.c_char_p), ("_attach_prog_fd", ctypes.c_uint32),
                ("kconfig", ctypes.c_char_p), ("btf_custom_path", ctypes.c_char_p),
                ("kernel_log_buf", ctypes.c_char_p), ("kernel_log_size", ctypes.c_size_t),
                ("kernel_log_level", ctypes.c_uint32)]

    def __init__(self, **fields):
        super().__init__(sz=ctypes.sizeof(self), **fields)


DEBUG = bool(os.environ.get("NSTRACE_LIBBPF_DEBUG"))


def _c_printer(level, fmt, va_list):
    # libbpf hands us a printf format and a va_list: vsnprintf formats it.
    # Debug lines (thousands per load) are dropped unformatted unless asked for.
    if level == LIBBPF_DEBUG and not DEBUG:
        return 0
    buf = ctypes.create_string_buffer(1024)
    _libc.vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(va_list))
    text = buf.value.decode(errors="replace").rstrip()
    if text:
        _messages.append(text)
        del _messages[:-KEPT_MESSAGES]
        if DEBUG:
            os.write(2, (text + "\n").encode())
    return 0


_libc = ctypes.CDLL(None, use_errno=True)
_libc.vsnprintf.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p]


_PROTOTYPES = {
    # name: (restype, argtypes)
    "libbpf_major_version": (ctypes.c_uint32, []),
    "libbpf_minor_version": (ctypes.c_uint32, []),
    "libbpf_set_print": (ctypes.c_void_p, [_PRINT_FN]),
    "libbpf_probe_bpf_prog_type": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p]),
    "bpf_prog_load": (ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                                     ctypes.c_size_t, ctypes.c_void_p]),
    "bpf_object__open_file": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.POINTER(OpenOpts)]),
    "bpf_object__load": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_object__close": (None, [ctypes.c_void_p]),
    "bpf_object__btf": (ctypes.c_void_p, [ctypes.c_void_p]),
    "bpf_object__find_map_by_name": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_object__find_program_by_name": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]),
    "bpf_object__next_program": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_program__name": (ctypes.c_char_p, [ctypes.c_void_p]),
    "bpf_program__section_name": (ctypes.c_char_p, [ctypes.c_void_p]),
    "bpf_program__set_autoload": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_bool]),
    "bpf_program__autoload": (ctypes.c_bool, [ctypes.c_void_p]),
    "bpf_program__attach": (ctypes.c_void_p, [ctypes.c_void_p]),
    "bpf_program__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_program__insns": (ctypes.c_void_p, [ctypes.c_void_p]),
    "bpf_program__insn_cnt": (ctypes.c_size_t, [ctypes.c_void_p]),
    "bpf_program__set_insns": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]),
    "bpf_link__destroy": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_link__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_map__fd": (ctypes.c_int, [ctypes.c_void_p]),
    "bpf_map__set_max_entries": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint32]),
    "bpf_map__initial_value": (ctypes.c_void_p, [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t)]),
    "bpf_map_update_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]),
    "bpf_map_delete_elem": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p]),
    "bpf_map_get_next_key": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]),
    "bpf_obj_get_info_by_fd": (ctypes.c_int, [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]),
    "ring_buffer__new": (ctypes.c_void_p, [ctypes.c_int, RING_BUFFER_SAMPLE_FN, ctypes.c_void_p, ctypes.c_void_p]),
    "ring_buffer__poll": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "ring_buffer__consume": (ctypes.c_int, [ctypes.c_void_p]),
    "ring_buffer__epoll_fd": (ctypes.c_int, [ctypes.c_void_p]),
    "ring_buffer__free": (None, [ctypes.c_void_p]),
    "btf__load_vmlinux_btf": (ctypes.c_void_p, []),
    "btf__new": (ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_uint32]),
    "btf__free": (None, [ctypes.c_void_p]),
    "btf__find_by_name_kind": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]),
    "btf__type_by_id": (ctypes.POINTER(BtfType), [ctypes.c_void_p, ctypes.c_uint32]),
    "btf__name_by_offset": (ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_uint32]),
    "btf__resolve_size": (ctypes.c_long, [ctypes.c_void_p, ctypes.c_uint32]),
}


def lib():
    """The loaded libbpf, checked for version >= 1.0 (raises LibbpfError)."""
    global _lib, _print_cb
    if _lib is not None:
        return _lib
    # The soname first: ctypes.util.find_library runs `ldconfig -p`, a process of its own.
    name = os.environ.get("NSTRACE_LIBBPF") or "libbpf.so.1"
    try:
        handle = ctypes.CDLL(name, use_errno=True)
    except OSError:
        from ctypes.util import (
            find_library,  # imports subprocess, shutil, tempfile: fallback only
        )
        other = None if "NSTRACE_LIBBPF" in os.environ else find_library("bpf")
        if not other:
            raise LibbpfError(f"libbpf not found ({name}): install the libbpf1 package") from None
        name, handle = other, ctypes.CDLL(other, use_errno=True)
    try:
        for fn, (restype, argtypes) in _PROTOTYPES.items():
            f = getattr(handle, fn)
            f.restype, f.argtypes = restype, argtypes
    except AttributeError as exc:
        raise LibbpfError(f"{name} is older than libbpf {MIN_VERSION[0]}.{MIN_VERSION[1]} "
                          f"(no {exc.args[0].split()[-1]})") from None
    version = (handle.libbpf_major_version(), handle.libbpf_minor_version())
    if version < MIN_VERSION:
        raise LibbpfError(f"{name} is libbpf {version[0]}.{version[1]}; nstrace needs >= 1.0")
    _print_cb = _PRINT_FN(_c_printer)
    handle.libbpf_set_print(_print_cb)
    _lib = handle
    return _lib


def version():
    """libbpf's (major, minor) version."""
    h = lib()
    return (h.libbpf_major_version(), h.libbpf_minor_version())


def unheard(fn, *args):
    """fn(*args) with libbpf printing nothing (everything, as always, under NSTRACE_LIBBPF_DEBUG)."""
    if DEBUG:
        return fn(*args)
    handle = lib()
    handle.libbpf_set_print(_PRINT_FN())  # NULL: libbpf prints nothing
    try:
        return fn(*args)
    finally:
        handle.libbpf_set_print(_print_cb)


def last_messages(n=6):
    """The last lines libbpf printed, joined for an error message."""
    return list(_messages)[-n:]


def clear_messages():
    _messages.clear()


def _error(what, err):
    detail = "; ".join(m for m in last_messages(3) if m)
    msg = f"{what}: {os.strerror(err)} (errno {errno_mod.errorcode.get(err, err)})"
    return msg + (f" [libbpf: {detail}]" if detail else "")


def check(ret, what):
    """Raise LibbpfError for a negative libbpf return code."""
    if ret < 0:
        raise LibbpfError(_error(what, -ret), -ret)
    return ret


def check_ptr(ptr, what):
    """Raise LibbpfError for a NULL constructor result (errno says why)."""
    if not ptr:
        err = ctypes.get_errno() or errno_mod.EINVAL
        raise LibbpfError(_error(what, err), err)
    return ptr
