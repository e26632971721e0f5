"""The kernel-function layer's hooks: which functions of kernel.functions.FUNCTIONS can be probed here, and how.

Hook choice per function, each decided on its own: fentry/fexit where the
kernel loads BPF_PROG_TYPE_TRACING programs, has what our fentry programs
call (bpf_get_func_arg(), 5.17+: probes/kfuncs.bpf.c reads arguments
without depending on each function's prototype) and has the function in its
BTF; else kprobe/kretprobe where it has kprobes and the symbol; else
unavailable, with the reason. Each Hook says why it is what it is. Feature
checks, never a version check.
"""

import errno
import os
import struct
import zlib

# plan() runs in nstrace.bpf.preload's thread before the first probe is attached:
# nothing here imports more than the loader and the function list at module level.
from ..errors import LibbpfError
from ..kernel.functions import FUNCTIONS, PER_TYPE_DEATHS, TREE_DEATH
from ..kernel.hooks import Hook
from ..once import once
from . import bootcache, corebtf, libbpf, loader

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


@once
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
        with loader.BpfObject(loader.object_for_kernel()) as obj:
            for name in obj.program_names():
                obj.set_autoload(name, name == probe)
            obj.load()
        return None
    except LibbpfError as err:
        name = errno.errorcode.get(err.errno, str(err.errno))
        return f"fentry/fexit refused (a BPF_PROG_TYPE_TRACING program fails to load: {name})"


def kprobes_supported():
    return os.path.exists(KPROBE_PMU)


def _per_functions(name):
    """A bootcache name for an answer about FUNCTIONS: another list (another nstrace) asks again."""
    return f"{name}-{zlib.crc32(' '.join(FUNCTIONS[1:]).encode()):08x}"


@once
def _in_kallsyms():
    """The names of FUNCTIONS /proc/kallsyms has as text symbols (t or T, a module's too), kept for
    the boot (per list of functions): /proc/kallsyms is megabytes the kernel formats at each read."""
    def find():
        import re  # a kprobe machine's first start of the boot only
        with open("/proc/kallsyms", "rb") as f:
            text = f.read()
        # "<address> <t|T> <name>[\t[<module>]]" per line: the wanted names, in one pass in C
        names = b"|".join(re.escape(func.encode()) for func in FUNCTIONS[1:])
        found = re.findall(rb"^[0-9a-f]+ [tT] (" + names + rb")(?:\t|$)", text, re.MULTILINE)
        return " ".join(sorted({name.decode() for name in found}))
    return set(bootcache.text(_per_functions("kallsyms-functions"), find).split())


def kprobe_can_take(func):
    """True if a kprobe can be attached to func (one of FUNCTIONS) here."""
    return kprobes_supported() and func in _in_kallsyms()


@once
def no_hook_reason():
    """Why neither fentry nor kprobes work on this kernel, in one line (kept for the boot: it reads
    /proc/config.gz, a decompression at every start on the kernels where it is needed)."""
    def reason():
        config = kernel_config("CONFIG_KPROBES")
        kprobes = "no kprobes (CONFIG_KPROBES is not set)" if config is None else f"no kprobe PMU at {os.path.dirname(KPROBE_PMU)}"
        return f"{kprobes}; {fentry_refusal()}"
    return bootcache.text("nohook", reason)


FUNC_ARG_HELPER = "BPF_FUNC_get_func_arg"


def in_kernel_btf():
    """The names of FUNCTIONS the kernel's BTF has as functions (what fentry can target), and
    FUNC_ARG_HELPER if its enum bpf_func_id has that helper: kept for the boot (per list of
    functions), and found in the walk of the kernel's BTF that builds the boot's minimal copy too
    (corebtf.kernel()). One search for all of them: libbpf's btf__find_by_name_kind() walks all
    ~127k types per name, 49 times at every start (0.36 s in a TCG guest)."""
    def find():
        try:
            kernel = corebtf.kernel()
            present = kernel.find({func: corebtf.FUNC for func in FUNCTIONS[1:]})
            helper = [FUNC_ARG_HELPER] if kernel.enum_has("bpf_func_id", FUNC_ARG_HELPER) else []
        except (OSError, ValueError, struct.error) as e:
            raise LibbpfError(f"reading the kernel's BTF ({corebtf.VMLINUX_BTF}): {e}") from None
        return " ".join(helper + sorted(present))
    return set(bootcache.text(_per_functions("btf-functions"), find).split())


def plan():
    """A Hook per function of FUNCTIONS, chosen for the running kernel."""
    hooks = []
    fentry, kprobes = fentry_refusal() is None, kprobes_supported()
    btf = in_kernel_btf() if fentry else set()
    func_arg = FUNC_ARG_HELPER in btf
    for func in FUNCTIONS[1:]:
        in_btf = func in btf
        if in_btf and func_arg:
            hooks.append(Hook(func, "fentry", why="fentry: in the kernel's BTF, and the kernel has "
                                                  "bpf_get_func_arg, which our fentry programs call"))
            continue
        if not fentry:
            not_fentry = fentry_refusal()
        elif not func_arg:
            not_fentry = ("fentry programs here would call bpf_get_func_arg, which this kernel lacks "
                          "(5.17+)")
        else:
            not_fentry = "not in the kernel's BTF, so no fentry"
        if kprobe_can_take(func):
            hooks.append(Hook(func, "kprobe", why=f"kprobe: {not_fentry}"))
        elif in_btf:  # fentry could reach it, but our programs cannot run there
            hooks.append(Hook(func, None, f"{not_fentry}; and no kprobe to fall back on "
                                          f"({'no kprobes' if not kprobes else 'not in /proc/kallsyms'})"))
        elif fentry or kprobes:
            hooks.append(Hook(func, None, "not in this kernel's BTF or symbols: inlined or renamed"))
        else:
            hooks.append(Hook(func, None, no_hook_reason()))
    return _one_death_hook(hooks)


def _one_death_hook(hooks):
    """Where the namespace tree's removal is hooked, it sees every death: each type's own death function
    would report the same death twice, so those are left out, saying why."""
    by_func = {h.func: h for h in hooks}
    if by_func[TREE_DEATH].kind:
        for func in PER_TYPE_DEATHS:
            h = by_func[func]
            if h.kind:
                h.kind, h.why = None, ""
                h.reason = f"not needed here: {TREE_DEATH} sees every namespace's death on this kernel"
    return hooks
