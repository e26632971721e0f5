"""The kernel functions the BPF side can hook, and how each is hooked: the rows of
probes/functions.def, the one list, from which the BPF side makes enum nstrace_func and its programs
(tests/test_layout.py holds FUNCTIONS to the compiled object's BTF).

Plain tuples and sets, and nothing imported but the table reader: the hook plan reads them on the way
to the first load (nstrace/bpf/preload.py), before anything else of nstrace is imported.
"""

from . import defs

_ROWS = defs.rows("functions.def", "HOOK")  # (kind, fn, ...)

# enum nstrace_func of probes/nstrace.h, by value: a row's position, from 1
FUNCTIONS = (None, *(fn for _, fn, *_ in _ROWS))

# The namespace a CALL row's RET_NS function returns, by function: its slot's /proc entry name (NS_MNT: "mnt").
NS_RETURNED = {fn: slot.removeprefix("NS_").lower() for kind, fn, *rest in _ROWS
               if kind == "CALL" for _, ret, slot in [rest] if ret == "RET_NS"}

# Hooked on entry only: the namespace tree's insertion (BIRTH), and each death function (DEATH, DEATH_ANY),
# whose death record is made on the way in.
ENTRY_ONLY = frozenset(fn for kind, fn, *_ in _ROWS if kind in ("BIRTH", "DEATH", "DEATH_ANY"))

# Where each type's namespaces die before the namespace tree (5.10 to 6.17), by type. The tree's removal, the
# one DEATH_ANY, sees every death where it exists (kernel/nstree.c, 6.18+), and then these are not hooked.
DEATH_OF = {row[3]: row[1] for row in _ROWS if row[0] == "DEATH"}  # HOOK(DEATH, fn, ns_of, type)
PER_TYPE_DEATHS = tuple(DEATH_OF.values())
(TREE_DEATH,) = (fn for kind, fn, *_ in _ROWS if kind == "DEATH_ANY")


def types_seen_dying(attached):
    """The namespace types whose deaths are records, given the names of the functions attached."""
    return tuple(DEATH_OF) if TREE_DEATH in attached else tuple(t for t, f in DEATH_OF.items() if f in attached)
