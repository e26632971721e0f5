"""The container on every record, the --container and --ns filters, and ls's CONTAINER column.

A docker-style cgroup made here (cgroup v2: system.slice/docker-<64 hex>.scope) stands for a
container: processes moved into it are that container's, as docker's own are, and nstrace must say
so from the record's cgroup id alone, also for a process that has exited by the time the record is
read. Real unshare, nsenter and setns; the C writer and the Python reference held equal on the same
records, filters and all (tests/test_json_output.py differential()).
"""

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from nshelpers import NSTRACE
from test_json_output import differential

from nstrace.linux import containers, mounts
from nstrace.record import layout, reader
from nstrace.record.filters import Filter
from nstrace.tracing.tracer import Options

pytestmark = pytest.mark.root("makes cgroups and loads BPF programs")

S = reader.states()


def watch(*args, timeout=60):
    res = subprocess.run([str(NSTRACE), "watch", *args], capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return res


def records(res):
    """The JSON lines of a watch -- COMMAND: on stderr (COMMAND keeps stdout)."""
    return [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def cgroup2():
    """The cgroup v2 hierarchy: where it is mounted, or a mount of our own (a lab guest has none)."""
    found = containers.cgroup2_mount()
    if found:
        yield Path(found[0])
        return
    path = tempfile.mkdtemp(prefix="nstrace-cg2-")
    mounts.mount("none", path, "cgroup2")
    try:
        yield Path(path)
    finally:
        mounts.umount(path)
        os.rmdir(path)


class Docker:
    """A cgroup named as docker names a container's, and processes put in it: its systemd driver's
    scope, or with v1, its cgroupfs driver's directory in a cgroup v1 hierarchy (a hybrid host)."""

    def __init__(self, root, v1=False):
        self.id = os.urandom(32).hex()
        self.path = Path(root) / (f"docker/{self.id}" if v1 else f"system.slice/docker-{self.id}.scope")
        self.made_parent = not self.path.parent.exists()
        self.path.mkdir(parents=True)
        self.procs = []
        self.expected = {"runtime": "docker", "id": self.id, "name": None, "pod": None}

    def shell(self, script):
        """`sh -c` that moves itself into the container, then runs script."""
        return ["sh", "-c", f"echo $$ > {self.path}/cgroup.procs && {script}"]

    def start(self, argv):
        proc = subprocess.Popen(self.shell("exec " + " ".join(argv)))
        self.procs.append(proc)
        return proc

    def close(self):
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for _ in range(100 if self.path.exists() else 0):  # the kernel empties the cgroup just after the reap
            try:
                self.path.rmdir()
                break
            except OSError:
                time.sleep(0.05)
        if self.made_parent:
            try:
                self.path.parent.rmdir()
            except OSError:
                pass


@pytest.fixture
def docker(cgroup2):
    d = Docker(cgroup2)
    yield d
    d.close()


@pytest.fixture
def docker_holder(docker):
    """A process of the container in a uts namespace of its own (the container's)."""
    proc = docker.start(["unshare", "--uts", "sleep", "60"])
    for _ in range(200):
        try:
            if os.stat(f"/proc/{proc.pid}/ns/uts").st_ino != os.stat("/proc/self/ns/uts").st_ino \
                    and Path(f"/proc/{proc.pid}/cgroup").read_text().count(docker.id):
                break
        except FileNotFoundError:
            pass
        time.sleep(0.02)
    return proc.pid


def test_an_unshare_in_a_container_is_the_containers_though_it_exited_at_once(docker):
    """The caller is gone when its record is read (proc_check: gone): the container comes from the
    cgroup id recorded at the call, not from /proc afterwards."""
    res = watch("--json", "--", *docker.shell("exec unshare --uts true"))
    [rec] = records(res)
    assert rec["container"] == docker.expected
    assert rec["cgroup_id"] == os.stat(docker.path).st_ino
    assert rec["proc_check"]["status"] == "gone"
    table = watch("--", *docker.shell("exec unshare --uts true")).stderr
    # the column comes with the first record that has a container, under a header line of its own
    assert [line for line in table.splitlines() if line.startswith("TIME")][-1].endswith("CONTAINER")
    assert f"docker:{docker.id[:12]}" in table


def test_a_setns_into_a_containers_namespace_names_the_target(docker, docker_holder):
    res = watch("--json", "--", "nsenter", "-t", str(docker_holder), "--uts", "true")
    [rec] = [r for r in records(res) if r["op"] == "setns"]
    assert rec["container"] is None  # nsenter runs on the host
    assert rec["target"]["container"] == docker.expected
    assert rec["target"]["inode"] == os.stat(f"/proc/{docker_holder}/ns/uts").st_ino
    table = watch("--", "nsenter", "-t", str(docker_holder), "--uts", "true").stderr
    assert f"->docker:{docker.id[:12]}" in table, table


def test_a_setns_caller_does_not_count_in_the_namespace_it_entered(docker, docker_holder):
    """nsenter from the host into the container's namespace is still in it when the record is read
    (it runs sleep there): the namespace is the container's all the same, as `ls` says once it
    has gone. It used to be the host's, or not, as the race went."""
    res = watch("--json", "--", "nsenter", "-t", str(docker_holder), "--uts", "sleep", "0.5")
    [rec] = [r for r in records(res) if r["op"] == "setns"]
    assert rec["target"]["container"] == docker.expected


def test_a_command_without_a_container_has_no_container_column():
    res = watch("--", "unshare", "--uts", "true")
    assert "CONTAINER" not in res.stderr and "unshare" in res.stderr


def test_container_filter_by_id_prefix_caller_or_target(docker, docker_holder):
    script = f"unshare --ipc true; nsenter -t {docker_holder} --uts true; " \
             f"echo $$ > {docker.path}/cgroup.procs && unshare --net true"
    res = watch("--json", "--container", docker.id[:10], "--", "sh", "-c", script)
    got = [(r["op"], r["flags"]) for r in records(res)]
    assert got == [("setns", ["CLONE_NEWUTS"]), ("unshare", ["CLONE_NEWNET"])], got
    summary = json.loads(res.stderr.split("nstrace: summary ", 1)[1])
    assert summary["filtered"] == 1  # the host's unshare --ipc
    assert not records(watch("--json", "--container", "f" * 12 + "no", "--", "sh", "-c", script))


def test_ns_filter_before_after_or_target(docker_holder):
    uts = os.stat(f"/proc/{docker_holder}/ns/uts").st_ino
    script = f"unshare --ipc true; nsenter -t {docker_holder} --uts true"
    for value in (f"uts:{uts}", f"uts:[{uts}]"):
        got = records(watch("--json", "--ns", value, "--", "sh", "-c", script))
        assert [(r["op"], r["target"]["inode"]) for r in got] == [("setns", uts)], got
    ipc_host = os.stat("/proc/self/ns/ipc").st_ino  # every call here starts in it: before
    got = records(watch("--json", "--ns", f"ipc:{ipc_host}", "--", "sh", "-c", script))
    assert {r["op"] for r in got} == {"unshare", "setns"}


def test_ns_filter_by_ns_id(docker_holder):
    from nstrace.linux import nsfs
    with open(f"/proc/{docker_holder}/ns/uts") as f:
        try:
            ns_id = nsfs.get_id(f.fileno())
        except OSError:
            pytest.skip("this kernel has no NS_GET_ID (6.18+): no ns_id to filter by")
    got = records(watch("--json", "--ns", str(ns_id), "--", "nsenter", "-t", str(docker_holder), "--uts", "true"))
    assert [r["op"] for r in got] == ["setns"] and got[0]["target"]["ns_id"] == ns_id


@pytest.mark.parametrize("value", ["uts", "bogus:12", "net:0", "0", "uts:x"])
def test_a_bad_ns_value_is_one_error_line(value):
    res = subprocess.run([str(NSTRACE), "watch", "--ns", value, "--duration", "0.1"], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("nstrace: error: --ns") and res.stderr.count("\n") == 1, \
        res.stderr


def test_show_filters_by_container_and_ns(tmp_path, docker, docker_holder):
    session = tmp_path / "s.jsonl"
    script = f"unshare --ipc true; nsenter -t {docker_holder} --uts true"
    watch("--record", str(session), "--", "sh", "-c", script)

    def show(*args):
        res = subprocess.run([str(NSTRACE), "show", "--json", *args, str(session)], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        return [json.loads(line)["op"] for line in res.stdout.splitlines()]
    assert show() == ["unshare", "setns"]
    assert show("--container", docker.id[:8]) == ["setns"]
    assert show("--ns", f"uts:{os.stat(f'/proc/{docker_holder}/ns/uts').st_ino}") == ["setns"]
    table = subprocess.run([str(NSTRACE), "show", str(session)], capture_output=True, text=True).stdout
    assert "CONTAINER" in table.splitlines()[0]


def test_both_writers_agree_on_containers_and_their_filters(tracer, docker, docker_holder):
    """The records of calls in and into the container, through native/batch.c and through Python,
    under --container and --ns: the same bytes, the same records kept."""
    subprocess.run(docker.shell("unshare --uts true; unshare --ipc true"), check=True)
    subprocess.run(["nsenter", "-t", str(docker_holder), "--uts", "true"], check=True)
    subprocess.run(["unshare", "--net", "true"], check=True)
    time.sleep(0.1)
    raws = []
    while tracer.poll(20) or tracer.last_read:
        raws += [tracer._batch.raw(i) for i in range(tracer.last_read)]
    # this test's calls, not the whole machine's: a busy machine's would overflow one replayed batch
    raws = [raw for raw in raws if layout.EventHead.from_buffer_copy(raw).comm in (b"unshare", b"nsenter")]
    uts = os.stat(f"/proc/{docker_holder}/ns/uts").st_ino

    def ours(r):  # made in the container, or entering it
        return r["container"] == docker.expected or (r["target"] or {}).get("container") == docker.expected
    # the holder's unshare --uts, the two unshares in the container, the nsenter into it
    _, everything = differential(tracer, raws, Options())
    assert sorted((r["comm"], r["op"]) for r in everything if ours(r)) == [
        ("nsenter", "setns"), ("unshare", "unshare"), ("unshare", "unshare"), ("unshare", "unshare")]
    assert any(not ours(r) for r in everything)  # the host's unshare --net at least
    for options, kept in (
        (Options(filter=Filter(containers=(docker.id[:12],))), 4),
        (Options(filter=Filter(containers=("0" * 12 + "x",))), 0),
        (Options(filter=Filter(containers=(docker.id,), ops=("setns",))), 1),
    ):
        _, recs = differential(tracer, raws, options)
        assert len(recs) == kept and all(ours(r) for r in recs), (options, recs)
    # the holder's uts namespace: it made it (after), nsenter entered it (target). An inode number is
    # reused once its namespace is gone: another process's record from before the holder may carry it
    _, recs = differential(tracer, raws, Options(filter=Filter.parse(ns=(f"uts:{uts}",))))
    assert sorted((r["comm"], r["op"]) for r in recs if ours(r)) == [("nsenter", "setns"), ("unshare", "unshare")]
    assert all(uts in ((r["ns_before"] or {}).get("uts"), (r["ns_after"] or {}).get("uts"),
                       (r["target"] or {}).get("inode")) for r in recs)


# --- ls ------------------------------------------------------------------------------

def ls(*args):
    res = subprocess.run([str(NSTRACE), "ls", *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res


def test_host_namespaces_containers_share_are_the_hosts(cgroup2):
    """Two containers, each in a uts namespace of its own, both in the host's net namespace: the
    host's net is "-" (it was "several"), each uts namespace its container's."""
    a, b = Docker(cgroup2), Docker(cgroup2)
    try:
        pa, pb = a.start(["unshare", "--uts", "sleep", "60"]), b.start(["unshare", "--uts", "sleep", "60"])
        time.sleep(0.3)
        table = ls("--type", "net,uts").stdout
        host_net = os.stat("/proc/self/ns/net").st_ino
        [row] = [line for line in table.splitlines() if line.startswith(f"{host_net} ")]
        assert " several" not in row and row.split()[7] == "-", row
        for d, p in ((a, pa), (b, pb)):
            uts = os.stat(f"/proc/{p.pid}/ns/uts").st_ino
            [row] = [line for line in table.splitlines() if line.startswith(f"{uts} ")]
            assert f"docker:{d.id[:12]}" in row, row
        doc = {(n["type"], n["inode"]): n for n in json.loads(ls("--json").stdout)["namespaces"]}
        net = doc[("net", host_net)]
        assert net["host"] is True and net["container"] is None and a.expected in net["containers"]
    finally:
        a.close()
        b.close()


def test_a_namespace_of_two_containers_alone_is_several(cgroup2):
    a, b = Docker(cgroup2), Docker(cgroup2)
    try:
        holder = a.start(["unshare", "--ipc", "sleep", "60"])
        time.sleep(0.2)
        b.start(["nsenter", "-t", str(holder.pid), "--ipc", "sleep", "60"])
        time.sleep(0.3)
        ipc = os.stat(f"/proc/{holder.pid}/ns/ipc").st_ino
        [row] = [line for line in ls("--type", "ipc").stdout.splitlines() if line.startswith(f"{ipc} ")]
        assert "several (2)" in row, row
    finally:
        a.close()
        b.close()


def test_ls_as_root_does_not_warn_about_what_a_security_module_hides():
    res = ls()
    unreadable = json.loads(ls("--json").stdout)["unreadable"]
    assert "could not be read" not in res.stderr, res.stderr
    nobody = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(NSTRACE), "ls"],
                            capture_output=True, text=True, timeout=120)
    assert nobody.returncode == 0 and "could not be read" in nobody.stderr and "run as root" in nobody.stderr
    assert isinstance(unreadable, list)  # what root could not read is still said, in --json


# --- a container only cgroup v1 knows ------------------------------------------------------------

@pytest.fixture(scope="module")
def cgroup_v1():
    """A cgroup v1 hierarchy of our own: a named one, which needs no controller (so it mounts on a
    pure cgroup v2 host too), as docker's cgroupfs driver uses the controllers' on a hybrid host."""
    path = tempfile.mkdtemp(prefix="nstrace-cg1-")
    mounts.mount("cgroup", path, "cgroup", data="none,name=nstrace-test")
    try:
        yield Path(path)
    finally:
        mounts.umount(path)
        os.rmdir(path)


@pytest.fixture
def v1_docker(cgroup_v1):
    d = Docker(cgroup_v1, v1=True)
    yield d
    d.close()


def _alive_in(docker, argv):
    """A process of the container that stays: its records' caller can be read from /proc."""
    proc = docker.start(argv)
    for _ in range(200):
        if docker.id in Path(f"/proc/{proc.pid}/cgroup").read_text() and Path(f"/proc/{proc.pid}/comm").read_text() == "sleep\n":
            return proc
        time.sleep(0.02)
    raise AssertionError("the container's process did not start")


def test_a_container_only_cgroup_v1_knows_is_the_same_in_ls_and_watch(v1_docker):
    """Its processes' v2 cgroup is the host's (docker's cgroupfs driver leaves it): `ls` names the
    container from the v1 hierarchy, and so does `watch`, so --container takes its calls."""
    holder = _alive_in(v1_docker, ["unshare", "--uts", "sleep", "60"]).pid
    uts = os.stat(f"/proc/{holder}/ns/uts").st_ino
    doc = {(n["type"], n["inode"]): n for n in json.loads(ls("--json").stdout)["namespaces"]}
    assert doc[("uts", uts)]["container"] == v1_docker.expected
    [row] = [line for line in ls("--type", "uts").stdout.splitlines() if line.startswith(f"{uts} ")]
    assert f"docker:{v1_docker.id[:12]}" in row, row
    script = f"nsenter -t {holder} --uts true; unshare --net sleep 0.2; " \
             f"echo $$ > {v1_docker.path}/cgroup.procs && exec unshare --ipc sleep 0.2"
    res = watch("--json", "--container", v1_docker.id[:12], "--", "sh", "-c", script)
    got = [(r["op"], r["flags"], r["container"], r["target"] and r["target"]["container"]) for r in records(res)]
    assert got == [("setns", ["CLONE_NEWUTS"], None, v1_docker.expected),
                   ("unshare", ["CLONE_NEWIPC"], v1_docker.expected, None)], got
    assert json.loads(res.stderr.split("nstrace: summary ", 1)[1])["filtered"] == 1  # the host's unshare --net


def test_both_writers_agree_on_a_container_only_cgroup_v1_knows(tracer, v1_docker):
    """While a process is in a container only cgroup v1 names, a cgroup v2 id that is no container's
    is looked up per task: C leaves its records to Python, which reads the caller's v1 container; the
    two writers and the oracle agree, --container included. Once no such process is left, C writes
    them."""
    inside = _alive_in(v1_docker, ["unshare", "--ipc", "sleep", "60"])
    outside = subprocess.Popen(["unshare", "--ipc", "sleep", "60"])
    try:
        for _ in range(200):
            if Path(f"/proc/{outside.pid}/comm").read_text() == "sleep\n":
                break
            time.sleep(0.02)
        time.sleep(0.1)
        raws = []
        while tracer.poll(20) or tracer.last_read:
            raws += [tracer._batch.raw(i) for i in range(tracer.last_read)]
        ours = {inside.pid: v1_docker.expected, outside.pid: None}
        raws = [raw for raw in raws if layout.EventHead.from_buffer_copy(raw).pid in ours]
        states, recs = differential(tracer, raws, Options())
        assert sorted((r["pid"], json.dumps(r["container"])) for r in recs) == \
            sorted((pid, json.dumps(c)) for pid, c in ours.items())
        assert all(st & S.PYTHON for st in states), list(states)
        _, recs = differential(tracer, raws, Options(filter=Filter(containers=(v1_docker.id[:12],))))
        assert [r["pid"] for r in recs] == [inside.pid]
        v1_docker.close()
        host = [raw for raw in raws if layout.EventHead.from_buffer_copy(raw).pid == outside.pid]
        states, recs = differential(tracer, host, Options())
        assert [r["container"] for r in recs] == [None] and not any(st & S.PYTHON for st in states)
    finally:
        outside.kill()
        outside.wait()
