"""The nstrace command: `nstrace` (the console script) and `python -m nstrace`."""

import gc
import sys


def main():
    # Start-up allocates thousands of objects that live as long as the process (modules,
    # classes, click's option tables); collecting them for cycles meanwhile is wasted work
    # (bench: start-up). Collection resumes once the command line is imported.
    gc.disable()
    # First of all, before click and the rest of nstrace are imported: watch starts loading its
    # BPF object in a thread meanwhile (nstrace/bpf/preload.py).
    from .bpf import preload
    preload.begin(sys.argv[1:])
    try:
        try:
            from .cli.main import main as cli_main
        finally:
            gc.enable()
        return cli_main()
    finally:
        preload.discard()


if __name__ == "__main__":
    sys.exit(main())
