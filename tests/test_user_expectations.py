"""What a user meets first: the licence and citation, a log to tail, the plan and time estimate of a run, --quick
demos that rerun, the offline data message, --config, the exported program and render.py's progress."""
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import torch

import data as data_mod
import evaluate as ev
import nss
import rundir
import runs
import scratch
from search import SearchSettings, Searcher
from space import REDUCED, Arch, ExpandedSearchSpace, Options

ROOT = Path(__file__).resolve().parents[1]
# a search of one step per epoch: 64 synthetic images, 32 a half, batch 32
TINY = ["--quick", "--epochs", "2", "--warmup-epochs", "1", "--synthetic-size", "64", "--batch-size", "32",
        "--no-progress"]
TIMINGS = ("seconds", "wall_seconds", "run_dir")


def without_timings(result: dict) -> dict:
    history = [{k: v for k, v in h.items() if k != "seconds"} for h in result["history"]]
    return {k: v for k, v in result.items() if k not in TIMINGS} | {"history": history}


# ---- 1. licence, citation, references ----------------------------------------------------------------

def test_mit_licence_and_a_citation_of_the_paper_and_of_this_software():
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "Copyright (c) 2026 The NSS reference implementation authors" in licence
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^cff-version: 1\.2\.0$", cff, re.M) and re.search(r"^type: software$", cff, re.M)
    assert re.search(r'^  - name: "The NSS reference implementation authors"$', cff, re.M)
    paper = cff.split("\npreferred-citation:\n")[1]
    assert 'title: "Network Space Search for Pareto-Efficient Spaces"' in paper and "2104.11014" in paper
    assert "CVPR 2021 Workshops" in paper and "year: 2021" in paper
    authors = re.findall(r"- family-names: (\S+)\n\s+given-names: (\S+)", paper)
    assert [f"{given} {family}" for family, given in authors] == [
        "Min-Fong Hong", "Hao-Yun Chen", "Min-Hung Chen", "Yu-Syuan Xu", "Hsien-Kai Kuo", "Yi-Min Tsai",
        "Hung-Jen Chen", "Kevin Jou"]


def test_the_readme_defines_every_reference_it_cites():
    text = (ROOT / "README.md").read_text()
    body, references = text.split("\n## References\n")
    cited = set(re.findall(r"\[(\d+)\]", body))
    defined = set(re.findall(r"^- \[(\d+)\]", references, re.M))
    assert cited and cited <= defined, cited - defined


# ---- 2. a log you can tail -----------------------------------------------------------------------------

class Stdout:
    def __init__(self, terminal: bool):
        self.terminal = terminal

    def isatty(self):
        return self.terminal

    def write(self, text):
        return len(text)

    def flush(self):
        pass


@pytest.mark.parametrize("progress, terminal, shown", [(True, True, True), (True, False, False), (False, True, False)])
def test_bars_show_only_when_asked_for_and_stdout_is_a_terminal(monkeypatch, progress, terminal, shown):
    monkeypatch.setattr(sys, "stdout", Stdout(terminal))
    assert (runs.bar_off(progress) is None) == shown      # None: tqdm decides by stderr; True: off


@pytest.mark.slow
def test_epoch_lines_and_metrics_arrive_while_the_run_goes_on(tmp_path):
    """stdout piped to a file with --no-progress: each epoch's line and its metrics.jsonl line are there before the
    run ends (polled while the process runs)."""
    log = tmp_path / "log.txt"
    args = [*TINY, "--epochs", "3", "--synthetic-size", "256", "--tau-end", "2"]   # 4 steps an epoch, each a while
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "nss.py"), *args], stdout=out, stderr=subprocess.PIPE,
                                cwd=tmp_path, text=True)
    run_dir, seen = tmp_path / "runs" / "nss-quick", {}
    try:
        while proc.poll() is None:
            if not (run_dir / "result.json").exists():
                lines = [line for line in log.read_text().splitlines() if line.startswith("epoch ")]
                metrics = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
                for line in lines:
                    epoch = int(line.split()[1].split("/")[0])
                    seen[epoch] = seen.get(epoch, False) or len(metrics) >= epoch     # and its metrics line
            time.sleep(0.01)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert seen.get(1) is True and seen.get(2) is True, seen      # before the run ended (no result.json yet)
    assert [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert sum(line.startswith("epoch ") for line in log.read_text().splitlines()) == 3
    assert "\r" not in log.read_text()           # no progress bar in the log


def test_the_readme_shows_how_to_plot_the_metrics():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n([^`]*metrics\.jsonl[^`]*)```", text)
    assert block and len(block.group(1).strip().splitlines()) == 3, "three lines of Python that plot metrics.jsonl"


# ---- 3. the plan, the time estimate and the GPU advice ---------------------------------------------------

def test_quick_starts_with_its_plan_estimates_its_time_per_phase_and_runs_again(cli_here):
    """``nss.py --quick`` (shortened) twice in a row: both exit 0; the second replaces the first demo's folder."""
    proc, again = cli_here("nss", *TINY), cli_here("nss", *TINY)
    assert proc.returncode == again.returncode == 0, proc.stderr + again.stderr
    assert again.stdout.splitlines()[0] == "runs/nss-quick: replacing the previous --quick demo run"
    assert again.stdout.splitlines()[1:] and "replacing" not in proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[0] == ("runs/nss-quick on cpu (%d threads); synthetic: 64 training images of 10 classes; "
                        "512 candidate spaces; 2 epochs (1 warmup + 1 search) of 1 step at batch 32"
                        % torch.get_num_threads())
    estimates = [i for i, line in enumerate(lines) if line.startswith("time estimate: ")]
    epochs = [i for i, line in enumerate(lines) if line.startswith("epoch ")]
    assert len(estimates) == 2 and estimates[0] < epochs[0] < estimates[1] < epochs[1], lines
    assert "at least" in lines[estimates[0]] and "warmup steps take" in lines[estimates[0]]
    assert "about" in lines[estimates[1]] and "search steps take" in lines[estimates[1]]
    assert not any("needs a GPU" in line for line in lines)        # seconds, not hours


def test_the_plan_line_gives_the_batch_the_loaders_draw(cli_here):
    """A --batch-size beyond the data: the loaders cap it at the 32 images of each search half, and the plan says so."""
    proc = cli_here("nss", *TINY, "--batch-size", "1000", "--name", "big-batch")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].endswith("2 epochs (1 warmup + 1 search) of 1 step at batch 32")


def test_a_finished_run_resumed_says_that_no_epoch_is_left(cli_here):
    """--resume of a run whose epochs are all done: its plan line says so (not "from epoch 3" of 2), and it ends."""
    assert cli_here("nss", *TINY, "--name", "done").returncode == 0
    again = cli_here("nss", *TINY, "--name", "done", "--resume")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].endswith("2 epochs (1 warmup + 1 search) of 1 step at batch 32, all of them "
                                                 "done already")
    assert not any(line.startswith("epoch ") for line in again.stdout.splitlines())


class FakeClock:
    """An hour a call: every step of the run seems to take that long."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 3600.0
        return self.now


def test_a_cpu_run_of_more_than_an_hour_says_it_needs_a_gpu(cli_here, monkeypatch):
    monkeypatch.setattr(runs, "clock", FakeClock())
    monkeypatch.setattr(runs, "spare_cores", lambda: 1)     # another process keeps one of the two cores busy
    proc = cli_here("nss", *TINY, "--w-max", "32", "--w-step", "8", "--threads", "2")   # a space beyond the reduced one
    assert proc.returncode == 0, proc.stderr
    advice = [line for line in proc.stdout.splitlines() if "needs a GPU" in line]
    assert len(advice) == 1, proc.stdout                 # once, though both phases are estimated above an hour
    assert advice[0].startswith("this space needs a GPU: on this CPU the run takes ")
    assert "--d-max 4 --w-max 16 --d-step 2 --w-step 4" in advice[0] and "--quick" in advice[0]
    assert advice[0].endswith("other processes keep cores busy here: --threads 1 may be faster")
    estimate = next(line for line in proc.stdout.splitlines() if line.startswith("time estimate: "))
    assert "warmup steps take 1 h 0 min" in estimate and "at least 2 h 0 min" in estimate


def test_the_gpu_advice_fits_the_space_and_the_cores(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    full, reduced = runs.RunSettings(), runs.RunSettings(**REDUCED)
    monkeypatch.setattr(runs, "spare_cores", lambda: 4096)
    assert len(runs.estimate_lines(full, cpu, 3599.0, "search", 1.0, False, warned=False)) == 1   # within the hour
    assert len(runs.estimate_lines(full, cuda, 7200.0, "search", 1.0, False, warned=False)) == 1  # a GPU is there
    assert len(runs.estimate_lines(full, cpu, 7200.0, "search", 1.0, False, warned=True)) == 1    # said already
    advice = runs.estimate_lines(full, cpu, 7200.0, "search", 1.0, False, warned=False)[1]
    assert "--d-max 4" in advice and "--threads" not in advice          # no core is busy
    advice = runs.estimate_lines(reduced, cpu, 7200.0, "search", 1.0, False, warned=False)[1]
    assert advice.startswith("this run needs a GPU") and "--d-max" not in advice and "fewer --epochs" in advice


def test_the_estimate_leaves_out_each_phases_first_step_and_counts_what_a_resumed_run_spent(monkeypatch):
    times = iter([0.0, 100.0, 101.0, 102.0, 103.0, 200.0, 210.0, 220.0, 230.0])   # the start, then each step's end
    monkeypatch.setattr(runs, "clock", lambda: next(times))
    est = runs.Estimate([("warmup", 1), ("search", 2)], steps=4, done_epochs=0, spent=0.0)
    assert [est.step() for _ in range(3)] == [None] * 3
    assert est.step() == (103.0 + 1.0 * 8, "warmup", 1.0, True)      # 1 s a step after the first; 8 steps left
    assert [est.step() for _ in range(3)] == [None] * 3
    assert est.step() == (230.0 + 10.0 * 4, "search", 10.0, False)
    times = iter([0.0, 5.0, 6.0, 7.0, 8.0])
    resumed = runs.Estimate([("warmup", 1), ("search", 2)], steps=4, done_epochs=2, spent=500.0)  # epoch 3 only
    assert [resumed.step() for _ in range(4)][-1] == (500.0 + 8.0, "search", 1.0, False)


def test_the_warmups_status_says_uniform_not_the_argmax_of_a_uniform_theta():
    ess = ExpandedSearchSpace.reduced()
    searcher = Searcher(SearchSettings(target=6e6, epochs=2, warmup_epochs=1), ess, Options.nss(ess))
    assert nss.search_status(searcher, [2.3, 0, 0], 1).endswith("uniform (warmup)")
    searcher.epoch = 1
    assert "uniform" not in nss.search_status(searcher, [2.3, 0, 0], 1)


# ---- 4. --quick demos rerun; real runs keep their folder ---------------------------------------------------

def test_a_quick_demo_replaces_its_previous_demo_but_not_a_real_run(tmp_path, capsys):
    demo, real = tmp_path / "demo", tmp_path / "real"
    for _ in range(2):
        with rundir.run_folder(demo, demo=True) as d:
            (d / "result.json").write_text("{}")
    assert capsys.readouterr().out.splitlines() == [f"{demo}: replacing the previous --quick demo run"]
    with rundir.run_folder(real) as d:
        (d / "result.json").write_text("{}")
    for folder, is_demo in ((real, True), (demo, False)):      # a demo into a real run's folder, a real run into a demo's
        with pytest.raises(rundir.RunError, match="already holds a run"):
            with rundir.run_folder(folder, demo=is_demo):
                pass
    assert (real / "result.json").exists() and (demo / "result.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("module, args", [
    ("nas", TINY),
    ("evaluate", ["supernet", "--quick", "--epochs", "1", "--synthetic-size", "64", "--no-progress"]),
    ("evaluate", ["rank", "--quick", "--k", "3", "--epochs", "1", "--synthetic-size", "64", "--calib-images", "20",
                  "--test-images", "16", "--no-progress"]),
    ("evaluate", ["scratch", "--quick", "--arch", '{"depths": [1, 1, 1], "widths": [4, 4, 4]}', "--seeds", "1",
                  "--epochs", "1", "--synthetic-size", "64", "--no-progress"]),
], ids=["nas", "supernet", "rank", "scratch"])
def test_quick_twice_in_a_row_succeeds_both_times(cli_here, module, args):
    first, second = cli_here(module, *args), cli_here(module, *args)
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert "replacing the previous --quick demo run" not in first.stdout
    assert sum("replacing the previous --quick demo run" in line for line in second.stdout.splitlines()) == 1


@pytest.mark.slow
def test_a_real_run_still_refuses_a_folder_that_holds_a_run(cli_here, tmp_path):
    real = [a for a in TINY if a != "--quick"] + ["--dataset", "synthetic", "--target", "6e6", "--d-max", "4",
                                                  "--w-max", "16", "--d-step", "2", "--w-step", "4", "--name", "mine"]
    assert cli_here("nss", *real).returncode == 0
    again = cli_here("nss", *real)
    assert again.returncode == 2 and "already holds a run" in again.stderr and len(again.stderr.splitlines()) == 1


# ---- 5. offline data -----------------------------------------------------------------------------------------

@pytest.fixture
def offline(monkeypatch):
    """torchvision's downloads fail as they do without a network (after making the data folder)."""
    import torchvision.datasets.utils as utils

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(utils, "_get_redirect_url", no_network)
    monkeypatch.setattr(utils, "_is_remote_location_available", lambda: False, raising=False)


def test_offline_cifar_says_how_to_get_it_by_hand_and_leaves_no_data_folder(cli_here, tmp_path, offline):
    proc = cli_here("nss", "--dataset", "cifar10")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    line = lines[0]
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in line and "--data-dir" in line
    assert f"{tmp_path / 'data' / 'cifar-10-batches-py'}/" in line and "--dataset folder" in line
    assert "--download" not in line                       # downloading is already on
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_an_existing_data_folder_is_kept_and_cifar100_named_right(tmp_path, offline):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(data_mod.DataError, match="cifar-100-python.tar.gz") as e:
        data_mod.load("cifar100", tmp_path / "mine")
    assert "cifar-100-python/" in str(e.value)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    with pytest.raises(data_mod.DataError, match=r"\(--no-download\)"):
        data_mod.load("cifar10", tmp_path / "a" / "b", download=False)
    assert not (tmp_path / "a").exists()


# ---- 6. --config ------------------------------------------------------------------------------------------------

def test_config_of_a_run_reproduces_its_result(cli_here, tmp_path):
    assert cli_here("nss", *TINY).returncode == 0
    again = cli_here("nss", "--config", "runs/nss-quick/config.json", "--name", "again")
    assert again.returncode == 0, again.stderr
    first, second = (json.loads((tmp_path / "runs" / n / "result.json").read_text()) for n in ("nss-quick", "again"))
    assert without_timings(first) == without_timings(second)


def test_config_fields_are_overridden_by_flags_and_a_runs_start_flags_are_not_taken(tmp_path):
    written = {"config": {**nss.NSSConfig(**REDUCED, dataset="synthetic", target=6e6, epochs=9, warmup_epochs=2, resume=True,
                                          overwrite=True).to_dict()}, "ess": {}}
    (tmp_path / "config.json").write_text(json.dumps(written))
    cfg = runs.parse_config(nss.NSSConfig, ["--config", str(tmp_path / "config.json"), "--lam", "2"])
    assert (cfg.epochs, cfg.lam, cfg.d_max, cfg.target) == (9, 2.0, 4, 6e6)
    assert not cfg.resume and not cfg.overwrite          # how that run was started, not what it is
    (tmp_path / "mine.json").write_text('{"quick": true, "epochs": 5.0, "target": 5000000}')
    cfg = runs.parse_config(nss.NSSConfig, ["--config", str(tmp_path / "mine.json")])
    assert (cfg.dataset, cfg.epochs, cfg.target, cfg.warmup_epochs) == ("synthetic", 5, 5e6, 3)   # --quick fills the rest
    assert isinstance(cfg.epochs, int) and isinstance(cfg.target, float)


@pytest.mark.parametrize("text, message", [
    ('{"epochs": 3, "bogus": 1}', "unknown setting 'bogus'"),
    ('{"epochs": 3', "is not valid JSON"),
    ('[1, 2]', "must hold a JSON object"),
    ('{"epochs": "three"}', "--epochs must be of type int"),
    ('{"config": {"resume": true, "lr": -1}}', "--lr must be"),
])
def test_a_bad_config_file_is_one_line(cli_here, tmp_path, text, message):
    (tmp_path / "c.json").write_text(text)
    proc = cli_here("nss", "--config", "c.json")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_missing_config_file_is_one_line(cli_here):
    proc = cli_here("nss", "--config", "nowhere.json")
    assert proc.returncode == 2 and "--config nowhere.json: cannot read it" in proc.stderr


def help_flags(cli_here, *args) -> set[str]:
    proc = cli_here("evaluate", *args, "--help")
    assert proc.returncode == 0, proc.stderr
    return set(re.findall(r"(--[a-z][a-z-]*)", proc.stdout))


def test_each_evaluate_subcommand_offers_only_the_flags_it_uses(cli_here):
    export = help_flags(cli_here, "export")
    assert not export & {"--resume", "--quick", "--reuse", "--name", "--progress", "--amp"}
    assert {"--arch", "--out", "--supernet", "--config", "--calib-images", "--overwrite"} <= export
    assert not help_flags(cli_here, "score") & {"--resume", "--quick", "--d-max", "--w-step"}
    assert "--resume" not in help_flags(cli_here, "rank") and "--quick" in help_flags(cli_here, "rank")
    assert {"--resume", "--quick", "--config"} <= help_flags(cli_here, "supernet")
    refused = cli_here("evaluate", "export", "--arch", "x", "--resume")
    assert refused.returncode == 2 and "unrecognized arguments: --resume" in refused.stderr


# ---- 7. evaluate.py export: a torch.export program that runs without this project -------------------------------

LOAD_ALONE = r"""
import importlib.util, json, sys
import torch
assert not any(importlib.util.find_spec(m) for m in ("supernet", "space", "runs", "evaluate")), "project importable"
extra = {"nss.json": ""}
program = torch.export.load(sys.argv[1], extra_files=extra)
logits = program.module()(torch.load(sys.argv[2]))
torch.save(logits, sys.argv[3])
print(json.dumps(json.loads(extra["nss.json"])))
"""


@pytest.mark.slow
def test_export_writes_a_program_that_runs_with_torch_alone(tmp_path):
    arch = Arch((2, 1, 2), (8, 16, 4))
    out = tmp_path / "export" / "model.pt"
    cfg = ev.ExportConfig(dataset="synthetic", synthetic_size=64, **REDUCED, arch=arch.to_json(), out=str(out), seed=1)
    ev.run_export(cfg)
    data = data_mod.load_for(cfg, cfg.ess_for(), "cpu")
    x = data_mod.normalize(data.test_x[:5], data.mean, data.std)
    torch.save(x, tmp_path / "x.pt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-I", "-c", LOAD_ALONE, str(out.with_suffix(".pt2")), str(tmp_path / "x.pt"),
                           str(tmp_path / "y.pt")], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    net = scratch.load_network(out)
    with torch.no_grad():
        assert torch.allclose(torch.load(tmp_path / "y.pt"), net(x), atol=1e-5)
    meta = json.loads(done.stdout.strip().splitlines()[-1])
    saved = torch.load(out, weights_only=True)
    for where in (meta, saved):
        assert where["mean"] == pytest.approx(data.mean.tolist()) and where["std"] == pytest.approx(data.std.tolist())
        assert where["classes"] == [str(i) for i in range(10)] and "normalised" in where["input"]
    assert meta["arch"] == arch.to_dict()


def test_cifar_class_names_come_with_the_data(tmp_path):
    data = data_mod.load("synthetic", synthetic_train=20, synthetic_test=5)
    assert data_mod.class_names(data) == [str(i) for i in range(10)]
    data.name = "cifar10"
    assert data_mod.class_names(data)[:3] == ["airplane", "automobile", "bird"]
    data.classes = tuple("abcdefghij")
    assert data_mod.class_names(data) == list("abcdefghij")


def test_export_refuses_an_out_that_names_the_program(cli_here):
    proc = cli_here("evaluate", "export", "--arch", "x", "--out", "model.pt2")
    assert proc.returncode == 2 and "the torch.export program goes beside it as model.pt2" in proc.stderr


# ---- 8. render.py --plain says each cell's number and time as it finishes ------------------------------------------

def test_render_plain_reports_each_cell_as_it_finishes(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "notebooks"))
    try:
        import render
    finally:
        sys.path.remove(str(ROOT / "notebooks"))
    cell = lambda kind, text: {"cell_type": kind, "metadata": {}, "source": text,
                               **({"outputs": [], "execution_count": None} if kind == "code" else {})}
    notebook = {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
        cell("markdown", "# a claim"),
        cell("code", "import sys\nprint('cell one ran', file=sys.stderr)"),
        cell("code", "print('cell two ran', file=sys.stderr)\nFINDINGS = {'answer': 42}")]}
    (tmp_path / "00_fake.ipynb").write_text(json.dumps(notebook))
    monkeypatch.setattr(render, "HERE", tmp_path)
    assert render.main(["--plain", "--out", str(tmp_path / "out"), "00"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[:4] == ["cell one ran", "00_fake: code cell 1/2 done in 0s", "cell two ran",
                       "00_fake: code cell 2/2 done in 0s"], err
    assert err[4].startswith("00_fake.ipynb: ") and "(1 findings)" in err[4]
    assert json.loads((tmp_path / "out" / "00_fake" / "findings.json").read_text()) == {"answer": 42}
