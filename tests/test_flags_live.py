"""7.1's flags as the tracer records them on this kernel, which refuses them (EINVAL: clone3_args_valid(),
check_unshare_flags(), kernel/fork.c before 7.1): each op reads them in its own table, both writers of
`watch --json` (native/batch.c and Python) name them alike, and a filter on the mount type keeps them."""

import errno
import subprocess
import sys

import pytest
from test_json_output import differential, live, take_raw  # noqa: F401 (live: the fixture)

from nstrace.record.filters import Filter
from nstrace.tracing.tracer import Options

pytestmark = pytest.mark.root("loads BPF programs into the kernel")

# UNSHARE_EMPTY_MNTNS, then CLONE_EMPTY_MNTNS (include/uapi/linux/sched.h, 7.2.13); each call is refused here
CALLS = """
from nstrace.linux import syscalls
for call, flags in ((syscalls.unshare, 0x00100000), (syscalls.clone3, 1 << 37)):
    try:
        call(flags)
    except OSError as e:
        print(e.errno)
"""


@pytest.fixture(scope="module")
def refused(live):  # noqa: F811
    out = subprocess.run([sys.executable, "-c", CALLS], cwd="/", check=True, capture_output=True, text=True).stdout
    if out.split() != [str(errno.EINVAL)] * 2:
        pytest.skip(f"this kernel does not refuse both (a 7.1+ kernel: the lab's sid checks them): {out!r}")
    return take_raw(live, 2)


def test_each_op_names_its_own_empty_mntns_flag(live, refused):  # noqa: F811
    _, records = differential(live, refused, Options())
    assert [(r["op"], r["flags"], r["errno"]) for r in records] == [
        ("unshare", ["UNSHARE_EMPTY_MNTNS"], "EINVAL"),  # not CLONE_PARENT_SETTID, the clone flag of its bit
        ("clone3", ["CLONE_EMPTY_MNTNS"], "EINVAL"),  # recorded at all: it asks for a namespace, no plain fork
    ]


def test_a_mount_filter_keeps_them(live, refused):  # noqa: F811
    _, records = differential(live, refused, Options(filter=Filter(types=("mnt",))))
    assert [r["op"] for r in records] == ["unshare", "clone3"]
    _, records = differential(live, refused, Options(filter=Filter(types=("uts",))))
    assert records == []
