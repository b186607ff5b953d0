"""Network Space Search (§3.3–3.4, Eq. 2–5): Θ, its Gumbel-softmax samples, the weight and Θ steps, the Elite Space.

Θ holds, per stage i, logits α_i over the depth options and β_i over the width options; P_Θ is their product of
softmaxes (Eq. 2). After a warmup of weight steps on uniformly sampled architectures, every iteration takes
  1. a weight step on a train-half batch: 𝒜 ~ P_Θ, a ~ U(𝒜), a sliced single-path forward, CE, SGD (an unbiased
     sample of Eq. 3);
  2. a Θ step on a val-half batch: Gumbel-softmax weights g per stage at temperature τ, one depth and width drawn
     inside each option, the masked supernet forward, and the loss CE + λ·|F(g)/target − 1| (Eq. 5) with F the
     differentiable expected FLOPs; Adam on Θ.
NSS's options are the candidate ranges (``Options.nss``) and its Elite Space is the closest to the target of n = 5
spaces sampled from the final P_Θ (§3.4); NAS's options are single depths and widths (``Options.nas``). The searcher
takes its batches from you, as (x, y) pairs of tensors:

    ess = ExpandedSearchSpace.reduced()
    searcher = Searcher(SearchSettings(target=6e6, epochs=4, warmup_epochs=1), ess, Options.nss(ess))
    searcher.fit(train_batches, val_batches)          # e.g. lists of (images, labels), or DataLoaders
    elite_space(searcher.theta, searcher.gen, 5, 6e6, ess)

It imports only torch and the other method files (space, flops, supernet, train).
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from flops import OptionMoments, arch_flops, expected_flops, flops_loss, flops_range, format_flops, space_flops
from space import Arch, ExpandedSearchSpace, Options, Space
from supernet import SuperNet
from train import SettingError, SGDSettings, autocast, check_settings, cosine_lr, setting, train_step


# ---- Settings: what the engine uses, and nothing of the run around it ----------------------------

@dataclass
class SearchSettings(SGDSettings):
    """The search's hyperparameters (Eq. 5, §4.1; FBNet's schedule [33]). ``lr`` follows a cosine."""

    target: float = setting(1.6e9, "FLOPs_target, in multiply-accumulates (1.6e9 = 1.6GF)", "(0, inf)")
    lam: float = setting(1.0, "λ: weight of the FLOPs loss (choice)", "[0, inf)")
    task_loss: bool = setting(True, "use CE in Θ steps; --no-task-loss trains Θ on the FLOPs loss alone")
    flops_samples: int = setting(16, "Gumbel draws averaged in the FLOPs term (choice: variance reduction)", "[1, 4096]")
    epochs: int = setting(30, "epochs in all, warmup included", "[1, inf)")
    warmup_epochs: int = setting(10, "weight-only epochs first, on uniformly sampled spaces", "[0, epochs)")
    batch_size: int = setting(64, "batch size of weight and Θ steps (the paper: 64)", "[1, inf)")
    arch_lr: float = setting(0.01, "Adam learning rate of Θ (FBNet)", "(0, inf)")
    arch_weight_decay: float = setting(5e-4, "Adam weight decay of Θ (FBNet)", "[0, inf)")
    tau0: float = setting(5.0, "τ_0: Gumbel-softmax temperature of the first search epoch (FBNet)", "(0, inf)")
    tau_end: float = setting(0.1, "τ of the last search epoch; τ decays exponentially in between (FBNet's form, "
                                  "choice)", "(0, tau0]")
    eps: float = setting(1e-4, "masked forwards skip options whose weight is below ε (each stage keeps its heaviest)",
                         "[0, 1)")
    seed: int = setting(0, "seed of everything", "[0, 4.6e18]")


def check_target(target: float, options: Options, ess: ExpandedSearchSpace, what: str):
    """Raise SettingError unless some choice of ``options`` reaches the FLOPs target (Eq. 4)."""
    lo, hi = flops_range(options, ess)
    if not lo <= target <= hi:
        raise SettingError("target", f"inside the FLOPs range of {what}, {lo:.4g} ({format_flops(lo)}) to "
                                     f"{hi:.4g} ({format_flops(hi)})", target)


# ---- Θ: the distribution over spaces (Eq. 2) -----------------------------------------------------

class Theta(nn.Module):
    """Θ = {α_i, β_i}: logits over each stage's depth and width options; P_Θ = Π softmax (Eq. 2). Θ is tiny and
    stays on the CPU: spaces are sampled on the host without a device sync, and only the Gumbel weights travel to
    the device for the masked forward."""

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

    @torch.no_grad()
    def expected_flops(self, ess: ExpandedSearchSpace) -> float:
        """E_{𝒜~P_Θ}[FLOPs(𝒜)], exactly (F evaluated at g = softmax(Θ), §3.4)."""
        return float(expected_flops(*self.probs(), OptionMoments.of(self.options), ess))

    def probs_dict(self) -> dict:
        pd, pw = self.probs()
        return {"depth": [p.tolist() for p in pd], "width": [p.tolist() for p in pw]}


def temperature(settings: SearchSettings, epoch: int) -> float:
    """τ_e = τ_0·r^e after e search epochs, FBNet's exponential decay [33], with r = (τ_end/τ_0)^(1/(E−1)) so that
    the last of the E search epochs runs at τ_end (FBNet: τ_0 = 5, ×0.956 per epoch, ≈ 0.09 after 90 epochs)."""
    s = settings
    done, search_epochs = max(0, epoch - s.warmup_epochs), s.epochs - s.warmup_epochs
    return s.tau0 * (s.tau_end / s.tau0) ** (done / max(1, search_epochs - 1))


def short(space: Space) -> str:
    """'d 1-4,5-8,1-4 w 33-64,…' for progress bars (single values print once)."""
    fmt = lambda rs: ",".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in rs)
    return f"d {fmt(space.depths)} w {fmt(space.widths)}"


def elite_space(theta: Theta, generator: torch.Generator, n: int, target: float, ess: ExpandedSearchSpace) -> dict:
    """Sample n spaces from the final P_Θ and keep the one closest to the FLOPs target: the Elite Space (§3.4)."""
    spaces = [theta.sample(generator) for _ in range(n)]
    flops = [space_flops(space, ess) for space in spaces]
    candidates = [{"space": sp.to_dict(), "flops": f, "deviation": abs(f / target - 1)} for sp, f in zip(spaces, flops)]
    best = min(candidates, key=lambda c: c["deviation"])
    return {"target": target, "elite_space": best["space"], "elite_flops": best["flops"],
            "deviation": best["deviation"], "candidates": candidates, "most_likely": theta.most_likely().to_dict()}


# ---- The searcher: weight steps, Θ steps, epochs -------------------------------------------------

Batch = tuple[torch.Tensor, torch.Tensor]


class Searcher:
    """The alternating optimisation of Eq. 3–5 over any ``Options`` (NSS ranges or NAS values), on a weight-sharing
    ``supernet`` (built from ``settings.seed`` by default; none when ``settings.task_loss`` is off: Θ then learns
    from the FLOPs loss alone, and the batches are ``None``). ``average_grads(params)``, if given, runs after
    every backward pass (several processes: it averages the gradients, so the replicas stay identical)."""

    def __init__(self, settings: SearchSettings, ess: ExpandedSearchSpace, options: Options, *,
                 supernet: SuperNet | None = None, device: torch.device | str | None = None, amp: bool = False,
                 average_grads: Callable | None = None):
        check_settings(settings)
        self.settings, self.ess, self.options = settings, ess, options
        if device is None:
            device = next(supernet.parameters()).device if supernet is not None else (
                "cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        self.amp = amp and self.device.type == "cuda"          # bf16 autocast and channels_last
        self.theta, self.moments = Theta(options), OptionMoments.of(options)
        self.arch_opt = torch.optim.Adam(self.theta.parameters(), lr=settings.arch_lr,
                                         weight_decay=settings.arch_weight_decay)
        self.gen = torch.Generator().manual_seed(settings.seed)          # spaces, archs, Gumbel noise, values
        if supernet is None and settings.task_loss:
            supernet = SuperNet(ess, seed=settings.seed).to(self.device)
            supernet = supernet.to(memory_format=torch.channels_last) if self.amp else supernet
        self.supernet = supernet
        self.weight_opt = settings.sgd(supernet.parameters()) if supernet is not None else None
        self.average_grads = average_grads or (lambda params: None)
        self.epoch, self.step, self.history = 0, 0, []

    def weight_step(self, x: torch.Tensor, y: torch.Tensor, lr: float, uniform: bool = False) -> torch.Tensor:
        """𝒜 ~ P_Θ (uniform in the warmup), a ~ U(𝒜), the sliced forward, CE and one SGD step (Eq. 3)."""
        arch = self.theta.sample(self.gen, uniform=uniform).sample(self.gen)
        return train_step(lambda inp: self.supernet(inp, arch), self.weight_opt, x, y, lr, self.amp,
                          sync=lambda: self.average_grads(self.supernet.parameters()))

    def theta_step(self, x: torch.Tensor | None, y: torch.Tensor | None, tau: float):
        """Gumbel-softmax g, masked forward, CE + λ·|F(g)/target − 1| (Eq. 5), one Adam step on Θ alone. The FLOPs
        term averages ``flops_samples`` draws (analytic, cheap); the first also weights the masked forward. Returns
        the CE, the FLOPs term and the FLOPs per image the forward ran (options below ε cut; None without a batch)."""
        s = self.settings
        g_d, g_w = self.theta.gumbel(tau, self.gen, m=s.flops_samples)
        flops_term = flops_loss(expected_flops(g_d, g_w, self.moments, self.ess).float(), s.target).mean()
        task, executed = torch.zeros(()), None
        if x is not None:
            plans = self.supernet.masked_plan([g[0] for g in g_d], [g[0] for g in g_w],
                                              *self.options.draw_values(self.gen), s.eps)
            with autocast(self.device, self.amp):
                task = F.cross_entropy(self.supernet.run(x, plans).float(), y)
            # the forward runs plan.depth blocks of plan.width channels per stage whatever the masks
            executed = arch_flops(Arch(tuple(p.depth for p in plans), tuple(p.width for p in plans)), self.ess)
        # one backward from both terms, each where it lives (Eq. 5's sum of their gradients): no scalar goes to the
        # device, and Θ's gradient comes back through the masked plan's transfer, one device→host copy
        terms = ([task] if x is not None else []) + [s.lam * flops_term]
        params = list(self.theta.parameters())
        for p, g in zip(params, torch.autograd.grad(terms, params)):
            p.grad = g
        self.average_grads(params)
        self.arch_opt.step()
        return task.detach(), flops_term.detach(), executed

    def fit(self, train_batches: Iterable[Batch | None], val_batches: Iterable[Batch | None], until: int | None = None,
            on_step: Callable | None = None, on_epoch: Callable | None = None) -> Searcher:
        """Epochs up to ``until`` (default: all): weight steps on uniform spaces in the warmup (§4.1), then a weight
        and a Θ step per iteration, min(len(train), len(val)) of them an epoch. Hooks: ``on_step(searcher, sums)``
        (running sums of the weight, task and FLOPs losses), ``on_epoch(searcher, record)``. Stopped at
        ``until=warmup_epochs``, the state does not depend on the target: several targets can go on from it."""
        s = self.settings
        steps = min(len(train_batches), len(val_batches))
        while self.epoch < min(s.epochs, until if until is not None else s.epochs):
            warmup, tau, start = self.epoch < s.warmup_epochs, temperature(s, self.epoch), time.time()
            sums, executed = [0.0, 0.0, 0.0], []
            vals = iter(val_batches) if not warmup else itertools.repeat(None)
            for _, train, val in zip(range(steps), train_batches, vals):
                if train is not None:
                    sums[0] = sums[0] + self.weight_step(*train, cosine_lr(s.lr, self.step, s.epochs * steps), warmup)
                self.step += 1
                if not warmup:
                    task, term, ran = self.theta_step(*(val or (None, None)), tau)
                    sums[1], sums[2] = sums[1] + task, sums[2] + term
                    executed += [ran] if ran is not None else []
                if on_step is not None:
                    on_step(self, sums)
            record = {"epoch": self.epoch + 1, "phase": "warmup" if warmup else "search",
                      **{k: float(v) / steps for k, v in zip(("loss", "task_loss", "flops_loss"), sums)},
                      "expected_flops": self.theta.expected_flops(self.ess), "tau": tau, "seconds": time.time() - start,
                      "executed_flops": sum(executed) / len(executed) if executed else None,
                      "most_likely": self.theta.most_likely().to_dict()}
            self.history.append(record)
            self.epoch += 1
            if on_epoch is not None:
                on_epoch(self, record)
        return self

    def state_dict(self) -> dict:
        """Everything a search resumes from: Θ, the weights, both optimisers, the generator and the history."""
        return {"epoch": self.epoch, "step": self.step, "history": self.history, "gen": self.gen.get_state(),
                **{k: v.state_dict() for k, v in self._parts().items()}}

    def load_state_dict(self, state: dict):
        for k, v in self._parts().items():
            v.load_state_dict(state[k])
        self.gen.set_state(state["gen"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])

    def _parts(self) -> dict:
        parts = {"theta": self.theta, "arch_opt": self.arch_opt, "supernet": self.supernet, "weight_opt": self.weight_opt}
        return {k: v for k, v in parts.items() if v is not None}
