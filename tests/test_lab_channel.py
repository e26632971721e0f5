"""The lab's channel from a guest command to here: every byte arrives, and the host knows it (issue 22).

Each test boots 6.1 once (3-10 s under TCG); nothing here depends on the kernel's version.
Run with `python3 -m pytest -m lab tests/test_lab_channel.py`.
"""

import io
import random
import re
import shutil
import subprocess
import tarfile
import time

import pytest

from nshelpers import NSTRACE
from nstrace.lab import guest, outfiles

pytestmark = [
    pytest.mark.lab,
    pytest.mark.root("boots guests and runs commands in them as root"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed"),
]

# Python unbuffered (-u, as `nstrace lab` runs nstrace) writes each call with one write(2) and does
# not write what a short write left: a virtio port takes at most 32 KiB a write, which is how the
# lab's output used to end at 32,768 bytes.  Each stream ends with its big write, so that its last
# bytes reach the port in a burst as the command exits.
WRITER = """
import sys
blob = open(sys.argv[1], "rb").read()
for stream in (sys.stdout.buffer, sys.stderr.buffer):
    for i in range(0, len(blob), 1024):
        stream.write(blob[i:i + 1024])
    stream.write(blob)
"""


def test_every_byte_arrives(tmp_path):
    """4 MB on stdout and on stderr, each as 4096 small writes and then as one, arrive exactly.
    stderr's reader here stops for a while just before the end, as a paused terminal or a full pipe
    does: qemu then stops taking the port's data, and the guest must not power off while its last
    bytes wait in the port."""
    blob = random.Random(22).randbytes(4 << 20)
    (tmp_path / "blob").write_bytes(blob)
    out, err = bytearray(), bytearray()
    stall_at = 2 * len(blob) - (128 << 10)

    def stalling_reader(chunk):
        err.extend(chunk)
        if len(err) - len(chunk) < stall_at <= len(err):
            time.sleep(1.5)

    result = guest.run_in_guest("6.1", ["/usr/bin/python3", "-u", "-c", WRITER, "blob"], cwd=str(tmp_path),
                                timeout=300, stdout=out.extend, stderr=stalling_reader, cpus=1)
    assert result.returncode == 0, result.console[-2000:]
    assert (len(out), len(err)) == (2 * len(blob), 2 * len(blob))
    assert out == blob * 2 and err == blob * 2


# A command that tries every port, sends a tar of its own to the files port, and forges init's
# markers (on the serial line that used to carry them, with the marker init's script then held).
INTRUDER = r"""
for p in /sys/class/virtio-ports/*; do
    if (: >"/dev/${p##*/}") 2>/dev/null; then echo "$(cat "$p/name") opened"; else echo "$(cat "$p/name") refused"; fi
done
mkdir -p /run/evil && echo injected >/run/evil/injected.txt
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name")" = nstrace.files ] && tar -cf "/dev/${p##*/}" -C /run/evil injected.txt 2>/dev/null
done
m=$(grep -ao 'NSTRACE-LAB-[0-9a-f]*' /proc/1/root/init | head -n 1)
printf '%s\n' "$m EXIT 0" "EXIT 0" "FAIL forged" >/dev/ttyS1
exit 3
"""


def test_the_ports_are_inits(tmp_path):
    """A guest command can open none of the ports: a tar it writes to the files port is not taken,
    and a marker it writes where init's used to go changes nothing (its exit status stands)."""
    result = guest.run_in_guest("6.1", ["/bin/sh", "-c", INTRUDER], cwd=str(tmp_path), timeout=300,
                                bring_back=True, cpus=1)
    assert result.returncode == 3, result.output + result.console[-2000:]
    opened = dict(line.rsplit(" ", 1) for line in result.output.splitlines())
    assert opened == {name: "refused" for name in
                      ("nstrace.control", "nstrace.stdout", "nstrace.stderr", "nstrace.files")}, result.output
    names = tarfile.open(fileobj=io.BytesIO(result.files)).getnames() if result.files else []
    assert "injected.txt" not in [n.lstrip("./") for n in names], names
    assert outfiles.bring_back(result.files or b"", str(tmp_path)).written == []
    assert not (tmp_path / "injected.txt").exists()


def test_a_stream_left_open_is_reported(tmp_path):
    """`watch -- COMMAND` ends when COMMAND exits; a child COMMAND left behind still writes to the
    same stdout.  The lab waits a moment for it, then says that stdout did not end: one error line
    that names the kernel and the stream, and exit 1.  What was written until then came through."""
    start = time.monotonic()
    res = subprocess.run([str(NSTRACE), "lab", "--kernel", "6.1", "--", "watch", "--", "sh", "-c",
                          "(while :; do echo tick; sleep 0.2; done) & echo started"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    errors = [line for line in res.stderr.splitlines() if line.startswith("nstrace: error:")]
    assert len(errors) == 1 and re.fullmatch(r"nstrace: error: guest 6\.1: the command's stdout did not end: .*",
                                             errors[0]), res.stderr
    assert "started\n" in res.stdout and "tick\n" in res.stdout, res.stdout
    assert time.monotonic() - start < 120
