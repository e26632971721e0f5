"""The kernel-function layer's hooks: which functions of record.steps.FUNCTIONS can be probed here, and how.

Hook choice per function, each decided on its own: fentry/fexit where the
kernel loads BPF_PROG_TYPE_TRACING programs and has the function in its BTF;
else kprobe/kretprobe where it has kprobes and the symbol; else unavailable,
with the reason. A feature check, never a version check.
"""

import errno
import functools
import os

# plan() runs in nstrace.bpf.preload's thread before the first probe is attached:
# nothing here imports more than the loader and the function list at module level.
from ..errors import LibbpfError
from ..record.probes import Hook
from ..record.steps import FUNCTIONS
from . import bootcache, libbpf, loader
from .btf import KernelBtf

KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"


def kernel_config(option):
    """'y', 'm', None (not set) or '' (no /proc/config.gz) for a CONFIG_ option."""
    import gzip
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            for line in f:
                if line.startswith(option + "="):
                    return line.strip().split("=", 1)[1]
        return None
    except OSError:
        return ""


@functools.cache
def fentry_refusal():
    """None if this kernel loads fentry/fexit programs, else why not (one line).

    libbpf's feature probe answers first; when it says no, one real fentry
    program of ours is loaded to learn the kernel's errno. That is a whole
    verifier run, so the answer is kept for the rest of this boot.
    """
    if libbpf.lib().libbpf_probe_bpf_prog_type(libbpf.BPF_PROG_TYPE_TRACING, None) == 1:
        return None
    return bootcache.text("fentry", lambda: _load_one_fentry_program() or "") or None


def _load_one_fentry_program():
    probe = "fentry_copy_namespaces"
    try:
        with loader.BpfObject() as obj:
            for name in obj.program_names():
                obj.set_autoload(name, name == probe)
            obj.load()
        return None
    except LibbpfError as err:
        name = errno.errorcode.get(err.errno, str(err.errno))
        return f"fentry/fexit refused (a BPF_PROG_TYPE_TRACING program fails to load: {name})"


def kprobes_supported():
    return os.path.exists(KPROBE_PMU)


@functools.cache
def _kallsyms_text():
    names = set()
    with open("/proc/kallsyms") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1] in "tT":
                names.add(parts[2])
    return names


@functools.cache
def no_hook_reason():
    """Why neither fentry nor kprobes work on this kernel, in one line (kept for the boot: it reads
    /proc/config.gz, a decompression at every start on the kernels where it is needed)."""
    def reason():
        config = kernel_config("CONFIG_KPROBES")
        kprobes = "no kprobes (CONFIG_KPROBES is not set)" if config is None else f"no kprobe PMU at {os.path.dirname(KPROBE_PMU)}"
        return f"{kprobes}; {fentry_refusal()}"
    return bootcache.text("nohook", reason)


def plan():
    """A Hook per function of FUNCTIONS, chosen for the running kernel."""
    hooks = []
    fentry, kprobes = fentry_refusal() is None, kprobes_supported()
    btf = KernelBtf() if fentry else None
    try:
        for func in FUNCTIONS[1:]:
            if fentry and btf.has_function(func):
                hooks.append(Hook(func, "fentry"))
            elif kprobes and func in _kallsyms_text():
                hooks.append(Hook(func, "kprobe"))
            elif fentry or kprobes:
                hooks.append(Hook(func, None, "not in this kernel's BTF or symbols: inlined or renamed"))
            else:
                hooks.append(Hook(func, None, no_hook_reason()))
    finally:
        if btf:
            btf.close()
    return hooks
