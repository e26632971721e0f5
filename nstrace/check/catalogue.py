"""Every scenario `nstrace check` runs, by name, in order: the classic experiments (scenarios.py),
then the seeds' remaining ones (experiments.py), each registered by its module's @scenario."""

from . import experiments  # noqa: F401  (imported for its registrations, after scenarios' own)
from .scenarios import CATALOGUE  # noqa: F401
