"""evaluate.py: scoring with shared weights, BN recalibration, analysis helpers, plots, Table 1, CLI."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import data as data_mod
import evaluate as ev
import nss
from flops import arch_flops, batch_arch_flops, format_flops
from space import Arch, ExpandedSearchSpace
from supernet import recalibrate_bn

ROOT = Path(__file__).resolve().parents[1]
ESS = ExpandedSearchSpace(d_max=4, w_max=16, d_step=2, w_step=4)
COMMON = dict(dataset="synthetic", synthetic_size=2000, d_max=4, w_max=16, d_step=2, w_step=4, device="cpu",
              progress=False)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy evaluation supernet trained for a few epochs on synthetic data."""
    out = tmp_path_factory.mktemp("evalnet")
    data = nss.load_data(nss.RunConfig(**COMMON), ESS)
    supernet, result = ev.train_supernet(ev.SupernetConfig(**COMMON, out=str(out), epochs=5, batch_size=64, lr=0.1), data)
    return supernet.eval(), data, result, out


def test_supernet_training_learns_and_saves(toy):
    supernet, data, result, out = toy
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0] - 0.3
    loaded = ev.load_supernet(result["supernet"])
    x = data_mod.normalize(data.test_x[:8], data.mean, data.std)
    arch = Arch((2, 3, 1), (8, 12, 16))
    assert torch.equal(loaded(x, arch), supernet.eval()(x, arch))
    assert (Path(result["supernet"]).parent / "checkpoint.pt").exists()


def test_supernet_score_equals_extracted_standalone_score(toy):
    supernet, data, _, _ = toy
    archs = ev.sample_archs(ESS.full_space(), 5, ESS, torch.Generator().manual_seed(0))
    scores = ev.score_archs(supernet, archs, data, calib_images=300, test_images=400, batch_size=128, progress=False)
    calib, test_x, test_y = ev.eval_tensors(data, 300, 400, seed=0)
    for arch, score in zip(archs, scores):
        standalone = supernet.extract(arch)
        recalibrate_bn(standalone, calib, batch_size=128)
        assert score["error"] == ev.test_error(standalone.eval(), test_x, test_y)
        assert score["flops"] == arch_flops(arch, ESS) and score["arch"] == arch.to_dict()


def test_bn_recalibration_matters_and_is_deterministic(toy):
    supernet, data, _, _ = toy
    archs = ev.sample_archs(ESS.full_space(), 12, ESS, torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    raw = ev.score_archs(supernet, archs, data, calib_images=0, test_images=400, progress=False)
    cal = ev.score_archs(supernet, archs, data, calib_images=400, test_images=400, progress=False)
    again = ev.score_archs(supernet, archs, data, calib_images=400, test_images=400, progress=False)
    assert [s["error"] for s in cal] == [s["error"] for s in again]
    assert np.mean([s["error"] for s in cal]) <= np.mean([s["error"] for s in raw])
    assert all(torch.equal(v, supernet.state_dict()[k]) for k, v in before.items())   # buffers restored


def test_pareto_front_by_hand():
    flops = [1, 2, 3, 4, 5, 2, 3]
    errors = [9, 7, 8, 5, 5, 6, 4]
    # (1,9) (2,6) (3,4) are undominated; (2,7) loses to (2,6), (4,5) and (5,5) lose to (3,4)
    assert ev.pareto_front(flops, errors) == [0, 5, 6]
    assert ev.pareto_front([1, 1], [3, 3]) == [0]


def test_edf_by_hand():
    x, y = ev.edf([3.0, 1.0, 2.0, 2.0])
    assert x.tolist() == [1.0, 2.0, 2.0, 3.0] and y.tolist() == [0.25, 0.5, 0.75, 1.0]
    # F(e) = fraction with error < e
    assert ev.edf_at([3.0, 1.0, 2.0, 2.0], [1.0, 1.5, 2.0, 2.5, 3.5]).tolist() == [0.0, 0.25, 0.25, 0.75, 1.0]
    assert ev.within([90, 95, 110, 111, 100], 100).tolist() == [True, True, True, False, True]
    scores = [{"flops": f, "error": e} for f, e in ((100, 5.0), (105, 7.0), (300, 1.0), (95, 6.0))]
    assert ev.median_error_within(scores, 100) == 6.0
    assert math.isnan(ev.median_error_within(scores, 1000))


def test_sample_archs_honours_band_and_ordering():
    ess = ExpandedSearchSpace()
    g = torch.Generator().manual_seed(0)
    archs = ev.sample_archs(ess.full_space(), 50, ess, g, flops_band=(3.6e8, 4e8), ordering="elite")
    f = batch_arch_flops(torch.tensor([a.depths for a in archs]), torch.tensor([a.widths for a in archs]), ess)
    assert ((f >= 3.6e8) & (f <= 4e8)).all() and all(a.satisfies("elite") for a in archs)
    assert len(set(archs)) == 50
    with pytest.raises(nss.RunError, match="meet"):
        ev.sample_archs(ESS.full_space(), 5, ESS, g, flops_band=(1, 2), max_draws=10_000)


def test_scratch_training_and_its_table(tmp_path):
    data = nss.load_data(nss.RunConfig(**COMMON), ESS)
    cfg = ev.ScratchConfig(**COMMON, out=str(tmp_path), seeds=2, epochs=2, batch_size=64, lr=0.1, warmup_epochs=0.5)
    arch = Arch((1, 1, 1), (8, 8, 8))
    result = ev.run_scratch(cfg, arch, data, run_dir=tmp_path / "nas-a")
    assert len(result["errors"]) == 2 and result["errors"][0] != result["errors"][1]
    assert result["mean"] == pytest.approx(np.mean(result["errors"])) and result["mean"] < 80   # chance is 90
    assert [h["epoch"] for h in result["runs"][0]["history"]] == [1, 2]
    with pytest.raises(nss.RunError, match="exists"):
        ev.run_scratch(cfg, arch, data, run_dir=tmp_path / "nas-a")
    # a nas.json beside it makes a Table 1 row
    nas_result = {"dataset": "synthetic", "target": 4e6, "space_source": "runs/x/result.json", "flops": 3.9e6,
                  "deviation": 0.025, "samples": 5}
    (tmp_path / "nas-a" / "nas.json").write_text(json.dumps(nas_result))
    (tmp_path / "nas-b").mkdir()
    (tmp_path / "nas-b" / "nas.json").write_text(json.dumps({**nas_result, "space_source": "full", "flops": 4.3e6,
                                                             "deviation": 0.075, "samples": 40}))
    rows = ev.table_rows(tmp_path)
    assert rows == [{"dataset": "synthetic", "target": 4e6,
                     "elite": {"flops": 3.9e6, "deviation": 0.025, "samples": 5, "error": result["mean"]},
                     "full": {"flops": 4.3e6, "deviation": 0.075, "samples": 40, "error": None}}]


def test_table1_by_hand():
    rows = [{"target": 6e8, "elite": {"flops": 5.71e8, "deviation": 0.047, "samples": 5, "error": 4.57},
             "full": {"flops": 6.58e8, "deviation": 0.097, "samples": 117, "error": 6.08}},
            {"target": 1.6e9, "elite": {"flops": 1.6e9, "deviation": 0.023, "samples": 5, "error": 3.99},
             "full": {"flops": 1.6e9, "deviation": 0.011, "samples": 45, "error": 4.33}}]
    markdown, csv_text = ev.table1(rows)
    lines = markdown.strip().splitlines()
    assert lines[2] == "| CX 600MF | 571MF (4.7%) | 5 | 4.57 | 658MF (9.7%) | 117 | 6.08 |"
    assert lines[-1] == "| Average | N/A (3.5%) | 5.0 | 4.28 | N/A (5.4%) | 81.0 | 5.21 |"
    assert csv_text.splitlines()[0].startswith("Complexity,Elite Space FLOPs (|Δ%|)")
    # a valid Markdown table: every row has as many cells as the delimiter row
    cells = lambda line: len(line.replace("\\|", "").strip("|").split("|"))
    assert len({cells(line) for line in lines}) == 1 and "FLOPs (\\|Δ%\\|)" in lines[0]
    assert len(csv_text.strip().splitlines()) == 4


def fake_scores(n, center, seed):
    g = np.random.default_rng(seed)
    f = np.exp(g.normal(np.log(center), 0.5, n))
    return [{"flops": float(x), "error": float(10 + 3 * g.random() - np.log(x / 1e9))} for x in f]


def test_every_plot_writes_a_png(tmp_path):
    full, elite = fake_scores(200, 3e9, 0), fake_scores(200, 1.6e9, 1)
    panel = {"title": "1.6GF", "target": 1.6e9, "groups": {"Expanded Search Space": full, "Elite Space": elite}}
    ev.plot_grid([panel, panel], tmp_path / "grid")
    ev.plot_grid([panel], tmp_path / "trunc", log_flops=False, xmax=1e9)
    ev.plot_flops_edfs({"Elite Space": [s["flops"] for s in elite], "Expanded Search Space": [s["flops"] for s in full]},
                       1.6e9, tmp_path / "fedf")
    ev.plot_error_edfs([("with", {"RegNet principles": [s["error"] for s in full]}),
                        ("without", {"Elite ordering": [s["error"] for s in elite]})], tmp_path / "eedf")
    for stem in ("grid", "trunc", "fedf", "eedf"):
        png = tmp_path / f"{stem}.png"
        assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / f"{stem}.pdf").stat().st_size > 1000
    assert format_flops(8.1e6) == "8.1MF" and format_flops(1.6e9) == "1.6GF" and format_flops(5.4e8) == "540MF"


def run_cli(*args, cwd, timeout=400):
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.mark.slow
def test_cli_quick_runs_every_protocol(tmp_path):
    proc = run_cli("--quick", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "runs" / "eval-quick"
    summary = json.loads((out / "quick.json").read_text())
    assert "| Average |" in summary["table1"] and "| Average |" in proc.stdout
    for name in ("error_vs_flops", "flops_edf", "error_edfs"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
    assert len(list(out.rglob("scratch.json"))) == 4 and len(list(out.rglob("nas.json"))) == 4


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["score", "--supernet", "missing.pt"], "cannot read the checkpoint"),
    (["score"], "--supernet is required"),
    (["scratch", "--arch", '{"depths": [1]}'], "malformed architecture"),
    (["scratch", "--arch", "nope.json"], "cannot read"),
    (["scratch"], "--arch is required"),
    (["table", "--runs", "nowhere"], "not a folder"),
    (["frobnicate"], "unknown command"),
    ([], "no command"),
    (["--quick", "--epochs", "3"], "unknown command"),
    (["supernet", "--epochs", "0"], "at least 1"),
])
def test_cli_rejects_bad_input_with_one_line(tmp_path, args, message):
    extra = ["--dataset", "synthetic"] if args[:1] in (["score"], ["scratch"], ["supernet"]) else []
    proc = run_cli(*args, *extra, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_cli_rejects_a_corrupt_supernet_file(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    proc = run_cli("score", "--supernet", "bad.pt", cwd=tmp_path)
    assert proc.returncode == 2 and "corrupt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
