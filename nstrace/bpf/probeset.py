"""The probes one watch needs: which programs of nstrace's BPF object load, with
which ``.rodata`` options and map sizes, and the kernel-function hooks this
kernel allows; loaded, attached, detached.

Apart from the tracer, and importing nothing above the loader, because
nstrace.bpf.preload loads and attaches a ProbeSet in a thread while the command
line is still being imported: every module imported before the first probe
runs is time before `nstrace watch` is live (the tracer's imports, dataclasses
and the record decoder among them; bench: start-up).
"""

import ctypes
import errno
import os

from ..errors import LibbpfError, ProbeError, UsageError
from . import btfcalls, corebtf, hookplan, libbpf, loader, tracefs

# The syscall layer (probes/syscalls.bpf.c), attached on every kernel.
SYSCALL_PROGRAMS = (
    "sys_enter_clone", "sys_exit_clone",
    "sys_enter_clone3", "sys_exit_clone3",
    "sys_enter_unshare", "sys_exit_unshare",
    "sys_enter_setns", "sys_exit_setns",
    "task_newtask",
)
# An exec that moves its caller (6.12+), from sched_prepare_exec (6.10+) to sched_process_exec: attached
# where the kernel has the first (before 6.12 no exec moves anyone, and 6.10 brought it)
EXEC_PROGRAMS = ("sched_prepare_exec", "sched_process_exec")
# Mount namespaces made by open_tree and fsmount (7.x), attached where the kernel has the flags
OPEN_TREE_PROGRAMS = ("sys_enter_open_tree", "sys_exit_open_tree", "sys_enter_open_tree_attr",
                      "sys_exit_open_tree_attr")
FSMOUNT_PROGRAMS = ("sys_enter_fsmount", "sys_exit_fsmount")
RAW_TRACEPOINTS = {"task_newtask": "task:task_newtask", "sched_prepare_exec": "sched:sched_prepare_exec",
                   "sched_process_exec": "sched:sched_process_exec"}
# What those tail-call into, in the order of their slots in the map "bodies"
# (probes/syscalls.bpf.c BODY_ENTER, BODY_EXIT): loaded, never attached.
BODY_PROGRAMS = ("sys_enter", "sys_exit")

RINGBUF_BYTES = 4 << 20     # default ring buffer
WAKEUP_BYTES = 256 << 10    # default: wake the reader once this much is unread


def section_of(program):
    """'syscalls:sys_enter_clone', 'task:task_newtask' ... for a syscall-layer program."""
    return {**RAW_TRACEPOINTS, "sched_process_exit": "sched:sched_process_exit"}.get(program, f"syscalls:{program}")


def check_ringbuf_bytes(n):
    """Raise UsageError unless n bytes is a ring buffer size the kernel takes."""
    if n < 4096 or n & (n - 1) or n > 1 << 30:
        raise UsageError(f"ring buffer size must be a power of two from 4 KiB to 1 GiB, not {n} bytes")


class ProbeSet:
    """nstrace's BPF object set up for one watch. Sizes in bytes.

    pid: trace only this process and its descendants (None: every process);
    kernel_path: add the kernel-function layer where the kernel allows it.
    """

    def __init__(self, *, trace_all=False, pid=None, raw_addresses=False, kernel_path=True,
                 ringbuf_bytes=RINGBUF_BYTES, wakeup_bytes=WAKEUP_BYTES, object_path=None):
        check_ringbuf_bytes(ringbuf_bytes)
        self.trace_all, self.pid, self.raw_addresses = trace_all, pid, raw_addresses
        self.kernel_path, self.ringbuf_bytes, self.wakeup_bytes = kernel_path, ringbuf_bytes, wakeup_bytes
        self._object_path = object_path  # None: the build object_for_kernel() chooses
        self.hooks = []         # kernel.hooks.Hook per function, once planned
        self.attached = []      # syscall-layer programs attached, in order
        self.missing = {}       # optional syscall-layer programs this kernel has no tracepoint for: why
        self.obj = None         # the loaded loader.BpfObject
        self.planned = None     # settings() as planned, before a refused hook is dropped

    @property
    def object_path(self):
        """The object file loaded (or to be): the one given, else the build for this kernel and plan."""
        return self._object(any(h.kind for h in self.hooks))

    def _object(self, functions):
        return self._object_path or loader.object_for_kernel(function_layer=functions)

    def programs(self):
        """The syscall-layer programs to attach."""
        from ..linux import mountns
        # sched_process_exit runs on every exit on the machine: only --pid needs it
        return (SYSCALL_PROGRAMS + EXEC_PROGRAMS + (OPEN_TREE_PROGRAMS if mountns.has_open_tree_namespace() else ())
                + (FSMOUNT_PROGRAMS if mountns.has_fsmount_namespace() else ())
                + (("sched_process_exit",) if self.pid else ()))

    def plan(self):
        """Choose the kernel-function hooks for this kernel (answered from a per-boot cache)."""
        return hookplan.plan() if self.kernel_path else []

    def settings(self, hooks=None):
        """Everything the loaded object depends on: its .rodata options, map sizes, the programs
        that load. Two probe sets with equal settings can use the same object (see nstrace.bpf.preload)."""
        hooks = self.hooks if hooks is None else hooks
        functions = any(h.kind for h in hooks)
        path = self._object(functions)
        # a map no program of this set uses is shrunk to one entry: its memory is allocated at load
        # (the syscall layer's builds have no function-layer maps to shrink)
        unused = {}
        if not functions:
            unused = {"paths": 1} if path in loader.SYSCALLS_OBJECTS else \
                {"paths": 1, "births": 1, "dying": 1, "user_ns_cred": 1}
        return {
            "object": path,
            "rodata": {"trace_all": self.trace_all, "filter_tgid": self.pid or 0,
                       "raw_addresses": self.raw_addresses,
                       "wakeup_bytes": min(self.wakeup_bytes, self.ringbuf_bytes // 4),
                       "kernel_path": functions},
            "max_entries": {"events": self.ringbuf_bytes, **unused,
                            **({} if self.pid else {"tracked": 1})},
            "autoload": set(self.programs()) | set(BODY_PROGRAMS) | {p for h in hooks for p in h.programs},
        }

    # --- load -----------------------------------------------------------------

    def load(self, loading=None):
        """Plan the hooks, open and load; loading() is called as each load begins.

        A program the kernel refuses fails the whole load: its hook becomes a
        kprobe where it was fentry and kprobes can take it, else is dropped
        (with the reason), and the object is loaded again, at most twice per hook.
        """
        try:
            return self._load(loading)
        finally:
            corebtf.forget()  # the kernel's raw BTF, if a boot's first start walked it: megabytes

    def _load(self, loading):
        self.hooks = self.plan()
        self.planned = self.settings()
        for _ in range(2 * len(self.hooks) + 1):
            obj = self.obj = self._open()
            if loading:
                loading()
            try:
                obj.load()
            except LibbpfError as err:
                culprit = self._refused_hook()
                if not culprit:
                    raise
                refusal = f"{culprit.kind} program refused at load ({err.errno and os.strerror(err.errno)})"
                if culprit.kind == "fentry" and hookplan.kprobe_can_take(culprit.func):
                    culprit.kind, culprit.why = "kprobe", f"kprobe: the {refusal}"
                else:
                    culprit.kind, culprit.reason = None, refusal
                obj.close()
                continue
            for slot, name in enumerate(BODY_PROGRAMS):
                obj.map_update("bodies", ctypes.c_uint32(slot), ctypes.c_uint32(obj.program_fd(name)))
            return self

    def _open(self):
        settings = self.settings()
        obj = loader.BpfObject(settings["object"])
        obj.set_rodata("id_key", int.from_bytes(os.urandom(8), "little"))  # a new key for every object
        btfcalls.write_calls(obj)
        for name, value in settings["rodata"].items():
            obj.set_rodata(name, value)
        for name, entries in settings["max_entries"].items():
            obj.set_max_entries(name, entries)
        for name in obj.program_names():
            obj.set_autoload(name, name in settings["autoload"])
        return obj

    def _refused_hook(self):
        for line in libbpf.last_messages(40):
            _, quote, rest = line.partition("prog '")
            name = rest.partition("'")[0] if quote else ""
            for hook in self.hooks:
                if name and name in hook.programs:
                    return hook
        return None

    # --- attach -----------------------------------------------------------------

    def attach(self):
        """Attach the syscall layer (raising ProbeError naming a refused probe), then each
        kernel-function hook (a refused one is only marked, with the reason)."""
        mounted = tracefs.ensure_tracefs()
        try:
            for name in self.programs():
                try:
                    self.obj.attach(name)
                except ProbeError as err:
                    if name not in EXEC_PROGRAMS or err.errno != errno.ENOENT:
                        raise
                    # sched_prepare_exec came in 6.10, exec_task_namespaces in 6.12: no exec moves here
                    self.missing[name] = "no such tracepoint on this kernel (6.10+); no exec moves a task before 6.12"
                    continue
                self.attached.append(name)
        finally:
            if mounted:
                tracefs.unmount()
        for hook in self.hooks:
            self._attach_hook(hook)

    def _attach_hook(self, hook):
        if not hook.kind:
            return
        try:
            for prog in hook.programs:
                self.obj.attach(prog)
            hook.attached = True
        except ProbeError as err:
            for prog in hook.programs:
                self.obj.detach(prog)
            hook.reason = str(err)

    def follow(self, pid):
        """Trace process pid and the descendants it has from now on (the object's table of them)."""
        self.obj.map_update("tracked", ctypes.c_uint32(pid), ctypes.c_uint8(1))

    def unfollow_all(self):
        """Empty that table: no record begins after this. Returns the pids it held (processes that
        were alive: an exiting one leaves it, probes/syscalls.bpf.c sched_process_exit)."""
        pids = []
        for _ in range(4):  # a followed process may fork while we empty it: its child comes in after the listing
            found = [key.value for key in self.obj.map_keys("tracked", ctypes.c_uint32)]
            for pid in found:
                self.obj.map_delete("tracked", ctypes.c_uint32(pid))
            pids += found
            if not found:
                break
        return pids

    def availability(self):
        """Every probe point: layer, hook type, attached or why not."""
        rows = [{"probe": section_of(name), "layer": "syscall",
                 "hook": "raw_tracepoint" if name in RAW_TRACEPOINTS else "tracepoint",
                 "attached": name in self.attached, "reason": self.missing.get(name, "")}
                for name in self.programs()]
        from ..kernel import (
            documented,  # only doctor and the session header ask: not before the first probe
        )
        rows += [{"probe": h.func, "layer": "function", "file": documented.source_file(h.func),
                  "hook": h.kind, "attached": h.attached, "reason": h.reason, "why": h.why} for h in self.hooks]
        return rows

    def close(self):
        """Detach everything and free the object."""
        if self.obj:
            self.obj.close()
            self.obj = None
