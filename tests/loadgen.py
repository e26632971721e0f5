"""A namespace-operation load, traced: what tests/test_load.py and scripts/soak.sh run.

The workload is one parent process that forks W workers; each waits for "go",
then calls unshare(CLONE_NEWUTS) N times (a new UTS namespace per call, the old
one freed) and reports how many calls it made and how many succeeded. The
parent is the --pid the tracer follows, so only the workload is traced, and
its own count is the truth the tracer's seen + lost must add up to.

    python tests/loadgen.py soak [--ops 1000000] [--workers 8] [--watch]

runs the load under an in-process Tracer (or, with --watch, under
`nstrace watch --json --pid PARENT` as a subprocess), samples the tracer's RSS
once a second, prints the numbers and exits 1 if seen + lost != ops or the
RSS grew after warm-up.
"""

import argparse
import array
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLONE_NEWUTS = 0x04000000
# RSS may move by a few allocator arenas; a leak of one record (~0.5-3 KiB of Python
# objects) per operation would be hundreds of MiB at 1,000,000 operations.
RSS_SLACK_KIB = 4096


# --- the workload (runs in its own process) ---------------------------------------------

def _worker(n, go_r, out_w):
    from nstrace.linux import syscalls
    os.read(go_r, 1)
    ok = 0
    for _ in range(n):
        try:
            syscalls.unshare(CLONE_NEWUTS)
            ok += 1
        except OSError:
            pass
    os.write(out_w, f"{n} {ok}\n".encode())
    os._exit(0)


def workload_main(workers, per_worker):
    """The parent: say "ready"; per "go" line on stdin run one round, print its totals as JSON.

    A round forks the workers (plain forks: not namespace operations, dropped in
    the kernel), lets them all start at once and waits for their reports.
    """
    print("ready", flush=True)
    for _ in sys.stdin:
        go_r, go_w = os.pipe()
        out_r, out_w = os.pipe()
        pids = []
        for _ in range(workers):
            pid = os.fork()
            if pid == 0:
                os.close(go_w)
                os.close(out_r)
                _worker(per_worker, go_r, out_w)
            pids.append(pid)
        os.close(go_r)
        os.close(out_w)
        start = time.monotonic()
        os.close(go_w)  # every worker's read returns at once
        with os.fdopen(out_r) as f:
            reports = [line.split() for line in f]
        seconds = time.monotonic() - start
        statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        print(json.dumps({"calls": sum(int(r[0]) for r in reports), "ok": sum(int(r[1]) for r in reports),
                          "workers_reported": len(reports), "worker_status": statuses, "seconds": seconds}),
              flush=True)


class Workload:
    """The workload as a subprocess, ready for rounds; a thread collects each round's report.

    Reports land in arrays allocated up front, not in new objects: a small
    object kept alive while the tracer decodes thousands of records pins the
    allocator arena it lands in, and RSS would grow from this harness, not
    from nstrace (measured: about 1 MiB per kept round report).
    """

    MAX_ROUNDS = 1000

    def __init__(self, workers, per_worker):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "workload",
                                      str(workers), str(per_worker)],
                                     cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"workload did not start: {line!r}")
        self.pid = self.proc.pid
        self.calls = array.array("q", bytes(8 * self.MAX_ROUNDS))
        self.ok = array.array("q", bytes(8 * self.MAX_ROUNDS))
        self.seconds = array.array("d", bytes(8 * self.MAX_ROUNDS))
        self.failed = array.array("q", bytes(8 * self.MAX_ROUNDS))  # workers that did not report or exit 0
        self.reported = 0   # rounds reported so far (written by the collector thread only)
        self.started = 0
        self.exited = False
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self):
        for line in self.proc.stdout:
            res = json.loads(line)
            i = self.reported
            self.calls[i], self.ok[i], self.seconds[i] = res["calls"], res["ok"], res["seconds"]
            self.failed[i] = len(res["worker_status"]) - res["workers_reported"] + sum(
                1 for st in res["worker_status"] if st)
            self.reported = i + 1
        self.exited = True

    def go(self):
        if self.started >= self.MAX_ROUNDS:
            raise RuntimeError(f"at most {self.MAX_ROUNDS} rounds")
        self.started += 1
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def round_done(self, timeout=0):
        """True once the running round has ended (waiting up to timeout seconds)."""
        deadline = time.monotonic() + timeout
        while self.reported < self.started:
            if self.exited:
                raise RuntimeError(f"workload exited (status {self.proc.wait()})")
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def totals(self):
        n = self.reported
        return {"rounds": n, "calls": sum(self.calls[:n]), "ok": sum(self.ok[:n]),
                "seconds": sum(self.seconds[:n]), "failed_workers": sum(self.failed[:n])}

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Samples:
    """(seconds, KiB) pairs in a preallocated array (see Workload on why)."""

    def __init__(self, capacity=100_000):
        self._a = array.array("d", bytes(16 * capacity))
        self.n = 0

    def add(self, t, kib):
        if 2 * self.n + 1 < len(self._a):
            self._a[2 * self.n], self._a[2 * self.n + 1] = t, kib
            self.n += 1

    def pairs(self):
        return [(round(self._a[2 * i], 2), int(self._a[2 * i + 1])) for i in range(self.n)]


# --- measuring ------------------------------------------------------------------------------

def rss_kib(pid="self"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def rss_growth(settled):
    """RSS growth (KiB) after warm-up, from samples taken between rounds (all records read).

    Warm-up is the first quarter of the rounds (at least two): its highest sample
    is the baseline, and growth is how far any later sample rose above it. Freed
    memory the allocator keeps makes samples wander by a few MiB either way; a
    leak raises every later sample and keeps rising.
    """
    warm = max(2, len(settled) // 4)
    if len(settled) <= warm:
        return 0
    return max(0, max(settled[warm:]) - max(settled[:warm]))


def _result(mode, load, seen, lost, samples, settled, elapsed, **extra):
    tot = load.totals()
    settled = [kib for _, kib in settled.pairs()]
    return {"mode": mode, "rounds": tot["rounds"], "ops": tot["calls"], "ok": tot["ok"],
            "failed_workers": tot["failed_workers"], "workload_s": tot["seconds"],
            "ops_per_s": tot["calls"] / tot["seconds"], "elapsed_s": elapsed,
            "seen": seen, "lost": lost, "rss_kib": samples.pairs(), "rss_settled_kib": settled,
            "rss_growth_kib": rss_growth(settled), **extra}


def run_traced(workers, per_worker, rounds=1, ringbuf_bytes=4 << 20, sample_s=0.25):
    """The load under an in-process Tracer(pid=parent). Returns the measured numbers.

    Records are counted and dropped, as a long-running consumer would.
    """
    from nstrace.tracing.tracer import Options, Tracer
    load = Workload(workers, per_worker)
    samples, settled = Samples(), Samples(Workload.MAX_ROUNDS)
    seen = 0
    try:
        with Tracer(Options(pid=load.pid, check_proc=False, ringbuf_bytes=ringbuf_bytes)) as tracer:
            t0 = next_sample = time.monotonic()
            for _ in range(rounds):
                load.go()
                finished = False
                while True:
                    batch = tracer.poll(50)
                    seen += len(batch)
                    now = time.monotonic()
                    if now >= next_sample:
                        samples.add(now - t0, rss_kib())
                        next_sample = now + sample_s
                    if finished and not batch:
                        break  # every call had returned: its record was in the ring buffer or counted lost
                    finished = finished or load.round_done()
                del batch
                settled.add(time.monotonic() - t0, rss_kib())
            elapsed = time.monotonic() - t0
            lost = tracer.lost
            by_op = dict(tracer.by_op)
    finally:
        load.close()
    return _result("tracer", load, seen, lost, samples, settled, elapsed, by_op=by_op)


def run_watch(workers, per_worker, rounds=1, buffer_kib=4096, sample_s=0.1):
    """The load under `nstrace watch --json --pid PARENT`. Returns the measured numbers."""
    nstrace = ROOT / ".venv" / "bin" / "nstrace"
    load = Workload(workers, per_worker)
    samples, settled = Samples(), Samples(Workload.MAX_ROUNDS)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        watch = subprocess.Popen([str(nstrace), "watch", "--json", "--pid", str(load.pid),
                                  "--buffer-kib", str(buffer_kib)], stdout=out, stderr=err, text=True)
        try:
            deadline = time.monotonic() + 30
            while "tracing live" not in _read(err) and watch.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if watch.poll() is not None or "tracing live" not in _read(err):
                raise RuntimeError("nstrace watch did not start: " + _read(err))
            t0 = time.monotonic()
            for _ in range(rounds):
                load.go()
                while not load.round_done(timeout=sample_s):
                    samples.add(time.monotonic() - t0, rss_kib(watch.pid))
                _quiet(out, watch)
                settled.add(time.monotonic() - t0, rss_kib(watch.pid))
            watch.send_signal(signal.SIGINT)  # drains what the kernel handed over, then the summary
            code = watch.wait(timeout=600)
            elapsed = time.monotonic() - t0
        finally:
            load.close()
            if watch.poll() is None:
                watch.kill()
                watch.wait()
        out.seek(0)
        lines = bad = 0
        for line in out:
            lines += 1
            rec = json.loads(line)
            bad += rec["pid"] == load.pid or rec["op"] != "unshare"  # only the workers unshare
        stderr = _read(err)
    summary_lines = [ln for ln in stderr.splitlines() if ln.startswith("nstrace: summary ")]
    summary = json.loads(summary_lines[-1].split(" ", 2)[2]) if summary_lines else None
    return _result("watch", load, summary["total"] if summary else None, summary["lost"] if summary else None,
                   samples, settled, elapsed, exit=code, json_lines=lines, unexpected_records=bad,
                   summary=summary, stderr=stderr)


def _quiet(out, watch, still_s=0.3, timeout=120):
    """Wait until watch has written nothing new for still_s: it has read all there was."""
    deadline = time.monotonic() + timeout
    size = -1
    while time.monotonic() < deadline and watch.poll() is None:
        now = os.fstat(out.fileno()).st_size
        if now == size:
            return
        size = now
        time.sleep(still_s)


def _read(f):
    f.flush()
    pos = f.tell()
    f.seek(0)
    text = f.read()
    f.seek(pos)
    return text


def verdict(m):
    """What is wrong with a measurement: a list of one-line complaints (empty: all good)."""
    wrong = []
    lost = m["lost"] or {}
    if m["seen"] is None:
        return ["no summary from nstrace watch"]
    if m["seen"] + lost.get("ringbuf", 0) + lost.get("inflight", 0) != m["ops"]:
        wrong.append(f"seen {m['seen']} + lost {lost} != ops {m['ops']}")
    if m["ok"] != m["ops"] or m["failed_workers"]:
        wrong.append(f"{m['ok']} of {m['ops']} unshare calls succeeded; {m['failed_workers']} workers failed")
    if m["rss_growth_kib"] > RSS_SLACK_KIB:
        wrong.append(f"RSS grew by {m['rss_growth_kib']} KiB after warm-up")
    if m["mode"] == "watch":
        if m["exit"] != 0:
            wrong.append(f"nstrace watch exited {m['exit']}")
        if m["json_lines"] != m["seen"] or m["unexpected_records"]:
            wrong.append(f"{m['json_lines']} JSON lines for {m['seen']} records, {m['unexpected_records']} unexpected")
    return wrong


def _print(m):
    lost = m["lost"] or {}
    lost_total = lost.get("ringbuf", 0) + lost.get("inflight", 0)
    ok = m["seen"] is not None and m["seen"] + lost_total == m["ops"]
    print(f"[{m['mode']}] ops {m['ops']} ({m['rounds']} rounds) in {m['workload_s']:.1f} s of workload: "
          f"{m['ops_per_s']:,.0f} ops/s; seen {m['seen']}, lost {lost.get('ringbuf')} (ring buffer) + "
          f"{lost.get('inflight')} (in-flight); seen + lost {'==' if ok else 'vs'} ops; {m['elapsed_s']:.1f} s wall")
    settled = m["rss_settled_kib"]
    if settled:
        print(f"[{m['mode']}] RSS start {settled[0]} KiB, end {settled[-1]} KiB (after each round: "
              f"{', '.join(map(str, settled))}); peak {max(k for _, k in m['rss_kib'] or [(0, 0)])} KiB; "
              f"growth after warm-up {m['rss_growth_kib']} KiB")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("workload")
    w.add_argument("workers", type=int)
    w.add_argument("per_worker", type=int)
    s = sub.add_parser("soak")
    s.add_argument("--ops", type=int, default=1_000_000)
    s.add_argument("--workers", type=int, default=8)
    s.add_argument("--rounds", type=int, default=10, help="the ops are split into rounds; RSS is compared between them")
    s.add_argument("--watch", action="store_true", help="trace with `nstrace watch --json` instead")
    args = parser.parse_args(argv)
    if args.cmd == "workload":
        workload_main(args.workers, args.per_worker)
        return 0
    per_worker = -(-args.ops // (args.workers * args.rounds))
    m = (run_watch if args.watch else run_traced)(args.workers, per_worker, rounds=args.rounds)
    _print(m)
    for complaint in verdict(m):
        print(f"soak: FAIL: {complaint}", file=sys.stderr)
    return 1 if verdict(m) else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
