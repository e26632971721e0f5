"""Names nstrace reads are anybody's: they are bytes, they are escaped where they are shown, and no
name makes a traceback or reaches a terminal raw.

Real cgroups with hostile names (anyone who may make a cgroup chooses its name: a systemd user
delegation is enough), real processes moved into them, each in a uts namespace of its own; then
`ls` in every form, `watch --record`, `demo --record` and `watch -- nsenter` into them, as a user
would run them. And the lines nstrace writes to a terminal about files: the file's name is
anybody's too.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from nshelpers import NSTRACE

from nstrace.linux import containers
from nstrace.linux.comm import safe_comm

pytestmark = pytest.mark.root("makes cgroups, moves processes and loads BPF programs")

# What a cgroup (or a file) may be called: not UTF-8; ASCII separators str.splitlines() cuts at;
# a terminal title escape (ESC, BEL); a bidirectional override; Unicode's line separator and NEL.
HOSTILE = {
    "not-utf8": b"\xff\xfe",
    "record-separator": b"foo\x1ebar",
    "group-separators": b"x\x1c\x1dy",
    "title-escape": b"e\x1b]0;pwn\x07",
    "bidi": "rtl\u202egnp".encode(),
    "line-separator": "a\u2028b".encode(),
    "nel": "c\x85d".encode(),
}

# systemd-nspawn's scope and LXC's payload cgroup, the two runtimes whose names are free text
RUNTIMES = {
    "systemd-nspawn": lambda name: b"machine.slice/machine-" + name + b".scope",
    "lxc": lambda name: b"lxc.payload." + name,
}


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


@pytest.fixture(scope="module")
def cgroup2():
    found = containers.cgroup2_mount()
    if not found:
        pytest.skip("no cgroup2 hierarchy mounted here")
    return os.fsencode(found[0])


class Box:
    """A cgroup named as a runtime names a container's, with a process in a uts namespace of its own in it."""

    def __init__(self, root, runtime, name):
        self.runtime, self.name = runtime, name
        self.path = os.path.join(root, RUNTIMES[runtime](name))
        self.made = [p for p in (os.path.dirname(self.path), self.path) if not os.path.exists(p)]
        for p in self.made:
            os.mkdir(p)
        self.proc = subprocess.Popen([b"sh", b"-c", b'echo $$ > "$0/cgroup.procs" && exec unshare --uts sleep 300',
                                      self.path])
        self.label = f"{runtime}:{safe_comm(name)}"
        self.expected = {"runtime": runtime, "id": None, "name": safe_comm(name), "pod": None}

    def wait(self):
        for _ in range(200):
            try:
                if os.stat(f"/proc/{self.proc.pid}/ns/uts").st_ino != os.stat("/proc/self/ns/uts").st_ino:
                    self.uts = os.stat(f"/proc/{self.proc.pid}/ns/uts").st_ino
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"{self.label}: its process did not start")

    def close(self):
        self.proc.kill()
        self.proc.wait()
        for p in reversed(self.made):
            for _ in range(100):  # the kernel empties the cgroup just after the reap
                try:
                    os.rmdir(p)
                    break
                except OSError:
                    time.sleep(0.05)


@pytest.fixture(scope="module")
def boxes(cgroup2):
    made = []
    try:
        for runtime in RUNTIMES:
            for name in HOSTILE.values():
                made.append(Box(cgroup2, runtime, name))
        for box in made:
            box.wait()
        yield made
    finally:
        for box in reversed(made):
            box.close()


COMM = b"\xff\x1b]0;t\x07\n\xe2\x80\xae"


@pytest.fixture(scope="module")
def hostile_process(tmp_path_factory):
    """A process whose comm and command line are hostile too, in a uts namespace of its own: sleep
    run through a symlink of that name (exec names a task after the file it was given)."""
    where = tmp_path_factory.mktemp("names")
    os.symlink(shutil.which("sleep"), os.path.join(os.fsencode(where), COMM))
    proc = subprocess.Popen([b"unshare", b"--uts", b"--", b"./" + COMM, b"300"], cwd=where)
    for _ in range(200):
        if Path(f"/proc/{proc.pid}/comm").read_bytes() == COMM + b"\n":
            break
        time.sleep(0.02)
    yield proc
    proc.kill()
    proc.wait()


def test_a_cgroup_name_cannot_hold_a_newline(cgroup2):
    """What splitting /proc/<pid>/cgroup at "\\n" alone relies on (kernel/cgroup/cgroup.c cgroup_mkdir())."""
    with pytest.raises(OSError) as e:
        os.mkdir(os.path.join(cgroup2, b"nl\nname"))
    assert e.value.errno == 22  # EINVAL


def test_ls_shows_every_hostile_name_escaped(boxes, hostile_process):
    table = terminal_safe(run("ls", "--type", "uts").stdout)
    for box in boxes:
        [row] = [line for line in table.splitlines() if line.startswith(f"{box.uts} ")]
        assert box.label in row, row
    uts = os.stat(f"/proc/{hostile_process.pid}/ns/uts").st_ino
    [row] = [line for line in table.splitlines() if line.startswith(f"{uts} ")]
    assert f" ./{safe_comm(COMM)} 300" in row, row  # the command line, escaped by safe_comm


def test_ls_json_and_tree_with_hostile_names(boxes, hostile_process):
    doc = json.loads(run("ls", "--json").stdout)
    by_key = {(n["type"], n["inode"]): n for n in doc["namespaces"]}
    for box in boxes:
        assert by_key[("uts", box.uts)]["container"] == box.expected
    uts = by_key[("uts", os.stat(f"/proc/{hostile_process.pid}/ns/uts").st_ino)]
    assert uts["comm"] == safe_comm(COMM) and uts["command"] == f"./{safe_comm(COMM)} 300"
    tree = terminal_safe(run("ls", "--tree").stdout)
    for box in boxes:
        assert f"uts:[{box.uts}]" in tree and f"[{box.label}]" in tree


# for each box (pid, cgroup path): a setns into its uts namespace from the host, then an unshare
# from inside it (a shell that moves itself into the box's cgroup first)
INTO_AND_FROM = 'while [ $# -gt 0 ]; do nsenter -t "$1" --uts true; ' \
                'sh -c \'echo $$ > "$0/cgroup.procs" && exec unshare --ipc true\' "$2"; shift 2; done'


def test_watch_names_each_container_as_ls_does(boxes):
    """A setns into each box's namespace (its container: the namespace's, from /proc) and an unshare
    in each box (its container: the caller's cgroup v2 id's path) name the container `ls --json`
    gives the box's namespace: str.splitlines() cut ls's names at \\x1e, \\x85 or U+2028, not
    the cgroup id's. The table shows ls's label."""
    argv = [b"sh", b"-c", INTO_AND_FROM.encode(), b"sh"]
    for box in boxes:
        argv += [str(box.proc.pid).encode(), box.path]
    res = run("watch", "--json", "--op", "setns,unshare", "-o", "-", "--", *argv)
    recs = [json.loads(line) for line in res.stdout.decode().splitlines()]
    assert [r["op"] for r in recs] == ["setns", "unshare"] * len(boxes)
    ls = {n["inode"]: n for n in json.loads(run("ls", "--json", "--type", "uts").stdout)["namespaces"]}
    for box, into, inside in zip(boxes, recs[::2], recs[1::2]):
        assert into["target"]["inode"] == box.uts
        assert into["target"]["container"] == inside["container"] == ls[box.uts]["container"] == box.expected, \
            box.label
    table = terminal_safe(run("watch", "--op", "setns,unshare", "-o", "-", "--", *argv).stdout)
    for box in boxes:
        assert "->" + box.label in table and f" {box.label}\n" in table, box.label


def test_record_and_demo_beside_hostile_names(boxes, tmp_path):
    """The session snapshots read every process's containers: with the boxes there, a record is
    written whole, and replays with their labels."""
    box = boxes[0]
    session = tmp_path / "watch.jsonl"
    run("watch", "--record", str(session), "--", "nsenter", "-t", str(box.proc.pid), "--uts", "true")
    lines = session.read_text().splitlines()
    assert len(lines) > 2 and json.loads(lines[-1])["kind"] == "end", lines[-1][:200]
    shown = terminal_safe(run("show", str(session)).stdout)
    assert "->" + box.label in shown
    demo = tmp_path / "demo.jsonl"
    run("demo", "--flags", "NEWUTS", "--record", str(demo), cwd=tmp_path)
    assert json.loads(demo.read_text().splitlines()[-1])["kind"] == "end"


def test_a_namespace_bind_mounted_at_a_hostile_path(tmp_path):
    """Mount points are bytes too (mountinfo escapes only space, tab, newline and backslash): `ls`
    names the bind mount that holds a namespace, escaped, and `watch` (which reads mountinfo for the
    cgroup2 mount) does not mind it."""
    pin = os.path.join(os.fsencode(tmp_path), b"\xff\x1b]0;x\x07 back\\slash\tz")
    open(pin, "wb").close()
    subprocess.run([b"unshare", b"--uts=" + pin, b"true"], check=True)
    try:
        uts = os.stat(pin).st_ino
        doc = {(n["type"], n["inode"]): n for n in json.loads(run("ls", "--json").stdout)["namespaces"]}
        # (another nstrace's look may hold it open for a moment too: "fd N of pid P")
        assert f"bind mount {safe_comm(pin)} (mnt:[{os.stat('/proc/self/ns/mnt').st_ino}])" in doc[("uts", uts)]["held_by"]
        table = terminal_safe(run("ls", "--type", "uts").stdout)
        [row] = [line for line in table.splitlines() if line.startswith(f"{uts} ")]
        assert "(bind mount /" in row, row  # cut at 60 characters: the table's COMMAND column
        run("watch", "--", "unshare", "--uts", "true")
    finally:
        subprocess.run([b"umount", pin], check=True)


def test_nstrace_run_under_a_hostile_name(tmp_path):
    """exec names a task after the file it ran (a symlink, here): nstrace's own comm in its
    /proc/self/status, which it reads for its capabilities, is not UTF-8 either."""
    alias = os.path.join(os.fsencode(tmp_path), b"\xff\x1b[2J")
    os.symlink(os.fsencode(NSTRACE), alias)
    for args in ([b"watch", b"--", b"unshare", b"--uts", b"true"], [b"ls", b"--type", b"uts"]):
        res = subprocess.run([alias, *args], capture_output=True, timeout=120)
        assert res.returncode == 0 and b"Traceback" not in res.stderr, res.stderr.decode(errors="replace")


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
    probe = ("import sys; from nstrace.cli import console; console.status('tracing live'); "
             "print(sorted(m for m in sys.modules if m.startswith('nstrace.view'))); console.status('\\x1b[2J'); "
             "print(sorted(m for m in ('nstrace.view.table', 'nstrace.view.reports', 'tabulate') if m in sys.modules))")
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
