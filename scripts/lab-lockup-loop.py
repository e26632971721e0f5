#!/usr/bin/env python3
"""Run nstrace's lab suite in one kernel again and again until the guest locks up (issue 13).

    .venv/bin/python scripts/lab-lockup-loop.py [--kernel 6.1] [--runs N] [--parallel 2] [--out DIR]

Each guest boots with nstrace.lab.guest.KERNEL_ARGS: a soft lockup prints every CPU's stack and panics,
which ends the run at once.  Every run's duration and verdict goes to DIR/runs.tsv as it ends; a
lockup's whole console goes to DIR/lockup-<n>.console and its report (the lockup line onward) is
printed.  DIR/run-<n>.output is each run's command output, written as it arrives.  The loop stops at the first lockup (exit 1), or after N clean runs (exit 0).

--command runs something other than the suite in each guest (a shell line, in the checkout).
"""

import argparse
import concurrent.futures
import shlex
import sys
import threading
import time
from pathlib import Path

from nstrace.errors import BootError, GuestLockup, GuestTimeout
from nstrace.lab import guest, suite


def suite_command():
    python = suite.checkout() / ".venv" / "bin" / "python"
    nstrace = suite.checkout() / ".venv" / "bin" / "nstrace"
    return (f"{shlex.quote(str(python))} -m pytest -q -p no:cacheprovider -m kernelpath tests/test_kernelpath.py;"
            f" a=$?; {shlex.quote(str(nstrace))} check; b=$?; [ $a -eq 0 ] && [ $b -eq 0 ]")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="6.1")
    parser.add_argument("--runs", type=int, default=1000, help="stop after this many clean runs")
    parser.add_argument("--parallel", type=int, default=1, help="guests side by side")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--command", help="shell line to run in each guest instead of the suite")
    parser.add_argument("--kernel-arg", action="append", default=[], help="added to the guest's command line")
    parser.add_argument("--tcg-thread", choices=("single", "multi"), default="single",
                        help="multi: a host thread per vCPU, which the lab no longer uses (it hangs)")
    parser.add_argument("--out", type=Path, default=Path("lab-lockup"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    command = args.command or suite_command()
    log = open(args.out / "runs.tsv", "a")
    lock = threading.Lock()
    stop = threading.Event()
    counter = iter(range(1, 1 << 30))

    def one():
        with lock:
            n = next(counter)
        start = time.monotonic()
        try:
            with open(args.out / f"run-{n}.output", "w") as live:  # the command's output as it comes
                res = guest.run_in_guest(args.kernel, ["/bin/sh", "-c", command], cwd=str(suite.checkout()),
                                       timeout=args.timeout, kernel_args=tuple(args.kernel_arg), log=live,
                                       tcg_thread=args.tcg_thread)
            verdict, console = ("ok" if res.returncode == 0 else f"exit {res.returncode}"), res.console
            release = res.kernel_release
        except GuestLockup as e:
            verdict, console, release = "LOCKUP", e.console, "?"
            (args.out / f"lockup-{n}.console").write_text(e.console)
            stop.set()
        except (GuestTimeout, BootError) as e:
            verdict, console, release = type(e).__name__, e.console, "?"
            (args.out / f"failure-{n}.console").write_text(e.console)
        took = time.monotonic() - start
        with lock:
            log.write(f"{time.strftime('%FT%T')}\t{n}\t{args.kernel}\t{release}\t{took:.1f}\t{verdict}\n")
            log.flush()
            print(f"run {n}: {verdict} in {took:.0f} s", flush=True)
            if verdict == "LOCKUP":
                print(guest.lockup_report(console), flush=True)
        return verdict

    clean = 0
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        running = {pool.submit(one) for _ in range(args.parallel)}
        while running:
            done, running = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                clean += future.result() == "ok"
                if not stop.is_set() and clean + len(running) < args.runs:
                    running.add(pool.submit(one))
    print(f"{clean} clean runs; {'a lockup, stacks above' if stop.is_set() else 'no lockup'}", flush=True)
    return 1 if stop.is_set() else 0


if __name__ == "__main__":
    sys.exit(main())
