"""Loading nstrace's one CO-RE object and reading its ring buffer.

The life of a :class:`BpfObject` follows libbpf-bootstrap: open, set the
``const volatile`` options in ``.rodata``, choose which programs load, load,
attach each program on its own, poll, then close in reverse order (ring
buffer, links, object). Every step raises :class:`~nstrace.errors.LibbpfError`
or a subclass with a one-line reason.
"""

import ctypes
import errno
import functools
import mmap
import os
import stat
import threading

from ..errors import KernelSupportError, LibbpfError, PrivilegeError, ProbeError
from ..linux import mounts
from . import btf as btfmod
from . import corebtf, libbpf

_libc = ctypes.CDLL(None)
# Strings, not pathlib: importing pathlib and what it imports delays `nstrace watch` going live.
# Beside this package, not through importlib.resources, for the same reason (it imports pathlib
# and tempfile): the wheel installs nstrace/_bpf/ as plain files, as every wheel is installed.
_BUILD = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "_bpf")
OBJECT_PATH = os.path.join(_BUILD, "nstrace.bpf.o")
# The same programs without BPF atomics, for kernels that have none (probes/Makefile)
NO_ATOMICS_OBJECT_PATH = os.path.join(_BUILD, "nstrace-noatomics.bpf.o")
# Each without the kernel-function layer's programs and maps (probes/Makefile)
SYSCALLS_OBJECT_PATH = os.path.join(_BUILD, "nstrace-syscalls.bpf.o")
SYSCALLS_NO_ATOMICS_OBJECT_PATH = os.path.join(_BUILD, "nstrace-syscalls-noatomics.bpf.o")
SYSCALLS_OBJECTS = (SYSCALLS_OBJECT_PATH, SYSCALLS_NO_ATOMICS_OBJECT_PATH)
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
TRACEFS = "/sys/kernel/tracing"

# include/uapi/linux/capability.h
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def effective_caps(pid="self"):
    """The CapEff bitmask of a process, from /proc/<pid>/status (bytes: its Name: line is whatever
    file the process was run as)."""
    with open(f"/proc/{pid}/status", "rb") as f:
        lines = f.read().split(b"\n")
    for line in lines:
        if line.startswith(b"CapEff:"):
            return int(line.split()[1], 16)
    return 0


def in_initial_user_ns():
    """True unless this process runs in a user namespace other than the initial one.

    The initial user namespace maps every uid to itself, and only it can
    (kernel/user_namespace.c; /proc/self/uid_map is "0 0 4294967295" there, 5.10-7.2).
    """
    try:
        with open("/proc/self/uid_map") as f:
            return f.read().split() == ["0", "0", "4294967295"]
    except OSError:
        return True  # no /proc: nothing to tell, and the kernel will answer at load


def check_privileges():
    """Raise PrivilegeError unless this process may load and attach tracing BPF."""
    caps = effective_caps()
    has = lambda cap: bool(caps >> cap & 1)  # noqa: E731
    if has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON)):
        if not in_initial_user_ns():
            # capabilities in a user namespace are only over it; the kernel checks CAP_BPF and
            # CAP_PERFMON in the initial one (kernel/bpf/syscall.c bpf_capable(), 6.18)
            raise PrivilegeError("nstrace needs root of the initial user namespace: this process runs in "
                                 "another user namespace, whose capabilities do not reach the kernel's BPF")
        return
    who = "not root" if os.geteuid() else "root without the needed capabilities"
    raise PrivilegeError(f"nstrace needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN): running as {who}; try sudo")


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("regs", ctypes.c_uint8), ("off", ctypes.c_int16), ("imm", ctypes.c_int32)]


def _insn(code, dst=0, src=0, off=0, imm=0):
    return _BpfInsn(code, dst | src << 4, off, imm)


# *(u64 *)(r10 - 8) = 0; r0 = 0; r1 = 1; r0 = cmpxchg(r10 - 8, r0, r1); r0 = 0; exit
# (include/uapi/linux/bpf.h: BPF_STX | BPF_ATOMIC | BPF_DW = 0xdb, BPF_CMPXCHG = 0xf1)
_CMPXCHG_PROG = (_insn(0x7a, dst=10, off=-8), _insn(0xb7), _insn(0xb7, dst=1, imm=1),
                 _insn(0xdb, dst=10, src=1, off=-8, imm=0xf1), _insn(0xb7), _insn(0x95))


@functools.cache
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


def object_for_kernel(function_layer=True):
    """The build of nstrace's BPF object this kernel loads: with BPF atomics where it has them, and
    with the kernel-function layer's programs only where one of its hooks can attach."""
    if function_layer:
        return OBJECT_PATH if kernel_has_cmpxchg() else NO_ATOMICS_OBJECT_PATH
    return SYSCALLS_OBJECT_PATH if kernel_has_cmpxchg() else SYSCALLS_NO_ATOMICS_OBJECT_PATH


def check_btf(path=VMLINUX_BTF):
    """Raise KernelSupportError if the kernel exposes no BTF (CONFIG_DEBUG_INFO_BTF)."""
    if not os.path.exists(path):
        raise KernelSupportError(f"no kernel BTF at {path}: nstrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y")


def ensure_tracefs(path=TRACEFS):
    """Make tracefs available for attaching tracepoints; return True if we mounted it.

    libbpf resolves a tracepoint's id through tracefs at attach time only; our
    machines do not mount it by default (../shared/kernel-env.md). Mounted,
    tracefs is root's alone (mode 0700, fs/tracefs/inode.c, 6.18): with
    CAP_BPF and CAP_PERFMON but not root, it is there and cannot be read.
    """
    try:
        if stat.S_ISDIR(os.stat(os.path.join(path, "events")).st_mode):
            return False
    except PermissionError as e:
        raise PrivilegeError(f"tracefs at {path} is mounted, but this user may not read it ({e.strerror}): "
                             "libbpf looks tracepoints up there; run as root") from None
    except OSError:
        pass  # not mounted (or not there at all): mount it
    try:
        mounts.mount("nodev", path, "tracefs")
    except OSError as e:
        if e.errno == errno.EPERM:
            raise PrivilegeError(f"tracefs is not mounted at {path}, and mounting it needs CAP_SYS_ADMIN: "
                                 "run as root, or mount it first") from None
        raise KernelSupportError(f"tracefs is not mounted at {path} and mounting it failed: {os.strerror(e.errno)}") \
            from None
    return True


def unmount(path=TRACEFS):
    try:
        mounts.umount(path)  # detached: a reader may still hold a file
    except OSError:
        pass


class BpfObject:
    """One opened BPF object file: its programs, maps, globals and links.

    With ``core_btf`` (the default) CO-RE relocates against this boot's
    minimal copy of the kernel's BTF (:mod:`nstrace.bpf.corebtf`) where one can
    be had: the same result as the whole kernel BTF, for less time and memory (see corebtf).
    """

    def __init__(self, path=OBJECT_PATH, core_btf=True):
        path = os.fspath(path)
        if not os.path.exists(path):
            raise LibbpfError(f"BPF object {path} is missing: build it with `make -C probes`")
        self._lib = libbpf.lib()
        self.core_btf = corebtf.ensure(path) if core_btf else None
        self._path = path
        self._opts = libbpf.OpenOpts(btf_custom_path=self.core_btf.encode()) if self.core_btf else None
        self._obj = self._open()
        self._settings = []  # (setter, args) before load, to open again and replay them (see load)
        self._links = {}
        self._sections = {}
        self._mmaps = {}
        self._vars = {}
        self._loaded = False
        self._btf = self._lib.bpf_object__btf(self._obj)

    def _open(self):
        libbpf.clear_messages()
        return libbpf.check_ptr(self._lib.bpf_object__open_file(str(self._path).encode(), self._opts),
                                f"opening {os.path.basename(self._path)}")

    # --- before load -------------------------------------------------------

    def program_names(self):
        """Every program in the object, as {name: section}."""
        out, prog = {}, None
        while True:
            prog = self._lib.bpf_object__next_program(self._obj, prog)
            if not prog:
                return out
            out[self._lib.bpf_program__name(prog).decode()] = self._lib.bpf_program__section_name(prog).decode()

    def _prog(self, name):
        prog = self._lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise LibbpfError(f"no BPF program named {name} in the object")
        return prog

    def _map(self, name):
        m = self._lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise LibbpfError(f"no BPF map named {name} in the object")
        return m

    def _setting(self, setter, *args):
        setter(*args)
        self._settings.append((setter, args))

    def set_autoload(self, name, autoload):
        self._setting(self._set_autoload, name, autoload)

    def _set_autoload(self, name, autoload):
        libbpf.check(self._lib.bpf_program__set_autoload(self._prog(name), autoload), f"autoload of {name}")

    def set_max_entries(self, map_name, n):
        self._setting(self._set_max_entries, map_name, n)

    def _set_max_entries(self, map_name, n):
        libbpf.check(self._lib.bpf_map__set_max_entries(self._map(map_name), n), f"sizing map {map_name}")

    def _variables(self, section):
        # one walk of the section's BTF per object: set_rodata runs six times before load,
        # read_global on every pass of the watch loop
        if section not in self._vars:
            self._vars[section] = btfmod.datasec_vars(self._btf, section)
        return self._vars[section]

    def _global_ptr(self, section, name):
        variables = self._variables(section)
        if name not in variables:
            raise LibbpfError(f"no global {name} in {section}")
        offset, size = variables[name]
        length = ctypes.c_size_t()
        base = self._lib.bpf_map__initial_value(self._map(section), ctypes.byref(length))
        if not base or offset + size > length.value:
            raise LibbpfError(f"cannot map {section} to reach {name}")
        return base + offset, size

    def set_rodata(self, name, value):
        """Set a ``const volatile`` global before load (value: int or bool)."""
        if self._loaded:
            raise LibbpfError(f"{name}: options are frozen once the object is loaded")
        self._setting(self._set_rodata, name, value)

    def _set_rodata(self, name, value):
        addr, size = self._global_ptr(".rodata", name)
        ctypes.memmove(addr, int(value).to_bytes(size, "little", signed=int(value) < 0), size)

    # --- load and after -------------------------------------------------------

    def load(self):
        # libbpf prints ~8,000 debug lines per load, each a call into Python that must take the GIL:
        # while another thread runs Python (the command line importing, beside nstrace.bpf.preload)
        # each waits its turn. So the load runs with no printer, and only a load that failed is
        # made again, listening, for libbpf's lines that say why.
        libbpf.clear_messages()
        ret = libbpf.unheard(self._lib.bpf_object__load, self._obj)
        if ret < 0 and not libbpf.DEBUG:
            self._lib.bpf_object__close(self._obj)
            self._obj = self._open()
            self._btf, self._vars = self._lib.bpf_object__btf(self._obj), {}
            for setter, args in self._settings:
                setter(*args)
            ret = self._lib.bpf_object__load(self._obj)
        libbpf.check(ret, "the kernel refused nstrace's BPF programs")
        self._loaded = True
        # libbpf parsed the kernel's BTF (megabytes) and freed it; hand the pages back.
        _libc.malloc_trim(0)

    def attach(self, name):
        """Attach one program by its section's definition; raise ProbeError naming it."""
        libbpf.clear_messages()
        prog = self._prog(name)
        link = self._lib.bpf_program__attach(prog)
        if not link:
            err = ctypes.get_errno() or errno.EINVAL
            section = self._lib.bpf_program__section_name(prog).decode()
            raise ProbeError(section, f"the kernel refused probe {section}: {os.strerror(err)} "
                                      f"({errno.errorcode.get(err, err)})", err)
        self._links[name] = link
        self._sections[name] = self._lib.bpf_program__section_name(prog).decode()

    def program_fd(self, name):
        return self._lib.bpf_program__fd(self._prog(name))

    def map_fd(self, name):
        return libbpf.check(self._lib.bpf_map__fd(self._map(name)), f"fd of map {name}")

    def read_global(self, section, name):
        """Read an integer global of the loaded object, live from the kernel's map.

        libbpf 1.1 remaps a data section onto the kernel map only for
        skeletons, so the section map is mmaped here (BPF_F_MMAPABLE).
        """
        variables = self._variables(section)
        if name not in variables:
            raise LibbpfError(f"no global {name} in {section}")
        offset, size = variables[name]
        if section not in self._mmaps:
            length = ctypes.c_size_t()
            self._lib.bpf_map__initial_value(self._map(section), ctypes.byref(length))
            pages = -(-length.value // mmap.PAGESIZE) * mmap.PAGESIZE
            self._mmaps[section] = mmap.mmap(self.map_fd(section), pages, mmap.MAP_SHARED, mmap.PROT_READ)
        return int.from_bytes(self._mmaps[section][offset:offset + size], "little")

    def map_update(self, map_name, key, value):
        """Write one element: key and value are ctypes objects."""
        ret = self._lib.bpf_map_update_elem(self.map_fd(map_name), ctypes.byref(key), ctypes.byref(value), 0)
        if ret < 0:
            libbpf.check(-ctypes.get_errno(), f"updating map {map_name}")

    def map_keys(self, map_name, key_type):
        """Every key of a hash map now, as key_type objects (a map others write may change meanwhile)."""
        fd, keys, key = self.map_fd(map_name), [], None
        while True:
            nxt = key_type()
            if self._lib.bpf_map_get_next_key(fd, ctypes.byref(key) if key is not None else None, ctypes.byref(nxt)):
                return keys
            keys.append(nxt)
            key = nxt

    def map_delete(self, map_name, key):
        """Remove one element; False if it was not there."""
        return self._lib.bpf_map_delete_elem(self.map_fd(map_name), ctypes.byref(key)) == 0

    @property
    def attached(self):
        return list(self._links)

    @property
    def loaded(self):
        """True once the kernel took the object: only then do its maps have fds."""
        return self._loaded and self._obj is not None

    @property
    def btf(self):
        """The object's own BTF (freed with the object)."""
        return self._btf

    def detach(self, name):
        link = self._links.pop(name, None)
        if link:
            self._lib.bpf_link__destroy(link)

    def close(self):
        """Unmap globals, destroy links, close the object: the reverse of setup (nstrace/record/reader.py owns the ring buffer reader)."""
        for m in self._mmaps.values():
            m.close()
        self._mmaps.clear()
        self.detach_all()
        if self._obj:
            self._lib.bpf_object__close(self._obj)
            self._obj = None

    def detach_all(self):
        """Destroy every link: no program runs after this returns; maps stay readable."""
        # A tracepoint detach waits for an RCU grace period: those go side by side
        # (ctypes drops the GIL during the call). Trampoline and kprobe links go one at a time:
        # they patch kernel text, and concurrent fentry detaches under QEMU TCG were seen to leave
        # both vCPUs of a 6.1 guest in a soft lockup.
        parallel = []
        for name in list(self._links):
            if self._sections.get(name, "").startswith(("tracepoint/", "raw_tp/")):
                parallel.append(self._links.pop(name))
            else:
                self.detach(name)
        threads = [threading.Thread(target=self._lib.bpf_link__destroy, args=(link,)) for link in parallel]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
