"""nss.py and search.py: the search steers, runs, resumes exactly, and its CLI fails cleanly on bad input."""
import json
import math
from pathlib import Path

import pytest
import torch

import data as data_mod
import nss
import runs
import search
import train
from flops import arch_flops, space_flops
from space import REDUCED, ExpandedSearchSpace, Options, Space

TINY = dict(dataset="synthetic", synthetic_size=256, **REDUCED, target=6e6,
            batch_size=32, progress=False)


def tiny_cfg(tmp_path, **kw):
    return nss.NSSConfig(**{**TINY, "out": str(tmp_path), **kw})


# ---- 1. the FLOPs loss steers Θ --------------------------------------------------------------

@pytest.mark.slow
def test_flops_loss_alone_reaches_targets_across_the_default_space(tmp_path):
    """Task loss off: Θ on the FLOPs loss alone, 300 Θ steps, on the full 2^18-space default."""
    hits = {}
    for target in (6e8, 1.6e9, 4e9, 8e9, 16e9, 24e9):
        cfg = nss.NSSConfig(dataset="synthetic", synthetic_size=640, batch_size=64, task_loss=False, target=target,
                            epochs=60, warmup_epochs=0, arch_lr=0.1, out=str(tmp_path),
                            name=f"t{target:g}", progress=False)
        result = nss.run(cfg)
        assert len(result["history"]) == 60 and result["history"][-1]["tau"] < 0.3
        assert len(result["candidates"]) == 5
        elite = Space.from_dict(result["elite_space"])
        assert result["deviation"] == abs(space_flops(elite, ExpandedSearchSpace()) / target - 1)
        hits[target] = result["deviation"]
    assert sum(d < 0.03 for d in hits.values()) >= 4, hits


# ---- 2. a full search works ----------------------------------------------------------------

def check_result_schema(result, cfg):
    ess = cfg.ess(10)
    for key in ("target", "elite_space", "elite_flops", "deviation", "candidates", "probs", "history", "dataset", "seconds"):
        assert key in result
    elite = Space.from_dict(result["elite_space"]).validate(ess)
    assert 0 <= ess.index_of(elite) < ess.num_spaces           # one of the candidate spaces
    assert result["elite_flops"] == space_flops(elite, ess)
    assert result["deviation"] == abs(result["elite_flops"] / cfg.target - 1)
    assert len(result["candidates"]) == cfg.n_samples
    assert result["deviation"] == min(c["deviation"] for c in result["candidates"])
    assert [len(p) for p in result["probs"]["depth"]] == [2, 2, 2]
    assert [len(p) for p in result["probs"]["width"]] == [4, 4, 4]
    assert all(abs(sum(p) - 1) < 1e-5 for p in result["probs"]["depth"] + result["probs"]["width"])
    assert [h["phase"] for h in result["history"]] == ["warmup"] * cfg.warmup_epochs + ["search"] * (cfg.epochs - cfg.warmup_epochs)
    for h in result["history"]:
        assert {"loss", "expected_flops", "tau", "seconds"} <= set(h)


def test_full_search_writes_a_valid_result(tmp_path):
    cfg = tiny_cfg(tmp_path, epochs=3, warmup_epochs=1)
    result = nss.run(cfg)
    run_dir = tmp_path / cfg.default_name()
    on_disk = json.loads((run_dir / "result.json").read_text())
    check_result_schema(on_disk, cfg)
    assert on_disk["elite_space"] == result["elite_space"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["config"]["target"] == cfg.target and config["versions"]["torch"] == torch.__version__
    assert (run_dir / "checkpoint.pt").exists()
    assert not list(run_dir.glob(".*.tmp"))
    # Θ moved: the FLOPs term and the task term both acted
    assert result["probs"]["width"][0] != [0.25] * 4


# ---- 3. resume is exact --------------------------------------------------------------------

class Kill(Exception):
    pass


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    whole = nss.run(tiny_cfg(tmp_path, epochs=4, warmup_epochs=1, name="whole"))

    def die_after_epoch_2(searcher, record):
        if record["epoch"] == 2:
            raise Kill
    with pytest.raises(Kill):
        nss.run(tiny_cfg(tmp_path, epochs=4, warmup_epochs=1, name="cut"), callback=die_after_epoch_2)
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = nss.run(tiny_cfg(tmp_path, epochs=4, warmup_epochs=1, name="cut", resume=True))
    for key in ("elite_space", "elite_flops", "probs", "candidates"):
        assert resumed[key] == whole[key], key
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]
    assert strip(resumed["history"]) == strip(whole["history"])


@pytest.mark.slow
def test_resume_refuses_other_settings_and_corrupt_checkpoints(tmp_path):
    nss.run(tiny_cfg(tmp_path, epochs=2, warmup_epochs=1, name="a"))
    with pytest.raises(runs.RunError, match="other settings"):
        nss.run(tiny_cfg(tmp_path, epochs=2, warmup_epochs=1, name="a", resume=True, lam=2.0))
    with pytest.raises(runs.RunError, match="already holds a run"):
        nss.run(tiny_cfg(tmp_path, epochs=2, warmup_epochs=1, name="a"))
    (tmp_path / "a" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(runs.RunError, match="corrupt"):
        nss.run(tiny_cfg(tmp_path, epochs=2, warmup_epochs=1, name="a", resume=True))


# ---- several targets, one warmup ---------------------------------------------------------------

def strip_times(result: dict) -> dict:
    """A result without what legitimately differs between two runs: timings and folders."""
    drop = {"seconds", "wall_seconds", "run_dir", "warmup_run"}
    if isinstance(result, dict):
        return {k: strip_times(v) for k, v in result.items() if k not in drop}
    return [strip_times(v) for v in result] if isinstance(result, list) else result


@pytest.mark.slow
def test_several_targets_share_one_warmup_and_match_each_target_searched_alone(tmp_path):
    kw = dict(epochs=4, warmup_epochs=2)
    both = nss.run_targets(tiny_cfg(tmp_path, name="multi", **kw), [5e6, 8e6])
    assert [r["target"] for r in both] == [5e6, 8e6]
    assert [Path(r["run_dir"]).name for r in both] == ["multi-5MF", "multi-8MF"]
    assert {r["warmup_run"] for r in both} == {str(tmp_path / "multi-warmup")}
    warm = torch.load(tmp_path / "multi-warmup" / "checkpoint.pt", weights_only=True)
    assert warm["epoch"] == 2 and [h["phase"] for h in warm["history"]] == ["warmup", "warmup"]
    for result in both:
        assert json.loads((Path(result["run_dir"]) / "result.json").read_text())["target"] == result["target"]
        alone = nss.run(tiny_cfg(tmp_path, name=f"alone-{result['target']:g}", target=result["target"], **kw))
        assert strip_times(result) == strip_times(alone)       # the same seed: the same search, bit for bit
    assert both[0]["probs"] != both[1]["probs"]                # ... and the targets did steer Θ apart


@pytest.mark.slow
def test_several_targets_resume_in_the_warmup_and_in_each_target(tmp_path):
    kw = dict(epochs=4, warmup_epochs=2, name="m")
    whole = nss.run_targets(tiny_cfg(tmp_path / "whole", **kw), [5e6, 8e6])
    out = tmp_path / "cut"
    for stop in [(1, "warmup"), (3, 5e6), (4, 8e6)]:      # killed in the warmup, in the first target, in the last
        def kill(searcher, record, stop=stop):
            if record["epoch"] == stop[0] and (stop[1] == "warmup" or searcher.settings.target == stop[1]):
                raise Kill
        with pytest.raises(Kill):
            nss.run_targets(tiny_cfg(out, resume=(out / "m-warmup").exists(), **kw), [5e6, 8e6], callback=kill)
    resumed = nss.run_targets(tiny_cfg(out, resume=True, **kw), [5e6, 8e6])
    assert [strip_times(r) for r in resumed] == [strip_times(r) for r in whole]
    with pytest.raises(runs.RunError, match="already holds a run"):     # without --resume a finished run is kept
        nss.run_targets(tiny_cfg(out, **kw), [5e6, 8e6])


def test_the_target_list_flag(tmp_path):
    argv, targets = nss.split_targets(["--quick", "--target", "5e6,8e6", "--seed", "1"])
    assert targets == [5e6, 8e6] and argv == ["--quick", "--target=5000000.0", "--seed", "1"]
    assert nss.split_targets(["--target=6e6"]) == (["--target=6e6"], None)
    for bad, why in (("5e6,x", "comma-separated"), ("5e6,-1", "positive"), ("5e6,nan", "positive")):
        with pytest.raises(runs.RunError, match=why):
            nss.split_targets(["--target", bad])
    with pytest.raises(runs.RunError, match="twice"):
        nss.run_targets(tiny_cfg(tmp_path), [5e6, 5e6])


# ---- 4. the CLI ----------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_quick_runs_end_to_end(tmp_path, cli_here):
    proc = cli_here("nss", "--quick", "--synthetic-size", "500", "--no-progress")   # a quarter of the demo's images
    assert proc.returncode == 0, proc.stderr
    assert "Elite Space" in proc.stdout
    result = json.loads((tmp_path / "runs" / "nss-quick" / "result.json").read_text())
    check_result_schema(result, runs.parse_config(nss.NSSConfig, ["--quick", "--synthetic-size", "500"]))
    search_epochs = [h for h in result["history"] if h["phase"] == "search"]
    taus = [h["tau"] for h in search_epochs]
    assert taus[-1] <= 0.2 and all(a > b for a, b in zip(taus, taus[1:]))       # the search anneals
    executed = [h["executed_flops"] for h in search_epochs]
    assert all(f > 0 for f in executed) and executed[-1] < executed[0]


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--target", "1e15"], "--target must be inside the FLOPs range"),
    (["--target", "1e3"], "--target must be inside the FLOPs range"),
    (["--target", "-1"], "positive"),
    (["--target", "abc"], "invalid float"),
    (["--target", "nan"], "positive"),
    (["--dataset", "imagenet"], "--dataset must be one of cifar10"),
    (["--dataset", "cifar10", "--data-dir", "missing", "--no-download"], "missing"),
    (["--dataset", "folder", "--data-dir", "missing"], "missing"),
    (["--epochs", "2", "--warmup-epochs", "2"], "warmup"),
    (["--resume"], "nothing to resume"),
    (["--bogus-flag"], "unrecognized"),
])
def test_cli_rejects_bad_input_with_one_line(tmp_path, args, message, cli_here):
    proc = cli_here("nss", *args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))


@pytest.mark.slow
def test_cli_rejects_a_corrupt_checkpoint(tmp_path, cli_here):
    run_dir = tmp_path / "runs" / "nss-quick"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"\x00garbage")
    proc = cli_here("nss", "--quick", "--resume")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "corrupt" in proc.stderr


def test_no_flags_means_the_paper_setting():
    cfg = runs.parse_config(nss.NSSConfig, [])
    assert (cfg.dataset, cfg.target, cfg.batch_size, cfg.n_samples) == ("cifar10", 1.6e9, 64, 5)
    assert cfg.ess(10) == ExpandedSearchSpace()
    quick = runs.parse_config(nss.NSSConfig, ["--quick", "--epochs", "7"])
    assert quick.dataset == "synthetic" and quick.epochs == 7 and quick.d_max == 4


# ---- 5. the Θ step is masked and differentiable ----------------------------------------------

def test_theta_step_task_gradient_reaches_alpha_and_beta():
    settings = search.SearchSettings(target=6e6, batch_size=32, lam=0.0)   # λ = 0: the gradient is the task loss's alone
    ess = ExpandedSearchSpace.reduced()
    searcher = search.Searcher(settings, ess, Options.nss(ess), device="cpu")
    d = data_mod.load("synthetic", synthetic_train=64, synthetic_test=8)
    x, y = data_mod.normalize(d.train_x[:32], d.mean, d.std), d.train_y[:32]
    before = [p.detach().clone() for p in searcher.theta.parameters()]
    searcher.theta_step(x, y, tau=5.0)
    for p, b in zip(searcher.theta.parameters(), before):
        assert torch.all(b == 0)                      # from uniform logits
        assert p.grad is not None and p.grad.abs().max() > 0
        assert not torch.equal(p.detach(), b)
    assert all(p.grad is None for p in searcher.supernet.parameters())   # only Θ's gradients are computed


@pytest.mark.slow
def test_temperature_anneals_to_tau_end_and_the_masked_forward_shrinks(tmp_path):
    """FBNet's exponential τ from τ_0 to τ_end over the search epochs; options below ε drop out as τ falls."""
    result = nss.run(tiny_cfg(tmp_path, epochs=7, warmup_epochs=2))
    search_epochs = [h for h in result["history"] if h["phase"] == "search"]
    taus = [h["tau"] for h in search_epochs]
    assert [h["tau"] for h in result["history"][:2]] == [5.0, 5.0]          # the warmup does not use τ
    assert taus[0] == 5.0 and taus[-1] == pytest.approx(0.1) and all(a > b for a, b in zip(taus, taus[1:]))
    assert [h["executed_flops"] for h in result["history"][:2]] == [None, None]   # no Θ step in the warmup
    executed = [h["executed_flops"] for h in search_epochs]
    largest = ExpandedSearchSpace.reduced().largest_arch()
    assert executed[0] > 0.5 * arch_flops(largest, ExpandedSearchSpace.reduced())   # τ = 5: nearly every option runs
    assert executed[-1] < 0.5 * executed[0], executed                                # τ = 0.1: a few options remain
    settings = search.SearchSettings(epochs=30, warmup_epochs=10)
    tau = lambda epoch: search.temperature(settings, epoch)
    assert tau(0) == tau(10) == 5.0 and tau(29) == pytest.approx(0.1)
    assert tau(20) == pytest.approx(5 * (0.1 / 5) ** (10 / 19))
    with pytest.raises(runs.RunError, match="tau-end"):
        runs.parse_config(nss.NSSConfig, ["--tau-end", "6"])


def test_learning_rate_schedule():
    assert [round(train.cosine_lr(1.0, s, 10), 6) for s in (0, 5, 10, 12)] == [1.0, 0.5, 0.0, 0.0]
    # linear warmup to the peak, then a cosine from the peak to 0 over the remaining steps
    assert [train.cosine_lr(0.4, s, 12, warmup=4) for s in range(4)] == [0.1, 0.2, 0.30000000000000004, 0.4]
    assert train.cosine_lr(0.4, 4, 12, warmup=4) == 0.4 and train.cosine_lr(0.4, 8, 12, warmup=4) == pytest.approx(0.2)


# ---- 6. divergence stops the run, and never overwrites a good checkpoint --------------------------

@pytest.mark.slow
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    def poison_the_weights(searcher, record):
        if record["epoch"] == 1:
            with torch.no_grad():
                for p in searcher.supernet.parameters():
                    p.fill_(float("nan"))
    cfg = tiny_cfg(tmp_path, epochs=2, warmup_epochs=1, name="nan")
    with pytest.raises(train.Diverged, match="training diverged.*lower --lr") as e:
        nss.run(cfg, callback=poison_the_weights)   # a Θ step on NaN weights: stopped before torch.multinomial fails
    assert "\n" not in str(e.value) and "--overwrite" in str(e.value)
    state = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["supernet"].values() if v.is_floating_point())
    assert not (tmp_path / "nan" / "result.json").exists()
    with pytest.raises(SystemExit) as exit_:
        runs.cli(lambda argv: nss.run(tiny_cfg(tmp_path, epochs=2, warmup_epochs=1, name="nan2"),
                                      callback=poison_the_weights))
    assert exit_.value.code == 3 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_huge_learning_rate_is_stopped_without_a_checkpoint(tmp_path):
    with pytest.raises(train.Diverged, match="lower --lr \\(now 1e\\+30\\)"):
        nss.run(tiny_cfg(tmp_path, epochs=1, warmup_epochs=0, lr=1e30, name="huge"))
    assert not (tmp_path / "huge").exists()     # nothing good was ever saved: a plain rerun starts clean


def test_the_divergence_rule():
    """Not finite, or above 3·ln C for two epochs in a row; one such epoch is only suspect (not checkpointed)."""
    chance = math.log(10)
    assert train.check_loss([2.3, 1.9], 10, "loss", "hint") is False
    assert train.check_loss([2.3, 3.1 * chance], 10, "loss", "hint") is True
    assert train.check_loss([3.1 * chance, 2.0], 10, "loss", "hint") is False
    for losses in ([float("nan")], [2.3, float("inf")], [3.1 * chance, 3.1 * chance]):
        with pytest.raises(train.Diverged, match="hint"):
            train.check_loss(losses, 10, "loss", "hint")


# ---- 9. resume only on the data the run started on ------------------------------------------------

def image_folder(root: Path, classes=("a", "b"), train=16, test=4):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", train), ("test", test)):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = (torch.rand(32, 32, 3, generator=g) * 80 + 60 * k).byte().numpy()
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")


@pytest.mark.parametrize("change", ["fewer images", "another class", "other images"])
def test_resume_refuses_other_data(tmp_path, change):
    image_folder(tmp_path / "images")
    cfg = dict(dataset="folder", data_dir=str(tmp_path / "images"), **REDUCED, target=6e6, batch_size=8,
               progress=False, epochs=3, warmup_epochs=1, out=str(tmp_path), name="r")

    def die_after_epoch_1(searcher, record):
        raise Kill
    with pytest.raises(Kill):
        nss.run(nss.NSSConfig(**cfg), callback=die_after_epoch_1)
    if change == "fewer images":
        for f in list((tmp_path / "images" / "train" / "a").iterdir())[:4]:
            f.unlink()
    elif change == "another class":
        image_folder(tmp_path / "images", classes=("c",))
    else:                      # the same classes and counts, every image replaced
        image_folder(tmp_path / "images", classes=("b", "a"))
    with pytest.raises(runs.RunError, match="written on other data") as e:
        nss.run(nss.NSSConfig(**cfg, resume=True))
    expected = {"fewer images": "training images 32 → 28", "another class": "classes 2 → 3", "other images": "content "}
    assert "\n" not in str(e.value) and expected[change] in str(e.value)
