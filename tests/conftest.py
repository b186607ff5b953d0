"""What several test modules share: one CPU thread in this process, and running a command line in it."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# The tests that run in this process are tiny: with torch's default of one thread per core, two threads on two
# cores that another process also uses keep waiting for each other (a search test took 15 s instead of 3 s). One
# thread here, unless OMP_NUM_THREADS says otherwise; the command lines and notebooks that tests start as
# processes, larger workloads, keep torch's default.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)

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
