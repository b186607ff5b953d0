"""FBNetV2-style differentiable NAS inside a network space (§4.3, §4.4), and its command line.

    python nas.py --space runs/nss-cifar10-1.6GF-s0/result.json --target 1.6e9   # inside an Elite Space
    python nas.py --space full --target 1.6e9                                     # the baseline
    python nas.py --quick                                                         # offline demo

The search is NSS's (``search.Searcher``: warmup, weight steps, Θ steps, τ schedule), with other
options: every single depth and every single width of the space's ranges (512 widths per stage
in the full space), so the masks are FBNetV2's channel masks over single widths.

Afterwards architectures are sampled from the final distribution (Table 1's protocol):
* inside an Elite Space (or any given space), n = 5 samples, keeping the closest to the target;
* inside the full space, samples until one is within ±10% of the target, up to ``--max-samples``.
The number of samples used is Table 1's "#samples".
"""
from __future__ import annotations

from dataclasses import dataclass


if __name__ == "__main__":           # Ctrl-C while the imports below load: one line, exit code 130
    import startup
    startup.guard()

import torch

import data as data_mod
import nss
import runs
from flops import arch_flops, format_flops
from runs import SearchConfig, option, space_label
from search import Searcher, Theta
from space import Arch, Options, Space


@dataclass
class NASConfig(SearchConfig):
    """NAS settings: NSS's search settings plus the space and the sampling protocol of Table 1."""

    space: str = option("full", "'full', an NSS result.json (its Elite Space) or a space JSON file", path="input")
    sampling: str = option("auto", "best-of-n | until-within | auto (best-of-n in a given space, until-within in the "
                                   "full space)", choices=("auto", "best-of-n", "until-within"))
    n_samples: int = option(5, "samples for best-of-n", "[1, 1e6]")
    max_samples: int = option(1000, "cap on samples for until-within", "[1, 1e6]")
    tolerance: float = option(0.10, "until-within stops at |FLOPs/target − 1| ≤ tolerance (±10%)", "(0, 1)")

    QUICK = {**SearchConfig.QUICK, "space": "full"}

    def default_name(self) -> str:
        prefix = "nas-quick" if self.quick else f"nas-{self.dataset}-{format_flops(self.target)}-s{self.seed}"
        return f"{prefix}-{space_label(self.space)}"

    def protocol(self) -> str:
        if self.sampling != "auto":
            return self.sampling
        return "until-within" if self.space == "full" else "best-of-n"


def sample_final(searcher: Searcher, protocol: str, n: int, max_samples: int, tolerance: float) -> dict:
    """Sample architectures from the final P_Θ by Table 1's protocol; count the samples."""
    target, sampled = searcher.settings.target, []
    within = lambda f: abs(f - target) <= tolerance * target
    while len(sampled) < (n if protocol == "best-of-n" else max_samples):
        arch = searcher.theta.sample(searcher.gen).as_arch()   # single-value options: each space is one arch
        f = arch_flops(arch, searcher.ess)
        sampled.append({"arch": arch.to_dict(), "flops": f, "deviation": abs(f / target - 1)})
        if protocol == "until-within" and within(f):
            break
    # best-of-n keeps the closest; until-within stops at the first hit, the closest so far, or, when no sample
    # gets within the tolerance, keeps the closest of all (``within`` is then false)
    best = min(sampled, key=lambda s: s["deviation"])
    return {"target": target, "arch": best["arch"], "flops": best["flops"], "deviation": best["deviation"],
            "samples": len(sampled), "within": within(best["flops"]), "protocol": protocol,
            "sampled_flops": [s["flops"] for s in sampled], "most_likely": searcher.theta.most_likely().as_arch().to_dict()}


def final_archs(result: dict, n: int, seed: int = 0) -> list[Arch]:
    """n architectures sampled from a finished NAS run's final distribution (§4.4's samples)."""
    theta = Theta.from_probs(Options.nas(Space.from_dict(result["space"])), result["probs"])
    g = torch.Generator().manual_seed(seed)
    return [theta.sample(g).as_arch() for _ in range(n)]


def run(cfg: NASConfig, data: data_mod.ImageData | None = None, callback=None) -> dict:
    """NAS end to end: writes runs/<name>/{config,nas}.json and returns the result."""
    cfg.check()
    ess = cfg.ess_for(data)
    space = Space.read(cfg.space, ess)
    finish = lambda s: sample_final(s, cfg.protocol(), cfg.n_samples, cfg.max_samples, cfg.tolerance) | {
        "space": space.to_dict(), "space_source": cfg.space}
    return nss.run_search(cfg, ess, Options.nas(space), f"the architectures of {space}", cfg.default_name(),
                           finish, data, callback, result_file="nas.json")


def summary(result: dict) -> str:
    within = "within" if result["within"] else "NOT within"
    return (f"NAS in {result['space_source']} for {format_flops(result['target'])} on {result['dataset']}:\n"
            f"  {Arch.from_dict(result['arch'])}\n"
            f"  FLOPs {format_flops(result['flops'])} (|Δ| {100 * result['deviation']:.1f}%, {within} the tolerance) "
            f"after {result['samples']} samples ({result['protocol']})\n"
            f"  written to {result['run_dir']}/nas.json")


def main(argv=None) -> int:
    cfg = runs.parse_config(NASConfig, argv, description=__doc__.split("\n\n")[0])
    print(summary(run(cfg)))
    return 0


if __name__ == "__main__":
    runs.cli(main)
