"""Functions of the namespace path that kernels renamed, added or removed: what lines two kernels' paths
up when one step goes by two names, and says which kernels have a function at all.

Renames are facts typed here, each with the change that made it and where it was checked. Which
kernels define a function is read from the covered versions' own source (source-lines.toml, through
kernel.sourcelines), never typed: a function one covered version defines and another does not is new
or gone between them; paths.toml's `since` adds the version where the notes name it.
"""

import dataclasses

from . import documented, sourcelines


@dataclasses.dataclass(frozen=True)
class Rename:
    old: str
    new: str
    since: str          # the kernels that have the new name
    what: str           # what changed, as a learner reads it
    source: str         # the change, and where the fact was checked


RENAMES = (
    Rename("free_nsproxy", "nsproxy_free", "after 6.18 (7.2 has it)",
           "put_nsproxy() now calls deactivate_nsproxy(), which drops the namespaces' active references and "
           "calls nsproxy_free(): free_nsproxy()'s puts and kmem_cache_free() under a new name, which the "
           "setns failure path (put_nsset) also calls",
           "Christian Brauner's \"nsproxy: fix free_nsproxy() and simplify create_new_namespaces()\" (2025-11-11; "
           "free_nsproxy renamed deactivate_nsproxy in review); checked in Debian's linux-source-7.2 7.2.13-1, "
           "kernel/nsproxy.c:64-81, and in 6.18.44's BTF and kallsyms (free_nsproxy)"),
    Rename("exit_task_namespaces", "exit_nsproxy_namespaces", "after 6.18 (7.2 has it)",
           "the exit path's switch_task_namespaces(p, NULL), named beside the new exit_cred_namespaces()",
           "Debian's linux-source-7.2 7.2.13-1, kernel/nsproxy.c:263 (kernel/exit.c:986 calls it); "
           "6.18.44's kallsyms has exit_task_namespaces"),
)

_BY_NAME = {name: r for r in RENAMES for name in (r.old, r.new)}


def rename_of(func):
    """The Rename func takes part in, or None."""
    return _BY_NAME.get(func)


def canonical(func):
    """One name for a function under all its names (the oldest): what lines calls up across kernels."""
    r = _BY_NAME.get(func)
    return r.old if r else func


def names(func):
    """Every name the function has had, oldest first."""
    r = _BY_NAME.get(func)
    return (r.old, r.new) if r else (func,)


def defined(func, release):
    """Whether the kernel of this release (uname -r) defines func: from its own series' source
    (source-lines.toml). None where no source says: a series not covered, or a function the data
    does not follow."""
    series = sourcelines.series_of(release)
    if series not in sourcelines.covered() or not defining_series(func):
        return None
    spot = sourcelines.where(func, release)
    return bool(spot and spot.exact)


def came_or_went(func, release):
    """For a function the kernel of this release does not define: "new" where only later covered
    versions define it, "gone" where only earlier ones do, else None."""
    every, series = sourcelines.covered(), sourcelines.series_of(release)
    if series not in every:
        return None
    have = [every.index(s) for s in defining_series(func)]
    here = every.index(series)
    if have and min(have) > here:
        return "new"
    if have and max(have) < here:
        return "gone"
    return None


def defining_series(func):
    """The covered series whose source defines func, oldest first."""
    return [s for s in sourcelines.covered() if (spot := sourcelines.where(func, s)) and spot.exact]


def history(func):
    """Which covered kernels define func, as text, with paths.toml's `since` where it has one:
    'in 7.2, not in 5.10, 6.1, 6.12; paths.toml: since "6.18 (the namespace tree)"'. "" when every
    covered version defines it, or none the data follows."""
    have = defining_series(func)
    missing = [s for s in sourcelines.covered() if s not in have]
    if not have or not missing:
        return ""
    since = documented.notes().get("function", {}).get(func, {}).get("since")
    return f"in {', '.join(have)}, not in {', '.join(missing)}" + (f"; paths.toml: since \"{since}\"" if since else "")
