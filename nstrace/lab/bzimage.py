"""The kernel ELF inside a bzImage (vmlinuz), for qemu to boot it through its PVH entry point.

Why: under TCG the decompressor inside a vmlinuz is emulated code, and unpacking Debian's XZ payload
(5.10, 6.1) took most of a guest's boot here (about 3 s of 5).  qemu loads an ELF kernel that carries
the XEN_ELFNOTE_PHYS32_ENTRY note straight into guest memory and starts it in 32-bit mode at that
entry (arch/x86/platform/pvh/head.S, 5.10-7.2; Debian builds CONFIG_PVH=y), so the payload is
unpacked once, natively, when the kernel enters the cache.

The bzImage layout is Documentation/x86/boot.rst (6.1): setup_sects at 0x1f1, "HdrS" at 0x202,
payload_offset at 0x248, counted from the protected-mode code that starts after the setup sectors.
"""

from __future__ import annotations

import lzma
import os
import struct
import subprocess

from ..errors import LabError
from .host import require

XEN_ELFNOTE_PHYS32_ENTRY = 18  # include/xen/interface/elfnote.h
_PT_NOTE = 4


def payload(image: bytes) -> bytes:
    """The uncompressed ELF kernel of a bzImage; LabError if it is not one this knows."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        raise LabError("not a bzImage (no HdrS header)")
    setup_sects = image[0x1F1] or 4  # 0 means 4, for old boot loaders (boot.rst)
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    data = image[start:start + length]
    # The build appends the uncompressed size to the stream (size_append, arch/x86/boot/compressed/Makefile).
    size, = struct.unpack_from("<I", data, len(data) - 4)
    if data.startswith(b"\xfd7zXZ\x00"):
        decompressor = lzma.LZMADecompressor(lzma.FORMAT_XZ)
        raw = decompressor.decompress(data)
        if not decompressor.eof:
            raise LabError("bzImage: truncated XZ payload")
    elif data.startswith(b"\x28\xb5\x2f\xfd"):
        proc = subprocess.run([require("zstd"), "-dcq"], input=data[:-4], capture_output=True)
        raw = proc.stdout
        if proc.returncode != 0:
            raise LabError(f"bzImage: zstd could not unpack the payload: {proc.stderr.decode().strip()}")
    else:
        raise LabError(f"bzImage: payload compression {data[:4].hex()} not handled (XZ and zstd are)")
    if len(raw) != size or not raw.startswith(b"\x7fELF"):
        raise LabError(f"bzImage: the payload is not the ELF kernel its header announces ({len(raw)} of {size} bytes)")
    return raw


def has_pvh_entry(elf: bytes) -> bool:
    """True if the ELF kernel has a Xen PHYS32_ENTRY note: qemu can boot it directly (PVH)."""
    if elf[4] != 2 or elf[5] != 1:  # ELFCLASS64, little endian: x86-64 kernels only
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != _PT_NOTE:
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, note_type = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and note_type == XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def write_sparse(fd: int, data: bytes, block: int = 1 << 16) -> None:
    """Write data to a new file, leaving its zero blocks as holes: about half of a kernel ELF is the
    zeroed .bss and .brk, so the cached file takes half the disk it would."""
    zero = bytes(block)
    view = memoryview(data)
    for pos in range(0, len(data), block):
        chunk = view[pos:pos + block]
        if chunk != zero[:len(chunk)]:
            written = 0
            while written < len(chunk):
                written += os.pwrite(fd, chunk[written:], pos + written)
    os.ftruncate(fd, len(data))
