"""A task's command name: as the kernel keeps it (task->comm) and as nstrace shows it.

A process names itself (prctl PR_SET_NAME, or the file it executes), so its comm is whatever it
chose: bytes that need not be UTF-8 and may hold terminal escapes. nstrace shows it escaped, the
same way everywhere (records, `ls`, session files), and --comm takes names as shown.
"""

COMM_BYTES = 15  # TASK_COMM_LEN (16, include/linux/sched.h, 5.10-7.2) less the NUL


def safe_comm(raw):
    """A comm or path as text that cannot move a terminal's cursor.

    Bytes that are not UTF-8 become \\xNN (NN >= 80); ASCII control characters
    (escape sequences, newlines) become \\xNN (NN < 80), \\n or \\t; other
    non-printable characters (C1 controls, bidi overrides, unassigned) become
    \\uNNNN or \\UNNNNNNNN; a backslash becomes two. What a hostile process
    names itself is shown, never interpreted, and no two names look alike:
    the escaping can be undone exactly. JSON output stays valid UTF-8.
    """
    # surrogateescape keeps each invalid byte as one lone surrogate U+DC80..U+DCFF
    text = raw.decode("utf-8", errors="surrogateescape")
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)


def comm_bytes(shown):
    """The name safe_comm() shows as `shown`, as bytes; None if it shows no name so.

    --comm takes names as nstrace shows them: this tells a name that could
    match from one that never can.
    """
    out, i = bytearray(), 0
    while i < len(shown):
        c = shown[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogatepass")
            i += 1
            continue
        kind = shown[i + 1:i + 2]
        if kind in _UNESCAPED:
            out += _UNESCAPED[kind]
            i += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}.get(kind)
        digits = shown[i + 2:i + 2 + width] if width else ""
        if not width or len(digits) != width or digits.strip("0123456789abcdef") or int(digits, 16) > 0x10FFFF:
            return None
        code = int(digits, 16)
        out += bytes([code]) if kind == "x" else chr(code).encode("utf-8", "surrogatepass")
        i += 2 + width
    raw = bytes(out)
    return raw if safe_comm(raw) == shown else None


_UNESCAPED = {"\\": b"\\", "n": b"\n", "t": b"\t"}


def _escape(c):
    code = ord(c)
    if c == "\\":
        return "\\\\"
    if c == "\n":
        return "\\n"
    if c == "\t":
        return "\\t"
    if code < 0x80:
        return f"\\x{code:02x}"
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"
