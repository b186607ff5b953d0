"""The paper's evaluation protocols (§4.2–4.5): evaluation supernets, scores, from-scratch errors.

    python evaluate.py supernet --space full                          # evaluation supernet (§4.2)
    python evaluate.py score --supernet runs/evalnet-cifar10-full-s0/supernet.pt \\
                             --spaces full,runs/nss-cifar10-1.6GF-s0/result.json --n 1000
    python evaluate.py scratch --arch runs/nas-cifar10-1.6GF-s0-full/nas.json --seeds 3   # Table 1 ([4]'s recipe)
    python evaluate.py table --runs runs                              # Table 1, Markdown and CSV
    python evaluate.py rank --supernet …/supernet.pt --k 20           # how well the supernet ranks architectures
    python evaluate.py export --arch …/nas.json --out model.pt        # a standalone network file

* Supernet-based evaluation: a supernet trained apart from the search, on the whole training
  set, with uniform single-path sampling (optionally the sandwich rule). An architecture is
  scored by slicing it out, recalibrating BN on ~2000 training images and measuring the test
  error (Figures 3–5).
* From scratch: ``build(arch)`` trained over several seeds by a recipe of ``scratch.py`` (Table 1).
* Rank agreement: Kendall's τ and Spearman's ρ between supernet and from-scratch errors.

EDFs, Pareto fronts, the figures and Table 1 are drawn by ``plots.py``; ``python notebooks/render.py --plain`` runs every
protocol end to end on synthetic data.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence


if __name__ == "__main__":           # Ctrl-C while the imports below load: one line, exit code 130
    import startup
    startup.guard()

import numpy as np
import torch
from tqdm.auto import tqdm

import data as data_mod
import distributed
import plots
import runs
from flops import arch_flops, arch_params, batch_arch_flops, format_flops
from rundir import RunError, load_checkpoint, reading, run_folder, save_torch, write_atomic, write_json
from runs import RunSettings, option, space_label
from scratch import ScratchConfig, TrainSettings, eval_tensors, run_scratch, save_network, test_error, train_from_scratch
from space import Arch, ExpandedSearchSpace, Space
from supernet import SuperNet, build, recalibrate_bn
from train import autocast, train_step


# ---- Sampling architectures (§4.2, §4.5) ---------------------------------------------------------

MAX_DRAWS = 20_000_000       # architectures drawn before a band (and ordering) that almost none meets is given up


def sample_archs(space: Space, n: int, ess: ExpandedSearchSpace, generator: torch.Generator,
                 flops_band: tuple[float, float] | None = None, ordering: str | None = None,
                 max_draws: int | None = None) -> list[Arch]:
    """n architectures uniform on {a ∈ 𝒜 : FLOPs(a) in the band, a obeys the ordering}, by batched rejection; after
    ``max_draws`` draws (default MAX_DRAWS) without n of them, one line (RunError) names the constraint."""
    space.validate(ess)
    max_draws = MAX_DRAWS if max_draws is None else max_draws
    kept_d, kept_w, have, drawn, batch = [], [], 0, 0, max(4 * n, 1024)
    while have < n:
        if drawn >= max_draws:
            band = f"the band {flops_band[0]:.10g} to {flops_band[1]:.10g} FLOPs (--flops-min, --flops-max)" if flops_band else ""
            order = f"the {ordering} ordering (--ordering)" if ordering else ""
            raise RunError(f"only {have} of {n} architectures of {space} meet {' and '.join(filter(None, (band, order)))} "
                           f"after {drawn:,} draws: {'widen the band, or ' if band else ''}ask for fewer (--n)")
        if drawn:   # size the next batch from the acceptance so far
            batch = min(2_000_000, max(batch, int(2 * (n - have) * drawn / max(have, 1))), max_draws - drawn)
        with runs.user_input():     # an ordering that no architecture of the space obeys
            d, w = space.sample_tensors(generator, batch, ordering)
        drawn += batch
        if flops_band is not None:
            f = batch_arch_flops(d, w, ess)
            keep = (f >= flops_band[0]) & (f <= flops_band[1])
            d, w = d[keep], w[keep]
        kept_d.append(d)
        kept_w.append(w)
        have += len(d)
    d, w = torch.cat(kept_d)[:n].tolist(), torch.cat(kept_w)[:n].tolist()
    return [Arch(tuple(a), tuple(b)) for a, b in zip(d, w)]


# ---- Supernet-based evaluation (§4.2) ------------------------------------------------------------

@dataclass
class SupernetConfig(RunSettings, TrainSettings):
    """Training of an evaluation supernet, separate from the search's (§4.2)."""

    space: str = option("full", "space to train over: 'full', an NSS result.json or a space JSON", path="input")
    recipe: str = option("supernet", "the training recipe (supernet: 30 epochs, batch 256, cosine)",
                         choices=("paper", "fast", "supernet"))
    sandwich: bool = option(False, "sandwich rule: each step also trains the space's largest and smallest network")

    QUICK = {**RunSettings.QUICK, "epochs": 6, "batch_size": 64, "lr": 0.1}
    SHARDED_BATCH = True

    def check(self):
        super().check()
        self.check_training()

    def default_name(self) -> str:
        return f"evalnet-{self.dataset}-{space_label(self.space)}-s{self.seed}"


class SupernetTrainer:
    """Uniform single-path training of a supernet over a space (§4.2); checkpoints like the searcher."""

    def __init__(self, cfg: SupernetConfig, ess: ExpandedSearchSpace, space: Space, device: torch.device):
        self.cfg, self.ess, self.space, self.device = cfg, ess, space, device
        self.amp = cfg.amp and device.type == "cuda"
        self.supernet = SuperNet(ess, seed=cfg.seed).to(device)
        if self.amp:
            self.supernet = self.supernet.to(memory_format=torch.channels_last)
        self.opt = cfg.sgd(self.supernet.parameters())
        self.supernet.batch_stats_reduce = distributed.batch_stats_reduce()   # global-batch BN under torchrun
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.step, self.history = 0, 0, []

    def archs(self) -> list[Arch]:
        """This step's architectures: one uniform sample, plus the extremes under the sandwich rule."""
        sampled = [self.space.sample(self.gen)]
        if not self.cfg.sandwich:
            return sampled
        smallest, largest = self.space.ends()
        return [largest, smallest] + sampled

    def fit(self, batches, until: int | None = None, on_step: Callable | None = None, on_epoch: Callable | None = None):
        """Epochs up to ``until`` (default ``cfg.epochs``) from where a resumed state stands; hooks as the searcher's."""
        while self.epoch < (self.cfg.epochs if until is None else min(until, self.cfg.epochs)):
            start, loss_sum = time.time(), torch.zeros((), device=self.device)
            for x, y in batches:
                forwards = [lambda inp, a=a: self.supernet(inp, a) for a in self.archs()]
                # under torchrun: the same architectures everywhere, a share of the batch each, averaged gradients
                loss_sum += train_step(forwards, self.opt, distributed.shard(x), distributed.shard(y),
                                       self.cfg.lr_at(self.step, len(batches)), self.amp, self.cfg.label_smoothing,
                                       sync=lambda: distributed.average_grads(self.supernet.parameters()))
                self.step += 1
                if on_step is not None:
                    on_step(self, [loss_sum])
            record = {"epoch": self.epoch + 1, "loss": float(loss_sum) / len(batches), "seconds": time.time() - start}
            self.history.append(record)
            self.epoch += 1
            if on_epoch is not None:
                on_epoch(self, record)
        return self

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "history": self.history, "supernet": self.supernet.state_dict(),
                "opt": self.opt.state_dict(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict):
        self.supernet.load_state_dict(state["supernet"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])


def train_supernet(cfg: SupernetConfig, data: data_mod.ImageData | None = None, callback=None) -> tuple[SuperNet, dict]:
    """Train (or resume) an evaluation supernet; writes runs/<name>/{config.json,supernet.pt,train.json}."""
    cfg.check()
    ess = cfg.ess_for(data)
    space = Space.read(cfg.space, ess)
    with run_folder(Path(cfg.out) / (cfg.name or cfg.default_name()), cfg.resume, cfg.overwrite, reuse=cfg.reuse,
                    demo=cfg.quick) as run_dir:
        device = runs.resolve_device(cfg.device)
        data = data_mod.load_for(cfg, ess, device) if data is None else data.to(device)
        trainer = SupernetTrainer(cfg, ess, space, device)
        data_gen = data_mod.make_generator(device, cfg.seed + 1)
        loader = data_mod.Loader(data.train_x, data.train_y, data.mean, data.std, min(cfg.batch_size, len(data.train_y)),
                                 data_gen, cutout=cfg.cutout_for(data.num_classes), channels_last=trainer.amp)
        describe = lambda r: f"supernet epoch {r['epoch']:3d}/{cfg.epochs} loss {r['loss']:.3f} {r['seconds']:.1f}s"
        status = lambda t, sums, n: f"loss {float(sums[0]) / max(1, n):.3f}"
        runs.train_run(trainer, lambda on_step, on_epoch: trainer.fit(loader, None, on_step, on_epoch), len(loader),
                       cfg, run_dir, ess, data, device, data_gen, describe, status, callback=callback,
                       space=f"{space.size:,} architectures of {space_label(cfg.space)}", batch=loader.batch_size)
        trainer.supernet.batch_stats_reduce = None      # trained: scoring runs one architecture per process
        state = {"ess": ess.to_dict(), "space": space.to_dict(), "state": trainer.supernet.state_dict()}
        write_atomic(run_dir / "supernet.pt", lambda p: save_torch(state, p))
        result = {"space": space.to_dict(), "ess": ess.to_dict(), "dataset": cfg.dataset, "history": trainer.history,
                  "seconds": sum(h["seconds"] for h in trainer.history), "supernet": str(run_dir / "supernet.pt")}
        write_json(run_dir / "train.json", result)
    return trainer.supernet, result


def load_supernet(path: str | Path, device="cpu") -> tuple[SuperNet, Space]:
    """A supernet saved by ``train_supernet``, and the space its weights were trained over."""
    fix = "give --supernet the supernet.pt that `evaluate.py supernet` writes"
    state = load_checkpoint(Path(path), fix)
    with reading(path, "is not a supernet written by evaluate.py", fix):
        net = SuperNet(ExpandedSearchSpace.from_dict(state["ess"]))
        net.load_state_dict(state["state"])
        trained = Space.from_dict(state["space"]).validate(net.ess)
    return net.to(device).eval(), trained


def check_trained_over(trained: Space, what: str, archs: Sequence[Arch], supernet: str):
    """Refuse to score (or export) architectures outside the space that the supernet was trained over: its weights
    there never trained, so their errors would rank nothing. ``archs``: a space's two ends, or the architecture."""
    if not all(trained.contains(a) for a in archs):
        raise RunError(f"{what} reaches beyond {trained}, the space that the supernet {supernet or '(--quick)'} was "
                       f"trained over, where its weights never trained: score inside that space, or train a supernet "
                       f"over one that holds it (evaluate.py supernet --space)")


def score_archs(supernet: SuperNet, archs: Sequence[Arch], data: data_mod.ImageData, calib_images: int = 2000,
                test_images: int | None = None, batch_size: int = 1000, seed: int = 0, amp: bool = True,
                progress: bool = True) -> list[dict]:
    """Score architectures with shared weights: slice, recalibrate BN on ``calib_images`` training images (0: keep
    the supernet's statistics), and measure the test error (§4.2). One dict per architecture, in order (repeats are
    scored once); the supernet's BN statistics are restored afterwards. Under torchrun the processes split the
    architectures (``distributed.map_shared``) and every process returns the whole list."""
    device = next(supernet.parameters()).device
    amp = amp and device.type == "cuda"
    data = data.to(device)
    calib, test_x, test_y = eval_tensors(data, calib_images, test_images, seed, channels_last=amp)
    saved = {k: v.clone() for k, v in supernet.state_dict().items() if "running" in k or "num_batches" in k}
    was_training = supernet.training
    unique = list(dict.fromkeys(archs))     # an architecture drawn twice is scored once
    bar = tqdm(total=len(range(distributed.rank(), len(unique), distributed.world())), desc="scoring", leave=False,
               disable=runs.bar_off(progress), dynamic_ncols=True)

    def score(arch: Arch) -> dict:
        with autocast(device, amp):
            if calib_images:
                recalibrate_bn(supernet, calib, arch=arch, batch_size=min(batch_size, 500))
            supernet.eval()
            error = test_error(lambda x: supernet(x, arch), test_x, test_y, batch_size)
        bar.update()
        return {"arch": arch.to_dict(), "flops": arch_flops(arch, supernet.ess),
                "params": arch_params(arch, supernet.ess), "error": error}
    try:
        scores = dict(zip(unique, distributed.map_shared(score, unique)))
    finally:
        bar.close()
        supernet.load_state_dict(saved, strict=False)
        supernet.train(was_training)
    return [dict(scores[arch]) for arch in archs]


# ---- Command line --------------------------------------------------------------------------------

@dataclass
class ScoreConfig(RunSettings):
    """Scoring N architectures from each of several spaces with an evaluation supernet."""

    supernet: str = option("", "supernet.pt written by `evaluate.py supernet`", path="input")
    spaces: str = option("full", "comma-separated: 'full', NSS result.json files, space JSON files", path="inputs")

    HIDDEN = ("resume", "quick", "d_max", "w_max", "d_step", "w_step")    # nothing to resume; the supernet's space
    n: int = option(1000, "architectures per space", "[1, 1e6]")
    calib_images: int = option(2000, "training images for BN recalibration (0: none)", "[0, 1e7]")
    test_images: int = option(0, "test images (0: all)", "[0, 1e7]")
    batch_size: int = option(1000, "evaluation batch size", "[1, 1e6]")
    flops_min: float = option(0.0, "keep only architectures with at least these FLOPs", "[0, inf)")
    flops_max: float = option(0.0, "keep only architectures with at most these FLOPs (0: no bound)", "[0, inf)")
    ordering: str = option("", "'', 'regnet' (d1≤d2≤d3, w1≤w2≤w3) or 'elite' (d1≤d3≤d2, w1≤w3≤w2)",
                           choices=("", "regnet", "elite"))

    def check(self):
        super().check()
        if not self.supernet:
            raise RunError("--supernet is required: a supernet.pt written by `evaluate.py supernet`")
        items = self.spaces.split(",")
        if any(not s or s != s.strip() for s in items) or len(set(items)) < len(items):
            raise RunError(f"--spaces must list each space once, comma-separated without blanks (full,runs/…/result.json), "
                           f"got {self.spaces!r}")
        if self.flops_max and self.flops_min > self.flops_max:
            raise RunError(f"--flops-min {self.flops_min:g} is above --flops-max {self.flops_max:g}: no architecture is in between")

    def default_name(self) -> str:
        return f"scores-{self.dataset}-s{self.seed}"


def run_score(cfg: ScoreConfig) -> dict:
    """Sample and score architectures from each space; writes runs/<name>/scores.json."""
    cfg.check()
    device = runs.resolve_device(cfg.device)
    supernet, trained = load_supernet(cfg.supernet, device)
    ess = supernet.ess
    spaces = {spec: Space.read(spec, ess) for spec in cfg.spaces.split(",")}
    for spec, space in spaces.items():
        check_trained_over(trained, f"--spaces {spec}", space.ends(), cfg.supernet)
    band = (cfg.flops_min, cfg.flops_max or math.inf) if (cfg.flops_min or cfg.flops_max) else None
    for spec, space in spaces.items():    # a band no architecture reaches: FLOPs grow with every depth and width
        lo, hi = (arch_flops(end, ess) for end in space.ends())
        if band and (band[1] < lo or band[0] > hi):
            raise RunError(f"no architecture of {spec} has {band[0]:.4g} to {band[1]:.4g} FLOPs (--flops-min, "
                           f"--flops-max): its architectures have {lo:.4g} to {hi:.4g}")
        with runs.user_input():
            space.check_ordering(cfg.ordering or None)
    with run_folder(Path(cfg.out) / (cfg.name or cfg.default_name()), cfg.resume, cfg.overwrite, None, cfg.reuse,
                    cfg.quick) as run_dir:
        data = data_mod.load_for(cfg, ess, device)
        g = torch.Generator().manual_seed(cfg.seed)
        result = {"dataset": cfg.dataset, "supernet": cfg.supernet, "ordering": cfg.ordering, "band": band, "spaces": {}}
        for spec, space in spaces.items():
            archs = sample_archs(space, cfg.n, ess, g, band, cfg.ordering or None)
            scores = score_archs(supernet, archs, data, cfg.calib_images, cfg.test_images or None, cfg.batch_size,
                                 cfg.seed, cfg.amp, cfg.progress)
            result["spaces"][spec] = {"space": space.to_dict(), "scores": scores}
            print(f"{spec}: {len(scores)} architectures, median error {np.median([s['error'] for s in scores]):.2f}%",
                  file=sys.stderr)
        write_json(run_dir / "scores.json", result)
    return result


@dataclass
class TableConfig:
    """Table 1 from the NAS runs (and their from-scratch errors) found under a folder."""

    runs: str = option("runs", "folder searched for nas.json (and scratch.json beside them)")
    match: str = option("*", "only run folders whose name matches this glob, e.g. 'nas-cifar10-*'")
    out: str = option("table1", "output stem: writes <out>.md and <out>.csv", path="output stem",
                      suffixes=(".md", ".csv"))
    overwrite: bool = option(False, "replace <out>.md and <out>.csv if they exist")

    def check(self):
        runs.check_fields(self)         # a --config file's values: of the right type
        if not Path(self.runs).is_dir():
            raise RunError(f"--runs {self.runs} is not a folder")
        if not self.match.strip():
            raise RunError("--match must be a glob of run folder names, such as 'nas-cifar10-*' (or '*' for all)")


def run_table(cfg: TableConfig) -> str:
    rows = plots.table_rows(cfg.runs, cfg.match)
    if not rows:
        raise RunError(f"no nas.json under {cfg.runs} in folders matching {cfg.match!r}: run nas.py first")
    markdown, csv_text = plots.table1(rows)
    md, csv = runs.written(next(f for f in dataclasses.fields(cfg) if f.name == "out"), cfg.out)   # <out>.md, <out>.csv
    md.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(md, lambda p: p.write_text(markdown))
    write_atomic(csv, lambda p: p.write_text(csv_text))
    return markdown


@dataclass
class ExportConfig(RunSettings):
    """A standalone network file of one architecture: freshly initialised, or holding an evaluation
    supernet's weights with BN recalibrated (§4.2), as a starting point for your own training."""

    arch: str = option("", "a nas.json, an architecture JSON file, or inline JSON {\"depths\": [...], \"widths\": [...]}",
                       path="input")
    out: str = option("model.pt", "the network file to write (load it with scratch.load_network); the torch.export "
                                  "program goes beside it, with the suffix .pt2",
                      path="output file", suffixes=(".pt2",))
    supernet: str = option("", "supernet.pt to take the weights from (empty: a freshly initialised network)", path="input")
    calib_images: int = option(2000, "training images for BN recalibration, with --supernet (0: none)", "[0, 1e7]")

    HIDDEN = ("resume", "reuse", "progress", "quick", "name", "amp")     # one file (and its .pt2), written at once

    def check(self):
        super().check()
        if not self.arch:
            raise RunError("--arch is required: a nas.json, an architecture JSON file or inline JSON")
        if Path(self.out).suffix == ".pt2":
            raise RunError(f"--out {self.out}: name the network file (model.pt, say); the torch.export program goes "
                           f"beside it as {Path(self.out).stem}.pt2")


PROGRAM_META = "nss.json"      # the extra file of an exported .pt2 that describes the network and its input


def save_program(path: Path, net: torch.nn.Module, image_shape: tuple[int, ...], meta: dict):
    """``net`` as a torch.export program (any batch size) that ``torch.export.load(path).module()`` runs without
    this project, with ``meta`` as the JSON extra file PROGRAM_META; atomically."""
    net = copy.deepcopy(net).cpu().eval()
    example = torch.zeros(2, *image_shape)
    program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))

    def write(p: Path):       # through a file object: torch names the temporary file's suffix otherwise
        with open(p, "wb") as f:
            torch.export.save(program, f, extra_files={PROGRAM_META: json.dumps(meta)})
    write_atomic(path, write)


def run_export(cfg: ExportConfig) -> str:
    """Write ``--out``: ``build(arch)`` seeded, or ``supernet.extract(arch)`` with BN recalibrated, as a network file
    and, beside it, as a torch.export program (.pt2); both hold the data's normalisation and class names. Returns a
    summary."""
    cfg.check()
    device = runs.resolve_device(cfg.device)
    supernet, trained = load_supernet(cfg.supernet, device) if cfg.supernet else (None, None)
    ess = cfg.ess_for() if supernet is None else supernet.ess
    arch = Arch.read(cfg.arch, ess)
    if trained is not None:
        check_trained_over(trained, f"--arch {arch}", [arch], cfg.supernet)
    # without a supernet the data is read for its normalisation and class names, which go with the network
    data = data_mod.load_for(cfg, ess, "cpu" if supernet is None else device)
    if supernet is None:
        net, source = build(arch, ess, cfg.seed), {"initialised": "seed", "seed": cfg.seed, "dataset": cfg.dataset}
    else:
        net = supernet.extract(arch)
        if cfg.calib_images:
            recalibrate_bn(net, eval_tensors(data, cfg.calib_images, 1, cfg.seed)[0])
        source = {"supernet": cfg.supernet, "calib_images": cfg.calib_images, "dataset": cfg.dataset}
    inputs = {"mean": data.mean.tolist(), "std": data.std.tolist(), "classes": data_mod.class_names(data, cfg.data_dir),
              "input": "float32 images (N, 3, H, W) in [0, 1], normalised per channel: (x - mean) / std"}
    out, program, flops = Path(cfg.out), Path(cfg.out).with_suffix(".pt2"), arch_flops(arch, ess)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_network(out, net.eval(), ess, **source, **inputs)
    save_program(program, net, tuple(data.train_x.shape[1:]), {"arch": arch.to_dict(), "flops": flops,
                                                               "params": arch_params(arch, ess), **source, **inputs})
    return f"{arch} ({format_flops(flops)}) written to {out} and, as a torch.export program, {program}"


# ---- How far to trust the evaluation supernet: its ranking against training from scratch ---------

@dataclass
class RankConfig(RunSettings):
    """k architectures of a space trained from scratch and scored with the evaluation supernet: Kendall's τ and
    Spearman's ρ between the two errors say how well the supernet ranks architectures."""

    supernet: str = option("", "supernet.pt written by `evaluate.py supernet` (with --quick: trained here if empty)",
                           path="input")
    space: str = option("full", "the space to sample: 'full', an NSS result.json or a space JSON", path="input")

    HIDDEN = ("resume",)        # it writes no checkpoint
    k: int = option(20, "architectures to train and score", "[3, 1e4]")
    recipe: str = option("fast", "from-scratch recipe (fast | paper)", choices=("fast", "paper"))
    epochs: int = option(0, "from-scratch epochs (0: the recipe's)", "[0, 1e5]")
    batch_size: int = option(0, "from-scratch batch size (0: the recipe's)", "[0, 1e6]")
    lr: float = option(0.0, "from-scratch peak learning rate (0: the recipe's)", "[0, inf)")
    calib_images: int = option(2000, "training images for BN recalibration", "[0, 1e7]")
    test_images: int = option(0, "test images (0: all)", "[0, 1e7]")

    QUICK = {**RunSettings.QUICK, "k": 5, "epochs": 2, "batch_size": 64, "lr": 0.1, "calib_images": 200,
             "test_images": 250}

    def check(self):
        super().check()
        if not self.supernet and not self.quick:
            raise RunError("--supernet is required: a supernet.pt written by `evaluate.py supernet`")

    def default_name(self) -> str:
        return "rank-quick" if self.quick else f"rank-{self.dataset}-{space_label(self.space)}-s{self.seed}"


def run_rank(cfg: RankConfig) -> dict:
    """Score and train the same k architectures; writes rank.json and the rank-agreement plot."""
    cfg.check()
    run_dir = Path(cfg.out) / (cfg.name or cfg.default_name())
    with run_folder(run_dir, cfg.resume, cfg.overwrite, None, cfg.reuse, cfg.quick):
        device = runs.resolve_device(cfg.device)
        fields = {f: getattr(cfg, f) for f in ("dataset", "data_dir", "download", "synthetic_size", "d_max", "w_max",
                                               "d_step", "w_step", "seed", "device", "amp", "progress")}
        if cfg.supernet:
            supernet, trained = load_supernet(cfg.supernet, device)
            data = data_mod.load_for(cfg, supernet.ess, device)
        else:   # --quick: a small evaluation supernet first, inside this run's folder
            quick = {**SupernetConfig.QUICK, **fields, "quick": True, "out": str(run_dir), "name": "evalnet", "overwrite": True}
            data = data_mod.load_for(cfg, cfg.ess_for(), device)
            supernet, trained = train_supernet(SupernetConfig(**quick), data)
            trained = Space.from_dict(trained["space"])
        ess = supernet.ess
        space, g, archs = Space.read(cfg.space, ess), torch.Generator().manual_seed(cfg.seed), []
        check_trained_over(trained, f"--space {cfg.space}", space.ends(), cfg.supernet)
        if space.size < cfg.k:       # k distinct architectures: a rank statistic of fewer is not one
            raise RunError(f"--k {cfg.k} is more than the {space.size} architectures of {cfg.space}: lower --k or "
                           f"take a larger --space")
        while len(archs) < cfg.k:
            archs = list(dict.fromkeys(archs + sample_archs(space, cfg.k - len(archs), ess, g)))
        scored = score_archs(supernet, archs, data, cfg.calib_images, cfg.test_images or None, seed=cfg.seed, amp=cfg.amp,
                             progress=cfg.progress)
        scratch_cfg = ScratchConfig(**fields, recipe=cfg.recipe, epochs=cfg.epochs or None, batch_size=cfg.batch_size or None,
                                    lr=cfg.lr or None, seeds=1)
        trained = [train_from_scratch(arch, ess, data, scratch_cfg, cfg.seed)[0]["error"] for arch in archs]
        supernet_errors = [s["error"] for s in scored]
        result = {"space": cfg.space, "supernet": cfg.supernet, "dataset": cfg.dataset, "recipe": scratch_cfg.recipe_values(),
                  "archs": [a.to_dict() for a in archs], "flops": [arch_flops(a, ess) for a in archs],
                  "supernet_errors": supernet_errors, "scratch_errors": trained,
                  **plots.rank_agreement(supernet_errors, trained), "run_dir": str(run_dir)}
        plots.plot_rank_agreement(supernet_errors, trained, run_dir / "rank",
                                  title=f"{len(archs)} architectures of {space_label(cfg.space)} on {cfg.dataset}")
        write_json(run_dir / "rank.json", result)
    return result


def rank_summary(cfg: RankConfig) -> str:
    r = run_rank(cfg)
    where = f"written to {r['run_dir']}/rank.json and rank.png"
    if not all(math.isfinite(r[k]) for k in ("kendall_tau", "spearman_rho")):     # one side's errors all equal
        same = "from-scratch" if len(set(r["scratch_errors"])) == 1 else "supernet"
        return (f"Kendall τ and Spearman ρ are undefined: the {same} errors of the {len(r['archs'])} architectures are "
                f"all {r[same.replace('from-', '') + '_errors'][0]:.2f}% (train longer: --epochs); {where}")
    return (f"Kendall τ {r['kendall_tau']:.3f} (p = {r['kendall_p']:.2g}), Spearman ρ {r['spearman_rho']:.3f} between supernet and from-scratch "
            f"errors of {len(r['archs'])} architectures; {where}")


def scratch_summary(cfg: ScratchConfig) -> str:
    r = run_scratch(cfg)
    return f"{Arch.from_dict(r['arch'])}: error {r['mean']:.2f} ± {r['std']:.2f}% over {len(r['errors'])} seeds"


COMMANDS = {"supernet": (SupernetConfig, lambda c: f"supernet written to {train_supernet(c)[1]['supernet']}"),
            "score": (ScoreConfig, lambda c: f"scores of {', '.join(run_score(c)['spaces'])} written"),
            "scratch": (ScratchConfig, scratch_summary),
            "table": (TableConfig, run_table),
            "export": (ExportConfig, run_export),
            "rank": (RankConfig, rank_summary)}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else None
    if command in COMMANDS:
        cls, action = COMMANDS[command]
        print(action(runs.parse_config(cls, argv[1:], description=f"evaluate.py {command}: {cls.__doc__}",
                                       prog=f"evaluate.py {command}")))
        return 0
    if "--quick" in argv:      # `evaluate.py --quick`, `evaluate.py --out X --quick`
        raise RunError("the end-to-end demo of every protocol is the notebooks at smoke scale (`python notebooks/render.py "
                       "--plain`); `evaluate.py rank --quick` runs the rank agreement alone")
    if command in ("-h", "--help"):
        print(__doc__)
        return 0
    if command and command.startswith("-"):
        raise RunError(f"{command} before a command: give the command first, as in `evaluate.py scratch {command} …`; "
                       f"the commands: {', '.join(COMMANDS)} (see --help)")
    raise RunError(f"{'no command' if command is None else 'unknown command ' + repr(command)}: give one of "
                   f"{', '.join(COMMANDS)} (see --help)")


if __name__ == "__main__":
    runs.cli(main)
