"""What a lab guest's command wrote comes back here whole, or is listed with why (issue 22).

The guest's tar is made here as the guest makes it (nstrace/lab/initramfs.py): a real overlay
over a working directory collects what a command does in its upper layer, and busybox tar
sends that layer. Names no real command leaves in an upper layer are written with tarfile.
bring_back runs in a child Python under a timeout: a write that blocks fails the test instead
of hanging it. User nobody (setpriv) plants FIFOs and sockets where the files land.
"""

import dataclasses
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from nshelpers import ELSEWHERE
from test_trusted_paths import LISTENER, READER, as_nobody, nobody_at, sticky  # noqa: F401 - a fixture

pytestmark = pytest.mark.root("mounts overlays and plays root against user nobody")

BRING_BACK = """
import dataclasses, json, sys
from nstrace.lab import outfiles
brought = outfiles.bring_back(sys.stdin.buffer.read(), sys.argv[1], sys.argv[2] or None)
print(json.dumps(dataclasses.asdict(brought)))
"""


def bring_back(data, cwd, label=""):
    res = subprocess.run([sys.executable, "-c", BRING_BACK, str(cwd), label], input=data, capture_output=True,
                         timeout=60, cwd=ELSEWHERE)
    assert res.returncode == 0, res.stderr.decode()
    return json.loads(res.stdout)


@dataclasses.dataclass
class Guest:
    here: Path  # the working directory on this machine
    there: Path  # the same directory as the guest's command sees it
    upper: Path

    def run(self, script):
        subprocess.run(["sh", "-ec", script], cwd=self.there, check=True)

    def tar(self):
        return subprocess.run(["/bin/busybox", "tar", "-cf", "-", "-C", str(self.upper), "."], check=True,
                              capture_output=True).stdout


@pytest.fixture
def guest(tmp_path):
    """tmp_path/here, with an overlay over it as `nstrace lab` mounts one in its guest."""
    dirs = {name: tmp_path / name for name in ("here", "there", "upper", "work")}
    for path in dirs.values():
        path.mkdir()
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={dirs['here']},upperdir={dirs['upper']},workdir={dirs['work']}", str(dirs["there"])],
                   check=True)
    try:
        yield Guest(dirs["here"], dirs["there"], dirs["upper"])
    finally:
        subprocess.run(["umount", str(dirs["there"])], check=True)


def tar_of(*members):
    """A tar of (name, content) regular files."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return out.getvalue()


def why(entries):
    """{name: why} of "name: why" entries."""
    return dict(entry.split(": ", 1) for entry in entries)


def test_a_hard_linked_pair_comes_back_as_two_files(guest):
    guest.run("echo one > a; ln a b")
    brought = bring_back(guest.tar(), guest.here)
    assert sorted(map(tuple, brought["written"])) == [("a", 4), ("b", 4)], brought
    for name in ("a", "b"):
        assert (guest.here / name).read_text() == "one\n" and (guest.here / name).stat().st_nlink == 1
    brought = bring_back(guest.tar(), guest.here, "6.1")  # several kernels: each name renamed
    assert sorted(map(tuple, brought["written"])) == [("a-6.1", 4), ("b-6.1", 4)], brought


def test_every_entry_not_brought_back_is_listed_with_why(guest):
    (guest.here / "gone").write_text("kept here\n")
    guest.run("rm gone; ln -s kept link; mkfifo fifo; mknod null c 1 3; mkdir -p new/deeper; echo x > file")
    brought = bring_back(guest.tar(), guest.here)
    assert brought["written"] == [["file", 2]] and not brought["failed"], brought
    assert why(brought["skipped"]) == {
        "gone": "removed or renamed in the guest (nothing is removed here)",
        "link": "a symlink (none is made here)",
        "fifo": "a FIFO (none is made here)",
        "null": "a device (none is made here)",
        "new": "a directory in the guest that is none here (none is made)",
        "new/deeper": "a directory in the guest that is none here (none is made)",
    }
    assert (guest.here / "gone").read_text() == "kept here\n"
    assert sorted(p.name for p in guest.here.iterdir()) == ["file", "gone"]


def test_no_symlink_here_is_followed_not_even_roots(guest, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("keep\n")
    (guest.here / "tmplink").symlink_to(outside)
    (guest.here / "last").symlink_to(outside / "f")
    # the guest replaces them by a directory and a file of its own: the tar names tmplink/x and last
    guest.run("rm tmplink last; mkdir tmplink; echo guest > tmplink/x; echo guest > last")
    brought = bring_back(guest.tar(), guest.here)
    failed = why(brought["failed"])
    assert "tmplink is a symlink, and a name from outside is never followed through one" in failed["tmplink/x"]
    assert "it is a symlink" in failed["last"]
    assert why(brought["skipped"])["tmplink"] == "a directory in the guest that is none here (none is made)"
    assert not brought["written"], brought
    assert sorted(p.name for p in outside.iterdir()) == ["f"] and (outside / "f").read_text() == "keep\n"


def test_a_fifo_or_socket_here_is_refused_without_blocking(sticky):
    for name in ("quiet.txt", "read.txt"):
        as_nobody("mkfifo", str(sticky / name))
    with nobody_at(READER, sticky / "read.txt") as got, nobody_at(LISTENER, sticky / "sock.txt"):
        brought = bring_back(tar_of(("quiet.txt", b"a"), ("read.txt", b"b"), ("sock.txt", b"c")), sticky)
    failed = why(brought["failed"])
    assert sorted(failed) == ["quiet.txt", "read.txt", "sock.txt"], brought
    assert all("it is a FIFO, not a regular file" in failed[n] for n in ("quiet.txt", "read.txt"))
    assert "it is a socket" in failed["sock.txt"] and got == [0]


def test_what_the_guest_only_copied_up_is_unchanged(guest):
    (guest.here / "same").write_text("x\n")
    (guest.here / "changed").write_text("old\n")
    guest.run("touch same; echo new > changed; : > empty")
    brought = bring_back(guest.tar(), guest.here)
    assert brought["unchanged"] == ["same"], brought
    assert sorted(map(tuple, brought["written"])) == [("changed", 4), ("empty", 0)]
    assert (guest.here / "changed").read_text() == "new\n" and (guest.here / "empty").read_bytes() == b""
