"""A record, or a summary, as one line of `watch --json` and `show --json`.

native/batch.c writes the same bytes for the records it formats itself; tests/test_batch.py and
tests/test_json_output.py hold the two writers equal, byte for byte.
"""


def json_value(value, sort_keys=False):
    """Compact JSON (RFC 8259), as native/batch.c writes it: ASCII only (json.dumps escapes every
    control character and all of non-ASCII), and '<', '>', '&' as \\u00XX, so that a line pasted
    into an HTML page cannot end its <script> element. They only ever occur inside strings."""
    # imported at the first line written: a table watch imports this module and writes none
    # (bench: short command); an import already done is a dictionary lookup
    import json
    text = json.dumps(value, separators=(",", ":"), sort_keys=sort_keys)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def json_line(rec):
    """The record as one line of `watch --json` (and `show --json`), without its newline."""
    return json_value(rec.as_dict())


def json_summary(summary):
    return json_value(summary, sort_keys=True)
