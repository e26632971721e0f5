"""How the lab reports progress: status lines ("6.1: booted in 3.6 s", a download's size and how far
it got), one str per call, to whatever the caller passes (the CLI prints them on stderr)."""

from typing import Callable

Status = Callable[[str], None]


def quiet(_message: str) -> None:
    """The default where nobody asked: report nothing."""
