"""What several test modules share: the CPU threads of a test, and running a command line in this process."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TORCH_THREADS = torch.get_num_threads()      # torch's default: one per core


@pytest.fixture(autouse=True)
def cpu_threads(request, monkeypatch):
    """One CPU thread for the tiny tests, torch's default for the slow ones (their larger workloads gain from a second
    core when it is idle), unless OMP_NUM_THREADS says otherwise: on two cores that another process also uses, two
    threads keep waiting for each other (a tiny search test took 15 s instead of 3 s). The command lines run here take
    the same count for --threads 0 (``runs.TORCH_THREADS``); those that tests start as processes keep torch's own.
    After each test torch's default is back, whatever a command's --threads set."""
    import runs
    threads = TORCH_THREADS if request.node.get_closest_marker("slow") or "OMP_NUM_THREADS" in os.environ else 1
    monkeypatch.setattr(runs, "TORCH_THREADS", threads)
    torch.set_num_threads(threads)
    yield
    torch.set_num_threads(TORCH_THREADS)


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
