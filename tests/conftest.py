"""What several test modules share: one CPU thread by default, and running a command line in this process."""
import importlib
import os

# The tests' workloads are tiny: with torch's default of one thread per core, two threads on two cores that
# another process also uses keep waiting for each other (a search test took 15 s instead of 3 s). One thread,
# unless the caller chose a number; set before torch loads, and inherited by the command lines the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli_here(tmp_path, monkeypatch, capsys):
    """``cli_here("nss", *args)``: the command line ``python nss.py args…`` run in this process, in tmp_path,
    through the same ``runs.cli`` wrapper (exit code, one-line errors); a CompletedProcess. In-process runs
    skip a second interpreter's start-up (seconds each), for the many bad-input cases."""
    import runs

    def run(module: str, *args: str) -> subprocess.CompletedProcess:
        main = importlib.import_module(module).main
        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(sys, "argv", [str(ROOT / f"{module}.py"), *args])
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            runs.cli(main)
        out = capsys.readouterr()
        code = stop.value.code
        return subprocess.CompletedProcess(sys.argv, 0 if code is None else code, out.out, out.err)
    return run
