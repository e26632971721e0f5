"""Pictures of a recorded session, by format: an SVG graph (view/graph.py), a self-contained HTML page
(view/page.py), a Perfetto trace (view/perfetto.py); written as nstrace writes every output file."""

import json

from ..errors import UsageError, WriteFailed
from ..linux import trusted_paths
from .graph import svg
from .page import html_page
from .perfetto import perfetto

FORMATS = ("svg", "html", "perfetto")


# --- one entry point ----------------------------------------------------------------

def render(session, fmt, records=None, warn=None):
    """The session in one of FORMATS, as text ready to write; warn(message): what the HTML page leaves out."""
    if fmt == "svg":
        return svg(session, records)
    if fmt == "html":
        return html_page(session, records, warn)
    if fmt == "perfetto":
        return json.dumps(perfetto(session, records), separators=(",", ":")) + "\n"
    raise UsageError(f"unknown format {fmt!r}: valid are {', '.join(FORMATS)}")


def write(session, fmt, out_path, records=None, warn=None, fd=None):
    """Render and write to out_path ("-" or None: returns the text instead); to fd instead, where the
    caller opened out_path already (trusted_paths.create_output), before the work it draws."""
    text = render(session, fmt, records, warn)
    if fd is None:
        if out_path in (None, "-"):
            return text
        fd = trusted_paths.create_output(out_path)  # never through another user's symlink
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        raise WriteFailed(f"cannot write {out_path}: {e.strerror}") from None
    return None
