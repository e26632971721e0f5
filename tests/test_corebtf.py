"""The minimal kernel BTF (nstrace/bpf/corebtf.py) relocates our programs exactly as the whole kernel BTF does."""

import ctypes
import os

import pytest

from nstrace.bpf import bootcache, corebtf, hookplan, libbpf, loader

root = pytest.mark.root("loads BPF programs")


@pytest.mark.parametrize("name,essential", [
    ("nsproxy", "nsproxy"), ("nsproxy___old", "nsproxy"), ("ns_common___a___b", "ns_common___a"),
    ("__u32", "__u32"), ("a____b", "a____b"), ("x___", "x___"),
])
def test_essential_name_is_libbpfs(name, essential):
    assert corebtf.essential_name(name) == essential


def _relocated(core_btf):
    """{program: its instructions after CO-RE, as libbpf handed them to the kernel}, map fds blanked."""
    lib = libbpf.lib()
    with loader.BpfObject(core_btf=core_btf) as obj:
        # None with core_btf=True: a relocation of a kind the copy cannot answer (corebtf.SAFE_KINDS)
        assert bool(obj.core_btf) == core_btf, "no minimal BTF for this object"
        fentry = hookplan.fentry_refusal() is None
        names = [n for n, sec in obj.program_names().items() if fentry or not sec.startswith(("fentry/", "fexit/"))]
        for name in obj.program_names():
            obj.set_autoload(name, name in names)
        obj.load()
        out = {}
        for name in names:
            prog = obj._prog(name)
            n = lib.bpf_program__insn_cnt(prog)
            code = bytearray(ctypes.string_at(lib.bpf_program__insns(prog), 8 * n))
            i = 0
            while i < n:
                if code[8 * i] == 0x18:  # ld_imm64: a map's fd (src 1) or value (src 2) differs per object
                    if code[8 * i + 1] >> 4 in (1, 2):
                        code[8 * i + 4:8 * i + 8] = bytes(4)
                    i += 1
                i += 1
            out[name] = bytes(code)
    return out


@root
def test_same_instructions_as_with_the_whole_kernel_btf():
    minimal, whole = _relocated(True), _relocated(False)
    assert len(minimal) >= 9 and minimal.keys() == whole.keys()
    assert [n for n in minimal if minimal[n] != whole[n]] == []


def test_built_once_then_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(bootcache, "DIR", str(tmp_path))
    path = corebtf.ensure(loader.OBJECT_PATH)
    assert path and os.path.dirname(path) == str(tmp_path)
    built = os.stat(path).st_ino
    assert corebtf.ensure(loader.OBJECT_PATH) == path and os.stat(path).st_ino == built  # not written again
    data = open(path, "rb").read()
    assert len(data) < 200_000 < os.path.getsize(corebtf.VMLINUX_BTF)
    assert list(tmp_path.iterdir()) == [tmp_path / os.path.basename(path)]  # no temporary file left


def test_a_new_build_removes_copies_unused_for_a_minute(tmp_path, monkeypatch):
    monkeypatch.setattr(bootcache, "DIR", str(tmp_path))
    old, recent, other = (tmp_path / n for n in ("core-1-x-1-a.btf", "core-1-x-2-b.btf", "fentry-x.txt"))
    for f in (old, recent, other):
        f.write_bytes(b"x")
    minutes_ago = os.stat(old).st_mtime - 120
    os.utime(old, (minutes_ago, minutes_ago))
    os.utime(other, (minutes_ago, minutes_ago))
    path = corebtf.ensure(loader.OBJECT_PATH)
    assert sorted(tmp_path.iterdir()) == sorted([tmp_path / os.path.basename(path), recent, other])


def test_without_a_writable_cache_libbpf_reads_the_kernel_btf(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(bootcache, "DIR", str(blocker / "sub"))
    assert corebtf.ensure(loader.OBJECT_PATH) is None
    with loader.BpfObject() as obj:
        assert obj.core_btf is None and obj.program_names()


def test_a_relocation_the_copy_cannot_answer_gets_the_whole_kernel_btf(tmp_path, monkeypatch):
    monkeypatch.setattr(bootcache, "DIR", str(tmp_path))
    monkeypatch.setattr(corebtf, "SAFE_KINDS", set())
    monkeypatch.setattr(corebtf, "TYPE_KINDS", set())
    with pytest.raises(ValueError, match="needs the whole kernel BTF"):
        corebtf.core_roots(open(loader.OBJECT_PATH, "rb").read())
    assert corebtf.ensure(loader.OBJECT_PATH) is None and not list(tmp_path.iterdir())


def test_nothing_to_relocate_makes_an_empty_copy():
    with open(corebtf.VMLINUX_BTF, "rb") as f:
        data = corebtf.minimal(corebtf.RawBtf(f.read()), set())
    raw = corebtf.RawBtf(data)
    assert raw.types == raw.types_end  # no types: an empty name must not match every string
    corebtf._check_parses(data)


def test_one_walk_answers_as_libbpf_does(tmp_path, monkeypatch):
    """What the hook plan asks of the kernel's BTF (which functions it has, whether bpf_func_id has a
    helper) and the ids btfcalls needs, from one walk of the raw BTF, as libbpf answers each alone."""
    from nstrace.bpf.btf import KernelBtf
    from nstrace.kernel.functions import FUNCTIONS
    monkeypatch.setattr(bootcache, "DIR", str(tmp_path))
    kernel = corebtf.kernel()
    lib = libbpf.lib()
    with KernelBtf() as btf:
        present = kernel.find({f: corebtf.FUNC for f in FUNCTIONS[1:]})
        assert present == {f: lib.btf__find_by_name_kind(btf._btf, f.encode(), corebtf.FUNC)
                           for f in FUNCTIONS[1:] if btf.has_function(f)}
        assert len(present) > 20
        for value in ("BPF_FUNC_get_func_arg", "BPF_FUNC_get_current_task_btf", "BPF_FUNC_no_such_helper"):
            assert kernel.enum_has("bpf_func_id", value) == btf.has_enum_value("bpf_func_id", value)
    expected = set(present) | ({hookplan.FUNC_ARG_HELPER} if kernel.enum_has("bpf_func_id", hookplan.FUNC_ARG_HELPER)
                               else set())
    assert hookplan.in_kernel_btf() == expected
    corebtf.forget()
