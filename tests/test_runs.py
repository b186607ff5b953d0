"""runs.py and rundir.py: exclusive run folders, --overwrite, Ctrl-C, file-system faults, impossible requests and
one-line errors with their exit codes."""
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import data as data_mod
import evaluate as ev
import nas
import nss
import runs
import search
from space import REDUCED, ExpandedSearchSpace, FileError, Space
from supernet import SuperNet

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dataset="synthetic", synthetic_size=128, **REDUCED, target=6e6, batch_size=32, progress=False,
            epochs=1, warmup_epochs=0)      # two steps: these tests are about the files around the run


def tiny_cfg(tmp_path, **kw):
    return nss.NSSConfig(**{**TINY, "out": str(tmp_path), **kw})


class Kill(Exception):
    pass


def cli_outcome(main, capsys) -> tuple[int, list[str]]:
    """Exit code and stderr lines of ``runs.cli(main)``, in process."""
    with pytest.raises(SystemExit) as e:
        runs.cli(main)
    return e.value.code, capsys.readouterr().err.strip().splitlines()


# ---- 2. a run holds its folder exclusively -------------------------------------------------------

def test_a_second_run_on_a_held_folder_is_refused_and_the_first_completes_intact(tmp_path):
    refused = []

    def start_a_second_run(searcher, record):
        if record["epoch"] == 1:
            with pytest.raises(runs.RunError, match="in use by another run") as e:
                nss.run(tiny_cfg(tmp_path, name="shared", lam=2.0))
            refused.append(str(e.value))
    first = nss.run(tiny_cfg(tmp_path, name="shared", epochs=2), callback=start_a_second_run)
    assert len(refused) == 1 and "\n" not in refused[0] and f"pid {os.getpid()}" in refused[0]
    run_dir = tmp_path / "shared"
    assert json.loads((run_dir / "config.json").read_text())["config"]["lam"] == 1.0     # the first run's
    assert json.loads((run_dir / "result.json").read_text())["elite_space"] == first["elite_space"]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoint.pt", "config.json", "metrics.jsonl",
                                                         "result.json"]


@pytest.mark.slow
def test_cli_refuses_a_folder_another_process_holds(tmp_path):
    import fcntl
    run_dir = tmp_path / "runs" / "nss-quick"
    run_dir.mkdir(parents=True)
    with open(run_dir / ".lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        proc = subprocess.run([sys.executable, str(ROOT / "nss.py"), "--quick"], capture_output=True, text=True,
                              cwd=tmp_path, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "in use by another run" in lines[0], proc.stderr
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


# ---- 3. --overwrite first removes the old run ------------------------------------------------------

def test_overwrite_removes_the_old_run_before_writing(tmp_path):
    nss.run(tiny_cfg(tmp_path, name="a"))
    (tmp_path / "a" / ".checkpoint.pt.tmp").write_bytes(b"left by a killed run")

    def die_after_epoch_1(searcher, record):
        assert not (tmp_path / "a" / "result.json").exists()      # gone before the new run writes anything
        raise Kill
    with pytest.raises(Kill):
        nss.run(tiny_cfg(tmp_path, name="a", overwrite=True, lam=2.0), callback=die_after_epoch_1)
    run_dir = tmp_path / "a"
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "checkpoint.pt", "config.json", "metrics.jsonl"]
    assert json.loads((run_dir / "config.json").read_text())["config"]["lam"] == 2.0
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["config"]["lam"] == 2.0
    with pytest.raises(FileError, match="cannot read the space file"):    # no stale Elite Space to use
        Space.read(str(run_dir / "result.json"), ExpandedSearchSpace.reduced())


# ---- 4. file-system faults are one line --------------------------------------------------------------

def test_a_failed_atomic_write_removes_its_temporary_file(tmp_path):
    def half_then_full(p):
        p.write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    (tmp_path / "checkpoint.pt").write_bytes(b"the last good one")
    with pytest.raises(runs.RunError, match="cannot write .*checkpoint.pt: No space left on device") as e:
        runs.write_atomic(tmp_path / "checkpoint.pt", half_then_full)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"the last good one"


def test_a_checkpoint_that_does_not_fit_on_disk_is_one_line(tmp_path):
    """A real short write from torch.save (the file-size limit stands in for a full disk)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, hard))
    try:
        with pytest.raises(runs.RunError, match="cannot write .*checkpoint.pt: File too large"):
            runs.write_atomic(tmp_path / "checkpoint.pt", lambda p: runs.save_torch({"w": torch.zeros(100_000)}, p))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert list(tmp_path.iterdir()) == []


def test_an_out_that_is_a_file_is_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(runs.RunError, match="cannot create the run folder .*Not a directory"):
        nss.run(tiny_cfg(tmp_path / "afile"))


def test_cli_reports_an_os_error_in_one_line(capsys):
    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/config.json")
    code, lines = cli_outcome(main, capsys)
    assert code == 2 and len(lines) == 1 and lines[0].endswith("error: runs/x/config.json: No space left on device: "
                                                               "free some space"), lines


def unprivileged(fn):
    """``fn()`` without root's right to ignore file permissions: in a forked child that drops to nobody when we
    are root. Returns what it returns, or the exception's (type name, message)."""
    if os.geteuid() != 0:
        try:
            return fn()
        except Exception as e:
            return type(e).__name__, str(e)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:     # the child: never returns into pytest
        try:
            signal.alarm(60)      # a child stuck (say, in a thread pool forked mid-use) dies instead
            try:
                os.setuid(65534)
            except OSError:
                os.write(write, b'"cannot drop root"')
                os._exit(0)
            try:
                out = fn()
            except Exception as e:
                out = (type(e).__name__, str(e))
            os.write(write, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        text = f.read()
    os.waitpid(pid, 0)
    if not text:
        pytest.fail("the unprivileged child died or hung")
    out = json.loads(text)
    if out == "cannot drop root":
        pytest.skip("cannot drop root's file permissions here")
    return tuple(out) if isinstance(out, list) else out


def test_unwritable_out_and_unreadable_class_folders_are_one_line():
    from PIL import Image     # imported before the child drops root
    root = Path(tempfile.mkdtemp())
    try:
        root.chmod(0o777)
        (root / "readonly").mkdir(mode=0o555)
        (root / "readonly").chmod(0o555)
        for split in ("train", "test"):
            for k, name in enumerate(("a", "b")):
                (root / "images" / split / name).mkdir(parents=True)
                Image.new("RGB", (32, 32), (40 * k,) * 3).save(root / "images" / split / name / "0.png")
        for p in [root / "images", *(root / "images").rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o666)
        (root / "images" / "train" / "b").chmod(0o000)
        cfg = tiny_cfg(root / "readonly", name="x")
        out = unprivileged(lambda: str(nss.run(cfg)))
        assert out[0] == "RunError" and "cannot create the run folder" in out[1] and "Permission denied" in out[1]
        out = unprivileged(lambda: str(runs.write_json(root / "readonly" / "x.json", {})))
        assert out[0] == "RunError" and "Permission denied" in out[1]
        out = unprivileged(lambda: str(data_mod.load("folder", root / "images")))
        assert out[0] == "DataError" and "cannot read the class folder" in out[1] and "Permission denied" in out[1]
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(0o777) if p.is_dir() else None
        shutil.rmtree(root)


# ---- 5. Ctrl-C says the right thing and leaves no trap -------------------------------------------

def test_ctrl_c_before_the_first_checkpoint_leaves_a_clean_folder(tmp_path, monkeypatch):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(search.Searcher, "fit", interrupted)
        with pytest.raises(KeyboardInterrupt) as e:
            nss.run(tiny_cfg(tmp_path, name="early"))
    assert "--resume" not in str(e.value) and "rerun the same command" in str(e.value)
    assert not (tmp_path / "early").exists()
    nss.run(tiny_cfg(tmp_path, name="early"))      # a plain rerun is not told the folder "already holds a run"
    assert (tmp_path / "early" / "result.json").exists()


def test_ctrl_c_after_a_checkpoint_says_resume(tmp_path, capsys):
    def ctrl_c(searcher, record):
        raise KeyboardInterrupt
    code, lines = cli_outcome(lambda argv: nss.run(tiny_cfg(tmp_path, name="late"), callback=ctrl_c), capsys)
    assert code == 130 and len(lines) == 1 and "--resume" in lines[0] and "checkpoint.pt" in lines[0]
    assert (tmp_path / "late" / "checkpoint.pt").exists()


def test_a_run_killed_before_its_first_checkpoint_does_not_trap_the_next(tmp_path):
    run_dir = tmp_path / "killed"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")      # what SIGKILL during the first epoch leaves
    (run_dir / ".checkpoint.pt.123.tmp").write_bytes(b"partial")
    nss.run(tiny_cfg(tmp_path, name="killed"))
    assert not list(run_dir.glob(".*.tmp")) and json.loads((run_dir / "config.json").read_text())["config"]


# ---- 7. impossible requests fail up front ---------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--w-max", "100000"], "--w-max must be at least 1 and at most 4096"),
    (["--synthetic-size", "1e9", "--dataset", "synthetic"], "--synthetic-size must be at least 20 and at most 1e6, got 1000000000"),
    (["--flops-samples", "1000000000"], "--flops-samples must be at least 1 and at most 4096"),
    (["--n-samples", "1e12"], "--n-samples must be at least 1 and at most 1e6"),
    (["--seed", str(2 ** 70)], "--seed must be at least 0 and at most"),
    (["--seed", "-3"], "--seed must be at least 0 and at most"),
    (["--target", "-1e6"], "--target must be a finite positive number"),
    (["--lr", "-1e-3"], "--lr must be a finite positive number"),
    (["--synthetic-size", "5", "--dataset", "synthetic"], "--synthetic-size must be at least 20"),
])
def test_impossible_settings_are_refused_before_any_work(args, message):
    with pytest.raises(runs.RunError, match=message) as e:
        runs.parse_config(nss.NSSConfig, args)
    assert "\n" not in str(e.value)


def test_a_flops_band_no_architecture_reaches_is_refused_up_front(tmp_path):
    ess = ExpandedSearchSpace.reduced()
    torch.save({"ess": ess.to_dict(), "space": ess.full_space().to_dict(), "state": SuperNet(ess).state_dict()},
               tmp_path / "supernet.pt")
    common = ["--supernet", str(tmp_path / "supernet.pt"), "--dataset", "synthetic", "--out", str(tmp_path)]
    with pytest.raises(runs.RunError, match="--flops-min 2e\\+06 is above --flops-max 1e\\+06"):
        runs.parse_config(ev.ScoreConfig, common + ["--flops-min", "2e6", "--flops-max", "1e6"])
    cfg = runs.parse_config(ev.ScoreConfig, common + ["--flops-min", "1e12"])
    with pytest.raises(runs.RunError, match="no architecture of full has 1e\\+12 to inf FLOPs"):
        ev.run_score(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["supernet.pt"]


# ---- 10. messages say what is wrong -----------------------------------------------------------------

def test_a_checkpoint_of_another_program_is_named_as_such(tmp_path):
    cpu = torch.device("cpu")
    mine = runs.identity(tiny_cfg(tmp_path), {"classes": 10}, cpu)
    theirs = runs.identity(nas.NASConfig(**TINY, out=str(tmp_path)), {"classes": 10}, cpu)
    with pytest.raises(runs.RunError, match="written by another program \\(NASConfig, not NSSConfig\\)"):
        runs.check_identity(mine, theirs)
    for foreign in (None, {"config": {}}, "a string"):       # no identity, another one's, not a dict
        with pytest.raises(runs.RunError, match="not one of this program's"):
            runs.check_identity(mine, foreign)


def test_a_missing_supernet_is_not_called_corrupt(tmp_path):
    with pytest.raises(runs.RunError, match="cannot read the checkpoint .*missing.pt: no such file") as e:
        ev.load_supernet(tmp_path / "missing.pt")
    assert "corrupt" not in str(e.value)


@pytest.mark.slow
@pytest.mark.parametrize("args, code, message", [
    (["--lr", "1e30"], 3, "training diverged"),
    (["--target", "-1e6"], 2, "--target must be a finite positive number, got -1000000.0"),
    (["--synthetic-size", "5"], 2, "--synthetic-size must be at least 20"),
    (["--w-max", "100000"], 2, "--w-max must be at least 1 and at most 4096"),
    (["--out", "afile"], 2, "Not a directory"),
])
def test_cli_failures_are_one_line_with_their_exit_code(tmp_path, args, code, message, cli_here):
    (tmp_path / "afile").write_text("")
    small = ["--synthetic-size", "256", "--batch-size", "32", "--epochs", "3", "--warmup-epochs", "1"]
    proc = cli_here("nss", "--quick", "--no-progress", *small, *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_reuse_continues_this_very_run_and_replaces_another(tmp_path):
    """--reuse (what the notebooks pass): a finished run of the same identity is continued (nothing is trained
    again, the same result comes back); a run of other settings in the folder is replaced, not mixed in."""
    first = nss.run(tiny_cfg(tmp_path, name="r", epochs=2))
    trained = []
    again = nss.run(tiny_cfg(tmp_path, name="r", epochs=2, reuse=True), callback=lambda s, r: trained.append(r))
    assert trained == [] and again["elite_space"] == first["elite_space"] and again["probs"] == first["probs"]
    (tmp_path / "r" / "stray.txt").write_text("left by the first run")
    other = nss.run(tiny_cfg(tmp_path, name="r", epochs=2, lam=2.0, reuse=True), callback=lambda s, r: trained.append(r))
    assert len(trained) == 2 and not (tmp_path / "r" / "stray.txt").exists()
    assert torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)["config"]["lam"] == 2.0
    assert other["history"] != first["history"]
    with pytest.raises(runs.RunError, match="exclude each other"):
        runs.parse_config(nss.NSSConfig, ["--reuse", "--overwrite"])
