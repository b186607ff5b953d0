"""Ctrl-C while a command line starts, before its imports (torch most of all, seconds) have loaded: one line on
stderr and exit code 130, no traceback. Each entry script calls ``guard()`` first; ``runs.cli`` puts Python's own
handler back once the run starts. Standard library only, so that it loads at once."""
import os
import signal
import sys


def _interrupted(*_):
    sys.stderr.write(f"{os.path.basename(sys.argv[0])}: interrupted while starting; nothing was written\n")
    sys.stderr.flush()
    os._exit(130)


def guard():
    signal.signal(signal.SIGINT, _interrupted)
