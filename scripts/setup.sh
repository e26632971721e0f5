#!/usr/bin/env bash
# Set up nstrace on a fresh Debian 12 machine, as root: the packages, the BPF
# build and the virtualenv at .venv (whose bin/nstrace scripts and CI use).
# Safe to run again: each step only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  clang llvm make bpftool libbpf-dev libbpf1   # BPF build (compile time only) and the loader's libbpf
  python3 python3-venv                         # the virtualenv
  util-linux iproute2 strace                   # unshare/nsenter/lsns, ip netns, the flag oracle in tests
  bubblewrap runc                              # tests: real runtimes under watch -- and strace -f (runc on a busybox rootfs)
  dwarves                                      # tests: pahole gives the reader library's BTF, to check batch.py's mirrors
  qemu-system-x86 busybox-static zstd          # nstrace lab: Debian kernels under QEMU (zstd: 6.12+ kernels and modules)
  graphviz                                     # nstrace render: dot lays out the session graph
  chromium                                     # tests: the rendered HTML page loads without console errors
  linux-perf bpftrace                          # bench: the tracers nstrace is measured beside
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

make -s -C probes
make -s -C native   # the ring-buffer reader and JSON writer (C, loaded by nstrace/bpf/batch.py)

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
# compat: a plain path in a .pth. The default editable finder imports pathlib, re and
# urllib at every interpreter start, before `nstrace watch` can go live (bench: start-up).
.venv/bin/pip install -q -e '.[test]' --config-settings editable_mode=compat
# An editable install leaves nstrace's byte code to the first import, and where
# PYTHONDONTWRITEBYTECODE is set it is never written: every start would compile
# the modules again before `nstrace watch` goes live. Compile them now.
.venv/bin/python -m compileall -q nstrace
