"""``python demo.py``: every protocol of §4.2–4.5, end to end, offline.

On the reduced space and synthetic data it trains an evaluation supernet, runs NSS and NAS (in the
Elite Space and in the full space) for two targets, scores architectures, trains the found networks
from scratch, draws Figures 3/4-, 5d- and 6-style plots and writes Table 1, in a few minutes on a
laptop CPU. It only orchestrates: every step is a call into the library modules.
"""
from __future__ import annotations

from pathlib import Path

import torch

import data as data_mod
import evaluate
import nas
import nss
import plots
import runs
import scratch
from flops import arch_flops, format_flops
from rundir import write_json
from space import REDUCED, Arch, ExpandedSearchSpace, Space


def evaluate_quick(out: str | Path = "runs/eval-quick", progress: bool = False, targets=(4e6, 9e6)) -> dict:
    """Every protocol on a reduced space and synthetic data; writes figures, Table 1 and quick.json under ``out``."""
    out = Path(out)
    common = dict(dataset="synthetic", synthetic_size=2000, **REDUCED, device="cpu", out=str(out), progress=progress,
                  overwrite=True)
    data = data_mod.load_for(runs.RunSettings(**common), ExpandedSearchSpace.reduced(), torch.device("cpu"))
    supernet, _ = evaluate.train_supernet(evaluate.SupernetConfig(**common, epochs=4, batch_size=64, lr=0.1), data)
    ess = supernet.ess
    g = torch.Generator().manual_seed(0)
    score = lambda archs: evaluate.score_archs(supernet, archs, data, calib_images=200, test_images=250,
                                               progress=progress)
    full_scores = score(evaluate.sample_archs(ess.full_space(), 40, ess, g))
    scratch_cfg = scratch.ScratchConfig(**common, recipe="fast", seeds=2, epochs=1, batch_size=64, lr=0.1,
                                        lr_warmup_epochs=0.5, cutout=8)
    panels, nas_flops = [], {}
    for target in targets:
        search = dict(common, target=target, epochs=6, warmup_epochs=2, arch_lr=0.05)
        elite = nss.run(nss.NSSConfig(**search, name=f"nss-{format_flops(target)}"), data)
        elite_scores = score(evaluate.sample_archs(Space.from_dict(elite["elite_space"]), 40, ess, g))
        panels.append({"title": f"target {format_flops(target)}", "target": target,
                       "groups": {"Expanded Search Space": full_scores, "Elite Space": elite_scores}})
        nas_flops[target] = {}
        for label, spec in (("Elite Space", str(Path(elite["run_dir"]) / "result.json")), ("Expanded Search Space", "full")):
            found = nas.run(nas.NASConfig(**dict(search, epochs=4, warmup_epochs=1), space=spec, max_samples=200,
                                          name=f"nas-{format_flops(target)}-{runs.space_label(spec)}"), data)
            nas_flops[target][label] = [arch_flops(a, ess) for a in nas.final_archs(found, 100)]
            scratch.run_scratch(scratch_cfg, Arch.from_dict(found["arch"]), data, run_dir=Path(found["run_dir"]) / "scratch")
    figures = out / "figures"
    plots.plot_grid(panels, figures / "error_vs_flops")
    plots.plot_flops_edfs(nas_flops[targets[-1]], targets[-1], figures / "flops_edf")
    band = (0.7 * targets[0], 1.3 * targets[0])
    principles = {f"{name}{' in band' if b else ''}": score(evaluate.sample_archs(ess.full_space(), 40, ess, g, b, order))
                  for name, order in (("RegNet principles", "regnet"), ("Elite ordering", "elite")) for b in (band, None)}
    errors = lambda banded: {k: [s["error"] for s in v] for k, v in principles.items() if ("band" in k) == banded}
    plots.plot_error_edfs([("with FLOPs constraint", errors(True)), ("without FLOPs constraint", errors(False))],
                          figures / "error_edfs")
    markdown = evaluate.run_table(evaluate.TableConfig(runs=str(out), out=str(out / "table1")))
    summary = {"median_error_within": {p["title"]: {k: plots.median_error_within(v, p["target"])
                                                    for k, v in p["groups"].items()} for p in panels},
               "table1": markdown, "figures": sorted(str(p) for p in figures.glob("*.png"))}
    write_json(out / "quick.json", summary)
    return summary


def main(argv=None) -> int:
    parser = runs._Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/eval-quick", help="where the demo's runs, figures and Table 1 go")
    args = parser.parse_args(argv)
    summary = evaluate_quick(args.out)
    print(summary["table1"])
    print("figures:", *summary["figures"], sep="\n  ")
    return 0


if __name__ == "__main__":
    runs.cli(main)
