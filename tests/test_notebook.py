"""examples/namespaces.ipynb run headless (nbclient and ipykernel, the test extra's), as a learner runs it,
and what a notebook shows of a Trace, a Record and a kernel path: the HTML page's escaping and look."""

import html
import re
import subprocess
import sys

import pytest
from nshelpers import ELSEWHERE, ROOT

import nstrace

pytestmark = pytest.mark.root("loads BPF programs and makes namespaces")

NOTEBOOK = ROOT / "examples" / "namespaces.ipynb"


@pytest.fixture(scope="module")
def executed():
    """The example notebook, every cell run in a kernel of this interpreter (the installed nstrace):
    in a directory outside the checkout, whose nstrace/ would be imported first."""
    nbclient = pytest.importorskip("nbclient")
    import nbformat
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": ELSEWHERE}}).execute()
    return [c for c in nb.cells if c.cell_type == "code"]


def texts(cell):
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def shown(cell, mime):
    return "".join(o["data"].get(mime, "") for o in cell.outputs if o.output_type == "execute_result")


def cell_with(cells, source):
    return next(c for c in cells if source in c.source)


def test_every_cell_runs_and_asserts_what_it_teaches(executed):
    # the cells assert what each experiment shows (nbclient raised on the first that failed)
    assert all(o.output_type != "error" for c in executed for o in c.outputs)


def test_clone_newuts_and_sethostname(executed):
    cell = cell_with(executed, "CLONE_UTS = ")
    assert "child:  inside" in texts(cell) and "parent: inside" not in texts(cell)
    page = shown(cell, "text/html")
    assert page.startswith('<div class="nstrace"><style>.nstrace{') and ">clone<" in page and ">NEWUTS<" in page
    record = shown(cell_with(executed, "clone = next("), "text/html")
    assert ">clone<" in record and "uts 4026" in record


def test_setns_through_proc_pid_ns(executed):
    assert "nsenter saw the hostname holder" in texts(cell_with(executed, "holder = subprocess.Popen"))
    assert "is nsfs uts" in texts(cell_with(executed, "setns = next("))


def test_pid_for_children(executed):
    cell = cell_with(executed, "r = nstrace.run(")
    assert texts(cell) == "exit status 1\n" and "exit status</th><td>1<" in shown(cell, "text/html")
    assert "is in pid namespace" in texts(cell_with(executed, "made, forked = "))


def test_the_kernel_path_cell_says_what_this_kernel_shows(executed):
    cell = cell_with(executed, "clone.path")
    page = shown(cell, "text/html")
    if "kernel-function layer: True" in texts(cell):
        assert "copy_utsname" in page
    else:
        assert "no kernel path (the kernel-function layer was off" in page


# --- what a notebook is given, and what it must not be given -------------------------------------

HOSTILE = "<b>x&\x1b[31m"  # HTML, and a terminal escape: a process may call itself anything (15 bytes at most)


def test_names_are_escaped_as_the_page_escapes_them():
    """A command name is the process's own choice: in the HTML it is text, escaped as the page escapes it
    (html.escape, and a control character as \\xNN)."""
    code = ("import ctypes, nstrace\n"
            "with nstrace.trace() as t:\n"
            f"    ctypes.CDLL(None).prctl(15, {HOSTILE.encode()!r}, 0, 0, 0)\n"
            "    assert ctypes.CDLL(None).unshare(0x04000000) == 0\n"
            "print(t._repr_html_() + t.records[0]._repr_html_() + t.records[0].path._repr_html_())\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ELSEWHERE)
    page = res.stdout
    assert html.escape("<b>x&", quote=True) + "\\x1b[31m" in page, page
    assert "\x1b" not in page and "<b>x" not in page


def test_the_style_sheet_is_the_pages_kept_to_the_output():
    """The page's own style sheet (view/page.py), nested under the output's element: a notebook around
    it keeps its own look (the page styles body, h1, table ...)."""
    from nstrace.view import page
    record = nstrace.load(ROOT / "tests" / "data" / "lab-6.1-demo-clone.jsonl").records[1]
    out = record._repr_html_()
    style = re.search(r"<style>(.*?)</style>", out, re.S).group(1)
    assert style == ".nstrace{" + page._CSS + "}"
    assert out.startswith('<div class="nstrace">') and out.endswith("</div>")
    path = record.path._repr_html_()
    assert 'class="observed created"' in path and "copy_utsname" in path and "kernel/utsname.c:89" in path
