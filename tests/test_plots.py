"""plots.py: Pareto fronts, EDFs, Table 1 and every figure, checked by hand-computed examples."""
import math

import numpy as np
import pytest

import plots
from flops import format_flops


def test_pareto_front_by_hand():
    flops = [1, 2, 3, 4, 5, 2, 3]
    errors = [9, 7, 8, 5, 5, 6, 4]
    # (1,9) (2,6) (3,4) are undominated; (2,7) loses to (2,6), (4,5) and (5,5) lose to (3,4)
    assert plots.pareto_front(flops, errors) == [0, 5, 6]
    assert plots.pareto_front([1, 1], [3, 3]) == [0]


def test_edf_by_hand():
    x, y = plots.edf([3.0, 1.0, 2.0, 2.0])
    assert x.tolist() == [1.0, 2.0, 2.0, 3.0] and y.tolist() == [0.25, 0.5, 0.75, 1.0]
    # F(e) = fraction with error < e
    assert plots.edf_at([3.0, 1.0, 2.0, 2.0], [1.0, 1.5, 2.0, 2.5, 3.5]).tolist() == [0.0, 0.25, 0.25, 0.75, 1.0]
    assert plots.within([90, 95, 110, 111, 100], 100).tolist() == [True, True, True, False, True]
    scores = [{"flops": f, "error": e} for f, e in ((100, 5.0), (105, 7.0), (300, 1.0), (95, 6.0))]
    assert plots.median_error_within(scores, 100) == 6.0
    assert math.isnan(plots.median_error_within(scores, 1000))


def test_table1_by_hand():
    rows = [{"target": 6e8, "elite": {"flops": 5.71e8, "deviation": 0.047, "samples": 5, "error": 4.57},
             "full": {"flops": 6.58e8, "deviation": 0.097, "samples": 117, "error": 6.08}},
            {"target": 1.6e9, "elite": {"flops": 1.6e9, "deviation": 0.023, "samples": 5, "error": 3.99},
             "full": {"flops": 1.6e9, "deviation": 0.011, "samples": 45, "error": 4.33}}]
    markdown, csv_text = plots.table1(rows)
    lines = markdown.strip().splitlines()
    assert lines[2] == "| CX 600MF | 571MF (4.7%) | 5 | 4.57 | 658MF (9.7%) | 117 | 6.08 |"
    assert lines[-1] == "| Average | N/A (3.5%) | 5.0 | 4.28 | N/A (5.4%) | 81.0 | 5.21 |"
    assert csv_text.splitlines()[0].startswith("Complexity,Elite Space FLOPs (|Δ%|)")
    # a valid Markdown table: every row has as many cells as the delimiter row
    cells = lambda line: len(line.replace("\\|", "").strip("|").split("|"))
    assert len({cells(line) for line in lines}) == 1 and "FLOPs (\\|Δ%\\|)" in lines[0]
    assert len(csv_text.strip().splitlines()) == 4


def fake_scores(n, center, seed):
    g = np.random.default_rng(seed)
    f = np.exp(g.normal(np.log(center), 0.5, n))
    return [{"flops": float(x), "error": float(10 + 3 * g.random() - np.log(x / 1e9))} for x in f]


@pytest.mark.slow
def test_every_plot_writes_a_png(tmp_path):
    full, elite = fake_scores(200, 3e9, 0), fake_scores(200, 1.6e9, 1)
    panel = {"title": "1.6GF", "target": 1.6e9, "groups": {"Expanded Search Space": full, "Elite Space": elite}}
    plots.plot_grid([panel, panel], tmp_path / "grid")
    plots.plot_grid([panel], tmp_path / "trunc", log_flops=False, xmax=1e9)
    plots.plot_flops_edfs({"Elite Space": [s["flops"] for s in elite], "Expanded Search Space": [s["flops"] for s in full]},
                       1.6e9, tmp_path / "fedf")
    plots.plot_error_edfs([("with", {"RegNet principles": [s["error"] for s in full]}),
                        ("without", {"Elite ordering": [s["error"] for s in elite]})], tmp_path / "eedf")
    for stem in ("grid", "trunc", "fedf", "eedf"):
        png = tmp_path / f"{stem}.png"
        assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
        assert (tmp_path / f"{stem}.pdf").stat().st_size > 1000
    assert format_flops(8.1e6) == "8.1MF" and format_flops(1.6e9) == "1.6GF" and format_flops(5.4e8) == "540MF"


def test_rank_statistics_by_hand():
    agree = lambda x, y: plots.rank_agreement(x, y)
    # two swapped neighbours in 5: 8 concordant and 2 discordant pairs; Σd² = 4
    r = agree([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert r["kendall_tau"] == pytest.approx(0.6) and r["spearman_rho"] == pytest.approx(1 - 6 * 4 / (5 * 24))
    assert r["n"] == 5 and 0 < r["kendall_p"] < 1 and 0 < r["spearman_p"] < 1
    # ties: τ-b = 4 / √(5 · 5); ρ on average ranks (1.5, 1.5, 3, 4) and (1, 2.5, 2.5, 4) = 3.75 / 4.5
    r = agree([1, 1, 2, 3], [1, 2, 2, 3])
    assert r["kendall_tau"] == pytest.approx(0.8) and r["spearman_rho"] == pytest.approx(3.75 / 4.5)
    assert agree([1, 2, 3], [3, 2, 1])["kendall_tau"] == pytest.approx(-1.0)
    with pytest.warns(Warning, match="constant"):          # scipy says so for a constant input
        assert math.isnan(agree([1, 1, 1], [1, 2, 3])["kendall_tau"])
    # τ = 1 over 5 points: the exact two-sided p is 2/5! (one ordering of 120 as extreme, either way)
    assert agree([1, 2, 3, 4, 5], [1, 2, 3, 4, 5])["kendall_p"] == pytest.approx(2 / 120)


def test_lower_errors_is_a_one_sided_mann_whitney_test():
    # every a below every b: U = 0, and the exact one-sided p is 1 / C(6, 3) = 1/20
    r = plots.lower_errors([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert r["u"] == 0 and r["p"] == pytest.approx(1 / 20) and (r["n_a"], r["n_b"]) == (3, 3)
    assert (r["median_a"], r["median_b"]) == (2.0, 5.0)
    assert plots.lower_errors([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])["p"] == pytest.approx(1.0)   # the other way round
    assert plots.lower_errors([], [1.0])["p"] is None
