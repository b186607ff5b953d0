"""The pieces of §3.3–3.4 on their own: Θ's Gumbel-softmax draws and the Elite Space's choice of the closest of n."""
import pytest
import torch
from scipy import stats

from flops import space_flops
from search import Theta, elite_space
from space import ExpandedSearchSpace, Options

ESS = ExpandedSearchSpace.reduced()
DRAWS = 20_000
# Tolerance: a frequency over 20,000 draws has a standard error of at most 0.0035; 0.015 is over 4 of them.
FREQUENCY_ATOL = 0.015


def theta_with(logits_per_stage):
    theta = Theta(Options.nss(ESS))
    with torch.no_grad():
        for params in (theta.alpha, theta.beta):
            for p, logits in zip(params, logits_per_stage):
                p.copy_(torch.tensor(logits[:len(p)], dtype=torch.float32))
    return theta


LOGITS = [[1.5, -0.5, 0.3, -2.0], [0.0, 2.0, -1.0, 0.5], [-1.0, -1.0, 1.0, 0.2]]


@pytest.mark.parametrize("tau", [0.5, 1.0, 5.0])
def test_gumbel_max_of_the_draws_follows_softmax_theta(tau):
    """argmax of a Gumbel-softmax draw is a sample of softmax(Θ) at every τ (the Gumbel-max trick [14]): the
    frequencies match P_Θ within FREQUENCY_ATOL, and scipy's chi-square test does not reject them."""
    theta = theta_with(LOGITS)
    g_d, g_w = theta.gumbel(tau, torch.Generator().manual_seed(0), m=DRAWS)
    p_d, p_w = (list(map(torch.Tensor.detach, ps)) for ps in theta.probs())
    for g, p in zip(g_d + g_w, p_d + p_w):
        assert g.shape == (DRAWS, len(p)) and torch.allclose(g.sum(-1), torch.ones(DRAWS), atol=1e-5)
        counts = torch.bincount(g.argmax(-1), minlength=len(p)).double()
        assert (counts / DRAWS - p.double()).abs().max() < FREQUENCY_ATOL
        assert stats.chisquare(counts.numpy(), (p.double() / p.double().sum() * DRAWS).numpy()).pvalue > 1e-3


def test_the_temperature_sharpens_the_draws_and_they_carry_gradient():
    """Small τ: draws near one-hot; large τ: near uniform (over a stage's 4 widths); d g / d Θ exists (the Θ step's path)."""
    theta = theta_with(LOGITS)
    peak = lambda tau: float(theta.gumbel(tau, torch.Generator().manual_seed(1), m=2000)[1][0].detach().max(-1).values.mean())
    assert peak(0.05) > 0.95 and peak(100.0) < 0.3 and peak(0.05) > peak(1.0) > peak(100.0)
    _, g_w = theta.gumbel(1.0, torch.Generator().manual_seed(2))
    (g_w[0][0] * torch.arange(4.0)).sum().backward()
    assert theta.beta[0].grad is not None and theta.beta[0].grad.abs().sum() > 0


def test_elite_space_keeps_the_closest_of_n_samples():
    """The n candidates are n draws of P_Θ (the same as Θ.sample with the same generator), their FLOPs are the
    space FLOPs, and the Elite Space is the one of least |FLOPs/target − 1|."""
    theta, target, n = theta_with(LOGITS), 6e6, 7
    elite = elite_space(theta, torch.Generator().manual_seed(5), n, target, ESS)
    gen = torch.Generator().manual_seed(5)
    spaces = [theta.sample(gen) for _ in range(n)]
    assert [c["space"] for c in elite["candidates"]] == [s.to_dict() for s in spaces]
    deviations = [abs(space_flops(s, ESS) / target - 1) for s in spaces]
    assert [c["deviation"] for c in elite["candidates"]] == pytest.approx(deviations)
    best = min(range(n), key=deviations.__getitem__)
    assert elite["elite_space"] == spaces[best].to_dict() and elite["deviation"] == pytest.approx(deviations[best])
    assert len({str(c["space"]) for c in elite["candidates"]}) > 1        # a real choice was made
    # a target at another candidate's FLOPs picks that candidate
    other = next(i for i in range(n) if spaces[i].to_dict() != spaces[best].to_dict())
    again = elite_space(theta, torch.Generator().manual_seed(5), n, space_flops(spaces[other], ESS), ESS)
    assert again["elite_space"] == spaces[other].to_dict() and again["deviation"] == 0
