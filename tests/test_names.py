"""What nstrace says of files and names goes to a terminal: no name another user chose reaches it
raw, whatever line it is on (status lines included), and the filter costs watch's start-up nothing.
"""

import re
import shutil
import subprocess
import sys

import pytest

from nshelpers import NSTRACE

pytestmark = pytest.mark.root("loads BPF programs")


def run(*args, timeout=120, cwd=None):
    res = subprocess.run([str(NSTRACE), *args], capture_output=True, timeout=timeout, cwd=cwd)
    assert b"Traceback" not in res.stderr, res.stderr.decode(errors="replace")
    assert res.returncode == 0, res.stderr.decode(errors="replace")
    return res


def terminal_safe(out):
    """Every line passes the terminal filter: nothing but printable text between the newlines."""
    text = out.decode("utf-8")  # undecodable bytes would be raw bytes: the filter lets none through
    bad = [line for line in text.split("\n") if not line.isprintable()]
    assert not bad, bad[:3]
    return text


# --- what nstrace says of files -------------------------------------------------------------

FILE_NAME = "e\x1b]0;pwn\x07\u202e\nnstrace: error: fake"


def test_the_session_written_line_shows_a_hostile_file_name_escaped(tmp_path):
    res = run("watch", "--record", FILE_NAME, "--", "unshare", "--uts", "true", cwd=tmp_path)
    assert (tmp_path / FILE_NAME).stat().st_size > 0
    said = terminal_safe(res.stderr)
    assert "nstrace: session written to e\\x1b]0;pwn\\x07\\u202e\\x0anstrace: error: fake" in said.splitlines()
    assert not re.search(r"^nstrace: error", said, re.M)


def test_a_status_line_needs_no_table_code():
    """The filter is on watch's start-up path: a status line imports neither the tables nor
    tabulate, and a plain one (as watch's start-up lines are) not even the filter."""
    probe = ("import sys; from nstrace import cli; cli.status('tracing live'); "
             "print(sorted(m for m in sys.modules if m.startswith('nstrace.view'))); cli.status('\\x1b[2J'); "
             "print(sorted(m for m in ('nstrace.view.display', 'tabulate') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd="/")
    assert res.returncode == 0 and res.stdout == "[]\n[]\n", res
    assert res.stderr == "nstrace: tracing live\nnstrace: \\x1b[2J\n", res


@pytest.mark.lab
@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed")
def test_the_labs_wrote_here_line_shows_a_guests_file_name_escaped(tmp_path):
    """A guest names the files it brings back: `wrote NAME here` passes the terminal filter."""
    res = subprocess.run([str(NSTRACE), "lab", "--kernel", "6.1", "--", "watch", "--record", FILE_NAME,
                          "--duration", "0.2"], capture_output=True, timeout=1200, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / FILE_NAME).stat().st_size > 0
    said = terminal_safe(res.stderr)
    assert re.search(r"^nstrace: 6\.1: wrote e\\x1b\]0;pwn\\x07\\u202e\\x0anstrace: error: fake \(\d+ bytes\) here$",
                     said, re.M), said
