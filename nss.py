"""Network Space Search from the command line (§3.3–3.4): find the Elite Space for a FLOPs target.

    python nss.py --dataset cifar10 --target 1.6e9      # the paper's setting (the default)
    python nss.py --target 6e8,1.6e9,4e9                 # several targets after one shared warmup
    python nss.py --quick                                # offline demo: reduced space, synthetic data

The method (Θ, the Gumbel-softmax sampling, the weight and Θ steps of Eq. 3–5, the search loop
and the Elite Space selection) is ``search.py``; this file gives it a run folder, checkpoints,
resume and a command line (``runs.py``).
"""
from __future__ import annotations

import dataclasses
import math
import sys
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

    def default_name(self, several: bool = False) -> str:
        """runs/<name>: nss-<dataset>-<target>-s<seed> (nss-quick with --quick); with several targets, --name
        gets the target appended."""
        if self.name and several:
            return f"{self.name}-{format_flops(self.target)}"
        return self.name or ("nss-quick" + f"-{format_flops(self.target)}" * several if self.quick
                             else f"nss-{self.dataset}-{format_flops(self.target)}-s{self.seed}")

    def warmup_name(self) -> str:
        """The run folder of the warmup that several targets share."""
        return f"{self.name}-warmup" if self.name else ("nss-quick-warmup" if self.quick
                                                         else f"nss-{self.dataset}-warmup-s{self.seed}")


def run(cfg: NSSConfig, data: data_mod.ImageData | None = None, callback=None) -> dict:
    """Network Space Search end to end: writes runs/<name>/{config,result}.json and returns the result."""
    cfg.check()
    ess = cfg.ess_for(data)
    elite = lambda s: elite_space(s.theta, s.gen, cfg.n_samples, cfg.target, ess)
    return runs.run_search(cfg, ess, Options.nss(ess), "the candidate spaces", cfg.default_name(), elite, data,
                           callback, result_file="result.json")


def run_targets(cfg: NSSConfig, targets: list[float], data: data_mod.ImageData | None = None,
                callback=None) -> list[dict]:
    """NSS for several FLOPs targets sharing one warmup (``runs.run_searches``): runs/<warmup_name>, then one
    run folder and result.json per target, each the result the target would get searched alone."""
    if len(set(targets)) != len(targets):
        raise RunError(f"--target lists a target twice: {','.join(f'{t:g}' for t in targets)}")
    cfgs = [dataclasses.replace(cfg, target=t) for t in targets]
    for c in cfgs:
        c.check()
    ess = cfg.ess_for(data)
    elite = lambda c, s: elite_space(s.theta, s.gen, c.n_samples, c.target, ess)
    return runs.run_searches(cfgs, [c.default_name(several=True) for c in cfgs], cfg.warmup_name(), ess,
                             Options.nss(ess), "the candidate spaces", elite, data, callback)


def split_targets(argv: list[str]) -> tuple[list[str], list[float] | None]:
    """``--target 6e8,1.6e9,4e9``: the argv with the first target only, and the targets (None for one)."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag == "--target" and (eq or i + 1 < len(argv)):
            value = value if eq else argv[i + 1]
            if "," not in value:
                return argv, None
            try:
                targets = [float(v) for v in value.split(",")]
            except ValueError:
                raise RunError(f"--target takes a number or comma-separated numbers such as 6e8,1.6e9, "
                               f"got {value!r}") from None
            if not all(math.isfinite(t) and t > 0 for t in targets):
                raise RunError(f"--target must be finite positive numbers, got {value!r}")
            first = f"--target={targets[0]!r}"
            return argv[:i] + [first] + argv[i + (1 if eq else 2):], targets
    return argv, None


def summary(result: dict) -> str:
    space = Space.from_dict(result["elite_space"])
    return (f"Elite Space for {format_flops(result['target'])} on {result['dataset']}:\n"
            f"  depths {[list(r) for r in space.depths]}\n  widths {[list(r) for r in space.widths]}\n"
            f"  FLOPs {format_flops(result['elite_flops'])} (|Δ| {100 * result['deviation']:.1f}% to the target), "
            f"searched in {result['seconds']:.0f}s\n  written to {result['run_dir']}/result.json")


def main(argv=None) -> int:
    argv, targets = split_targets(sys.argv[1:] if argv is None else argv)
    cfg = runs.parse_config(NSSConfig, argv, description=__doc__.split("\n\n")[0])
    for result in run_targets(cfg, targets) if targets else [run(cfg)]:
        print(summary(result))
    return 0


if __name__ == "__main__":
    runs.cli(main)
