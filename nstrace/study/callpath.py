"""A record's kernel path as a learner reads it: each step's source line in the recorded kernel's
version, whether a copy_*() built its namespace or took a reference to the caller's, and the steps
folded into calls nested by depth, each with its arguments, its result, its duration and why it did
what it did.
"""

import dataclasses
import errno as errno_mod

from ..kernel import documented, sourcelines
from ..kernel import flags as fl
from ..kernel.functions import ENTRY_ONLY, NS_RETURNED

#
# What decode_step makes is one step per probe hit. Below: each step's source line in the
# recorded kernel's version (kernel.sourcelines), whether a copy_*() built its namespace or only
# took a reference to the caller's (`created`), and the steps folded into calls nested by
# depth, each with its arguments, its result and its duration.

# The /proc/<pid>/ns entry each copy_*() fills: create_new_namespaces() stores copy_pid_ns()'s
# result in pid_ns_for_children and copy_time_ns()'s in time_ns_for_children (kernel/nsproxy.c,
# 5.10 to 7.2).
COPY_ENTRY = {"copy_mnt_ns": "mnt", "copy_utsname": "uts", "copy_ipcs": "ipc", "copy_pid_ns": "pid_for_children",
              "copy_cgroup_ns": "cgroup", "copy_net_ns": "net", "copy_time_ns": "time_for_children"}

# Each type's proc_ns_operations->install(), by the namespace type it joins.
INSTALL_TYPE = {"mntns_install": "mnt", "utsns_install": "uts", "ipcns_install": "ipc", "pidns_install": "pid",
                "cgroupns_install": "cgroup", "netns_install": "net", "userns_install": "user", "timens_install": "time"}


def annotate(rec, release=None):
    """Give each step of rec.kernel_path its `line`, where the function is defined in the kernel of
    `release` (default: the running kernel), and each copy_*() exit `created`. A line taken from
    another version (the kernel's series is not covered) names it in `line_from`. Each call's first
    step (its entry, or its exit when it was entered before the probes were attached) gets what the
    function does and where kernel-notes explain it (explain). In place; steps that already carry
    them keep theirs."""
    release = release or sourcelines.running_release()
    before = rec.ns_before or {}
    entered = set()
    for s in rec.kernel_path:
        if s["kind"] == "enter" or s["func"] not in entered:
            explain(s)
        if s["kind"] == "enter":
            entered.add(s["func"])
        if "line" not in s:
            spot = sourcelines.where(s["func"], release)
            s["line"] = spot.line if spot else None
            if spot:
                s["file"] = spot.file  # the file of that version (7.2 moved timens_commit)
                if not spot.exact:
                    s["line_from"] = spot.version
        entry = COPY_ENTRY.get(s["func"])
        if entry and s["kind"] == "exit" and "created" not in s and s.get("inode") and before.get(entry):
            # The caller holds its own namespace through the whole call, so its inode cannot be
            # handed to a new one meanwhile: a different inode is a new namespace (the 6.18+ ns_id
            # would say the same, and the steps do not carry it).
            s["created"] = s["inode"] != before[entry]
    return rec


NOTES_DIR = "kernel-notes/"


def explain(step):
    """Add to a step `does`, what its function does, and `notes`, the kernel-notes paragraph of the
    concept it teaches ("kernel-notes/pid.md#pid-for-children"), where paths.toml has them."""
    if "does" in step:
        return
    text, pointer = documented.does(step["func"]), documented.notes_pointer(step["func"])
    if text:
        step["does"] = text
    if pointer:
        step["notes"] = NOTES_DIR + pointer


def explanation(func):
    """(does, notes pointer, gist) of a function, as --explain prints them under its row; "" where
    paths.toml has none."""
    pointer = documented.notes_pointer(func)
    return documented.does(func), (NOTES_DIR + pointer if pointer else ""), documented.gist(pointer)


def explain_lines(func, said):
    """What --explain prints under a step of func: "does: ..." and "notes: FILE#ANCHOR: gist". A
    paragraph already in `said` (a set, updated) is named again without its gist."""
    text, pointer, summary = explanation(func)
    lines = [f"does: {text}"] if text else []
    if pointer:
        lines.append(f"notes: {pointer}" + (f": {summary}" if summary and pointer not in said else " (above)"))
        said.add(pointer)
    return lines


@dataclasses.dataclass
class Call:
    """One function call of the path: its entry and exit steps and the calls made inside it."""

    func: str
    depth: int
    enter: dict | None = None        # None: entered before the probes were attached
    exit: dict | None = None         # None: no exit seen (the record filled up, or it never returned),
                                     # or none hooked (ENTRY_ONLY)
    calls: list = dataclasses.field(default_factory=list)

    @property
    def duration_us(self):
        if self.enter and self.exit and self.enter.get("ts_ns") and self.exit.get("ts_ns"):
            return (self.exit["ts_ns"] - self.enter["ts_ns"]) / 1e3
        return None

    @property
    def step(self):
        return self.enter or self.exit

    def walk(self):
        yield self
        for c in self.calls:
            yield from c.walk()


def tree(steps):
    """The steps as calls nested by depth: [Call] of the outermost calls, in order."""
    top, stack = [], []
    for s in steps:
        if s["kind"] == "enter":
            call = Call(s["func"], len(stack), enter=s)
            (stack[-1].calls if stack else top).append(call)
            if s["func"] not in ENTRY_ONLY:  # no exit will come to close it: a leaf
                stack.append(call)
            continue
        if any(c.func == s["func"] for c in stack):
            while stack[-1].func != s["func"]:
                stack.pop()  # its callee's exit never came: the record filled up
            stack.pop().exit = s
        else:  # returned from a call entered before the probes were attached
            (stack[-1].calls if stack else top).append(Call(s["func"], len(stack), exit=s))
    return top


def _ns(entry_or_type, inode):
    return f"{entry_or_type.removesuffix('_for_children')}:[{inode}]"


def _flags(step):
    return fl.short(step["flags"]) if step.get("flags") else "0"


def counts(step):
    """The reference count a step carries, as text: "count 1" (the nsproxy or namespace it passes or
    returns: a copy_* that made its namespace returns it at 1, one that shares the caller's at 2 or
    more, the copy's own reference included). The old nsproxy's count is the switch's (switch_summary)."""
    return f"count {step['refs']}" if isinstance(step.get("refs"), int) else ""


def arguments(call, rec=None):
    """The call's arguments as text, from what its entry step (and, for setns, the record) holds."""
    s = call.enter
    if s is None:
        return "?"
    if call.func == "__x64_sys_setns" and rec is not None:
        return setns_arguments(rec)
    if "flags" in s:
        return _flags(s)
    if "old_nsproxy" in s:
        return f"current, nsproxy {s['old_nsproxy']} -> {s['nsproxy']}"
    if call.func in INSTALL_TYPE and s.get("inode"):
        return f"nsset, {_ns(INSTALL_TYPE[call.func], s['inode'])}"
    if "nsproxy" in s:
        return f"nsproxy {s['nsproxy']}"
    return ""


def setns_arguments(rec):
    """setns(fd, nstype) as the kernel got them: the fd resolved to what it is, and the nstype."""
    target = rec.target or {}
    kind = target.get("kind")
    if kind == "nsfs":
        fd = f"fd {target.get('fd')} = {target.get('type')}:[{target.get('inode')}]"
    elif kind == "pidfd":
        fd = f"fd {target.get('fd')} = pidfd of pid {target.get('pid')}"
    else:
        fd = f"fd {target.get('fd')} ({kind or '?'})"
    nstype = fl.short(fl.decode_flags(rec.raw_flags, "setns")) if rec.raw_flags else "0 (any type)"
    return f"{fd}, nstype {nstype}"


def result(call, rec=None):
    """What the call returned, as text: "0", "-22 EINVAL", "uts:[4026532140] new", "nsproxy 60051401" ..."""
    s = call.exit
    if s is None:
        return "(entry only)" if call.func in ENTRY_ONLY else "(no exit seen)"
    if "ret" in s:
        ret = s["ret"]
        return str(ret) if ret >= 0 else f"{ret} {errno_mod.errorcode.get(-ret, '')}".rstrip()
    entry = COPY_ENTRY.get(call.func) or NS_RETURNED.get(call.func)
    if entry and s.get("inode"):
        mark = {True: " new", False: " shared"}.get(s.get("created"), "")
        return _ns(entry, s["inode"]) + mark
    if "nsproxy" in s:
        return f"nsproxy {s['nsproxy']}"
    return "void"


def why(call, rec=None, hooks=None):
    """One line saying why a call did what a learner may not expect, or "". hooks ({func: Hook}), where
    known, tell a function that did not run from one nstrace could not see."""
    names = set(call.enter.get("flags", ())) if call.enter else set()
    new_flags = names & {n for n in fl.NS_TYPES.values()} - {"CLONE_NEWUSER"}
    if call.func == "copy_namespaces" and call.exit and call.exit.get("ret") == 0 and \
            not any(c.func == "create_new_namespaces" for c in call.calls):
        # kernel/nsproxy.c copy_namespaces(), 5.10 to 7.2 (6.12+ also takes the fast path for CLONE_VM)
        return ("no CLONE_NEW* flag: the child shares its parent's nsproxy (get_nsproxy: one more "
                "reference) and create_new_namespaces is not called")
    if call.func == "create_new_namespaces" and not new_flags and rec is not None and rec.op == "setns":
        # kernel/nsproxy.c prepare_nsset(), 5.10 to 7.2
        return ("prepare_nsset copies the caller's nsproxy with flags 0: every copy_* only takes a "
                "reference; the install below edits this copy, which replaces the caller's at commit")
    if call.func == "create_new_namespaces" and not new_flags and rec is not None and rec.op in ("clone", "clone3"):
        # kernel/nsproxy.c copy_namespaces(): time_ns_for_children != time_ns and no CLONE_VM
        return ("no CLONE_NEW* flag, but the parent unshared a time namespace: the child needs an "
                "nsproxy of its own to enter it (timens_on_fork)")
    if call.func == "unshare_userns" and "CLONE_NEWUSER" not in names and call.exit and call.exit.get("ret") == 0:
        return "no CLONE_NEWUSER: returns at once (kernel/user_namespace.c)"
    if call.func == "switch_task_namespaces":
        return switch_summary(call, hooks)
    if call.func in COPY_ENTRY and call.exit and call.exit.get("created") is False and call.exit.get("refs") == 1:
        # include/linux/ns_common.h, 7.2: __ns_ref_get()/__ns_ref_put() do nothing for is_ns_init_id()
        return ("an initial namespace: the kernel keeps its count fixed at 1, so sharing it "
                "takes no reference")
    return ""


# What frees an nsproxy when put_nsproxy() drops its count to 0: free_nsproxy (5.10 to 6.18),
# nsproxy_free by way of deactivate_nsproxy (7.2: kernel/nsproxy.c, include/linux/nsproxy.h).
FREE_NSPROXY = ("free_nsproxy", "deactivate_nsproxy", "nsproxy_free")


def switch_summary(call, hooks=None):
    """The nsproxy switch: old -> new, the counts, and whether the old one was freed. put_nsproxy()
    frees the old nsproxy when its count drops to 0 (include/linux/nsproxy.h, 5.10 to 7.2): the
    count it had before the switch, where the step carries it, decides; else the free seen or not."""
    s = call.enter or {}
    old, new = s.get("old_nsproxy"), s.get("nsproxy")
    freed = any(c.func in FREE_NSPROXY for c in call.calls)
    old_refs = s.get("old_refs")
    hooked = [f for f in FREE_NSPROXY if hooks and hooks.get(f) is not None and hooks[f].attached]
    if isinstance(old_refs, int):
        # Every fork without CLONE_NEW* shares its parent's nsproxy (kernel/nsproxy.c copy_namespaces,
        # 5.10 to 7.2): the other references are every task that shares it, as all the system's
        # tasks share init's until one of them makes a new one.
        fate = ("freed: its count was 1, the caller's own reference" if old_refs == 1 else
                f"kept: its count was {old_refs}, the caller's reference and {old_refs - 1} more: every other "
                "task that shares it (a fork without CLONE_NEW* shares its parent's, so init's is shared by "
                "every task that never made a new one)")
    elif freed:
        fate = "freed: the caller held its last reference (put_nsproxy dropped the count to 0)"
    elif hooked:
        fate = f"kept: {hooked[0]} did not run, so others still hold it (every other task that shares it)"
    elif hooks is not None:
        fate = "freed or kept: no function that frees an nsproxy is probed here"
    else:
        fate = "kept (no free_nsproxy in the path)"
    refs = counts(s)
    old_count = f" (count {old_refs})" if isinstance(old_refs, int) else ""
    return f"nsproxy {old}{old_count} -> {new}" + (f" ({refs})" if refs else "") + f"; old {old} {fate}"


def source_text(step):
    """"kernel/nsproxy.c:151" for a step, labelled "(as in 7.2.13)" when the line is another
    version's (the recorded kernel's series is not in nstrace/kernel/source-lines.toml)."""
    if not step.get("line"):
        return step.get("file", "?")
    return f"{step.get('file', '?')}:{step['line']}" + (f" (as in {step['line_from']})" if step.get("line_from") else "")


def path_rows(rec):
    """The record's path as rows for a table or a page: (depth, call text, why, source, µs, call)."""
    rows = []
    for top in tree(rec.kernel_path):
        for c in top.walk():
            refs = counts(c.exit or {})
            text = f"{c.func}({arguments(c, rec)}) = {result(c, rec)}" + (f" ({refs})" if refs and
                                                                           c.func != "switch_task_namespaces" else "")
            rows.append((c.depth, text, why(c, rec), source_text(c.step), c.duration_us, c))
    return rows
