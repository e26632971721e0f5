"""Write, into nstrace/kernel/paths.toml, which kernel versions have each function as an out-of-line
function, from kernel-notes/btf-*.txt: the output of kernel-notes/btf_check.py run in each kernel
(in `nstrace lab` guests for Debian's 5.10, 6.1, 6.12 and 7.2; on this machine for 6.18).

    .venv/bin/python scripts/out-of-line.py

A function is out of line in a version when that kernel's BTF has it as a FUNC (BTF lists the
functions the compiler emitted, so an inlined one is absent). Sets each [function.X]'s `kernels`
list and the top-level `measured` list; a function no output names keeps what it had, and is said.
To refresh a version's output, run `python3 kernel-notes/btf_check.py` as root on that kernel (for a
lab kernel: nstrace.lab.guest.run_in_guest) and keep it as kernel-notes/btf-<uname -r>.txt.
"""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "kernel-notes"
PATHS = ROOT / "nstrace" / "kernel" / "paths.toml"


def _rank(series):
    major, minor = map(int, series.split("."))
    return major, minor


def outputs():
    """{series: {function: in BTF?}} from every kept btf_check.py output."""
    seen = {}
    for path in sorted(NOTES.glob("btf-*.txt")):
        text = path.read_text()
        series = re.search(r"^kernel \S+ \(series (\d+\.\d+)\)", text, re.M)
        if not series:
            sys.exit(f"{path}: no 'kernel ... (series X.Y)' line: not a btf_check.py output")
        seen[series.group(1)] = {m.group(1): m.group(2) == "yes"
                                 for m in re.finditer(r"^(\S+)\s+btf=(yes|no)\b", text, re.M)}
    return dict(sorted(seen.items(), key=lambda kv: _rank(kv[0])))


def rewrite(text, seen):
    versions = list(seen)
    measured = "measured = [" + ", ".join(f'"{v}"' for v in versions) + "]"
    if re.search(r"^measured = \[.*\]$", text, re.M):
        text = re.sub(r"^measured = \[.*\]$", measured, text, count=1, flags=re.M)
    else:
        text = re.sub(r"^(checked = \[.*\])$", "\\1\n# kernels whose BTF gave each function's `kernels` (scripts/out-of-line.py)\n"
                      + measured, text, count=1, flags=re.M)
    unknown = []

    def block(m):
        name, body = m.group(1), m.group(2)
        if not any(name in funcs for funcs in seen.values()):
            unknown.append(name)
            return m.group(0)
        have = [v for v in versions if seen[v].get(name)]
        line = "kernels = [" + ", ".join(f'"{v}"' for v in have) + "]"
        if re.search(r"^kernels = .*$", body, re.M):
            body = re.sub(r"^kernels = .*$", line, body, count=1, flags=re.M)
        else:
            body = re.sub(r"^(file = .*)$", r"\1\n" + line, body, count=1, flags=re.M)
        return f"[function.{name}]\n{body}"
    text = re.sub(r"^\[function\.([A-Za-z0-9_]+)\]\n(.*?)(?=^\[|^# -{5,}|\Z)", block, text, flags=re.M | re.S)
    return text, unknown


def main():
    seen = outputs()
    text, unknown = rewrite(PATHS.read_text(), seen)
    PATHS.write_text(text)
    print(f"wrote `kernels` of {PATHS.relative_to(ROOT)} from {', '.join(seen)}", file=sys.stderr)
    for name in unknown:
        print(f"  {name}: in no btf_check.py output, left as it was (run it again where it matters)", file=sys.stderr)


if __name__ == "__main__":
    main()
