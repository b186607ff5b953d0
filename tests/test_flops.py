"""flops.py against independent references: torch's FLOP counter, module parameter counts,
brute-force enumeration, Monte Carlo and finite differences."""
import itertools
from fractions import Fraction

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from flops import (OptionMoments, arch_flops, arch_params, batch_arch_flops, candidate_flops, expected_flops,
                   flops_loss, flops_range, space_flops)
from space import ExpandedSearchSpace, Options, Space
from supernet import build

DEFAULT = ExpandedSearchSpace()
REDUCED = ExpandedSearchSpace.reduced()


def counted_macs(model, ess, device="meta"):
    """torch's FlopCounterMode total on one image, ÷ 2 (it counts 2 FLOPs per multiply-accumulate)."""
    x = torch.zeros(1, ess.in_channels, ess.image_size, ess.image_size, device=device)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def meta_build(arch, ess):
    with torch.device("meta"):
        return build(arch, ess).eval()


def sample_archs():
    """50 random architectures and the extremes; all but 4 of the random ones run with the slow tests."""
    g = torch.Generator().manual_seed(2021)
    archs = [DEFAULT.smallest_arch(), DEFAULT.largest_arch()] + DEFAULT.full_space().sample(g, 50)
    return [pytest.param(a, marks=[pytest.mark.slow] if i >= 6 else []) for i, a in enumerate(archs)]


@pytest.mark.parametrize("arch", sample_archs(), ids=lambda a: str(a))
def test_arch_flops_and_params_match_torch(arch):
    model = meta_build(arch, DEFAULT)
    assert arch_flops(arch, DEFAULT) == counted_macs(model, DEFAULT)
    assert arch_params(arch, DEFAULT) == sum(p.numel() for p in model.parameters())


def test_largest_network_figure():
    assert arch_flops(DEFAULT.largest_arch(), DEFAULT) == 99_220_902_912
    assert arch_flops(DEFAULT.smallest_arch(), DEFAULT) == 621_514


@pytest.mark.parametrize("ess", [REDUCED, ExpandedSearchSpace(d_max=2, w_max=8, d_step=1, w_step=2, num_classes=7,
                                                                strides=(2, 1, 2), image_size=20, stem_width=5)])
def test_counts_on_real_tensors_of_other_configs(ess):
    """The same equality computed on the CPU with real tensors, for non-default configs too."""
    for arch in ess.full_space().sample(torch.Generator().manual_seed(0), 5):
        model = build(arch, ess).eval()
        assert arch_flops(arch, ess) == counted_macs(model, ess, device="cpu")
        assert arch_params(arch, ess) == sum(p.numel() for p in model.parameters())


def test_batch_arch_flops_matches_scalar():
    archs = [p.values[0] for p in sample_archs()]
    d = torch.tensor([a.depths for a in archs])
    w = torch.tensor([a.widths for a in archs])
    assert batch_arch_flops(d, w, DEFAULT).tolist() == [arch_flops(a, DEFAULT) for a in archs]


def all_archs(space):
    """Every architecture of a space as (n, N) tensors."""
    axes = [range(lo, hi + 1) for lo, hi in space.depths + space.widths]
    grid = torch.tensor(list(itertools.product(*axes)))
    n = space.num_stages
    return grid[:, :n], grid[:, n:]


def brute_force_mean(space, ess):
    d, w = all_archs(space)
    f = batch_arch_flops(d, w, ess)
    return Fraction(int(f.sum()), len(f))


def test_space_flops_equals_enumeration_on_reduced_space():
    g = torch.Generator().manual_seed(0)
    spaces = [REDUCED.space_at(i) for i in torch.randint(REDUCED.num_spaces, (100,), generator=g).tolist()]
    spaces += [REDUCED.full_space(), Space(((1, 3), (2, 2), (1, 4)), ((3, 11), (1, 16), (7, 7)))]
    for space in spaces:
        assert space_flops(space, REDUCED) == float(brute_force_mean(space, REDUCED))


def test_space_flops_matches_monte_carlo_on_default_space():
    g = torch.Generator().manual_seed(0)
    spaces = [DEFAULT.full_space()] + [DEFAULT.space_at(i) for i in torch.randint(DEFAULT.num_spaces, (3,), generator=g).tolist()]
    for space in spaces:
        d, w = space.sample_tensors(g, 20_000)
        mc = batch_arch_flops(d, w, DEFAULT).double().mean().item()
        assert abs(mc / space_flops(space, DEFAULT) - 1) < 0.01


def one_hot(index, size):
    return torch.nn.functional.one_hot(torch.tensor(index), size).double()


def test_expected_flops_one_hot_equals_space_and_arch_flops():
    options = Options.nss(DEFAULT)
    moments = OptionMoments.of(options)
    g = torch.Generator().manual_seed(0)
    for i in torch.randint(DEFAULT.num_spaces, (20,), generator=g).tolist():
        space = DEFAULT.space_at(i)
        d_idx, w_idx = DEFAULT.range_indices(space)
        f = expected_flops([one_hot(k, 4) for k in d_idx], [one_hot(k, 16) for k in w_idx], moments, DEFAULT)
        assert f.item() == pytest.approx(space_flops(space, DEFAULT), rel=1e-12)
        # NAS options: single values of the same space
        nas = Options.nas(space)
        arch = space.sample(g)
        d_sel = [one_hot(d - lo, hi - lo + 1) for d, (lo, hi) in zip(arch.depths, space.depths)]
        w_sel = [one_hot(w - lo, hi - lo + 1) for w, (lo, hi) in zip(arch.widths, space.widths)]
        f = expected_flops(d_sel, w_sel, OptionMoments.of(nas), DEFAULT)
        assert f.item() == arch_flops(arch, DEFAULT)


def test_expected_flops_under_softmax_is_the_mean_over_p_theta():
    """With g = softmax(Θ), F(g) = Σ_𝒜 P_Θ(𝒜)·FLOPs(𝒜), checked by summing over every tiny candidate space."""
    options = Options.nss(REDUCED)
    torch.manual_seed(0)
    alpha = [torch.randn(2, dtype=torch.float64) for _ in range(3)]
    beta = [torch.randn(4, dtype=torch.float64) for _ in range(3)]
    pd = [a.softmax(0) for a in alpha]
    pw = [b.softmax(0) for b in beta]
    total = 0.0
    for space in REDUCED.candidate_spaces():
        d, w = REDUCED.range_indices(space)
        p = 1.0
        for i in range(3):
            p *= pd[i][d[i]].item() * pw[i][w[i]].item()
        total += p * space_flops(space, REDUCED)
    f = expected_flops(pd, pw, OptionMoments.of(options), REDUCED)
    assert f.item() == pytest.approx(total, rel=1e-12)


def test_expected_flops_gradient_matches_finite_differences():
    moments = OptionMoments.of(Options.nss(REDUCED))
    torch.manual_seed(1)
    logits = [torch.randn(k, dtype=torch.float64, requires_grad=True) for k in (2, 2, 2, 4, 4, 4)]

    def f(*ls):
        g = [l.softmax(0) for l in ls]
        return expected_flops(g[:3], g[3:], moments, REDUCED) / 1e6

    assert torch.autograd.gradcheck(f, logits, eps=1e-6, atol=1e-6)


def test_flops_loss_and_range():
    assert flops_loss(torch.tensor(2.0e9), 1.6e9).item() == pytest.approx(0.25)
    assert flops_loss(1.2e9, 1.6e9) == pytest.approx(0.25)
    lo, hi = flops_range(Options.nss(REDUCED), REDUCED)
    all_f = [space_flops(s, REDUCED) for s in REDUCED.candidate_spaces()]
    assert (lo, hi) == (min(all_f), max(all_f))
    space = Space(((1, 3), (2, 2), (1, 4)), ((3, 11), (1, 16), (7, 7)))
    d, w = all_archs(space)
    f = batch_arch_flops(d, w, REDUCED)
    assert flops_range(Options.nas(space), REDUCED) == (f.min().item(), f.max().item())


def test_candidate_flops_in_index_order():
    every = candidate_flops(REDUCED)
    assert every.shape == (REDUCED.num_spaces,)
    assert every.tolist() == pytest.approx([space_flops(s, REDUCED) for s in REDUCED.candidate_spaces()], rel=1e-12)
    default = candidate_flops(DEFAULT)
    g = torch.Generator().manual_seed(0)
    for i in torch.randint(DEFAULT.num_spaces, (50,), generator=g).tolist():
        assert default[i].item() == pytest.approx(space_flops(DEFAULT.space_at(i), DEFAULT), rel=1e-12)
    assert (default.min().item(), default.max().item()) == pytest.approx(flops_range(Options.nss(DEFAULT), DEFAULT))
