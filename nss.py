"""Network Space Search (§3.3–3.4, Eq. 2–5) and its command line.

    python nss.py --dataset cifar10 --target 1.6e9      # the paper's setting (the default)
    python nss.py --quick                                # offline demo: reduced space, synthetic data

Θ holds, per stage i, logits α_i over the depth ranges and β_i over the width ranges. P_Θ is
their product of softmaxes. After a warmup of weight steps on uniformly sampled architectures,
every iteration takes
  1. a weight step on a train-half batch: 𝒜 ~ P_Θ, a ~ U(𝒜), a sliced single-path forward, CE,
     SGD (an unbiased sample of Eq. 3);
  2. a Θ step on a val-half batch: Gumbel-softmax weights g per stage at temperature τ, one
     depth and width drawn inside each option, the masked supernet forward, and the loss
     CE + λ·|F(g)/target − 1| (Eq. 5) with F the differentiable expected FLOPs; Adam on Θ.
The Elite Space is the closest to the target of n = 5 spaces sampled from the final P_Θ (§3.4).

The search engine here (``SearchConfig``, ``Theta``, ``Searcher``, ``run_search``) is shared with
``nas.py``, whose options are single depths and widths instead of ranges.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

import data as data_mod
from flops import OptionMoments, expected_flops, flops_loss, flops_range, format_flops, space_flops
from space import ExpandedSearchSpace, Options, Space
from supernet import SuperNet

from tqdm.auto import tqdm


class RunError(Exception):
    """Bad input to a run (flags, target, files): reported as one line, exit code 2."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------

def option(default, help: str, **kw):
    """A config field with its CLI help text."""
    return field(default=default, metadata={"help": help, **kw})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass
class RunConfig:
    """Settings of every run: data, space, device and run folder. Defaults are the paper's or DESIGN.md's."""

    # data
    dataset: str = option("cifar10", "cifar10 | cifar100 | folder | synthetic")
    data_dir: str = option("./data", "where the dataset is (or is downloaded to)")
    download: bool = option(True, "download CIFAR through torchvision when missing")
    synthetic_size: int = option(2000, "training images of the synthetic dataset")
    # space (§4.4 shrinks d_max and w_max)
    d_max: int = option(16, "d_max: most blocks per stage")
    w_max: int = option(512, "w_max: most channels per stage")
    d_step: int = option(4, "depths per candidate range")
    w_step: int = option(32, "widths per candidate range")
    # run
    seed: int = option(0, "seed of everything")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = option(True, "bf16 autocast and channels_last on CUDA")
    out: str = option("runs", "folder of the runs")
    name: str = option("", "run name (default: derived from the settings)")
    resume: bool = option(False, "continue runs/<name> from its checkpoint")
    overwrite: bool = option(False, "replace an existing runs/<name>")
    progress: bool = option(True, "show progress bars")
    quick: bool = option(False, "tiny offline demo: reduced space, synthetic data, a few epochs")

    QUICK = dict(dataset="synthetic", synthetic_size=2000, d_max=4, w_max=16, d_step=2, w_step=4)
    # fields that do not change the result, so a resumed run may differ in them
    VOLATILE = ("resume", "overwrite", "progress", "quick", "name", "out", "device")

    def ess(self, num_classes: int) -> ExpandedSearchSpace:
        """The Expanded Search Space of this run."""
        return ExpandedSearchSpace(d_max=self.d_max, w_max=self.w_max, d_step=self.d_step, w_step=self.w_step,
                                   num_classes=num_classes)

    def check(self):
        """Reject invalid values before any work starts."""
        if self.dataset not in data_mod.DATASETS:
            raise RunError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(data_mod.DATASETS)}")
        self.check_numbers(at_least_one=("synthetic_size", "d_max", "w_max", "d_step", "w_step"))
        if self.d_max % self.d_step or self.w_max % self.w_step:
            raise RunError("--d-step must divide --d-max and --w-step must divide --w-max")
        if self.resume and self.overwrite:
            raise RunError("--resume and --overwrite exclude each other")
        resolve_device(self.device)

    def check_numbers(self, at_least_one=(), positive=(), non_negative=()):
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise RunError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        for names, ok, what in ((positive, lambda v: v > 0, "positive"), (non_negative, lambda v: v >= 0, "non-negative")):
            for name in names:
                value = getattr(self, name)
                if not (math.isfinite(value) and ok(value)):
                    raise RunError(f"{flag(name)} must be a finite {what} number, got {value}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SearchConfig(RunConfig):
    """Settings shared by NSS and NAS: the objective and the schedule of the search."""

    # objective (Eq. 5)
    target: float = option(1.6e9, "FLOPs_target, in multiply-accumulates (1.6e9 = 1.6GF)")
    lam: float = option(1.0, "λ: weight of the FLOPs loss (choice)")
    task_loss: bool = option(True, "use CE in Θ steps; --no-task-loss trains Θ on the FLOPs loss alone")
    flops_samples: int = option(16, "Gumbel draws averaged in the FLOPs term (choice: variance reduction)")
    # schedule
    epochs: int = option(30, "epochs in all, warmup included")
    warmup_epochs: int = option(10, "epochs of weight steps only, uniform sampling")
    batch_size: int = option(64, "batch size of weight and Θ steps (the paper: 64)")
    lr: float = option(0.05, "SGD learning rate of the supernet weights (cosine schedule)")
    momentum: float = option(0.9, "SGD Nesterov momentum")
    weight_decay: float = option(5e-4, "SGD weight decay")
    arch_lr: float = option(0.01, "Adam learning rate of Θ (FBNet)")
    tau0: float = option(5.0, "τ_0: initial Gumbel-softmax temperature (FBNet)")
    tau_decay: float = option(0.956, "τ multiplier per search epoch (FBNet)")
    eps: float = option(1e-4, "masked forwards skip options whose weight is below ε")

    QUICK = {**RunConfig.QUICK, "target": 6e6, "epochs": 12, "warmup_epochs": 3, "arch_lr": 0.05, "tau_decay": 0.7}

    def check(self):
        super().check()
        self.check_numbers(at_least_one=("epochs", "batch_size", "flops_samples"), positive=("target", "lr", "arch_lr", "tau0"),
                           non_negative=("lam", "eps", "momentum", "weight_decay"))
        if not 0 <= self.warmup_epochs < self.epochs:
            raise RunError(f"--warmup-epochs must be in 0..{self.epochs - 1} (less than --epochs), got {self.warmup_epochs}")
        if not 0 < self.tau_decay <= 1:
            raise RunError(f"--tau-decay must be in (0, 1], got {self.tau_decay}")


@dataclass
class NSSConfig(SearchConfig):
    """Network Space Search: the settings above plus the Elite Space selection (§3.4)."""

    n_samples: int = option(5, "n: spaces sampled from the final P_Θ; the closest to the target is the Elite Space")

    def check(self):
        super().check()
        if self.n_samples < 1:
            raise RunError(f"--n-samples must be at least 1, got {self.n_samples}")

    def default_name(self) -> str:
        return "nss-quick" if self.quick else f"nss-{self.dataset}-{format_flops(self.target)}-s{self.seed}"


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, no usage block: reported by ``cli`` like every bad input
        raise RunError(message)


def parse_config(cls, argv=None, description: str = ""):
    """Build ``cls`` from command-line flags generated from its fields; --quick fills unset flags."""
    parser = _Parser(description=description, argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{f.metadata.get('help', '')} (default: {f.default})"
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(flag, type=kind, help=help_, metavar=f.name.upper())
    given = vars(parser.parse_args(argv))
    preset = getattr(cls, "QUICK", {}) if given.get("quick") else {}
    cfg = cls(**{**preset, **given})
    cfg.check()
    return cfg


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: CUDA is not available on this machine")
    return device


# --------------------------------------------------------------------------------------------
# Θ: the distribution over spaces
# --------------------------------------------------------------------------------------------

class Theta(nn.Module):
    """Θ = {α_i, β_i}: logits over each stage's depth and width options; P_Θ = Π softmax (Eq. 2).

    Θ is tiny and stays on the CPU: spaces are sampled on the host without a device sync, and
    only the Gumbel weights travel to the device for the masked forward.
    """

    def __init__(self, options: Options):
        super().__init__()
        self.options = options
        self.alpha = nn.ParameterList(nn.Parameter(torch.zeros(len(o))) for o in options.depths)
        self.beta = nn.ParameterList(nn.Parameter(torch.zeros(len(o))) for o in options.widths)

    @classmethod
    def from_probs(cls, options: Options, probs: dict) -> Theta:
        """Θ with logits log P, from a result's ``probs`` (to sample from a finished run's P_Θ)."""
        theta = cls(options)
        with torch.no_grad():
            for params, ps in ((theta.alpha, probs["depth"]), (theta.beta, probs["width"])):
                for p, values in zip(params, ps):
                    if len(values) != len(p):
                        raise RunError(f"the probabilities have {len(values)} options where the space has {len(p)}")
                    p.copy_(torch.tensor(values).clamp_min(1e-30).log())
        return theta

    def probs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """P_Θ per stage: softmax(α_i) and softmax(β_i)."""
        return [a.softmax(0) for a in self.alpha], [b.softmax(0) for b in self.beta]

    def gumbel(self, tau: float, generator: torch.Generator, m: int = 1):
        """``m`` Gumbel-softmax draws per stage [14]: lists of (m, K) weights over depth and width options."""
        def draw(logits):
            u = torch.rand((m, len(logits)), generator=generator).clamp_(1e-20, 1 - 1e-7)
            return ((logits - torch.log(-torch.log(u))) / tau).softmax(-1)
        return [draw(a) for a in self.alpha], [draw(b) for b in self.beta]

    @torch.no_grad()
    def sample(self, generator: torch.Generator, uniform: bool = False) -> Space:
        """𝒜 ~ P_Θ (or uniformly over the options)."""
        pd, pw = self.probs()
        pick = lambda p: int(torch.multinomial(torch.ones_like(p) if uniform else p, 1, generator=generator))
        return self.options.space([pick(p) for p in pd], [pick(p) for p in pw])

    @torch.no_grad()
    def most_likely(self) -> Space:
        return self.options.space([int(a.argmax()) for a in self.alpha], [int(b.argmax()) for b in self.beta])

    def probs_dict(self) -> dict:
        pd, pw = self.probs()
        return {"depth": [p.tolist() for p in pd], "width": [p.tolist() for p in pw]}


def draw_in_options(options_per_stage, generator: torch.Generator) -> list[list[int]]:
    """For every option (lo, hi) of every stage, one value drawn uniformly in lo..hi."""
    out = []
    for ranges in options_per_stage:
        lo = torch.tensor([r[0] for r in ranges])
        span = torch.tensor([r[1] - r[0] + 1 for r in ranges])
        u = torch.rand(len(ranges), generator=generator, dtype=torch.float64)
        out.append((lo + (u * span).long().clamp_max(span - 1)).tolist())
    return out


def short(space: Space) -> str:
    """'d 1-4,5-8,1-4 w 33-64,…' for progress bars (single values print once)."""
    fmt = lambda rs: ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in rs)
    return f"d {fmt(space.depths)} w {fmt(space.widths)}"


# --------------------------------------------------------------------------------------------
# Training steps and schedules (shared with evaluate.py)
# --------------------------------------------------------------------------------------------

def autocast(device: torch.device, enabled: bool):
    """bf16 autocast where asked for (CUDA runs); a no-op context otherwise."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_step(forwards: Callable | Sequence[Callable], optimizer: torch.optim.Optimizer, x: torch.Tensor,
               y: torch.Tensor, lr: float, amp: bool = False, label_smoothing: float = 0.0) -> torch.Tensor:
    """One SGD step at learning rate ``lr`` on the cross-entropy of one forward, or the sum over several
    (the sandwich rule); returns the mean loss without a host sync."""
    forwards = [forwards] if callable(forwards) else list(forwards)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=x.device)
    for forward in forwards:          # backward one graph at a time: the memory of a single forward
        with autocast(x.device, amp):
            loss = F.cross_entropy(forward(x).float(), y, label_smoothing=label_smoothing)
        loss.backward()
        total += loss.detach()
    optimizer.step()
    return total / len(forwards)


def cosine_lr(base: float, step: int, total: int, warmup: int = 0) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay from ``base`` to 0 at step ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    return 0.5 * base * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(1, total - warmup)))


# --------------------------------------------------------------------------------------------
# The searcher: weight steps, Θ steps, epochs, checkpoints
# --------------------------------------------------------------------------------------------

class Searcher:
    """The alternating optimisation of Eq. 3–5 over any ``Options`` (NSS ranges or NAS values)."""

    def __init__(self, cfg: SearchConfig, ess: ExpandedSearchSpace, options: Options, device: torch.device):
        self.cfg, self.ess, self.options, self.device = cfg, ess, options, device
        torch.manual_seed(cfg.seed)
        self.theta = Theta(options)
        self.moments = OptionMoments.of(options)
        self.arch_opt = torch.optim.Adam(self.theta.parameters(), lr=cfg.arch_lr)
        self.gen = torch.Generator().manual_seed(cfg.seed)          # spaces, archs, Gumbel noise
        self.data_gen = data_mod.make_generator(device, cfg.seed + 1)  # shuffling and augmentation
        self.amp = cfg.amp and device.type == "cuda"
        self.supernet = None
        if cfg.task_loss:   # with the FLOPs loss alone, Θ never needs the supernet
            self.supernet = SuperNet(ess).to(device)
            if self.amp:
                self.supernet = self.supernet.to(memory_format=torch.channels_last)
            self.weight_opt = torch.optim.SGD(self.supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                              nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
        self.epoch = 0
        self.step = 0
        self.history: list[dict] = []
        self.seconds = 0.0

    # ---- one step each ------------------------------------------------------------------
    def autocast(self):
        return autocast(self.device, self.amp)

    def weight_step(self, x: torch.Tensor, y: torch.Tensor, lr: float, uniform: bool) -> torch.Tensor:
        """𝒜 ~ P_Θ (uniform in warmup), a ~ U(𝒜), sliced forward, CE, one SGD step (Eq. 3)."""
        arch = self.theta.sample(self.gen, uniform=uniform).sample(self.gen)
        return train_step(lambda inp: self.supernet(inp, arch), self.weight_opt, x, y, lr, self.amp)

    def theta_step(self, x: torch.Tensor | None, y: torch.Tensor | None, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gumbel-softmax g, masked forward, CE + λ·|F(g)/target − 1| (Eq. 5), one Adam step on Θ.

        The FLOPs term averages ``flops_samples`` Gumbel draws (it is analytic and cheap); the
        first draw also weights the masked forward. Only Θ's gradients are computed.
        """
        cfg = self.cfg
        g_d, g_w = self.theta.gumbel(tau, self.gen, m=cfg.flops_samples)
        flops = expected_flops(g_d, g_w, self.moments, self.ess)   # (m,): one F(g) per draw
        flops_term = flops_loss(flops.float(), cfg.target).mean()
        loss = cfg.lam * flops_term
        task = torch.zeros(())
        if cfg.task_loss:
            depth_values = draw_in_options(self.options.depths, self.gen)
            width_values = draw_in_options(self.options.widths, self.gen)
            with self.autocast():
                logits = self.supernet.forward_masked(x, [g[0] for g in g_d], [g[0] for g in g_w],
                                                      depth_values, width_values, cfg.eps)
                task = F.cross_entropy(logits.float(), y)
            loss = task + loss.to(task.device)
        params = list(self.theta.parameters())
        grads = torch.autograd.grad(loss, params)
        for p, g in zip(params, grads):
            p.grad = g
        self.arch_opt.step()
        return task.detach(), flops_term.detach()

    # ---- epochs -------------------------------------------------------------------------
    def tau(self, epoch: int) -> float:
        """τ = τ_0 · decay^(search epochs done) (FBNet's schedule)."""
        return self.cfg.tau0 * self.cfg.tau_decay ** max(0, epoch - self.cfg.warmup_epochs)

    def attach(self, data: data_mod.ImageData):
        """Loaders over the seeded 50/50 split: the train half for weights, the val half for Θ (§4.1)."""
        halves = data_mod.search_split(len(data.train_y), self.cfg.seed)
        self.loaders = [data_mod.Loader(data.train_x[i.to(self.device)], data.train_y[i.to(self.device)], data.mean,
                                        data.std, min(self.cfg.batch_size, len(i)), self.data_gen, channels_last=self.amp)
                        for i in halves]
        self.steps = min(len(loader) for loader in self.loaders)
        if self.steps == 0:
            raise RunError(f"the training set ({len(data.train_y)} images) is too small to split into two halves of a batch")

    def train_epoch(self) -> dict:
        """One epoch: weight steps only during warmup, then alternating weight and Θ steps."""
        cfg, epoch, steps = self.cfg, self.epoch, self.steps
        train, val = self.loaders if cfg.task_loss else (None, None)
        warmup = epoch < cfg.warmup_epochs
        tau = self.tau(epoch)
        start = time.time()
        sums = {"loss": 0.0, "task_loss": 0.0, "flops_loss": 0.0}
        none = itertools.repeat((None, None))
        train_batches = iter(train) if train is not None else none
        val_batches = iter(val) if val is not None and not warmup else none
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs} {'warmup' if warmup else 'search'}",
                   leave=False, disable=not cfg.progress, dynamic_ncols=True)
        for i in bar:
            (xt, yt), (xv, yv) = next(train_batches), next(val_batches)
            if self.supernet is not None:
                sums["loss"] = sums["loss"] + self.weight_step(xt, yt, cosine_lr(cfg.lr, self.step, cfg.epochs * steps), warmup)
            self.step += 1
            if not warmup:
                task, fl = self.theta_step(xv, yv, tau)
                sums["task_loss"] = sums["task_loss"] + task
                sums["flops_loss"] = sums["flops_loss"] + fl
            if cfg.progress and (i % 20 == 0 or i == steps - 1):
                bar.set_postfix_str(self.status(tau, sums["loss"] / (i + 1)))
        record = {"epoch": epoch + 1, "phase": "warmup" if warmup else "search",
                  **{k: float(v) / steps for k, v in sums.items()},
                  "expected_flops": self.expected_flops(), "tau": tau, "seconds": time.time() - start,
                  "most_likely": self.theta.most_likely().to_dict()}
        self.history.append(record)
        self.epoch += 1
        self.seconds += record["seconds"]
        return record

    @torch.no_grad()
    def expected_flops(self) -> float:
        """E_{𝒜~P_Θ}[FLOPs(𝒜)], exactly (F evaluated at g = softmax(Θ))."""
        pd, pw = self.theta.probs()
        return float(expected_flops(pd, pw, self.moments, self.ess))

    def describe(self, record: dict) -> str:
        return (f"epoch {record['epoch']:3d}/{self.cfg.epochs} {record['phase']:6s} loss {record['loss']:.3f} "
                f"flops-loss {record['flops_loss']:.3f} E[FLOPs] {format_flops(record['expected_flops'])} "
                f"τ {record['tau']:.2f} {record['seconds']:.1f}s")

    def status(self, tau: float, loss) -> str:
        loss = float(loss) if self.supernet is not None else float("nan")
        return f"loss {loss:.3f} FLOPs {format_flops(self.expected_flops())} τ {tau:.2f} {short(self.theta.most_likely())}"

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"config": self.cfg.to_dict(), "device_type": self.device.type, "epoch": self.epoch,
                 "step": self.step, "history": self.history, "seconds": self.seconds,
                 "theta": self.theta.state_dict(), "arch_opt": self.arch_opt.state_dict(),
                 "gen": self.gen.get_state(), "data_gen": self.data_gen.get_state()}
        if self.supernet is not None:
            state |= {"supernet": self.supernet.state_dict(), "weight_opt": self.weight_opt.state_dict()}
        return state

    def load_state_dict(self, state: dict):
        check_same_settings(self.cfg, state, self.device)
        self.theta.load_state_dict(state["theta"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.gen.set_state(state["gen"])
        self.data_gen.set_state(state["data_gen"])
        if self.supernet is not None:
            self.supernet.load_state_dict(state["supernet"])
            self.weight_opt.load_state_dict(state["weight_opt"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.seconds = list(state["history"]), state["seconds"]


# --------------------------------------------------------------------------------------------
# Runs: folders, atomic files, the epoch loop
# --------------------------------------------------------------------------------------------

def write_atomic(path: Path, write: Callable[[Path], None]):
    """Write through a temporary file and rename it, so a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj):
    write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def versions() -> dict:
    import numpy
    import torchvision
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except Exception:
        commit = ""
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "git_commit": commit}


def check_run_dir(cfg: SearchConfig, default_name: str) -> Path:
    """runs/<name>, checked: an earlier run is never overwritten unless asked, resuming needs a checkpoint."""
    run_dir = Path(cfg.out) / (cfg.name or default_name)
    checkpoint = run_dir / "checkpoint.pt"
    if cfg.resume and not checkpoint.exists():
        raise RunError(f"nothing to resume: {checkpoint} does not exist")
    if not cfg.resume and not cfg.overwrite and run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                       f"or --name for a new one")
    return run_dir


def check_same_settings(cfg: RunConfig, state: dict, device: torch.device):
    """A checkpoint resumes only under the settings that wrote it (bar the VOLATILE ones) and device kind."""
    try:
        mine = {k: v for k, v in cfg.to_dict().items() if k not in cfg.VOLATILE}
        theirs = {k: v for k, v in state["config"].items() if k not in cfg.VOLATILE}
        kind = state["device_type"]
    except (KeyError, TypeError, AttributeError):
        raise RunError("the checkpoint is not one of this program's: delete it or pass --overwrite") from None
    if mine != theirs:
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise RunError(f"the checkpoint was written with other settings ({', '.join(diff)}); "
                       f"resume with the same flags or start a new --name")
    if kind != device.type:
        raise RunError(f"the checkpoint was written on {kind}; resume it on the same kind of device")


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RunError(f"cannot read the checkpoint {path} ({type(e).__name__}); it is corrupt or not ours: "
                       f"delete it or pass --overwrite") from None


def load_data(cfg: SearchConfig, ess: ExpandedSearchSpace, device: torch.device | None = None) -> data_mod.ImageData:
    """The run's dataset on its device, checked against the space."""
    device = device or resolve_device(cfg.device)
    data = data_mod.load(cfg.dataset, cfg.data_dir, cfg.download, device, synthetic_train=cfg.synthetic_size,
                         synthetic_test=max(1, cfg.synthetic_size // 4), image_size=ess.image_size, seed=cfg.seed)
    if data.num_classes != ess.num_classes or data.image_size != ess.image_size:
        raise RunError(f"the data ({data.num_classes} classes, {data.image_size} px) does not fit the space {ess}")
    return data


def write_run_config(run_dir: Path, cfg, ess: ExpandedSearchSpace, device: torch.device):
    """config.json: the resolved config, the space, the device and the versions (the run describes itself)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    write_json(run_dir / "config.json", {"config": cfg.to_dict(), "ess": ess.to_dict(), "device": str(device),
                                         "device_name": name, "argv": sys.argv, "versions": versions()})


def run_epochs(trainer, run_dir: Path, epochs: int, progress: bool, callback: Callable | None = None):
    """Train epoch by epoch up to ``epochs``, writing ``checkpoint.pt`` atomically after each.

    ``trainer`` has ``epoch``, ``train_epoch() -> record``, ``state_dict()`` and ``describe(record)``.
    """
    while trainer.epoch < epochs:
        record = trainer.train_epoch()
        write_atomic(run_dir / "checkpoint.pt", lambda p: torch.save(trainer.state_dict(), p))
        if progress:
            print(trainer.describe(record), file=sys.stderr)
        if callback is not None:
            callback(trainer, record)


def run_search(cfg: SearchConfig, options: Options, ess: ExpandedSearchSpace, run_dir: Path,
               finish: Callable[[Searcher], dict], data: data_mod.ImageData | None = None,
               callback: Callable[[Searcher, dict], None] | None = None) -> dict:
    """Search epoch by epoch with a checkpoint after each, then ``finish`` the searcher into a result."""
    device = resolve_device(cfg.device)
    started = time.time()
    searcher = Searcher(cfg, ess, options, device)
    if cfg.resume:
        searcher.load_state_dict(load_checkpoint(run_dir / "checkpoint.pt"))
    searcher.attach(load_data(cfg, ess, device) if data is None else data.to(device))
    write_run_config(run_dir, cfg, ess, device)
    run_epochs(searcher, run_dir, cfg.epochs, cfg.progress, callback)
    result = finish(searcher)
    result |= {"probs": searcher.theta.probs_dict(), "history": searcher.history, "dataset": cfg.dataset,
               "ess": ess.to_dict(), "seconds": searcher.seconds, "wall_seconds": time.time() - started}
    return result


# --------------------------------------------------------------------------------------------
# NSS proper
# --------------------------------------------------------------------------------------------

def elite_space(searcher: Searcher, n: int) -> dict:
    """Sample n spaces from the final P_Θ and keep the one closest to the FLOPs target (§3.4)."""
    target, ess = searcher.cfg.target, searcher.ess
    candidates = []
    for _ in range(n):
        space = searcher.theta.sample(searcher.gen)
        f = space_flops(space, ess)
        candidates.append({"space": space.to_dict(), "flops": f, "deviation": abs(f / target - 1)})
    best = min(candidates, key=lambda c: c["deviation"])
    return {"target": target, "elite_space": best["space"], "elite_flops": best["flops"],
            "deviation": best["deviation"], "candidates": candidates,
            "most_likely": searcher.theta.most_likely().to_dict()}


def check_target(target: float, options: Options, ess: ExpandedSearchSpace, what: str):
    lo, hi = flops_range(options, ess)
    if not lo <= target <= hi:
        raise RunError(f"--target {target:g} is outside the FLOPs range of {what}: "
                       f"{lo:.4g} ({format_flops(lo)}) to {hi:.4g} ({format_flops(hi)})")


def run(cfg: NSSConfig, data: data_mod.ImageData | None = None, callback=None) -> dict:
    """Network Space Search end to end: writes runs/<name>/{config,result}.json and returns the result."""
    cfg.check()
    num_classes = data.num_classes if data is not None else data_mod.num_classes_of(cfg.dataset, cfg.data_dir)
    ess = cfg.ess(num_classes)
    options = Options.nss(ess)
    check_target(cfg.target, options, ess, "the candidate spaces")
    run_dir = check_run_dir(cfg, cfg.default_name())
    data = load_data(cfg, ess) if data is None else data
    result = run_search(cfg, options, ess, run_dir, lambda s: elite_space(s, cfg.n_samples), data, callback)
    result["run_dir"] = str(run_dir)
    write_json(run_dir / "result.json", result)
    return result


def summary(result: dict) -> str:
    space = Space.from_dict(result["elite_space"])
    return (f"Elite Space for {format_flops(result['target'])} on {result['dataset']}:\n"
            f"  depths {[list(r) for r in space.depths]}\n  widths {[list(r) for r in space.widths]}\n"
            f"  FLOPs {format_flops(result['elite_flops'])} (|Δ| {100 * result['deviation']:.1f}% to the target), "
            f"searched in {result['seconds']:.0f}s\n  written to {result['run_dir']}/result.json")


def cli(main: Callable[[list[str] | None], int]):
    """Run a CLI entry point: bad input prints one line and exits 2, Ctrl-C exits 130."""
    prog = Path(sys.argv[0]).name
    try:
        sys.exit(main(sys.argv[1:]))
    except (RunError, data_mod.DataError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the last finished epoch is saved: rerun with --resume", file=sys.stderr)
        sys.exit(130)


def main(argv=None) -> int:
    cfg = parse_config(NSSConfig, argv, description=__doc__.split("\n\n")[0])
    print(summary(run(cfg)))
    return 0


if __name__ == "__main__":
    cli(main)
