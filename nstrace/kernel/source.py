"""A kernel function's source as a learner reads it: where its definition is in a file's text, the
line in a caller's body that calls it, and the line whose test decided what it did.

Pure: this module reads C text it is handed and paths.toml's keys, nothing else. The text comes from
the kernel source this machine fetched from Debian (nstrace/linux/kernelsource.py reads it back and
is the API the views call; nstrace/lab/sources.py fetches it); scripts/source-lines.py uses the same
rules to write source-lines.toml.

paths.toml keys read here, in [source.F] (the key list is above them in that file), beside [function.F]'s
file:

- ``decides``: what the deciding line of F's body tests, as it is written there (a string, or a list
  of spellings when versions differ): e.g. ``"flags & CLONE_NEWUTS"`` for copy_utsname. Matched
  against each line of the body with comments removed and runs of blanks as one space; exactly one
  line must match, in every version the lab covers (tests/test_source_lines.py).
- ``called_as``: how a caller's line calls F when it does not name it, e.g. ``"->install("`` for the
  install functions (ns->ops->install in validate_ns). Default: ``F(``.
- ``via``: inline helpers a caller may reach F through, outermost first, e.g. ``["put_nsproxy"]`` for
  free_nsproxy (switch_task_namespaces calls put_nsproxy, whose count test calls free_nsproxy).
  A helper that is no step of any path has its file in its own [source] table.

A call site is looked for in the caller's body, then through the helpers of ``via`` and the
functions paths.toml documents as F's callers (its ops' ``in``), which is how a call is found
through a function the compiler inlined (validate_ns between setns and utsns_install): the
observed caller is the nearest one a probe saw.
"""

import dataclasses
import functools
import re

# Lines shown after a marked statement (the consequence of a test: "get_uts_ns(old_ns); return old_ns;"),
# and after a definition's head when the function decides nothing.
AFTER = 2
# Lines shown before a call (the test it sits under: "if (new_nsproxy) {"), blank ones left out.
BEFORE = 1
# A statement is followed over this many lines at most while its parentheses are open.
STATEMENT_LINES = 8


@dataclasses.dataclass(frozen=True)
class Excerpt:
    """A few lines of one function in one file of one kernel version.

    lines: ((number, text, mark), ...), numbers ascending, possibly with gaps (a view shows a gap as
    "..."); text as in the file, tabs kept (expand them for a terminal; escape the text for HTML, and
    pass it through nstrace/view/terminal.py for a terminal: it is outside text); mark is "" (context),
    "call" (the line that makes the call) or "decides" (the test that chose what the function did).
    """

    func: str               # the function whose lines these are: the step's, its caller's, or a helper on the way
    file: str               # path in the kernel tree, e.g. "kernel/nsproxy.c"
    line: int | None        # the definition's first line, or the call's line; None: not known (no source)
    version: str            # of the source: upstream, e.g. "6.1.192" (the Debian revision, "6.1.192-3", where
                            # the kernel is that upstream version in another revision)
    exact: bool             # the kernel's own source (else the nearest covered version's, or another revision)
    lines: tuple = ()
    via: "Excerpt | None" = None   # a call made through a helper: that helper's lines (its test, its call)
    missing: str = ""       # no lines: why, and how to get them (one line)
    package: str = ""       # the Debian package the lines come from, e.g. "linux-source-6.1 6.1.192-3"

    @property
    def text(self):
        """file:line (or the file alone), labelled "(as in X)" when it is not the kernel's own source."""
        where = f"{self.file}:{self.line}" if self.line else self.file
        return where + ("" if self.exact else f" (as in {self.version})")

    def marked(self, mark):
        """The line numbers that carry mark."""
        return [n for n, _, m in self.lines if m == mark]


# --- C text ---------------------------------------------------------------------------------------

def code_lines(text):
    """text's lines with comments, string and character literals blanked (same lines, same
    columns): what the rules below match, so that a word in a comment is never taken for code."""
    i, n = 0, len(text)
    chars = list(text)
    state = None  # None, "/*", "//", '"', "'"
    while i < n:
        c = chars[i]
        if state is None:
            if c == "/" and i + 1 < n and chars[i + 1] in "*/":
                state = "/" + chars[i + 1]
                chars[i] = chars[i + 1] = " "
                i += 2
                continue
            if c in "\"'":
                state = c
        elif state == "/*":
            if c == "*" and i + 1 < n and chars[i + 1] == "/":
                chars[i] = chars[i + 1] = " "
                state = None
                i += 2
                continue
            if c != "\n":
                chars[i] = " "
        elif state == "//":
            if c == "\n":
                state = None
            else:
                chars[i] = " "
        else:  # inside a literal: keep its quotes, blank what is between
            if c == "\\" and i + 1 < n:
                chars[i] = " "
                if chars[i + 1] != "\n":
                    chars[i + 1] = " "
                i += 2
                continue
            if c == state or c == "\n":
                state = None
            else:
                chars[i] = " "
        i += 1
    return "".join(chars).split("\n")


def _normal(text):
    return " ".join(text.split())


def _branches(lines):
    """For each line index, the (conditional id, branch number) of every #if it sits in."""
    stack, out, next_id = [], [], 0
    for text in lines:
        word = re.match(r"\s*#\s*(if|ifdef|ifndef|elif|else|endif)\b", text)
        if word:
            kind = word.group(1)
            if kind.startswith("if"):
                stack.append([next_id, 0])
                next_id += 1
            elif kind in ("elif", "else") and stack:
                stack[-1][1] += 1
            elif kind == "endif" and stack:
                stack.pop()
        out.append(tuple(tuple(s) for s in stack))
    return out


def _head(func):
    if func.startswith("__x64_sys_"):
        return re.compile(rf"^SYSCALL_DEFINE\d\({re.escape(func.removeprefix('__x64_sys_'))}\s*,")
    return re.compile(rf"^(?![#/ \t*])(?:.*[\s*])?{re.escape(func)}\s*\(")


@dataclasses.dataclass(frozen=True)
class Span:
    """A function's definition: 0-based indexes of its first line, its body's "{" and "}"."""

    head: int
    open: int
    close: int

    def body(self):
        return range(self.open + 1, self.close)


def definition(code, func):
    """Where func is defined in code (code_lines of a file), or None.

    Its definition is the first line at column 0 that names it followed by "(" and whose next "{"
    comes before any ";" (a prototype ends at ";"); `__x64_sys_NAME` is `SYSCALL_DEFINEn(NAME, ...)`.
    Where one conditional defines the function in several branches (kernel/fork.c's clone for the
    CLONE_BACKWARDS architectures), the branch every other architecture compiles, the last (#else),
    is taken: x86-64 selects none of them (arch/x86/Kconfig).
    """
    head = _head(func)
    found = []
    for i, text in enumerate(code):
        if not head.match(text):
            continue
        rest = "\n".join(code[i:i + 40])
        brace, semi = rest.find("{"), rest.find(";")
        if brace >= 0 and (semi < 0 or brace < semi):
            found.append(i)
    if not found:
        return None
    start = found[0]
    if len(found) > 1:
        where = _branches(code)
        first = where[found[0]]
        # several branches of one conditional: the last branch is what x86-64 compiles
        same = [i for i in found if len(where[i]) == len(first) and where[i][:-1] == first[:-1]
                and where[i] and where[i][-1][0] == first[-1][0]]
        if len(same) > 1:
            start = max(same, key=lambda i: where[i][-1][1])
    return _span(code, start)


def _span(code, start):
    depth, opened = 0, None
    for i in range(start, len(code)):
        for c in code[i]:
            if c == "{":
                depth += 1
                if opened is None:
                    opened = i
            elif c == "}" and opened is not None:
                depth -= 1
                if depth == 0:
                    return Span(start, opened, i)
    return None


def matches(code, lines, patterns):
    """Indexes of `lines` whose code holds one of patterns (blanks normalised)."""
    wanted = [_normal(p) for p in ([patterns] if isinstance(patterns, str) else patterns)]
    return [i for i in lines if any(p in _normal(code[i]) for p in wanted)]


def calls(code, span, name, called_as=None):
    """Index of the first line in span's body that calls name (or holds called_as), or None."""
    if called_as:
        hit = matches(code, span.body(), called_as)
        return hit[0] if hit else None
    word = re.compile(rf"(?<![\w.>]){re.escape(name)}\s*\(")
    return next((i for i in span.body() if word.search(code[i])), None)


def statement(code, i):
    """The indexes of the statement starting at line i: it goes on while its parentheses are open."""
    depth, end = 0, i
    for j in range(i, min(len(code), i + STATEMENT_LINES)):
        depth += code[j].count("(") - code[j].count(")")
        end = j
        if depth <= 0:
            break
    return range(i, end + 1)


# --- paths.toml's keys ------------------------------------------------------------------------------

def facts(func):
    """What paths.toml says of func's source: its [source.F] keys, and its file (from [function.F], or
    [source.F] for a helper that is no step of any path); {} for a function it does not know."""
    from . import documented
    notes = documented.notes()
    shown = notes.get("source", {}).get(func, {})
    file = notes["function"].get(func, {}).get("file") or shown.get("file")
    return {**shown, "file": file} if file else {}


@functools.cache
def documented_callers():
    """{func: [callers]} from every op's steps' `in`, in paths.toml's order."""
    from . import documented
    out = {}
    for op in documented.notes()["op"].values():
        for step in op.get("step", []):
            callers = step.get("in", [])
            for caller in [callers] if isinstance(callers, str) else callers:
                out.setdefault(step["name"], [])
                if caller not in out[step["name"]]:
                    out[step["name"]].append(caller)
    return out


def named():
    """Every function whose source is shown: paths.toml's [function] tables and the helpers of its
    [source] tables."""
    from . import documented
    notes = documented.notes()
    return sorted({*notes["function"], *notes.get("source", {})})


def extracted():
    """What to take out of a kernel source package, as tar wildcards ("*" within one directory): the
    other C files of each named function's directory (where a later version may have moved it, or
    where a version adds the file), and each file that is no C file (a header)."""
    files = {facts(f)["file"] for f in named()}
    return sorted({f.rsplit("/", 1)[0] + "/*.c" if f.endswith(".c") else f for f in files})


def documented_pairs():
    """Every (function, caller) pair paths.toml documents (its ops' `in`)."""
    return sorted((f, c) for f, callers in documented_callers().items() for c in callers)


# --- a tree of files --------------------------------------------------------------------------------

class Tree:
    """The files of one kernel version, as {path: text}, and the excerpts of its functions (each
    marked exact: the caller knows whose kernel it stands for)."""

    def __init__(self, files, version, package=""):
        self.files = files
        self.version = version
        self.package = package
        self._code = {}
        self._where = {}

    def code(self, path):
        if path not in self._code:
            self._code[path] = code_lines(self.files[path])
        return self._code[path]

    def text_lines(self, path):
        return self.files[path].split("\n")

    def find(self, func):
        """(path, Span) of func's definition: in the file paths.toml names for it, then in the other
        C files of that directory (7.2 moved timens_commit to kernel/time/namespace_vdso.c); None
        where this version does not define it."""
        if func not in self._where:
            self._where[func] = self._search(func)
        return self._where[func]

    def _search(self, func):
        documented = facts(func).get("file")
        if not documented:
            return None
        for path in [documented, *siblings(documented, self.files)]:
            if path in self.files:
                span = definition(self.code(path), func)
                if span:
                    return path, span
        return None

    # --- excerpts

    def _excerpt(self, func, path, anchor, marks, via=None):
        text = self.text_lines(path)
        shown = {}
        for indexes, mark in marks:
            for i in indexes:
                shown[i] = mark or shown.get(i, "")
        lines = tuple((i + 1, text[i], shown[i]) for i in sorted(shown))
        return Excerpt(func, path, anchor + 1, self.version, True, lines, via, package=self.package)

    def _head_and_decision(self, func, path, span):
        """(head lines, "") and, when func decides, (its test, "decides") with the lines after it."""
        code = self.code(path)
        # the head up to its "{" (the "{" alone on its line, as kernel style has it, is left out)
        end = span.open if code[span.open].strip() == "{" else span.open + 1
        head = range(span.head, max(end, span.head + 1))
        marks = [(head, "")]
        test = facts(func).get("decides")
        hits = matches(code, span.body(), test) if test else []
        if hits:
            stmt = statement(code, hits[0])
            marks += [(stmt, "decides"), (_after(stmt, span), "")]
        else:
            marks.append((range(span.open + 1, min(span.open + 1 + AFTER, span.close)), ""))
        return marks, hits[0] if hits else None

    def definition(self, func):
        """func's head and its deciding test; None where this version does not define it."""
        found = self.find(func)
        if not found:
            return None
        path, span = found
        marks, _ = self._head_and_decision(func, path, span)
        return self._excerpt(func, path, span.head, marks)

    def call(self, func, caller):
        """The line of caller's body that leads to func (through `via` helpers and documented callers
        the compiler may have inlined), with caller's own test where it has one; None if not found."""
        hops = self.route(func, caller)
        return self._hops(hops) if hops else None

    def _hops(self, hops):
        (name, path, span, line), rest = hops[0], hops[1:]
        code = self.code(path)
        marks, test = self._head_and_decision(name, path, span)
        # the caller's own test where it led to the call (not its head: the view names the caller)
        marks = marks[1:] if test is not None and test < line else []
        before = [i for i in range(max(line - BEFORE, span.open + 1), line) if code[i].strip()]
        marks += [(before, ""), (statement(code, line), "call")]
        return self._excerpt(name, path, line, marks, self._hops(rest) if rest else None)

    def route(self, func, caller, depth=3):
        """[(function, path, span, call line index), ...] from caller down to the line calling func."""
        found = self.find(caller)
        if not found or not self.find(func):
            return None
        path, span = found
        line = calls(self.code(path), span, func, facts(func).get("called_as"))
        if line is not None:
            return [(caller, path, span, line)]
        if depth == 0:
            return None
        for between in [*facts(func).get("via", []), *documented_callers().get(func, [])]:
            if between in (caller, func):
                continue
            line = calls(self.code(path), span, between, facts(between).get("called_as"))
            if line is None:
                continue
            rest = self.route(func, between, depth - 1)
            if rest:
                return [(caller, path, span, line), *rest]
        return None


def _after(lines, span):
    end = lines[-1] + 1
    return range(end, min(end + AFTER, span.close + 1))


def siblings(path, files=None):
    """The other C files of path's directory (among `files` when given), sorted."""
    directory = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    names = files if files is not None else ()
    return sorted(p for p in names if p != path and p.startswith(directory) and "/" not in p[len(directory):]
                  and p.endswith(".c"))
