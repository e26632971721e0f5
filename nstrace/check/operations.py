"""Every namespace type made by every call that makes one (clone, clone3, unshare) and joined by
setns, one pidfd joining several at once, and the calls that fail.
"""

import os

from ..kernel import flags as fl
from .scenario import TYPES, Expect, create, flag, inside_for, join, scenario

for _t in TYPES:
    for _op in ("clone", "clone3", "unshare"):
        if (_op, _t) != ("clone", "time"):
            scenario(f"{_op}-{_t}", f"{_op}(CLONE_{fl.NS_TYPES[_t].removeprefix('CLONE_')}) makes a new {_t} namespace")(
                create(_op, _t))
    scenario(f"setns-{_t}", f"setns(fd of /proc/<pid>/ns/{_t}) joins a live {_t} namespace")(join(_t))


@scenario("setns-pidfd", "setns(pidfd, UTS|IPC|NET|CGROUP|MNT) joins several namespaces of a process at once")
def setns_pidfd(launcher):
    types = ["mnt", "uts", "ipc", "net", "cgroup"]
    holder = launcher.holder(types)
    nstype = sum(flag(t) for t in types)
    h = launcher.nsop({"op": "setns", "pidfd_of": holder, "flags": nstype, "inside": True})
    targets = {t: os.stat(f"/proc/{holder}/ns/{t}").st_ino for t in types}
    return [Expect("setns", pid=h.pid, flags=nstype, changed=[e for e in fl.NS_ENTRIES if e in types],
                   ns_after=targets, inside=inside_for(types, False), seen_inside=h.report.get("inside"),
                   what="one setns through a pidfd moves the caller into all five")]


@scenario("fail-einval", "clone(CLONE_NEWNS|CLONE_FS) is EINVAL: a new mount ns cannot share fs_struct")
def fail_einval(launcher):
    flags = flag("mnt") | fl.CLONE_FLAGS["CLONE_FS"]
    h = launcher.nsop({"op": "clone", "flags": flags})
    return [Expect("clone", pid=h.pid, flags=flags, errno="EINVAL", changed=[], what="refused before anything is made")]


@scenario("fail-wrong-nstype", "setns(uts fd, CLONE_NEWNET) is EINVAL: nstype must match the fd")
def fail_wrong_nstype(launcher):
    holder = launcher.holder(["uts"])
    h = launcher.nsop({"op": "setns", "ns_path": f"/proc/{holder}/ns/uts", "flags": flag("net")})
    return [Expect("setns", pid=h.pid, flags=flag("net"), errno="EINVAL", changed=[],
                   what="the fd's real type (uts) is not the one asked for (net)")]


@scenario("fail-eperm", "unshare(CLONE_NEWUTS) without CAP_SYS_ADMIN is EPERM")
def fail_eperm(launcher):
    h = launcher.nsop({"op": "unshare", "flags": flag("uts"), "uid": 65534})
    return [Expect("unshare", pid=h.pid, flags=flag("uts"), errno="EPERM", changed=[],
                   what="an unprivileged caller may only make a user namespace (and others inside it)")]
