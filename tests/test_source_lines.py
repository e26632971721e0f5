"""Source lines (nstrace/kernel/source-lines.toml), the code the views show (paths.toml [source]) and
out-of-line functions (paths.toml `kernels`) are data made by scripts from the kernels' own sources
and BTF: held here to what the scripts make, and to the source text itself, of every version the lab
covers.

The source is Debian's, fetched as `nstrace source fetch` does into the lab's cache (as root): on a
fresh machine the first run downloads the four linux-source packages (about 580 MB, 40 s here, most
of it xz), later runs read the cache (a second).
"""

import importlib.util
import os
import re
import time
import tomllib
from pathlib import Path

import pytest

from nstrace.kernel import documented, source, sourcelines
from nstrace.linux import kernelsource

ROOT = Path(__file__).resolve().parent.parent
SERIES = ["5.10", "6.1", "6.12", "7.2"]


def _script(name):
    spec = importlib.util.spec_from_file_location(name.replace("-", "_"), ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def lines_script():
    return _script("source-lines")


@pytest.fixture(scope="module")
def trees(lines_script):
    """{series: (source.Tree, manifest)} of every covered version, fetched where the cache lacks it."""
    started = time.monotonic()
    got = lines_script.fetched(SERIES, say=lambda m: print(f"source: {m}"))
    print(f"source: the trees of {', '.join(SERIES)} ready in {time.monotonic() - started:.1f} s")
    return got


def test_the_covered_versions_are_the_lab_kernels(lines_script):
    """source-lines.toml covers the series `nstrace lab` boots (sid's moves: then run the script again)."""
    assert sourcelines.covered() == SERIES == lines_script.lab_series(say=lambda m: None)


def test_source_lines_are_what_the_script_reads_from_each_source_tree(lines_script, trees):
    assert (ROOT / "nstrace" / "kernel" / "source-lines.toml").read_text() == \
        lines_script.toml_text(lines_script.table(trees))


@pytest.mark.parametrize("series", SERIES)
def test_each_line_is_the_definition_in_that_version(series, trees):
    """Every recorded line, read in that version's file, opens the function's definition."""
    tree, manifest = trees[series]
    data = tomllib.loads((ROOT / "nstrace" / "kernel" / "source-lines.toml").read_text())["version"][series]
    assert data["upstream"] == manifest["upstream"] and data["upstream"].startswith(series + ".")
    for func, spot in data["line"].items():
        file, line = spot.rsplit(":", 1)
        text = tree.files[file].split("\n")[int(line) - 1]
        name = func.removeprefix("__x64_sys_")
        assert re.match(rf"(SYSCALL_DEFINE\d\({name},|\S.*\b{name}\s*\()", text), (series, func, spot, text)


@pytest.mark.parametrize("series", SERIES)
def test_each_deciding_test_matches_one_line_of_its_function(series, trees):
    """A `decides` pattern is found by what the line tests, in each version: exactly one line of the
    function's body, with comments left out."""
    tree, _ = trees[series]
    checked = 0
    for func in source.named():
        test = source.facts(func).get("decides")
        found = tree.find(func)
        if not test or not found:
            continue
        path, span = found
        hits = source.matches(tree.code(path), span.body(), test)
        assert len(hits) == 1, (series, func, test, [i + 1 for i in hits])
        checked += 1
    assert checked >= 15, checked


def test_every_source_key_is_used_and_names_a_function(trees):
    notes = documented.notes()
    for func, keys in notes["source"].items():
        assert set(keys) <= {"decides", "called_as", "via", "file"}, func
        assert func in notes["function"] or keys.get("file"), f"[source.{func}] names no file"
        assert all(source.facts(helper).get("file") for helper in keys.get("via", [])), func
        assert any(tree.find(func) for tree, _ in trees.values()), f"no version defines {func}"
        if "decides" in keys:
            spellings = [keys["decides"]] if isinstance(keys["decides"], str) else keys["decides"]
            for spelling in spellings:  # each spelling is some version's
                assert any(tree.find(func) and source.matches(tree.code(tree.find(func)[0]), tree.find(func)[1].body(),
                                                              spelling) for tree, _ in trees.values()), (func, spelling)


@pytest.mark.parametrize("series", SERIES)
def test_each_documented_call_is_found(series, trees):
    """Every call paths.toml documents (its ops' `in`) between two functions this version defines is
    found in the caller's body: by name, as `called_as`, or through a `via` helper or an inlined
    documented caller."""
    tree, _ = trees[series]
    pairs = [(f, c) for f, c in source.documented_pairs() if tree.find(f) and tree.find(c)]
    assert len(pairs) >= 40
    missing = [(f, c) for f, c in pairs if tree.call(f, c) is None]
    assert not missing, missing


@pytest.mark.parametrize("series", SERIES)
def test_the_cache_keeps_only_the_cited_files(series, trees):
    """Only the files holding a definition the paths cite are kept, and the manifest: a few hundred kB,
    not the 1.3 GB tree."""
    tree, manifest = trees[series]
    cited = {tree.find(f)[0] for f in source.named() if tree.find(f)}
    assert set(manifest["files"]) == cited == set(tree.files)
    root = kernelsource.series_dir(series)
    on_disk = {os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root) for n in names}
    assert on_disk == cited | {kernelsource.MANIFEST}
    size = sum(os.path.getsize(root / name) for name in on_disk)
    assert size == manifest["bytes"] + os.path.getsize(root / kernelsource.MANIFEST) < 2_000_000
    assert manifest["package"] == f"linux-source-{series}" and manifest["functions"] == source.named()


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
