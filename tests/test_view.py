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

from nstrace import checker, display, nsmap, render, scenarios, session
from nstrace import flags as fl

ROOT = Path(__file__).resolve().parent.parent
# The real CLI; ls/show/render are added to it here only until nstrace/cli.py registers them.
BOOT = ("import sys\nfrom nstrace import cli, viewcli\n"
        "[cli.cli.add_command(c) for c in viewcli.COMMANDS if c.name not in cli.cli.commands]\n"
        "sys.exit(cli.main(sys.argv[1:]))")
SCENARIOS = ("unshare-uts", "clone-net", "setns-ipc", "clone3-user", "unshare-pid-children-only", "fail-einval")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes namespaces and cgroups, loads BPF: needs root")


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
    # Both tools count themselves, so on a quiet machine the maps are equal. Other work
    # on the machine may start or end processes between the runs: a run with churn (our
    # map changed between before and after lsns) is repeated; after ten, only the
    # namespaces that held still are compared (one born and gone between our two looks
    # cannot be checked by anyone).
    for _ in range(10):
        before = _ours(ls_json())
        theirs = _lsns()
        after = _ours(ls_json())
        if before == after:
            assert before == theirs
            return
        time.sleep(0.2)
    steady = {k for k in before if before[k] == after.get(k)}
    assert steady, "the machine never held still"
    assert {k: before[k] for k in steady} == {k: theirs.get(k) for k in steady}


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
        recorder = session.Recorder(path, tracer)
        tee = session.RecordingTracer(tracer, recorder)
        results = [checker.run_scenario(scenarios.CATALOGUE[name], tee) for name in SCENARIOS]
        recorder.close(tracer.summary())
    path.chmod(0o644)
    print(f"recorded {recorder.count} records of {len(SCENARIOS)} scenarios in {time.monotonic() - start:.1f} s")
    assert all(r.ok for r in results), [(r.name, r.error) for r in results if not r.ok]
    yield path, session.load(path)
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
    assert head["nstrace_session"] == session.VERSION and head["kind"] == "header"
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

    table = _show(path, "--op", "unshare").stdout
    rows = [display.row(r) for r in sess.records if r.op == "unshare"]
    assert table.startswith(display.header()) and all(row in table for row in rows)
    assert "unshare" in table and "total" in table


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
    newer.write_text(json.dumps({"nstrace_session": session.VERSION + 1, "kind": "header"}) + "\n")
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
            want = render.ns_node_id(fl.ns_type_of_entry(entry), rec.ns_after[entry], rec.ns_id_after[entry])
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


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"), reason="needs Debian's chromium package")
def test_render_html_loads_in_chromium_without_errors(recorded, tmp_path):
    path, sess = recorded
    page = tmp_path / "s.html"
    done = nstrace("render", str(path), "--format", "html", "-o", str(page))
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    # self-contained: nothing to fetch (links to the kernel source are anchors, not loads)
    assert not re.search(r"<(script|img|link|iframe)[^>]+(src|href)=", text)
    tag = render.kernel_tag(os.uname().release, os.uname().version)
    assert f"https://elixir.bootlin.com/linux/{tag}/source/kernel/nsproxy.c" in text
    # the harness must see a console error when there is one
    broken = tmp_path / "broken.html"
    broken.write_text("<!DOCTYPE html><html><body><script>noSuchFunction();</script></body></html>")
    control = _chromium(broken.as_uri(), tmp_path / "profile0")
    assert _console_errors(control.stderr), control.stderr[-2000:]

    shown = _chromium(page.as_uri(), tmp_path / "profile1")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert _console_errors(shown.stderr) == []
    dom = shown.stdout
    assert 'id="timeline"' in dom and 'data-ready="1"' in dom  # the script ran to its end
    assert dom.count('class="op') == len(sess.records) and 'id="graph"' in dom and "<svg" in dom
    assert all(f'id="op-{n}"' in dom for n in range(1, len(sess.records) + 1))


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
