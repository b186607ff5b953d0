"""Network Space Search from the command line (§3.3–3.4): find the Elite Space for a FLOPs target.

    python nss.py --dataset cifar10 --target 1.6e9      # the paper's setting (the default)
    python nss.py --quick                                # offline demo: reduced space, synthetic data

The method (Θ, the Gumbel-softmax sampling, the weight and Θ steps of Eq. 3–5, the search loop
and the Elite Space selection) is ``search.py``; this file gives it a run folder, checkpoints,
resume and a command line (``runs.py``).
"""
from __future__ import annotations

from dataclasses import dataclass

import data as data_mod
import runs
from flops import format_flops
from runs import RunError, SearchConfig, option
from search import elite_space
from space import Options, Space


@dataclass
class NSSConfig(SearchConfig):
    """Network Space Search: the settings above plus the Elite Space selection (§3.4)."""

    n_samples: int = option(5, "n: spaces sampled from the final P_Θ; the closest to the target is the Elite Space")

    def check(self):
        super().check()
        if self.n_samples < 1:
            raise RunError(f"--n-samples must be at least 1, got {self.n_samples}")
        self.check_memory((f"--n-samples {self.n_samples}", 300 * self.n_samples, "the sampled spaces", False))

    def default_name(self) -> str:
        return "nss-quick" if self.quick else f"nss-{self.dataset}-{format_flops(self.target)}-s{self.seed}"


def run(cfg: NSSConfig, data: data_mod.ImageData | None = None, callback=None) -> dict:
    """Network Space Search end to end: writes runs/<name>/{config,result}.json and returns the result."""
    cfg.check()
    ess = cfg.ess_for(data)
    elite = lambda s: elite_space(s.theta, s.gen, cfg.n_samples, cfg.target, ess)
    return runs.run_search(cfg, ess, Options.nss(ess), "the candidate spaces", cfg.default_name(), elite, data,
                           callback, result_file="result.json")


def summary(result: dict) -> str:
    space = Space.from_dict(result["elite_space"])
    return (f"Elite Space for {format_flops(result['target'])} on {result['dataset']}:\n"
            f"  depths {[list(r) for r in space.depths]}\n  widths {[list(r) for r in space.widths]}\n"
            f"  FLOPs {format_flops(result['elite_flops'])} (|Δ| {100 * result['deviation']:.1f}% to the target), "
            f"searched in {result['seconds']:.0f}s\n  written to {result['run_dir']}/result.json")


def main(argv=None) -> int:
    cfg = runs.parse_config(NSSConfig, argv, description=__doc__.split("\n\n")[0])
    print(summary(run(cfg)))
    return 0


if __name__ == "__main__":
    runs.cli(main)
