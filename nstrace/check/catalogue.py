"""Every scenario `nstrace check` runs, by name, in order: each call on each namespace type first
(operations.py), then one module per type's own experiments, and the docker-like container last;
each registered by its module's @scenario (scenario.py)."""

from . import container, ipcns, mntns, netns, operations, pidns, timens, userns  # noqa: F401 (they register)
from .scenario import CATALOGUE  # noqa: F401
