"""Plots and tables of the paper's evaluation (§4.2–4.5): Pareto fronts, EDFs, the figures, Table 1.

Pure analysis and drawing, from scores and result files (lists of {"flops", "error", …} dicts,
nas.json files): it imports only ``flops``, numpy, matplotlib and scipy, so it can be copied out alone.

* EDFs follow pycls [23]: F(e) = the fraction of models with error below e (Figures 5d and 6).
* Figures 3, 4 and 5a–c: error vs FLOPs scatters with the Pareto front and the target's ±10% band.
* Table 1: FLOPs (|Δ%|), #samples and error per target, Elite Space vs Expanded Search Space.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from flops import format_flops

FULL_COLOR, ELITE_COLOR = "tab:blue", "tab:orange"     # the paper's blue and orange dots


# ---- Analysis: Pareto fronts and EDFs ------------------------------------------------------------

def pareto_front(flops: Sequence[float], errors: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats in both FLOPs and error, by increasing FLOPs."""
    front, best = [], math.inf
    for i in sorted(range(len(flops)), key=lambda i: (flops[i], errors[i])):
        if errors[i] < best:
            front.append(i)
            best = errors[i]
    return front


def edf(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The empirical distribution function as steps: sorted values x and F(x) = fraction ≤ x."""
    x = np.sort(np.asarray(values, dtype=float))
    return x, np.arange(1, len(x) + 1) / max(1, len(x))


def edf_at(values: Sequence[float], points: Sequence[float]) -> np.ndarray:
    """pycls' error EDF [23]: F(e) = fraction of models with error < e, at each point e."""
    x = np.sort(np.asarray(values, dtype=float))
    return np.searchsorted(x, np.asarray(points, dtype=float), side="left") / max(1, len(x))


def within(flops: Sequence[float], target: float, tolerance: float = 0.10) -> np.ndarray:
    """Mask of FLOPs within ±tolerance of the target (Table 1's and Figure 5d's criterion)."""
    return np.abs(np.asarray(flops, dtype=float) - target) <= tolerance * target


def median_error_within(scores: list[dict], target: float, tolerance: float = 0.10) -> float:
    """Median error of the scored architectures within ±tolerance of the target (nan if none)."""
    errors = [s["error"] for s, ok in zip(scores, within([s["flops"] for s in scores], target, tolerance)) if ok]
    return float(np.median(errors)) if errors else float("nan")


# ---- Statistics (scipy): rank agreement, and whether one group's errors are lower than another's -

def rank_agreement(x: Sequence[float], y: Sequence[float]) -> dict:
    """How well scores ``x`` order what ``y`` measures (supernet against from-scratch errors, §4.2's basis):
    Kendall's τ-b and Spearman's ρ with their two-sided p-values (scipy.stats)."""
    from scipy import stats
    tau, rho = stats.kendalltau(x, y), stats.spearmanr(x, y)
    return {"n": len(x), "kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
            "spearman_rho": float(rho.statistic), "spearman_p": float(rho.pvalue)}


def lower_errors(a: Sequence[float], b: Sequence[float]) -> dict:
    """One-sided Mann–Whitney U test that errors ``a`` tend to be lower than errors ``b`` (scipy.stats), with the
    group sizes and medians; the p-value is None when either group is empty."""
    from scipy import stats
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    median = lambda v: float(np.median(v)) if len(v) else None
    test = stats.mannwhitneyu(a, b, alternative="less") if len(a) and len(b) else None
    return {"n_a": len(a), "n_b": len(b), "median_a": median(a), "median_b": median(b),
            "u": None if test is None else float(test.statistic), "p": None if test is None else float(test.pvalue)}


# ---- Table 1 -------------------------------------------------------------------------------------

def table_rows(runs_dir: str | Path, match: str = "*", warn=None) -> list[dict]:
    """Table 1's rows from every nas.json under ``runs_dir`` whose run folder matches the glob ``match``
    (with the from-scratch errors of its scratch/scratch.json, if any). A file that cannot be read, or is not a NAS result, is
    skipped with one line to ``warn`` (default: a warning on stderr) naming it; the others still make the table."""
    warn = warn or (lambda path, why: print(f"warning: skipping {path}: {why}", file=sys.stderr))
    rows: dict = defaultdict(dict)
    sources: dict = {}
    for path in sorted(p for p in Path(runs_dir).rglob("nas.json") if p.parent.match(match)):
        try:
            r = _read_result(path, NAS_FIELDS)
        except ValueError as e:
            warn(path, e)
            continue
        scratch, error = path.parent / "scratch" / "scratch.json", None   # evaluate.py scratch --arch <nas.json>
        if scratch.exists():
            try:
                error = _read_result(scratch, SCRATCH_FIELDS)["mean"]
            except ValueError as e:
                warn(scratch, f"{e}; its error is left out")
        kind = "full" if r["space_source"] == "full" else "elite"
        cell = (r["dataset"], r["target"], kind)
        if cell in sources:           # two runs for one cell of the table: the first (by path) is kept
            warn(path, f"{sources[cell]} already gives the {kind} cell of {r['dataset']} at {r['target']:g}; "
                       f"choose one with --match")
            continue
        sources[cell] = path
        rows[(r["dataset"], r["target"])][kind] = {"flops": r["flops"], "deviation": r["deviation"],
                                                    "samples": r["samples"], "error": error}
    return [{"dataset": ds, "target": t, **cells} for (ds, t), cells in sorted(rows.items())]


NUMBER = (int, float)
# the fields Table 1 takes from a file, each of its type and, for numbers, in its (inclusive) range
NAS_FIELDS = {"dataset": str, "target": (NUMBER, 1, math.inf), "space_source": str, "flops": (NUMBER, 1, math.inf),
              "deviation": (NUMBER, 0, math.inf), "samples": (int, 1, math.inf)}
SCRATCH_FIELDS = {"mean": (NUMBER, 0, 100)}


def _read_result(path: Path, fields: dict) -> dict:
    """A result file with ``fields`` of their types (and numbers finite and in their ranges), or ValueError saying why
    not (unreadable, not JSON, a missing field, NaN, a negative count, …)."""
    if not path.is_file():          # a FIFO would block
        raise ValueError("not a regular file")
    try:
        r = json.loads(path.read_text())
    except OSError as e:
        raise ValueError(e.strerror or str(e)) from None
    except ValueError as e:       # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"not a JSON file ({type(e).__name__})") from None
    if not isinstance(r, dict):
        raise ValueError(f"not a result (a JSON {type(r).__name__})")
    def fits(value, field) -> bool:
        kind, lo, hi = field if isinstance(field, tuple) and len(field) == 3 else (field, None, None)
        try:
            return (isinstance(value, kind) and not isinstance(value, bool)
                    and (lo is None or (math.isfinite(value) and lo <= value <= hi)))
        except OverflowError:      # an integer too large for a float
            return False
    wrong = [k for k, field in fields.items() if not fits(r.get(k), field)]
    if wrong:
        raise ValueError(f"missing or malformed {', '.join(f'{k} ({r.get(k)!r})' if k in r else k for k in wrong)}")
    return r


def table1(rows: list[dict]) -> tuple[str, str]:
    """Table 1 as (Markdown, CSV): FLOPs (|Δ%|), #samples and error per target, Elite vs Expanded, plus averages."""
    kinds = (("elite", "Elite Space"), ("full", "Expanded Search Space"))
    head = ["Complexity"] + [f"{name} {col}" for _, name in kinds for col in ("FLOPs (|Δ%|)", "#samples", "Error")]
    fmt_err = lambda e: "–" if e is None else f"{e:.2f}"

    def cells(cell):
        if not cell:
            return ["–", "–", "–"]
        return [f"{format_flops(cell['flops'])} ({100 * cell['deviation']:.1f}%)", str(cell["samples"]), fmt_err(cell["error"])]

    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    body = [[f"CX {format_flops(r['target'])}"] + cells(r.get("elite")) + cells(r.get("full")) for r in rows]
    avg = ["Average"]
    for kind, _ in kinds:
        present = [r[kind] for r in rows if r.get(kind)]
        dev, samples, err = (mean([c[k] for c in present]) for k in ("deviation", "samples", "error"))
        avg += ["–", "–", "–"] if not present else [f"N/A ({100 * dev:.1f}%)", f"{samples:.1f}", fmt_err(err)]
    md_head = [h.replace("|", "\\|") for h in head]          # "(|Δ%|)" must not split a Markdown cell
    lines = ["| " + " | ".join(md_head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in body + [avg]]
    buf = io.StringIO()
    csv.writer(buf).writerows([head] + body + [avg])
    return "\n".join(lines) + "\n", buf.getvalue()


# ---- Figures -------------------------------------------------------------------------------------

def flops_formatter():
    """Axis ticks in MF/GF: 540MF, 8.1MF, 1.6GF."""
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(lambda v, _: format_flops(v))


def group_color(label: str, i: int, colors: dict | None = None) -> str:
    """``colors[label]`` if given; else the paper's blue (full space) and orange (Elite Space); others cycle after them."""
    if colors and label in colors:
        return colors[label]
    return {"Expanded Search Space": FULL_COLOR, "Elite Space": ELITE_COLOR}.get(label, f"C{i + 2}")


def save_figure(fig, path: str | Path) -> list[Path]:
    """Write ``path``.png and ``path``.pdf atomically; returns the files."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files = []
    for ext in ("png", "pdf"):
        target = path.with_suffix(f".{ext}")
        tmp = target.with_name(f".{target.name}.tmp")       # atomic: a crash never leaves half a figure
        fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        os.replace(tmp, target)
        files.append(target)
    return files


def _finish(fig, path: str | Path | None):
    """Lay the figure out and, given a ``path``, save it there; returns the figure."""
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_error_vs_flops(ax, groups: dict, target: float | None = None, pareto: bool = True, log_flops: bool = True,
                        xmax: float | None = None, title: str | None = None, tolerance: float = 0.10,
                        colors: dict | None = None, legend_loc: str = "best"):
    """Error vs FLOPs scatter of several groups (Figures 3, 4, 5a–c): label → list of score dicts.

    Groups named like the paper's take its colours (Expanded Search Space blue, Elite Space orange),
    unless ``colors`` maps labels to colours.
    The Pareto front of all points is drawn as a black line, the target as a dashed line in a ±10% band.
    """
    from matplotlib.ticker import LogLocator, MaxNLocator, NullFormatter
    all_f, all_e = [], []
    for i, (label, scores) in enumerate(groups.items()):
        kept = [s for s in scores if xmax is None or s["flops"] <= xmax]
        f, e = [s["flops"] for s in kept], [s["error"] for s in kept]
        ax.scatter(f, e, s=8, alpha=0.6, color=group_color(label, i, colors), label=f"{label} ({len(f)})", linewidths=0)
        all_f, all_e = all_f + f, all_e + e
    if pareto and all_f:
        front = pareto_front(all_f, all_e)
        ax.step([all_f[i] for i in front], [all_e[i] for i in front], where="post", color="black", lw=1, label="Pareto front")
    if target is not None:
        ax.axvspan(target * (1 - tolerance), target * (1 + tolerance), color="grey", alpha=0.15, lw=0)
        ax.axvline(target, color="grey", ls="--", lw=1, label=f"target {format_flops(target)} ±{100 * tolerance:.0f}%")
    if log_flops:
        ax.set_xscale("log")
    else:
        ax.xaxis.set_major_locator(MaxNLocator(5))       # MF/GF labels are wide
    if xmax is not None:
        ax.set_xlim(None if log_flops else 0, xmax)
    ax.xaxis.set_major_formatter(flops_formatter())
    lo, hi = ax.get_xlim()
    if log_flops and lo > 0 and hi / lo < 300:           # under ~2.5 decades: label 2× and 5× as well
        ax.xaxis.set_minor_locator(LogLocator(subs=(2, 5)))
        ax.xaxis.set_minor_formatter(flops_formatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("FLOPs (multiply-accumulates)")
    ax.set_ylabel("Top-1 error (%)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc=legend_loc, framealpha=0.85)
    return ax


def plot_grid(panels: list[dict], path: str | Path | None = None, ncols: int = 3, suptitle: str | None = None, **kw):
    """A grid of error-vs-FLOPs panels; each panel is {"title", "groups", "target"} (Figures 3, 4 and 5a–c)."""
    import matplotlib.pyplot as plt
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.6 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        plot_error_vs_flops(ax, panel["groups"], target=panel.get("target"), title=panel.get("title"), **kw)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if suptitle:               # wrapped to the figure's width (about 11 characters an inch at this size)
        fig.suptitle(textwrap.fill(suptitle, width=int(11 * fig.get_figwidth())))
    return _finish(fig, path)


def plot_flops_edfs(groups: dict, target: float, path: str | Path | None = None, tolerance: float = 0.10, title=None,
                    colors: dict | None = None):
    """FLOPs EDFs of the sampled architectures within ±10% of the target (Figure 5d): label → FLOPs list."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for i, (label, flops) in enumerate(groups.items()):
        kept = np.asarray(flops, dtype=float)[within(flops, target, tolerance)]
        x, y = edf(kept)
        frac = len(kept) / max(1, len(flops))
        # scaled by the fraction within the band, so denser spaces reach higher
        ax.step(np.r_[target * (1 - tolerance), x, target * (1 + tolerance)], np.r_[0, y * frac, frac], where="post",
                color=group_color(label, i, colors), label=f"{label} ({len(kept)}/{len(flops)} within)")
    ax.set_xlim(target * (1 - tolerance), target * (1 + tolerance))
    ax.xaxis.set_major_locator(MaxNLocator(5))
    ax.xaxis.set_major_formatter(flops_formatter())
    ax.set_xlabel("FLOPs (multiply-accumulates)")
    ax.set_ylabel("fraction of all samples with FLOPs ≤ x")
    ax.set_title(title or f"FLOPs EDF within ±{100 * tolerance:.0f}% of {format_flops(target)}")
    ax.grid(alpha=0.3)
    outside = dict(bbox_to_anchor=(1.02, 1), borderaxespad=0) if len(groups) > 4 else {}   # many curves: off them
    ax.legend(fontsize=7, loc="upper left", **outside)
    return _finish(fig, path)


def plot_rank_agreement(supernet_errors: Sequence[float], scratch_errors: Sequence[float],
                        path: str | Path | None = None, title: str | None = None):
    """Scatter of from-scratch error against supernet error for the same architectures, with τ and ρ."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.scatter(supernet_errors, scratch_errors, s=18, color=FULL_COLOR, alpha=0.8, linewidths=0)
    r = rank_agreement(supernet_errors, scratch_errors)
    ax.set_xlabel("supernet error (%), shared weights, BN recalibrated")
    ax.set_ylabel("from-scratch error (%)")
    ax.set_title(title or f"rank agreement of {len(supernet_errors)} architectures")
    ax.text(0.03, 0.97, f"Kendall τ = {r['kendall_tau']:.2f} (p = {r['kendall_p']:.2g})\n"
                        f"Spearman ρ = {r['spearman_rho']:.2f} (p = {r['spearman_p']:.2g})", transform=ax.transAxes,
            va="top", fontsize=9, bbox=dict(boxstyle="round", facecolor="white", alpha=0.8))
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def plot_error_edfs(panels: list[tuple[str, dict]], path: str | Path | None = None, colors: dict | None = None):
    """Error EDFs F(e) (Figure 6): one panel per (title, {label: errors}); the i-th label is C{i} unless in ``colors``."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (title, groups) in zip(axes.flat, panels):
        for i, (label, errors) in enumerate(groups.items()):
            x, y = edf(errors)
            ax.step(x, y, where="post", color=(colors or {}).get(label, f"C{i}"), label=f"{label} (n={len(errors)})")
        ax.set_xlabel("Top-1 error (%)")
        ax.set_ylabel("F(e): fraction of networks with error ≤ e")
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return _finish(fig, path)


# ---- The claims of the paper against what the notebooks measured (the README's Results) ----------

def _verdict(p, direction: bool, alpha: float = 0.05) -> str:
    """'holds' when the measured direction is the paper's and, with a one-sided test of it, p < alpha; 'opposite'
    when the other direction is measured and, with a test, shown (p > 1 - alpha: the reverse test's p is below
    alpha); else 'not shown'."""
    if p is None:
        return "holds" if direction else "opposite"
    if direction and p < alpha:
        return "holds"
    return "opposite" if not direction and p > 1 - alpha else f"not shown (p ≥ {alpha:g})"


def _per_target(verdicts: dict) -> str:
    """One verdict when every target gives it, else each target's ('holds at 3MF; not shown (…) at 8MF')."""
    if len(set(verdicts.values())) == 1:
        return next(iter(verdicts.values()))
    return "; ".join(f"{v} at {t}" for t, v in verdicts.items())


def claims(results: str | Path) -> list[dict]:
    """One row per claim of the paper, from the notebooks' ``<results>/<notebook>/findings.json`` (and the rank
    agreement's ``<results>/rank/rank.json``): what the paper reports, what was measured, and whether it holds."""
    root = Path(results)
    read = lambda name: json.loads((root / name).read_text()) if (root / name).is_file() else None
    nb02, nb03 = read("02_elite_spaces/findings.json"), read("03_nas_table1/findings.json")
    nb04, nb05, rank = read("04_bridging_the_gap/findings.json"), read("05_design_principles/findings.json"), read("rank/rank.json")
    rows = []
    add = lambda *row: rows.append(dict(zip(("claim", "paper", "measured", "verdict"), row)))
    if nb02:
        per = nb02["per_target"]
        add("Elite Spaces sit at their FLOPs target (Fig. 3)", "Elite Spaces align with the Pareto front at every target",
            "; ".join(f"{t}: |Δ| {v['deviation_pct']:.1f}%, {100 * v['within_10pct_elite']:.0f}% of its samples within ±10% "
                      f"(full space {100 * v['within_10pct_full']:.0f}%)" for t, v in per.items()),
            _verdict(None, all(v["within_10pct_elite"] > v["within_10pct_full"] for v in per.values())))
        tests = {t: v["mann_whitney_elite_lower"] for t, v in per.items()}
        add("Elite Spaces hold better networks at equal FLOPs (Fig. 3)", "orange dots below the blue ones near the target",
            "; ".join(f"{t}: median error {r['median_a']:.1f}% vs {r['median_b']:.1f}% within ±10%, Mann–Whitney p = "
                      f"{r['p']:.2g} (n = {r['n_a']}, {r['n_b']})" if r["p"] is not None else f"{t}: no sample in the band"
                      for t, r in tests.items()),
            _per_target({t: _verdict(r["p"], r["median_a"] < r["median_b"]) for t, r in tests.items() if r["p"] is not None})
            if any(r["p"] is not None for r in tests.values()) else "cannot be read")
    if rank:
        add("The evaluation supernet ranks architectures (basis of §4.2)", "(assumed)",
            f"Kendall τ = {rank['kendall_tau']:.2f} (p = {rank['kendall_p']:.2g}) between supernet and from-scratch errors "
            f"of {len(rank['archs'])} architectures", _verdict(rank["kendall_p"], rank["kendall_tau"] > 0))
    if nb03:
        e, f = nb03["elite"], nb03["full"]
        add("NAS in Elite Spaces meets the FLOPs target closer (Table 1)", "mean |Δ| 2.1% vs 5.5% (CIFAR-10)",
            f"mean |Δ| {e['mean_deviation_pct']:.1f}% vs {f['mean_deviation_pct']:.1f}%",
            _verdict(None, e["mean_deviation_pct"] < f["mean_deviation_pct"]))
        per = nb03["per_target"]
        add("NAS in Elite Spaces needs fewer samples (Table 1)", "5 vs 43.2 samples to reach ±10% (CIFAR-10)",
            "; ".join(f"{t}: {v['elite']['samples_until_within']['mean']:.1f} vs {v['full']['samples_until_within']['mean']:.1f}"
                      f" samples until within ±10% (mean of {v['elite']['samples_until_within']['repeats']} repeats), "
                      f"Mann–Whitney p = {v['mann_whitney_fewer_samples_elite']['p']:.2g}" for t, v in per.items()),
            _per_target({t: _verdict(v["mann_whitney_fewer_samples_elite"]["p"], v["elite"]["samples_until_within"]["mean"]
                                     < v["full"]["samples_until_within"]["mean"]) for t, v in per.items()}))
        spreads = [float(np.std(v[k]["errors"])) for v in per.values() for k in ("elite", "full")]
        gaps = [v["full"]["mean_error"] - v["elite"]["mean_error"] for v in per.values()]
        add("Networks found in Elite Spaces have lower errors (Table 1)", "4.0% vs 4.5% error (CIFAR-10, 3 seeds)",
            f"mean error {e['mean_error']:.1f}% vs {f['mean_error']:.1f}% over {nb03['seeds']} seeds; gaps per target "
            f"{', '.join(f'{g:+.1f}' for g in gaps)} points against a seed std up to {max(spreads):.1f}",
            "cannot be read at this scale" if min(abs(g) for g in gaps) <= max(spreads)
            else _verdict(None, all(g > 0 for g in gaps)))
    if nb04:
        sp = nb04["spaces"]
        largest = max((k for k in sp if k != "Elite Space"), key=lambda k: sp[k]["max_flops"])
        add("NAS finds fewer networks near the target as spaces grow (Fig. 5a–b, 5d)", "sparser samples in complex spaces",
            "share of draws within ±10% per level: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in
                                                                 nb04["level_share_within_10pct"].items()),
            _verdict(None, nb04["share_falls_from_level_to_level"]))
        r = nb04["mann_whitney_elite_lower_within"]
        add("NAS in the Elite Space gives denser and better samples (Fig. 5c)", "denser samples and lower errors",
            f"within ±10%: {100 * sp['Elite Space']['share_within_10pct']:.0f}% vs {100 * sp[largest]['share_within_10pct']:.0f}% "
            f"of the draws; errors within ±10% Mann–Whitney p = " + (f"{r['p']:.2g}" if r["p"] is not None else "–"),
            f"denser: {_verdict(None, nb04['elite_denser'])}; lower errors: "
            f"{_verdict(r['p'], nb04['elite_lower_median_error']) if r['p'] is not None else 'cannot be read'}")
    if nb05:
        for side, panel, paper in (("with", "a", "RegNet's principles slightly better"),
                                   ("without", "b", "Elite ordering better")):
            found = nb05[f"{side}_band"]
            r = found["mann_whitney_elite_lower"]
            measured = (f"median error {found['elite']['median_error']:.1f}% (Elite ordering) vs "
                        f"{found['regnet']['median_error']:.1f}% (RegNet), Mann–Whitney p = {r['p']:.2g}")
            elite_better = r["median_a"] < r["median_b"]
            verdict = _verdict(r["p"], elite_better) if side == "without" else (
                "holds" if not elite_better or r["p"] >= 0.05 else "opposite")
            add(f"Design principles {side} a FLOPs constraint (Fig. 6{panel})", paper, measured, verdict)
    return rows


def claims_table(results: str | Path) -> str:
    """The claims as a Markdown table (the README's Results section)."""
    lines = ["| claim | the paper | measured | holds? |", "|---|---|---|---|"]
    cell = lambda text: text.replace("|", "\\|")                  # "|Δ|" must not split a cell
    lines += ["| " + " | ".join(cell(r[k]) for k in ("claim", "paper", "measured", "verdict")) + " |" for r in claims(results)]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- claims: generated by `python plots.py claims results/cpu --readme README.md` -->", "<!-- claims end -->"


def write_claims(results: str | Path, readme: str | Path | None = None) -> str:
    """Print the claims table; with ``readme``, replace the part of it between BEGIN and END with the table."""
    table = claims_table(results)
    if readme is not None:
        text = Path(readme).read_text()
        if BEGIN not in text or END not in text:
            raise ValueError(f"{readme} has no claims section ({BEGIN} … {END})")
        head, rest = text.split(BEGIN, 1)
        Path(readme).write_text(f"{head}{BEGIN}\n{table}{END}{rest.split(END, 1)[1]}")
    return table


def main(argv=None) -> int:
    """``python plots.py claims RESULTS [--readme README.md]``: a bad input is one line on stderr and exit code 2."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise ValueError(message)
    parser = Parser(prog="plots.py", description="The paper's claims against the notebooks' findings.")
    parser.add_argument("command", choices=["claims"])
    parser.add_argument("results", help="a folder of <notebook>/findings.json, e.g. results/cpu")
    parser.add_argument("--readme", default=None, help="rewrite this README's claims section")
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        if not Path(args.results).is_dir():
            raise ValueError(f"{args.results} is not a folder of findings (<notebook>/findings.json)")
        print(write_claims(args.results, args.readme), end="")
    except (OSError, ValueError, KeyError, TypeError) as e:      # a findings file of another shape too
        message = f"{e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename else str(e) or type(e).__name__
        print(f"plots.py: error: {message.splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
