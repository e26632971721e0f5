"""The suite nstrace runs in each guest: the kernel-function tests and `nstrace check`."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path
from typing import Callable

from ..errors import LabError
from .guest import run_in_guest
from .status import Status, quiet


def checkout() -> Path:
    """The checkout whose .venv runs this nstrace (scripts/setup.sh makes it there): the suite is its
    tests, and the guest reaches both through the shared root. An installed nstrace has no suite."""
    root = Path(sys.prefix).resolve().parent
    if not (root / "tests" / "test_kernelpath.py").exists():
        raise LabError(f"the lab suite runs a checkout's tests, and {sys.prefix} is no checkout's .venv: "
                       "run it as .venv/bin/nstrace in a checkout set up by scripts/setup.sh")
    return root


# Every test marked kernelpath (pyproject.toml), in whichever file it lives.
DEFAULT_TESTS = ("tests",)


def run_guest_suite(kernel: str, *, pytest_args: tuple[str, ...] = (), check_only: bool = False,
                    timeout: float = 900, status: Status = quiet,
                    output: Callable[[bytes], None] | None = None, should_stop=None) -> dict:
    """Run the kernel-layer tests (unless check_only) and `nstrace check` inside `kernel`.

    The guest sees this checkout and its .venv through the shared root, so what runs is exactly what
    was built here.  `output` receives the guest's output as it comes.  Returns {kernel, release,
    ok, summary, output, duration_s, boot_s}.
    """
    project = checkout()
    python = project / ".venv" / "bin" / "python"
    nstrace = project / ".venv" / "bin" / "nstrace"
    check = f"{shlex.quote(str(nstrace))} check"
    if check_only:
        script = check
    else:
        pytest = (f"{shlex.quote(str(python))} -m pytest -q -rs -p no:cacheprovider -m kernelpath "
                  + " ".join(shlex.quote(a) for a in (pytest_args or DEFAULT_TESTS)))
        # Both always run; the guest's exit status says whether both passed.
        script = f"{pytest}; a=$?; {check}; b=$?; [ $a -eq 0 ] && [ $b -eq 0 ]"
    res = run_in_guest(kernel, ["/bin/sh", "-c", script], cwd=str(project), timeout=timeout, status=status,
                       stdout=output, should_stop=should_stop)
    lines = [line.strip("= ") for line in res.output.splitlines() if line.strip()]
    tests = "not run (--check-only)" if check_only else next(
        (line for line in reversed(lines) if re.search(r"\d+ (passed|failed|error|skipped).* in ", line)),
        "no pytest summary")
    checks = next((line for line in reversed(lines) if re.fullmatch(r"\d+ passed, \d+ failed", line)),
                  "no check summary")
    summary = f"tests: {tests}; check: {checks}"
    return {"kernel": kernel, "release": res.kernel_release, "ok": res.returncode == 0, "summary": summary,
            "output": res.output, "duration_s": res.duration_s, "boot_s": res.boot_s}
