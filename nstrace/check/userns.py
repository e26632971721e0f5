"""User namespaces: an unprivileged clone(CLONE_NEWUSER), and its uid_map written by the parent.
"""

from .scenario import Expect, flag, scenario


@scenario("userns-unprivileged", "an unprivileged clone(CLONE_NEWUSER); the parent writes uid_map/gid_map after a pipe handshake")
def userns_unprivileged(launcher):
    h = launcher.nsop({"op": "clone", "flags": flag("user"), "uid": 65534, "inside": True})
    return [Expect("clone", pid=h.pid, flags=flag("user"), changed=["user"], inside={"uid": 0},
                   seen_inside=h.report.get("inside"), what="nobody outside, root inside after the uid_map")]
