"""Network Space Search from the command line (§3.3–3.4): find the Elite Space for a FLOPs target.

    python nss.py --dataset cifar10 --target 1.6e9      # the paper's setting (the default)
    python nss.py --target 6e8,1.6e9,4e9                 # several targets after one shared warmup
    python nss.py --quick                                # offline demo: reduced space, synthetic data

The method (Θ, the Gumbel-softmax sampling, the weight and Θ steps of Eq. 3–5, the search loop
and the Elite Space selection) is ``search.py``; this file gives it a run folder, checkpoints,
resume and a command line (``runs.py``): ``run_search``, which NAS (``nas.py``) runs too.
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


if __name__ == "__main__":           # Ctrl-C while the imports below load: one line, exit code 130
    import startup
    startup.guard()

import torch

import data as data_mod
import distributed
import rundir
import runs
from flops import format_flops
from rundir import RunError, load_checkpoint
from runs import SearchConfig, option
from search import SearchSettings, Searcher, check_target, elite_space, short
from space import ExpandedSearchSpace, Options, Space
from train import Diverged


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


# ---- A search in its run folder (NSS here, NAS in nas.py) ----------------------------------------

def search_status(searcher: Searcher, sums: list, n: int) -> str:
    """The progress bar's text: the running loss, E[FLOPs] and τ, and P_Θ's mode (none in the warmup)."""
    warmup = searcher.epoch < searcher.settings.warmup_epochs
    mode = "uniform (warmup)" if warmup else short(searcher.theta.most_likely())
    return f"loss {float(sums[0]) / max(1, n):.3f} E[FLOPs] {format_flops(searcher.theta.expected_flops(searcher.ess))} {mode}"


def theta_is_finite(searcher: Searcher, sums: list):
    """Θ lives on the host, so checking it after every Θ step costs no device sync."""
    if not all(bool(p.isfinite().all()) for p in searcher.theta.parameters()):
        s = searcher.settings
        hint = f"--lr (now {s.lr:g})" if not bool(torch.as_tensor(sums[1]).isfinite()) else f"--arch-lr (now {s.arch_lr:g})"
        raise Diverged(f"training diverged: Θ is not finite after step {searcher.step}: lower {hint}")


def describe_search(record: dict, epochs: int) -> str:
    executed = f" ran {format_flops(record['executed_flops'])}" if record["executed_flops"] else ""
    return (f"epoch {record['epoch']:3d}/{epochs} {record['phase']:6s} loss {record['loss']:.3f} "
            f"flops-loss {record['flops_loss']:.3f} E[FLOPs] {format_flops(record['expected_flops'])}{executed} "
            f"τ {record['tau']:.2f} {record['seconds']:.1f}s")


def run_search(cfg: SearchConfig, ess: ExpandedSearchSpace, options: Options, what: str, default_name: str,
               finish: Callable[[Searcher], dict], data: data_mod.ImageData | None = None,
               callback: Callable | None = None, result_file: str = "result.json", start: dict | None = None,
               until: int | None = None) -> dict:
    """Check the target, search in runs/<name> with a checkpoint per epoch (resumable), ``finish`` the searcher into
    a result with P_Θ, the history, the dataset, the space, the timings and the run folder, and write it to
    ``result_file`` (NSS and NAS). ``start``: a warmed-up state to go on from; ``until``: stop after that epoch,
    writing no result."""
    started = time.time()
    with runs.user_input():
        check_target(cfg.target, options, ess, what)
    with rundir.run_folder(Path(cfg.out) / (cfg.name or default_name), cfg.resume, cfg.overwrite, reuse=cfg.reuse,
                           demo=cfg.quick) as run_dir:
        device = runs.resolve_device(cfg.device)
        data = data_mod.load_for(cfg, ess, device) if data is None else data.to(device)
        parallel = distributed.world() > 1
        searcher = Searcher(cfg.part(SearchSettings), ess, options, device=device, amp=cfg.amp,
                            average_grads=distributed.average_grads if parallel else None)
        if searcher.supernet is not None:
            searcher.supernet.batch_stats_reduce = distributed.batch_stats_reduce()   # global-batch BN
        data_gen = data_mod.make_generator(device, cfg.seed + 1)      # shuffling and augmentation
        train, val = data_mod.search_loaders(data, cfg.seed, cfg.batch_size, data_gen, searcher.amp)
        steps, batch = min(len(train), len(val)), train.batch_size if cfg.task_loss else None
        if not cfg.task_loss:            # Θ on the FLOPs loss alone: no batches
            train = val = [None] * steps
        elif parallel:                   # each process takes its share of every global batch
            train, val = (data_mod.Mapped(b, lambda xy: tuple(map(distributed.shard, xy))) for b in (train, val))
        end = cfg.epochs if until is None else min(until, cfg.epochs)
        warmup = min(cfg.warmup_epochs, end)      # the phases up to ``until``: warmup, search (an empty one left out)
        runs.train_run(searcher, lambda on_step, on_epoch: searcher.fit(train, val, until, on_step, on_epoch),
                       steps, cfg, run_dir, ess, data, device, data_gen, lambda r: describe_search(r, cfg.epochs),
                       search_status, theta_is_finite, callback, start,
                       ignore=("target",) if start is not None or until is not None else (),
                       space=f"{math.prod(d * w for d, w in options.sizes):,} {what.removeprefix('the ')}",
                       phases=[(name, n) for name, n in (("warmup", warmup), ("search", end - warmup)) if n],
                       batch=batch)
        if until is not None:            # a warmup that several targets go on from: no result of its own
            return {}
        result = finish(searcher) | {"probs": searcher.theta.probs_dict(), "history": searcher.history} | {
            "dataset": cfg.dataset, "ess": ess.to_dict(), "seconds": sum(h["seconds"] for h in searcher.history),
            "wall_seconds": time.time() - started, "run_dir": str(run_dir)}
        rundir.write_json(run_dir / result_file, result)
    return result


# ---- Network Space Search ------------------------------------------------------------------------

def run(cfg: NSSConfig, data: data_mod.ImageData | None = None, callback=None) -> dict:
    """Network Space Search end to end: writes runs/<name>/{config,result}.json and returns the result."""
    cfg.check()
    ess = cfg.ess_for(data)
    return run_search(cfg, ess, Options.nss(ess), "the candidate spaces", cfg.default_name(),
                      lambda s: elite_space(s.theta, s.gen, cfg.n_samples, cfg.target, ess), data, callback)


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
    if cfg.warmup_epochs:       # no warmup: nothing to share, each target starts from the initial state
        run_search(dataclasses.replace(cfgs[0], name=warm_name, resume=resume(warm_name)), ess, options, what,
                   warm_name, None, data, callback, until=cfg.warmup_epochs)
    results = []
    try:
        for c, name in zip(cfgs, names):
            # the warmed-up state, read afresh on the host for each target: an optimiser trains the tensors it loads
            warm = load_checkpoint(out / warm_name / "checkpoint.pt") if cfg.warmup_epochs else None
            shared = str(out / warm_name) if cfg.warmup_epochs else None
            finish = lambda s, c=c: elite_space(s.theta, s.gen, c.n_samples, c.target, ess) | {"warmup_run": shared}
            results.append(run_search(dataclasses.replace(c, name=name, resume=resume(name)), ess, options, what,
                                      name, finish, data, callback, start=warm))
    except rundir.Interrupted:    # the warmup folder holds a run now: the same command alone would be refused
        if not cfg.warmup_epochs:
            raise
        raise rundir.Interrupted(f"interrupted; {out / warm_name / 'checkpoint.pt'} keeps the shared warmup (and each "
                                 f"target folder what it finished): {rundir.rerun_advice(cfg.overwrite, cfg.reuse)}") from None
    return results


def split_targets(argv: list[str]) -> tuple[list[str], list[float] | None]:
    """``--target 6e8,1.6e9,4e9``: the argv with the first target only, and the targets (None for one)."""
    argv, given = list(argv), []
    for i, arg in enumerate(argv):
        if arg.partition("=")[0] == "--target" and ("=" in arg or i + 1 < len(argv)):
            given.append(i)
    for i in given[-2::-1]:                      # the last --target counts, as for any flag given twice
        del argv[i:i + (1 if "=" in argv[i] else 2)]
    for i in reversed(range(len(argv))):
        flag, eq, value = argv[i].partition("=")
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
            return argv[:i] + [f"--target={targets[0]!r}"] + argv[i + (1 if eq else 2):], targets
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
