"""The kernel-function layer: which functions can be probed here, and what a path means.

Facts about the functions (source file, what each does to task->nsproxy, the
expected order per operation) live in kernel-notes/paths.toml, the one copy;
this module reads it. The function list the BPF side can hook is the enum
nstrace_func of probes/nstrace.h, mirrored in FUNCTIONS below.

Hook choice per function, each decided on its own: fentry/fexit where the
kernel loads BPF_PROG_TYPE_TRACING programs and has the function in its BTF;
else kprobe/kretprobe where it has kprobes and the symbol; else unavailable,
with the reason. A feature check, never a version check.
"""

import errno
import functools
import os

# plan() runs in nstrace.preload's thread before the first probe is attached:
# nothing here imports more than the loader at module level (events, flags: in decode_step).
from . import bootcache, libbpf, loader
from .btf import KernelBtf
from .errors import LibbpfError

NOTES = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "kernel-notes")
PATHS_TOML = os.path.join(NOTES, "paths.toml")
KPROBE_PMU = "/sys/bus/event_source/devices/kprobe/type"

# enum nstrace_func of probes/nstrace.h, by value (tests/test_layout.py holds the two equal)
FUNCTIONS = (
    None, "copy_namespaces", "create_new_namespaces", "copy_mnt_ns", "copy_utsname", "copy_ipcs",
    "copy_pid_ns", "copy_cgroup_ns", "copy_net_ns", "copy_time_ns", "timens_on_fork", "create_user_ns",
    "unshare_userns", "unshare_nsproxy_namespaces", "switch_task_namespaces", "__x64_sys_setns",
    "validate_nsset", "commit_nsset", "free_nsproxy", "ksys_unshare", "put_nsset", "timens_commit",
    "mntns_install", "utsns_install", "ipcns_install", "pidns_install", "cgroupns_install",
    "netns_install", "userns_install", "timens_install",
)


@functools.cache
def notes():
    """kernel-notes/paths.toml, parsed."""
    import tomllib
    with open(PATHS_TOML, "rb") as f:
        return tomllib.load(f)


def source_file(func):
    """The kernel source file a function lives in, per kernel-notes."""
    return notes().get("function", {}).get(func, {}).get("file", "?")


class Hook:
    """How one function is (or is not) probed on this kernel."""

    __slots__ = ("func", "kind", "reason", "attached")

    def __init__(self, func, kind, reason="", attached=False):
        self.func = func
        self.kind = kind              # "fentry", "kprobe" or None
        self.reason = reason          # why not, when kind is None or attaching failed
        self.attached = attached

    def __repr__(self):
        return f"Hook({self.func!r}, {self.kind!r}, reason={self.reason!r}, attached={self.attached})"

    @property
    def programs(self):
        """The BPF programs of this hook: (entry, exit) program names."""
        if self.kind == "fentry":
            return (f"fentry_{self.func}", f"fexit_{self.func}")
        if self.kind == "kprobe":
            return (f"kprobe_{self.func}", f"kretprobe_{self.func}")
        return ()


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
    program of ours is loaded to learn the kernel's errno. That costs ~80 ms,
    so the answer is kept for the rest of this boot.
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
    """Why neither fentry nor kprobes work on this kernel, in one line (kept for the boot: reading
    /proc/config.gz costs 3 ms of every start on the kernels where it is needed)."""
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


# --- decoding a record's steps ------------------------------------------------

def decode_step(step, raw_addresses=False):
    """One struct nstrace_step as a dict (JSON-ready)."""
    from . import events
    from . import flags as fl
    func = FUNCTIONS[step.func] if step.func < len(FUNCTIONS) else f"fn{step.func}"
    what = events.STEP_VALUES.get(step.what, "none")
    out = {"func": func, "file": source_file(func), "kind": events.STEP_KINDS.get(step.kind, "?"),
           "ts_ns": step.ts_ns}
    if what == "flags":
        out["flags"] = fl.decode_flags(step.arg, "unshare")
    elif what in ("nsproxy", "switch"):
        out["nsproxy"] = events.format_id(step.nsproxy_id, raw_addresses)
        out["refs"] = step.refs
        if what == "switch":
            out["old_nsproxy"] = events.format_id(step.arg, raw_addresses)
    elif what == "int" or (what == "ns" and step.ret < 0):
        out["ret"] = step.ret
    if what in ("ns", "ns_arg") and step.inum:
        out["inode"] = step.inum
    out["short"] = _short(out)
    return out


def _short(s):
    if s["kind"] == "enter":
        if "flags" in s:
            from . import flags as fl
            return f"{s['func']}({fl.short(s['flags'])})"
        if "old_nsproxy" in s:
            return f"{s['func']}({s['old_nsproxy']}->{s['nsproxy']})"
        if "inode" in s:
            return f"{s['func']}({s['inode']})"
        return f"{s['func']}()"
    if "ret" in s and s["ret"] < 0:
        return f"={s['ret']}"
    if "inode" in s:
        return f"={s['inode']}"
    if "nsproxy" in s:
        return f"={s['nsproxy']}"
    return ""


def calls(steps):
    """The path as calls in entry order, each with its result: ["copy_utsname(NEWUTS)=4026532177", ...]."""
    out, open_calls = [], {}
    for s in steps:
        if s["kind"] == "enter":
            open_calls.setdefault(s["func"], []).append(len(out))
            out.append(s["short"])
        elif open_calls.get(s["func"]):
            out[open_calls[s["func"]].pop()] += s["short"]
        else:
            out.append(s["func"] + s["short"])  # entered before we attached
    return out
