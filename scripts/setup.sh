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
  xz-utils                                     # nstrace source fetch: the kernel source inside Debian's linux-source
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

if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
# nstrace is installed into .venv as users install it: as a wheel, built here (setup.py compiles
# probes/ and native/ into it; clang, bpftool and libbpf-dev are needed for that step only). The tests
# and the lab then run the installed package, not this checkout's files.
.venv/bin/pip install -q wheel
rm -rf build dist/nstrace-*.whl
.venv/bin/pip wheel -q --no-deps --no-build-isolation -w dist .
.venv/bin/pip install -q --force-reinstall --no-deps dist/nstrace-*.whl
.venv/bin/pip install -q "$(ls dist/nstrace-*.whl)[test]"
# What the wheel needs at run time, as wheels beside it: tests/test_wheel.py installs it into a
# fresh virtualenv from these alone, on a machine without clang, bpftool or this checkout.
.venv/bin/pip download -q -d dist/deps click tabulate psutil 'fastjsonschema>=2.22,<2.23'
