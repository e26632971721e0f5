"""A small copy of the running kernel's BTF for libbpf's CO-RE relocation, made once per boot.

Without help, every load makes libbpf read /sys/kernel/btf/vmlinux (5.5 MB
on 6.18, held twice while it is parsed) and then scan all of its ~127,000
types once per type our object names: the larger part of a load's time and
of nstrace's peak memory, for twenty-odd fields. libbpf takes another BTF file for
CO-RE instead (``btf_custom_path``, the "BTFGen" mechanism), so nstrace
writes one: every kernel type named like a type a CO-RE relocation of our
object starts from (libbpf matches those by name), complete, with everything
they contain by value. Pointers become ``void *``: a field relocation (byte offset and
existence, the kinds our programs use; size, signedness and bit shifts
alike) or an enum-value one never looks through one, it only asks that a
pointer field is a pointer. For those kinds the copy answers exactly as the
full BTF does (an object with any other kind is left to the full BTF), and
tests/test_corebtf.py loads both ways and compares the instructions libbpf
hands the kernel.

The copy depends on the kernel (one BTF per boot) and on the object file,
so it is kept in /run (a tmpfs) under the boot id and a hash of the object;
building it costs about as much as one load without it (a pass over the raw
vmlinux BTF in Python), and only the first run after a boot or a rebuild pays.
"""

import os
import struct
import time
import zlib

from ..linux import trusted_paths
from . import bootcache, libbpf

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
FORMAT = 1  # bump when what is written changes: a file of another format is not reused

# BTF kinds (include/uapi/linux/btf.h) and the bytes that follow a struct btf_type
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, \
    VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(1, 20)
_FIXED = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_MEMBER = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_REFERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)  # size_type is a type id
_NOT_TYPES = (FUNC, VAR, DATASEC, DECL_TAG)                # never a CO-RE root, never inside a struct
_HEADER = struct.Struct("<HBBIIIII")
_MAGIC = 0xEB9F


_kernel = None  # the running kernel's RawBtf, walked at most once per process (kernel())


def kernel():
    """The running kernel's raw BTF (VMLINUX_BTF) as a RawBtf, read and walked once per process:
    what a boot's first start asks of it (hookplan, the minimal copy, btfcalls) takes one walk.
    Raises OSError or ValueError."""
    global _kernel
    if _kernel is None:
        with open(VMLINUX_BTF, "rb") as f:
            _kernel = RawBtf(f.read())
    return _kernel


def forget():
    """Let the kernel's raw BTF go (megabytes): the load is over."""
    global _kernel
    _kernel = None


def essential_name(name):
    """The name CO-RE matches on: 'nsproxy___old' -> 'nsproxy' (libbpf bpf_core_essential_name_len)."""
    for i in range(len(name) - 5, -1, -1):
        if name[i] != "_" and name[i + 1:i + 4] == "___" and name[i + 4] != "_":
            return name[:i + 1]
    return name


class RawBtf:
    """Raw BTF bytes, walked once: each type's offset, and the ids of types with wanted names."""

    def __init__(self, data):
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(data)
        if magic != _MAGIC or type_off % 4 or type_len % 4:
            raise ValueError("not BTF")
        self.data = data
        self.types = hdr_len + type_off
        self.types_end = self.types + type_len
        self.strings = hdr_len + str_off
        self.strings_end = self.strings + str_len
        self._walked = None

    def name(self, off):
        start = self.strings + off
        return self.data[start:self.data.index(b"\0", start)].decode()

    def name_offsets(self, essential_names):
        """Offsets of the strings whose essential name is one of these.

        Strings are found where they start (after a NUL): a BTF string table
        holds each string once, and names point at their starts.
        """
        import re  # only when a copy is built, once per boot: not on every start
        found = set()
        if not essential_names:
            return found  # (an empty alternative would match the empty string)
        alternatives = b"|".join(re.escape(n.encode()) for n in sorted(essential_names, key=len, reverse=True))
        pattern = re.compile(rb"\0(" + alternatives + rb")(?=\0|___)")
        for m in pattern.finditer(self.data, self.strings, self.strings_end):
            start, end = m.start(1), self.data.index(b"\0", m.end(1))
            if end == m.end(1) or essential_name(self.data[start:end].decode(errors="replace")) == m[1].decode():
                found.add(start - self.strings)
        return found

    def walk(self):
        """(where each type starts, by id, in 32-bit words from self.types; each type's name offset,
        by id), made once per RawBtf.

        One pass over ~150,000 records in Python: the type section as 32-bit
        words, each record's length from its kind and vlen.
        """
        if self._walked is None:
            words = memoryview(self.data)[self.types:self.types_end].cast("I")
            fixed, per_member = [0] * 32, [0] * 32
            for kind, n in _FIXED.items():
                fixed[kind] = n // 4
            for kind, n in _PER_MEMBER.items():
                per_member[kind] = n // 4
            import array  # only a boot's first start walks the raw BTF: the others read the copy

            offsets, names = array.array("I", [0]), array.array("I", [0])
            add, add_name = offsets.append, names.append
            i, n = 0, len(words)
            while i < n:
                add(i)
                add_name(words[i])
                info = words[i + 1]
                kind = info >> 24 & 0x1F
                i += 3 + fixed[kind] + per_member[kind] * (info & 0xFFFF)
            words.release()
            self._walked = offsets, names
        return self._walked

    def ids_named(self, essential_names):
        """Ids of the types whose essential name is one of these, in id order."""
        _, names = self.walk()
        table, ids = names.tobytes(), []
        for off in self.name_offsets(essential_names):
            word = struct.pack("<I", off)
            at = table.find(word)
            while at >= 0:
                if at % 4 == 0:
                    ids.append(at // 4)
                at = table.find(word, at + 1)
        return sorted(ids)

    def kind(self, type_id):
        starts, _ = self.walk()
        return struct.unpack_from("<I", self.data, self.offset(starts, type_id) + 4)[0] >> 24 & 0x1F

    def find(self, wanted):
        """{name: id} of the types of wanted ({name: BTF kind}) this BTF has, each the first of its
        name and kind (as btf__find_by_name_kind, exact names): one search for all of them."""
        found = {}
        for tid in self.ids_named(set(wanted)):
            name = self.name(self._name_off(tid))
            if name not in found and wanted.get(name) == self.kind(tid):
                found[name] = tid
        return found

    def enum_has(self, enum_name, value_name):
        """True if enum enum_name (ENUM or ENUM64) has the value value_name."""
        starts, _ = self.walk()
        for kind, size in ((ENUM, 8), (ENUM64, 12)):
            tid = self.find({enum_name: kind}).get(enum_name)
            if tid is not None:
                off = self.offset(starts, tid)
                vlen = struct.unpack_from("<I", self.data, off + 4)[0] & 0xFFFF
                for k in range(vlen):
                    name_off = struct.unpack_from("<I", self.data, off + 12 + k * size)[0]
                    if self.name(name_off) == value_name:
                        return True
        return False

    def _name_off(self, type_id):
        return self.walk()[1][type_id]

    def offset(self, starts, type_id):
        return self.types + 4 * starts[type_id]


# enum bpf_core_relo_kind (include/uapi/linux/bpf.h) the copy answers as the whole BTF does: field
# relocations, the local type id, enum values; TYPE_EXISTS and TYPE_SIZE where the type is no pointer
# (libbpf compares pointer targets, which the copy cuts). Never TYPE_ID_TARGET (an id in *this* BTF)
# nor TYPE_MATCHES (it compares members' types through pointers).
SAFE_KINDS = {0, 1, 2, 3, 4, 5, 6, 10, 11}
TYPE_KINDS = {8, 9}
_EXT_HEADER = struct.Struct("<HBBIIIIIII")  # struct btf_ext_header with core_relo_off/len


def elf_sections(data, *names):
    """{name: bytes} of these sections of a little-endian ELF64 file (a BPF object)."""
    if data[:6] != b"\x7fELF\x02\x01":
        raise ValueError("not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i):  # sh_name, sh_offset, sh_size
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = header(shstrndx)
    out = {}
    for i in range(shnum):
        name_off, offset, size = header(i)
        name = data[str_off + name_off:data.index(b"\0", str_off + name_off)].decode()
        if name in names:
            out[name] = data[offset:offset + size]
    return out


def core_roots(object_data):
    """Essential names of the types the object's CO-RE relocations start from (libbpf matches
    candidates by these names); ValueError if a relocation is of a kind the copy cannot answer."""
    sections = elf_sections(object_data, ".BTF", ".BTF.ext")
    ext = sections.get(".BTF.ext", b"")
    if len(ext) < _EXT_HEADER.size or struct.unpack_from("<I", ext, 4)[0] < _EXT_HEADER.size:
        return set()  # no CO-RE relocations
    raw = RawBtf(sections[".BTF"])
    starts = raw.walk()[0]
    hdr_len, core_off, core_len = (_EXT_HEADER.unpack_from(ext)[i] for i in (3, -2, -1))
    pos, end = hdr_len + core_off, hdr_len + core_off + core_len
    rec_size = struct.unpack_from("<I", ext, pos)[0] if core_len else 0
    pos += 4
    names = set()
    while pos < end:  # per ELF section: its name, the number of records, the records
        _sec, count = struct.unpack_from("<II", ext, pos)
        pos += 8
        for i in range(count):
            _insn, type_id, _access, kind = struct.unpack_from("<IIII", ext, pos + i * rec_size)
            if kind not in SAFE_KINDS and not (kind in TYPE_KINDS and _no_pointer(raw, starts, type_id)):
                raise ValueError(f"CO-RE relocation kind {kind} needs the whole kernel BTF")
            if kind != 6:  # TYPE_ID_LOCAL never looks at the kernel
                name_off = struct.unpack_from("<I", raw.data, raw.offset(starts, type_id))[0]
                names.add(essential_name(raw.name(name_off)))
        pos += count * rec_size
    names.discard("")
    return names


def _no_pointer(raw, starts, type_id):
    """True if the type, through modifiers, typedefs and array elements, is no pointer or function."""
    while True:
        _name, info, size_type = struct.unpack_from("<III", raw.data, raw.offset(starts, type_id))
        kind = info >> 24 & 0x1F
        if kind in _REFERS:
            type_id = size_type
        elif kind == ARRAY:
            type_id = struct.unpack_from("<I", raw.data, raw.offset(starts, type_id) + 12)[0]
        else:
            return kind not in (PTR, FUNC_PROTO)


def minimal(raw, names):
    """Raw BTF with the types of `raw` (a RawBtf) whose essential name is in `names`, closed by value."""
    s = raw.data
    starts, _ = raw.walk()
    roots = raw.ids_named(names)
    new_id, order = {0: 0}, []
    todo = [t for t in roots
            if (struct.unpack_from("<I", s, raw.offset(starts, t) + 4)[0] >> 24 & 0x1F) not in _NOT_TYPES]
    while todo:  # ids in the order they are first reached; forward references are fine in BTF
        tid = todo.pop()
        if tid in new_id:
            continue
        new_id[tid] = len(order) + 1
        order.append(tid)
        todo.extend(_refs(s, raw.offset(starts, tid)))
    strings, table = bytearray(b"\0"), {"": 0}

    def string(off):
        text = raw.name(off)
        if text not in table:
            table[text] = len(strings)
            strings.extend(text.encode() + b"\0")
        return table[text]

    out = bytearray()
    for tid in order:
        out += _copy(s, raw.offset(starts, tid), new_id, string)
    header = _HEADER.pack(_MAGIC, 1, 0, _HEADER.size, 0, len(out), len(out), len(strings))
    return header + bytes(out) + bytes(strings)


def _refs(s, off):
    """Type ids a type holds by value (what the copy must include)."""
    _name, info, size_type = struct.unpack_from("<III", s, off)
    kind, vlen, body = info >> 24 & 0x1F, info & 0xFFFF, off + 12
    if kind in _REFERS:
        return [size_type]
    if kind == ARRAY:
        elem, index, _n = struct.unpack_from("<III", s, body)
        return [elem, index]
    if kind in (STRUCT, UNION):
        return [struct.unpack_from("<I", s, body + 12 * i + 4)[0] for i in range(vlen)]
    if kind == FUNC_PROTO:  # only as a typedef's target: pointers to functions are cut
        return [size_type] + [struct.unpack_from("<I", s, body + 8 * i + 4)[0] for i in range(vlen)]
    return []  # INT, ENUM, ENUM64, FWD, FLOAT; PTR is cut (see _copy)


def _copy(s, off, new_id, string):
    """One type's record, renumbered, with its names in the new string table."""
    name_off, info, size_type = struct.unpack_from("<III", s, off)
    kind, vlen, body = info >> 24 & 0x1F, info & 0xFFFF, off + 12
    if kind == PTR:
        return struct.pack("<III", 0, info, 0)  # void *: see the module docstring
    if kind in _REFERS or kind == FUNC_PROTO:
        size_type = new_id[size_type]
    out = bytearray(struct.pack("<III", string(name_off), info, size_type))
    if kind == INT:
        out += s[body:body + 4]
    elif kind == ARRAY:
        elem, index, n = struct.unpack_from("<III", s, body)
        out += struct.pack("<III", new_id[elem], new_id[index], n)
    elif kind in (STRUCT, UNION):
        for i in range(vlen):
            m_name, m_type, m_off = struct.unpack_from("<III", s, body + 12 * i)
            out += struct.pack("<III", string(m_name), new_id[m_type], m_off)
    elif kind == ENUM:
        for i in range(vlen):
            e_name, val = struct.unpack_from("<II", s, body + 8 * i)
            out += struct.pack("<II", string(e_name), val)
    elif kind == ENUM64:
        for i in range(vlen):
            e_name, lo, hi = struct.unpack_from("<III", s, body + 12 * i)
            out += struct.pack("<III", string(e_name), lo, hi)
    elif kind == FUNC_PROTO:
        for i in range(vlen):
            p_name, p_type = struct.unpack_from("<II", s, body + 8 * i)
            out += struct.pack("<II", string(p_name), new_id[p_type])
    elif kind not in (FWD, FLOAT) and kind not in _REFERS:
        raise ValueError(f"BTF kind {kind} inside a CO-RE type")
    return bytes(out)


def _check_parses(data):
    """libbpf reads what we wrote (ValueError if not): a bad file would fail every load this boot."""
    lib = libbpf.lib()
    btf = lib.btf__new(data, len(data))
    if not btf:
        raise ValueError("libbpf does not parse the minimal BTF")
    lib.btf__free(btf)


def path_for(object_data):
    """Where this boot's copy for this object lives (whether or not it exists yet)."""
    # crc32, not sha256: hashlib would import OpenSSL at every start
    return os.path.join(bootcache.DIR, f"core-{FORMAT}-{bootcache.boot_id()}-{len(object_data):x}-{zlib.crc32(object_data):08x}.btf")


STALE_S = 60


def _prune(keep):
    """Remove the other copies nobody built or used for STALE_S seconds.

    Every build of the object makes a new copy, and /run is only emptied at
    reboot. A copy is read only by the load that follows ensure() within
    milliseconds, and ensure() touches the copy it hands out, so one left a
    minute is not about to be read; were it needed again, it is built again.
    """
    now = time.time()
    for name in os.listdir(bootcache.directory()):
        path = os.path.join(bootcache.DIR, name)
        if name.startswith("core-") and name.endswith(".btf") and path != keep:
            try:
                if now - os.stat(path).st_mtime > STALE_S:
                    os.unlink(path)
            except OSError:
                pass  # gone meanwhile: another run pruned it


def ensure(object_path):
    """The path of a minimal kernel BTF for this object, built now if needed; None if it cannot be had.

    None (no kernel BTF, /run not writable, anything unexpected) only means
    libbpf reads the whole kernel BTF, as it would without us. A copy that
    another user could have written is refused (UnsafePath), not
    handed to libbpf: it decides what the verifier is told about the kernel.
    """
    try:
        with open(object_path, "rb") as f:
            obj = f.read()
        path = path_for(obj)
        bootcache.directory()
        if trusted_paths.check_file(path):
            os.utime(path)  # in use: see _prune()
            return path
        names = core_roots(obj)
        data = minimal(kernel(), names)
        _check_parses(data)
        bootcache.write(path, data)
        _prune(keep=path)
        return path
    except (OSError, ValueError, KeyError, IndexError, struct.error):
        return None
