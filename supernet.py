"""Networks of the Expanded Search Space and the weight-sharing supernet (§3.2, §3.3).

* ``build(arch, ess)``: a plain standalone network for one architecture. Its classes
  (``Network``, ``BasicBlock``) know nothing of supernets; copy them out freely.
* ``SuperNet(ess)``: the largest network, d_max blocks of w_max channels per stage, whose
  weights every architecture shares. It has the same module names as ``build``'s networks, so
  ``extract(arch)`` is a prefix slice of every tensor. Two forwards:
    - ``forward(x, arch)``: the sliced single path used by weight steps. It runs only the first
      d_i blocks and the first w_i channels of every weight, so it costs exactly FLOPs(a).
    - ``forward_masked(...)``: the soft forward used by Θ steps (FBNetV2 [32]). Per stage, a channel
      mask Σ_k g^w_k·prefix_mask(w_k) scales every BN output, and the stage output is
      Σ_k g^d_k·(output after d_k blocks). Gradients reach the option weights g.
* ``recalibrate_bn``: re-estimates BN statistics for one architecture (§4.2's evaluation).

Shortcut (a choice, see the README's choices): the first block of every stage always has a 1×1 conv + BN
projection and all other blocks use the identity. pycls adds the projection only when the
shapes differ; always having it keeps weight sharing uniform and FLOPs one polynomial.

Run ``python supernet.py`` for a short demo.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from space import Arch, ExpandedSearchSpace


# ---- The standalone network ----------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Residual basic block [8]: 3×3 conv, BN, ReLU, 3×3 conv, BN, + shortcut, ReLU."""

    def __init__(self, w_in: int, w_out: int, stride: int, project: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(w_in, w_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w_out)
        self.conv2 = nn.Conv2d(w_out, w_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(w_out)
        self.proj = nn.Conv2d(w_in, w_out, 1, stride, bias=False) if project else None
        self.proj_bn = nn.BatchNorm2d(w_out) if project else None

    def forward(self, x):                                      # (B, w_in, H, W)
        shortcut = x if self.proj is None else self.proj_bn(self.proj(x))
        h = F.relu(self.bn1(self.conv1(x)))                    # (B, w_out, H/s, W/s)
        return F.relu(self.bn2(self.conv2(h)) + shortcut)


class Stem(nn.Module):
    """ResStemCifar (pycls): 3×3 conv, BN, ReLU at full resolution."""

    def __init__(self, w_in: int, w_out: int):
        super().__init__()
        self.conv = nn.Conv2d(w_in, w_out, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(w_out)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Network(nn.Module):
    """Stem, N stages of d_i basic blocks of width w_i, global average pool and a linear head."""

    def __init__(self, arch: Arch, ess: ExpandedSearchSpace):
        super().__init__()
        arch.validate(ess)
        self.arch = arch
        self.stem = Stem(ess.in_channels, ess.stem_width)
        stages, w_in = [], ess.stem_width
        for d, w, s in zip(arch.depths, arch.widths, ess.strides):
            blocks = [BasicBlock(w_in if j == 0 else w, w, s if j == 0 else 1, project=j == 0) for j in range(d)]
            stages.append(nn.Sequential(*blocks))
            w_in = w
        self.stages = nn.ModuleList(stages)
        self.head = nn.Linear(w_in, ess.num_classes)
        for m in self.modules():  # pycls initialisation: He (fan-out) convs, BN γ=1 β=0, linear N(0, 0.01), bias 0
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):                                      # (B, 3, 32, 32)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)                                       # (B, w_i, H_i, W_i)
        return self.head(x.mean((2, 3)))                       # (B, num_classes)


def build(arch: Arch, ess: ExpandedSearchSpace, seed: int | None = None) -> Network:
    """A standalone network for architecture a (§3.2), freshly initialised. With a ``seed``, from torch's CPU
    generator seeded with it, which is then restored: the caller's random stream is left untouched."""
    if seed is None:
        return Network(arch, ess)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return Network(arch, ess)


# ---- Sliced and masked layers (functional, on prefix slices of the supernet's tensors) -----------

def _conv(conv: nn.Conv2d, x: torch.Tensor, c_out: int) -> torch.Tensor:
    """``conv`` restricted to its first ``c_out`` filters and the input's channels."""
    return F.conv2d(x, conv.weight[:c_out, :x.shape[1]], None, conv.stride, conv.padding)


def _global_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       momentum: float, reduce: Callable) -> torch.Tensor:
    """Training-mode BN over the global batch (synchronised BN): ``reduce`` sums each process's
    (count, Σx, Σx²) per channel over the processes, with autograd, so that N processes with a share of
    the batch each normalise as one process with the whole batch would."""
    c, xf = x.shape[1], x.float()
    local = torch.cat([xf.new_full((1,), xf.numel() / c), xf.sum((0, 2, 3)), (xf * xf).sum((0, 2, 3))])
    stats = reduce(local)
    count, mean = stats[0], stats[1:c + 1] / stats[0]
    var = (stats[c + 1:] / count - mean * mean).clamp_min(0)
    with torch.no_grad():
        bn.running_mean[:c].lerp_(mean.to(bn.running_mean.dtype), momentum)
        bn.running_var[:c].lerp_((var * count / (count - 1).clamp_min(1)).to(bn.running_var.dtype), momentum)
    gain = torch.rsqrt(var + bn.eps) * weight
    return ((xf - mean[:, None, None]) * gain[:, None, None] + bias[:, None, None]).to(x.dtype)


@dataclass
class StagePlan:
    """What one stage runs: ``depth`` blocks of ``width`` channels, an optional channel mask
    (width,) and optional depth coefficients {block count j: weight of the output after j blocks}."""

    depth: int
    width: int
    mask: torch.Tensor | None = None
    coeffs: dict[int, torch.Tensor] | None = None


# ---- The supernet --------------------------------------------------------------------------------

class SuperNet(nn.Module):
    """Weight-sharing supernet over an Expanded Search Space (§3.3): d_max blocks of w_max channels."""

    def __init__(self, ess: ExpandedSearchSpace, seed: int | None = None):
        super().__init__()
        self.ess = ess
        largest = build(ess.largest_arch(), ess, seed)   # same module names as every build(arch)
        self.stem, self.stages, self.head = largest.stem, largest.stages, largest.head
        # several processes training one supernet: sums a tensor over them, with autograd, for global-batch
        # BN statistics (``_global_batch_norm``); None in one process
        self.batch_stats_reduce: Callable | None = None

    def forward(self, x: torch.Tensor, arch: Arch) -> torch.Tensor:
        """Sliced single-path forward of architecture a: costs exactly FLOPs(a)."""
        return self.run(x, [StagePlan(d, w) for d, w in zip(arch.depths, arch.widths)])

    def forward_masked(self, x: torch.Tensor, g_depth: Sequence[torch.Tensor], g_width: Sequence[torch.Tensor],
                       depth_values: Sequence[Sequence[int]], width_values: Sequence[Sequence[int]],
                       eps: float = 0.0) -> torch.Tensor:
        """Soft forward of the Θ step (§3.3, FBNetV2 [32]): option k of stage i, d_{i,k} blocks of w_{i,k} channels.

        ``g_depth[i]`` (K_d,) and ``g_width[i]`` (K_w,) weight the options; ``depth_values[i][k]`` and
        ``width_values[i][k]`` are their depth and width (for NSS: drawn inside option k's range). Options whose weight
        is ≤ ``eps`` are left out (but the heaviest of each stage), which cuts the forward to the largest depth and
        width that still matter. The weights may be on the CPU; they are moved here."""
        return self.run(x, self.masked_plan(g_depth, g_width, depth_values, width_values, eps))

    def masked_plan(self, g_depth, g_width, depth_values, width_values, eps: float = 0.0) -> list[StagePlan]:
        """Stage plans for ``forward_masked``: masks via a cumulative sum, depth coefficients via index_add.

        They are built where the weights live (the host, for Θ: no device sync for the flags) and reach the
        supernet's device in one pinned, non-blocking transfer, through which gradients flow back."""
        keep_d, keep_w = _above(g_depth, eps), _above(g_width, eps)
        parts, layout = [], []
        placed = lambda g, values: torch.zeros(max(values), dtype=g.dtype, device=g.device).index_add(
            0, torch.tensor(values, device=g.device) - 1, g)      # Σ of the g_k whose value is j, at index j − 1
        for gd, gw, dv, wv, kd, kw in zip(g_depth, g_width, depth_values, width_values, keep_d, keep_w):
            depth = max(d for d, k in zip(dv, kd) if k)
            width = max(w for w, k in zip(wv, kw) if k)
            blocks = [j for j in sorted(set(dv)) if j <= depth]
            coeffs = placed(gd, dv)[torch.tensor(blocks, device=gd.device) - 1]
            # FBNetV2 channel mask: Σ_k g_k·[c < w_k] = reverse cumulative sum of g placed at w_k − 1
            parts += [coeffs, placed(gw, wv).flip(0).cumsum(0).flip(0)[:width]]
            layout.append((depth, width, blocks))
        flat, device = torch.cat(parts), self.head.weight.device
        if flat.device != device:
            flat = (flat.pin_memory() if device.type == "cuda" else flat).to(device, non_blocking=True)
        chunks = flat.split([n for depth, width, blocks in layout for n in (len(blocks), width)])
        return [StagePlan(depth, width, mask, dict(zip(blocks, coeffs)))
                for (depth, width, blocks), coeffs, mask in zip(layout, chunks[::2], chunks[1::2])]

    def _bn(self, bn: nn.BatchNorm2d, x: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        """``bn`` on the input's channels, as nn.BatchNorm2d would run; ``scale`` folds in the channel mask.

        A channel mask m ≥ 0 multiplying BN's output is the same as multiplying γ and β by m, so the FBNetV2 mask
        costs no extra pass over the activations. With ``batch_stats_reduce`` set (several processes, each holding a
        share of the batch), training-mode statistics are those of the global batch (``_global_batch_norm``)."""
        c = x.shape[1]
        weight, bias = bn.weight[:c], bn.bias[:c]
        if scale is not None:
            weight, bias = weight * scale, bias * scale
        momentum = bn.momentum
        if momentum is None:                  # cumulative average, as nn.BatchNorm2d (costs a host sync)
            momentum = 0.0
            if bn.training and bn.track_running_stats:
                bn.num_batches_tracked.add_(1)
                momentum = 1.0 / float(bn.num_batches_tracked)
        if self.batch_stats_reduce is not None and bn.training:
            return _global_batch_norm(bn, x, weight, bias, momentum, self.batch_stats_reduce)
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], weight, bias, bn.training, momentum, bn.eps)

    def _block(self, block: BasicBlock, x: torch.Tensor, width: int, scale: torch.Tensor | None) -> torch.Tensor:
        """``BasicBlock.forward`` on the first ``width`` channels, every BN output scaled by ``scale``."""
        shortcut = x if block.proj is None else self._bn(block.proj_bn, _conv(block.proj, x, width), scale)
        h = F.relu(self._bn(block.bn1, _conv(block.conv1, x, width), scale))
        # x is already masked (an earlier BN output), so the sum is masked exactly once
        return F.relu(self._bn(block.bn2, _conv(block.conv2, h, width), scale) + shortcut)

    def run(self, x: torch.Tensor, plans: Sequence[StagePlan]) -> torch.Tensor:
        """Forward through the stem (nn.BatchNorm2d's own forward in one process), the planned stages and the head."""
        x = self.stem(x) if self.batch_stats_reduce is None else F.relu(self._bn(self.stem.bn, self.stem.conv(x), None))
        for stage, plan in zip(self.stages, plans):             # x: (B, w_0, H, W)
            mixed = None
            for j in range(plan.depth):
                x = self._block(stage[j], x, plan.width, plan.mask)  # (B, width, H_i, W_i)
                if plan.coeffs is not None and j + 1 in plan.coeffs:
                    term = plan.coeffs[j + 1] * x
                    mixed = term if mixed is None else mixed + term
            x = x if plan.coeffs is None else mixed
        x = x.mean((2, 3))                                     # (B, width)
        return F.linear(x, self.head.weight[:, :x.shape[1]], self.head.bias)

    @torch.no_grad()
    def extract(self, arch: Arch) -> Network:
        """``build(arch)`` holding the supernet's weights and BN buffers (prefix slices), in the same mode."""
        with torch.device("meta"):
            net = build(arch, self.ess)
        ref = next(self.parameters())
        net = net.to_empty(device=ref.device).to(ref.dtype)
        shared = self.state_dict()
        net.load_state_dict({k: shared[k][tuple(slice(0, n) for n in v.shape)]
                             for k, v in net.state_dict().items()})
        return net.train(self.training)


def _above(gs: Sequence[torch.Tensor], eps: float) -> list[list[bool]]:
    """Which option weights exceed eps, per stage, and always each stage's largest (one device→host copy if they are
    on a device). The largest weight of K options is at least 1/K, so below ε < 1/K this keeps exactly the options
    above ε; a larger ε still leaves the forward the option that weighs the most, never no option at all."""
    values, out = iter(torch.cat([g.detach() for g in gs]).tolist()), []
    for g in gs:
        stage = [next(values) for _ in range(len(g))]
        top = stage.index(max(stage))
        out.append([v > eps or k == top for k, v in enumerate(stage)])
    return out


# ---- BN recalibration (§4.2) ---------------------------------------------------------------------

@torch.no_grad()
def recalibrate_bn(model: nn.Module, images: torch.Tensor, arch: Arch | None = None, batch_size: int = 500):
    """Reset BN statistics and re-estimate them as the average over ``images`` of an architecture. ``model`` is a
    standalone network (``arch=None``) or a ``SuperNet`` with the ``arch`` to calibrate; the statistics of the
    supernet's other channels are reset too."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
    was_training = model.training
    model.train()
    forward: Callable = model if arch is None else (lambda x: model(x, arch))
    try:
        for k, chunk in enumerate(images.split(batch_size)):
            for bn in bns:        # momentum 1/(k+1): the cumulative average, without a device sync per layer
                bn.momentum = 1.0 / (k + 1)
            forward(chunk)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
        model.train(was_training)


# ---- Demo ----------------------------------------------------------------------------------------

if __name__ == "__main__":
    from torch.utils.flop_counter import FlopCounterMode

    from flops import arch_flops
    from space import Options

    ess = ExpandedSearchSpace(d_max=4, w_max=32, d_step=2, w_step=8)
    torch.manual_seed(0)
    net = SuperNet(ess).eval()
    x = torch.randn(2, 3, 32, 32)
    print(f"supernet over {ess}: {sum(p.numel() for p in net.parameters()):,} shared parameters")
    for arch in (ess.smallest_arch(), Arch((2, 3, 1), (8, 24, 16)), ess.largest_arch()):
        with FlopCounterMode(display=False) as counter:
            y = net(x[:1], arch)
        same = torch.allclose(y, net.extract(arch).eval()(x[:1]), atol=1e-5)
        print(f"{arch}: sliced forward {counter.get_total_flops() // 2:,} MACs = FLOPs(a) {arch_flops(arch, ess):,}; "
              f"equals extract(arch): {same}")
    options = Options.nss(ess)
    g_d = [torch.softmax(torch.randn(len(o)), 0).requires_grad_() for o in options.depths]
    g_w = [torch.softmax(torch.randn(len(o)), 0).requires_grad_() for o in options.widths]
    values_d = [[hi for _, hi in o] for o in options.depths]
    values_w = [[hi for _, hi in o] for o in options.widths]
    net.forward_masked(x, g_d, g_w, values_d, values_w).logsumexp(1).sum().backward()
    print("masked forward: option weights of stage 1 got gradients", g_w[0].grad.abs().sum().item() > 0)
