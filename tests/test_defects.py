"""Defects of the CUDA path, checked on the CPU: the device of a torchrun process, cudnn.benchmark after
from-scratch training, and what several targets keep of their shared warmup. (The checkpoint that a resume
under torchrun sends between processes is in test_distributed.py, in its one torchrun launch.)"""
import gc
import inspect
import weakref

import pytest
import torch

import data as data_mod
import distributed
import nss
import runs
import scratch
import search
from space import REDUCED, Arch, ExpandedSearchSpace
from train import Diverged

ESS = ExpandedSearchSpace.reduced()


# ---- 1. one GPU per torchrun process ---------------------------------------------------------

@pytest.fixture
def torchrun(monkeypatch):
    """``torchrun(local_rank, gpus)``: this process as local rank ``local_rank`` of a torchrun job on a node with
    ``gpus`` GPUs (nothing is initialised); the GPUs ``set_device`` was given."""
    chosen = []

    def launch(local_rank: int, gpus: int = 2):
        monkeypatch.setattr(distributed, "active", lambda: True)
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
        return chosen
    return launch


def one_line_error(name: str) -> str:
    with pytest.raises(runs.RunError) as e:
        runs.resolve_device(name)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_under_torchrun_each_process_takes_the_gpu_of_its_local_rank(torchrun):
    chosen = torchrun(local_rank=1)
    assert runs.resolve_device("cuda") == runs.resolve_device("auto") == runs.resolve_device("cuda:1") == \
        torch.device("cuda", 1)
    assert set(chosen) == {1}
    # an explicit other index would put two processes on one GPU (NCCL: "Duplicate GPU detected")
    assert "--device cuda:0" in one_line_error("cuda:0") and "cuda:0" not in map(str, chosen)
    torchrun(local_rank=3, gpus=2)       # more processes on this node than GPUs: refused, not wrapped around
    before = len(chosen)
    assert "more processes than it has GPUs" in one_line_error("cuda") and chosen[before:] == []


def test_without_torchrun_an_explicit_gpu_index_is_kept(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runs.resolve_device("cuda:1") == torch.device("cuda", 1)


# ---- 3. cudnn.benchmark is the caller's again after from-scratch training ----------------------

def test_scratch_training_restores_cudnn_benchmark_even_when_it_diverges(monkeypatch):
    """A user's own True stays True after a run, and after a run that diverges (the supernets after it must not
    autotune; a Ctrl-C leaves it the same way)."""
    before = True
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", before)
    data = data_mod.load("synthetic", synthetic_train=64, synthetic_test=16)
    arch = Arch((1, 1, 1), (4, 4, 4))
    common = dict(dataset="synthetic", **REDUCED, device="cpu", progress=False, recipe="fast", epochs=1,
                  batch_size=16, lr_warmup_epochs=0.0)
    scratch.train_from_scratch(arch, ESS, data, scratch.ScratchConfig(**common, lr=0.01), seed=0)
    assert torch.backends.cudnn.benchmark is before
    with pytest.raises(Diverged):
        scratch.train_from_scratch(arch, ESS, data, scratch.ScratchConfig(**common, lr=1e30), seed=0)
    assert torch.backends.cudnn.benchmark is before


# ---- 4. several targets keep one warm state, on the host, and no warm-up searcher -------------

class FirstTargetEpoch(Exception):
    pass


@pytest.mark.slow
def test_several_targets_drop_the_warmup_searcher_and_keep_the_warm_state_on_the_host(tmp_path, monkeypatch):
    """In the first target's first epoch, the only searcher alive is that target's, and the warm state it started
    from holds host tensors only (on a GPU: no device copy beside the target's own)."""
    searchers, starts = [], []
    init, train_run = search.Searcher.__init__, runs.train_run

    def tracked_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        searchers.append(weakref.ref(self))

    def tracked_train_run(*args, **kwargs):
        starts.append(inspect.signature(train_run).bind(*args, **kwargs).arguments.get("start"))
        return train_run(*args, **kwargs)
    monkeypatch.setattr(search.Searcher, "__init__", tracked_init)
    monkeypatch.setattr(runs, "train_run", tracked_train_run)

    def first_target_epoch(searcher, record):
        if record["phase"] != "search":
            return
        gc.collect()
        alive = [s() for s in searchers if s() is not None]
        assert len(searchers) == 2 and alive == [searcher], f"{len(alive)} searchers alive in the first target"
        start = starts[-1]
        tensors = [t for t in _leaves(start) if isinstance(t, torch.Tensor)]
        assert len(tensors) > 20 and all(t.device.type == "cpu" for t in tensors)
        raise FirstTargetEpoch
    cfg = nss.NSSConfig(dataset="synthetic", synthetic_size=64, **REDUCED, target=6e6, epochs=2, warmup_epochs=1,
                        batch_size=16, progress=False, out=str(tmp_path), device="cpu", threads=1)
    with pytest.raises(FirstTargetEpoch):
        nss.run_targets(cfg, [5e6, 8e6], callback=first_target_epoch)


def _leaves(obj):
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _leaves(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _leaves(v)]
    return [obj]
