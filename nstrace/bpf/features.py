"""What the running kernel offers nstrace's objects, asked of the kernel itself, never read from its
version: BTF, and BPF's compare-and-swap (which of the builds of probes/Makefile loads here)."""

import ctypes
import os

from ..errors import KernelSupportError
from ..once import once
from . import libbpf

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"


def check_btf(path=VMLINUX_BTF):
    """Raise KernelSupportError if the kernel exposes no BTF (CONFIG_DEBUG_INFO_BTF)."""
    if not os.path.exists(path):
        raise KernelSupportError(f"no kernel BTF at {path}: nstrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("regs", ctypes.c_uint8), ("off", ctypes.c_int16), ("imm", ctypes.c_int32)]


def _insn(code, dst=0, src=0, off=0, imm=0):
    return _BpfInsn(code, dst | src << 4, off, imm)


# *(u64 *)(r10 - 8) = 0; r0 = 0; r1 = 1; r0 = cmpxchg(r10 - 8, r0, r1); r0 = 0; exit
# (include/uapi/linux/bpf.h: BPF_STX | BPF_ATOMIC | BPF_DW = 0xdb, BPF_CMPXCHG = 0xf1)
_CMPXCHG_PROG = (_insn(0x7a, dst=10, off=-8), _insn(0xb7), _insn(0xb7, dst=1, imm=1),
                 _insn(0xdb, dst=10, src=1, off=-8, imm=0xf1), _insn(0xb7), _insn(0x95))


@once
def kernel_has_cmpxchg():
    """True if this kernel's verifier takes BPF's compare-and-swap (BPF atomics, 5.12+).

    Asked of the kernel itself: a six-instruction socket filter with one
    cmpxchg is loaded and closed (tens of microseconds). Not a version check:
    a backport counts, and 5.10's "BPF_STX uses reserved fields" is the answer no.
    """
    insns = (_BpfInsn * len(_CMPXCHG_PROG))(*_CMPXCHG_PROG)
    fd = libbpf.lib().bpf_prog_load(libbpf.BPF_PROG_TYPE_SOCKET_FILTER, None, b"GPL", insns, len(insns), None)
    if fd < 0:
        return False
    os.close(fd)
    return True
