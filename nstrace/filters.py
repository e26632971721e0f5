"""Which records a user asked to see: --comm, --op, --type (user space; --pid is filtered in the kernel).

Shared by live tracing (nstrace/tracer.py) and replay (nstrace/session.py).
"""

from . import flags as fl


def wanted(rec, options):
    """True if rec passes the options' comm, op and type filters."""
    o = options
    if o.ops and rec.op not in o.ops:
        return False
    if o.comms and rec.comm not in o.comms:
        return False
    if o.types:
        touched = set(fl.requested_types(rec.raw_flags, rec.op))
        touched |= {fl.ns_type_of_entry(e) for e in rec.changed}
        if rec.target and rec.target.get("type"):
            touched.add(rec.target["type"])
        if not touched & set(o.types):
            return False
    return True
