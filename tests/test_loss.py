"""Lost events are counted in the kernel and shown: seen + lost == operations done."""

import subprocess
import sys

from nstrace.tracing.tracer import Options, Tracer

from nshelpers import ELSEWHERE

# A workload that waits for "go", does N unshare(CLONE_NEWUTS) calls, says how many succeeded.
WORKLOAD = """
import sys
from nstrace.linux import syscalls
sys.stdin.readline()
done = 0
for _ in range(int(sys.argv[1])):
    syscalls.unshare(0x04000000)
    done += 1
print(done, flush=True)
"""


def test_full_ring_buffer_is_counted_exactly():
    n = 400
    proc = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(n)], cwd=ELSEWHERE,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    # One page of ring buffer holds a handful of records; nobody reads until the end.
    with Tracer(Options(pid=proc.pid, ringbuf_bytes=4096, check_proc=False)) as tracer:
        out, _ = proc.communicate("go\n", timeout=30)
        done = int(out)
        seen = []
        while batch := tracer.poll(50):
            seen += batch
        lost = tracer.lost
    assert done == n
    assert all(r.pid == proc.pid and r.op == "unshare" for r in seen)
    assert lost["ringbuf"] > 0, f"a 4 KiB ring buffer cannot hold 400 records (seen {len(seen)})"
    assert len(seen) + lost["ringbuf"] + lost["inflight"] == n
    assert tracer.summary()["lost"] == lost
