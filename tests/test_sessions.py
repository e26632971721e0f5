"""Session files as a whole, and render's limits (issue 22, "Nothing lost, nothing hung").

What no schema of one line can say, show and render hold too: the header is line 1, the end line
is last and counts the records before it, and no JSON object has a key twice. And a session of
10,000 records, recorded by a real `nstrace watch --record` of a loop of unshares, renders within
the limits the README states: dot never runs on a graph it cannot lay out in seconds, nor for
longer than its timeout, and the page grows by the bytes per operation the README says.
"""

import json
import re
import subprocess
import sys

import psutil
import pytest
from nshelpers import ELSEWHERE, NSTRACE, ROOT

from nstrace.cli.main import main
from nstrace.session import reader, writer
from nstrace.view import graph
from nstrace.view import page as pagemod

pytestmark = pytest.mark.root("records sessions with nstrace watch (loads BPF)")

BIG = 10_000
UNSHARE_LOOP = ("import ctypes, sys\n"
                "libc = ctypes.CDLL(None, use_errno=True)\n"
                "for _ in range(int(sys.argv[1])):\n"
                "    if libc.unshare(0x04000000):  # CLONE_NEWUTS: a new uts namespace each time\n"
                "        sys.exit(f'unshare: errno {ctypes.get_errno()}')\n")


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


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A session of BIG unshare(CLONE_NEWUTS) records by one process, and its lines."""
    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    lines = record(path, sys.executable, "-c", UNSHARE_LOOP, str(BIG), buffer_kib=65536)
    assert len(lines) == BIG + 2
    return path, lines


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
    ("a session line of kind record is no record",
     lambda h, r1, r2, r3, e: [h, r1, '{"nstrace_session": 1, "kind": "record"}\n', r2, r3, e], 3, ", 3 records"),
    ("a line of a kind this nstrace does not know, inside",
     lambda h, r1, r2, r3, e: [h, r1, '{"nstrace_session": 1, "kind": "mark"}\n', r2, r3, e], 3, ", 3 records"),
]


@pytest.mark.parametrize("what,make,count,words", READABLE, ids=[r[0] for r in READABLE])
def test_what_the_format_allows_still_reads(small, tmp_path, what, make, count, words):
    path = _write(tmp_path, make(*small))
    done = subprocess.run([str(NSTRACE), "show", "--json", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (what, done.stderr)
    assert len(done.stdout.splitlines()) == count and words in done.stderr, (what, done.stderr)


# --- render: a real 10,000-record session ------------------------------------------------------

def _readme_page_sizes():
    """The README's figures for the page: (at most, for an unshare) bytes per operation."""
    text = (ROOT / "README.md").read_text()
    bound = re.search(r"The page adds under (\d+(?:\.\d+)?) KB per operation", text)
    unshare = re.search(r"(\d+) bytes for an unshare", text)
    assert bound and unshare, "README: render and large sessions"
    return float(bound.group(1)) * 1024, int(unshare.group(1))


def test_render_html_of_10000_records_leaves_out_the_graph_and_grows_linearly(big, tmp_path):
    path, lines = big
    page = tmp_path / "big.html"
    done = subprocess.run([str(NSTRACE), "render", str(path), "--format", "html", "-o", str(page)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "without the graph" in line]
    assert len(warnings) == 1 and f"more than render lays out ({graph.GRAPH_MAX})" in warnings[0], done.stderr
    text = page.read_text()
    drawn = text.split('<section id="graph">', 1)[1].split("</section>", 1)[0]
    assert "<svg" not in drawn and "Not drawn: the graph has" in drawn  # dot never ran
    assert all(f'id="op-{n}"' in text for n in (1, BIG // 2, BIG))
    # one unshare(CLONE_NEWUTS) path, written once; every other operation links to it
    assert text.count('<div class="steps">') == 1 and text.count('as for <a href="#op-1">1</a>') == BIG - 1
    fixed = len(pagemod.html_page(reader.load(_write(tmp_path, lines[:2], "one.jsonl"))))  # one operation's page
    per_op = (len(text.encode()) - fixed) / (BIG - 1)
    bound, unshare = _readme_page_sizes()
    assert per_op < bound and abs(per_op - unshare) < unshare / 5, (per_op, bound, unshare)


def test_render_svg_of_10000_records_is_refused_and_a_narrowed_one_drawn(big):
    path, lines = big
    done = subprocess.run([str(NSTRACE), "render", str(path), "--format", "svg"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.startswith("nstrace: error: the graph has ") and done.stderr.count("\n") == 1, done.stderr
    assert f"more than render lays out ({graph.GRAPH_MAX})" in done.stderr and "--pid" in done.stderr
    # one namespace of the middle: by its ns_id (its inode number was reused many times over the loop)
    middle = json.loads(lines[BIG // 2])
    narrowed = subprocess.run([str(NSTRACE), "render", str(path), "--format", "svg", "--ns",
                               str(middle["ns_id_after"]["uts"])], capture_output=True, text=True, timeout=60)
    assert narrowed.returncode == 0, narrowed.stderr
    assert narrowed.stdout.lstrip().startswith("<?xml") and f"ns_id {middle['ns_id_after']['uts']}" in narrowed.stdout


def test_render_perfetto_of_10000_records(big):
    path, _ = big
    done = subprocess.run([str(NSTRACE), "render", str(path), "--format", "perfetto"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    events = json.loads(done.stdout)["traceEvents"]
    assert sum(e["ph"] == "X" and e["cat"] == "namespace,unshare" for e in events) == BIG


def test_dot_is_stopped_at_its_timeout(big, tmp_path, capsys, monkeypatch):
    """A graph under GRAPH_MAX that dot takes longer than DOT_TIMEOUT_S on: one error line, exit 1
    (README: exit codes), and no dot left running. The same file renders with the real timeout."""
    _, lines = big
    # one process, 1,900 namespaces and edges: 3,801 nodes and edges, a second or two for dot
    path = _write(tmp_path, lines[:1901], "cut.jsonl")
    capsys.readouterr()
    assert main(["render", str(path), "--format", "svg", "-o", str(tmp_path / "cut.svg")]) == 0
    assert (tmp_path / "cut.svg").read_text().count('class="node"') == 1901
    monkeypatch.setattr(graph, "DOT_TIMEOUT_S", 0.2)
    capsys.readouterr()
    assert main(["render", str(path), "--format", "svg"]) == 1
    out, err = capsys.readouterr()
    assert err == ("nstrace: error: graphviz dot did not lay out this graph within 0.2 s (stopped); narrow the "
                   f"session with {graph.NARROW}\n") and out == "", err
    assert not [p for p in psutil.Process().children(recursive=True) if p.name() == "dot"]


def test_the_page_holds_at_most_page_paths_max_kernel_paths(small, tmp_path, capsys, monkeypatch):
    """Past PAGE_PATHS_MAX different kernel-path tables, a row says its path is not shown, and
    stderr says how many were left out. (Three unshares of three types: three different paths.)"""
    path = _write(tmp_path, small)
    monkeypatch.setattr(pagemod, "PAGE_PATHS_MAX", 2)
    capsys.readouterr()
    assert main(["render", str(path), "--format", "html", "-o", str(tmp_path / "s.html")]) == 0
    err = capsys.readouterr().err
    assert "the page shows 2 different kernel paths; those of 1 more operations are left out" in err, err
    text = (tmp_path / "s.html").read_text()
    assert text.count('<div class="steps">') == 2 and "not shown: the page holds 2 different kernel paths" in text


def test_a_session_cut_by_a_full_disk_reads_back(big, tmp_path):
    """A record that did not fit leaves a part of its line: no end line may follow it (it would make
    a file that show refuses), whatever room there is when the recorder closes. A real tmpfs fills
    up, then grows (a transient ENOSPC: space freed meanwhile)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "none", str(disk)], check=True)
    try:
        records = reader.load(big[0]).records
        recorder = writer.Recorder(disk / "s.jsonl", snapshots=False)
        with pytest.raises(OSError):
            for rec in records:
                recorder.write(rec)
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        recorder.close({"events": {}, "total": recorder.count, "lost": {"ringbuf": 0, "inflight": 0}})
        back = reader.load(disk / "s.jsonl")
        # the record that did not fit is there whole where closing flushed the rest of its line
        assert back.end is None and 0 < len(back.records) <= recorder.count + 1
        assert "not closed" in back.describe()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)
