"""The nsfs side of a namespace file (/proc/<pid>/ns/<type>): its link text and its ioctls.

include/uapi/linux/nsfs.h, checked against 6.18: NSIO is 0xb7.
"""

import fcntl
import re
import struct

NS_GET_USERNS = 0xB701      # _IO(NSIO, 1): an fd for the owning user namespace
NS_GET_PARENT = 0xB702      # _IO(NSIO, 2): the parent (pid and user namespaces only)
# _IOR(NSIO, 13, __u64), 6.18+: ns_common.ns_id, the id the BPF side records. Unlike the
# inode it is never reused while the system runs. Older kernels answer ENOTTY.
NS_GET_ID = 0x8008B70D

_LINK = re.compile(r"^(\w+):\[(\d+)\]$")


def parse_link(text):
    """("net", 4026531833) from the readlink text "net:[4026531833]", or None."""
    m = _LINK.match(text)
    return (m.group(1), int(m.group(2))) if m else None


def get_id(fd):
    """The namespace's 64-bit id; OSError(ENOTTY) on kernels before 6.18."""
    return struct.unpack("Q", fcntl.ioctl(fd, NS_GET_ID, bytes(8)))[0]
