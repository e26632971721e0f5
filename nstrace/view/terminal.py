"""The last filter before a terminal: no control character, escape, bidirectional override or
line separator gets through, whatever field or file name it came in.

A module of its own, importing nothing: status lines use it on watch's start-up path, where
the table code (display, tabulate) is not imported.
"""


def printable(text):
    """text as it may go to a terminal: each character str.isprintable() refuses (C0 and C1
    controls, ESC, DEL, bidi overrides, line and paragraph separators, unassigned) as \\xNN,
    \\uNNNN or \\UNNNNNNNN; a byte that was not UTF-8 (a lone surrogate U+DC80..U+DCFF, as
    os.fsdecode() and click keep it) as the \\xNN it was. Cheap when there is nothing to
    escape: one C-level scan."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(ord(c)) for c in text)


def lines(text):
    """Multi-line text with every line made printable (newlines kept)."""
    return "\n".join(printable(line) for line in text.split("\n"))


def _escape(code):
    if code < 0x100:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
