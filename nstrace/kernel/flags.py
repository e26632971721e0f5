"""CLONE_* and UNSHARE_* flags and namespace types: names, values, parsing and decoding.

Each operation reads its flags in its own table (flag_table()): clone3, fork and vfork the CLONE_*
flags, clone() those of its 32 bits, setns() the CLONE_NEW* of its nstype; unshare its own UNSHARE_* flags first, which take bits of the clone flags over (7.1's
UNSHARE_EMPTY_MNTNS is CLONE_PARENT_SETTID's 0x00100000), then the clone flags; open_tree and fsmount
theirs (OP_FLAGS). The flags, the namespace types and the order of a snapshot's /proc entries are rows of
probes/uapi.def and probes/record.def (nstrace/kernel/defs.py), the tables the BPF side is compiled
from. The low byte of clone()'s flags (CSIGNAL) is the exit signal, which is why CLONE_NEWTIME (0x80,
inside that byte) only works with unshare() and clone3().
"""

import functools
import re
import signal

from ..errors import UsageError
from . import defs

CSIGNAL = int(dict(defs.rows("uapi.def", "NSTRACE_CLONE_MASK"))["CSIGNAL"], 0)

CLONE_FLAGS = {name: int(value, 0) for name, value in defs.rows("uapi.def", "NSTRACE_CLONE_FLAG")}
UNSHARE_FLAGS = {name: int(value, 0) for name, value in defs.rows("uapi.def", "NSTRACE_UNSHARE_FLAG")}
# clone()'s table: the clone flags of its 32 bits; the wider ones are clone3()'s, and clone() drops
# them (lower_32_bits(clone_flags) in its kernel_clone_args, kernel/fork.c 7.2.13)
CLONE_TABLE = {name: bit for name, bit in CLONE_FLAGS.items() if bit < 1 << 32}
# unshare's table: its own flags, then every flag of clone()'s whose bit they leave free (the wider ones
# check_unshare_flags() refuses, kernel/fork.c 7.2.13)
UNSHARE_TABLE = UNSHARE_FLAGS | {name: bit for name, bit in CLONE_TABLE.items()
                                 if not any(bit & own for own in UNSHARE_FLAGS.values())}

# Namespace types: the /proc/<pid>/ns entry name and the flag that creates one.
NS_TYPES = dict(defs.rows("uapi.def", "NSTRACE_NS_TYPE"))
NS_FLAG_VALUES = {CLONE_FLAGS[flag]: ns for ns, flag in NS_TYPES.items()}
CLONE_NEW_MASK = sum(CLONE_FLAGS[f] for f in NS_TYPES.values())
# setns()'s nstype: the CLONE_NEW* flags alone (check_setns_flags(), kernel/nsproxy.c 7.2.13), in clone's order
SETNS_TABLE = {name: bit for name, bit in CLONE_FLAGS.items() if name in NS_TYPES.values()}
# Every flag that makes a namespace, by name: CLONE_NEW* and the 7.1+ EMPTY_MNTNS of clone3 and unshare
_NS_OF_FLAG = {flag: ns for ns, flag in NS_TYPES.items()} | {flag: ns for ns, flag in defs.rows("uapi.def", "NSTRACE_NS_ALSO")}

# The entries of /proc/<pid>/ns, in the order of enum nstrace_ns_slot (probes/record.def).
NS_ENTRIES = tuple(name.lower() for (name,) in defs.rows("record.def", "NSTRACE_NS_SLOT"))

# Flags of the ops whose flags are not CLONE_* (open_tree, fsmount), by op
_OP_FLAG_ROWS = defs.rows("uapi.def", "NSTRACE_OP_FLAG")
OP_FLAGS = {op: {name: int(value, 0) for o, name, value in _OP_FLAG_ROWS if o == op} for op, *_ in _OP_FLAG_ROWS}

# the operations that make a child: their records carry it (child_pid, exit_signal, ns_after is its)
CHILD_OPS = ("clone", "clone3", "fork", "vfork")


def ns_type_of_entry(entry):
    """The namespace type a /proc ns entry belongs to: pid_for_children -> pid."""
    return entry.removesuffix("_for_children")


def flag_table(op):
    """{name: bit} of the flags op takes, in the order a record names them."""
    if op == "unshare":
        return UNSHARE_TABLE
    if op == "clone":
        return CLONE_TABLE
    if op == "setns":
        return SETNS_TABLE
    return OP_FLAGS.get(op, CLONE_FLAGS)


@functools.cache  # on the way of every record a filter or created() asks about: do not change what it returns
def ns_flags(op):
    """{bit: namespace type} of the flags in op's table that make a namespace (clone(): none in its
    signal byte, so not CLONE_NEWTIME)."""
    return {bit: _NS_OF_FLAG[name] for name, bit in flag_table(op).items()
            if name in _NS_OF_FLAG and not (op == "clone" and bit & CSIGNAL)}


def empty_mount_ns(value, op):
    """True if op's flags ask for an empty mount namespace (7.1+): a copy of the root mount alone,
    nothing mounted on it (fs/namespace.c copy_mnt_ns(), 7.2.13)."""
    return any(name.endswith("_EMPTY_MNTNS") for name in decode_flags(value, op))


def parse_flags(text, op="clone3"):
    """Parse 'NEWPID|NEWNS', 'clone_newuts,newipc' or '0x20000' into an int, in op's table.

    Names are case-insensitive, with or without their prefix (CLONE_, or unshare's UNSHARE_ first:
    'EMPTY_MNTNS' is UNSHARE_EMPTY_MNTNS for unshare and CLONE_EMPTY_MNTNS for clone3), separated
    by '|' or ','. Raises UsageError listing the valid names on anything else.
    """
    table = flag_table(op)
    value = 0
    parts = [p.strip() for p in re.split(r"[|,]", text or "")]
    if not any(parts):
        raise UsageError("no flags given: " + valid_names_hint())
    for part in parts:
        if not part:
            raise UsageError(f"empty flag name in {text!r}")
        if re.fullmatch(r"0[xX][0-9a-fA-F]+|[0-9]+", part):
            number = int(part, 16) if part[:2].lower() == "0x" else int(part)
            if number >= 1 << 64:
                raise UsageError(f"flag value {part} does not fit in 64 bits")
            value |= number
            continue
        name = next((n for n in (part.upper(), *(p + part.upper() for p in _PREFIXES)) if n in table), None)
        if name is None:
            raise UsageError(f"unknown flag {part!r}: {valid_names_hint(op)}")
        value |= table[name]
    return value


_PREFIXES = ("UNSHARE_", "CLONE_")  # unshare's own names before the clone flags of the same name


def valid_names_hint(op="clone3"):
    return "valid names are " + ", ".join(short([n]) for n in flag_table(op))


def decode_flags(value, op):
    """Names of the flags set in value, with any unknown bits as one hex string, in op's table
    (flag_table(): unshare's 0x00100000 is UNSHARE_EMPTY_MNTNS, clone's CLONE_PARENT_SETTID).

    For clone() the low byte is the exit signal, not flags: it is left out
    (see :func:`exit_signal_name`).
    """
    table = flag_table(op)
    if op == "clone":
        value &= ~CSIGNAL
    names = []
    for name, bit in table.items():
        if value & bit:
            names.append(name)
            value &= ~bit
    if value:
        names.append(hex(value))
    return names


def short(names):
    """'NEWPID|NEWNS' from ['CLONE_NEWPID', 'CLONE_NEWNS'] (table form); unshare's own flags keep
    their UNSHARE_, so that they never read as the clone flag of their bit."""
    return "|".join(n.removeprefix("CLONE_") for n in names) or "0"


def encode_flags(names, op):
    """The inverse of decode_flags for a list of names (hex strings allowed)."""
    table = flag_table(op)
    value = 0
    for name in names:
        value |= int(name, 16) if name.startswith("0x") else table[name]
    return value


def exit_signal_name(signo):
    if not signo:
        return None
    try:
        return signal.Signals(signo).name
    except ValueError:
        return str(signo)


def requested_types(value, op):
    """Namespace types an operation's flags ask for, in NS_TYPES order: clone()'s low byte is a
    signal, not NEWTIME; unshare's UNSHARE_EMPTY_MNTNS and clone3's CLONE_EMPTY_MNTNS ask for mnt."""
    asked = {ns for bit, ns in ns_flags(op).items() if value & bit}
    return [ns for ns in NS_TYPES if ns in asked]


def ns_types_in(value):
    """Namespace types whose CLONE_NEW* bit is set in value, in NS_TYPES order."""
    return [ns for ns, flag in NS_TYPES.items() if value & CLONE_FLAGS[flag]]


def parse_ns_types(text):
    """Parse 'net,uts' (or 'NEWNET|uts') into a list of namespace type names."""
    out = []
    for part in re.split(r"[|,]", text or ""):
        part = part.strip().lower().removeprefix("clone_")
        if not part:
            continue
        if part.startswith("new") and part != "net":
            match = [ns for ns, flag in NS_TYPES.items() if flag == "CLONE_" + part.upper()]
            part = match[0] if match else part
        if part not in NS_TYPES:
            raise UsageError(f"unknown namespace type {part!r}: valid types are {', '.join(NS_TYPES)}")
        out.append(part)
    if not out:
        raise UsageError(f"no namespace type given: valid types are {', '.join(NS_TYPES)}")
    return out
