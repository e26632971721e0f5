"""The ctypes mirrors against the compiled objects: nstrace/record/layout.py against the BPF object's BTF,
nstrace/record/reader.py against the reader library's; the tables Python reads from probes/*.def
(nstrace/kernel/defs.py) against what C made of them, in the object's BTF; and the layers of the package."""

import ctypes

import pytest

from nstrace.bpf import btf, libbpf, loader
from nstrace.kernel import defs, documented, functions
from nstrace.record import filters, layout, reader


@pytest.fixture(scope="module")
def object_btf():
    obj = loader.BpfObject()  # opening needs no privileges: nothing is loaded
    yield obj.btf
    obj.close()


@pytest.mark.parametrize("struct_name,mirror", [
    ("nstrace_event", layout.Event),
    ("nstrace_ns_set", layout.NsSet),
    ("nstrace_step", layout.Step),
])
def test_mirror_matches_btf(object_btf, struct_name, mirror):
    c_members = btf.struct_members(object_btf, struct_name)
    py_members = [(name, getattr(mirror, name).offset, getattr(mirror, name).size)
                  for name, *_ in mirror._fields_]
    assert py_members == c_members
    assert ctypes.sizeof(mirror) == btf.struct_size(object_btf, struct_name)


def test_head_is_the_event_up_to_its_steps():
    assert ctypes.sizeof(layout.EventHead) == layout.HEAD_SIZE == layout.Event.steps.offset


def test_constants_match(object_btf):
    # the array bounds the mirror uses are the ones C was compiled with
    members = dict((m[0], m[2]) for m in btf.struct_members(object_btf, "nstrace_event"))
    assert members["steps"] == layout.MAX_STEPS * ctypes.sizeof(layout.Step)
    ns = dict((m[0], m[2]) for m in btf.struct_members(object_btf, "nstrace_ns_set"))
    assert ns["inum"] == layout.NS_SLOTS * 4


@pytest.mark.parametrize("enum_name,table,prefix", [
    ("nstrace_op", layout.OPS, "OP_"),
    ("nstrace_target_kind", layout.TARGET_KINDS, "TARGET_"),
    ("nstrace_step_kind", layout.STEP_KINDS, "STEP_"),
    ("nstrace_step_value", layout.STEP_VALUES, "VAL_"),
])
def test_enums_match(object_btf, enum_name, table, prefix):
    c_enum = btf.enum_values(object_btf, enum_name)
    if prefix == "OP_":  # the count, for C's tables (layout.OP_SLOTS)
        assert c_enum.pop("OP_MAX") == layout.OP_SLOTS
    py = {prefix + (name or "none").upper(): value for value, name in table.items()}
    assert py == c_enum


def test_function_table_matches(object_btf):
    c_enum = btf.enum_values(object_btf, "nstrace_func")
    assert c_enum.pop("FN_MAX") == len(functions.FUNCTIONS)
    assert {name: value for value, name in enumerate(functions.FUNCTIONS) if name} == \
        {name.removeprefix("FN_"): value for name, value in c_enum.items()}


def test_the_installed_tables_are_this_checkouts():
    """The package reads probes/*.def as the build shipped them beside the object (nstrace/_bpf/): the
    installed copies are the checkout's, else these tests run a stale build (rerun scripts/setup.sh)."""
    from nshelpers import ROOT
    tables = sorted((ROOT / "probes").glob("*.def"))
    assert tables
    for src in tables:
        with open(f"{defs._BUILD}/{src.name}", "rb") as f:
            assert f.read() == src.read_bytes(), src.name


def test_every_hooked_function_is_documented():
    """Adding a hooked function is a row of probes/functions.def and its [function.NAME] in paths.toml,
    whose source file each of its steps shows (record/decode.py decode_step)."""
    notes = documented.notes()["function"]
    assert [f for f in functions.FUNCTIONS[1:] if "file" not in notes.get(f, {})] == []


def test_options_are_rodata(object_btf):
    """The options user space sets before load live in .rodata (const volatile)."""
    assert set(btf.datasec_vars(object_btf, ".rodata")) >= {
        "trace_all", "filter_tgid", "id_key", "raw_addresses", "wakeup_bytes"}
    assert set(btf.datasec_vars(object_btf, ".bss")) >= {"lost_events", "lost_inflight"}


def test_libbpf_is_at_least_1_0():
    assert libbpf.version() >= (1, 0)


# --- the mirrors of native/batch.c's structs (nstrace/record/reader.py) ---------------------------

@pytest.fixture(scope="module")
def native_btf(tmp_path_factory):
    """The BTF of the built reader library, from its DWARF (pahole, Debian's dwarves: scripts/setup.sh
    installs it), so its structs are compared as the compiler laid them out."""
    import shutil
    import subprocess
    pahole = shutil.which("pahole")
    assert pahole, "pahole not found: scripts/setup.sh installs Debian's dwarves package"
    out = tmp_path_factory.mktemp("btf") / "reader.btf"
    subprocess.run([pahole, f"--btf_encode_detached={out}", str(reader.LIB_PATH)], check=True, capture_output=True)
    data = out.read_bytes()
    handle = libbpf.lib().btf__new(data, len(data))
    assert handle, "libbpf could not parse pahole's BTF"
    yield handle
    libbpf.lib().btf__free(handle)


@pytest.mark.parametrize("struct_name,mirror", [
    ("batch_tables", reader.Tables), ("batch_filter", filters.BatchFilter), ("batch_counts", reader.Counts),
    ("batch_state_bit", reader._StateBit),
])
def test_batch_mirror_matches_the_library(native_btf, struct_name, mirror):
    c_members = btf.struct_members(native_btf, struct_name)
    py_members = [(name, getattr(mirror, name).offset, getattr(mirror, name).size) for name, *_ in mirror._fields_]
    assert py_members == c_members
    assert ctypes.sizeof(mirror) == btf.struct_size(native_btf, struct_name)


# --- the layers of the package -------------------------------------------------------------------

# What each sub-package may import besides itself (README "Design": the package by layer). Nothing
# imports upward, and the top (cli) is imported by nothing but __main__.
MAY_IMPORT = {
    "errors": set(),
    # functools.cache without functools (start-up): as basic as errors
    "once": set(),
    "kernel": {"errors", "once"},
    "linux": {"errors", "once", "kernel"},
    "bpf": {"errors", "once", "kernel", "linux"},
    "record": {"errors", "once", "kernel", "linux", "bpf"},
    "study": {"errors", "once", "kernel", "linux", "record"},
    "session": {"errors", "once", "kernel", "linux", "record", "study"},
    "tracing": {"errors", "once", "kernel", "linux", "bpf", "record", "study"},
    "view": {"errors", "once", "kernel", "linux", "record", "study", "session"},
    "check": {"errors", "once", "kernel", "linux", "bpf", "record", "study", "session", "tracing"},
    "lab": {"errors", "once", "linux"},
    "cli": {"errors", "once", "kernel", "linux", "bpf", "record", "study", "session", "tracing", "view", "check", "lab",
            "__version__"},
    # the library's face (nstrace/__init__.py imports it, and nothing else may): beside cli, not above it
    "api": {"errors", "once", "kernel", "linux", "bpf", "record", "study", "session", "tracing", "view"},
    # a client of the public API: `import nstrace`, and the errors it raises
    "pytest_plugin": {"errors"},
}


def _imports(path, package):
    """The nstrace sub-packages (or top modules) one module imports, lazy imports included."""
    import ast
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            else:
                names = [node.module] if node.module and node.module.startswith("nstrace") else []
            for name in names:
                parts = name.split(".")
                if len(parts) > 1 and parts[0] == "nstrace":
                    found.add(parts[1])
    return found


def test_sub_packages_import_only_downwards():
    from nshelpers import ROOT
    bad = []
    for path in sorted((ROOT / "nstrace").rglob("*.py")):
        rel = path.relative_to(ROOT / "nstrace")
        layer = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 or rel.stem in MAY_IMPORT else None
        if layer is None or path.name == "_schema.py":
            continue
        package = ".".join(("nstrace", *rel.parts[:-1]))
        for imported in _imports(path, package) - {layer, "__version__"}:
            if imported not in MAY_IMPORT[layer]:
                bad.append(f"{rel}: imports nstrace.{imported}")
    assert not bad, bad


def test_only_the_package_face_imports_the_api():
    """nstrace/api.py is the top: the command line, like every layer, is a client of what is below it."""
    from nshelpers import ROOT
    importers = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "nstrace").rglob("*.py")
                       if "api" in _imports(p, ".".join(("nstrace", *p.relative_to(ROOT / "nstrace").parts[:-1]))))
    assert importers == ["nstrace/__init__.py"]


def test_sub_package_inits_are_empty():
    """Importing nstrace.bpf.probeset must not import more than it: start-up depends on it."""
    from nshelpers import ROOT
    for init in (ROOT / "nstrace").glob("*/__init__.py"):
        assert init.read_text().strip() == "", init
