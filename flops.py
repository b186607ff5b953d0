"""Exact FLOPs and parameters of architectures and network spaces, and the FLOPs loss (§3.4).

FLOPs are multiply-accumulates of conv and linear layers (the pycls/RegNet convention behind
"600MF ... 24GF"); BN, ReLU, additions and pooling count 0. With A_i the pixels of stage i,
w_0 the stem width and C the number of classes, an architecture a costs

    FLOPs(a) = 9·c_in·w_0·A_stem
             + Σ_i [ 10·A_i·w_{i-1}·w_i + 9·A_i·w_i²·(2·d_i − 1) ]
             + w_N·C

The first block of stage i has a 3×3 conv w_{i-1}→w_i (9·A_i·w_{i-1}·w_i), a 1×1 projection
(A_i·w_{i-1}·w_i) and a 3×3 conv w_i→w_i; every other block has two 3×3 convs w_i→w_i.

The FLOPs of a space 𝒜 is the mean over its uniform P_θ (Eq. 3). Stages, depths and widths
are independent, so the same polynomial evaluated on the moments E[d_i], E[w_i], E[w_i²]
gives it exactly: E[w_{i-1}·w_i] = E[w_{i-1}]·E[w_i], E[w_i²·(2d_i−1)] = E[w_i²]·(2E[d_i]−1).
Replacing the moments by option-weighted moments makes it differentiable in Θ.

Run ``python flops.py`` for a short demo.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import torch

from space import Arch, ExpandedSearchSpace, Options, Range, Space


# ---- The polynomial, shared by every entry point below -------------------------------------------

def _flops_polynomial(ess: ExpandedSearchSpace, d, w, w2):
    """FLOPs from per-stage E[d_i], E[w_i], E[w_i²]; works on ints, Fractions and tensors alike."""
    total = 9 * ess.in_channels * ess.stem_width * ess.image_size ** 2   # stem 3×3 conv
    w_prev = ess.stem_width
    for A, d_i, w_i, w2_i in zip(ess.pixels, d, w, w2):
        total = total + 10 * A * w_prev * w_i          # first block: 3×3 conv + 1×1 projection
        total = total + 9 * A * w2_i * (2 * d_i - 1)   # every other 3×3 conv of the stage
        w_prev = w_i
    return total + w_prev * ess.num_classes            # linear head


def arch_flops(arch: Arch, ess: ExpandedSearchSpace) -> int:
    """FLOPs(a), exact, in multiply-accumulates (§4.2's MF/GF)."""
    arch.validate(ess)
    return _flops_polynomial(ess, arch.depths, arch.widths, [w * w for w in arch.widths])


def batch_arch_flops(depths: torch.Tensor, widths: torch.Tensor, ess: ExpandedSearchSpace) -> torch.Tensor:
    """FLOPs of many architectures given as (B, N) integer tensors, exact in int64."""
    d, w = depths.long(), widths.long()
    return _flops_polynomial(ess, d.unbind(1), w.unbind(1), (w * w).unbind(1))


def arch_params(arch: Arch, ess: ExpandedSearchSpace) -> int:
    """Parameters of ``build(arch)``: conv weights (no bias), BN γ and β, the linear layer."""
    arch.validate(ess)
    total = 9 * ess.in_channels * ess.stem_width + 2 * ess.stem_width
    w_prev = ess.stem_width
    for d_i, w_i in zip(arch.depths, arch.widths):
        total += 10 * w_prev * w_i + 9 * w_i * w_i + 3 * 2 * w_i      # first block + projection, 3 BNs
        total += (d_i - 1) * (18 * w_i * w_i + 2 * 2 * w_i)           # identity blocks, 2 BNs each
        w_prev = w_i
    return total + w_prev * ess.num_classes + ess.num_classes


# ---- Spaces: the mean under the uniform P_θ, in closed form --------------------------------------

def _range_moments(r: Range) -> tuple[Fraction, Fraction]:
    """E[v] and E[v²] for v uniform on the integers lo..hi, exactly."""
    lo, hi = r
    sum_sq = lambda m: m * (m + 1) * (2 * m + 1) // 6
    return Fraction(lo + hi, 2), Fraction(sum_sq(hi) - sum_sq(lo - 1), hi - lo + 1)


def space_flops(space: Space, ess: ExpandedSearchSpace) -> float:
    """FLOPs(𝒜) = E_{a~U(𝒜)}[FLOPs(a)] (Eq. 4's FLOPs of a space), exact up to the final rounding."""
    space.validate(ess)
    d = [_range_moments(r)[0] for r in space.depths]
    w, w2 = zip(*(_range_moments(r) for r in space.widths))
    return float(_flops_polynomial(ess, d, w, w2))


def candidate_flops(ess: ExpandedSearchSpace) -> torch.Tensor:
    """FLOPs of every candidate space at once, float64 (num_spaces,), indexed like ``ess.space_at``."""
    moments = OptionMoments.of(Options.nss(ess))
    nd, nw, n = len(ess.depth_ranges), len(ess.width_ranges), ess.num_stages
    d, w, w2 = [], [], []
    for i in range(n):   # stage i varies along axis i of an (nd·nw,)*N grid; code = depth index·nw + width index
        shape = [-1 if j == i else 1 for j in range(n)]
        d.append(moments.depth[i].repeat_interleave(nw).view(shape))
        w.append(moments.width[i].repeat(nd).view(shape))
        w2.append(moments.width_sq[i].repeat(nd).view(shape))
    return _flops_polynomial(ess, d, w, w2).reshape(-1)


def flops_range(options: Options, ess: ExpandedSearchSpace) -> tuple[float, float]:
    """Smallest and largest FLOPs of the spaces that ``options`` can form.

    FLOPs grow with every moment, and options are sorted, so the extremes are all-first and
    all-last. For ``Options.nss(ess)`` this is the range of the candidate spaces; for
    ``Options.nas(space)`` it is the range of architectures in ``space``.
    """
    n = options.num_stages
    return tuple(space_flops(options.space([k] * n, [k] * n), ess) for k in (0, -1))


# ---- Differentiable expected FLOPs over option weights g -----------------------------------------

@dataclass(frozen=True)
class OptionMoments:
    """Per stage, per option k: E[d], E[w] and E[w²] of the option's range, as float64 tensors."""

    depth: tuple[torch.Tensor, ...]
    width: tuple[torch.Tensor, ...]
    width_sq: tuple[torch.Tensor, ...]

    @classmethod
    def of(cls, options: Options, device: torch.device | str | None = None) -> OptionMoments:
        def table(ranges_per_stage, which):
            return tuple(torch.tensor([float(_range_moments(r)[which]) for r in ranges],
                                      dtype=torch.float64, device=device) for ranges in ranges_per_stage)
        return cls(depth=table(options.depths, 0), width=table(options.widths, 0),
                   width_sq=table(options.widths, 1))


def expected_flops(g_depth: Sequence[torch.Tensor], g_width: Sequence[torch.Tensor],
                   moments: OptionMoments, ess: ExpandedSearchSpace) -> torch.Tensor:
    """F(g): FLOPs with each moment replaced by its g-weighted sum over options (§3.4; a choice, see the README).

    ``g_depth[i]`` and ``g_width[i]`` are weights over stage i's options (Gumbel-softmax samples or
    probabilities). One-hot g gives exactly ``space_flops`` (range options) or ``arch_flops``
    (single-value options); g = softmax(Θ) gives the expected FLOPs under P_Θ.
    """
    mix = lambda gs, table: [g @ t.to(g.dtype) for g, t in zip(gs, table)]
    return _flops_polynomial(ess, mix(g_depth, moments.depth), mix(g_width, moments.width),
                             mix(g_width, moments.width_sq))


def flops_loss(flops, target: float):
    """L_FLOPs = |FLOPs/FLOPs_target − 1| (Eq. 4)."""
    return abs(flops / target - 1)


def format_flops(flops: float) -> str:
    """In the paper's units (footnote 1), 3 significant digits: 6e8 → '600MF', 1.6e9 → '1.6GF', 1.25e6 → '1.25MF'."""
    if flops <= 0:
        return "0"
    return f"{flops / 1e9:.3g}GF" if flops >= 1e9 else f"{flops / 1e6:.3g}MF"


# ---- Demo ----------------------------------------------------------------------------------------

if __name__ == "__main__":
    ess = ExpandedSearchSpace()
    for name, arch in (("smallest", ess.smallest_arch()), ("largest", ess.largest_arch())):
        print(f"{name:8s} {arch}: {arch_flops(arch, ess):,} FLOPs, {arch_params(arch, ess):,} params")
    g = torch.Generator().manual_seed(0)
    for arch in ess.full_space().sample(g, 3):
        print(f"random   {arch}: {format_flops(arch_flops(arch, ess))}, {arch_params(arch, ess):,} params")
    options = Options.nss(ess)
    lo, hi = flops_range(options, ess)
    print(f"candidate spaces range from {format_flops(lo)} to {format_flops(hi)}")
    for i in torch.randint(ess.num_spaces, (3,), generator=g).tolist():
        space = ess.space_at(i)
        print(f"space #{i:6d} {space}: mean {format_flops(space_flops(space, ess))}")
    uniform = lambda per_stage: [torch.full((len(o),), 1.0 / len(o), dtype=torch.float64) for o in per_stage]
    mean = expected_flops(uniform(options.depths), uniform(options.widths), OptionMoments.of(options), ess).item()
    print(f"expected FLOPs under a uniform Θ: {format_flops(mean)}"
          f" (= the full space's mean {format_flops(space_flops(ess.full_space(), ess))})")
