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
from pathlib import Path

import data as data_mod
import runs
from flops import format_flops
from rundir import RunError, load_checkpoint
from runs import SearchConfig, option
from search import check_target, elite_space
from space import Options, Space


@dataclass
class NSSConfig(SearchConfig):
    """Network Space Search: the settings above plus the Elite Space selection (§3.4)."""

    n_samples: int = option(5, "n: spaces sampled from the final P_Θ; the closest to the target is the Elite Space",
                            "[1, 1e6]")

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
    """Several FLOPs targets, one warmup: the warmup epochs (uniform sampling, weight steps only, §4.1) do not
    depend on the target, so they run once, in runs/<warmup_name>, and each target's search goes on from the
    warmed-up state in its own run folder and result.json. With --resume the warmup and every target go on from
    their own checkpoint where one exists; a target searched here gets the result it gets searched alone."""
    if len(set(targets)) != len(targets):
        raise RunError(f"--target lists a target twice: {','.join(f'{t:g}' for t in targets)}")
    cfgs = [dataclasses.replace(cfg, target=t) for t in targets]
    for c in cfgs:
        c.check()
    names = [c.default_name(several=True) for c in cfgs]
    if len(set(names)) < len(names):
        raise RunError(f"targets that share a run folder name ({', '.join(names)}): give targets further apart")
    ess = cfg.ess_for(data)
    options, what = Options.nss(ess), "the candidate spaces"
    with runs.user_input():
        for c in cfgs:
            check_target(c.target, options, ess, what)
    data = data_mod.load_for(cfg, ess, runs.resolve_device(cfg.device)) if data is None else data
    out, warm_name = Path(cfg.out), cfg.warmup_name()
    resume = lambda name: cfg.resume and (out / name / "checkpoint.pt").is_file()
    runs.run_search(dataclasses.replace(cfg, name=warm_name, resume=resume(warm_name)), ess, options, what,
                    warm_name, None, data, callback, until=cfg.warmup_epochs)
    warm = load_checkpoint(out / warm_name / "checkpoint.pt")      # the warmed-up state, once, on the host
    results = []
    for c, name in zip(cfgs, names):
        finish = lambda s, c=c: elite_space(s.theta, s.gen, c.n_samples, c.target, ess) | {"warmup_run": str(out / warm_name)}
        results.append(runs.run_search(dataclasses.replace(c, name=name, resume=resume(name)), ess, options, what,
                                       name, finish, data, callback, start=warm))
    return results


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
