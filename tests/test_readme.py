"""The README's two set-up commands stay true: CI runs exactly the second one."""

import re

from nshelpers import ROOT


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return [m.group(1).strip() for m in re.finditer(r"^    (\S.*)$", text, re.M)]


def test_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert main_job.startswith("bash scripts/setup.sh && .venv/bin/nstrace demo ")
    assert tests == "bash scripts/setup.sh && .venv/bin/python -m pytest -q tests"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_main_job_flags_parse():
    from nstrace.linux import flags
    main_job = readme_commands()[0]
    flags.parse_flags(re.search(r"--flags '([^']+)'", main_job).group(1))
