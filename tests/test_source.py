"""The code under each step: Debian's source of the kernel that ran, fetched from the mirror into the
lab's cache (`nstrace source fetch`), read back by any user, offline (nstrace/linux/kernelsource.py),
and shown by `nstrace show --source` with the line that called each step and the test that decided.

Real fetches (one into an empty cache: apt lists and a 140 MB package, about 20 s here), real files,
real lines; the recorded sessions are real runs in lab guests (tests/data)."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from nstrace.cli.source import fetch
from nstrace.kernel import source, sourcelines
from nstrace.linux import kernelsource
from nstrace.view import excerpts

ROOT = Path(__file__).resolve().parent.parent
NSTRACE = str(ROOT / ".venv" / "bin" / "nstrace")
CLONE_61 = str(ROOT / "tests" / "data" / "lab-6.1-demo-clone.jsonl")   # 6.1.0-57-amd64, Debian 6.1.192-3
SETNS_72 = str(ROOT / "tests" / "data" / "lab-7.2-demo-setns.jsonl")   # 7.2.13+deb14-amd64
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
R61, V61 = "6.1.0-57-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-3 (2026-11-26)"
R72 = "7.2.13+deb14-amd64"


@pytest.fixture(scope="module")
def cached():
    """The default cache holds the source of 6.1, 6.12 and 7.2 (fetched where it does not). Other users
    read it through the cache's root: nstrace makes that 0755, but an empty one handed in through
    NSTRACE_LAB_CACHE (mktemp -d: 0700) is made searchable here, as nstrace would have made it."""
    from nstrace.linux.labcache import cache_dir
    root = cache_dir()
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    if root.stat().st_uid == 0 and not root.stat().st_mode & 0o001:
        os.chmod(root, root.stat().st_mode | 0o055)
    for series in ("6.1", "6.12", "7.2"):
        fetch(series, say=print)
    kernelsource.forget()
    yield
    kernelsource.forget()


@pytest.fixture
def world_readable_dir():
    """A directory of root's that any user may read: another user's view of an empty cache."""
    path = tempfile.mkdtemp(prefix="nstrace-source-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path)


def _run(argv, env=None, prefix=()):
    return subprocess.run([*prefix, NSTRACE, *argv], capture_output=True, text=True, cwd="/",
                          env={**os.environ, **(env or {})})


def _file_line(series, path, number):
    return (kernelsource.series_dir(series) / path).read_text().split("\n")[number - 1]


def _code(stdout):
    """(mark, number, text) of each code line `show --source` printed."""
    return [(m.group(1), int(m.group(2)), m.group(3))
            for m in re.finditer(r"^ +([>* ]) +(\d+)  (.*)$", stdout, re.M)]


# --- the fetch ---------------------------------------------------------------------------------------

def test_fetch_into_an_empty_cache_keeps_the_cited_files_and_works_offline(tmp_path):
    """From nothing: the suite's lists, the package, the cited files kept; then, with no network at all
    (a new network namespace), the fetch has nothing to do and the view shows the code."""
    env = {"NSTRACE_LAB_CACHE": str(tmp_path / "cache")}
    done = _run(["source", "fetch", "--kernel", "6.1"], env)
    assert done.returncode == 0, done.stderr
    said = done.stderr.splitlines()
    assert said[0] == "nstrace: fetching the package lists of bookworm"
    assert re.fullmatch(r"nstrace: downloading linux-source-6\.1 6\.1\.\S+ from bookworm \(\d+ MB\)", said[1])
    assert re.fullmatch(r"nstrace: 6\.1: kept 1\d files of linux-source-6\.1 \S+ \(0\.\d MB\) in \d+ s", said[-1])
    tree = tmp_path / "cache" / "source" / "6.1"
    kept = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    assert "kernel/nsproxy.c" in kept and "include/linux/nsproxy.h" in kept and "manifest.json" in kept
    assert not any(p.startswith(("Documentation", "drivers", "arch")) for p in kept)

    offline = ["unshare", "--net", "--"]
    again = _run(["source", "fetch", "--kernel", "6.1"], env, offline)
    assert again.returncode == 0 and again.stderr.startswith("nstrace: 6.1: linux-source-6.1 "), again.stderr
    shown = _run(["show", "--source", CLONE_61], env, offline)
    assert shown.returncode == 0 and "not here" not in shown.stderr, shown.stderr
    (number, text), = [(n, t) for m, n, t in _code(shown.stdout) if m == "*" and "(!(flags & CLONE_NEWUTS))" in t]
    # copy_utsname's test, as the file has it (tabs expanded)
    assert text == (tree / "kernel" / "utsname.c").read_text().split("\n")[number - 1].expandtabs(8)


def test_fetch_needs_root_and_a_kernel_it_knows():
    nobody = _run(["source", "fetch", "--kernel", "6.1"], prefix=NOBODY)
    assert nobody.returncode == 3
    assert nobody.stderr.startswith("nstrace: error: nstrace source fetch needs root") and \
        len(nobody.stderr.splitlines()) == 1
    unknown = _run(["source", "fetch", "--kernel", "nonsense"])
    assert unknown.returncode == 2 and unknown.stderr.startswith("nstrace: error: unknown kernel 'nonsense'")


# --- excerpts ---------------------------------------------------------------------------------------

def test_a_definition_with_its_deciding_test(cached):
    e = kernelsource.excerpt("copy_utsname", R61, kernel_version=V61)
    assert (e.func, e.file, e.exact, e.version) == ("copy_utsname", "kernel/utsname.c", True, "6.1.192")
    assert e.line == sourcelines.where("copy_utsname", R61).line == e.lines[0][0]
    assert e.text == f"kernel/utsname.c:{e.line}"
    (decides,) = e.marked("decides")
    assert "if (!(flags & CLONE_NEWUTS))" in _file_line("6.1", e.file, decides)
    for number, text, _ in e.lines:  # the file's own lines, tabs kept
        assert text == _file_line("6.1", e.file, number)
    # a test spread over lines is marked whole: copy_namespaces' fast path names seven flags on three
    e = kernelsource.excerpt("copy_namespaces", R61)
    assert len(e.marked("decides")) == 3 and "CLONE_NEWTIME" in _file_line("6.1", e.file, e.marked("decides")[-1])


def test_a_call_site_with_the_test_that_led_there(cached):
    e = kernelsource.excerpt("create_new_namespaces", R61, "call", "copy_namespaces")
    (call,) = e.marked("call")
    assert (e.func, e.file, e.line) == ("copy_namespaces", "kernel/nsproxy.c", call)
    assert "create_new_namespaces(flags" in _file_line("6.1", e.file, call)
    assert e.marked("decides") and max(e.marked("decides")) < call  # the flag test that chose the slow path
    assert kernelsource.excerpt("copy_namespaces", R61, "call", None) is None


def test_the_count_test_that_chose_to_free_the_old_nsproxy(cached):
    """switch_task_namespaces drops the old nsproxy's count in put_nsproxy (include/linux/nsproxy.h),
    whose count test calls free_nsproxy (6.1) or, through deactivate_nsproxy, nsproxy_free (7.2)."""
    e = kernelsource.excerpt("free_nsproxy", R61, "call", "switch_task_namespaces")
    assert e.func == "switch_task_namespaces" and "put_nsproxy(ns)" in _file_line("6.1", e.file, e.line)
    helper = e.via
    assert (helper.func, helper.file) == ("put_nsproxy", "include/linux/nsproxy.h")
    assert "atomic_dec_and_test(&ns->count)" in _file_line("6.1", helper.file, helper.marked("decides")[0])
    assert "free_nsproxy(ns)" in _file_line("6.1", helper.file, helper.marked("call")[0])

    e = kernelsource.excerpt("nsproxy_free", R72, "call", "switch_task_namespaces")
    assert [e.func, e.via.func, e.via.via.func] == ["switch_task_namespaces", "put_nsproxy", "deactivate_nsproxy"]
    assert "refcount_dec_and_test(&ns->count)" in _file_line("7.2", "include/linux/nsproxy.h",
                                                             e.via.marked("decides")[0])
    assert "nsproxy_free(ns)" in _file_line("7.2", e.via.via.file, e.via.via.line)


def test_a_call_through_functions_the_compiler_inlined(cached):
    """On setns the probes see utsns_install under the syscall: validate_ns, inlined, made the call,
    through ns->ops->install."""
    e = kernelsource.excerpt("utsns_install", R72, "call", "__x64_sys_setns")
    assert e.func == "__x64_sys_setns" and "validate_ns(" in _file_line("7.2", e.file, e.line)
    assert e.via.func == "validate_ns" and "->install(" in _file_line("7.2", e.via.file, e.via.line)


def test_an_uncovered_kernel_shows_the_nearest_version_and_says_so(cached):
    e = kernelsource.excerpt("copy_namespaces", "6.18.44")  # this machine's kernel: no Debian source
    assert not e.exact and e.version == sourcelines.where("copy_namespaces", "6.18.44").version
    assert e.text.endswith(f"(as in {e.version})") and e.version.startswith("7.2.")
    # a function 7.2 no longer has: the next nearest (6.12), as source-lines.toml's rule says
    assert kernelsource.excerpt("free_nsproxy", "6.18.44").version.startswith("6.12.")
    assert kernelsource.needed("6.18.44") == ["6.12", "7.2"]
    # the series covered, another Debian revision than the one fetched: named by its revision
    e = kernelsource.excerpt("copy_utsname", R61, kernel_version="#1 SMP Debian 6.1.192-1 (2026-01-01)")
    assert not e.exact and e.text.endswith("(as in 6.1.192-3)")
    assert kernelsource.excerpt("copy_utsname", "not a release") is None


def test_a_cache_another_user_could_change_is_not_shown(cached, tmp_path, monkeypatch):
    shutil.copytree(kernelsource.series_dir("6.1"), tmp_path / "source" / "6.1")
    os.chown(tmp_path / "source" / "6.1" / "kernel" / "utsname.c", 65534, 65534)
    monkeypatch.setenv("NSTRACE_LAB_CACHE", str(tmp_path))
    kernelsource.forget()
    e = kernelsource.excerpt("copy_utsname", R61)
    assert not e.lines and "cannot be read safely" in e.missing and "belongs to uid 65534" in e.missing
    assert e.text == f"kernel/utsname.c:{sourcelines.where('copy_utsname', R61).line}"
    kernelsource.forget()


# --- the view ---------------------------------------------------------------------------------------

def test_any_user_sees_the_fetched_code(cached):
    """Fetched once by root, read by anyone: the call sites and definitions of a real 7.2 setns."""
    shown = _run(["show", "--source", SETNS_72], prefix=NOBODY)
    assert shown.returncode == 0 and "not here" not in shown.stderr, shown.stderr
    assert "called in unshare_nsproxy_namespaces, kernel/nsproxy.c:" in shown.stdout
    assert "called in __x64_sys_setns, kernel/nsproxy.c:" in shown.stdout
    calls = [t for m, _, t in _code(shown.stdout) if m == ">"]
    assert any("->install(" in t for t in calls) and any("create_new_namespaces(" in t for t in calls)


def test_a_user_without_the_source_gets_one_line_and_file_line(world_readable_dir):
    shown = _run(["show", "--source", CLONE_61], {"NSTRACE_LAB_CACHE": str(world_readable_dir / "cache")},
                 NOBODY)
    assert shown.returncode == 0, shown.stderr
    said = shown.stderr.splitlines()
    assert len(said) == 2 and said[0].startswith("nstrace: session ")
    assert said[1] == ("nstrace: the kernel source of 6.1 is not here: as root, `nstrace source fetch --kernel "
                       "6.1.0-57-amd64` fetches it from Debian once (then it works offline); showing file:line only")
    line = sourcelines.where("copy_utsname", R61).line
    assert f"defined at kernel/utsname.c:{line}" in shown.stdout and not _code(shown.stdout)


def test_source_text_is_filtered_for_the_terminal():
    """What the source holds reaches the terminal as text: tabs expanded, an escape shown, not obeyed."""
    e = source.Excerpt("f", "kernel/x.c", 3, "6.1.192", True, ((3, "\tx = 1; /* \x1b[2J */", "decides"),))
    (line,) = excerpts.excerpt_lines(e, "")
    assert line == "*     3          x = 1; /* \\x1b[2J */"


def test_show_source_is_for_the_table_of_a_file_that_names_its_kernel(tmp_path):
    done = _run(["show", "--source", "--json", CLONE_61])
    assert done.returncode == 2 and "--source is for the table" in done.stderr
    bare = tmp_path / "records.jsonl"  # watch --json's lines: no header, no kernel
    bare.write_text("".join(line for line in open(CLONE_61) if '"nstrace_session"' not in line))
    done = _run(["show", "--source", str(bare)])
    assert done.returncode == 0 and "no kernel named (no header): its source cannot be chosen" in done.stderr
