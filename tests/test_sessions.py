"""Session files as a whole (issue 22, "Nothing lost, nothing hung").

What no schema of one line can say, show and render hold too: the header is line 1, the end line
is last and counts the records before it, and no JSON object has a key twice.
"""

import json
import subprocess

import pytest

from nshelpers import ELSEWHERE, NSTRACE
from nstrace.cli import main

pytestmark = pytest.mark.root("records sessions with nstrace watch (loads BPF)")


def record(path, *command, buffer_kib=4096):
    """`nstrace watch --record PATH -- COMMAND`: the real writer, the real records."""
    done = subprocess.run([str(NSTRACE), "watch", "--record", str(path), "--buffer-kib", str(buffer_kib), "--",
                           *command], capture_output=True, text=True, timeout=300, cwd=ELSEWHERE)
    assert done.returncode == 0, done.stderr
    lines = path.read_text().splitlines(keepends=True)
    end = json.loads(lines[-1])
    assert end["kind"] == "end" and not any(end["summary"]["lost"].values()), end["summary"]
    return lines


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """header, three unshare records (uts, ipc, net), end: five lines."""
    lines = record(tmp_path_factory.mktemp("small") / "s.jsonl", "sh", "-c",
                   "unshare --uts true; unshare --ipc true; unshare --net true")
    assert len(lines) == 5, lines
    return lines


def _write(tmp_path, lines, name="crafted.jsonl"):
    path = tmp_path / name
    path.write_text("".join(lines))
    return path


def _dup_key(line, key, value):
    """The line with `"key": value` given a second time, first in its object: json.loads keeps the last."""
    at = line.index(f'"{key}":')
    return line[:at] + f'"{key}":{json.dumps(value)},' + line[at:]


def _nested_dup(line):
    return line.replace('"ns_after":{"mnt":', '"ns_after":{"uts":1,"mnt":', 1)


# (what, the damage (the five lines of `small` -> lines), the line named, words of the error)
BROKEN = [
    ("second header", lambda h, r1, r2, r3, e: [h, r1, h, r2, r3, e], 3, "a second header"),
    ("header not first", lambda h, r1, r2, r3, e: [r1, h, r2, r3, e], 2, "a header on line 2"),
    ("two sessions joined", lambda h, r1, r2, r3, e: [h, r1, r2, r3, e, h, r1, r2, r3, e], 6,
     "a header after the end line (line 5)"),
    ("record after the end", lambda h, r1, r2, r3, e: [h, r1, r2, r3, e, r3], 6, "a record after the end line (line 5)"),
    ("second end", lambda h, r1, r2, r3, e: [h, r1, r2, r3, e, e], 6, "a second end line (the first is line 5)"),
    ("a record cut out", lambda h, r1, r2, r3, e: [h, r1, r3, e], 4, "the end line counts 3 records, the file holds 2"),
    ("a record added", lambda h, r1, r2, r3, e: [h, r1, r2, r2, r3, e], 6, "the end line counts 3 records, the file holds 4"),
    ("end without header", lambda h, r1, r2, r3, e: [r1, r2, r3, e], 4, "no header on line 1"),
    ("duplicate key in a record", lambda h, r1, r2, r3, e: [h, _dup_key(r1, "pid", 1), r2, r3, e], 2,
     'key "pid" twice in one object'),
    ("duplicate key in a nested object", lambda h, r1, r2, r3, e: [h, r1, _nested_dup(r2), r3, e], 3,
     'key "uts" twice in one object'),
    ("duplicate key in the header", lambda h, r1, r2, r3, e: [_dup_key(h, "host", "elsewhere"), r1, r2, r3, e], 1,
     'key "host" twice in one object'),
    ("a session line of format null",
     lambda h, r1, r2, r3, e: [h, '{"nstrace_session": null, "kind": "mark"}\n', r1, r2, r3, e], 2,
     "session format null is not a format number"),
    ("duplicate count in the end", lambda h, r1, r2, r3, e: [h, r1, r2, r3, _dup_key(e, "records", 2)], 5,
     'key "records" twice in one object'),
]


@pytest.mark.parametrize("what,damage,line,words", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_session_whose_structure_the_format_forbids_is_refused(small, tmp_path, capsys, what, damage, line, words):
    path = _write(tmp_path, damage(*small))
    want = f"nstrace: error: {path}:{line}: "
    done = subprocess.run([str(NSTRACE), "show", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith(want) and words in done.stderr, (what, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stdout == "", done.stderr
    for args in (["show", "--json"], ["render", "--format", "html"], ["render", "--format", "svg"],
                 ["render", "--format", "perfetto"]):
        capsys.readouterr()
        assert main([*args, str(path)]) == 2, (what, args)
        out, err = capsys.readouterr()
        assert err.startswith(want) and words in err and err.count("\n") == 1 and out == "", (what, args, err)


READABLE = [
    ("the session as written", lambda h, r1, r2, r3, e: [h, r1, r2, r3, e], 3, ", 3 records\n"),
    ("a watch --json capture: records alone", lambda h, r1, r2, r3, e: [r1, r2, r3], 3, "no header (a watch --json file)"),
    ("interrupted: no end line", lambda h, r1, r2, r3, e: [h, r1, r2], 2, "not closed"),
    ("interrupted in a line", lambda h, r1, r2, r3, e: [h, r1, r2, r3[:50]], 2, "cut short"),
    ("a header alone", lambda h, r1, r2, r3, e: [h], 0, ", 0 records"),
    ("blank lines after the end", lambda h, r1, r2, r3, e: [h, r1, r2, r3, e, "\n", "  \n"], 3, ", 3 records"),
    ("an end without a count (it is optional)",
     lambda h, r1, r2, r3, e: [h, r1, r2, r3, json.dumps({k: v for k, v in json.loads(e).items() if k != "records"}) + "\n"],
     3, ", 3 records"),
    ("a line of a kind this nstrace does not know, inside",
     lambda h, r1, r2, r3, e: [h, r1, '{"nstrace_session": 1, "kind": "mark"}\n', r2, r3, e], 3, ", 3 records"),
]


@pytest.mark.parametrize("what,make,count,words", READABLE, ids=[r[0] for r in READABLE])
def test_what_the_format_allows_still_reads(small, tmp_path, what, make, count, words):
    path = _write(tmp_path, make(*small))
    done = subprocess.run([str(NSTRACE), "show", "--json", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (what, done.stderr)
    assert len(done.stdout.splitlines()) == count and words in done.stderr, (what, done.stderr)
