"""The libbpf binding and loader on the real kernel: errors named, nothing swallowed."""

import errno
import json
import os
import subprocess

import pytest
from nshelpers import NSTRACE

from nstrace.bpf import hookplan, loader
from nstrace.errors import LibbpfError, ProbeError
from nstrace.kernel.functions import FUNCTIONS
from nstrace.tracing.tracer import SYSCALL_PROGRAMS, section_of


def only(obj, *names):
    for name in obj.program_names():
        obj.set_autoload(name, name in names)


def test_a_kprobe_attaches_where_the_kernel_has_kprobes_and_is_named_with_its_errno_where_not():
    """Either way the loader tells the truth about one kprobe: attached (and listed as such) on a
    kernel with kprobes, the lab's; refused with the probe's name and errno on one without, ours."""
    with loader.BpfObject() as obj:
        only(obj, "kprobe_copy_namespaces")
        obj.load()
        if hookplan.kprobes_supported():
            obj.attach("kprobe_copy_namespaces")
            assert obj.attached == ["kprobe_copy_namespaces"]
            return
        with pytest.raises(ProbeError) as exc:
            obj.attach("kprobe_copy_namespaces")
        assert obj.attached == []
    assert exc.value.probe == "kprobe/copy_namespaces"
    assert exc.value.errno and errno.errorcode[exc.value.errno] in str(exc.value)
    assert "\n" not in str(exc.value)


def test_fentry_refusal_is_reported_not_fatal():
    refusal = hookplan.fentry_refusal()
    if refusal is None:
        pytest.skip("this kernel loads fentry programs: nothing refused to report (the lab covers this path)")
    assert "fentry/fexit refused" in refusal and "EPERM" in refusal  # kernel-notes/build-machines.md


def test_options_are_frozen_after_load():
    with loader.BpfObject() as obj:
        only(obj, *SYSCALL_PROGRAMS)
        obj.set_rodata("filter_tgid", 1)
        obj.load()
        with pytest.raises(LibbpfError, match="frozen"):
            obj.set_rodata("filter_tgid", 2)


def test_missing_object_file(tmp_path):
    with pytest.raises(LibbpfError, match="make -C probes"):
        loader.BpfObject(tmp_path / "nstrace.bpf.o")


def test_library_without_libbpf_symbols_is_refused():
    """A library that is not libbpf >= 1.0 (here: libc) gives one line and exit 5."""
    res = subprocess.run([str(NSTRACE), "watch"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "NSTRACE_LIBBPF": "libc.so.6"})
    assert res.returncode == 5 and res.stderr.count("\n") == 1 and "older than libbpf 1.0" in res.stderr


def test_doctor_reports_every_probe_point():
    res = subprocess.run([str(NSTRACE), "doctor", "--json"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["probes"]
    assert [r["probe"] for r in rows if r["layer"] == "syscall"][:len(SYSCALL_PROGRAMS)] == [
        section_of(p) for p in SYSCALL_PROGRAMS]
    assert all(r["attached"] for r in rows if r["layer"] == "syscall")
    functions = [r for r in rows if r["layer"] == "function"]
    assert len(functions) == len(FUNCTIONS) - 1
    for r in functions:
        assert r["attached"] or r["reason"], r
    if not hookplan.kprobes_supported() and hookplan.fentry_refusal():
        assert not any(r["attached"] for r in functions)
        assert all("CONFIG_KPROBES" in r["reason"] for r in functions)
    table = subprocess.run([str(NSTRACE), "doctor"], capture_output=True, text=True, timeout=60).stdout
    assert "syscall/tracepoint layer: available" in table


def test_strace_agrees_on_flags(tracer):
    """strace -f is an independent oracle for the flags of each call."""
    from nshelpers import wait_for
    res = subprocess.run(["strace", "-f", "-qq", "-e", "trace=unshare", "unshare", "--uts", "--ipc", "--net",
                          "true"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    line = next(line for line in res.stderr.splitlines() if line.startswith("unshare("))
    strace_flags = sorted(line[line.index("(") + 1:line.index(")")].split("|"))
    [rec] = wait_for(tracer, lambda r: r.op == "unshare" and r.comm == "unshare"
                     and set(r.flags) == set(strace_flags))
    assert sorted(rec.flags) == strace_flags


def test_kallsyms_functions_are_the_text_symbols_of_proc_kallsyms(tmp_path, monkeypatch):
    """The hook plan's kallsyms answer (one regex pass, kept for the boot) is what a parse of every
    line of /proc/kallsyms says of FUNCTIONS: text symbols, t or T, a module's too."""
    from nstrace.bpf import bootcache
    from nstrace.kernel.functions import FUNCTIONS
    monkeypatch.setattr(bootcache, "DIR", str(tmp_path))
    hookplan._in_kallsyms.cache_clear()
    text = set()
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tT":
                text.add(parts[2])
    try:
        assert hookplan._in_kallsyms() == {f for f in FUNCTIONS[1:] if f in text}
        assert len(hookplan._in_kallsyms()) > 20
    finally:
        hookplan._in_kallsyms.cache_clear()
