"""supernet.py: sliced and masked forwards against standalone networks and torch's FLOP counter."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from flops import arch_flops
from space import Arch, ExpandedSearchSpace, Options, Space
import supernet
from supernet import SuperNet, build, recalibrate_bn

ESS = ExpandedSearchSpace.reduced()


def randomised_supernet(ess=ESS, seed=0, dtype=torch.float64):
    """A supernet whose BN weights and statistics are random, so that slicing mistakes show."""
    torch.manual_seed(seed)
    net = SuperNet(ess).to(dtype)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def random_archs(n, seed=0, ess=ESS):
    return ess.full_space().sample(torch.Generator().manual_seed(seed), n)


def test_build_structure():
    net = build(Arch((2, 3, 1), (4, 8, 16)), ESS)
    assert [len(s) for s in net.stages] == [2, 3, 1]
    for stage, w in zip(net.stages, (4, 8, 16)):
        assert stage[0].proj is not None and all(b.proj is None for b in list(stage)[1:])
        assert all(b.conv2.out_channels == w for b in stage)
    assert [s[0].conv1.stride for s in net.stages] == [(1, 1), (2, 2), (2, 2)]
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_sliced_forward_equals_extracted_network():
    net = randomised_supernet()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    for arch in random_archs(20):
        standalone = net.extract(arch).eval()
        assert isinstance(standalone, nn.Module) and not isinstance(standalone, SuperNet)
        assert torch.allclose(net(x, arch), standalone(x), atol=1e-10, rtol=0)


def test_extract_copies_prefix_slices():
    net = randomised_supernet()
    arch = Arch((2, 1, 3), (5, 9, 3))
    sub = net.extract(arch)
    assert torch.equal(sub.stages[1][0].conv1.weight, net.stages[1][0].conv1.weight[:9, :5])
    assert torch.equal(sub.stages[2][2].bn2.running_var, net.stages[2][2].bn2.running_var[:3])
    assert torch.equal(sub.head.weight, net.head.weight[:, :3])


def one_hot_weights(arch, options):
    """One-hot option weights (NAS options: single values) selecting ``arch``."""
    oh = lambda k, n: torch.nn.functional.one_hot(torch.tensor(k), n).double()
    g_d = [oh(d - o[0][0], len(o)) for d, o in zip(arch.depths, options.depths)]
    g_w = [oh(w - o[0][0], len(o)) for w, o in zip(arch.widths, options.widths)]
    values = lambda opts: [[lo for lo, _ in o] for o in opts]
    return g_d, g_w, values(options.depths), values(options.widths)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_one_hot_masked_forward_equals_sliced(mode):
    net = randomised_supernet()
    net.train(mode == "train")
    options = Options.nas(ESS.full_space())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    for arch in random_archs(10, seed=1):
        g_d, g_w, dv, wv = one_hot_weights(arch, options)
        assert torch.allclose(net.forward_masked(x, g_d, g_w, dv, wv), net(x, arch), atol=1e-10, rtol=0)


def test_one_hot_masked_forward_over_ranges_equals_sliced():
    """NSS options: ranges, each with one depth and width drawn inside it; one-hot picks that draw."""
    net = randomised_supernet()
    options = Options.nss(ESS)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    for _ in range(5):
        dv = [[Space(((lo, hi),), ((1, 1),)).sample(g).depths[0] for lo, hi in o] for o in options.depths]
        wv = [[Space(((1, 1),), ((lo, hi),)).sample(g).widths[0] for lo, hi in o] for o in options.widths]
        kd = torch.randint(2, (3,), generator=g).tolist()
        kw = torch.randint(4, (3,), generator=g).tolist()
        g_d = [torch.nn.functional.one_hot(torch.tensor(k), 2).double() for k in kd]
        g_w = [torch.nn.functional.one_hot(torch.tensor(k), 4).double() for k in kw]
        arch = Arch(tuple(dv[i][kd[i]] for i in range(3)), tuple(wv[i][kw[i]] for i in range(3)))
        assert torch.allclose(net.forward_masked(x, g_d, g_w, dv, wv), net(x, arch), atol=1e-10, rtol=0)


def soft_weights(options, seed):
    torch.manual_seed(seed)
    g_d = [torch.randn(len(o), dtype=torch.float64).softmax(0).requires_grad_() for o in options.depths]
    g_w = [torch.randn(len(o), dtype=torch.float64).softmax(0).requires_grad_() for o in options.widths]
    return g_d, g_w


def test_masked_forward_gradients_reach_option_weights():
    net = randomised_supernet().train()
    options = Options.nss(ESS)
    g_d, g_w = soft_weights(options, 0)
    dv = [[hi for _, hi in o] for o in options.depths]
    wv = [[hi for _, hi in o] for o in options.widths]
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    loss = nn.functional.cross_entropy(net.forward_masked(x, g_d, g_w, dv, wv), torch.arange(4))
    loss.backward()
    for g in g_d + g_w:
        assert g.grad is not None and g.grad.abs().max() > 0


def test_masked_forward_is_a_mixture_of_depths_and_masks():
    """Against a reference built from standalone pieces: a soft width mask on a one-block stage."""
    ess = ExpandedSearchSpace(num_stages=1, d_max=2, w_max=4, d_step=1, w_step=1, strides=(1,))
    net = randomised_supernet(ess)
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    g_w = [torch.tensor([0.25, 0.75], dtype=torch.float64)]
    mask = torch.tensor([1.0, 1.0, 0.75, 0.75], dtype=torch.float64)   # 0.25·[1100] + 0.75·[1111]
    g_d = [torch.tensor([0.4, 0.6], dtype=torch.float64)]
    out = net.forward_masked(x, g_d, g_w, [[1, 2]], [[2, 4]])
    # reference: every BN output multiplied by the mask, stage output 0.4·h1 + 0.6·h2
    bn = lambda m, t: nn.functional.batch_norm(t, m.running_mean, m.running_var, m.weight, m.bias, False) * mask[:, None, None]
    conv = lambda m, t: nn.functional.conv2d(t, m.weight, None, m.stride, m.padding)
    s = net.stem(x)
    b0, b1 = net.stages[0][0], net.stages[0][1]
    h1 = torch.relu(bn(b0.bn2, conv(b0.conv2, torch.relu(bn(b0.bn1, conv(b0.conv1, s))))) + bn(b0.proj_bn, conv(b0.proj, s)))
    h2 = torch.relu(bn(b1.bn2, conv(b1.conv2, torch.relu(bn(b1.bn1, conv(b1.conv1, h1))))) + h1)
    y = 0.4 * h1 + 0.6 * h2
    ref = nn.functional.linear(y.mean((2, 3)), net.head.weight, net.head.bias)
    assert torch.allclose(out, ref, atol=1e-12)


def test_truncation_changes_nothing_measurable():
    net = randomised_supernet(dtype=torch.float32)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    # peaked weights, as late in a search: the large options carry ~1e-9
    g_d = [torch.tensor([1e-9, 1.0, 1e-9, 1e-9]) for _ in range(3)]
    g_w = [torch.cat([torch.rand(8), torch.full((8,), 1e-9)]) for _ in range(3)]
    g_w = [g / g.sum() for g in g_w]
    dv = [[1, 2, 3, 4]] * 3
    wv = [list(range(1, 17))] * 3
    full = net.forward_masked(x, g_d, g_w, dv, wv, eps=0.0)
    cut = net.forward_masked(x, g_d, g_w, dv, wv, eps=1e-6)
    plan = net.masked_plan(g_d, g_w, dv, wv, eps=1e-6)
    assert [(p.depth, p.width) for p in plan] == [(2, 8)] * 3        # really truncated
    assert (cut - full).abs().max() <= 1e-5 * full.abs().max()


@pytest.mark.slow
def test_sliced_cost_scales_with_the_architecture():
    """Counted during SuperNet.forward on the default (full-size) space: exactly FLOPs(a)."""
    ess = ExpandedSearchSpace()
    with torch.device("meta"):
        net = SuperNet(ess).eval()
        x = torch.zeros(1, 3, 32, 32)
    archs = ess.full_space().sample(torch.Generator().manual_seed(0), 10) + [ess.smallest_arch()]
    for arch in archs:
        with FlopCounterMode(display=False) as counter:
            net(x, arch)
        assert counter.get_total_flops() // 2 == arch_flops(arch, ess)


def test_recalibrated_supernet_equals_recalibrated_standalone():
    net = randomised_supernet()
    images = torch.randn(40, 3, 32, 32, dtype=torch.float64)
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    for arch in random_archs(3, seed=4):
        standalone = net.extract(arch)
        recalibrate_bn(standalone, images, batch_size=16)
        recalibrate_bn(net, images, arch=arch, batch_size=16)
        assert not net.training and not standalone.training
        assert torch.allclose(net(x, arch), standalone(x), atol=1e-10, rtol=0)


def test_recalibration_estimates_the_average_batch_statistics():
    net = build(Arch((1, 1, 1), (4, 4, 4)), ESS).double()
    images = torch.randn(30, 3, 32, 32, dtype=torch.float64)
    recalibrate_bn(net, images, batch_size=10)
    with torch.no_grad():
        z = [net.stem.conv(c) for c in images.split(10)]
    mean = torch.stack([t.mean((0, 2, 3)) for t in z]).mean(0)
    var = torch.stack([t.var((0, 2, 3), unbiased=True) for t in z]).mean(0)
    assert torch.allclose(net.stem.bn.running_mean, mean) and torch.allclose(net.stem.bn.running_var, var)
    assert net.stem.bn.momentum == 0.1     # restored


def test_bf16_autocast_and_channels_last():
    net = randomised_supernet(dtype=torch.float32).train().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    arch = Arch((2, 3, 1), (8, 16, 12))
    ref = net(x, arch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, arch)
        options = Options.nss(ESS)
        g_d, g_w = soft_weights(options, 0)
        g_d, g_w = [g.float().detach().requires_grad_() for g in g_d], [g.float().detach().requires_grad_() for g in g_w]
        masked = net.forward_masked(x, g_d, g_w, [[2, 4]] * 3, [[4, 8, 12, 16]] * 3)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05
    masked.float().sum().backward()
    assert all(torch.isfinite(g.grad).all() and g.grad.abs().max() > 0 for g in g_w)


def test_global_batch_norm_over_one_process_is_batch_norm():
    """The synchronised BN of several processes, with a world of one (the sum over processes is x itself),
    is nn.BatchNorm2d: output, running statistics and gradients."""
    torch.manual_seed(0)
    ref, bn = nn.BatchNorm2d(6), nn.BatchNorm2d(6)
    with torch.no_grad():
        for m in (ref, bn):
            m.weight.copy_(torch.linspace(0.5, 1.5, 6))
            m.bias.copy_(torch.linspace(-1, 1, 6))
    x = torch.randn(8, 4, 5, 5) * 3 + 1
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected = F.batch_norm(xa, ref.running_mean[:4], ref.running_var[:4], ref.weight[:4], ref.bias[:4], True, 0.1, ref.eps)
    got = supernet._global_batch_norm(bn, xb, bn.weight[:4], bn.bias[:4], 0.1, lambda t: t)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(bn.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(bn.running_var, ref.running_var, atol=1e-5)
    w = torch.randn_like(got)
    (expected * w).sum().backward()
    (got * w).sum().backward()
    assert torch.allclose(xb.grad, xa.grad, atol=1e-4)
    assert torch.allclose(bn.weight.grad, ref.weight.grad, atol=1e-4)
