"""The search engine of Network Space Search (§3.3–3.4, Eq. 2–5), shared by NSS and NAS.

Θ holds, per stage i, logits α_i over the depth options and β_i over the width options; P_Θ is
their product of softmaxes (Eq. 2). After a warmup of weight steps on uniformly sampled
architectures, every iteration takes
  1. a weight step on a train-half batch: 𝒜 ~ P_Θ, a ~ U(𝒜), a sliced single-path forward, CE,
     SGD (an unbiased sample of Eq. 3);
  2. a Θ step on a val-half batch: Gumbel-softmax weights g per stage at temperature τ, one
     depth and width drawn inside each option, the masked supernet forward, and the loss
     CE + λ·|F(g)/target − 1| (Eq. 5) with F the differentiable expected FLOPs; Adam on Θ.
NSS's options are the candidate ranges (``Options.nss``) and its Elite Space is the closest to the
target of n = 5 spaces sampled from the final P_Θ (§3.4); NAS's options are single depths and
widths (``Options.nas``, ``nas.py``). This module is the method alone: command lines, run folders
and checkpoint files live in ``runs.py``.

    searcher = Searcher(SearchSettings(target=1.6e9), ess, Options.nss(ess), device)
    searcher.attach(data)                      # a data.ImageData
    searcher.fit()                             # warmup, then weight and Θ steps
    elite_space(searcher.theta, searcher.gen, 5, 1.6e9, ess)
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

import data as data_mod
from flops import OptionMoments, arch_flops, expected_flops, flops_loss, flops_range, format_flops, space_flops
from space import Arch, ExpandedSearchSpace, Options, Space
from supernet import Diverged, SGDSettings, SuperNet, autocast, check_loss, cosine_lr, setting, train_step


# --------------------------------------------------------------------------------------------
# Settings: what the engine uses, and nothing of the run around it
# --------------------------------------------------------------------------------------------

@dataclass
class SearchSettings(SGDSettings):
    """The search's hyperparameters (Eq. 5, §4.1; FBNet's schedule [32]). ``lr`` follows a cosine."""

    target: float = setting(1.6e9, "FLOPs_target, in multiply-accumulates (1.6e9 = 1.6GF)")
    lam: float = setting(1.0, "λ: weight of the FLOPs loss (choice)")
    task_loss: bool = setting(True, "use CE in Θ steps; --no-task-loss trains Θ on the FLOPs loss alone")
    flops_samples: int = setting(16, "Gumbel draws averaged in the FLOPs term (choice: variance reduction)")
    epochs: int = setting(30, "epochs in all, warmup included")
    warmup_epochs: int = setting(10, "weight-only epochs first, on uniformly sampled spaces")
    batch_size: int = setting(64, "batch size of weight and Θ steps (the paper: 64)")
    arch_lr: float = setting(0.01, "Adam learning rate of Θ (FBNet)")
    arch_weight_decay: float = setting(5e-4, "Adam weight decay of Θ (FBNet)")
    tau0: float = setting(5.0, "τ_0: Gumbel-softmax temperature of the first search epoch (FBNet)")
    tau_end: float = setting(0.1, "τ of the last search epoch; τ decays exponentially in between (FBNet's form, choice)")
    eps: float = setting(1e-4, "masked forwards skip options whose weight is below ε")
    seed: int = setting(0, "seed of everything")

    def check(self):
        """Raise ValueError naming the first setting out of its range."""
        finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)
        rules = [(n, "at least 1", lambda v: v >= 1) for n in ("epochs", "batch_size", "flops_samples")]
        rules += [(n, "a finite positive number", lambda v: finite(v) and v > 0)
                  for n in ("target", "lr", "arch_lr", "tau0", "tau_end")]
        rules += [(n, "a finite non-negative number", lambda v: finite(v) and v >= 0)
                  for n in ("lam", "eps", "momentum", "weight_decay", "arch_weight_decay")]
        rules += [("warmup_epochs", f"in 0..{self.epochs - 1} (less than --epochs)", lambda v: 0 <= v < self.epochs),
                  ("tau_end", f"at most --tau0 ({self.tau0})", lambda v: v <= self.tau0)]
        for name, what, ok in rules:
            if not ok(getattr(self, name)):
                raise ValueError(f"--{name.replace('_', '-')} must be {what}, got {getattr(self, name)}")


def check_target(target: float, options: Options, ess: ExpandedSearchSpace, what: str):
    """Raise ValueError unless some choice of ``options`` reaches the FLOPs target (Eq. 4)."""
    lo, hi = flops_range(options, ess)
    if not lo <= target <= hi:
        raise ValueError(f"--target {target:g} is outside the FLOPs range of {what}: "
                         f"{lo:.4g} ({format_flops(lo)}) to {hi:.4g} ({format_flops(hi)})")


# --------------------------------------------------------------------------------------------
# Θ: the distribution over spaces (Eq. 2)
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
                        raise ValueError(f"the probabilities have {len(values)} options where the space has {len(p)}")
                    p.copy_(torch.tensor(values).clamp_min(1e-30).log())
        return theta

    def probs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """P_Θ per stage: softmax(α_i) and softmax(β_i) (Eq. 2)."""
        return [a.softmax(0) for a in self.alpha], [b.softmax(0) for b in self.beta]

    def gumbel(self, tau: float, generator: torch.Generator, m: int = 1):
        """``m`` Gumbel-softmax draws per stage at temperature τ [14]: lists of (m, K) weights g (§3.3)."""
        def draw(logits):
            u = torch.rand((m, len(logits)), generator=generator).clamp_(1e-20, 1 - 1e-7)
            return ((logits - torch.log(-torch.log(u))) / tau).softmax(-1)
        return [draw(a) for a in self.alpha], [draw(b) for b in self.beta]

    @torch.no_grad()
    def sample(self, generator: torch.Generator, uniform: bool = False) -> Space:
        """𝒜 ~ P_Θ, or uniformly over the options (the warmup, §4.1)."""
        pd, pw = self.probs()
        pick = lambda p: int(torch.multinomial(torch.ones_like(p) if uniform else p, 1, generator=generator))
        return self.options.space([pick(p) for p in pd], [pick(p) for p in pw])

    @torch.no_grad()
    def most_likely(self) -> Space:
        """The mode of P_Θ."""
        return self.options.space([int(a.argmax()) for a in self.alpha], [int(b.argmax()) for b in self.beta])

    def probs_dict(self) -> dict:
        pd, pw = self.probs()
        return {"depth": [p.tolist() for p in pd], "width": [p.tolist() for p in pw]}


def short(space: Space) -> str:
    """'d 1-4,5-8,1-4 w 33-64,…' for progress bars (single values print once)."""
    fmt = lambda rs: ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in rs)
    return f"d {fmt(space.depths)} w {fmt(space.widths)}"


def elite_space(theta: Theta, generator: torch.Generator, n: int, target: float, ess: ExpandedSearchSpace) -> dict:
    """Sample n spaces from the final P_Θ and keep the one closest to the FLOPs target: the Elite Space (§3.4)."""
    candidates = []
    for _ in range(n):
        space = theta.sample(generator)
        f = space_flops(space, ess)
        candidates.append({"space": space.to_dict(), "flops": f, "deviation": abs(f / target - 1)})
    best = min(candidates, key=lambda c: c["deviation"])
    return {"target": target, "elite_space": best["space"], "elite_flops": best["flops"],
            "deviation": best["deviation"], "candidates": candidates, "most_likely": theta.most_likely().to_dict()}


# --------------------------------------------------------------------------------------------
# The searcher: weight steps, Θ steps, epochs
# --------------------------------------------------------------------------------------------

class OneProcess:
    """What a search shares with other processes when it runs alone: nothing. Under torchrun the command
    lines pass the ``distributed`` module instead, which has the same four functions."""

    shard = staticmethod(lambda batch: batch)                       # this process's share of a global batch
    average_grads = staticmethod(lambda params: None)               # averaged over the processes
    mean = staticmethod(lambda value, device: float(value))         # a scalar averaged over the processes
    batch_stats_reduce = staticmethod(lambda: None)                 # a sum over the processes, for global-batch BN


class Searcher:
    """The alternating optimisation of Eq. 3–5 over any ``Options`` (NSS ranges or NAS values). ``parallel``:
    ``OneProcess`` alone, or the ``distributed`` module under torchrun (the same draws everywhere, a share of
    each batch per process, averaged gradients)."""

    def __init__(self, settings: SearchSettings, ess: ExpandedSearchSpace, options: Options, device: torch.device,
                 amp: bool = False, progress: bool = False, parallel=OneProcess):
        self.settings, self.ess, self.options, self.device = settings, ess, options, device
        self.amp = amp and device.type == "cuda"       # bf16 autocast and channels_last
        self.progress, self.parallel = progress, parallel
        torch.manual_seed(settings.seed)
        self.theta = Theta(options)
        self.moments = OptionMoments.of(options)
        self.arch_opt = torch.optim.Adam(self.theta.parameters(), lr=settings.arch_lr,
                                         weight_decay=settings.arch_weight_decay)
        self.gen = torch.Generator().manual_seed(settings.seed)          # spaces, archs, Gumbel noise
        self.data_gen = data_mod.make_generator(device, settings.seed + 1)  # shuffling and augmentation
        self.supernet = None
        if settings.task_loss:   # with the FLOPs loss alone, Θ never needs the supernet
            self.supernet = SuperNet(ess).to(device)
            if self.amp:
                self.supernet = self.supernet.to(memory_format=torch.channels_last)
            self.weight_opt = settings.sgd(self.supernet.parameters())
            self.supernet.batch_stats_reduce = parallel.batch_stats_reduce()   # global-batch BN under torchrun
        self.epoch, self.step, self.history, self.seconds, self.suspect = 0, 0, [], 0.0, False
        self.executed_flops: list[int] = []     # per Θ step of the current epoch

    # ---- one step each ------------------------------------------------------------------
    def weight_step(self, x: torch.Tensor, y: torch.Tensor, lr: float, uniform: bool) -> torch.Tensor:
        """𝒜 ~ P_Θ (uniform in warmup), a ~ U(𝒜), sliced forward, CE, one SGD step (Eq. 3). Under torchrun
        every process draws the same 𝒜 and a, runs its share of the batch and averages the gradients."""
        arch = self.theta.sample(self.gen, uniform=uniform).sample(self.gen)
        p = self.parallel
        return train_step(lambda inp: self.supernet(inp, arch), self.weight_opt, p.shard(x), p.shard(y), lr,
                          self.amp, sync=lambda: p.average_grads(self.supernet.parameters()))

    def theta_step(self, x: torch.Tensor | None, y: torch.Tensor | None, tau: float, target: float,
                   lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Gumbel-softmax g, masked forward, CE + λ·|F(g)/target − 1| (Eq. 5), one Adam step on Θ.

        The FLOPs term averages ``flops_samples`` Gumbel draws (it is analytic and cheap); the
        first draw also weights the masked forward. Only Θ's gradients are computed. The FLOPs the
        masked forward executed per image (options below ε cut away) go to ``executed_flops``.
        """
        g_d, g_w = self.theta.gumbel(tau, self.gen, m=self.settings.flops_samples)
        flops = expected_flops(g_d, g_w, self.moments, self.ess)   # (m,): one F(g) per draw
        flops_term = flops_loss(flops.float(), target).mean()
        loss = lam * flops_term
        task, executed = torch.zeros(()), 0
        if self.supernet is not None:
            depth_values, width_values = self.options.draw_values(self.gen)
            plans = self.supernet.masked_plan([g[0] for g in g_d], [g[0] for g in g_w], depth_values, width_values,
                                              self.settings.eps)
            with autocast(self.device, self.amp):      # this process's share of the batch (all of it alone)
                task = F.cross_entropy(self.supernet.run(self.parallel.shard(x), plans).float(),
                                       self.parallel.shard(y))
            loss = task + loss.to(task.device)
            # the forward runs plan.depth blocks of plan.width channels per stage whatever the masks: its cost per image
            executed = arch_flops(Arch(tuple(p.depth for p in plans), tuple(p.width for p in plans)), self.ess)
        self.executed_flops.append(executed)
        params = list(self.theta.parameters())
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        self.parallel.average_grads(params)        # Θ stays identical on every process
        self.arch_opt.step()
        if not all(bool(p.isfinite().all()) for p in params):      # Θ is on the host: no device sync
            hint = f"--lr (now {self.settings.lr:g})" if not bool(task.isfinite()) else f"--arch-lr (now {self.settings.arch_lr:g})"
            raise Diverged(f"training diverged: Θ is not finite after step {self.step}: lower {hint}")
        return task.detach(), flops_term.detach()

    # ---- epochs -------------------------------------------------------------------------
    def tau(self, epoch: int) -> float:
        """τ_e = τ_0·r^e after e search epochs, FBNet's exponential decay, with r = (τ_end/τ_0)^(1/(E−1)) so that
        the last of the E search epochs runs at τ_end (FBNet: τ_0 = 5, ×0.956 per epoch, ≈ 0.09 after 90 epochs)."""
        s = self.settings
        done, search_epochs = max(0, epoch - s.warmup_epochs), s.epochs - s.warmup_epochs
        return s.tau0 * (s.tau_end / s.tau0) ** (done / max(1, search_epochs - 1))

    def attach(self, data: data_mod.ImageData):
        """Loaders over the seeded 50/50 split: the train half for weights, the val half for Θ (§4.1)."""
        s = self.settings
        halves = data_mod.search_split(len(data.train_y), s.seed)
        self.loaders = [data_mod.Loader(data.train_x[i.to(self.device)], data.train_y[i.to(self.device)], data.mean,
                                        data.std, min(s.batch_size, len(i)), self.data_gen, channels_last=self.amp)
                        for i in halves]
        self.steps = min(len(loader) for loader in self.loaders)
        if self.steps == 0:
            raise data_mod.DataError(f"too few images: {len(data.train_y)} training images cannot be split "
                                     f"into two halves of a batch")

    def fit(self, on_epoch: Callable[[Searcher, dict], None] | None = None, until: int | None = None):
        """The search loop: epochs up to ``until`` (default ``settings.epochs``), from where a resumed state
        stands; ``on_epoch(searcher, record)`` after each (the command lines save a checkpoint there).
        ``until=warmup_epochs`` stops after the warmup, which does not depend on the target: several
        targets can go on from one warmed-up state (``runs.run_searches``)."""
        while self.epoch < min(self.settings.epochs, until if until is not None else self.settings.epochs):
            record = self.train_epoch()
            if on_epoch is not None:
                on_epoch(self, record)
        return self

    def train_epoch(self) -> dict:
        """One epoch: weight steps only during warmup, then alternating weight and Θ steps."""
        s, epoch, steps = self.settings, self.epoch, self.steps
        train, val = self.loaders if s.task_loss else (None, None)
        warmup, tau, start = epoch < s.warmup_epochs, self.tau(epoch), time.time()
        self.executed_flops = []
        sums = {"loss": 0.0, "task_loss": 0.0, "flops_loss": 0.0}
        none = itertools.repeat((None, None))
        train_batches = iter(train) if train is not None else none
        val_batches = iter(val) if val is not None and not warmup else none
        bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{s.epochs} {'warmup' if warmup else 'search'}",
                   leave=False, disable=not self.progress, dynamic_ncols=True)
        for i in bar:
            (xt, yt), (xv, yv) = next(train_batches), next(val_batches)
            if self.supernet is not None:
                sums["loss"] = sums["loss"] + self.weight_step(xt, yt, cosine_lr(s.lr, self.step, s.epochs * steps), warmup)
            self.step += 1
            if not warmup:
                task, fl = self.theta_step(xv, yv, tau, s.target, s.lam)
                sums["task_loss"] = sums["task_loss"] + task
                sums["flops_loss"] = sums["flops_loss"] + fl
            if self.progress and (i % 20 == 0 or i == steps - 1):
                bar.set_postfix_str(self.status(tau, sums["loss"] / (i + 1)))
        record = {"epoch": epoch + 1, "phase": "warmup" if warmup else "search",
                  **{k: self.parallel.mean(v, self.device) / steps for k, v in sums.items()},
                  "expected_flops": self.expected_flops(), "tau": tau, "seconds": time.time() - start,
                  "executed_flops": (sum(self.executed_flops) / len(self.executed_flops)
                                     if self.supernet is not None and self.executed_flops else None),
                  "most_likely": self.theta.most_likely().to_dict()}
        if self.supernet is not None:     # one host sync per epoch; Diverged leaves the last checkpoint alone
            self.suspect = check_loss([h["loss"] for h in self.history] + [record["loss"]], self.ess.num_classes,
                                      "the supernet's training loss", f"lower --lr (now {s.lr:g})")
        self.history.append(record)
        self.epoch, self.seconds = self.epoch + 1, self.seconds + record["seconds"]
        return record

    @torch.no_grad()
    def expected_flops(self) -> float:
        """E_{𝒜~P_Θ}[FLOPs(𝒜)], exactly (F evaluated at g = softmax(Θ), §3.4)."""
        pd, pw = self.theta.probs()
        return float(expected_flops(pd, pw, self.moments, self.ess))

    def result(self) -> dict:
        """What a finished search reports beside its selection: P_Θ, the history and the time."""
        return {"probs": self.theta.probs_dict(), "history": self.history}

    def describe(self, record: dict) -> str:
        return (f"epoch {record['epoch']:3d}/{self.settings.epochs} {record['phase']:6s} loss {record['loss']:.3f} "
                f"flops-loss {record['flops_loss']:.3f} E[FLOPs] {format_flops(record['expected_flops'])} "
                f"τ {record['tau']:.2f} {record['seconds']:.1f}s")

    def status(self, tau: float, loss) -> str:
        loss = float(loss) if self.supernet is not None else float("nan")
        return f"loss {loss:.3f} FLOPs {format_flops(self.expected_flops())} τ {tau:.2f} {short(self.theta.most_likely())}"

    # ---- state, for checkpoints -----------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "step": self.step, "history": self.history, "seconds": self.seconds,
                 "theta": self.theta.state_dict(), "arch_opt": self.arch_opt.state_dict(),
                 "gen": self.gen.get_state(), "data_gen": self.data_gen.get_state()}
        if self.supernet is not None:
            state |= {"supernet": self.supernet.state_dict(), "weight_opt": self.weight_opt.state_dict()}
        return state

    def load_state_dict(self, state: dict):
        self.theta.load_state_dict(state["theta"])
        self.arch_opt.load_state_dict(state["arch_opt"])
        self.gen.set_state(state["gen"])
        self.data_gen.set_state(state["data_gen"])
        if self.supernet is not None:
            self.supernet.load_state_dict(state["supernet"])
            self.weight_opt.load_state_dict(state["weight_opt"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.history, self.seconds = list(state["history"]), state["seconds"]
