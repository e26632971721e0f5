#!/usr/bin/env python3
"""The lab suite's kernel-side actions, many times over, in one guest (issue 13's smaller reproducer).

    nstrace lab-lockup-loop --command '.venv/bin/python scripts/lab-lockup-stress.py --cycles 40'

Each cycle does what one `nstrace watch` does to the kernel: load the object with the function layer
(the verifier; filling the tail-call map "bodies", which patches the direct jumps of the tail calls),
attach every syscall-layer program and every function hook (trampolines or kprobes), let namespace
operations run through them, then detach and free it all.  A child process keeps making unshare and
setns calls the whole time, so probes are running while they are patched in and out.
"""

import argparse
import os
import time

from nstrace.bpf import probeset
from nstrace.linux import syscalls

CLONE_NEWUTS, CLONE_NEWIPC = 0x04000000, 0x08000000


def churn():
    """fork, unshare and setns back, forever, until killed."""
    home = os.open("/proc/self/ns/uts", os.O_RDONLY)
    while True:
        pid = os.fork()
        if pid == 0:
            try:
                syscalls.unshare(CLONE_NEWUTS | CLONE_NEWIPC)
                syscalls.setns(home, CLONE_NEWUTS)
            except OSError:
                # ENOSPC when ipc namespaces die slower than this loop makes them (their freeing
                # waits for an RCU grace period in a work item, ipc/namespace.c): the fork still
                # ran the code that attaching and detaching patches
                os._exit(1)
            os._exit(0)
        os.waitpid(pid, 0)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=40)
    parser.add_argument("--hold", type=float, default=0.2, help="seconds attached per cycle")
    parser.add_argument("--syscall-layer-only", action="store_true",
                        help="no function hooks: quicker cycles of the tracepoint links alone")
    args = parser.parse_args()
    worker = os.fork()
    if worker == 0:
        churn()
    try:
        for n in range(args.cycles):
            start = time.monotonic()
            probes = probeset.ProbeSet(kernel_path=not args.syscall_layer_only)
            probes.load()
            probes.attach()
            attached = len(probes.attached) + sum(h.attached for h in probes.hooks)
            time.sleep(args.hold)
            probes.close()
            print(f"cycle {n}: {attached} probes, {time.monotonic() - start:.2f} s", flush=True)
    finally:
        os.kill(worker, 9)
        os.waitpid(worker, 0)


if __name__ == "__main__":
    main()
