"""Source lines (nstrace/kernel/source-lines.toml) and out-of-line functions (paths.toml `kernels`)
are data made by scripts from the kernels' own sources and BTF: held here to what the scripts make,
and to the source text itself."""

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest

from nstrace.kernel import documented, sourcelines

ROOT = Path(__file__).resolve().parent.parent
KSRC = Path("/work/ksrc")


def _script(name):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _trees():
    lines = _script("source-lines")
    trees = lines.default_trees()
    if set(trees) != set(sourcelines.covered()):
        pytest.skip(f"the kernel source trees in {KSRC} ({', '.join(trees) or 'none'}) are not the ones "
                    f"source-lines.toml was made from ({', '.join(sourcelines.covered())}): unpack Debian's linux-source packages there")
    return lines, trees


def test_source_lines_are_what_the_script_reads_from_each_source_tree():
    lines, trees = _trees()
    assert (ROOT / "nstrace" / "kernel" / "source-lines.toml").read_text() == lines.toml_text(lines.table(trees))


@pytest.mark.parametrize("series", ["5.10", "6.1", "6.12", "7.2"])
def test_each_line_is_the_definition_in_that_version(series):
    """Every recorded line, read in that version's file, opens the function's definition."""
    _, trees = _trees()
    data = tomllib.loads((ROOT / "nstrace" / "kernel" / "source-lines.toml").read_text())["version"][series]
    assert data["upstream"].startswith(series + ".")
    for func, spot in data["line"].items():
        file, line = spot.rsplit(":", 1)
        text = (trees[series] / file).read_text(errors="replace").split("\n")[int(line) - 1]
        name = func.removeprefix("__x64_sys_")
        assert re.match(rf"(SYSCALL_DEFINE\d\({name},|\S.*\b{name}\s*\()", text), (series, func, spot, text)


def test_lines_for_a_release_and_for_an_uncovered_one():
    # Debian 12's 6.1: its own line, unlabelled
    spot = sourcelines.where("copy_namespaces", "6.1.0-57-amd64")
    assert (spot.file, spot.exact, spot.text) == ("kernel/nsproxy.c", True, f"kernel/nsproxy.c:{spot.line}")
    # this machine's 6.18: not covered; the nearest covered version (7.2) gives the line, and says so
    spot = sourcelines.where("copy_namespaces", "6.18.44-fc-v782")
    assert not spot.exact and spot.version.startswith("7.2.") and spot.text.endswith(f"(as in {spot.version})")
    # a function 7.2 renamed (free_nsproxy -> nsproxy_free): 6.18 falls back to 6.12, 7.2 itself has none
    assert sourcelines.where("free_nsproxy", "6.18.44").version.startswith("6.12.")
    assert sourcelines.where("free_nsproxy", "7.2.13+deb14-amd64") is None
    # 7.2 moved timens_commit to its own file
    assert sourcelines.where("timens_commit", "7.2.13+deb14-amd64").file == "kernel/time/namespace_vdso.c"
    assert sourcelines.where("copy_namespaces", "not a release") is None


def test_out_of_line_kernels_are_what_the_kept_btf_outputs_say():
    """paths.toml's `kernels` per function is scripts/out-of-line.py's reading of the btf_check.py
    outputs kept in kernel-notes/ (each from a real kernel: lab guests, and this host)."""
    script = _script("out-of-line")
    seen = script.outputs()
    assert set(seen) >= {"5.10", "6.1", "6.12", "6.18", "7.2"}
    text = (ROOT / "nstrace" / "kernel" / "paths.toml").read_text()  # the checkout's, which the script rewrites
    assert script.rewrite(text, seen)[0] == text, "paths.toml is not what scripts/out-of-line.py writes"
    functions = documented.notes()["function"]
    # facts the outputs show: free_nsproxy is gone in 7.2, exec_task_namespaces arrives in 6.12
    assert "7.2" not in functions["free_nsproxy"]["kernels"] and "6.18" in functions["free_nsproxy"]["kernels"]
    assert functions["exec_task_namespaces"]["kernels"] == ["6.12", "6.18", "7.2"]
    assert functions["prepare_nsset"]["kernels"] == []
