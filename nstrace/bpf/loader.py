"""Loading nstrace's one CO-RE object and reading its ring buffer.

The life of a :class:`BpfObject` follows libbpf-bootstrap: open, set the
``const volatile`` options in ``.rodata``, choose which programs load, load,
attach each program on its own, poll, then close in reverse order (ring
buffer, links, object). Every step raises :class:`~nstrace.errors.LibbpfError`
or a subclass with a one-line reason.
"""

import ctypes
import errno
import os

from ..errors import LibbpfError, ProbeError
from . import btf as btfmod
from . import corebtf, features, libbpf, teardown

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

def object_for_kernel(function_layer=True):
    """The build of nstrace's BPF object this kernel loads: with BPF atomics where it has them, and
    with the kernel-function layer's programs only where one of its hooks can attach."""
    if function_layer:
        return OBJECT_PATH if features.kernel_has_cmpxchg() else NO_ATOMICS_OBJECT_PATH
    return SYSCALLS_OBJECT_PATH if features.kernel_has_cmpxchg() else SYSCALLS_NO_ATOMICS_OBJECT_PATH


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

    def replace_calls(self, old, new):
        """Replace the 8-byte instruction old with new wherever a program has it."""
        self._setting(self._replace_calls, old, new)

    def _replace_calls(self, old, new):
        lib, prog = self._lib, None
        while True:
            prog = lib.bpf_object__next_program(self._obj, prog)
            if not prog:
                return
            n = lib.bpf_program__insn_cnt(prog)
            code = bytearray(ctypes.string_at(lib.bpf_program__insns(prog), 8 * n))
            at, found = code.find(old), False
            while at >= 0:
                if at % 8 == 0:  # an instruction, not bytes across two
                    code[at:at + 8], found = new, True
                at = code.find(old, at + 1)
            if found:
                libbpf.check(lib.bpf_program__set_insns(prog, bytes(code), n),
                             f"calls of {lib.bpf_program__name(prog).decode()}")

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
            import mmap  # once the watch is live, not before its first probe (bench: start-up breakdown)

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

    def link_fds(self):
        """The fd of each attachment: a BPF link, or the perf event itself where the kernel has no perf
        link (before 5.15). Each holds its program and keeps it attached (bpf/teardown.py)."""
        return [self._lib.bpf_link__fd(link) for link in self._links.values()]

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
        if teardown.held(self.link_fds()):
            # a holder keeps them attached: each destroy only drops our reference, no grace period
            for name in list(self._links):
                self.detach(name)
            return
        parallel = []
        for name in list(self._links):
            if self._sections.get(name, "").startswith(("tracepoint/", "raw_tp/")):
                parallel.append(self._links.pop(name))
            else:
                self.detach(name)
        import threading  # at detach only: the load that begins a watch needs no threads (preload.py)
        threads = [threading.Thread(target=self._lib.bpf_link__destroy, args=(link,)) for link in parallel]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
