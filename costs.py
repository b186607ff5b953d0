"""A small GPU cost model: how long an experiment takes on one GPU, from its settings.

Seconds per training image (forward and backward) of a network of F FLOPs (multiply-accumulates) at
batch size B:

    t(F, B) = a + b·F + c/B

With no measurement of ours, a, b and c are fitted to plain training steps of the Expanded Search
Space's basic-block networks measured on one H100 (PyTorch 2.11, bf16 autocast, channels_last):

    network                               FLOPs    batch   images/s   the fit
    (16,16,16)/(512,512,512), full space  99.2 GF     64        783       781
    the same                              99.2 GF    256        869       842
    (8,8,8)/(128,128,128)                  3.0 GF    512     12,300    16,511  (narrow, deep: the fit's worst)
    (2,6,4)/(96,256,160)                   2.1 GF    512     22,600    19,935
    (4,4,4)/(64,128,256)                  0.85 GF   1024     35,800    35,715

A masked Θ step costs 783/716 of a plain step of the FLOPs it executes (716 images/s soft-masked on
the full space), a forward alone (scoring, BN recalibration) a third of a training step, and a
CIFAR-10 epoch of on-device augmentation 0.07 s. When ``results/bench-*.json`` (``python bench.py``
on a GPU) exists, a, b and c are fitted to its plain and sliced rows instead, and the estimate names
that device.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
H100_STEPS = ((99.2e9, 64, 783), (99.2e9, 256, 869), (3.0e9, 512, 12_300), (2.1e9, 512, 22_600), (0.85e9, 1024, 35_800))
MASKED_SLOWDOWN = 783 / 716
AUGMENT_SECONDS_PER_IMAGE = 0.07 / 50_000


@dataclass(frozen=True)
class GPU:
    """t(F, B) = a + b·F + c/B seconds per training image, and where the coefficients come from."""

    a: float
    b: float
    c: float
    masked_slowdown: float
    source: str

    def train(self, flops: float, images: float, batch: int) -> float:
        """Seconds of forward-and-backward steps over ``images`` images of ``flops`` FLOPs each."""
        return images * (self.a + self.b * flops + self.c / batch + AUGMENT_SECONDS_PER_IMAGE)

    def forward(self, flops: float, images: float, batch: int) -> float:
        """Seconds of forwards alone (scoring, BN recalibration)."""
        return images * (self.a + self.b * flops + self.c / batch) / 3

    def theta(self, executed_flops: float, images: float, batch: int) -> float:
        """Seconds of masked Θ steps that execute ``executed_flops`` per image."""
        return self.masked_slowdown * self.train(executed_flops, images, batch)


def fit(steps) -> tuple[float, float, float]:
    """Least-squares a, b, c of t(F, B) in relative error, from (FLOPs, batch, images/s) triples."""
    x = np.array([[1.0, f, 1.0 / b] for f, b, _ in steps])
    t = np.array([1.0 / r for _, _, r in steps])
    (a, b, c), *_ = np.linalg.lstsq(x / t[:, None], np.ones(len(steps)), rcond=None)
    return float(a), float(b), float(c)


def gpu(results: str | Path = ROOT / "results") -> GPU:
    """The model of the newest ``bench-*.json`` measured on a GPU under ``results``, else the H100 estimate."""
    for path in sorted(Path(results).glob("bench-*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            bench = json.loads(path.read_text())
            rows = [r for name in ("plain", "sliced") for r in bench["sections"][name] if r.get("macs")]
            steps = [(r["macs"], r["batch"], r["img_per_s"]) for r in rows]
            masked = [r for r in bench["sections"]["masked"] if r.get("batch") == 64]
            plain = [r for r in bench["sections"]["plain"] if r.get("batch") == 64]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if bench.get("device", "").startswith("cuda") and len(steps) >= 3:
            slowdown = plain[0]["img_per_s"] / masked[0]["img_per_s"] if masked and plain else MASKED_SLOWDOWN
            return GPU(*fit(steps), slowdown, f"measured by bench.py on {bench.get('device_name', 'a GPU')} "
                                              f"({path.name}, {bench.get('date', '')})")
    return GPU(*fit(H100_STEPS), MASKED_SLOWDOWN, "estimated from the H100 cost model (not measured here)")


# --------------------------------------------------------------------------------------------
# The parts of an experiment
# --------------------------------------------------------------------------------------------

def supernet(g: GPU, epochs: int, images: int, mean_flops: float, batch: int) -> tuple[str, float]:
    """An evaluation supernet: uniform single-path steps over the training set (§4.2)."""
    return f"evaluation supernet, {epochs} epochs", g.train(mean_flops, epochs * images, batch)


def search(g: GPU, name: str, warmup_epochs: int, search_epochs: int, images: int, warmup_flops: float,
           weight_flops: float, theta_flops: float, batch: int = 64) -> tuple[str, float]:
    """NSS or NAS: weight steps on one half of ``images``, and Θ steps on the other after the warmup.

    ``theta_flops`` is what a masked Θ step executes per image: options below ε drop out as τ falls, so
    it goes from most of the supernet to about the target (on the reduced space, a 5 → 0.1 schedule
    averaged 56% of the supernet's FLOPs).
    """
    half = images // 2
    seconds = g.train(warmup_flops, warmup_epochs * half, batch)
    seconds += g.train(weight_flops, search_epochs * half, batch) + g.theta(theta_flops, search_epochs * half, batch)
    return name, seconds


def scoring(g: GPU, name: str, archs: int, mean_flops: float, calib_images: int, test_images: int,
            batch: int = 1000) -> tuple[str, float]:
    """Architectures scored with shared weights: BN recalibration and the test set, forwards only (§4.2)."""
    return name, archs * g.forward(mean_flops, calib_images + test_images, min(batch, 500))


def scratch(g: GPU, name: str, runs: int, epochs: int, images: int, test_images: int, flops: float,
            batch: int) -> tuple[str, float]:
    """From-scratch training: ``runs`` networks (architectures × seeds), tested after every epoch."""
    return name, runs * (g.train(flops, epochs * images, batch) + g.forward(flops, epochs * test_images, 1000))


def report(parts: list[tuple[str, float]], g: GPU | None = None, budget_minutes: float | None = None) -> str:
    """The parts and their total, in minutes, with where the model's numbers come from."""
    g = g or gpu()
    total = sum(s for _, s in parts)
    lines = [f"  {name:<58s} {s / 60:7.1f} min" for name, s in parts]
    verdict = "" if budget_minutes is None else f" ({'within' if total <= 60 * budget_minutes else 'OVER'} " \
                                                f"the {budget_minutes:g}-minute budget)"
    return "\n".join([f"GPU time, {g.source}:", *lines, f"  {'total':<58s} {total / 60:7.1f} min{verdict}"])


# --------------------------------------------------------------------------------------------
# What the notebooks' estimates need: the FLOPs that a search's steps execute
# --------------------------------------------------------------------------------------------

def theta_flops(largest_flops: float, target: float, share: float = 0.56) -> float:
    """FLOPs per image of a masked Θ step, averaged over the τ_0 = 5 → τ_end = 0.1 schedule.

    At τ = 5 every option weighs more than ε and the step runs the largest network the options allow; as τ
    falls it shrinks towards about the target. We take the target plus ``share`` of the way up to the
    largest network: 56% of the supernet was measured on the reduced space (with the task loss). A Θ
    trained on the FLOPs loss alone executed 31–53% of the full space's supernet in NSS (4 or 20 search
    epochs; 600MF–16GF targets) and 46–71% in NAS over the full space (3–4 search epochs), so read this as
    the middle of a range, not a bound.
    """
    return target + share * max(0.0, largest_flops - target)


def weight_flops(mean_flops: float, target: float) -> float:
    """FLOPs per image of a search epoch's weight step: a ~ P_Θ, which moves from the uniform space's mean
    FLOPs towards the target during the search; we take the midpoint."""
    return (mean_flops + target) / 2


def searches(g: GPU, name: str, targets, warmup_epochs: int, epochs: int, images: int, mean_flops: float,
             largest_flops: float, batch: int = 64, shared_warmup: bool = True) -> list[tuple[str, float]]:
    """Searches of several FLOPs targets over one space (``epochs`` in all, ``warmup_epochs`` of them warmup):
    with ``shared_warmup`` one warmup for all (``nss.run_targets``) and a part per target's search epochs,
    else one part per target with its own warmup (separate ``nss.run`` or ``nas.run`` calls)."""
    from flops import format_flops     # costs.py itself needs nothing of the project
    search_epochs = epochs - warmup_epochs
    count = lambda n, what: f"{n} {what}{'s' * (n != 1)}"
    parts = []
    if shared_warmup:
        parts.append(search(g, f"{name} warmup, {count(warmup_epochs, 'epoch')}, shared by {count(len(targets), 'target')}",
                            warmup_epochs, 0, images, mean_flops, 0.0, 0.0, batch))
    for t in targets:
        what = f"{name} {format_flops(t)}, " + (count(search_epochs, "search epoch") if shared_warmup
                                               else f"{warmup_epochs} + {count(search_epochs, 'epoch')}")
        parts.append(search(g, what, 0 if shared_warmup else warmup_epochs, search_epochs, images, mean_flops,
                            weight_flops(mean_flops, t), theta_flops(largest_flops, t), batch))
    return parts


def nearest_space_flops(ess, target: float) -> tuple[float, float]:
    """(mean FLOPs, largest architecture's FLOPs) of the candidate space of ``ess`` whose mean is nearest the
    target: what an Elite Space for that target costs, before NSS has found it."""
    import math
    import flops
    from space import Options
    candidates = flops.candidate_flops(ess)
    index = int((candidates.log() - math.log(target)).abs().argmin())
    space = ess.space_at(index)
    return float(candidates[index]), flops.flops_range(Options.nas(space), ess)[1]
