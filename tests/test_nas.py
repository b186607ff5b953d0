"""nas.py: NAS inside Elite-like and full spaces, Table 1's sample counting, and the CLI."""
import json

import pytest

import data as data_mod
import torch

import nas
import runs
from search import SearchSettings, Searcher
from flops import arch_flops, space_flops
from space import REDUCED, Arch, ExpandedSearchSpace, Options, Space

FLOPS_ONLY = dict(dataset="synthetic", synthetic_size=640, batch_size=64, task_loss=False, warmup_epochs=0,
                  arch_lr=0.1, progress=False)


def elite_like_space(ess, target, seed=0):
    """A candidate space whose mean FLOPs is within 5% of the target, as NSS would return."""
    g = torch.Generator().manual_seed(seed)
    while True:
        space = ess.space_at(int(torch.randint(ess.num_spaces, (1,), generator=g)))
        if abs(space_flops(space, ess) / target - 1) < 0.05:
            return space


def test_flops_only_nas_in_an_elite_like_space_needs_at_most_5_samples(tmp_path):
    ess = ExpandedSearchSpace()
    target = 1.6e9
    space_file = tmp_path / "elite.json"
    space_file.write_text(elite_like_space(ess, target).to_json())
    result = nas.run(nas.NASConfig(**FLOPS_ONLY, target=target, epochs=30, space=str(space_file), out=str(tmp_path)))
    arch = Arch.from_dict(result["arch"])
    assert Space.from_dict(result["space"]).contains(arch)
    assert result["flops"] == arch_flops(arch, ess)
    assert result["protocol"] == "best-of-n" and result["samples"] == 5 and len(result["sampled_flops"]) == 5
    assert result["deviation"] <= 0.10 and result["within"]
    assert result["deviation"] == min(abs(f / target - 1) for f in result["sampled_flops"])


@pytest.mark.parametrize("target", [3e6, 8e6])
def test_samples_in_the_full_reduced_space_are_counted(tmp_path, target):
    """Until-within sampling in the full reduced space: the count is measured, whatever it is."""
    cfg = nas.NASConfig(**FLOPS_ONLY, target=target, epochs=10, space="full", **REDUCED,
                        max_samples=200, out=str(tmp_path), name=f"t{target:g}")
    result = nas.run(cfg)
    devs = [abs(f / target - 1) for f in result["sampled_flops"]]
    assert result["protocol"] == "until-within" and result["samples"] == len(devs) >= 1
    if result["within"]:
        assert devs[-1] <= 0.10 and all(d > 0.10 for d in devs[:-1])    # stopped at the first hit
    else:
        assert result["samples"] == 200 and all(d > 0.10 for d in devs)
    print(f"target {target:g}: {result['samples']} samples in the full reduced space")


@pytest.mark.slow
def test_nas_with_the_task_loss_in_the_full_default_width_options(tmp_path):
    """512 width options per stage: the masked forward and Θ of that size run (tiny data, few steps)."""
    cfg = nas.NASConfig(dataset="synthetic", synthetic_size=20, batch_size=8, d_max=2, w_max=512, d_step=1, w_step=32,
                        target=2e8, epochs=2, warmup_epochs=1, progress=False, out=str(tmp_path), max_samples=20)
    result = nas.run(cfg)
    assert [len(p) for p in result["probs"]["width"]] == [512] * 3
    assert [len(p) for p in result["probs"]["depth"]] == [2] * 3
    assert result["probs"]["width"][0] != [1 / 512] * 512


@pytest.mark.slow
def test_cli_quick_runs_end_to_end(tmp_path, cli_here):
    proc = cli_here("nas", "--quick", "--synthetic-size", "500", "--no-progress")    # a quarter of the demo's images
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "runs" / "nas-quick-full" / "nas.json").read_text())
    for key in ("space", "target", "arch", "flops", "deviation", "samples", "probs", "history"):
        assert key in result
    assert "samples" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("content, message", [
    ('{"depths": [[1, 2]]}', "malformed space JSON"),
    ("{not json", "malformed space JSON"),
    ('{"depths": [[1, 2], [1, 2], [1, 9]], "widths": [[1, 4], [1, 4], [1, 4]]}', "outside"),
    (None, "cannot read"),
])
def test_cli_rejects_bad_space_files(tmp_path, content, message, cli_here):
    path = tmp_path / "space.json"
    if content is not None:
        path.write_text(content)
    proc = cli_here("nas", "--quick", "--space", str(path))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_cli_rejects_a_target_outside_the_space(tmp_path, cli_here):
    proc = cli_here("nas", "--quick", "--target", "1e9")
    assert proc.returncode == 2 and "--target must be inside the FLOPs range" in proc.stderr


def test_until_within_keeps_the_closest_sample_when_none_gets_within_the_tolerance():
    """Table 1's protocol out of samples: the closest architecture is kept, not the last one drawn."""
    ess = ExpandedSearchSpace.reduced()
    space = ess.full_space()
    settings = SearchSettings(target=5e6, task_loss=False)
    searcher = Searcher(settings, ess, Options.nas(space), device="cpu")
    result = nas.sample_final(searcher, "until-within", n=5, max_samples=30, tolerance=1e-9)
    devs = [abs(f / 5e6 - 1) for f in result["sampled_flops"]]
    assert result["samples"] == 30 and not result["within"]
    assert result["deviation"] == min(devs) and result["flops"] == result["sampled_flops"][devs.index(min(devs))]
    assert devs[-1] > min(devs)          # the last sample is not the closest: the old fallback returned it
    assert arch_flops(Arch.from_dict(result["arch"]), ess) == result["flops"]


def test_a_space_file_that_is_not_utf8_is_one_line(tmp_path):
    from space import FileError
    (tmp_path / "space.json").write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(FileError, match="not UTF-8"):
        Space.read(str(tmp_path / "space.json"), ExpandedSearchSpace.reduced())
