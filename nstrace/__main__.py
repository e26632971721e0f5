"""The nstrace command: `nstrace` (the console script) and `python -m nstrace`."""

import sys


def main():
    # First of all, before click and the rest of nstrace are imported: watch starts loading its
    # BPF object in a thread meanwhile (nstrace/preload.py).
    from . import preload
    preload.begin(sys.argv[1:])
    try:
        from .cli import main as cli_main
        return cli_main()
    finally:
        preload.discard()


if __name__ == "__main__":
    sys.exit(main())
