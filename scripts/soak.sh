#!/usr/bin/env bash
# Soak: 1,000,000 unshare(CLONE_NEWUTS) calls from 8 concurrent workers, traced by nstrace's Tracer
# (--pid the workload's parent), then the same under `nstrace watch --json`. Prints ops/s, seen,
# lost and RSS over time; exits non-zero if seen + lost != ops, RSS grew after warm-up, or anything
# crashed. Outside the normal test suite (tests/test_load.py is the short version). As root:
#     bash scripts/soak.sh [OPS] [WORKERS]
set -euo pipefail
cd "$(dirname "$0")/.."
ops="${1:-1000000}"
workers="${2:-8}"
.venv/bin/python tests/loadgen.py soak --ops "$ops" --workers "$workers"
.venv/bin/python tests/loadgen.py soak --ops "$ops" --workers "$workers" --watch
