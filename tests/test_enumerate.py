"""Every command line, enumerated: every --help; every numeric flag at 0, -1, nan, inf and a huge value; every output
path empty and a folder; side files with a missing key, a wrong type and a NaN; --resume after each input changed;
--overwrite over a folder holding every kind of file a run writes. In process, through ``runs.cli``, stopped where the
checks end (the data loading, say), so that nothing trains."""
import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import bench
import data as data_mod
import distributed
import evaluate as ev
import nas
import nss
import plots
import runs
import scratch
import search
from space import ExpandedSearchSpace
from supernet import SuperNet, _above
from train import SettingError, check_range

ROOT = Path(__file__).resolve().parents[1]
ESS = ExpandedSearchSpace.reduced()
ARCH = '{"depths": [1, 1, 1], "widths": [4, 4, 4]}'
SPACE = {"depths": [[1, 2], [1, 2], [1, 2]], "widths": [[1, 8], [1, 8], [1, 8]]}
STOP = "STOP: every check passed"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def supernet_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("supernet") / "supernet.pt"
    torch.save({"ess": ESS.to_dict(), "space": ESS.full_space().to_dict(), "state": SuperNet(ESS).state_dict()}, path)
    return str(path)


def base(cls, supernet: str = "", **extra) -> list[str]:
    """The flags of a small run of ``cls`` (those of its flags that it has): synthetic data, the reduced space, the CPU."""
    values = {"dataset": "synthetic", "synthetic_size": 64, "device": "cpu", "progress": False, "threads": 1,
              "d_max": 4, "w_max": 16, "d_step": 2, "w_step": 4, "target": 6e6, "arch": ARCH, "supernet": supernet,
              "batch_size": 16, **extra}
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in getattr(cls, "HIDDEN", ())}
    out = []
    for name, value in values.items():
        if name in fields and value != "":
            out += [runs.flag(name)] if value is True else [f"--no-{runs.flag(name)[2:]}"] if value is False \
                else [runs.flag(name), str(value)]
    return out


# (module, subcommand, settings class): every command line with flags
COMMANDS = [("nss", None, nss.NSSConfig), ("nas", None, nas.NASConfig), ("evaluate", "supernet", ev.SupernetConfig),
            ("evaluate", "score", ev.ScoreConfig), ("evaluate", "scratch", ev.ScratchConfig),
            ("evaluate", "export", ev.ExportConfig), ("evaluate", "rank", ev.RankConfig),
            ("evaluate", "table", ev.TableConfig), ("bench", None, bench.BenchConfig)]
IDS = [f"{m} {s}" if s else m for m, s, _ in COMMANDS]


@pytest.fixture
def stopped(monkeypatch):
    """Every command stops with the line STOP at its first piece of work after the checks."""
    def stop(*args, **kwargs):
        raise runs.RunError(STOP)
    monkeypatch.setattr(data_mod, "load_for", stop)      # nss, nas, supernet, score, scratch, rank
    monkeypatch.setattr(ev, "build", stop)               # export without --supernet
    monkeypatch.setattr(bench, "run", stop)
    monkeypatch.setattr(plots, "table_rows", stop)         # table


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    return lines[0]


# ---- 4. --help of every command and subcommand ---------------------------------------------------

@pytest.mark.parametrize("module, sub", [("nss", None), ("nas", None), ("evaluate", None), ("bench", None),
                                         ("plots", None)] + [("evaluate", s) for s in ev.COMMANDS])
def test_every_help_exits_0(module, sub, cli_here):
    proc = cli_here(module, *([sub] if sub else []), "--help")
    assert proc.returncode == 0 and proc.stderr == "" and "usage" in proc.stdout.lower() + (
        "usage" if module == "evaluate" and sub is None else ""), (proc.returncode, proc.stderr)


# ---- 3. every numeric flag, from its declaration ------------------------------------------------------

EDGES = ["0", "-1", "nan", "inf", "1e300"]


@pytest.mark.parametrize("module, sub, cls", COMMANDS, ids=IDS)
def test_every_numeric_flag_is_refused_in_one_line_or_inside_its_declared_range(module, sub, cls, cli_here, stopped,
                                                                                supernet_file, tmp_path):
    """0, -1, nan, inf and 1e300 for every int and float flag: a one-line refusal naming the flag (exit code 2), or a
    value inside the range declared with the field, which then gets past every check. A numeric setting without a
    declared range fails here."""
    args = base(cls, supernet_file) + (["--runs", str(tmp_path)] if cls is ev.TableConfig else [])
    reference = runs.parse_config(cls, args)
    numeric = [f for f in dataclasses.fields(cls) if f.type in ("int", "float") and f.name not in getattr(cls, "HIDDEN", ())]
    assert numeric or cls is ev.TableConfig
    wrong = []
    for f in numeric:
        for text in EDGES:
            proc = cli_here(module, *([sub] if sub else []), *args, runs.flag(f.name), text)
            line = one_line(proc)
            if STOP not in line:
                if runs.flag(f.name) not in line:
                    wrong.append(f"{runs.flag(f.name)} {text}: refused without naming the flag: {line}")
                continue
            if not f.metadata.get("range"):
                wrong.append(f"{runs.flag(f.name)} {text}: accepted, and the field declares no range")
                continue
            value = runs.integer(text) if f.type == "int" else float(text)
            try:
                check_range(reference, f.name, value, f.metadata["range"], integer=f.type == "int")
            except SettingError:
                wrong.append(f"{runs.flag(f.name)} {text}: accepted outside its range {f.metadata['range']}")
    assert not wrong, "\n".join(wrong)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())      # nothing left behind


@pytest.mark.parametrize("module, sub, cls", COMMANDS, ids=IDS)
def test_every_output_path_is_checked_one_way(module, sub, cls, cli_here, stopped, supernet_file, tmp_path):
    """An empty output path, and a folder where a file (or a file's stem) goes, are one line naming the flag, before
    any work; every command's --out is declared as the path it is. A file or stem whose file already exists is
    refused, the file kept as it was, unless --overwrite (which then gets past every check)."""
    args = base(cls, supernet_file) + (["--runs", str(tmp_path)] if cls is ev.TableConfig else [])
    outputs = [f for f in dataclasses.fields(cls) if f.metadata.get("path", "").startswith("output")
               and f.name not in getattr(cls, "HIDDEN", ())]
    assert [f.name for f in outputs] == ["out"]
    (tmp_path / "folder").mkdir()
    for f in outputs:
        bad = [""] + ([] if f.metadata["path"] == "output folder" else ["folder", "folder/"])
        for value in bad:
            line = one_line(cli_here(module, *([sub] if sub else []), *args, runs.flag(f.name), value))
            assert runs.flag(f.name) in line and STOP not in line, (value, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]
    for f in outputs:
        if f.metadata["path"] == "output folder":
            continue
        for there in runs.written(f, str(tmp_path / "kept")):
            there.write_text("an earlier result")
            line = one_line(cli_here(module, *([sub] if sub else []), *args, runs.flag(f.name), str(tmp_path / "kept")))
            assert f"{there} already exists: pass --overwrite" in line and STOP not in line, line
            assert there.read_text() == "an earlier result"
            line = one_line(cli_here(module, *([sub] if sub else []), *args, runs.flag(f.name), str(tmp_path / "kept"),
                                     "--overwrite"))
            assert STOP in line, line
            there.unlink()


@pytest.mark.parametrize("device", ["meta", "mps", "cuda:99", "nonsense"])
@pytest.mark.parametrize("module, sub", [("nss", None), ("evaluate", "supernet"), ("evaluate", "export"), ("bench", None)])
def test_devices_other_than_cpu_and_cuda_are_one_line(module, sub, device, cli_here, stopped):
    line = one_line(cli_here(module, *([sub] if sub else []), "--device", device, "--arch", ARCH)
                    if sub == "export" else cli_here(module, *([sub] if sub else []), "--device", device))
    assert device in line and STOP not in line


def test_a_batch_the_processes_cannot_share_is_refused_up_front(monkeypatch):
    """Under torchrun each process takes its share of every global batch: a batch smaller than the world is refused
    before any work (the search and the evaluation supernet share batches; from-scratch training shares seeds)."""
    monkeypatch.setattr(distributed, "world", lambda: 4)
    for cls, args in ((nss.NSSConfig, []), (ev.SupernetConfig, [])):
        with pytest.raises(runs.RunError, match="--batch-size 3 is the global batch, which the 4 processes share"):
            runs.parse_config(cls, args + ["--batch-size", "3"])
        runs.parse_config(cls, args + ["--batch-size", "4"])
    runs.parse_config(ev.ScratchConfig, ["--batch-size", "3"])


def test_eps_above_every_option_keeps_the_heaviest_one():
    """--eps 0.6 with 4 equal options: every weight is below ε, and the masked plan still runs the heaviest option of
    every stage (it used to take max() of no option); below 1/K the plan keeps exactly the options above ε."""
    net = SuperNet(ESS)
    g = [torch.full((4,), 0.25)] * 3
    values = [[1, 2, 3, 4]] * 3, [[4, 8, 12, 16]] * 3
    plans = net.masked_plan(g, g, *values, eps=0.6)
    assert [(p.depth, p.width) for p in plans] == [(1, 4)] * 3
    assert net.run(torch.zeros(2, 3, 32, 32), plans).shape == (2, 10)
    skewed = [torch.tensor([0.05, 0.5, 0.3, 0.15])] * 3
    assert _above(skewed, 0.2) == [[False, True, True, False]] * 3
    assert _above(skewed, 0.6) == [[False, True, False, False]] * 3


# ---- 1. --resume compares settings, input files and data --------------------------------------------

def identity_only_checkpoint(cfg, run_dir: Path):
    """A checkpoint.pt holding nothing but the identity of ``cfg``'s run: a resume under that identity gets past the
    identity check and stops at the state it lacks ("does not fit this run"); another identity is refused first."""
    data = data_mod.load_for(cfg, cfg.ess_for(), CPU)
    run_dir.mkdir(parents=True)
    torch.save({"identity": runs.identity(cfg, data_mod.fingerprint(data), CPU)}, run_dir / "checkpoint.pt")


@pytest.mark.parametrize("module, sub, cls", [("nas", None, nas.NASConfig), ("evaluate", "supernet", ev.SupernetConfig)],
                         ids=["nas", "evaluate supernet"])
def test_resume_refuses_a_space_file_edited_since(module, sub, cls, cli_here, tmp_path):
    space = tmp_path / "sp.json"
    space.write_text(json.dumps(SPACE))
    args = base(cls, epochs=2, warmup_epochs=0, target=1e6, out=tmp_path / "runs", name="r") + ["--space", str(space)]
    identity_only_checkpoint(runs.parse_config(cls, args), tmp_path / "runs" / "r")
    sub = [sub] if sub else []
    assert "does not fit this run" in one_line(cli_here(module, *sub, *args, "--resume"))      # the same file
    space.write_text(json.dumps({**SPACE, "depths": [[2, 3], [1, 2], [1, 2]]}))         # as many options, others
    line = one_line(cli_here(module, *sub, *args, "--resume"))
    assert f"another --space {space}: the file has changed since" in line and "--overwrite" in line, line
    line = one_line(cli_here(module, *sub, *args, "--resume", "--lr", "0.5"))     # a setting first, by its flag
    assert "other settings (--lr" in line


def scratch_resume(cli_here, tmp_path, monkeypatch, arch: str, runs_done: list, **settings):
    """``evaluate.py scratch`` resumed from a scratch.json of ``runs_done`` under the identity of ``settings``."""
    args = base(ev.ScratchConfig, recipe="fast", epochs=1, seeds=3, out=tmp_path, name="s", **settings) + ["--arch", arch]
    cfg = runs.parse_config(ev.ScratchConfig, args)
    mine = runs.identity(cfg, data_mod.fingerprint(data_mod.load_for(cfg, cfg.ess_for(), CPU)), CPU)
    identity = json.loads(json.dumps(mine)) | {"arch": json.loads(ARCH)}
    (tmp_path / "s").mkdir(exist_ok=True)
    (tmp_path / "s" / "scratch.json").write_text(json.dumps({"runs": runs_done, "identity": identity}))
    trained = []

    def train(arch, ess, data, cfg, seed):
        trained.append(seed)
        raise runs.RunError(STOP)
    monkeypatch.setattr(scratch, "train_from_scratch", train)
    return args, trained


def test_scratch_resume_refuses_other_settings_an_edited_arch_file_and_changed_seed_files(cli_here, tmp_path,
                                                                                          monkeypatch):
    arch = tmp_path / "arch.json"
    arch.write_text(ARCH)
    (tmp_path / "s").mkdir()
    torch.save({"w": 1}, tmp_path / "s" / "seed0.pt")
    done = [{"seed": 0, "error": 50.0, "weights": "seed0.pt", "sha256": runs.sha256(tmp_path / "s" / "seed0.pt")}]
    args, trained = scratch_resume(cli_here, tmp_path, monkeypatch, str(arch), done)
    assert STOP in one_line(cli_here("evaluate", "scratch", *args, "--resume")) and trained == [1]   # seed 1 next
    for flags, message in ((["--lr", "0.3"], "other settings (--lr 0.4 → 0.3)"),
                           (["--batch-size", "8"], "other settings (--batch-size 16 → 8)")):
        line = one_line(cli_here("evaluate", "scratch", *args, "--resume", *flags))
        assert message in line, line
    arch.write_text(json.dumps({"arch": json.loads(ARCH), "note": "the same network, another file"}))
    assert f"another --arch {arch}: the file has changed since" in one_line(
        cli_here("evaluate", "scratch", *args, "--resume"))
    arch.write_text(ARCH)
    torch.save({"w": 2}, tmp_path / "s" / "seed0.pt")
    assert "seed0.pt, the network of seed 0" in one_line(cli_here("evaluate", "scratch", *args, "--resume"))
    (tmp_path / "s" / "seed0.pt").unlink()
    line = one_line(cli_here("evaluate", "scratch", *args, "--resume"))
    assert "seed0.pt, the network of seed 0" in line and "no such file" in line
    assert trained == [1]


@pytest.mark.parametrize("runs_done", [
    "abc", [{"seed": 0, "weights": "seed0.pt"}], [{"seed": 0, "error": "x", "weights": "seed0.pt"}],
    [{"seed": 0, "error": float("nan"), "weights": "seed0.pt"}], [{"seed": 0, "error": -3.0, "weights": "seed0.pt"}],
    [{"seed": 5, "error": 50.0, "weights": "seed0.pt"}], ["a run"]],
    ids=["runs-abc", "no-error", "error-str", "error-nan", "error-negative", "another-seed", "run-str"])
def test_a_damaged_scratch_json_is_one_line_on_resume(runs_done, cli_here, tmp_path, monkeypatch):
    args, trained = scratch_resume(cli_here, tmp_path, monkeypatch, ARCH, runs_done)
    line = one_line(cli_here("evaluate", "scratch", *args, "--resume"))
    assert "scratch.json is corrupt" in line and "--overwrite" in line and trained == []


def test_a_scratch_json_of_the_wrong_shape_is_one_line(cli_here, tmp_path, monkeypatch):
    args, _ = scratch_resume(cli_here, tmp_path, monkeypatch, ARCH, [])
    path = tmp_path / "s" / "scratch.json"
    for text in ('{"runs": [], "identity": "x"}', '{"identity": {}}', "[1, 2]", '{"runs": [], "identity": NaN}'):
        path.write_text(text)
        assert "scratch.json is corrupt" in one_line(cli_here("evaluate", "scratch", *args, "--resume")), text


def test_several_targets_in_one_folder_name_are_refused_before_any_work(cli_here, tmp_path):
    line = one_line(cli_here("nss", *base(nss.NSSConfig), "--target", "6e6,6.001e6", "--resume"))
    assert "share a run folder name" in line and not (tmp_path / "runs").exists()


# ---- 5. side files read whole inside their guard --------------------------------------------------------

@pytest.mark.parametrize("state", [{"ess": {**ESS.to_dict(), "d_max": 0}}, {"ess": "x", "state": {}},
                                   {"ess": ESS.to_dict()}, {"ess": {**ESS.to_dict(), "w_max": float("nan")}}],
                         ids=["bad-value", "wrong-type", "missing-key", "nan"])
def test_a_damaged_supernet_file_is_one_line(state, cli_here, tmp_path):
    torch.save(state, tmp_path / "supernet.pt")
    line = one_line(cli_here("evaluate", "score", "--supernet", "supernet.pt", "--device", "cpu"))
    assert "supernet.pt is not a supernet written by evaluate.py" in line


@pytest.mark.parametrize("damage", [{"epoch": "x"}, {"step": -1}, {"history": [1.5]}, {"theta": None}, {"gen": "x"},
                                    {"data_gen": [1]}],
                         ids=["epoch-str", "step-negative", "history-of-numbers", "theta-none", "gen-str", "data-gen-list"])
def test_a_damaged_checkpoint_is_one_line(damage, cli_here, tmp_path):
    """A checkpoint of this very run (its identity matches) with one part damaged: one line, not a traceback when
    the first epoch uses it."""
    args = base(nss.NSSConfig, epochs=2, warmup_epochs=0, out=tmp_path / "runs", name="r")
    cfg = runs.parse_config(nss.NSSConfig, args)
    identity_only_checkpoint(cfg, tmp_path / "runs" / "r")
    searcher = search.Searcher(cfg.part(search.SearchSettings), ESS, nss.Options.nss(ESS), device=CPU)
    state = torch.load(tmp_path / "runs" / "r" / "checkpoint.pt", weights_only=True) | searcher.state_dict() | {
        "data_gen": torch.Generator().get_state()} | damage
    torch.save(state, tmp_path / "runs" / "r" / "checkpoint.pt")
    assert "does not fit this run" in one_line(cli_here("nss", *args, "--resume"))


@pytest.mark.parametrize("field, value", [("flops", float("nan")), ("samples", -3), ("deviation", float("inf")),
                                          ("target", None), ("target", -1e6)])
def test_table1_skips_nan_negative_and_missing_values_with_one_warning(field, value, tmp_path, capsys):
    good = {"dataset": "synthetic", "target": 4e6, "space_source": "full", "flops": 4.1e6, "deviation": 0.025,
            "samples": 7}
    for name, r in (("good", good), ("bad", {**good, "target": 9e6, field: value})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "nas.json").write_text(json.dumps({k: v for k, v in r.items() if v is not None}))
    (tmp_path / "good" / "scratch").mkdir()
    (tmp_path / "good" / "scratch" / "scratch.json").write_text('{"mean": NaN}')
    rows = plots.table_rows(tmp_path)
    assert [r["target"] for r in rows] == [4e6] and rows[0]["full"]["error"] is None
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 2 and any("bad/nas.json" in w and field in w for w in warnings), warnings
    assert any("scratch.json" in w and "mean" in w for w in warnings)


def test_a_png_that_trips_the_decompression_bomb_check_is_one_line(tmp_path, monkeypatch):
    from PIL import Image
    for split in ("train", "test"):
        for k, name in enumerate(("a", "b")):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (32, 32), (40 * k,) * 3).save(tmp_path / split / name / "0.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)       # 32×32 is over twice that: DecompressionBombError
    with pytest.raises(data_mod.DataError, match="cannot decode .*0.png \\(DecompressionBombError") as e:
        data_mod.load("folder", tmp_path)
    assert "\n" not in str(e.value)


def test_corrupt_cifar_files_are_called_corrupt(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"half a pickle")
    with pytest.raises(data_mod.DataError, match="cifar10 in .* is corrupt: data_batch_1 fails its checksum") as e:
        data_mod.load("cifar10", tmp_path, download=False)
    assert "could not be downloaded" not in str(e.value) and "\n" not in str(e.value)


def test_an_ascii_terminal_gets_every_line(monkeypatch):
    """stdout and stderr that cannot encode Δ or → still get the line, escaped (cli reconfigures them)."""
    out, err = io.BytesIO(), io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(out, encoding="ascii"))
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(err, encoding="ascii"))
    monkeypatch.setattr(sys, "argv", ["nss.py"])

    def main(argv):
        print("FLOPs 1.57GF (|Δ| 1.9% to the target)")
        raise runs.RunError("--lr 0.4 → 0.3")
    with pytest.raises(SystemExit) as stop:
        runs.cli(main)
    sys.stdout.flush(), sys.stderr.flush()
    assert stop.value.code == 2
    assert out.getvalue() == b"FLOPs 1.57GF (|\\u0394| 1.9% to the target)\n"
    assert err.getvalue() == b"nss.py: error: --lr 0.4 \\u2192 0.3\n"


# ---- 6. sampling that cannot succeed --------------------------------------------------------------------

def test_an_ordering_no_architecture_obeys_is_refused_before_any_draw(cli_here, tmp_path, supernet_file):
    (tmp_path / "bad.json").write_text(json.dumps({**SPACE, "depths": [[3, 4], [1, 2], [1, 2]]}))
    line = one_line(cli_here("evaluate", "score", "--supernet", supernet_file, "--spaces", "bad.json",
                             "--ordering", "regnet", "--device", "cpu"))
    assert "obeys the regnet ordering (d1 ≤ d2 ≤ d3" in line and not (tmp_path / "runs").exists()


def test_a_band_no_architecture_hits_stops_after_a_bounded_number_of_draws(cli_here, tmp_path, supernet_file,
                                                                            monkeypatch):
    """A FLOPs band inside the space's range that no architecture hits (FLOPs are whole numbers)."""
    monkeypatch.setattr(ev, "MAX_DRAWS", 50_000)
    line = one_line(cli_here("evaluate", "score", "--supernet", supernet_file, "--flops-min", "4000000.25",
                             "--flops-max", "4000000.75", "--device", "cpu", "--dataset", "synthetic",
                             "--synthetic-size", "64", "--n", "3"))
    assert "only 0 of 3 architectures" in line and "--flops-min" in line and "50,000 draws" in line, line
    assert not (tmp_path / "runs").exists()


@pytest.mark.filterwarnings("ignore:An input array is constant")
def test_rank_needs_k_distinct_architectures_and_says_when_its_statistics_are_undefined(cli_here, tmp_path,
                                                                                        supernet_file, monkeypatch):
    assert "--k must be at least 3" in one_line(cli_here("evaluate", "rank", "--supernet", supernet_file, "--k", "1"))
    (tmp_path / "two.json").write_text(json.dumps({"depths": [[1, 1]] * 3, "widths": [[1, 2], [1, 1], [1, 1]]}))
    line = one_line(cli_here("evaluate", "rank", "--supernet", supernet_file, "--space", "two.json", "--k", "3",
                             "--dataset", "synthetic", "--synthetic-size", "64", "--device", "cpu"))
    assert "--k 3 is more than the 2 architectures" in line
    monkeypatch.setattr(ev, "run_rank", lambda cfg: {"archs": [{}] * 3, "scratch_errors": [90.0] * 3,
                                                     "supernet_errors": [80.0, 85.0, 90.0], "run_dir": "r",
                                                     **plots.rank_agreement([80.0, 85.0, 90.0], [90.0] * 3)})
    summary = ev.rank_summary(None)
    assert "undefined: the from-scratch errors of the 3 architectures are all 90.00%" in summary and "nan" not in summary


# ---- 7. messages that point the right way ---------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_after_a_shared_warmup_says_resume_and_resume_works(cli_here, tmp_path, monkeypatch):
    """The warmup folder holds a run once the warmup is done, so "rerun the same command" would be refused: the line
    says --resume, and --resume goes on."""
    args = base(nss.NSSConfig, epochs=2, warmup_epochs=1, synthetic_size=64, batch_size=32) + ["--target", "5e6,8e6"]

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt
    with monkeypatch.context() as m:
        m.setattr(search.Searcher, "theta_step", ctrl_c)       # in the first target's first search step
        proc = cli_here("nss", *args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 130 and len(lines) == 1 and "shared warmup" in lines[0] and "--resume" in lines[0]
    assert "already holds a run" in one_line(cli_here("nss", *args))
    proc = cli_here("nss", *args, "--resume")
    assert proc.returncode == 0 and proc.stdout.count("Elite Space for") == 2, proc.stderr


def test_resume_from_a_fifo_says_it_is_not_a_regular_file(cli_here, tmp_path):
    (tmp_path / "runs" / "f").mkdir(parents=True)
    os.mkfifo(tmp_path / "runs" / "f" / "checkpoint.pt")
    line = one_line(cli_here("nss", *base(nss.NSSConfig), "--name", "f", "--resume"))
    assert "checkpoint.pt is not a regular file" in line and "does not exist" not in line


@pytest.mark.parametrize("args", [["--quick", "--out", "X"], ["--out", "X", "--quick"], ["--seed", "3", "scratch"]])
def test_evaluate_flags_before_a_command_are_named_as_such(args, cli_here):
    line = one_line(cli_here("evaluate", *args))
    assert "unknown command" not in line
    assert ("notebooks" in line) if "--quick" in args else "give the command first" in line


# ---- 2. --overwrite empties the folder -------------------------------------------------------------------

EVERY_KIND = ["checkpoint.pt", "config.json", "metrics.jsonl", "result.json", "nas.json", "train.json", "supernet.pt",
              "scores.json", "scratch.json", "seed0.pt", "seed12.pt", "rank.json", "rank.png", "rank.pdf", "bench.json",
              ".checkpoint.pt.123.tmp", ".quick", "evalnet/checkpoint.pt", "scratch/scratch.json", "scratch/seed0.pt"]


@pytest.mark.parametrize("module, sub, cls", [c for c in COMMANDS if issubclass(c[2], runs.RunSettings)
                                              and c[2] is not ev.ExportConfig], ids=[
    i for i, c in zip(IDS, COMMANDS) if issubclass(c[2], runs.RunSettings) and c[2] is not ev.ExportConfig])
def test_overwrite_empties_a_folder_holding_every_kind_of_file(module, sub, cls, cli_here, supernet_file, tmp_path,
                                                               monkeypatch):
    run_dir = tmp_path / "runs" / "x"
    for name in EVERY_KIND:
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_text("left by an earlier run")
    (tmp_path / "outside.txt").write_text("not the run's")
    (run_dir / "link").symlink_to(tmp_path / "outside.txt")
    (run_dir / "linked-folder").symlink_to(tmp_path)
    os.mkfifo(run_dir / "fifo")
    seen = []

    def stop(*args, **kwargs):
        seen.append(sorted(p.name for p in run_dir.iterdir()))
        raise runs.RunError(STOP)
    monkeypatch.setattr(data_mod, "load_for", stop)
    sub = [sub] if sub else []
    assert "already holds a run" in one_line(cli_here(module, *sub, *base(cls, supernet_file), "--name", "x"))
    assert STOP in one_line(cli_here(module, *sub, *base(cls, supernet_file), "--name", "x", "--overwrite"))
    assert seen == [[".lock"]] and sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    assert (tmp_path / "outside.txt").read_text() == "not the run's"          # a link is removed, not followed


# ---- start-up -------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("script", ["nss.py", "nas.py", "evaluate.py", "bench.py"])
def test_ctrl_c_while_torch_loads_is_one_line(script, tmp_path):
    proc = subprocess.Popen([sys.executable, str(ROOT / script), "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60         # inside the script's imports: once torch's libraries are being mapped
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError):
            if "torch" in Path(f"/proc/{proc.pid}/maps").read_text():
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the imports finished before the signal came")
    assert proc.returncode == 130 and err.strip().splitlines() == [
        f"{script}: interrupted while starting; nothing was written"], err
