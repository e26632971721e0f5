"""Which records a user asked to see: --comm, --op, --type, --container, --ns (user space; --pid is
filtered in the kernel). native/batch.c's wanted() is the same filter in C: tests/test_batch.py and
tests/test_json_output.py hold the two to each other.

Shared by live tracing (nstrace/trace/tracer.py) and replay (nstrace/record/session.py).
"""

import re

from ..errors import UsageError
from ..linux import comm, containers
from ..linux import flags as fl

MAX_NS = 16  # native/batch.c JL_MAX_NS
_NS = re.compile(r"^(?P<type>[a-z]+):\[?(?P<inode>\d+)\]?$")


def parse_ns(value):
    """--ns TYPE:INODE (also lsns's TYPE:[INODE]) as ("net", 4026531840, None), or an ns_id as
    (None, None, 12345); UsageError for anything else."""
    text = value.strip()
    if text.isdigit() and int(text):
        return (None, None, int(text))
    m = _NS.match(text)
    if not m or m.group("type") not in fl.NS_TYPES or not int(m.group("inode")):
        raise UsageError(f"--ns {value!r}: a namespace is TYPE:INODE (one of {', '.join(fl.NS_TYPES)}, "
                         f"e.g. net:4026531840, as lsns and /proc/PID/ns show it) or its ns_id")
    return (m.group("type"), int(m.group("inode")), None)


def validate(comms=(), ops=(), types=(), namespaces=()):
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
    if len(namespaces) > MAX_NS:
        raise UsageError(f"at most {MAX_NS} --ns values, not {len(namespaces)}")


def container_wanted(rec, wanted):
    """--container: the caller's container, or a setns target's, is one of `wanted` (an id prefix or a name)."""
    target = (rec.target or {}).get("container")
    return any(containers.matches(rec.container, w) or containers.matches(target, w) for w in wanted)


def involves(rec, namespaces):
    """--ns: one of `namespaces` (parse_ns() values) is the record's, before, after, as the target, or
    as the namespace it made or freed (open_tree, fsmount, free: `ns`)."""
    target = rec.target if rec.target and rec.target.get("kind") == "nsfs" else rec.ns
    for ns_type, inode, ns_id in namespaces:
        for inodes, ids in ((rec.ns_before, rec.ns_id_before), (rec.ns_after, rec.ns_id_after)):
            for entry, value in (inodes or {}).items():
                if ns_id is None:
                    if value == inode and fl.ns_type_of_entry(entry) == ns_type:
                        return True
                elif ids and ids.get(entry) == ns_id:
                    return True
        if target and ((ns_id is None and target.get("type") == ns_type and target.get("inode") == inode)
                       or (ns_id is not None and target.get("ns_id") == ns_id)):
            return True
    return False


def wanted(rec, options):
    """True if rec passes the filters of `options` (anything with .comms, .ops, .types, and
    .containers and .namespaces where it has them)."""
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
    if getattr(o, "containers", ()) and not container_wanted(rec, o.containers):
        return False
    if getattr(o, "namespaces", ()) and not involves(rec, o.namespaces):
        return False
    return True
