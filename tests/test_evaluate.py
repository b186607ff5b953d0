"""evaluate.py: evaluation supernets, scoring with shared weights, BN recalibration, from scratch, the CLI."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import data as data_mod
import evaluate as ev
import plots
import runs
import scratch
from flops import arch_flops, batch_arch_flops
from space import REDUCED, Arch, ExpandedSearchSpace, Space
from supernet import build, recalibrate_bn

ESS = ExpandedSearchSpace.reduced()
COMMON = dict(dataset="synthetic", synthetic_size=1000, **REDUCED, device="cpu", progress=False)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy evaluation supernet trained for a few epochs on synthetic data."""
    out = tmp_path_factory.mktemp("evalnet")
    data = data_mod.load_for(runs.RunSettings(**COMMON), ESS, 'cpu')
    supernet, result = ev.train_supernet(ev.SupernetConfig(**COMMON, out=str(out), epochs=5, batch_size=64, lr=0.1), data)
    return supernet.eval(), data, result, out


@pytest.mark.slow
def test_supernet_training_learns_and_saves(toy):
    supernet, data, result, out = toy
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < losses[0] - 0.3
    loaded, trained = ev.load_supernet(result["supernet"])
    assert trained == Space.from_dict(result["space"]) == ESS.full_space()
    x = data_mod.normalize(data.test_x[:8], data.mean, data.std)
    arch = Arch((2, 3, 1), (8, 12, 16))
    assert torch.equal(loaded(x, arch), supernet.eval()(x, arch))
    assert (Path(result["supernet"]).parent / "checkpoint.pt").exists()


@pytest.mark.slow
def test_supernet_score_equals_extracted_standalone_score(toy):
    supernet, data, _, _ = toy
    archs = ev.sample_archs(ESS.full_space(), 5, ESS, torch.Generator().manual_seed(0))
    scores = ev.score_archs(supernet, archs, data, calib_images=300, test_images=400, batch_size=128, progress=False)
    calib, test_x, test_y = scratch.eval_tensors(data, 300, 400, seed=0)
    for arch, score in zip(archs, scores):
        standalone = supernet.extract(arch)
        recalibrate_bn(standalone, calib, batch_size=128)
        assert score["error"] == scratch.test_error(standalone.eval(), test_x, test_y)
        assert score["flops"] == arch_flops(arch, ESS) and score["arch"] == arch.to_dict()


@pytest.mark.slow
def test_bn_recalibration_matters_and_is_deterministic(toy):
    supernet, data, _, _ = toy
    archs = ev.sample_archs(ESS.full_space(), 8, ESS, torch.Generator().manual_seed(1))
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    raw = ev.score_archs(supernet, archs, data, calib_images=0, test_images=400, progress=False)
    cal = ev.score_archs(supernet, archs, data, calib_images=400, test_images=400, progress=False)
    again = ev.score_archs(supernet, archs, data, calib_images=400, test_images=400, progress=False)
    assert [s["error"] for s in cal] == [s["error"] for s in again]
    assert np.mean([s["error"] for s in cal]) <= np.mean([s["error"] for s in raw])
    assert all(torch.equal(v, supernet.state_dict()[k]) for k, v in before.items())   # buffers restored


def test_sample_archs_honours_band_and_ordering():
    ess = ExpandedSearchSpace()
    g = torch.Generator().manual_seed(0)
    archs = ev.sample_archs(ess.full_space(), 50, ess, g, flops_band=(3e8, 6e8), ordering="elite")
    f = batch_arch_flops(torch.tensor([a.depths for a in archs]), torch.tensor([a.widths for a in archs]), ess)
    assert ((f >= 3e8) & (f <= 6e8)).all() and all(a.satisfies("elite") for a in archs)
    assert len(set(archs)) == 50
    with pytest.raises(runs.RunError, match="meet"):
        ev.sample_archs(ESS.full_space(), 5, ESS, g, flops_band=(1, 2), max_draws=10_000)


@pytest.mark.slow
def test_export_writes_a_standalone_network_untrained_or_from_the_supernet(toy, tmp_path):
    supernet, data, trained, _ = toy
    arch = Arch((2, 3, 1), (8, 12, 16))
    common = dict(COMMON, arch=arch.to_json(), calib_images=300)
    ev.run_export(ev.ExportConfig(**common, out=str(tmp_path / "shared.pt"), supernet=trained["supernet"]))
    net = scratch.load_network(tmp_path / "shared.pt")
    _, test_x, test_y = scratch.eval_tensors(data, 300, 400, seed=0)
    score = ev.score_archs(supernet, [arch], data, calib_images=300, test_images=400, progress=False)[0]
    assert net.arch == arch and scratch.test_error(net, test_x, test_y) == score["error"]   # BN recalibrated alike
    ev.run_export(ev.ExportConfig(**common, out=str(tmp_path / "fresh.pt"), seed=3))
    fresh = scratch.load_network(tmp_path / "fresh.pt")
    torch.manual_seed(3)
    reference = build(arch, ESS)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), reference.state_dict().values()))


@pytest.mark.slow
def test_cli_rank_quick_writes_its_statistics_and_plot(tmp_path, cli_here):
    proc = cli_here("evaluate", "rank", "--quick", "--synthetic-size", "500", "--no-progress")   # a quarter of the
    # demo's images: the whole pipeline (evaluation supernet, scoring, from-scratch training) at a quarter of its time
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "runs" / "rank-quick" / "rank.json").read_text())
    n = len(result["archs"])
    assert n == 5 and len(result["supernet_errors"]) == len(result["scratch_errors"]) == n
    assert result["kendall_tau"] == plots.rank_agreement(result["supernet_errors"], result["scratch_errors"])["kendall_tau"]
    assert 0 <= result["kendall_p"] <= 1
    assert -1 <= result["spearman_rho"] <= 1 and result["recipe"]["name"] == "fast" and result["recipe"]["epochs"] == 2
    assert (tmp_path / "runs" / "rank-quick" / "rank.png").stat().st_size > 10_000
    assert "Kendall τ" in proc.stdout


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
    (["--quick", "--epochs", "3"], "notebooks/render.py"),
    (["supernet", "--epochs", "0"], "at least 1"),
])
def test_cli_rejects_bad_input_with_one_line(tmp_path, args, message, cli_here):
    extra = ["--dataset", "synthetic"] if args[:1] in (["score"], ["scratch"], ["supernet"]) else []
    proc = cli_here("evaluate", *args, *extra)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_cli_rejects_a_corrupt_supernet_file(tmp_path, cli_here):
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    proc = cli_here("evaluate", "score", "--supernet", "bad.pt")
    assert proc.returncode == 2 and "corrupt" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---- divergence, bad side files ------------------------------------------------------------------

@pytest.mark.slow
def test_supernet_and_scratch_training_stop_when_they_diverge(tmp_path):
    from train import Diverged
    small = {**COMMON, "synthetic_size": 256}
    data = data_mod.load_for(runs.RunSettings(**small), ESS, 'cpu')
    with pytest.raises(Diverged, match="supernet's training loss .* lower --lr \\(now 1e\\+30\\)"):
        ev.train_supernet(ev.SupernetConfig(**small, out=str(tmp_path), epochs=3, batch_size=64, lr=1e30), data)
    cfg = ev.ScratchConfig(**small, out=str(tmp_path), seeds=1, epochs=3, batch_size=64, lr=1e30)
    with pytest.raises(Diverged, match="training loss of .* lower --lr"):
        ev.run_scratch(cfg, Arch((1, 1, 1), (4, 4, 4)), data, run_dir=tmp_path / "scratch")
    assert list(tmp_path.iterdir()) == []     # nothing good was saved, nothing is left


def test_table_skips_a_corrupt_or_foreign_nas_json_with_one_line(tmp_path, capsys):
    good = {"dataset": "synthetic", "target": 4e6, "space_source": "full", "flops": 3.9e6, "deviation": 0.025,
            "samples": 5}
    for name, content in (("good", json.dumps(good)), ("corrupt", '{"dataset": "synth'), ("foreign", '{"a": 1}'),
                          ("binary", b"\xff\xfe\x00")):
        (tmp_path / name).mkdir()
        path = tmp_path / name / "nas.json"
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    (tmp_path / "good" / "scratch").mkdir()
    (tmp_path / "good" / "scratch" / "scratch.json").write_text("[1, 2")
    markdown = ev.run_table(ev.TableConfig(runs=str(tmp_path), out=str(tmp_path / "table1")))
    assert "CX 4MF" in markdown
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 4 and all(w.startswith("warning: skipping ") for w in warnings)
    for name in ("binary/nas.json", "corrupt/nas.json", "foreign/nas.json", "good/scratch/scratch.json"):
        assert sum(name in w for w in warnings) == 1, (name, warnings)


def test_scratch_resume_with_a_corrupt_scratch_json_is_one_line(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "scratch.json").write_text('{"arch": ')
    cfg = ev.ScratchConfig(**COMMON, out=str(tmp_path), resume=True)
    with pytest.raises(runs.RunError, match="scratch.json is corrupt .*--overwrite"):
        ev.run_scratch(cfg, Arch((1, 1, 1), (4, 4, 4)), run_dir=tmp_path / "s")
