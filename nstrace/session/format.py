"""The session file format: what ``watch --record FILE`` writes (session/writer.py) and ``show`` and
``render`` read (session/reader.py).
The file is JSON lines, one object per line, UTF-8:

- line 1, the header: ``{"nstrace_session": 1, "kind": "header", "nstrace", "started",
  "host", "kernel": {sysname, release, version, machine}, "options", "availability",
  "clock": {"monotonic_to_wall_ns"}, "snapshot"}``. ``availability`` is
  Tracer.availability() (which probe points ran, and why not), ``snapshot``
  the namespace map at the start (nstrace/linux/nsmap.py, with processes), the clock
  offset turns kernel-path step times (CLOCK_MONOTONIC) into wall-clock ones;
- one line per record: exactly a ``watch --json`` line (README: the JSON
  record), so a plain ``watch --json > FILE`` is a session too, only without
  header and end;
- last, the end: ``{"nstrace_session": 1, "kind": "end", "ended", "records", "summary", "snapshot"}``,
  ``records`` the number of record lines above it; ``demo --record`` adds ``seen_inside``: what its
  processes reported from inside their namespaces (check/demo.py), for the HTML page.
  A session whose recorder was killed has no end line; it still reads.

``nstrace_session`` is the format version: a reader refuses versions newer
than its own and ignores keys it does not know, so fields can be added
without a new version. Records are written as they arrive and flushed per
line, so a crash loses at most the line being written.

nstrace/session/schema.json (JSON Schema, draft-07) says what each line
may hold, for nstrace and for anyone else reading these files or ``watch
--json`` (log shippers). :func:`load` holds every line to it before any of
it is used, and to strict JSON (RFC 8259: no NaN or Infinity, no lone
surrogate, numbers that fit, no key twice in one object: Python's json would
keep the last of two, another reader the first): a file from elsewhere is
outside data, and one that fails gets one line naming the line number and the
field (exit 2).

What no schema of a single line can say, :func:`load` holds too (the file's
structure), refusing with the line number:

- a header is line 1 or nowhere: a header further down is a second session
  joined on, or records written before their header;
- an end line closes a session that has a header, at most once, and nothing
  but blank lines follows it;
- the end's ``records`` is the number of record lines read: a file with lines
  cut out of its middle, or joined from several, is refused;
- records alone, no header and no end, are a ``watch --json`` capture: read
  as a session whose host, kernel and snapshots are unknown.

A last line cut short (no newline after it: the recorder was killed while
writing it) is left out with a warning, and then there is no end line.
"""


VERSION = 1  # the format version, `nstrace_session` in the header and end lines
