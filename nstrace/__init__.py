"""nstrace: a Linux namespace tracer and inspector built on eBPF (libbpf CO-RE).

As a Python library (README: "Python library"): ``nstrace.trace()`` traces a block of code,
``nstrace.run(argv)`` a command, ``nstrace.ls()`` lists the namespaces of the system and
``nstrace.load(path)`` reads a recorded session; errors are the exceptions of ``nstrace.errors``.
Each name is imported from nstrace/api.py when first used, so that ``import nstrace`` (and the
command line, which starts here) imports nothing else.
"""

__version__ = "0.1.0"

__all__ = ["trace", "run", "ls", "load", "Trace", "Record", "Step", "KernelPath", "Namespace"]

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know the name)
if TYPE_CHECKING:
    from .api import KernelPath, Namespace, Record, Step, Trace, load, ls, run, trace


def __getattr__(name):
    if name in __all__:
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
