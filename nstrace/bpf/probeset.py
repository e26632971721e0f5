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
import os

from ..errors import LibbpfError, ProbeError, UsageError
from . import hookplan, libbpf, loader

# The syscall layer (probes/syscalls.bpf.c), attached on every kernel.
SYSCALL_PROGRAMS = (
    "sys_enter_clone", "sys_exit_clone",
    "sys_enter_clone3", "sys_exit_clone3",
    "sys_enter_unshare", "sys_exit_unshare",
    "sys_enter_setns", "sys_exit_setns",
    "task_newtask",
)
# What those tail-call into, in the order of their slots in the map "bodies"
# (probes/syscalls.bpf.c BODY_ENTER, BODY_EXIT): loaded, never attached.
BODY_PROGRAMS = ("sys_enter", "sys_exit")

RINGBUF_BYTES = 4 << 20     # default ring buffer
WAKEUP_BYTES = 256 << 10    # default: wake the reader once this much is unread


def section_of(program):
    """'syscalls:sys_enter_clone', 'task:task_newtask' ... for a syscall-layer program."""
    return {"task_newtask": "task:task_newtask",
            "sched_process_exit": "sched:sched_process_exit"}.get(program, f"syscalls:{program}")


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
        self.object_path = object_path or loader.object_for_kernel()
        self.hooks = []         # probes.Hook per function, once planned
        self.attached = []      # syscall-layer programs attached, in order
        self.obj = None         # the loaded loader.BpfObject
        self.planned = None     # settings() as planned, before a refused hook is dropped

    def programs(self):
        """The syscall-layer programs to attach."""
        # sched_process_exit runs on every exit on the machine: only --pid needs it
        return SYSCALL_PROGRAMS + (("sched_process_exit",) if self.pid else ())

    def plan(self):
        """Choose the kernel-function hooks for this kernel (answered from a per-boot cache)."""
        return hookplan.plan() if self.kernel_path else []

    def settings(self, hooks=None):
        """Everything the loaded object depends on: its .rodata options, map sizes, the programs
        that load. Two probe sets with equal settings can use the same object (see nstrace.bpf.preload)."""
        hooks = self.hooks if hooks is None else hooks
        return {
            "object": self.object_path,
            "rodata": {"trace_all": self.trace_all, "filter_tgid": self.pid or 0,
                       "raw_addresses": self.raw_addresses,
                       "wakeup_bytes": min(self.wakeup_bytes, self.ringbuf_bytes // 4),
                       "kernel_path": any(h.kind for h in hooks)},
            # a map no program of this set uses is shrunk to one entry: its memory is allocated at load
            "max_entries": {"events": self.ringbuf_bytes,
                            **({} if any(h.kind for h in hooks) else {"paths": 1}),
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
        obj = loader.BpfObject(self.object_path)
        obj.set_rodata("id_key", int.from_bytes(os.urandom(8), "little"))  # a new key for every object
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
        mounted = loader.ensure_tracefs()
        try:
            for name in self.programs():
                self.obj.attach(name)
                self.attached.append(name)
        finally:
            if mounted:
                loader.unmount()
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

    def availability(self):
        """Every probe point: layer, hook type, attached or why not."""
        rows = [{"probe": section_of(name), "layer": "syscall",
                 "hook": "raw_tracepoint" if name == "task_newtask" else "tracepoint",
                 "attached": name in self.attached, "reason": ""} for name in self.programs()]
        from ..record import paths  # only doctor and the session header ask: not before the first probe
        rows += [{"probe": h.func, "layer": "function", "file": paths.source_file(h.func),
                  "hook": h.kind, "attached": h.attached, "reason": h.reason, "why": h.why} for h in self.hooks]
        return rows

    def close(self):
        """Detach everything and free the object."""
        if self.obj:
            self.obj.close()
            self.obj = None
