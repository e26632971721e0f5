"""Network namespaces of ours joined by a veth pair, and two veth pairs by a bridge in a third
(article 003), made with iproute2 as a reader of the seeds would.
"""

import json
import socket
import subprocess
import sys

from .scenario import Expect, flag, scenario


@scenario("netns-veth", "two network namespaces of ours joined by a veth pair, a UDP datagram across")
def netns_veth(launcher):
    a, b = launcher.netns("a"), launcher.netns("b")
    va, vb = "nst-" + launcher.id[:4] + "a", "nst-" + launcher.id[:4] + "b"
    host_links = set(socket.if_nameindex())
    # Both ends live in namespaces this run made: the host's network is never touched.
    launcher.run(["ip", "-n", a, "link", "add", va, "type", "veth", "peer", "name", vb, "netns", b])
    launcher.run(["ip", "-n", a, "addr", "add", "10.253.0.1/30", "dev", va])
    launcher.run(["ip", "-n", b, "addr", "add", "10.253.0.2/30", "dev", vb])
    for ns, dev in ((a, va), (b, vb)):
        launcher.run(["ip", "-n", ns, "link", "set", dev, "up"])
    # The receiver says when it is bound; the sender repeats itself in case the link was not
    # carrying yet. No fixed sleep: under load the receiver's start once outlasted one.
    recv = ("import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('10.253.0.2',4789));"
            "print('bound',flush=True);s.settimeout(5);print(s.recvfrom(64)[0].decode())")
    send = ("import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "for _ in range(5):s.sendto(b'hello',('10.253.0.2',4789));time.sleep(0.05)")
    receiver = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", recv], stdout=subprocess.PIPE, text=True)
    receiver.stdout.readline()  # "bound", or "" if it died: then got is "" and the expectation says so
    launcher.run(["ip", "netns", "exec", a, sys.executable, "-c", send])
    got = receiver.communicate(timeout=10)[0].strip()
    # `ip netns add` setns()es back to its own netns right after: its unshare is superseded (ip/ipnetns.c)
    return [Expect("unshare", comm="ip", flags=flag("net"), changed=["net"], proc=("match", "gone", "superseded"),
                   what="`ip netns add` is unshare(CLONE_NEWNET) plus a bind mount of the ns file"),
            Expect("setns", comm="ip", flags=flag("net"), changed=["net"], proc=("match", "gone"),
                   what="`ip netns exec` is setns into the bind-mounted ns file"),
            Expect("facts", inside={"datagram": "hello", "host_links_unchanged": True},
                   seen_inside={"datagram": got, "host_links_unchanged": set(socket.if_nameindex()) == host_links},
                   what="a datagram crossed the veth pair; the host's links are untouched")]


# --- a bridge joining two veth pairs (003) ---------------------------------------------------

# Link-local addresses, inside namespaces this run made: no route leads there from anywhere else.
BRIDGE_NET = ("169.254.253.1", "169.254.253.2")


@scenario("netns-bridge", "a bridge in a third network namespace joins two veth pairs: a datagram crosses from one namespace to the other")
def netns_bridge(launcher):
    a, b, br = launcher.netns("a"), launcher.netns("b"), launcher.netns("br")
    tag = "nst-" + launcher.id[:4]
    host_links = set(socket.if_nameindex())
    ends = {a: (tag + "a", tag + "1"), b: (tag + "b", tag + "2")}
    bridge = tag + "br"
    launcher.run(["ip", "-n", br, "link", "add", bridge, "type", "bridge"])
    for ns, (inner, port) in ends.items():
        launcher.run(["ip", "-n", ns, "link", "add", inner, "type", "veth", "peer", "name", port, "netns", br])
        launcher.run(["ip", "-n", br, "link", "set", port, "master", bridge])
        launcher.run(["ip", "-n", br, "link", "set", port, "up"])
    launcher.run(["ip", "-n", br, "link", "set", bridge, "up"])
    for (ns, (inner, _)), address in zip(ends.items(), BRIDGE_NET):
        launcher.run(["ip", "-n", ns, "addr", "add", address + "/24", "dev", inner])
        launcher.run(["ip", "-n", ns, "link", "set", inner, "up"])
    ports = sorted(link["ifname"] for link in json.loads(launcher.run(["ip", "-n", br, "-j", "link", "show", "master", bridge])))
    a_links = sorted(link["ifname"] for link in json.loads(launcher.run(["ip", "-n", a, "-j", "link", "show"])))
    recv = ("import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind((%r,4789));"
            "print('bound',flush=True);s.settimeout(10);print(s.recvfrom(64)[0].decode())" % BRIDGE_NET[1])
    # a bridge port may take a moment to forward under emulation: repeat, bounded, within our namespaces
    send = ("import socket,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "for _ in range(40):s.sendto(b'hello',(%r,4789));time.sleep(0.05)" % BRIDGE_NET[1])
    receiver = launcher.spawn(["ip", "netns", "exec", b, sys.executable, "-c", recv], stdout=subprocess.PIPE, text=True)
    receiver.stdout.readline()
    launcher.run(["ip", "netns", "exec", a, sys.executable, "-c", send])
    try:
        got = receiver.communicate(timeout=15)[0].strip()
    except subprocess.TimeoutExpired:
        got = ""
    return [Expect("unshare", comm="ip", flags=flag("net"), changed=["net"], proc=("match", "gone", "superseded"),
                   what="`ip netns add` makes each of the three namespaces"),
            Expect("setns", comm="ip", flags=flag("net"), changed=["net"], proc=("match", "gone", "superseded"),
                   what="`ip -n` and `ip netns exec` setns into them"),
            Expect("facts", inside={"datagram": "hello", "bridge ports": sorted(p for _, p in ends.values()),
                                    "links of the first namespace": sorted(["lo", ends[a][0]]),
                                    "host links unchanged": True},
                   seen_inside={"datagram": got, "bridge ports": ports, "links of the first namespace": a_links,
                                "host links unchanged": set(socket.if_nameindex()) == host_links},
                   what="the datagram went a -> bridge -> b; a has no link of its own to b; the host's links are untouched")]
