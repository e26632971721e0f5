"""A probe point as a record, a session file or `nstrace doctor` describes it.

Hook: one kernel function of the function layer, how this kernel lets it be probed (fentry/fexit,
kprobe/kretprobe or not at all) and why not. nstrace.bpf.hookplan chooses them for the running kernel;
a session file keeps them, so a record is judged later as it was when it was made.
"""


class Hook:
    """How one function is (or is not) probed on this kernel."""

    __slots__ = ("func", "kind", "reason", "attached", "why")

    def __init__(self, func, kind, reason="", attached=False, why=""):
        self.func = func
        self.kind = kind              # "fentry", "kprobe" or None
        self.reason = reason          # why not, when kind is None or attaching failed
        self.attached = attached
        self.why = why                # why this kind of hook and not the other

    def __repr__(self):
        return (f"Hook({self.func!r}, {self.kind!r}, reason={self.reason!r}, attached={self.attached}, "
                f"why={self.why!r})")

    @property
    def programs(self):
        """The BPF programs of this hook: (entry, exit) program names; entry alone for the functions
        hooked on entry only (functions.ENTRY_ONLY)."""
        from .functions import ENTRY_ONLY
        if self.kind == "fentry":
            progs = (f"fentry_{self.func}", f"fexit_{self.func}")
        elif self.kind == "kprobe":
            progs = (f"kprobe_{self.func}", f"kretprobe_{self.func}")
        else:
            return ()
        return progs[:1] if self.func in ENTRY_ONLY else progs
