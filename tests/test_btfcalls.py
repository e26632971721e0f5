"""The programs read their caller through bpf_rdonly_cast() where the kernel has it, called by the BTF id
nstrace writes into the call (nstrace/bpf/btfcalls.py), and load without it where it has not (5.10, 6.1)."""

import ctypes

import pytest

from nstrace.bpf import btfcalls, libbpf, probeset

pytestmark = [pytest.mark.root("loads BPF programs"), pytest.mark.kernelpath]

BTF_KIND_STRUCT, BTF_KIND_FUNC = 4, 12


def _libbpf_ids():
    """What libbpf's own reading of the kernel BTF says: {name: id} of the function and the type."""
    lib = libbpf.lib()
    btf = lib.btf__load_vmlinux_btf()
    assert btf, "no kernel BTF"
    try:
        found = {name: lib.btf__find_by_name_kind(btf, name.encode(), kind)
                 for name, kind in (("bpf_rdonly_cast", BTF_KIND_FUNC), ("task_struct", BTF_KIND_STRUCT))}
    finally:
        lib.btf__free(btf)
    return {name: i for name, i in found.items() if i > 0}


def test_ids_are_the_kernels():
    assert btfcalls.kernel_ids() == _libbpf_ids()


def _sys_enter_log():
    """The verifier's log of the syscall-entry body (every instruction it walked), and the option."""
    ps = probeset.ProbeSet()
    ps.hooks = []
    obj = ps._open()
    lib = obj._lib
    lib.bpf_program__set_log_buf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.bpf_program__set_log_level.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    buf = ctypes.create_string_buffer(64 << 20)
    lib.bpf_program__set_log_buf(obj._prog("sys_enter"), buf, len(buf))
    lib.bpf_program__set_log_level(obj._prog("sys_enter"), 2)
    try:
        obj.load()
        return buf.value.decode(errors="replace"), obj.read_global(".rodata", "task_struct_btf_id")
    finally:
        obj.close()


def test_the_caller_is_cast_where_the_kernel_can():
    log, option = _sys_enter_log()
    ids = _libbpf_ids()
    if "bpf_rdonly_cast" in ids:
        assert option == ids["task_struct"]
        assert f"call bpf_rdonly_cast#{ids['bpf_rdonly_cast']}" in log
    else:  # the call is dead code, and the kernel never saw the helper number it stands for
        assert option == 0
        assert "bpf_rdonly_cast" not in log and "call unknown" not in log


def test_found_in_the_pass_that_builds_the_minimal_btf(tmp_path, monkeypatch):
    """The ids come from corebtf's one pass over the kernel's BTF per boot, not a second pass."""
    from nstrace.bpf import bootcache, corebtf, loader
    monkeypatch.setattr(bootcache, "DIR", str(tmp_path))
    assert corebtf.ensure(loader.OBJECT_PATH)
    monkeypatch.setattr(corebtf, "RawBtf", lambda data: pytest.fail("a second pass over the kernel's BTF"))
    assert btfcalls.kernel_ids() == _libbpf_ids()
    corebtf.forget()
