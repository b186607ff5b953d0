"""scratch.py: training recipes ([4]'s and a fast one), from-scratch training over seeds, the networks kept."""
import json

import numpy as np
import pytest

import data as data_mod

import plots
import runs
import scratch
from space import REDUCED, Arch, ExpandedSearchSpace
from supernet import build

ESS = ExpandedSearchSpace.reduced()
COMMON = dict(dataset="synthetic", synthetic_size=2000, **REDUCED, device="cpu", progress=False)


def test_the_default_recipe_is_the_one_of_devries_and_taylor():
    """Table 1 follows [4]: SGD, Nesterov 0.9, batch 128, lr 0.1 ÷5 at 60/120/160 of 200, wd 5e-4, cutout, no smoothing."""
    cfg = scratch.ScratchConfig()
    assert cfg.recipe == "paper"
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == (200, 128, 0.1, 0.9, 5e-4)
    assert (cfg.schedule, cfg.milestones, cfg.lr_gamma, cfg.label_smoothing) == ("step", "60,120,160", 0.2, 0.0)
    assert cfg.cutout_for(10) == 16 and cfg.cutout_for(100) == 8
    steps = 10                                      # steps per epoch
    lrs = [cfg.lr_at(epoch * steps, steps) for epoch in (0, 59, 60, 119, 120, 160, 199)]
    assert lrs == pytest.approx([0.1, 0.1, 0.02, 0.02, 0.004, 0.0008, 0.0008])
    assert isinstance(cfg.sgd(build(ESS.smallest_arch(), ESS).parameters()).defaults["nesterov"], bool)
    assert cfg.sgd(build(ESS.smallest_arch(), ESS).parameters()).defaults["nesterov"]
    # the fast recipe is the short one-cycle one; flags given override a recipe's values, the rest stay
    fast = runs.parse_config(scratch.ScratchConfig, ["--recipe", "fast", "--epochs", "5"])
    assert (fast.epochs, fast.batch_size, fast.lr, fast.schedule, fast.label_smoothing) == (5, 512, 0.4, "cosine", 0.1)
    with pytest.raises(runs.RunError, match="recipe"):
        runs.parse_config(scratch.ScratchConfig, ["--recipe", "slow"])


@pytest.mark.slow
def test_scratch_training_and_its_table(tmp_path):
    data = data_mod.load_for(runs.RunSettings(**COMMON), ESS, 'cpu')
    cfg = scratch.ScratchConfig(**COMMON, out=str(tmp_path), recipe="fast", seeds=2, epochs=2, batch_size=64, lr=0.1,
                                lr_warmup_epochs=0.5)
    arch = Arch((1, 1, 1), (8, 8, 8))
    result = scratch.run_scratch(cfg, arch, data, run_dir=tmp_path / "nas-a" / "scratch")
    assert len(result["errors"]) == 2 and result["errors"][0] != result["errors"][1]
    assert result["mean"] == pytest.approx(np.mean(result["errors"])) and result["mean"] < 80   # chance is 90
    assert [h["epoch"] for h in result["runs"][0]["history"]] == [1, 2]
    # the recipe is named and recorded in full; the trained networks are kept and reload to the same test error
    assert result["recipe"]["name"] == "fast" and result["recipe"]["cutout"] == 16 and result["recipe"]["epochs"] == 2
    _, test_x, test_y = scratch.eval_tensors(data, 0, None, seed=0)
    for run in result["runs"]:
        net = scratch.load_network(tmp_path / "nas-a" / "scratch" / run["weights"])
        assert net.arch == arch and scratch.test_error(net, test_x, test_y) == run["error"]
    with pytest.raises(runs.RunError, match="already holds a run"):
        scratch.run_scratch(cfg, arch, data, run_dir=tmp_path / "nas-a" / "scratch")
    # a nas.json beside it makes a Table 1 row
    nas_result = {"dataset": "synthetic", "target": 4e6, "space_source": "runs/x/result.json", "flops": 3.9e6,
                  "deviation": 0.025, "samples": 5}
    (tmp_path / "nas-a" / "nas.json").write_text(json.dumps(nas_result))
    (tmp_path / "nas-b").mkdir()
    (tmp_path / "nas-b" / "nas.json").write_text(json.dumps({**nas_result, "space_source": "full", "flops": 4.3e6,
                                                             "deviation": 0.075, "samples": 40}))
    rows = plots.table_rows(tmp_path)
    assert rows == [{"dataset": "synthetic", "target": 4e6,
                     "elite": {"flops": 3.9e6, "deviation": 0.025, "samples": 5, "error": result["mean"]},
                     "full": {"flops": 4.3e6, "deviation": 0.075, "samples": 40, "error": None}}]
