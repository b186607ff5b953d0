"""Training networks on the whole training set (Table 1, "following the settings in [4]"), and keeping them.

* ``TrainSettings`` and ``RECIPES``: how a network is trained. ``paper`` is [4]'s (DeVries & Taylor,
  cutout) CIFAR setting, the one behind Table 1's errors: SGD with Nesterov momentum 0.9, batch 128,
  learning rate 0.1 divided by 5 at epochs 60, 120 and 160 of 200, weight decay 5e-4, cutout 16×16
  (CIFAR-10) or 8×8 (CIFAR-100), no label smoothing. ``fast`` is a short one-cycle recipe for quick and
  GPU-scale runs (60 epochs at batch 512, cosine after a 2-epoch warmup, label smoothing 0.1).
  ``supernet`` is the evaluation supernet's (§4.2, ``evaluate.py``).
* ``train_from_scratch`` trains ``build(arch)`` for one seed; ``run_scratch`` runs the seeds in a run folder of
  its own (``<NAS run>/scratch`` for a nas.json), writes ``scratch.json`` after each (resumable per seed) and
  keeps each seed's network as ``seed<N>.pt``.
* ``load_network(path)`` gives a saved network back: ``net = load_network("runs/…/seed0.pt")``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

import data as data_mod
import distributed
import runs
from flops import arch_flops, arch_params
from rundir import RunError, empty, load_checkpoint, not_a_file, reading, run_folder, save_torch, write_atomic, write_json
from runs import RunSettings, option
from space import Arch, ExpandedSearchSpace
from supernet import Network, build
from train import SGDSettings, autocast, check_loss, cosine_lr, step_lr, train_step

RECIPES: dict[str, dict] = {
    "paper": dict(epochs=200, batch_size=128, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="step",
                  milestones="60,120,160", lr_gamma=0.2, lr_warmup_epochs=0.0, label_smoothing=0.0, cutout=-1),
    "fast": dict(epochs=60, batch_size=512, lr=0.4, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                 milestones="", lr_gamma=0.2, lr_warmup_epochs=2.0, label_smoothing=0.1, cutout=-1),
    "supernet": dict(epochs=30, batch_size=256, lr=0.2, momentum=0.9, weight_decay=5e-4, schedule="cosine",
                     milestones="", lr_gamma=0.2, lr_warmup_epochs=1.0, label_smoothing=0.0, cutout=0),
}


@dataclass
class TrainSettings(SGDSettings):
    """A training recipe (Table 1's [4], or a shorter one): every field left unset takes the recipe's value."""

    recipe: str = option("paper", "paper ([4]: 200 epochs, ÷5 at 60/120/160) | fast (60-epoch one-cycle) | supernet",
                         choices=tuple(RECIPES))
    lr: float = option(None, "peak SGD learning rate", "(0, inf)")
    momentum: float = option(None, "SGD Nesterov momentum", "[0, 1)")
    weight_decay: float = option(None, "SGD weight decay", "[0, inf)")
    epochs: int = option(None, "epochs over the whole training set", "[1, 1e5]")
    batch_size: int = option(None, "batch size", "[1, 1e6]")
    schedule: str = option(None, "learning-rate schedule: step (÷ at --milestones) | cosine (after --lr-warmup-epochs)",
                           choices=("step", "cosine"))
    milestones: str = option(None, "step schedule: epochs at which the learning rate is multiplied by --lr-gamma")
    lr_gamma: float = option(None, "step schedule: the factor at each milestone (0.2: divided by 5)", "(0, inf)")
    lr_warmup_epochs: float = option(None, "linear learning-rate warmup (epochs)", "[0, 1e5]")
    label_smoothing: float = option(None, "label smoothing", "[0, 1)")
    cutout: int = option(None, "side of cutout's hole after normalisation; -1: [4]'s, 16 (CIFAR-10) or 8 (CIFAR-100)",
                         "[-1, 1e4]")

    def __post_init__(self):
        if self.recipe not in RECIPES:
            raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is None:
                setattr(self, name, value)

    def recipe_values(self) -> dict:
        """The recipe's name and every value in force (what a result records)."""
        return {"name": self.recipe, **{name: getattr(self, name) for name in RECIPES[self.recipe]}}

    def check_training(self):
        try:
            [int(m) for m in self.milestones.split(",") if m.strip()]
        except ValueError:
            raise RunError(f"--milestones must be comma-separated epochs such as 60,120,160, got {self.milestones!r}") from None

    def cutout_for(self, num_classes: int) -> int:
        return data_mod.cutout_size(num_classes) if self.cutout == -1 else self.cutout

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of a step: step decay at the milestones [4], or linear warmup then cosine to 0."""
        if self.schedule == "step":
            milestones = [int(m) * steps_per_epoch for m in self.milestones.split(",") if m.strip()]
            return step_lr(self.lr, step, milestones, self.lr_gamma)
        return cosine_lr(self.lr, step, self.epochs * steps_per_epoch, int(self.lr_warmup_epochs * steps_per_epoch))


@dataclass
class ScratchConfig(RunSettings, TrainSettings):
    """From-scratch training of one architecture over several seeds (Table 1, the settings of [4])."""

    arch: str = option("", "a nas.json, an architecture JSON file, or inline JSON {\"depths\": [...], \"widths\": [...]}",
                       path="input")
    seeds: int = option(3, "independent runs (the paper: 3)", "[1, 1000]")
    eval_every: int = option(1, "test every this many epochs (history for time-to-accuracy)", "[1, 1e5]")

    QUICK = {**RunSettings.QUICK, "recipe": "fast", "seeds": 2, "epochs": 3, "batch_size": 64, "lr": 0.1,
             "lr_warmup_epochs": 0.5, "cutout": 8}

    def check(self):
        super().check()
        self.check_training()

    def default_name(self) -> str:
        return f"scratch-{self.dataset}-s{self.seed}"


# ---- Measuring and keeping networks --------------------------------------------------------------

@torch.no_grad()
def test_error(forward: Callable, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 error in percent of ``forward`` on normalised images."""
    wrong = torch.zeros((), dtype=torch.long, device=labels.device)
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        wrong += (forward(x).argmax(1) != y).sum()
    return 100.0 * float(wrong) / len(labels)


def eval_tensors(data: data_mod.ImageData, calib_images: int, test_images: int | None, seed: int,
                 channels_last: bool = False):
    """Normalised BN-calibration images (a seeded subset of the training set) and test images (all, or a seeded
    subset of ``test_images``)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    idx = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))[:calib_images]
    calib = data_mod.normalize(data.train_x[idx.to(data.train_x.device)], data.mean, data.std).contiguous(memory_format=fmt)
    n = len(data.test_y) if not test_images else min(test_images, len(data.test_y))
    # a seeded subset when not all: the test images of an image folder come sorted by class
    pick = slice(None) if n == len(data.test_y) else torch.randperm(
        len(data.test_y), generator=torch.Generator().manual_seed(seed))[:n].to(data.test_y.device)
    test = data_mod.normalize(data.test_x[pick], data.mean, data.std).contiguous(memory_format=fmt)
    return calib, test, data.test_y[pick]


def weights_of(net: Network) -> dict:
    """A network's weights and buffers as CPU tensors: what a network file keeps."""
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def save_network(path: Path, net: Network, ess: ExpandedSearchSpace, **extra):
    """A standalone network file: its architecture, its space and its weights (CPU tensors), atomically."""
    save_weights(path, net.arch, weights_of(net), ess, **extra)


def save_weights(path: Path, arch: Arch, state: dict, ess: ExpandedSearchSpace, **extra):
    """``save_network`` from an architecture and its ``weights_of`` (a network trained in another process)."""
    payload = {"arch": arch.to_dict(), "ess": ess.to_dict(), "state": state, **extra}
    write_atomic(Path(path), lambda p: save_torch(payload, p))


def load_network(path: str | Path, device="cpu") -> Network:
    """A network saved by ``save_network`` (``run_scratch``'s seed<N>.pt, ``evaluate.py export``), in eval mode."""
    fix = "give a network file written by this project (a seed<N>.pt of evaluate.py scratch, or evaluate.py export's)"
    saved = load_checkpoint(Path(path), fix)
    with reading(path, "is not a network written by this project", fix):
        net = build(Arch.from_dict(saved["arch"]), ExpandedSearchSpace.from_dict(saved["ess"]))
        net.load_state_dict(saved["state"])
    return net.to(device).eval()


# ---- Training from scratch (Table 1) -------------------------------------------------------------

def train_from_scratch(arch: Arch, ess: ExpandedSearchSpace, data: data_mod.ImageData, cfg: ScratchConfig,
                       seed: int) -> tuple[dict, Network]:
    """Train ``build(arch)`` from scratch by the recipe; the final test error, its history and the network."""
    device = runs.resolve_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    data = data.to(device)
    net = build(arch, ess, seed).to(device)
    if amp:
        net = net.to(memory_format=torch.channels_last)
    opt = cfg.sgd(net.parameters())
    loader = data_mod.Loader(data.train_x, data.train_y, data.mean, data.std, min(cfg.batch_size, len(data.train_y)),
                             data_mod.make_generator(device, seed), cutout=cfg.cutout_for(data.num_classes),
                             channels_last=amp)
    _, test_x, test_y = eval_tensors(data, 0, None, seed, channels_last=amp)
    history, losses, start, step = [], [], time.time(), 0
    benchmark = torch.backends.cudnn.benchmark      # one fixed network: let cuDNN pick the fastest kernels, then
    torch.backends.cudnn.benchmark = device.type == "cuda" or benchmark    # restore (the supernets' shapes change)
    try:
        for epoch in tqdm(range(cfg.epochs), desc=f"scratch seed {seed}", leave=False,
                          disable=runs.bar_off(cfg.progress)):
            net.train()
            loss_sum = torch.zeros((), device=device)
            for x, y in loader:
                loss_sum += train_step(net, opt, x, y, cfg.lr_at(step, len(loader)), amp, cfg.label_smoothing)
                step += 1
            losses.append(float(loss_sum) / len(loader))     # one host sync per epoch
            check_loss(losses, ess.num_classes, f"the training loss of {arch} (seed {seed})",
                       f"lower --lr (now {cfg.lr:g})")
            if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
                net.eval()
                with autocast(device, amp):
                    error = test_error(net, test_x, test_y)
                history.append({"epoch": epoch + 1, "test_error": error, "seconds": time.time() - start})
    finally:
        torch.backends.cudnn.benchmark = benchmark
    result = {"seed": seed, "error": history[-1]["test_error"], "history": history, "seconds": time.time() - start}
    return result, net.eval()


def run_scratch(cfg: ScratchConfig, arch: Arch | None = None, data: data_mod.ImageData | None = None,
                run_dir: Path | None = None) -> dict:
    """Train an architecture over ``cfg.seeds`` seeds in a run folder of its own; writes scratch.json and seed<N>.pt
    after every seed (resumable per seed, under the same settings and data). For an ``--arch`` nas.json the folder
    is ``scratch/`` beside it, so that ``evaluate.py table`` pairs them."""
    cfg.check()
    ess = cfg.ess_for(data)
    if arch is None and not cfg.arch:
        raise RunError("--arch is required: a nas.json, an architecture JSON file or inline JSON")
    arch = arch or Arch.read(cfg.arch, ess)
    if run_dir is None:
        beside_nas = cfg.arch.endswith("nas.json") and not cfg.name and cfg.out == type(cfg).out   # else as asked
        run_dir = Path(cfg.arch).parent / "scratch" if beside_nas else Path(cfg.out) / (cfg.name or cfg.default_name())
    out = run_dir / "scratch.json"
    with run_folder(run_dir, cfg.resume, cfg.overwrite, out.name, cfg.reuse, cfg.quick):
        data = data_mod.load_for(cfg, ess, runs.resolve_device(cfg.device)) if data is None else data
        mine = runs.identity(cfg, data_mod.fingerprint(data), runs.resolve_device(cfg.device))
        mine = json.loads(json.dumps(mine)) | {"arch": arch.to_dict()}
        result = {}          # what earlier seeds left: rank 0 reads it, every process learns it
        if (out.is_file() if cfg.reuse else cfg.resume) and distributed.is_main():
            try:
                result = read_result(out, mine, cfg.seed)
            except RunError:
                if not cfg.reuse:
                    raise
                empty(run_dir)       # --reuse: the folder holds another run, which this one replaces
        result = distributed.broadcast(result)
        trained = list(result.get("runs", []))
        recipe = {**cfg.recipe_values(), "cutout": cfg.cutout_for(ess.num_classes)}

        def train(seed: int) -> tuple[dict, dict]:
            run, net = train_from_scratch(arch, ess, data, cfg, seed)
            return run, weights_of(net)
        todo = list(range(cfg.seed + len(trained), cfg.seed + cfg.seeds))
        # one seed per process at a time (under torchrun the processes share the seeds); results after each round
        for seeds in [todo[i:i + distributed.world()] for i in range(0, len(todo), distributed.world())]:
            for seed, (run, state) in zip(seeds, distributed.map_shared(train, seeds)):
                save_weights(run_dir / f"seed{seed}.pt", arch, state, ess, error=run["error"], recipe=recipe,
                             dataset=cfg.dataset)
                digest = distributed.broadcast(runs.sha256(run_dir / f"seed{seed}.pt") if distributed.is_main() else None)
                trained.append({**run, "weights": f"seed{seed}.pt", "sha256": digest})
            errors = [r["error"] for r in trained]
            result = {"arch": arch.to_dict(), "flops": arch_flops(arch, ess), "params": arch_params(arch, ess),
                      "dataset": cfg.dataset, "recipe": recipe, "errors": errors, "mean": float(np.mean(errors)),
                      "std": float(np.std(errors)), "runs": trained, "config": dataclasses.asdict(cfg),
                      "identity": mine}
            write_json(out, result)
    return result


def read_result(path: Path, mine: dict, first_seed: int) -> dict:
    """What earlier seeds left in scratch.json, if it was written under the identity ``mine`` (one line if not): read
    whole inside its guard, with a finite error in [0, 100] for each of seeds first_seed, first_seed + 1, …, and each
    seed's network file unchanged beside it."""
    with reading(path, "is corrupt"):
        result = json.loads(path.read_text())
        trained, theirs = result["runs"], result["identity"]
        if not isinstance(trained, list) or not isinstance(theirs, dict):
            raise TypeError(f"its runs are {type(trained).__name__} and its identity {type(theirs).__name__}")
        for i, r in enumerate(trained):
            error = r["error"]
            if type(error) not in (int, float) or not (math.isfinite(error) and 0 <= error <= 100):   # not a bool
                raise ValueError(f"run {i} has the error {error!r}, not a percentage")
            if r["seed"] != first_seed + i or not isinstance(r["weights"], str):
                raise ValueError(f"run {i} is of seed {r['seed']!r}, not {first_seed + i}")
        arch = theirs.get("arch")
    if arch != mine["arch"]:
        raise RunError(f"{path} holds another architecture; use --overwrite or another --name")
    runs.check_identity({k: v for k, v in mine.items() if k != "arch"},
                        {k: v for k, v in theirs.items() if k != "arch"}, what=str(path))
    for r in trained:        # the networks it lists: each still the one that was trained
        weights = path.parent / r["weights"]
        if not_a_file(weights) or r.get("sha256") != runs.sha256(weights):
            why = (not_a_file(weights) or "not the one trained").removeprefix("it is ")
            raise RunError(f"{weights}, the network of seed {r['seed']} in {path}, is {why} (it has changed since): "
                           f"pass --overwrite to train every seed again")
    return result
