"""Which records a user asked to see: --comm, --op, --type (user space; --pid is filtered in the kernel).

Shared by live tracing (nstrace/trace/tracer.py) and replay (nstrace/record/session.py).
"""

from ..errors import UsageError
from ..linux import comm
from ..linux import flags as fl


def validate(comms=(), ops=(), types=()):
    """Raise UsageError for a filter value no record could ever match."""
    for name in comms:
        raw = comm.comm_bytes(name)
        if raw is None:
            raise UsageError(f"--comm {name!r}: not a command name as nstrace shows it (a control character, "
                             f"a backslash or a byte that is not UTF-8 is written as events show it, e.g. \\x1b)")
        if not raw or len(raw) > comm.COMM_BYTES:
            raise UsageError(f"--comm {name!r}: a command name has 1 to {comm.COMM_BYTES} bytes "
                             f"(the kernel's TASK_COMM_LEN less its NUL): this one could never match")
    for op in ops:
        if op not in fl.OPS:
            raise UsageError(f"unknown operation {op!r}: valid are {', '.join(fl.OPS)}")
    for t in types:
        if t not in fl.NS_TYPES:
            raise UsageError(f"unknown namespace type {t!r}: valid are {', '.join(fl.NS_TYPES)}")


def wanted(rec, options):
    """True if rec passes the comm, op and type filters of `options` (anything with .comms, .ops, .types)."""
    o = options
    if o.ops and rec.op not in o.ops:
        return False
    if o.comms and rec.comm not in o.comms:
        return False
    if o.types:
        from .events import OP_FLAGS
        touched = set() if rec.op in OP_FLAGS else set(fl.requested_types(rec.raw_flags, rec.op))
        touched |= {fl.ns_type_of_entry(e) for e in rec.changed}
        if rec.target and rec.target.get("type"):
            touched.add(rec.target["type"])
        if rec.ns:  # open_tree, fsmount, free: the namespace made or freed
            touched.add(rec.ns["type"])
        if not touched & set(o.types):
            return False
    return True
