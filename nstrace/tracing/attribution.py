"""The containers of a tracer's records: looked up in user space, handed to native/batch.c as text.

Which container a cgroup or a namespace belongs to is user space's knowledge
(nstrace/linux/containers.py). Per batch, native/batch.c says which cgroup
ids and setns targets it has no container text for (batch_missing); each is
looked up here once (a cgroup id for the life of the reader: ids are never
reused; a target for the batch: namespaces change hands, and the batch's own
setns callers into it do not count) and given to C as
the JSON Python itself writes (jsonline.json_value), with whether --container
takes it. So the C lines and the Python reference carry the same bytes, and
the same records pass --container, by construction.

A cgroup v2 id that is no container's says nothing of the caller's cgroup v1
hierarchies, where a hybrid or legacy host may keep its containers (docker's
cgroupfs driver). While a process is in a container only a v1 hierarchy names
(containers.v1_only_containers), such an id gets no text but a per-task mark
(:data:`PER_TASK`): C leaves its records to Python, which reads the caller's
v1 container from /proc (containers.process_container, the rule `ls` follows),
once per task and batch, if the caller is still the task that made the call
(its start time); one that has exited says null, as a v2 cgroup removed before
its look-up does. Otherwise C writes those records' null itself.
"""

from ..kernel import flags as fl
from ..linux import containers, procns
from ..record import jsonline, layout, reader
from ..record.layout import OPS, TARGET_KINDS

PER_TASK = "per-task"  # a cgroup id whose records' container is their caller's v1 one


class BatchAttribution:
    """The containers of the batches of one reader (options: the tracer's; .filter.containers is --container)."""

    def __init__(self, options):
        self._wanted = options.filter.containers
        self._lookup = containers.Attribution()
        self._known = {}  # (table, key) -> container or PER_TASK, as C has it now
        self._v1 = False  # a container only v1 names has a process: no-container cgroup ids are PER_TASK
        self._tasks = {}  # (pid, tid, start_time_ns) -> v1 container, this batch's

    def resolve(self, b):
        """Before b is classified: C gets the text of every container it lacks."""
        # native/batch.c forgets the targets' texts at every read: so does this
        self._known = {k: v for k, v in self._known.items() if k[0] == reader.CGROUPS}
        self._tasks = {}
        if b.n and self._lookup.v1_only_containers() != self._v1:
            self._v1 = not self._v1
            for key, found in list(self._known.items()):
                if found is None or found is PER_TASK:
                    self._tell(b, *key, self._find(*key))
        missing = b.missing()
        entered = setns_callers(b) if any(table == reader.TARGETS for table, _ in missing) else {}
        for table, key in missing:
            self._tell(b, table, key, self._find(table, key, entered.get(key, frozenset())))

    def _tell(self, b, table, key, found):
        self._known[(table, key)] = found
        if found is PER_TASK:
            b.set_container(table, key, None, False)
        else:
            b.set_container(table, key, jsonline.json_value(found).encode(),
                            any(containers.matches(found, w) for w in self._wanted))

    def fill(self, rec):
        """rec.container and its setns target's container, as C was told them."""
        found = self._get(reader.CGROUPS, rec.cgroup_id)
        rec.container = self._of_task(rec) if found is PER_TASK else found
        target = target_key(rec.target)
        if target:
            rec.target["container"] = self._get(reader.TARGETS, target)

    def _get(self, table, key):
        found = self._known.get((table, key), self)
        return self._find(table, key) if found is self else found

    def _find(self, table, key, entered_by=frozenset()):
        if table == reader.CGROUPS:
            return self._lookup.of_cgroup(key) or (PER_TASK if self._v1 else None)
        if key >> 63:  # a pidfd: the process's own container
            return containers.process_container(key & 0xFFFFFFFF)
        return self._lookup.of_namespace(fl.NS_FLAG_VALUES.get(key >> 32), key & 0xFFFFFFFF, entered_by=entered_by)

    def _of_task(self, rec):
        task = (rec.pid, rec.tid, rec.start_time_ns)
        if task not in self._tasks:
            self._tasks[task] = task_v1_container(*task)
        return self._tasks[task]


def setns_callers(b):
    """{target key: frozenset of the processes that setns'd into it} of batch b: a namespace's owner
    is judged without them (containers.Attribution.of_namespace)."""
    callers = {}
    for i in range(b.n):
        raw = b.raw(i)
        if len(raw) >= layout.HEAD_SIZE:
            head = layout.EventHead.from_buffer_copy(raw)
            key = head_target_key(head)
            if key:
                callers[key] = callers.get(key, frozenset()) | {head.pid}
    return callers


def task_v1_container(pid, tid, start_time_ns):
    """The container of task tid's cgroup v1 hierarchies, if it is still the task born at
    start_time_ns (read before and after: a pid is reused), else None."""
    born = procns.ns_to_ticks(start_time_ns)
    if procns.start_ticks(pid, tid) != born:
        return None
    found = containers.process_container(pid, tid, v1_only=True)
    return found if procns.start_ticks(pid, tid) == born else None


def target_key(target):
    """native/batch.c target_key() of a decoded setns target: what its container is said of."""
    if not target:
        return 0
    if target.get("kind") == "nsfs" and target.get("type") in fl.NS_TYPES:
        return fl.CLONE_FLAGS[fl.NS_TYPES[target["type"]]] << 32 | target["inode"]
    if target.get("kind") == "pidfd":
        return 1 << 63 | target["pid"]
    return 0


def head_target_key(head):
    """native/batch.c target_key() of a raw record's head (layout.EventHead)."""
    kind = TARGET_KINDS.get(head.target_kind) if OPS.get(head.op) == "setns" else None
    if kind == "nsfs":
        return head.target_nstype << 32 | head.target_inum
    if kind == "pidfd":
        return 1 << 63 | head.target_pid
    return 0
