"""Real QEMU boots of Debian kernels (see shared/kernel-env.md); each boot costs ~10-20 s under TCG.

Run with `python3 -m pytest -m lab tests/test_lab.py`.  The first run downloads the kernels into
$NSTRACE_LAB_CACHE (default /var/cache/nstrace/lab) and needs the Debian mirror.
"""

import re
import shutil
import textwrap
import time

import pytest

from nstrace.lab import apt, guest
from nstrace.errors import GuestLockup, GuestTimeout, PackageNotFound

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86 not installed"),
]

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


def test_timeout_kills_guest():
    start = time.monotonic()
    with pytest.raises(GuestTimeout, match="timed out after"):
        guest.run_in_guest("6.1", ["/bin/sleep", "600"], cwd="/", timeout=3)
    assert time.monotonic() - start < 60  # resolution from the cached lists, then 3 s


def test_kernel_hang_ends_the_run_at_once_with_its_stack():
    """A guest whose kernel dies must end the run within seconds, with the stack on the kernel's
    console, not at the timeout (issue 13). sysrq 'c' makes the kernel panic for real, the way a
    soft lockup does under guest.KERNEL_ARGS (softlockup_panic=1); the command's output channel
    (ttyS1) keeps what the command printed before it."""
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


def test_kernel_layer_in_lab():
    """The kernel-function layer, for real, on Debian 12's 6.1 (fentry allowed there):
    `nstrace lab` runs tests/test_kernelpath.py inside the guest and all of it must pass."""
    import subprocess

    from nshelpers import NSTRACE
    # nstrace's own guest timeout fires first, with the console's tail in the output
    res = subprocess.run([str(NSTRACE), "lab", "--kernel", "6.1", "--verbose", "--timeout", "900"],
                         capture_output=True, text=True, timeout=2400)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    [row] = [line for line in res.stdout.splitlines() if line.strip().startswith("6.1 ") and "tests:" in line]
    tests = re.search(r"tests: (.*?); check: (\d+) passed, (\d+) failed", row)
    assert tests, row
    assert re.fullmatch(r"\d+ passed in [\d.]+s", tests.group(1)), f"kernel-layer tests: {tests.group(1)}"
    assert int(tests.group(2)) >= 42 and tests.group(3) == "0", row
