"""Every scenario `nstrace check` runs, by name, in order: each call on each namespace type first
(operations.py), then one module per type's own experiments, and the docker-like container last;
each registered by its module's @scenario (scenario.py), in the order the modules are imported here."""

# the order of this line is the catalogue's: no import sorter may change it
# isort: skip_file
from . import operations, pidns, userns, mntns, netns, ipcns, timens, container  # noqa: F401 (they register)
from .scenario import CATALOGUE  # noqa: F401
