"""No other user can redirect what nstrace writes as root (issue 14, "Found" 2-4).

Each test plays the attacker for real: user nobody (setpriv) plants symlinks and files in a
real sticky, world-writable directory or in a state directory another user could write, and
root's nstrace runs as a user runs it. /run/nstrace and /var/cache/nstrace are replaced by
private copies only through their own knobs (bootcache.DIR, Launcher(state_dir=...),
NSTRACE_LAB_CACHE); the real /run/nstrace is only looked at.
"""

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from nstrace.bpf import loader
from nstrace.errors import UnsafePath

from nshelpers import ELSEWHERE, NSTRACE, loader_programs, programs_left_after

pytestmark = pytest.mark.root("plays root against user nobody")

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def as_nobody(*argv, check=True):
    return subprocess.run([*NOBODY, *argv], capture_output=True, text=True, check=check)


def nstrace(*args, cwd=None, umask=None, env=None, timeout=120, **how):
    cmd = [str(NSTRACE), *map(str, args)]
    if umask is not None:
        cmd = ["sh", "-c", f'umask {umask:03o}; exec "$@"', "sh", *cmd]
    if "stdout" not in how:
        how["capture_output"] = True
    return subprocess.run(cmd, text=True, timeout=timeout, cwd=cwd, env=env, **how)


# User nobody's side of a FIFO: open for reading from the start (so a writer's open succeeds at
# once), counting every byte that arrives until its stdin closes.
READER = """
import os, select, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
print("ready", flush=True)
got = 0
while True:
    ready = select.select([0, fd], [], [])[0]
    if fd in ready:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            data = None
        got += len(data or b"")
        if not data:
            time.sleep(0.02)  # a writer came and left: the FIFO reads as ended from now on
    if 0 in ready:
        break
print(got)
"""

# User nobody listening on a unix socket until its stdin closes.
LISTENER = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen()
print("ready", flush=True)
sys.stdin.read()
print(0)
"""


@contextmanager
def nobody_at(script, path):
    """User nobody runs script on path while the block runs; the list yielded gets what it counted."""
    proc = subprocess.Popen([*NOBODY, "/usr/bin/python3", "-c", script, str(path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    got = []
    try:
        assert proc.stdout.readline() == "ready\n"
        yield got
    finally:
        proc.stdin.close()
        got.append(int(proc.stdout.read() or -1))
        proc.wait(timeout=10)


def refused(res, code=7):
    assert res.returncode == code, (res.returncode, res.stderr)
    assert res.stderr.count("nstrace: error: ") == 1 and "Traceback" not in res.stderr, res.stderr
    return res.stderr


def _root_dir(prefix, mode):
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(mode)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def sticky():
    """A real shared directory like /tmp: root's, mode 1777."""
    yield from _root_dir("nstrace-sticky-", 0o1777)


@pytest.fixture
def shared_tmp():
    """A directory users nobody and _apt can pass through (pytest's tmp_path is root's 0700): root's, 0755."""
    yield from _root_dir("nstrace-trusted_paths-", 0o755)


@pytest.fixture
def victim(tmp_path):
    """A root-only file an attacker would like root to overwrite."""
    path = tmp_path / "root-only"
    path.write_text("precious\n")
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def session_file():
    """A small real session (two unshares), world-readable."""
    where = Path(tempfile.mkdtemp(prefix="nstrace-trusted_paths-"))
    where.chmod(0o755)
    path = where / "s.jsonl"
    watch = subprocess.Popen([str(NSTRACE), "watch", "--comm", "unshare", "--count", "2", "--record", str(path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert "tracing live" in watch.stderr.readline()
    for _ in range(2):
        subprocess.run(["unshare", "--uts", "true"], check=True)
    assert watch.wait(timeout=30) == 0, watch.stderr.read()
    path.chmod(0o644)
    yield path
    shutil.rmtree(where)


# --- output files (render -o, demo --picture, --record) --------------------------------------

def test_render_refuses_another_users_symlink_in_a_sticky_directory(sticky, victim, session_file):
    as_nobody("ln", "-s", str(victim), str(sticky / "out.json"))
    err = refused(nstrace("render", str(session_file), "--format", "perfetto", "-o", str(sticky / "out.json")))
    assert "symlink of uid 65534" in err
    assert victim.read_text() == "precious\n"


def test_render_refuses_a_symlinked_directory_on_the_way(sticky, tmp_path, session_file):
    target = tmp_path / "etc-like"
    target.mkdir()
    (target / "passwd").write_text("root:x:0:0\n")
    as_nobody("ln", "-s", str(target), str(sticky / "d"))
    refused(nstrace("render", str(session_file), "--format", "perfetto", "-o", str(sticky / "d" / "passwd")))
    assert (target / "passwd").read_text() == "root:x:0:0\n"


def test_render_refuses_another_users_file_in_a_sticky_directory(sticky, session_file):
    as_nobody("sh", "-c", f"echo mine > {sticky}/out.json")
    err = refused(nstrace("render", str(session_file), "--format", "perfetto", "-o", str(sticky / "out.json")))
    assert "belongs to uid 65534" in err
    assert (sticky / "out.json").read_text() == "mine\n"  # not even truncated


def test_a_file_with_other_hard_links_is_not_written_in_a_shared_directory(sticky, victim, session_file):
    # fs.protected_hardlinks keeps nobody from linking root's files here; a machine without it
    # (or a link made before) must not turn `-o` into a write through the other name
    os.link(victim, sticky / "out.json")
    err = refused(nstrace("render", str(session_file), "--format", "perfetto", "-o", str(sticky / "out.json")))
    assert "2 hard links" in err and victim.read_text() == "precious\n"


def test_the_callers_own_symlink_is_followed(sticky, tmp_path, session_file):
    os.symlink(tmp_path / "real.json", sticky / "mine.json")
    res = nstrace("render", str(session_file), "--format", "perfetto", "-o", str(sticky / "mine.json"))
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "real.json").read_text())["traceEvents"]
    res = nstrace("render", str(session_file), "--format", "perfetto", "-o", "-")  # /proc's own links
    assert res.returncode == 0 and json.loads(res.stdout)["traceEvents"], res.stderr


def test_watch_record_refuses_another_users_symlink(sticky, victim):
    as_nobody("ln", "-s", str(victim), str(sticky / "session.jsonl"))
    err = refused(nstrace("watch", "--duration", "0.2", "--record", str(sticky / "session.jsonl")))
    assert "session file" in err and victim.read_text() == "precious\n"


def test_demo_picture_default_path_refuses_another_users_symlink(sticky, victim):
    # demo writes ./nstrace-demo.html by default: run it in the shared directory
    as_nobody("ln", "-s", str(victim), str(sticky / "nstrace-demo.html"))
    refused(nstrace("demo", "--flags", "NEWUTS", "--op", "unshare", "--picture", "html", cwd=sticky))
    assert victim.read_text() == "precious\n"
    as_nobody("ln", "-s", str(victim), str(sticky / "run.jsonl"))
    refused(nstrace("demo", "--flags", "NEWUTS", "--op", "unshare", "--record", str(sticky / "run.jsonl")))
    assert victim.read_text() == "precious\n"


# --- what a path ends at: FIFOs, sockets, devices (issue 22) -----------------------------------------

def test_a_fifo_is_refused_at_once_with_or_without_a_reader(sticky, session_file):
    fifo = sticky / "out.svg"
    as_nobody("mkfifo", str(fifo))
    render = ("render", session_file, "--format", "svg", "-o", fifo)
    assert "it is a FIFO" in refused(nstrace(*render, timeout=60))
    with nobody_at(READER, fifo) as got:
        assert "it is a FIFO" in refused(nstrace(*render, timeout=60))
    assert got == [0]


def test_watch_record_into_a_fifo_is_refused_and_detaches(sticky):
    fifo = sticky / "s.jsonl"
    as_nobody("mkfifo", str(fifo))
    before = set(loader_programs())
    with nobody_at(READER, fifo) as got:
        err = refused(nstrace("watch", "--record", fifo, "--", "true", timeout=60))
    assert "session file" in err and "it is a FIFO" in err and got == [0]
    assert not programs_left_after(before)


def test_demo_default_picture_refuses_a_fifo_planted_in_a_shared_cwd(sticky):
    as_nobody("mkfifo", str(sticky / "nstrace-demo.html"))
    with nobody_at(READER, sticky / "nstrace-demo.html") as got:
        err = refused(nstrace("demo", "--flags", "NEWUTS", "--op", "unshare", "--picture", "html", cwd=sticky))
    assert "nstrace-demo.html: it is a FIFO" in err and got == [0]


def test_demo_refuses_its_picture_path_before_it_runs(sticky, tmp_path):
    """An output nstrace may not write is said before the demo's work, not after it: the session it
    would record is never begun."""
    as_nobody("mkfifo", str(sticky / "demo.html"))
    record = tmp_path / "demo.jsonl"
    err = refused(nstrace("demo", "--flags", "NEWUTS", "--op", "unshare", "--record", record, "--picture", "html",
                          "-o", sticky / "demo.html"))
    assert "demo.html: it is a FIFO" in err
    assert not record.exists()


def test_sockets_and_other_devices_are_refused(sticky, session_file):
    with nobody_at(LISTENER, sticky / "out.json"):
        err = refused(nstrace("render", session_file, "--format", "perfetto", "-o", sticky / "out.json"))
    assert "it is a socket" in err
    err = refused(nstrace("render", session_file, "--format", "perfetto", "-o", "/dev/zero"))
    assert "a device, neither a terminal nor /dev/null" in err


def test_a_terminal_and_dev_null_named_explicitly_are_written(session_file):
    for args in (("render", session_file, "--format", "svg", "-o", "/dev/null"),
                 ("watch", "--duration", "0.2", "--record", "/dev/null")):
        res = nstrace(*args)
        assert res.returncode == 0, res.stderr
    master, slave = os.openpty()
    shown = bytearray()
    drain = threading.Thread(target=_drain, args=(master, shown))
    drain.start()
    try:
        res = nstrace("render", session_file, "--format", "perfetto", "-o", os.ttyname(slave))
    finally:
        os.close(slave)
        drain.join(timeout=10)
        os.close(master)
    assert res.returncode == 0, res.stderr
    assert json.loads(shown.replace(b"\r\n", b"\n"))["traceEvents"]


def _drain(master, into):
    """Read a pty's master until its slave is closed (EIO)."""
    try:
        while chunk := os.read(master, 65536):
            into += chunk
    except OSError:
        pass


def test_dev_stdout_writes_through_the_descriptor_it_names(tmp_path, session_file):
    # what the shell opened is written as it was opened: appended to here, not truncated
    log = tmp_path / "log"
    log.write_text("before\n")
    with open(log, "a") as out:
        res = nstrace("render", session_file, "--format", "perfetto", "-o", "-", stdout=out,
                      stderr=subprocess.PIPE)
    assert res.returncode == 0, res.stderr
    first, rest = log.read_text().split("\n", 1)
    assert first == "before" and json.loads(rest)["traceEvents"]
    # and one open for reading is not reopened for writing over the input
    with open(log) as given:
        err = refused(nstrace("render", session_file, "--format", "perfetto", "-o", "/dev/stdin", stdin=given))
    assert "open for reading only" in err and log.read_text().startswith("before\n")


def test_descriptors_kept_are_blocking_again(tmp_path):
    from nstrace.linux import trusted_paths
    old = tmp_path / "old"
    old.write_text("old content")
    master, slave = os.openpty()
    try:
        for path in (tmp_path / "new", old, "/dev/null", os.ttyname(slave)):
            fd = trusted_paths.create_output(str(path))
            try:
                assert os.get_blocking(fd), path
            finally:
                os.close(fd)
    finally:
        os.close(slave)
        os.close(master)
    assert old.read_text() == ""


# --- /run/nstrace: the boot cache -----------------------------------------------------------------

BOOTCACHE = """
import os, sys
from nstrace.bpf import bootcache, corebtf, loader
bootcache.DIR = sys.argv[1]
print(corebtf.ensure(loader.OBJECT_PATH))
"""


def run_bootcache(directory, umask=0o022):
    return subprocess.run(["sh", "-c", f'umask {umask:03o}; exec "$@"', "sh", sys.executable, "-c", BOOTCACHE,
                           str(directory)], capture_output=True, text=True, cwd=ELSEWHERE, timeout=60)


def test_bootcache_is_root_only_whatever_the_umask(tmp_path):
    where = tmp_path / "run" / "nstrace"
    res = run_bootcache(where, umask=0)
    assert res.returncode == 0, res.stderr
    copy = Path(res.stdout.strip())
    assert copy.parent == where
    for path, mode in ((where.parent, 0o755), (where, 0o755), (copy, 0o644)):
        st = path.lstat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, mode), (path, oct(st.st_mode))


def test_bootcache_planted_by_another_user_is_refused(shared_tmp):
    where = shared_tmp / "nstrace"
    where.mkdir()
    where.chmod(0o777)  # what an older nstrace made under umask 000
    first = run_bootcache(where)
    assert first.returncode != 0 and "UnsafePath" in first.stderr and "can be written by other users" in first.stderr
    # nobody plants the copy the next load would read: refused, not handed to libbpf
    where.chmod(0o755)
    made = run_bootcache(where)
    assert made.returncode == 0, made.stderr
    copy = Path(made.stdout.strip())
    copy.unlink()
    where.chmod(0o777)
    as_nobody("cp", str(loader.OBJECT_PATH), str(copy))
    where.chmod(0o755)
    planted = run_bootcache(where)
    assert planted.returncode != 0 and "belongs to uid 65534" in planted.stderr, planted


def test_watch_refuses_an_unsafe_bootcache_with_one_line(tmp_path):
    # the real command, pointed at a private copy through the module's knob: sitecustomize
    where = tmp_path / "nstrace"
    where.mkdir(mode=0o777)
    where.chmod(0o777)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"from nstrace.bpf import bootcache\nbootcache.DIR = {str(where)!r}\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    err = refused(nstrace("watch", "--duration", "0.2", env=env))
    assert str(where) in err and "other users" in err


def test_the_real_run_nstrace_is_root_only():
    subprocess.run([str(NSTRACE), "watch", "--duration", "0.1"], capture_output=True, check=True)
    st = os.lstat("/run/nstrace")
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022, oct(st.st_mode)
    for name in os.listdir("/run/nstrace"):
        st = os.lstat(f"/run/nstrace/{name}")
        assert st.st_uid == 0 and not st.st_mode & 0o022 and not stat.S_ISLNK(st.st_mode), (name, oct(st.st_mode))


# --- /run/nstrace: the launcher's state ---------------------------------------------------------

LAUNCHER = """
import os, sys
from nstrace.check.launcher import Launcher
with Launcher(state_dir=sys.argv[1]) as l:
    l.bind_ns(os.getpid(), "uts")
    print(l.state_file, l.workdir, flush=True)
    modes = {p: oct(os.lstat(p).st_mode) for p in (sys.argv[1], str(l.state_file), str(l.workdir))}
    print(modes)
"""


def test_launcher_state_is_root_only_whatever_the_umask(tmp_path):
    where = tmp_path / "state"
    res = subprocess.run(["sh", "-c", 'umask 000; exec "$@"', "sh", sys.executable, "-c", LAUNCHER, str(where)],
                         capture_output=True, text=True, cwd=ELSEWHERE, timeout=60)
    assert res.returncode == 0, res.stderr
    modes = eval(res.stdout.splitlines()[1])  # noqa: S307 - our own child's repr of a dict of strings
    state_file, workdir = res.stdout.split()[:2]
    assert modes == {str(where): "0o40755", state_file: "0o100644", workdir: "0o40755"}


def plant_state(where, resources, owner=None):
    """A launcher state file of a launcher that died (pid 1's start time is never -1)."""
    state = where / "launcher-1-deadbeef.json"
    text = json.dumps({"pid": 1, "start": -1, "resources": resources})
    if owner == "nobody":
        subprocess.run([*NOBODY, "sh", "-c", f"cat > {state}"], input=text, text=True, check=True)
    else:
        state.write_text(text)
    return state


LAUNCH = """
import sys
from nstrace.check.launcher import Launcher
try:
    Launcher(state_dir=sys.argv[1]).cleanup()
except Exception as e:
    print(type(e).__name__, e.exit_code, e, file=sys.stderr)
    sys.exit(1)
"""


def launch(where):
    """A new launcher on that state directory (it reaps what dead launchers left first)."""
    return subprocess.run([sys.executable, "-c", LAUNCH, str(where)], capture_output=True, text=True, cwd=ELSEWHERE,
                          timeout=60)


@pytest.fixture
def root_only_dir(tmp_path):
    path = tmp_path / "root-only-dir"
    path.mkdir(mode=0o700)
    (path / "keep").write_text("x")
    return path


def test_state_file_planted_in_a_world_writable_state_dir_is_not_obeyed(shared_tmp, root_only_dir):
    where = shared_tmp / "state"
    where.mkdir()
    where.chmod(0o777)  # as an older nstrace left /run/nstrace under umask 000
    plant_state(where, [{"kind": "dir", "value": str(root_only_dir)}], owner="nobody")
    res = launch(where)
    assert res.returncode == 1 and "UnsafePath 7" in res.stderr and "other users" in res.stderr, res.stderr
    assert (root_only_dir / "keep").exists()


def test_state_file_of_another_user_is_not_obeyed(tmp_path, root_only_dir):
    where = tmp_path / "state"
    where.mkdir(mode=0o755)
    state = plant_state(where, [{"kind": "dir", "value": str(root_only_dir)}])
    os.chown(state, 65534, 65534)
    res = launch(where)
    assert res.returncode == 1 and "UnsafePath 7" in res.stderr and "belongs to uid 65534" in res.stderr, res.stderr
    assert (root_only_dir / "keep").exists()


def test_state_file_may_only_name_what_a_launcher_makes(tmp_path, root_only_dir):
    where = tmp_path / "state"
    where.mkdir(mode=0o755)
    for resources in ([{"kind": "dir", "value": str(root_only_dir)}],
                      [{"kind": "dir", "value": str(where / "work-deadbeef" / ".." / ".." / root_only_dir.name)}],
                      [{"kind": "mount", "value": "/proc"}],
                      [{"kind": "netns", "value": "prod"}],
                      [{"kind": "process", "value": 1, "start": "x"}]):
        state = plant_state(where, resources)
        res = launch(where)
        assert res.returncode == 1 and "LauncherError 6" in res.stderr and "no launcher makes" in res.stderr, \
            (resources, res.stderr)
        state.unlink()
    assert (root_only_dir / "keep").exists()


# --- /var/cache/nstrace: the lab's kernels --------------------------------------------------------

def _tiny_kernel_deb(where):
    """A real .deb shaped like a Debian kernel package: boot/vmlinuz-<release>, lib/modules/<release>."""
    root = where / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text("Package: nstrace-test-kernel\nVersion: 1\nArchitecture: all\n"
                                             "Maintainer: nstrace tests <root@localhost>\nDescription: test\n")
    (root / "boot").mkdir()
    (root / "boot" / "vmlinuz-1.0-test").write_bytes(b"not a kernel")
    (root / "lib" / "modules" / "1.0-test").mkdir(parents=True)
    deb = where / "nstrace-test-kernel_1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(root), str(deb)], check=True, capture_output=True)
    return deb


def test_lab_unpacks_in_a_private_directory(tmp_path, shared_tmp, monkeypatch):
    """While apt downloads, user nobody tries to plant the tree dpkg-deb unpacks into."""
    from nstrace.lab import apt, kernels
    cache = shared_tmp / "cache"
    monkeypatch.setenv("NSTRACE_LAB_CACHE", str(cache))
    deb = _tiny_kernel_deb(tmp_path)
    trap = shared_tmp / "trap"
    trap.mkdir(mode=0o777)
    trap.chmod(0o777)
    attempts = []

    def download(self, spec, dest, status=None):
        # apt-get download's part only: the package comes from here, not a mirror, copied as
        # the user apt downloads as
        subprocess.run(["setpriv", "--reuid=_apt", "--regid=nogroup", "--clear-groups", "sh", "-c",
                        f"cat > {dest}/{deb.name}"], input=deb.read_bytes(), check=True)
        for target in (dest.parent / "tree", dest / "tree"):
            attempts.append(as_nobody("ln", "-s", str(trap), str(target), check=False).returncode)
        return sorted(dest.glob("*.deb"))
    monkeypatch.setattr(apt.Apt, "download", download)
    kernel = kernels.prepare(apt.KernelSpec("test", "bookworm", ("nstrace-test-kernel",), "1"))
    assert attempts and all(attempts), "nobody could write where root unpacks"
    assert list(trap.iterdir()) == []
    # not a bzImage, so kept as it is (lab/bzimage.py): the tree holds what a guest boots
    assert kernel.release == "1.0-test" and kernel.image.read_bytes() == b"not a kernel" and not kernel.pvh
    tree = kernel.tree
    st = tree.lstat()
    assert stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755
    for path in (cache, cache / "images", cache / "images" / f".{tree.name}.lock"):
        st = path.lstat()
        assert st.st_uid == 0 and not st.st_mode & 0o022, (path, oct(st.st_mode))
    assert not [p for p in cache.iterdir() if p.name.startswith(".download-")]


def test_lab_refuses_a_cache_others_can_write(tmp_path, monkeypatch):
    from nstrace.lab import apt, kernels
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    monkeypatch.setenv("NSTRACE_LAB_CACHE", str(cache))
    with pytest.raises(UnsafePath, match="can be written by other users"):
        kernels.prepare(apt.KernelSpec("test", "bookworm", ("nstrace-test-kernel",), "1"))
    cache.chmod(0o755)
    (cache / "images").mkdir(mode=0o755)
    os.symlink(tmp_path, cache / "images" / "nstrace-test-kernel_1")
    with pytest.raises(UnsafePath, match="symlink"):
        kernels.prepare(apt.KernelSpec("test", "bookworm", ("nstrace-test-kernel",), "1"))


def test_lab_as_non_root_is_refused_before_anything_runs():
    res = subprocess.run([*NOBODY, str(NSTRACE), "lab", "--kernel", "6.1"], capture_output=True, text=True,
                         timeout=60, cwd="/")
    assert res.returncode == 3 and res.stderr.startswith("nstrace: error: nstrace lab needs root"), res.stderr
    assert res.stderr.count("\n") == 1


def test_whole_file_writes_from_two_threads_at_once(tmp_path):
    """Two threads of one process (the lab boots guests side by side) replace the same file: each
    write lands whole, none trips over the other's temporary file."""
    import threading
    from nstrace.linux import trusted_paths
    where = tmp_path / "cache"
    where.mkdir(mode=0o755)
    errors = []

    def writer(text):
        try:
            for _ in range(300):
                trusted_paths.write_whole(str(where / "f"), text)
        except OSError as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("a" * 5000, "b" * 5000)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert (where / "f").read_text() in ("a" * 5000, "b" * 5000)
    assert os.listdir(where) == ["f"]
