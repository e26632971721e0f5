"""See it: `nstrace ls` against lsns, a recorded session of real scenarios replayed by
`nstrace show` and drawn by `nstrace render` (SVG parsed, HTML loaded in headless Chromium,
the Perfetto JSON validated against the Trace Event Format).

Everything is real: the commands run as processes (show as user nobody), the namespaces
and cgroups are made on the running kernel and removed afterwards.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from nstrace.check import catalogue, checker
from nstrace.kernel import flags as fl
from nstrace.linux import nsmap
from nstrace.session import format, reader, writer
from nstrace.view import graph, table

ROOT = Path(__file__).resolve().parent.parent
# The real CLI, as `python -c` runs it
BOOT = "import sys\nfrom nstrace.cli.main import main\nsys.exit(main(sys.argv[1:]))"
SCENARIOS = ("unshare-uts", "clone-net", "setns-ipc", "clone3-user", "unshare-pid-children-only", "fail-einval")

pytestmark = pytest.mark.root("makes namespaces and cgroups, loads BPF")


def nstrace(*args, as_nobody=False, timeout=120):
    cmd = [sys.executable, "-c", BOOT, *args]
    if as_nobody:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"] + cmd
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd="/", env=env)


def ls_json(*args):
    done = nstrace("ls", "--json", *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- nstrace ls ----------------------------------------------------------------------

def _lsns():
    done = subprocess.run(["lsns", "--json", "-o", "NS,TYPE,NPROCS,PID"], capture_output=True, text=True, check=True)
    return {(n["type"], int(n["ns"])): (int(n["nprocs"]), int(n["pid"]))
            for n in json.loads(done.stdout)["namespaces"] if n.get("nprocs")}


def _ours(doc):
    return {(n["type"], n["inode"]): (n["nprocs"], n["pid"]) for n in doc["namespaces"] if n["nprocs"]}


def test_ls_agrees_with_lsns():
    # Both tools count themselves, so on a quiet machine the maps are equal. Other work on the
    # machine may start or end processes around or between the runs: a look whose two reads of
    # ours differ, or that differs from lsns, is repeated. A real disagreement is one that every
    # look shows: after ten looks, only the namespaces ls and lsns disagreed on every time fail.
    disagreed = None
    for _ in range(10):
        before = _ours(ls_json())
        theirs = _lsns()
        after = _ours(ls_json())
        if before == after == theirs:
            return
        steady = {k for k in before if before[k] == after.get(k)}
        wrong = {k for k in steady if before[k] != theirs.get(k)}
        disagreed = wrong if disagreed is None else disagreed & wrong
        time.sleep(0.2)
    assert not disagreed, {k: (before.get(k), theirs.get(k)) for k in disagreed}


def test_ls_fields_of_a_namespace_holder(ns_holder):
    doc = ls_json("--pid", str(ns_holder))
    mine = {n["type"]: n for n in doc["namespaces"]}
    links = {t: os.stat(f"/proc/{ns_holder}/ns/{t}").st_ino for t in fl.NS_TYPES}
    assert {t: n["inode"] for t, n in mine.items()} == links
    init_user = os.stat("/proc/self/ns/user").st_ino
    init_pid = os.stat("/proc/self/ns/pid").st_ino
    assert mine["user"]["parent"] == init_user and mine["user"]["owner"] == init_user
    assert mine["pid"]["parent"] == init_pid
    for t in ("mnt", "uts", "ipc", "pid", "net", "cgroup", "time"):
        assert mine[t]["owner"] == links["user"], t  # made by one unshare: owned by its new user ns
    for t in ("mnt", "uts", "net"):
        assert mine[t]["parent"] is None
    assert all(n["nprocs"] >= 1 and n["pid"] <= ns_holder for n in mine.values())
    if _kernel_at_least(6, 18):
        ids = {n["ns_id"] for n in mine.values()}
        assert None not in ids and len(ids) == len(mine), "ns_id is unique per namespace"

    only_net = ls_json("--type", "net")["namespaces"]
    assert only_net and {n["type"] for n in only_net} == {"net"}

    tree = ls_json("--tree", "--pid", str(ns_holder))
    (root_pid,) = tree["pid_tree"]
    assert root_pid["inode"] == init_pid
    assert links["pid"] in {c["inode"] for c in root_pid["children"]}
    (root_user,) = tree["user_tree"]
    child_user = next(c for c in root_user["children"] if c["inode"] == links["user"])
    assert {(c["type"], c["inode"]) for c in child_user["children"]} >= {("uts", links["uts"]), ("net", links["net"])}
    text = nstrace("ls", "--tree")
    assert text.returncode == 0 and "PID namespaces:" in text.stdout and f"pid:[{links['pid']}]" in text.stdout
    bad = nstrace("ls", "--pid", "999999999")
    assert bad.returncode == 2 and bad.stderr.startswith("nstrace: error: --pid 999999999")


def _kernel_at_least(major, minor):
    m = re.match(r"(\d+)\.(\d+)", os.uname().release)
    return (int(m.group(1)), int(m.group(2))) >= (major, minor)


def test_ls_lists_namespaces_held_without_processes(tmp_path):
    # a net namespace kept by a bind mount (unshare --net=FILE), a uts one by an fd of ours
    pin = tmp_path / "netns"
    pin.touch()
    subprocess.run(["unshare", f"--net={pin}", "true"], check=True)
    child = subprocess.Popen(["unshare", "--uts", "sleep", "30"])
    try:
        for _ in range(100):
            uts = os.stat(f"/proc/{child.pid}/ns/uts").st_ino
            if uts != os.stat("/proc/self/ns/uts").st_ino:
                break
            time.sleep(0.02)
        fd = os.open(f"/proc/{child.pid}/ns/uts", os.O_RDONLY)
        child.kill()
        child.wait()
        net = os.stat(pin).st_ino
        found = {(n["type"], n["inode"]): n for n in ls_json()["namespaces"]}
        assert found[("net", net)]["nprocs"] == 0
        assert any(str(pin) in h for h in found[("net", net)]["held_by"])
        assert found[("uts", uts)]["nprocs"] == 0
        assert f"fd {fd} of pid {os.getpid()}" in found[("uts", uts)]["held_by"]
        assert found[("uts", uts)]["owner"] == os.stat("/proc/self/ns/user").st_ino
        os.close(fd)
    finally:
        child.kill()
        subprocess.run(["umount", str(pin)], check=False)


CONTAINER_PATHS = {
    "/docker/" + "a" * 64: ("docker", "a" * 64, None),
    "/system.slice/docker-" + "b" * 64 + ".scope": ("docker", "b" * 64, None),
    "/kubepods/burstable/pod0f1e2d3c-1111-2222-3333-444455556666/" + "c" * 64: ("kubernetes", "c" * 64, None),
    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0f1e2d3c_1111_2222_3333_444455556666.slice/"
    "cri-containerd-" + "d" * 64 + ".scope": ("kubernetes", "d" * 64, None),
    "/system.slice/containerd.service/cri-containerd-" + "e" * 64 + ".scope": ("containerd", "e" * 64, None),
    "/machine.slice/libpod-" + "f" * 64 + ".scope/container": ("podman", "f" * 64, None),
    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + "1" * 64 + ".scope": ("podman", "1" * 64, None),
    "/machine.slice/systemd-nspawn@debian.service/payload": ("systemd-nspawn", None, "debian"),
    "/machine.slice/machine-my\\x2dbox.scope": ("systemd-nspawn", None, "my-box"),
    "/lxc.payload.web1": ("lxc", None, "web1"),
}
NOT_CONTAINERS = ("/", "/user.slice/user-0.slice/session-1.scope", "/system.slice/docker.service",
                  "/machine.slice/libpod-conmon-" + "f" * 64 + ".scope",
                  "/process_api/b6db4248276a960cb63cbe0a51635417", "/docker/abc123")


def test_container_classifier():
    for path, (runtime, cid, name) in CONTAINER_PATHS.items():
        got = nsmap.classify_cgroup(path)
        assert got and (got["runtime"], got["id"], got["name"]) == (runtime, cid, name), path
    pod = nsmap.classify_cgroup(next(p for p in CONTAINER_PATHS if "cri-containerd" in p and "kubepods" in p))
    assert pod["pod"] == "0f1e2d3c-1111-2222-3333-444455556666" and pod["engine"] == "containerd"
    for path in NOT_CONTAINERS:
        assert nsmap.classify_cgroup(path) is None, path


def _cgroup_mount():
    """A writable cgroup hierarchy: cgroup2 if mounted, else the v1 pids one."""
    v1 = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, opts = right.split()[:3]
            if fstype == "cgroup2":
                return left.split()[4]
            if fstype == "cgroup" and "pids" in opts.split(","):
                v1 = left.split()[4]
    return v1


def test_ls_recognises_a_docker_named_cgroup():
    base = _cgroup_mount()
    assert base, "no cgroup hierarchy mounted"
    cid = os.urandom(32).hex()
    parent = Path(base) / "docker"
    made_parent = not parent.exists()
    group = parent / cid
    group.mkdir(parents=True)
    child = subprocess.Popen(["unshare", "--uts", "sleep", "30"])
    try:
        (group / "cgroup.procs").write_text(str(child.pid))
        for _ in range(100):
            uts = os.stat(f"/proc/{child.pid}/ns/uts").st_ino
            if uts != os.stat("/proc/self/ns/uts").st_ino:
                break
            time.sleep(0.02)
        mine = {n["type"]: n for n in ls_json("--pid", str(child.pid))["namespaces"]}
        assert mine["uts"]["container"] == {"runtime": "docker", "id": cid, "name": None, "pod": None}
        assert mine["net"]["container"] is None  # shared with the host
        assert {"runtime": "docker", "id": cid, "name": None, "pod": None} in mine["net"]["containers"]
        assert f"docker:{cid[:12]}" in nstrace("ls", "--pid", str(child.pid)).stdout
    finally:
        child.kill()
        child.wait()
        for _ in range(50):  # the kernel empties the cgroup just after the reap
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.05)
        if made_parent:
            parent.rmdir()
    assert not group.exists()


# --- a recorded session ----------------------------------------------------------------

@pytest.fixture(scope="module")
def recorded():
    """A session file of real launcher scenarios, world-readable (show runs as nobody)."""
    where = Path(tempfile.mkdtemp(prefix="nstrace-view-"))
    where.chmod(0o755)
    path = where / "session.jsonl"
    start = time.monotonic()
    with checker.tracer_for_check() as tracer:
        recorder = writer.Recorder(path, tracer)
        tee = writer.RecordingTracer(tracer, recorder)
        results = [checker.run_scenario(catalogue.CATALOGUE[name], tee) for name in SCENARIOS]
        recorder.close(tracer.summary())
    path.chmod(0o644)
    print(f"recorded {recorder.count} records of {len(SCENARIOS)} scenarios in {time.monotonic() - start:.1f} s")
    assert all(r.ok for r in results), [(r.name, r.error) for r in results if not r.ok]
    yield path, reader.load(path)
    shutil.rmtree(where)


def _file_records(path):
    out = []
    for line in path.read_text().splitlines():
        obj = json.loads(line)
        if "nstrace_session" not in obj:
            out.append(obj)
    return out


def test_session_file_format(recorded):
    path, sess = recorded
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    head, end = lines[0], lines[-1]
    assert head["nstrace_session"] == format.VERSION and head["kind"] == "header"
    assert head["kernel"]["release"] == os.uname().release
    assert any(a["probe"] == "syscalls:sys_enter_unshare" and a["attached"] for a in head["availability"])
    assert head["snapshot"]["namespaces"] and head["snapshot"]["processes"]
    assert end["kind"] == "end" and end["summary"]["total"] >= len(sess.records) and end["snapshot"]
    assert len(sess.records) == end["records"] == len(lines) - 2
    ops = {(r.op, tuple(r.flags)) for r in sess.records}
    for want in (("unshare", ("CLONE_NEWUTS",)), ("clone", ("CLONE_NEWNET",)), ("setns", ("CLONE_NEWIPC",)),
                 ("clone3", ("CLONE_NEWUSER",)), ("unshare", ("CLONE_NEWPID",))):
        assert want in ops, want
    assert any(r.errno == "EINVAL" for r in sess.records)
    assert sess.snapshot("start").get("user", os.stat("/proc/self/ns/user").st_ino)


def _show(path, *args):
    done = nstrace("show", str(path), *args, as_nobody=True)
    assert done.returncode == 0, done.stderr
    return done


def _touched(rec):
    value = rec["raw_flags"] & ~fl.CSIGNAL if rec["op"] == "clone" else rec["raw_flags"]
    types = set(fl.ns_types_in(value)) | {fl.ns_type_of_entry(e) for e in rec["changed"]}
    if rec["target"] and rec["target"].get("type"):
        types.add(rec["target"]["type"])
    return types


def test_show_replays_as_nobody_with_watch_filters(recorded):
    path, sess = recorded
    everything = _file_records(path)
    done = _show(path, "--json")
    assert [json.loads(line) for line in done.stdout.splitlines()] == sorted(everything, key=lambda r: r["ts"])
    assert "records" in done.stderr and "summary" in done.stderr

    child = next(r for r in everything if r["op"] == "unshare" and "CLONE_NEWPID" in r["flags"])
    cases = {
        ("--op", "unshare"): lambda r: r["op"] == "unshare",
        ("--op", "setns,clone3"): lambda r: r["op"] in ("setns", "clone3"),
        ("--comm", "unshare"): lambda r: r["comm"] == "unshare",
        ("--type", "net"): lambda r: "net" in _touched(r),
        ("--type", "pid", "--type", "ipc"): lambda r: _touched(r) & {"pid", "ipc"},
        ("--pid", str(child["pid"])): lambda r: child["pid"] in (r["pid"], r["ppid"]),
        ("--pid", str(child["pid"]), "--op", "clone"): lambda r: r["pid"] == child["pid"] and r["op"] == "clone",
    }
    for args, want in cases.items():
        expected = sorted((r for r in everything if want(r)), key=lambda r: r["ts"])
        got = [json.loads(line) for line in _show(path, "--json", *args).stdout.splitlines()]
        assert got == expected and got, args

    shown = _show(path, "--op", "unshare").stdout
    rows = [table.row(r) for r in sess.records if r.op == "unshare"]
    assert shown.startswith(table.header()) and all(row in shown for row in rows)
    assert "unshare" in shown and "total" in shown


def test_show_reads_watch_json_and_interrupted_sessions(recorded, tmp_path):
    path, _ = recorded
    lines = path.read_text().splitlines()
    plain = tmp_path / "watch.jsonl"
    plain.write_text("\n".join(lines[1:-1]) + "\n")  # what `watch --json > FILE` writes
    done = nstrace("show", str(plain), "--json")
    assert done.returncode == 0 and len(done.stdout.splitlines()) == len(lines) - 2, done.stderr
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:-1]) + "\n" + lines[-2][:40])  # killed mid-line, no end
    done = nstrace("show", str(cut))
    assert done.returncode == 0 and "cut short" in done.stderr and "not closed" in done.stderr
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"nstrace_session": format.VERSION + 1, "kind": "header"}) + "\n")
    for bad in (newer, tmp_path / "missing.jsonl", Path("/etc/hostname")):
        done = nstrace("show", str(bad))
        assert done.returncode == 2 and done.stderr.startswith("nstrace: error:") and done.stderr.count("\n") == 1, bad


def test_render_svg_has_a_node_per_namespace_and_process(recorded, tmp_path):
    path, sess = recorded
    out = tmp_path / "s.svg"
    done = nstrace("render", str(path), "--format", "svg", "-o", str(out), as_nobody=False)
    assert done.returncode == 0, done.stderr
    root = ET.parse(out).getroot()
    ns = "{http://www.w3.org/2000/svg}"
    ids = {g.get("id") for g in root.iter(f"{ns}g") if g.get("class") == "node"}
    edges = [g for g in root.iter(f"{ns}g") if g.get("class") == "edge"]
    for rec in sess.records:
        assert any(i == f"pid-{rec.pid}" or i.startswith(f"pid-{rec.pid}-") for i in ids), rec.pid
        if rec.child_pid:
            assert any(i == f"pid-{rec.child_pid}" or i.startswith(f"pid-{rec.child_pid}-") for i in ids)
        for entry in rec.changed:
            want = graph.ns_node_id(fl.ns_type_of_entry(entry), rec.ns_after[entry], rec.ns_id_after[entry])
            assert want in ids, (rec.op, entry, want)
    created = sum(1 for r in sess.records if r.ok and r.op != "setns" and
                  set(fl.ns_types_in(r.raw_flags & ~fl.CSIGNAL)) & {fl.ns_type_of_entry(e) for e in r.changed})
    titles = ["".join(t.itertext()) for g in edges for t in g.iter(f"{ns}text")]
    assert sum("created" in t for t in titles) >= created > 0
    assert any("joined (setns)" in t for t in titles)
    numbers = [int(t.split(".")[0]) for t in titles if re.match(r"\d+\. ", t)]
    assert numbers and max(numbers) <= len(sess.records)


def _chromium(url, user_data):
    cmd = ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={user_data}", "--enable-logging=stderr", "--v=0", "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _console_errors(stderr):
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


def validate_trace_events(doc):
    """The Trace Event Format's required fields and types (JSON object form); raises AssertionError."""
    assert isinstance(doc, dict) and isinstance(doc.get("traceEvents"), list)
    assert doc.get("displayTimeUnit", "ms") in ("ms", "ns")
    for ev in doc["traceEvents"]:
        assert isinstance(ev, dict), ev
        assert isinstance(ev.get("name"), str) and ev["name"], ev
        assert ev.get("ph") in ("X", "i", "I", "M", "B", "E"), ev
        assert isinstance(ev.get("pid"), int) and isinstance(ev.get("tid"), int), ev
        if "args" in ev:
            assert isinstance(ev["args"], dict), ev
        if "cat" in ev:
            assert isinstance(ev["cat"], str), ev
        if ev["ph"] == "M":
            assert ev["name"] in ("process_name", "thread_name", "process_sort_index", "thread_sort_index")
            assert isinstance(ev["args"].get("name", ev["args"].get("sort_index")), (str, int)), ev
            continue
        assert isinstance(ev.get("ts"), (int, float)) and not isinstance(ev["ts"], bool) and ev["ts"] >= 0, ev
        if ev["ph"] == "X":
            assert isinstance(ev.get("dur"), (int, float)) and ev["dur"] >= 0, ev
        if ev["ph"] in ("i", "I"):
            assert ev.get("s", "t") in ("g", "p", "t"), ev


def test_render_perfetto_is_valid_trace_event_json(recorded, tmp_path):
    path, sess = recorded
    out = tmp_path / "s.json"
    done = nstrace("render", str(path), "--format", "perfetto", "-o", str(out), as_nobody=False)
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    validate_trace_events(doc)
    ops = [e for e in doc["traceEvents"] if e["ph"] == "X" and e.get("cat", "").startswith("namespace,")]
    assert sorted((e["pid"], e["tid"], e["args"]["ret"]) for e in ops) == \
        sorted((r.pid, r.tid, r.ret) for r in sess.records)
    named = {e["pid"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert {r.pid for r in sess.records} <= named
    joined = [e for e in doc["traceEvents"] if e["ph"] == "i" and e["name"].startswith("joined ipc:")]
    assert joined
    only = nstrace("render", str(path), "--format", "perfetto", "--op", "setns")
    assert only.returncode == 0, only.stderr
    picked = [e for e in json.loads(only.stdout)["traceEvents"] if e["ph"] == "X"]
    assert picked and all(e["name"].startswith("setns") for e in picked)
    with pytest.raises(AssertionError):
        validate_trace_events({"traceEvents": [{"ph": "X", "name": "x", "pid": 1, "tid": 1, "ts": 0}]})  # no dur


# --- outside data: hostile processes, crafted session files (issue 14, "Found" 5-7) -----------

HOSTILE_ARGV = "\x1b[2J\x1b]0;owned\x07\u202e\x85end"  # clear screen, set title, bell, bidi override, C1 NEL
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def test_ls_escapes_other_users_names_and_command_lines():
    script = ("import ctypes, sys, time\n"
              "ctypes.CDLL(None).prctl(15, ctypes.c_char_p(b'\\x1b[31mred\\n'), 0, 0, 0)\n"
              "print('ready', flush=True); time.sleep(30)\n")
    child = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
                              "unshare", "--user", "--uts", sys.executable, "-c", script, HOSTILE_ARGV],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        pid = int(subprocess.run(["pgrep", "-P", str(child.pid)], capture_output=True, text=True).stdout or child.pid)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            assert HOSTILE_ARGV.encode() in f.read()  # the kernel really holds it
        for args in (("ls",), ("ls", "--tree"), ("ls", "--pid", str(pid))):
            done = nstrace(*args)
            assert done.returncode == 0, done.stderr
            assert not CONTROL.search(done.stdout), (args, CONTROL.search(done.stdout))
        tree = nstrace("ls", "--tree").stdout
        assert "\\x1b[31mred\\n" in tree
        doc = ls_json("--pid", str(pid))
        mine = [n for n in doc["namespaces"] if n["pid"] == pid]
        assert mine and mine[0]["comm"] == "\\x1b[31mred\\n" and not CONTROL.search(json.dumps(doc, ensure_ascii=False))
        assert mine[0]["command"].endswith(" \\x1b[2J\\x1b]0;owned\\x07\\u202e\\u0085end"), mine[0]["command"]
    finally:
        child.kill()
        child.wait()


def _write_session(path, lines):
    path.write_text("".join(line if isinstance(line, str) else json.dumps(line) + "\n" for line in lines))
    path.chmod(0o644)
    return path


def _session_lines(recorded):
    path, _ = recorded
    return [json.loads(line) for line in path.read_text().splitlines()]


def _with(obj, **changes):
    out = json.loads(json.dumps(obj))
    out.update(changes)
    return out


def _without(obj, *keys):
    out = json.loads(json.dumps(obj))
    for key in keys:
        out.pop(key)
    return out


def _in(obj, field, value):
    out = json.loads(json.dumps(obj))
    node = out
    *parents, last = field
    for key in parents:
        node = node[key]
    node[last] = value
    return out


# (what, line number it is on, the field named, how the line is damaged: header, record, end -> lines)
CRAFTED = [
    ("pid not an integer", 2, "pid", lambda h, r, e: [h, _with(r, pid="<script>alert(1)</script>"), e]),
    ("negative pid", 2, "pid", lambda h, r, e: [h, _with(r, pid=-1), e]),
    ("huge pid", 2, "pid", lambda h, r, e: [h, _with(r, pid=2 ** 70), e]),
    ("boolean pid", 2, "pid", lambda h, r, e: [h, _with(r, pid=True), e]),
    ("ts beyond year 9999", 2, "ts", lambda h, r, e: [h, _with(r, ts=1e308), e]),
    ("negative ts", 2, "ts", lambda h, r, e: [h, _with(r, ts=-5), e]),
    ("no comm", 2, "comm", lambda h, r, e: [h, _without(r, "comm"), e]),
    ("comm not a string", 2, "comm", lambda h, r, e: [h, _with(r, comm=["x"]), e]),
    ("ESC in comm", 2, "comm", lambda h, r, e: [h, _with(r, comm="\x1b[2Jx"), e]),
    ("bidi override in comm", 2, "comm", lambda h, r, e: [h, _with(r, comm="a\u202eb"), e]),
    ("unknown changed entry", 2, "changed[0]", lambda h, r, e: [h, _with(r, changed=["bogus"]), e]),
    ("changed not a list", 2, "changed", lambda h, r, e: [h, _with(r, changed="uts"), e]),
    ("unknown op", 2, "op", lambda h, r, e: [h, _with(r, op="spawn"), e]),
    ("ns_after not a map", 2, "ns_after", lambda h, r, e: [h, _with(r, ns_after=[1, 2]), e]),
    ("inode a string", 2, "ns_after.uts", lambda h, r, e: [h, _in(r, ["ns_after", "uts"], "4026531838"), e]),
    ("unknown ns entry", 2, "ns_before", lambda h, r, e: [h, _in(r, ["ns_before", "bogus"], 1), e]),
    ("nsproxy without after", 2, "nsproxy.after", lambda h, r, e: [h, _with(r, nsproxy={"before": "0a0b0c0d"}), e]),
    ("nsproxy with markup", 2, "nsproxy.before", lambda h, r, e: [h, _with(r, nsproxy={"before": "<b>", "after": None}), e]),
    ("errno with markup", 2, "errno", lambda h, r, e: [h, _with(r, errno="<img src=x onerror=alert(1)>"), e]),
    ("flags not names", 2, "flags[0]", lambda h, r, e: [h, _with(r, flags=["\x1b[31m"]), e]),
    ("proc_check without status", 2, "proc_check.status", lambda h, r, e: [h, _with(r, proc_check={"pid": 1}), e]),
    ("proc_check diff without kernel", 2, "proc_check.diff.uts.kernel",
     lambda h, r, e: [h, _with(r, proc_check={"status": "mismatch", "pid": 1, "diff": {"uts": {"proc": 1}}}), e]),
    ("nsfs target without type", 2, "target.type", lambda h, r, e: [h, _with(r, op="setns", target={"fd": 3, "kind": "nsfs"}), e]),
    ("kernel path step without func", 2, "kernel_path[0].func",
     lambda h, r, e: [h, _with(r, kernel_path=[{"file": "kernel/fork.c", "kind": "enter", "short": ""}]), e]),
    ("header without started", 1, "started", lambda h, r, e: [_without(h, "started"), r, e]),
    ("header host with a terminal escape", 1, "host", lambda h, r, e: [_with(h, host="\x1b]0;owned\x07"), r, e]),
    ("availability row without probe", 1, "availability[0].probe",
     lambda h, r, e: [_with(h, availability=[{"layer": "syscall", "hook": None, "attached": True, "reason": ""}]), r, e]),
    ("snapshot process with a bogus ns entry", 1, "snapshot.processes[0].ns",
     lambda h, r, e: [_in(h, ["snapshot", "processes", 0, "ns"], {"bogus": 1}), r, e]),
    ("snapshot namespace without inode", 1, "snapshot.namespaces[0].inode",
     lambda h, r, e: [_in(h, ["snapshot", "namespaces", 0], {"type": "uts"}), r, e]),
    ("end without ended", 3, "ended", lambda h, r, e: [h, r, _without(e, "ended")]),
    ("lost events not counts", 3, "summary.lost.ringbuf",
     lambda h, r, e: [h, r, _with(e, summary={"lost": {"ringbuf": "many"}})]),
]

NOT_JSON = [
    ("NaN", 2, "NaN", lambda h, r, e: [h, json.dumps(r).replace('"duration_us":', '"duration_us":NaN,"x":') + "\n", e]),
    ("Infinity", 2, "Infinity", lambda h, r, e: [h, json.dumps(r).replace('"duration_us":', '"duration_us":-Infinity,"x":') + "\n", e]),
    ("1e999", 2, "does not fit", lambda h, r, e: [h, json.dumps(r).replace('"duration_us":', '"duration_us":1e999,"x":') + "\n", e]),
    ("a lone surrogate", 2, "surrogate", lambda h, r, e: [h, json.dumps(_with(r, comm="\udc80"), ensure_ascii=True) + "\n", e]),
    ("deep nesting", 2, "nested too deeply", lambda h, r, e: [h, "[" * 100000 + "]" * 100000 + "\n", e]),
    ("a 5000-digit number", 2, "number too long", lambda h, r, e: [h, '{"pid": ' + "9" * 5000 + "}\n", e]),
    ("not an object", 2, "not an object", lambda h, r, e: [h, "[1, 2]\n", e]),
    ("not JSON", 2, "not JSON", lambda h, r, e: [h, "{oops\n", e]),
    ("a newer format", 1, "newer than", lambda h, r, e: [_with(h, nstrace_session=99), r, e]),
    ("a format that is not a number", 1, "not a format number", lambda h, r, e: [_with(h, nstrace_session="1"), r, e]),
]


@pytest.mark.parametrize("what,line,field,damage", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_a_crafted_session_file_is_refused_naming_line_and_field(recorded, tmp_path, capsys, what, line, field,
                                                                 damage):
    from nstrace.cli.main import main
    lines = _session_lines(recorded)
    header, record, end = lines[0], lines[1], lines[-1]
    path = _write_session(tmp_path / "crafted.jsonl", damage(header, record, end))
    want = f"nstrace: error: {path}:{line}: field {field}:"
    done = nstrace("show", str(path))  # the command as a user runs it
    assert done.returncode == 2 and done.stderr.startswith(want), (what, done.stderr)
    assert done.stderr.count("\n") == 1 and not CONTROL.search(done.stderr), done.stderr
    for args in (["show", "--json"], ["render", "--format", "perfetto"], ["render", "--format", "html"]):
        capsys.readouterr()
        assert main([*args, str(path)]) == 2, (what, args)  # the same entry point, in this process
        err = capsys.readouterr().err
        assert err.startswith(want) and err.count("\n") == 1, (what, args, err)


@pytest.mark.parametrize("what,line,words,damage", NOT_JSON, ids=[c[0] for c in NOT_JSON])
def test_a_session_line_that_is_not_strict_json_is_refused(recorded, tmp_path, what, line, words, damage):
    lines = _session_lines(recorded)
    path = _write_session(tmp_path / "crafted.jsonl", damage(lines[0], lines[1], lines[-1]))
    done = nstrace("show", str(path))
    assert done.returncode == 2 and done.stderr.startswith(f"nstrace: error: {path}:{line}: "), (what, done.stderr)
    assert words in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_the_compiled_validator_is_made_from_the_schema_in_the_repo():
    import importlib.util

    import fastjsonschema
    generated = (ROOT / "nstrace" / "session" / "_schema.py").read_text()
    made_by = re.search(r'^VERSION = "([^"]+)"', generated, re.M).group(1)
    if made_by != fastjsonschema.VERSION:
        pytest.skip(f"nstrace/session/_schema.py was made by fastjsonschema {made_by}, {fastjsonschema.VERSION} is "
                    "installed: its code differs by version (the fuzz still checks it against jsonschema)")
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "session-validator.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.code() == generated, "nstrace/session/_schema.py is stale: run scripts/session-validator.py"


def test_every_line_nstrace_writes_meets_the_published_schema(recorded, tmp_path):
    """The schema is valid draft-07 (jsonschema checks it), and what watch writes (Python's
    recorder and native/batch.c) passes it."""
    import jsonschema
    schema = json.loads((ROOT / "nstrace" / "session" / "schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    reference = jsonschema.Draft7Validator(schema)
    for obj in _session_lines(recorded):
        assert not list(reference.iter_errors(obj))
    # native/batch.c's lines (watch --json without --record)
    watch = subprocess.Popen([str(NSTRACE_BIN), "watch", "--json", "--comm", "unshare", "--count", "3"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "tracing live" in watch.stderr.readline()
    for flags in (["--uts"], ["--ipc", "--net"], ["--mount", "--propagation", "private"]):
        subprocess.run(["unshare", *flags, "true"], check=True)
    out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert len(out.splitlines()) == 3
    for line in out.splitlines():
        assert not list(reference.iter_errors(json.loads(line))), line
    plain = _write_session(tmp_path / "watch.jsonl", out.splitlines(keepends=True))
    assert nstrace("show", str(plain)).returncode == 0


NSTRACE_BIN = ROOT / ".venv" / "bin" / "nstrace"


def test_show_escapes_what_the_schema_lets_through(recorded, tmp_path):
    # a soft hyphen (U+00AD) and a zero-width space are no control characters (the schema allows
    # them) but a terminal does not show them: the table shows them as escapes
    lines = _session_lines(recorded)
    path = _write_session(tmp_path / "s.jsonl", [_with(lines[0], host="vm\u00ad1"), _with(lines[1], comm="a\u200bb")])
    done = nstrace("show", str(path))
    assert done.returncode == 0, done.stderr
    assert "a\\u200bb" in done.stdout and "vm\\xad1" in done.stderr
    assert "\u200b" not in done.stdout and "\u00ad" not in done.stderr


def test_markup_in_fields_stays_text_in_svg_and_html(recorded, tmp_path):
    lines = _session_lines(recorded)
    comm = '&#27;<img src=x onerror=alert(1)>"\\N'  # dot decodes entities and \N in labels
    hostile = [_with(lines[0], host="<script>alert(1)</script>")] + \
        [_with(r, comm=comm) if "nstrace_session" not in r else r for r in lines[1:]]
    path = _write_session(tmp_path / "s.jsonl", hostile)
    svg = nstrace("render", str(path), "--format", "svg")
    assert svg.returncode == 0, svg.stderr
    root = ET.fromstring(svg.stdout)  # well-formed XML
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert any(comm in t for t in texts) and "\x1b" not in svg.stdout
    page = nstrace("render", str(path), "--format", "html")
    assert page.returncode == 0, page.stderr
    import html.parser

    class Tags(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.handlers, self.csp = [], [], None

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.handlers += [a for a, _ in attrs if a.startswith("on")]
            if tag == "meta" and ("http-equiv", "Content-Security-Policy") in attrs:
                self.csp = dict(attrs)["content"]
    tags = Tags()
    tags.feed(page.stdout)
    assert tags.tags.count("script") == 1 and "img" not in tags.tags and tags.handlers == []
    assert "unsafe-inline" not in tags.csp and "script-src 'sha256-" in tags.csp and "style-src 'sha256-" in tags.csp
    assert "style=" not in page.stdout  # every style is the hashed <style>: no attribute needs 'unsafe-inline'
    if os.path.exists("/usr/bin/chromium"):
        (tmp_path / "s.html").write_text(page.stdout)
        shown = _chromium((tmp_path / "s.html").as_uri(), tmp_path / "profile")
        assert _console_errors(shown.stderr) == [] and 'data-ready="1"' in shown.stdout, shown.stderr[-2000:]


# Hypothesis: damaged and crafted session files through show and render, every format, in-process
# (the real CLI entry point): exit 0 or 2, one error line, never a traceback, and what is written
# stays well-formed and escaped.

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

HOSTILE_TEXT = st.lists(st.sampled_from(list("ab<>&\"'\\;:/.-_ 0x") + ["\x1b", "\x00", "\n", "\x85", "\u202e",
                                                                         "\u2028", "\udc80", "é", "&#27;", "\\N"]),
                        max_size=8).map("".join)
PRINTABLE_TEXT = st.lists(st.sampled_from(list("ab<>&\"'\\;:/. 0x") + ["&#27;", "\\N", "é", "\u00ad", "]]>", "-->"]),
                          max_size=6).map("".join)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70) |
    st.floats(allow_nan=False, allow_infinity=False) | HOSTILE_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(HOSTILE_TEXT, inner, max_size=3), max_leaves=8)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(obj, list):
        for i, value in enumerate(obj[:4]):
            yield from _paths(value, prefix + (i,))


TEXT_FIELDS = {"comm", "host", "nstrace", "release", "version", "machine", "reason", "command", "probe"}


@st.composite
def damaged_sessions(draw, lines):
    out = [json.loads(json.dumps(line)) for line in lines]
    if draw(st.booleans()):
        # valid files with hostile text where the schema allows any text: what the renderers must escape
        for _ in range(draw(st.integers(1, 6))):
            i = draw(st.integers(0, len(out) - 1))
            where = [p for p in _paths(out[i]) if p and p[-1] in TEXT_FIELDS]
            if where:
                path = draw(st.sampled_from(where))
                node = out[i]
                for key in path[:-1]:
                    node = node[key]
                if isinstance(node[path[-1]], str):
                    node[path[-1]] = draw(PRINTABLE_TEXT)
        return "".join(json.dumps(line) + "\n" for line in out), out
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(out) - 1))
        if not isinstance(out[i], (dict, list)):
            continue
        where = draw(st.sampled_from(list(_paths(out[i]))[:400]))
        action = draw(st.sampled_from(["replace", "delete", "add", "text", "text"]))
        if not where:
            out[i] = draw(JSON_VALUES) if action == "replace" else out[i]
            continue
        node = out[i]
        for key in where[:-1]:
            node = node[key]
        if action == "delete" and isinstance(node, dict):
            node.pop(where[-1])
        elif action == "add" and isinstance(node, dict):
            node[draw(HOSTILE_TEXT)] = draw(JSON_VALUES)
        elif action == "text":
            if isinstance(node[where[-1]], str):  # markup and escapes any text field may hold
                node[where[-1]] = draw(PRINTABLE_TEXT)
        else:
            node[where[-1]] = draw(JSON_VALUES)
    text = "".join(json.dumps(line, ensure_ascii=draw(st.booleans())) + "\n" for line in out)
    if draw(st.integers(0, 9)) == 0:  # cut short, as a killed recorder leaves it
        text = text[:draw(st.integers(0, len(text)))]
    return text, out


def _small_session(recorded):
    lines = _session_lines(recorded)
    head, end = dict(lines[0]), dict(lines[-1])
    # the snapshots hold every process: a few of each keep the fuzz quick
    for line in (head, end):
        line["snapshot"] = dict(line["snapshot"], namespaces=line["snapshot"]["namespaces"][:3],
                                processes=line["snapshot"]["processes"][:3])
    records = lines[1:-1]
    kept = records[:2] + [r for r in records if r["op"] == "setns"][:1]
    end["records"] = len(kept)  # the end counts the records it closes: an undamaged file reads
    return [head] + kept + [end]


@pytest.fixture(scope="module")
def fuzz_base(recorded):
    return _small_session(recorded)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzz_session_files_through_show_and_render(fuzz_base, tmp_path, capsys, data):
    import fastjsonschema
    import jsonschema

    from nstrace.cli.main import main
    from nstrace.session import _schema as _session_schema
    text, objects = data.draw(damaged_sessions(fuzz_base))
    path = tmp_path / "fuzz.jsonl"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    # the compiled validator and the reference implementation agree on the published schema
    reference = jsonschema.Draft7Validator(json.loads((ROOT / "nstrace" / "session" / "schema.json").read_text()))
    for obj in objects:
        if isinstance(obj, dict) and not re.search(r"\\n\"", json.dumps(obj)):  # (Python's $ matches before \n)
            try:
                _session_schema.validate(obj)
                fast = True
            except fastjsonschema.JsonSchemaValueException:
                fast = False
            assert fast == reference.is_valid(obj), obj
    for args in (["show"], ["show", "--json"], ["render", "--format", "perfetto"], ["render", "--format", "svg"],
                 ["render", "--format", "html"]):
        capsys.readouterr()
        code = main([*args, str(path)])
        out, err = capsys.readouterr()
        assert code in (0, 2), (args, code, err)
        event(f"{args[-1]} exit {code}")
        if code == 2:
            last = err.splitlines()[-1]
            assert last.startswith("nstrace: error: ") and err.count("nstrace: error:") == 1, err
            continue
        assert not CONTROL.search(out) and not CONTROL.search(err), (args, out[-500:], err)
        if args == ["show", "--json"]:
            [json.loads(line) for line in out.splitlines()]
        elif args[-1] == "perfetto":
            validate_trace_events(json.loads(out))
        elif args[-1] == "svg":
            ET.fromstring(out)
        elif args[-1] == "html":
            assert out.count("<script") == 1 and "unsafe-inline" not in out


@pytest.mark.parametrize("command,args,words", [
    ("show", ["--op", ""], ["--op", "valid are"]), ("show", ["--comm", " , "], ["--comm"]),
    ("render", ["--op", ","], ["--op"]), ("render", ["--format", "svg", "-o", ""], ["file name"]),
], ids=["show-op-empty", "show-comm-blank", "render-op-empty", "render-out-empty"])
def test_empty_values_are_refused_as_watch_refuses_them(recorded, command, args, words):
    """show and render take watch's filters: given only empty values, they refuse them as watch
    does, instead of showing everything as if no filter had been asked for."""
    path, _ = recorded
    done = nstrace(command, str(path), *args, as_nobody=True)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.startswith("nstrace: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert all(word in done.stderr for word in words), done.stderr


def test_show_json_of_a_session_from_before_cgroup_id_is_valid_json_again(tmp_path):
    """A session written before records carried cgroup_id: `show --json` leaves the key out, as the
    file did, rather than writing the null the schema refuses (show could not read its own output)."""
    data = Path(__file__).parent / "data" / "lab-6.1-demo-clone.jsonl"
    old = tmp_path / "old.jsonl"
    lines = [json.loads(line) for line in data.read_text().splitlines()]
    for obj in lines:
        if "nstrace_session" not in obj:
            obj.pop("cgroup_id", None)
            obj.pop("container", None)
    old.write_text("".join(json.dumps(obj) + "\n" for obj in lines))
    done = nstrace("show", str(old), "--json")
    assert done.returncode == 0, done.stderr
    assert done.stdout and all("cgroup_id" not in json.loads(line) for line in done.stdout.splitlines())
    again = tmp_path / "again.jsonl"
    again.write_text(done.stdout)
    assert nstrace("show", str(again), "--json").stdout == done.stdout
