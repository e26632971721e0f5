"""The README's two set-up commands stay true: CI runs exactly the second one."""

import re

from nshelpers import ROOT


def readme_commands():
    """The README's indented code blocks (its commands); fenced blocks (its Python) are not commands."""
    text = re.sub(r"^```.*?^```$", "", (ROOT / "README.md").read_text(), flags=re.M | re.S)
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


def test_main_job_runs_a_demo_the_demo_accepts():
    """The README's main job is a demo of namespace flags only, which demo takes for its op."""
    from nstrace.check import demo
    from nstrace.kernel import flags
    main_job = readme_commands()[0]
    words = re.search(r"--flags '([^']+)'", main_job)
    assert words, main_job
    value = flags.parse_flags(words.group(1))
    assert value and not value & ~flags.CLONE_NEW_MASK, flags.decode_flags(value, "clone")
    op = re.search(r"--op (\S+)", main_job)
    scenario, _ = demo.build(op.group(1) if op else "clone", value)  # raises UsageError for what demo refuses
    assert scenario.name == "demo"


def test_the_readme_counts_no_scenarios_the_catalogue_does_not_have():
    """`nstrace check --list` counts the catalogue; a number typed into the README goes stale (it
    said 47 when there were 50), so the README names none, and any it names must be the count."""
    from nstrace.check import catalogue
    text = (ROOT / "README.md").read_text()
    counts = {int(n.replace(",", "")) for n in re.findall(r"\b(\d[\d,]*) scenarios\b", text)}
    assert counts <= {len(catalogue.CATALOGUE)}, (counts, len(catalogue.CATALOGUE))
    row = next(line for line in text.splitlines() if line.startswith("| `nstrace check "))
    assert "`--list`" in row and "`--json`" in row, row
