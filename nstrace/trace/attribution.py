"""The containers of a tracer's records: looked up in user space, handed to native/batch.c as text.

Which container a cgroup or a namespace belongs to is user space's knowledge
(nstrace/linux/containers.py). Per batch, native/batch.c says which cgroup
ids and setns targets it has no container text for (jl_missing); each is
looked up here once (a cgroup id for the life of the reader: ids are never
reused; a target for the batch: namespaces change hands, and the batch's own
setns callers into it do not count) and given to C as
the JSON Python itself writes (jsonline.json_value), with whether --container
takes it. So the C lines and the Python reference carry the same bytes, and
the same records pass --container, by construction.
"""

from ..bpf import batch
from ..linux import containers
from ..linux import flags as fl
from ..record import events, jsonline


class BatchAttribution:
    """The containers of the batches of one reader (options: the tracer's; .filter.containers is --container)."""

    def __init__(self, options):
        self._wanted = options.filter.containers
        self._lookup = containers.Attribution()
        self._known = {}  # (table, key) -> container, as C has it now

    def resolve(self, b):
        """Before b is classified: C gets the text of every container it lacks."""
        # native/batch.c forgets the targets' texts at every read: so does this
        self._known = {k: v for k, v in self._known.items() if k[0] == batch.CGROUPS}
        missing = b.missing()
        entered = setns_callers(b) if any(table == batch.TARGETS for table, _ in missing) else {}
        for table, key in missing:
            found = self._known[(table, key)] = self._find(table, key, entered.get(key, frozenset()))
            b.set_container(table, key, jsonline.json_value(found).encode(),
                            any(containers.matches(found, w) for w in self._wanted))

    def fill(self, rec):
        """rec.container and its setns target's container, as C was told them."""
        rec.container = self._get(batch.CGROUPS, rec.cgroup_id)
        target = batch.target_key(rec.target)
        if target:
            rec.target["container"] = self._get(batch.TARGETS, target)

    def _get(self, table, key):
        found = self._known.get((table, key), self)
        return self._find(table, key) if found is self else found

    def _find(self, table, key, entered_by=frozenset()):
        if table == batch.CGROUPS:
            return self._lookup.of_cgroup(key)
        if key >> 63:  # a pidfd: the process's own container
            return containers.process_container(key & 0xFFFFFFFF)
        return self._lookup.of_namespace(fl.NS_FLAG_VALUES.get(key >> 32), key & 0xFFFFFFFF, entered_by=entered_by)


def setns_callers(b):
    """{target key: frozenset of the processes that setns'd into it} of batch b: a namespace's owner
    is judged without them (containers.Attribution.of_namespace)."""
    callers = {}
    for i in range(b.n):
        raw = b.raw(i)
        if len(raw) >= events.HEAD_SIZE:
            head = events.EventHead.from_buffer_copy(raw)
            key = batch.head_target_key(head)
            if key:
                callers[key] = callers.get(key, frozenset()) | {head.pid}
    return callers
