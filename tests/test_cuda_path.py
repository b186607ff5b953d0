"""The CUDA branches, checked on the CPU.

* bf16: with ``amp`` forced on, CPU autocast runs the code CUDA runs (bf16 autocast, channels_last); the weight
  step, the Θ step and global-batch BN agree with fp32 within the tolerances stated below.
* fake CUDA (``tests/fake_cuda.py``): the batches, the sliced and masked forwards and the forward halves of the
  weight and Θ steps run on fake CUDA tensors; nothing of another device meets a CUDA tensor, every generator is on
  its tensor's device, nothing is read back to the host, and the transfers stay within the budget: a weight step
  makes none, a Θ step at most one blocking copy each way (its masked plan goes in one pinned, non-blocking copy).
* on a real GPU (``-m cuda``; skipped without one): the same budget, recorded while the steps run.
"""
import dataclasses
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import data as data_mod
from search import SearchSettings, Searcher
from space import ExpandedSearchSpace, Options
from supernet import SuperNet
from train import autocast

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_cuda import CUDA, Backward, FakeCuda, Recorder  # noqa: E402

ESS = ExpandedSearchSpace.reduced()
SETTINGS = SearchSettings(target=6e6, epochs=4, warmup_epochs=1, batch_size=8, seed=0)
CPU = torch.device("cpu")

# Tolerances. bf16 keeps 8 bits of mantissa (a relative step of 2^-8 ≈ 0.4% per rounding). Measured on the reduced
# supernet over 3 batches (bf16 against fp32): logits 0.5–1.1%; all weight gradients, as one vector, 2–11%; Θ's
# gradients in a Θ step 0.3–0.5% (the FLOPs term, computed on the host in fp32, dominates them at initialisation);
# the gradients of the cross-entropy alone with respect to the option weights or Θ, 12–36% (each is a sum over the batch
# and the channels of products that nearly cancel); the cross-entropy within 5e-5. A single small gradient tensor
# can be far off in relative terms (a 1-channel stage's are all but zero in fp32), so gradients go as one vector.
LOGITS_RTOL = 0.03          # ‖bf16 − fp32‖ / ‖fp32‖ of the logits
WEIGHT_GRAD_RTOL = 0.25     # the same of the weights' gradients, as one vector
THETA_GRAD_RTOL = 0.03      # the same of Θ's gradients in a Θ step, as one vector
OPTION_GRAD_RTOL = 0.6      # the same of the cross-entropy's gradients with respect to the option weights, or to Θ
                            # (bf16's own noise: only the direction is kept, a cosine above about 0.8)
LOSS_ATOL = 2e-3            # |bf16 − fp32| of the mean cross-entropy (≈ ln 10 = 2.3 here)


def rel(a, b) -> float:
    """‖a − b‖ / ‖b‖, tensors or lists of tensors (flattened into one vector)."""
    a, b = (torch.cat([t.detach().float().flatten() for t in v]) if isinstance(v, list) else v.detach().float()
            for v in (a, b))
    return float((a - b).norm() / b.norm())


def finite(tensors) -> bool:
    return all(bool(t.isfinite().all()) for t in tensors)


def batch(n=8, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 32, 32, generator=g), torch.randint(10, (n,), generator=g)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def fp32_and_bf16(**settings):
    """Two searchers from one seed; the second with amp forced on (bf16 autocast, channels_last) on the CPU."""
    fp32, bf16 = (Searcher(dataclasses.replace(SETTINGS, **settings), ESS, Options.nss(ESS), device=CPU) for _ in range(2))
    bf16.amp = True
    bf16.supernet.to(memory_format=torch.channels_last)
    return fp32, bf16


# ---- bf16 on the CPU -------------------------------------------------------------------------

def test_a_bf16_weight_step_agrees_with_fp32():
    fp32, bf16 = fp32_and_bf16()
    (x, y), (xc, _) = batch(), batch(channels_last=True)
    state = fp32.gen.get_state()
    arch = fp32.theta.sample(fp32.gen, uniform=True).sample(fp32.gen)     # the architecture both steps draw
    fp32.gen.set_state(state)
    with autocast(CPU, True):
        logits = bf16.supernet(xc, arch)
    assert logits.dtype == torch.bfloat16                # autocast ran
    assert rel(logits, fp32.supernet(x, arch)) < LOGITS_RTOL
    losses = [s.weight_step(inp, y, 0.05, uniform=True) for s, inp in ((fp32, x), (bf16, xc))]
    assert abs(float(losses[1]) - float(losses[0])) < LOSS_ATOL
    grads = [[p.grad for p in s.supernet.parameters() if p.grad is not None] for s in (fp32, bf16)]
    assert len(grads[0]) == len(grads[1]) > 20 and [g.shape for g in grads[0]] == [g.shape for g in grads[1]]
    assert finite(grads[1]) and rel(grads[1], grads[0]) < WEIGHT_GRAD_RTOL


@pytest.mark.parametrize("lam", [1.0, 0.0])
def test_a_bf16_theta_step_agrees_with_fp32(lam):
    """λ = 1 (the default): Θ's whole gradient; λ = 0: the cross-entropy's alone, through the masked forward."""
    fp32, bf16 = fp32_and_bf16(lam=lam)
    (x, y), (xc, _) = batch(seed=1), batch(seed=1, channels_last=True)
    (task32, flops32, ran32), (task16, flops16, ran16) = fp32.theta_step(x, y, 1.0), bf16.theta_step(xc, y, 1.0)
    assert abs(float(task16) - float(task32)) < LOSS_ATOL
    assert torch.equal(flops16, flops32) and ran16 == ran32     # the FLOPs term is the host's, in fp32 either way
    grads = [[p.grad for p in s.theta.parameters()] for s in (fp32, bf16)]
    assert finite(grads[1]) and rel(grads[1], grads[0]) < (THETA_GRAD_RTOL if lam else OPTION_GRAD_RTOL)


@pytest.mark.parametrize("masked", [False, True], ids=["sliced", "masked"])
def test_global_batch_bn_under_autocast_agrees_with_plain_bn(masked):
    """``batch_stats_reduce`` in a world of one (the identity): the global-batch BN path under bf16 autocast gives
    the outputs, gradients and running statistics of nn.BatchNorm2d's under bf16 autocast, and both those of fp32."""
    x, y = batch(seed=2, channels_last=True)
    options, gen = Options.nss(ESS), torch.Generator().manual_seed(0)
    g = [torch.softmax(torch.randn(len(o), generator=gen), 0) for o in options.depths + options.widths]
    values = options.draw_values(gen)
    runs = []
    for reduce, amp in ((None, False), (None, True), (lambda t: t, True)):
        net = SuperNet(ESS, seed=0).to(memory_format=torch.channels_last)
        net.batch_stats_reduce = reduce
        gs = [t.clone().requires_grad_() for t in g]
        with autocast(CPU, amp):
            k = len(options.depths)
            logits = net.forward_masked(x, gs[:k], gs[k:], *values) if masked else net(x, ESS.largest_arch())
            loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        runs.append({"logits": logits, "loss": loss.detach(), "weights": [p.grad for p in net.parameters() if p.grad is not None],
                     "options": [t.grad for t in gs], "stats": [b for n, b in net.named_buffers() if "running" in n]})
    fp32, plain, glob = runs
    assert glob["logits"].dtype == plain["logits"].dtype == torch.bfloat16
    for bf16 in (plain, glob):
        assert rel(bf16["logits"], fp32["logits"]) < LOGITS_RTOL and rel(glob["logits"], plain["logits"]) < LOGITS_RTOL
        assert abs(float(bf16["loss"]) - float(fp32["loss"])) < LOSS_ATOL
        assert finite(bf16["weights"]) and rel(bf16["weights"], fp32["weights"]) < WEIGHT_GRAD_RTOL
        assert rel(glob["weights"], plain["weights"]) < WEIGHT_GRAD_RTOL
        if masked:
            assert finite(bf16["options"]) and rel(bf16["options"], fp32["options"]) < OPTION_GRAD_RTOL
            assert rel(glob["options"], plain["options"]) < OPTION_GRAD_RTOL
        for a, b in zip(fp32["stats"], bf16["stats"]):   # bf16 activations, fp32 statistics
            assert torch.allclose(b, a, rtol=0.02, atol=0.02)


# ---- fake CUDA -------------------------------------------------------------------------------

@pytest.fixture
def fake(monkeypatch):
    with FakeCuda(monkeypatch) as mode:
        yield mode


def cuda_searcher() -> Searcher:
    """A searcher on fake CUDA with amp on (bf16 autocast, channels_last), as a CUDA run builds it."""
    net = SuperNet(ESS, seed=0).to(memory_format=torch.channels_last).to(CUDA)
    return Searcher(SETTINGS, ESS, Options.nss(ESS), supernet=net, device=CUDA, amp=True)


def cuda_batches(fake):
    """A batch of each half of the search split, as nss.run_search draws them: data on the device, its generator."""
    data = data_mod.load("synthetic", synthetic_train=64, synthetic_test=8).to(CUDA)
    loaders = data_mod.search_loaders(data, 0, 8, data_mod.make_generator(CUDA, 1), channels_last=True)
    fake.reset()
    batches = [next(iter(loader)) for loader in loaders]
    assert fake.transfers == [] and fake.problems == []          # a batch costs no transfer
    assert all(t.device.type == "cuda" for b in batches for t in b) and batches[0][0].is_contiguous(
        memory_format=torch.channels_last)
    return batches


def bf16_convolutions(fake) -> int:
    return sum(func is torch.ops.aten.convolution.default and dtypes[0] == torch.bfloat16 for func, dtypes in fake.ops)


def test_fake_cuda_sees_what_it_checks(fake):
    """The helper itself: it records a blocking and a pinned copy, a host tensor meeting a CUDA one, a host generator
    on a CUDA tensor and a read-back; autocast stays on for cuda."""
    a = torch.ones(4).to(CUDA)
    torch.ones(4).pin_memory().to(CUDA, non_blocking=True)
    assert [t.blocking for t in fake.to_device()] == [True, False] and a.device.type == "cuda"
    a * torch.tensor(2.0)
    torch.rand(4, generator=torch.Generator(), device=CUDA)
    with pytest.raises(Exception):
        bool(a.sum() > 0)
    assert [p.split(" ")[-1] for p in fake.problems] != [] and len(fake.problems) == 3
    assert "host tensor" in fake.problems[0] and "generator" in fake.problems[1] and "reads" in fake.problems[2]
    with autocast(CUDA, True):
        assert F.conv2d(torch.ones(1, 3, 8, 8).to(CUDA), torch.ones(4, 3, 3, 3).to(CUDA)).dtype == torch.bfloat16


@pytest.mark.slow
def test_the_sliced_and_masked_forwards_on_fake_cuda(fake):
    searcher = cuda_searcher()
    (x, _), _ = cuda_batches(fake)
    with autocast(CUDA, True):
        logits = searcher.supernet(x, ESS.largest_arch())
    assert logits.device.type == "cuda" and logits.shape == (8, 10) and bf16_convolutions(fake) > 0
    assert fake.transfers == [] and fake.problems == []
    g_d, g_w = searcher.theta.gumbel(1.0, searcher.gen)                # on the host, where Θ lives
    with autocast(CUDA, True):
        logits = searcher.supernet.forward_masked(x, [g[0] for g in g_d], [g[0] for g in g_w],
                                                  *searcher.options.draw_values(searcher.gen), SETTINGS.eps)
    assert logits.device.type == "cuda" and fake.problems == []
    # the masks and depth coefficients of every stage reach the device in one pinned, non-blocking copy
    assert [(t.src, t.dst, t.blocking) for t in fake.transfers] == [("cpu", "cuda", False)], fake.transfers


def test_the_transfer_budget_of_a_weight_step_and_a_theta_step(fake):
    """A weight step makes no transfer; a Θ step at most one blocking host→device copy and at most one device→host
    copy, its backward's included (counted from the forward's graph: each host→device copy that the loss depends on
    comes back as one device→host copy). Nothing is read back, nothing of the host meets a CUDA tensor."""
    searcher = cuda_searcher()
    (x, y), (xv, yv) = cuda_batches(fake)
    with pytest.raises(Backward) as stop:
        searcher.weight_step(x, y, 0.05)
    assert stop.value.outputs[0].device.type == "cuda" and bf16_convolutions(fake) > 0
    assert fake.transfers == [] and fake.problems == []
    fake.reset()
    with pytest.raises(Backward) as stop:
        searcher.theta_step(xv, yv, 1.0)
    assert bf16_convolutions(fake) > 0 and fake.problems == []
    blocking = [t for t in fake.to_device() if t.blocking]
    to_host = fake.to_host() + fake.backward_copies(stop.value.outputs)
    assert len(blocking) <= 1, f"{len(blocking)} blocking host→device copies in a Θ step: {blocking}"
    assert len(to_host) <= 1, f"{len(to_host)} device→host copies in a Θ step (forward and backward): {to_host}"


# ---- a real GPU ------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_steps_keep_the_transfer_budget():
    """The same budget on a real device, the backward's copies recorded as they happen; bf16 gradients finite."""
    searcher = Searcher(SETTINGS, ESS, Options.nss(ESS), device="cuda", amp=True)
    x, y = (t.to("cuda") for t in batch(channels_last=True))
    recorder = Recorder()
    with recorder:
        searcher.weight_step(x, y, 0.05)
    assert recorder.transfers == [] and recorder.problems == []
    recorder.reset()
    with recorder:
        searcher.theta_step(x, y, 1.0)
    torch.cuda.synchronize()
    assert recorder.problems == []
    assert len([t for t in recorder.to_device() if t.blocking]) <= 1 and len(recorder.to_host()) <= 1, recorder.transfers
    assert all(p.grad.isfinite().all() for p in searcher.theta.parameters())
    assert all(p.grad.isfinite().all() for p in searcher.supernet.parameters() if p.grad is not None)
