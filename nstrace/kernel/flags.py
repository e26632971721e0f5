"""CLONE_* flags and namespace types: names, values, parsing and decoding.

The flags, the namespace types and the order of a snapshot's /proc entries are rows of
probes/uapi.def and probes/record.def (nstrace/kernel/defs.py), the tables the BPF side is compiled
from. The low byte of clone()'s flags (CSIGNAL) is the exit signal, which is why CLONE_NEWTIME (0x80,
inside that byte) only works with unshare() and clone3().
"""

import re
import signal

from ..errors import UsageError
from . import defs

CSIGNAL = int(dict(defs.rows("uapi.def", "NSTRACE_CLONE_MASK"))["CSIGNAL"], 0)

CLONE_FLAGS = {name: int(value, 0) for name, value in defs.rows("uapi.def", "NSTRACE_CLONE_FLAG")}

# Namespace types: the /proc/<pid>/ns entry name and the flag that creates one.
NS_TYPES = dict(defs.rows("uapi.def", "NSTRACE_NS_TYPE"))
NS_FLAG_VALUES = {CLONE_FLAGS[flag]: ns for ns, flag in NS_TYPES.items()}
CLONE_NEW_MASK = sum(CLONE_FLAGS[f] for f in NS_TYPES.values())

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


def parse_flags(text):
    """Parse 'NEWPID|NEWNS', 'clone_newuts,newipc' or '0x20000' into an int.

    Names are case-insensitive, with or without the CLONE_ prefix, separated
    by '|' or ','. Raises UsageError listing the valid names on anything else.
    """
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
        name = part.upper()
        if not name.startswith("CLONE_"):
            name = "CLONE_" + name
        if name not in CLONE_FLAGS:
            raise UsageError(f"unknown flag {part!r}: {valid_names_hint()}")
        value |= CLONE_FLAGS[name]
    return value


def valid_names_hint():
    return "valid names are " + ", ".join(n.removeprefix("CLONE_") for n in CLONE_FLAGS)


def decode_flags(value, op="unshare"):
    """Names of the flags set in value, with any unknown bits as one hex string: an op's own table
    where it has one (OP_FLAGS: open_tree, fsmount), else CLONE_*.

    For clone() the low byte is the exit signal, not flags: it is left out
    (see :func:`exit_signal_name`).
    """
    table = OP_FLAGS.get(op, CLONE_FLAGS)
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
    """'NEWPID|NEWNS' from ['CLONE_NEWPID', 'CLONE_NEWNS'] (table form)."""
    return "|".join(n.removeprefix("CLONE_") for n in names) or "0"


def encode_flags(names):
    """The inverse of decode_flags for a list of names (hex strings allowed)."""
    value = 0
    for name in names:
        value |= int(name, 16) if name.startswith("0x") else CLONE_FLAGS[name]
    return value


def exit_signal_name(signo):
    if not signo:
        return None
    try:
        return signal.Signals(signo).name
    except ValueError:
        return str(signo)


def requested_types(value, op):
    """Namespace types an operation's flags ask for: clone()'s low byte is a signal, not NEWTIME."""
    return ns_types_in(value & ~CSIGNAL if op == "clone" else value)


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
