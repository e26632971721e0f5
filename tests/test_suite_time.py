"""No test may depend on how long the suite has run: a fresh machine's first lab downloads can make
the same suite run many minutes longer than a warm machine's."""


def test_session_holder_sleeps_until_the_session_ends(ns_holder):
    """The session-wide namespace holder is not on a timer: with `sleep 600` every setns test after
    the tenth minute of a fresh machine's run found it gone."""
    with open(f"/proc/{ns_holder}/cmdline", "rb") as f:
        argv = f.read().rstrip(b"\0").split(b"\0")
    assert argv == [b"sleep", b"infinity"], argv
