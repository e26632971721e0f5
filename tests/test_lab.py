"""Real QEMU boots of Debian kernels (see kernel-notes/build-machines.md); a boot costs a few seconds under TCG.

Run with `python3 -m pytest -m lab tests/test_lab.py`.  The first run downloads the kernels into
$NSTRACE_LAB_CACHE (default /var/cache/nstrace/lab) and needs the Debian mirror.  No two tests boot
at once, and the matrix boots two guests at a time: each TCG guest is one host thread, and CI's
machines have two cores.
"""

import concurrent.futures
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from nshelpers import NSTRACE
from nstrace.errors import GuestLockup, GuestTimeout, PackageNotFound
from nstrace.lab import apt, guest, kernels, kvm

pytestmark = [
    pytest.mark.lab,
    pytest.mark.root("boots guests and runs nstrace in them as root"),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed"),
]


def lab(*args, cwd=None, timeout=1200):
    """`nstrace lab ARGS` as a user types it."""
    return subprocess.run([str(NSTRACE), "lab", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


# --- the guest itself ------------------------------------------------------------------------------

# Runs with the host's own interpreter inside the guest: proves the 9p root, the chroot and /sys mounts.
GUEST_CHECK = textwrap.dedent("""
    import os, platform, sys
    release = platform.uname().release
    assert release.startswith(sys.argv[1]), release
    assert os.path.exists("/sys/kernel/btf/vmlinux"), "no BTF"
    assert os.path.exists("/sys/bus/event_source/devices/kprobe"), "no kprobe PMU"
    assert os.path.isdir("/sys/kernel/tracing/events"), "tracefs not mounted"
    open("/tmp/scratch", "w").write("writable")
    print("cwd", os.getcwd(), "env", os.environ.get("NSTRACE_LAB_PROBE"))
    sys.exit(7)
""")


@pytest.mark.parametrize("kernel, release_prefix", [("6.1", "6.1."), ("6.12", "6.12.")])
def test_guest_runs_host_python_on_debian_kernel(kernel, release_prefix):
    result = guest.run_in_guest(kernel, ["/usr/bin/python3", "-c", GUEST_CHECK, release_prefix],
                                cwd="/usr/share", env={"NSTRACE_LAB_PROBE": "hello"}, timeout=300)
    assert result.kernel_release.startswith(release_prefix)
    assert result.returncode == 7, result.console[-2000:]
    assert result.output.strip().splitlines()[-1] == "cwd /usr/share env hello"
    assert "NSTRACE-LAB" not in result.output
    assert 0 < result.boot_s < result.duration_s


def test_no_scratch_tmpfs_hides_what_the_guest_runs(tmp_path):
    """A checkout (and its .venv) under /tmp, as a CI clone may be, run from / : the guest mounts no
    tmpfs over /tmp, which would hide the interpreter, and the command runs."""
    from nstrace.lab.initramfs import scratch_mounts
    assert "/tmp" not in scratch_mounts("/", ("/tmp/ci/.venv/bin/python3",))
    assert "/tmp" in scratch_mounts("/", ("/usr/bin/python3",))
    link = tmp_path / "python3"
    link.symlink_to(sys.executable)
    result = guest.run_in_guest("6.1", [str(link), "-c", "print('ran')"], cwd="/", timeout=300)
    assert result.returncode == 0 and result.output.strip() == "ran", result.console[-2000:]


def test_console_is_apart_from_the_output():
    """Kernel messages go to the console (ttyS0), the command's stdout and stderr to ports of their
    own: a message the kernel prints while the command writes splits none of its lines."""
    script = ("for i in $(seq 1 200); do echo \"line $i of the output\"; echo \"<0>kmsg $i\" > /dev/kmsg; "
              "echo \"error line $i\" >&2; done")
    out, err = bytearray(), bytearray()
    result = guest.run_in_guest("6.1", ["/bin/sh", "-c", script], cwd="/", timeout=300,
                                stdout=out.extend, stderr=err.extend)
    assert result.returncode == 0
    assert result.output == out.decode() == "".join(f"line {i} of the output\n" for i in range(1, 201))
    assert result.errors == err.decode() == "".join(f"error line {i}\n" for i in range(1, 201))
    assert all(f"kmsg {i}" in result.console for i in (1, 100, 200))  # printed, on the console alone


def test_timeout_kills_guest():
    start = time.monotonic()
    with pytest.raises(GuestTimeout, match="timed out after"):
        guest.run_in_guest("6.1", ["/bin/sleep", "600"], cwd="/", timeout=3)
    assert time.monotonic() - start < 60  # resolution from the cached lists, then 3 s


def test_kernel_hang_ends_the_run_at_once_with_its_stack():
    """A guest whose kernel dies must end the run within seconds, with the stack on the kernel's
    console, not at the timeout (issue 13). sysrq 'c' makes the kernel panic for real, the way a
    soft lockup does under guest.KERNEL_ARGS (softlockup_panic=1); the command's output port keeps
    what the command printed before it."""
    start = time.monotonic()
    with pytest.raises(GuestLockup) as caught:
        guest.run_in_guest("6.1", ["/bin/sh", "-c", "echo before the crash; echo c > /proc/sysrq-trigger; sleep 600"],
                           cwd="/", timeout=600)
    assert time.monotonic() - start < 120, "waited for the timeout instead of ending at the panic"
    report = guest.lockup_report(caught.value.console)
    assert report.startswith("Kernel panic - not syncing: sysrq triggered crash") or "sysrq triggered crash" in report
    assert "Call Trace:" in report and "sysrq_handle_crash" in report, report
    assert caught.value.began and caught.value.output.strip().endswith("before the crash")


def test_unknown_package_is_reported():
    with pytest.raises(PackageNotFound, match="linux-image-0.0.0-nstrace-amd64"):
        guest.run_in_guest("linux-image-0.0.0-nstrace-amd64", ["/bin/true"], cwd="/")


def test_unknown_kernel_name_is_reported():
    with pytest.raises(PackageNotFound, match="unknown kernel"):
        apt.resolve("not-a-kernel")


def test_short_names():
    assert apt.resolve("bullseye") == apt.resolve("5.10")
    assert apt.resolve("bullseye").version.startswith("5.10.") and apt.resolve("bullseye").suite == "bullseye"


# --- the cache and the machine -------------------------------------------------------------------

def test_cache_keeps_only_what_a_guest_needs():
    """The tree of a kernel holds its manifest, the kernel qemu boots and the modules a guest loads,
    each of them loaded: 30-50 MB where the package unpacks to about 400 MB."""
    kernel = kernels.prepare(apt.resolve("6.1"))
    assert kernel.pvh and kernel.image.name == "vmlinux"
    loaded = {name for name, _ in kernels.load_order(kernel)}
    files = {str(p.relative_to(kernel.tree)) for p in kernel.tree.rglob("*") if p.is_file()}
    assert files == {"manifest.json", "vmlinux", *(f"modules/{m}.ko" for m in loaded)}
    assert {"9p", "9pnet_virtio", "overlay", "virtio_console", "veth", "bridge"} <= loaded
    on_disk = sum(p.stat().st_blocks * 512 for p in kernel.tree.rglob("*") if p.is_file())
    assert on_disk < 80e6, on_disk
    assert len(kernel.available) > 3000  # the package's other modules, known without being kept


def test_kvm_verdict_is_kept_for_the_boot():
    """The first guest of a boot asks whether KVM works (at most kvm.PROBE_TIMEOUT_S); the answer
    holds for the rest of the boot. On the build machines it does not work ("failed to set MSR"
    or a hang, kernel-notes/build-machines.md), so every guest there runs under TCG."""
    kernel = kernels.prepare(apt.resolve("6.1"))
    fd, _ = kernels.boot_files(kernel)
    try:
        state = kvm._state_file()
        if os.path.exists(state):
            os.unlink(state)
        start = time.monotonic()
        works, why, known = kvm.verdict(fd)
        assert not known and time.monotonic() - start < kvm.PROBE_TIMEOUT_S + 5
        assert works or why, "a verdict against KVM says why"
        st = os.lstat(state)
        assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o644
        start = time.monotonic()
        assert kvm.verdict(fd) == (works, why, True) and time.monotonic() - start < 0.5
    finally:
        os.close(fd)
    res = lab("--kernel", "6.1", "--", "--version", cwd="/")
    assert res.returncode == 0, res.stderr
    assert ("(KVM)" if works else "TCG, single-threaded") in res.stderr, res.stderr
    # from / (which holds every other mount) files cannot come back; the command runs all the same
    assert "files the command writes in / will not come back" in res.stderr, res.stderr


def test_download_says_how_big_and_how_far(tmp_path):
    """The download's status lines give the size and the progress, with apt itself fetching (a
    small package of the same suite stands in for a kernel's 60 MB)."""
    lines = []
    suite = apt.resolve("6.1").suite
    package = apt.Apt(suite)
    size = int(package.show("hello")["Size"])
    dest = tmp_path
    spec = apt.KernelSpec("hello", suite, ("hello",), package.show("hello")["Version"], (size,))
    debs = package.download(spec, dest, lines.append)
    assert [d.name for d in debs] == [f"hello_{spec.version.replace(':', '%3a')}_amd64.deb"]
    assert lines[0].startswith(f"downloading hello {spec.version} from {suite} (") and " MB)" in lines[0]
    assert re.fullmatch(r"downloaded \d+ MB in \d+ s", lines[-1]), lines


# --- nstrace lab --kernel K -- ARGS ----------------------------------------------------------------

def test_demo_in_the_lab_shows_the_nested_path():
    """Issue 15: the command the host demo's hint names shows the path a learner reads: nested by
    call depth, each copy_* new or shared, each step's source line."""
    res = lab("--kernel", "6.1", "--", "demo", "--flags", "NEWPID|NEWNS|NEWUTS")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    steps = {m.group(2): (len(m.group(1)), m.group(0)) for m in
             re.finditer(r"^( *)(copy_namespaces|create_new_namespaces|copy_\w+)\s.*$", res.stdout, re.M)}
    depth = {name: d for name, (d, _) in steps.items()}
    assert depth["copy_namespaces"] < depth["create_new_namespaces"] < depth["copy_pid_ns"], steps
    for name in ("copy_pid_ns", "copy_mnt_ns", "copy_utsname"):
        assert " new " in steps[name][1], steps[name][1]
    for name in ("copy_net_ns", "copy_ipcs", "copy_cgroup_ns"):
        assert " shared " in steps[name][1], steps[name][1]
    assert re.search(r"kernel/nsproxy\.c:\d+", steps["copy_namespaces"][1]), steps["copy_namespaces"][1]
    assert re.search(r"^nstrace: 6\.1: booted in \d+\.\d s$", res.stderr, re.M), res.stderr
    assert "NSTRACE-LAB" not in res.stdout + res.stderr
    # the boot is not counted as the command's time
    took = re.search(r"^nstrace: 6\.1: nstrace demo exited 0 \((\d+\.\d) s boot, then (\d+\.\d) s running it", res.stderr, re.M)
    assert took, res.stderr


def test_picture_comes_back(tmp_path):
    """A file the guest command writes in the working directory is here afterwards, written as
    nstrace writes its output files (0666 less the umask, the caller's); the guest's other writes
    (its tmpfs) are not."""
    res = lab("--kernel", "6.1", "--", "demo", "--flags", "NEWPID|NEWNS", "--picture", "html", "-o", "demo.html",
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    page = tmp_path / "demo.html"
    assert page.read_text().lstrip().lower().startswith("<!doctype html") and "copy_namespaces" in page.read_text()
    assert "recorded on" in page.read_text() and "(none)" not in page.read_text()  # the guest's name, not the kernel's default
    st = page.stat()
    umask = os.umask(0)
    os.umask(umask)
    assert st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.html"]
    assert re.search(r"^nstrace: 6\.1: wrote demo\.html \(\d+ bytes\) here$", res.stderr, re.M), res.stderr


def test_several_kernels_side_by_side(tmp_path):
    """Two kernels: each line says its kernel, each file comes back under a name with its kernel in it,
    and the exit status is the command's (the first that is not 0)."""
    res = lab("--kernel", "6.1", "--kernel", "6.12", "--", "demo", "--op", "unshare", "--flags", "NEWUTS",
              "--picture", "svg", "-o", "demo.svg", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo-6.1.svg", "demo-6.12.svg"]
    for kernel in ("6.1", "6.12"):
        assert re.search(rf"^\[{re.escape(kernel)}\] result: trace matches", res.stdout, re.M), res.stdout[-3000:]
    unprefixed = [line for line in res.stdout.splitlines() if line and not line.startswith(("[6.1] ", "[6.12] "))]
    assert not unprefixed, unprefixed[:5]
    bad = lab("--kernel", "6.1", "--kernel", "6.12", "--", "check", "no-such-scenario")
    # a usage error every guest would make: said once, here, before any boot (lab/preflight.py)
    assert bad.returncode == 2 and bad.stderr.startswith("nstrace: error: unknown scenario 'no-such-scenario'"), \
        bad.stderr
    assert "boot" not in bad.stderr, bad.stderr


def test_setns_on_the_newest_kernel():
    """Issue 15: on sid, `demo --op setns` shows setns's own steps: the install of each type and the
    commit that switches the task's nsproxy."""
    res = lab("--kernel", "sid", "--", "demo", "--op", "setns", "--flags", "NEWUTS|NEWIPC")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    path = res.stdout[res.stdout.index("== Kernel path"):]
    assert re.search(r"^\s+utsns_install\s+observed", path, re.M), path
    assert re.search(r"^\s+ipcns_install\s+observed", path, re.M), path
    assert re.search(r"^\s+switch_task_namespaces\s+observed", path, re.M), path


def test_watch_a_command_sees_its_namespace_die():
    """Issue 16: `watch --json -- unshare --uts true` (util-linux) in 6.1 shows the unshare, then the uts
    namespace it made being freed when `true` exits, with how long it lived."""
    res = lab("--kernel", "6.1", "--", "watch", "--json", "-o", "/dev/stdout", "--", "unshare", "--uts", "true")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    # -o /dev/stdout: the guest has the links udev would make (devtmpfs alone has none: the trace went
    # into a regular file of that name)
    records = [json.loads(line) for line in res.stdout.splitlines()]
    [made] = [r for r in records if r["op"] == "unshare"]
    assert made["flags"] == ["CLONE_NEWUTS"] and made["changed"] == ["uts"], made
    [died] = [r for r in records if r["op"] == "free" and r["ns"]["type"] == "uts"]
    assert died["ns"]["inode"] == made["ns_after"]["uts"] and died["ns"]["lived_ns"] > 0, died
    assert records.index(died) > records.index(made)


def test_command_that_outlives_the_timeout():
    """`watch` runs until stopped: the guest is killed at --timeout, with the timeout's message, and
    what watch printed meanwhile came through."""
    start = time.monotonic()
    res = lab("--kernel", "6.1", "--timeout", "45", "--", "watch")
    assert res.returncode == 1, res.stderr
    assert re.search(r"^nstrace: error: guest 6\.1 timed out after 45 s during the command \(--timeout\)",
                     res.stderr, re.M), res.stderr
    assert "tracing live" in res.stderr  # watch's own status line, streamed before the end
    assert time.monotonic() - start < 45 + 60


def test_bad_lab_usage():
    res = lab("--kernel", "6.1", "--check-only", "--", "demo")
    assert res.returncode == 2 and "for the suite" in res.stderr
    res = lab("--kernel", "6.1", "--", "lab", "--kernel", "6.1")
    assert res.returncode == 2 and res.stderr.startswith("nstrace: error: nstrace lab runs no lab")


@pytest.mark.parametrize("command, code, says", [
    (["nosuch"], 2, "nstrace has no command 'nosuch'"),
    (["demo", "--bogus"], 2, "No such option '--bogus'"),
    (["demo", "--op", "nope"], 2, "'nope' is not one of"),
    (["check", "no-such-scenario"], 2, "unknown scenario 'no-such-scenario'"),
    (["show", "/nonexistent/session.jsonl"], 2, "No such file or directory"),
    (["watch", "--", "nstrace-no-such-program"], 127, "cannot run nstrace-no-such-program: not found in the guest's PATH"),
    (["watch", "--", "./nstrace-no-such-program"], 127, "cannot run ./nstrace-no-such-program: not found"),
])
def test_a_command_that_cannot_run_is_refused_before_the_boot(tmp_path, command, code, says):
    """The guest runs this nstrace on the host's root: what its nstrace would refuse at once is refused
    here, in a blink, with no guest started (no boot status, no console)."""
    started = time.monotonic()
    res = lab("--kernel", "6.1", "--", *command, cwd=tmp_path, timeout=60)
    took = time.monotonic() - started
    assert res.returncode == code, res.stderr
    assert res.stderr.startswith("nstrace: error: ") and res.stderr.count("\n") == 1 and says in res.stderr, res.stderr
    assert res.stdout == "" and "boot" not in res.stderr
    assert took < 5, f"{took:.1f} s: a guest's boot alone takes 10"


def test_a_file_in_the_guests_own_tmp_is_refused_before_the_boot():
    """/tmp, /var/tmp ... are tmpfs of the guest's own (initramfs.scratch_mounts) when neither the command's
    directory nor this installation's interpreter is under them (a CI checkout in /tmp keeps /tmp the
    host's): a session there is no file the guest can read."""
    from nstrace.lab.initramfs import scratch_mounts
    installation = tuple(str(NSTRACE.parent / name) for name in ("nstrace", "python", "python3"))
    top = next(m for m in scratch_mounts("/", installation) if os.path.isdir(m))
    with tempfile.TemporaryDirectory(dir=top) as where:
        session = os.path.join(where, "session.jsonl")
        open(session, "w").close()
        res = lab("--kernel", "6.1", "--", "show", session, cwd="/", timeout=60)
    assert res.returncode == 2 and f"{top} is a tmpfs of its own there" in res.stderr \
        and "boot" not in res.stderr, res.stderr


# --- the matrix CI runs: every kernel from 5.10 to sid ---------------------------------------------

# kernel -> whether the kernel-function tests must run there and pass (not skip), besides the full
# `nstrace check`.  5.10's function layer is kprobes (no bpf_get_func_arg before 5.17), the others' fentry.
MATRIX = {"bullseye": True, "6.1": True, "6.12": True, "sid": True}


@pytest.fixture(scope="module")
def matrix():
    """`nstrace lab --kernel K --verbose` for every kernel of MATRIX, two guests at a time; returns
    {kernel: (result, seconds)}.  Run once, by the first matrix test; nothing else boots meanwhile."""
    start = time.monotonic()

    def one(kernel):
        began = time.monotonic()
        return lab("--kernel", kernel, "--verbose", "--timeout", "1200", timeout=2400), time.monotonic() - began

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        runs = dict(zip(MATRIX, pool.map(one, MATRIX)))
    print(f"\nlab matrix: {time.monotonic() - start:.0f} s for {', '.join(MATRIX)}")
    return runs


@pytest.mark.parametrize("kernel", list(MATRIX))
def test_kernel_matrix(matrix, kernel):
    """The kernel-function tests and `nstrace check` inside each Debian kernel CI covers."""
    res, seconds = matrix[kernel]
    rows = [line for line in res.stdout.splitlines() if line.split()[:1] == [kernel] and "tests:" in line]
    print(f"{kernel}: {seconds:.0f} s: {rows[0].strip() if rows else 'no result row'}")
    assert res.returncode == 0 and rows, res.stdout[-5000:] + res.stderr[-3000:]
    tests = re.search(r"tests: (.*?); check: (\d+) passed, (\d+) failed", rows[0])
    assert tests, rows[0]
    assert int(tests.group(2)) >= 42 and tests.group(3) == "0", rows[0]
    if MATRIX[kernel]:
        assert re.fullmatch(r"\d+ passed(, \d+ skipped)?, \d+ deselected in .*", tests.group(1)), \
            f"kernel-function tests: {tests.group(1)}"
        # a test may skip only for what this kernel lacks: its reason names the version that brought it
        release = tuple(map(int, re.search(r"\s(\d+)\.(\d+)\.", rows[0]).groups()))
        for where, why in re.findall(r"^SKIPPED \[\d+\] (\S+): (.*)$", res.stdout + res.stderr, re.M):
            since = re.search(r"\((\d+)\.(\d+)\+[,)]", why)
            assert since and tuple(map(int, since.groups())) > release, f"{kernel}: {where} skipped: {why}"
    else:
        assert not re.search(r"failed|error", tests.group(1)), f"kernel-function tests: {tests.group(1)}"
