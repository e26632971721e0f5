"""`nstrace watch -- COMMAND` with a terminal and with signals, as people run it: a REPL whose Ctrl-C
is its own, however often it comes; a signal sent to nstrace alone, passed on; a trace that ends
before its COMMAND (--duration), saying so. The terminal is a real pty, the controlling terminal of
a session of its own, and ^C goes through its line discipline."""

import fcntl
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time

import pytest

from nshelpers import NSTRACE
from test_cli import prog_ids_held_by, wait_gone

pytestmark = pytest.mark.root("loads BPF programs")

UNSHARE_UTS = b"import ctypes; ctypes.CDLL(None).unshare(0x04000000)\n"  # CLONE_NEWUTS; os.unshare is 3.12+


def _take_terminal():
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """argv in a session of its own with a pty as its controlling terminal (it leads the session,
    so its process group is the terminal's foreground group); what it writes, read as it comes."""

    def __init__(self, argv):
        self.master, follower = os.openpty()
        self.proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower,
                                     start_new_session=True, preexec_fn=_take_terminal)
        os.close(follower)
        self.text = b""
        self.seen = 0

    def expect(self, pattern, timeout=20):
        """Read until pattern (bytes, a regex) appears after what an earlier expect() took."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.compile(pattern).search(self.text, self.seen)
            if m:
                self.seen = m.end()
                return m
            left = deadline - time.monotonic()
            assert left > 0, f"{pattern!r} not seen within {timeout} s: {self.text.decode(errors='replace')}"
            self._read(left)

    def _read(self, timeout):
        if select.select([self.master], [], [], min(timeout, 0.1))[0]:
            try:
                self.text += os.read(self.master, 65536)
            except OSError:  # EIO: every process with the follower open has gone
                time.sleep(0.05)

    def send(self, data):
        os.write(self.master, data)

    def wait(self, timeout=20):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._read(0.05)
        self._read(0.2)
        return self.proc.wait(timeout=1)

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal():
    made = []
    yield lambda argv: made.append(Terminal(argv)) or made[-1]
    for t in made:
        t.close()


def test_ctrl_c_in_a_repl_is_the_repls_however_often_it_comes(terminal):
    """^C goes to the terminal's whole foreground group, nstrace and COMMAND: the REPL prints
    KeyboardInterrupt and goes on, and so does the trace (a call made after it is a row)."""
    t = terminal([str(NSTRACE), "watch", "--", sys.executable, "-q"])
    t.expect(rb"tracing live")
    t.expect(rb">>> ")
    for _ in range(3):
        _interrupt(t)
    t.send(UNSHARE_UTS)
    t.expect(rb"python\S* +\d+ +\d+ +unshare +NEWUTS")
    t.send(b"raise SystemExit(5)\n")
    assert t.wait() == 5, t.text.decode(errors="replace")
    assert re.search(rb"command: pid \d+, exit status 5\r?\n", t.text), t.text.decode(errors="replace")


def _interrupt(repl):
    """^C to the REPL. Python's own REPL can miss a SIGINT that comes between its prompt and its
    wait for input (the handler runs, then select() waits on): it then acts on it with the next
    line, so an empty line follows when no KeyboardInterrupt comes (seen without nstrace too)."""
    repl.send(b"\x03")
    try:
        repl.expect(rb"KeyboardInterrupt\s+>>> ", timeout=3)
    except AssertionError:
        repl.send(b"\n")
        repl.expect(rb"KeyboardInterrupt\s+>>> ")


def test_the_rows_come_between_the_commands_lines_as_the_calls_happen(terminal):
    """One terminal for both: each row is there before COMMAND's next line, not after its exit."""
    script = "echo one; unshare --uts true; sleep 0.5; echo two; unshare --ipc true; sleep 0.5; echo three"
    t = terminal([str(NSTRACE), "watch", "--", "sh", "-c", script])
    assert t.wait() == 0, t.text.decode(errors="replace")
    where = [t.text.find(what) for what in (b"one\r\n", b"NEWUTS", b"two\r\n", b"NEWIPC", b"three\r\n")]
    assert -1 not in where and where == sorted(where), t.text.decode(errors="replace")


def test_ctrl_c_for_a_command_outside_nstraces_group_is_passed_on(terminal):
    """COMMAND made a session of its own (setsid without a fork: it is no group leader), so the
    terminal's ^C reaches nstrace alone: it is passed on, as a kill's would be, and a second ends
    the watch."""
    trap = 'trap "echo got INT" INT; echo ready $$; while :; do sleep 0.05; done'
    t = terminal([str(NSTRACE), "watch", "--", "setsid", "sh", "-c", trap])
    command = int(t.expect(rb"ready (\d+)").group(1))
    try:
        t.send(b"\x03")
        t.expect(rb"got INT")
        t.send(b"\x03")
        assert t.wait() == 128 + signal.SIGINT, t.text.decode(errors="replace")
        assert b"still running when the trace ended (a second signal to nstrace)" in t.text
    finally:  # it runs on in a session of its own, as it should: the test ends it
        os.kill(command, signal.SIGKILL)


def test_a_watch_without_a_command_ends_at_ctrl_c_within_a_second(terminal):
    t = terminal([str(NSTRACE), "watch"])
    t.expect(rb"tracing live")
    time.sleep(0.2)
    asked = time.monotonic()
    t.send(b"\x03")
    assert t.wait() == 0, t.text.decode(errors="replace")
    assert time.monotonic() - asked < 1.0
    assert b"lost events:" in t.text


def _block_stops():
    signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP))


def test_a_watch_started_with_its_stop_signals_blocked_still_stops():
    """A blocked mask survives exec: whoever left SIGINT blocked in nstrace's parent must not make a
    watch unstoppable."""
    proc = subprocess.Popen([str(NSTRACE), "watch"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_block_stops)
    try:
        assert "tracing live" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=5) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_signal_to_nstrace_alone_is_passed_on_and_a_second_ends_the_watch(tmp_path):
    """kill -INT nstrace: COMMAND gets the SIGINT (its trap runs) and the watch goes on; a second
    signal ends it at once, the programs detached, COMMAND running on as the summary says."""
    out, err = tmp_path / "out", tmp_path / "err"
    trap = 'trap "echo got INT" INT; trap "echo got TERM" TERM; echo ready; while :; do sleep 0.05; done'
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([str(NSTRACE), "watch", "--", "sh", "-c", trap], stdout=o, stderr=e,
                                start_new_session=True)
    try:
        _wait_for_text(out, "ready")
        ours = prog_ids_held_by(proc.pid)
        proc.send_signal(signal.SIGINT)
        _wait_for_text(out, "got INT")
        assert proc.poll() is None, err.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert ours and not wait_gone(ours, timeout=3)
        _wait_for_text(out, "got TERM")  # passed on too: COMMAND decides
        text = err.read_text()
        assert re.search(r"SIGINT from pid \d+ passed on to sh \(pid ", text), text
        assert re.search(r"command: pid (\d+), still running when the trace ended \(a second signal to nstrace\)",
                         text), text
        assert "exit status None" not in text
        assert "runs on, not waited for: SIGTERM sent to nstrace a second time" in text
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_duration_ends_the_trace_and_the_summary_says_the_command_runs_on(tmp_path):
    """The summary is written when the trace ends: COMMAND still runs then, and says so; its
    status comes in a line of its own once it exits, and is nstrace's."""
    proc = subprocess.Popen([str(NSTRACE), "watch", "--duration", "0.5", "--", "sh", "-c",
                             "unshare --uts true; sleep 3; exit 3"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    text = proc.stderr.readline()
    try:
        assert "tracing live" in text
        ours = prog_ids_held_by(proc.pid)
        for line in proc.stderr:
            text += line
            if "runs on, no longer traced" in line:
                break
        assert ours and not wait_gone(ours, timeout=2), "detached only at COMMAND's exit"
        assert proc.wait(timeout=10) == 3
        text += proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert re.search(r"command: pid \d+, still running when the trace ended \(--duration passed\)", text), text
    assert "exit status None" not in text
    assert re.search(r"sh \(pid \d+\) exited: exit status 3", text), text


def test_the_summary_of_a_command_killed_by_a_signal_names_it():
    res = subprocess.run([str(NSTRACE), "watch", "--", "sh", "-c", "kill -TERM $$"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 128 + signal.SIGTERM, res.stderr
    assert re.search(r"command: pid \d+, killed by SIGTERM \(exit status 143\)", res.stderr), res.stderr


def _wait_for_text(path, text, timeout=20):
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text!r} not in {path} within {timeout} s: {path.read_text()!r}"
        time.sleep(0.02)
