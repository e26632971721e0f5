#!/usr/bin/env python3
"""Check kernel-notes/paths.toml against the running kernel.

For every [function.X] table: is X a FUNC in /sys/kernel/btf/vmlinux (needs
bpftool) and a symbol in /proc/kallsyms?  For every tracepoint step: does the
event directory exist under tracefs?  Prints one line per name and a summary;
exit status 1 if a function that paths.toml calls traceable on this kernel's
series is missing, or a listed tracepoint is missing.

Usage: python3 kernel-notes/btf_check.py [--paths kernel-notes/paths.toml]
"""
import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))


def btf_funcs():
    if not shutil.which("bpftool") or not os.path.exists("/sys/kernel/btf/vmlinux"):
        return None
    out = subprocess.run(
        ["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux"],
        capture_output=True, text=True, check=False).stdout
    return set(re.findall(r"\] FUNC '([^']+)'", out))


def kallsyms():
    syms = {}
    try:
        with open("/proc/kallsyms") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    base = parts[2].split(".")[0]
                    syms.setdefault(base, set()).add(parts[1])
    except OSError:
        return None
    return syms


def tracefs_root():
    for p in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        if os.path.isdir(os.path.join(p, "events")):
            return p
    return None


def series(release):
    m = re.match(r"(\d+)\.(\d+)", release)
    return f"{m.group(1)}.{m.group(2)}" if m else release


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", default=os.path.join(HERE, "paths.toml"))
    a = ap.parse_args()
    with open(a.paths, "rb") as f:
        data = tomllib.load(f)
    ser = series(platform.release())
    btf = btf_funcs()
    ks = kallsyms()
    tr = tracefs_root()
    bad = 0
    print(f"kernel {platform.release()} (series {ser}); checked = {data['checked']}")
    for name, fn in sorted(data["function"].items()):
        kernels = fn.get("kernels", data["checked"])
        in_btf = None if btf is None else name in btf
        types = "".join(sorted(ks.get(name, set()))) if ks is not None else "?"
        known = set(data["checked"]) | set(data.get("measured", ()))
        expect = ser in kernels if ser in known else None
        flag = ""
        if expect is True and in_btf is False:
            flag = "  <-- expected traceable, not in BTF"
            bad += 1
        if expect is False and in_btf:
            flag = "  <-- listed as not traceable here, but in BTF"
        print(f"{name:32} btf={'?' if in_btf is None else ('yes' if in_btf else 'no '):3} "
              f"kallsyms={types or '-':3} expected={expect}{flag}")
    tps = sorted({s["name"] for op in data["op"].values() for s in op["step"]
                  if s["kind"] == "tracepoint"})
    for tp in tps:
        group, event = tp.split(":")
        ok = None if tr is None else os.path.isdir(os.path.join(tr, "events", group, event))
        if ok is False:
            bad += 1
        print(f"{tp:32} tracefs={'?' if ok is None else ('yes' if ok else 'NO')}")
    print(f"problems: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
