"""The paper's evaluation protocols (§4.2–4.5): scores, from-scratch errors, EDFs, Pareto fronts,
the figures and Table 1.

    python evaluate.py supernet --space full                          # evaluation supernet (§4.2)
    python evaluate.py score --supernet runs/evalnet-cifar10-full-s0/supernet.pt \\
                             --spaces full,runs/nss-cifar10-1.6GF-s0/result.json --n 1000
    python evaluate.py scratch --arch runs/nas-cifar10-1.6GF-s0-full/nas.json --seeds 3   # Table 1
    python evaluate.py table --runs runs                              # Table 1, Markdown and CSV
    python evaluate.py --quick                                        # all of it, synthetic data

* Supernet-based evaluation: a supernet trained apart from the search, on the whole training
  set, with uniform single-path sampling (optionally the sandwich rule). An architecture is
  scored by slicing it out, recalibrating BN on ~2000 training images and measuring the test
  error (Figures 3–5).
* From scratch: ``build(arch)`` trained with cutout over several seeds (Table 1).
* EDFs follow pycls: F(e) = the fraction of models with error below e (Figures 5d and 6).
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

import data as data_mod
import nas
import nss
from flops import arch_flops, arch_params, batch_arch_flops, format_flops
from nss import RunConfig, RunError, option
from space import Arch, ExpandedSearchSpace, Space
from supernet import SuperNet, build, recalibrate_bn

FULL_COLOR, ELITE_COLOR = "tab:blue", "tab:orange"     # the paper's blue and orange dots


# --------------------------------------------------------------------------------------------
# Sampling architectures (§4.2, §4.5)
# --------------------------------------------------------------------------------------------

def sample_archs(space: Space, n: int, ess: ExpandedSearchSpace, generator: torch.Generator,
                 flops_band: tuple[float, float] | None = None, ordering: str | None = None,
                 max_draws: int = 500_000_000) -> list[Arch]:
    """n architectures uniform on {a ∈ 𝒜 : FLOPs(a) in the band, a obeys the ordering}, by batched rejection."""
    space.validate(ess)
    kept_d, kept_w, have, drawn, batch = [], [], 0, 0, max(4 * n, 1024)
    while have < n:
        if drawn >= max_draws:
            raise RunError(f"only {have} of {n} architectures of {space} meet band={flops_band} ordering={ordering} "
                           f"after {drawn:,} draws")
        if drawn:   # size the next batch from the acceptance so far
            batch = min(2_000_000, max(batch, int(2 * (n - have) * drawn / max(have, 1))))
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


# --------------------------------------------------------------------------------------------
# Analysis: Pareto fronts and EDFs
# --------------------------------------------------------------------------------------------

def pareto_front(flops: Sequence[float], errors: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats in both FLOPs and error, by increasing FLOPs."""
    order = sorted(range(len(flops)), key=lambda i: (flops[i], errors[i]))
    front, best = [], math.inf
    for i in order:
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


# --------------------------------------------------------------------------------------------
# Supernet-based evaluation (§4.2)
# --------------------------------------------------------------------------------------------

@dataclass
class SupernetConfig(RunConfig):
    """Training of an evaluation supernet, separate from the search's (§4.2)."""

    space: str = option("full", "space to train over: 'full', an NSS result.json or a space JSON")
    epochs: int = option(30, "epochs over the whole training set")
    batch_size: int = option(256, "batch size")
    lr: float = option(0.2, "peak SGD learning rate")
    warmup_epochs: float = option(1.0, "linear learning-rate warmup, then cosine decay")
    momentum: float = option(0.9, "SGD Nesterov momentum")
    weight_decay: float = option(5e-4, "SGD weight decay")
    label_smoothing: float = option(0.0, "label smoothing")
    sandwich: bool = option(False, "sandwich rule: each step also trains the space's largest and smallest network")
    cutout: int = option(0, "cutout size (0: off)")

    QUICK = {**RunConfig.QUICK, "epochs": 6, "batch_size": 64, "lr": 0.1}

    def check(self):
        super().check()
        self.check_numbers(at_least_one=("epochs", "batch_size"), positive=("lr",),
                           non_negative=("warmup_epochs", "momentum", "weight_decay", "label_smoothing", "cutout"))

    def default_name(self) -> str:
        return f"evalnet-{self.dataset}-{nas.space_label(self.space)}-s{self.seed}"


class SupernetTrainer:
    """Uniform single-path training of a supernet over a space; checkpoints like the searcher."""

    def __init__(self, cfg: SupernetConfig, ess: ExpandedSearchSpace, space: Space, device: torch.device):
        self.cfg, self.ess, self.space, self.device = cfg, ess, space, device
        torch.manual_seed(cfg.seed)
        self.amp = cfg.amp and device.type == "cuda"
        self.supernet = SuperNet(ess).to(device)
        if self.amp:
            self.supernet = self.supernet.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.supernet.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.data_gen = data_mod.make_generator(device, cfg.seed + 1)
        self.epoch, self.step, self.history, self.seconds = 0, 0, [], 0.0

    def attach(self, data: data_mod.ImageData):
        self.loader = data_mod.Loader(data.train_x, data.train_y, data.mean, data.std,
                                      min(self.cfg.batch_size, len(data.train_y)), self.data_gen,
                                      cutout=self.cfg.cutout, channels_last=self.amp)

    def archs(self) -> list[Arch]:
        """This step's architectures: one uniform sample, plus the extremes under the sandwich rule."""
        sampled = [self.space.sample(self.gen)]
        if not self.cfg.sandwich:
            return sampled
        largest = Arch(tuple(hi for _, hi in self.space.depths), tuple(hi for _, hi in self.space.widths))
        smallest = Arch(tuple(lo for lo, _ in self.space.depths), tuple(lo for lo, _ in self.space.widths))
        return [largest, smallest] + sampled

    def train_epoch(self) -> dict:
        start, total = time.time(), self.cfg.epochs * len(self.loader)
        warmup = int(self.cfg.warmup_epochs * len(self.loader))
        loss_sum = torch.zeros((), device=self.device)
        bar = tqdm(self.loader, desc=f"supernet epoch {self.epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=not self.cfg.progress, dynamic_ncols=True)
        for x, y in bar:
            forwards = [lambda inp, a=a: self.supernet(inp, a) for a in self.archs()]
            loss_sum += nss.train_step(forwards, self.opt, x, y, nss.cosine_lr(self.cfg.lr, self.step, total, warmup),
                                       self.amp, self.cfg.label_smoothing)
            self.step += 1
        record = {"epoch": self.epoch + 1, "loss": float(loss_sum) / len(self.loader), "seconds": time.time() - start}
        self.history.append(record)
        self.epoch += 1
        self.seconds += record["seconds"]
        return record

    def describe(self, record: dict) -> str:
        return f"supernet epoch {record['epoch']:3d}/{self.cfg.epochs} loss {record['loss']:.3f} {record['seconds']:.1f}s"

    def state_dict(self) -> dict:
        return {"config": self.cfg.to_dict(), "device_type": self.device.type, "epoch": self.epoch, "step": self.step,
                "history": self.history, "seconds": self.seconds, "supernet": self.supernet.state_dict(),
                "opt": self.opt.state_dict(), "gen": self.gen.get_state(), "data_gen": self.data_gen.get_state()}

    def load_state_dict(self, state: dict):
        nss.check_same_settings(self.cfg, state, self.device)
        self.supernet.load_state_dict(state["supernet"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.data_gen.set_state(state["data_gen"])
        self.epoch, self.step, self.history, self.seconds = state["epoch"], state["step"], list(state["history"]), state["seconds"]


def train_supernet(cfg: SupernetConfig, data: data_mod.ImageData | None = None, callback=None) -> tuple[SuperNet, dict]:
    """Train (or resume) an evaluation supernet; writes runs/<name>/{config.json,supernet.pt,train.json}."""
    cfg.check()
    num_classes = data.num_classes if data is not None else data_mod.num_classes_of(cfg.dataset, cfg.data_dir)
    ess = cfg.ess(num_classes)
    space = nas.load_space(cfg.space, ess)
    run_dir = nss.check_run_dir(cfg, cfg.default_name())
    device = nss.resolve_device(cfg.device)
    data = nss.load_data(cfg, ess, device) if data is None else data.to(device)
    trainer = SupernetTrainer(cfg, ess, space, device)
    if cfg.resume:
        trainer.load_state_dict(nss.load_checkpoint(run_dir / "checkpoint.pt"))
    trainer.attach(data)
    nss.write_run_config(run_dir, cfg, ess, device)
    nss.run_epochs(trainer, run_dir, cfg.epochs, cfg.progress, callback)
    nss.write_atomic(run_dir / "supernet.pt", lambda p: torch.save({"ess": ess.to_dict(), "space": space.to_dict(),
                                                                    "state": trainer.supernet.state_dict()}, p))
    result = {"space": space.to_dict(), "ess": ess.to_dict(), "dataset": cfg.dataset, "history": trainer.history,
              "seconds": trainer.seconds, "supernet": str(run_dir / "supernet.pt")}
    nss.write_json(run_dir / "train.json", result)
    return trainer.supernet, result


def load_supernet(path: str | Path, device="cpu") -> SuperNet:
    """A supernet saved by ``train_supernet``."""
    state = nss.load_checkpoint(Path(path))
    try:
        net = SuperNet(ExpandedSearchSpace.from_dict(state["ess"]))
        net.load_state_dict(state["state"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise RunError(f"{path} is not a supernet written by evaluate.py ({type(e).__name__})") from None
    return net.to(device).eval()


@torch.no_grad()
def test_error(forward: Callable, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    """Top-1 error in percent of ``forward`` on normalised images."""
    wrong = torch.zeros((), dtype=torch.long, device=labels.device)
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        wrong += (forward(x).argmax(1) != y).sum()
    return 100.0 * float(wrong) / len(labels)


def eval_tensors(data: data_mod.ImageData, calib_images: int, test_images: int | None, seed: int,
                 channels_last: bool = False):
    """Normalised BN-calibration images (a seeded subset of the training set) and test images."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    idx = torch.randperm(len(data.train_y), generator=torch.Generator().manual_seed(seed))[:calib_images]
    calib = data_mod.normalize(data.train_x[idx.to(data.train_x.device)], data.mean, data.std).contiguous(memory_format=fmt)
    n = len(data.test_y) if not test_images else min(test_images, len(data.test_y))
    test = data_mod.normalize(data.test_x[:n], data.mean, data.std).contiguous(memory_format=fmt)
    return calib, test, data.test_y[:n]


def score_archs(supernet: SuperNet, archs: Sequence[Arch], data: data_mod.ImageData, calib_images: int = 2000,
                test_images: int | None = None, batch_size: int = 1000, seed: int = 0, amp: bool = True,
                progress: bool = True) -> list[dict]:
    """Score architectures with shared weights: slice, recalibrate BN on ``calib_images`` training
    images (0: keep the supernet's statistics), and measure the test error (§4.2).

    Returns one dict per architecture, in order (repeats are scored once). The supernet's BN
    statistics are restored afterwards.
    """
    device = next(supernet.parameters()).device
    amp = amp and device.type == "cuda"
    data = data.to(device)
    calib, test_x, test_y = eval_tensors(data, calib_images, test_images, seed, channels_last=amp)
    saved = {k: v.clone() for k, v in supernet.state_dict().items() if "running" in k or "num_batches" in k}
    was_training = supernet.training
    scores = {}
    try:   # an architecture drawn twice is scored once
        for arch in tqdm(list(dict.fromkeys(archs)), desc="scoring", leave=False, disable=not progress, dynamic_ncols=True):
            with nss.autocast(device, amp):
                if calib_images:
                    recalibrate_bn(supernet, calib, arch=arch, batch_size=min(batch_size, 500))
                supernet.eval()
                error = test_error(lambda x: supernet(x, arch), test_x, test_y, batch_size)
            scores[arch] = {"arch": arch.to_dict(), "flops": arch_flops(arch, supernet.ess),
                            "params": arch_params(arch, supernet.ess), "error": error}
    finally:
        supernet.load_state_dict(saved, strict=False)
        supernet.train(was_training)
    return [dict(scores[arch]) for arch in archs]


# --------------------------------------------------------------------------------------------
# Training from scratch (Table 1)
# --------------------------------------------------------------------------------------------

@dataclass
class ScratchConfig(RunConfig):
    """From-scratch training of one architecture over several seeds (Table 1, cutout [4])."""

    arch: str = option("", "a nas.json, an architecture JSON file, or inline JSON {\"depths\": [...], \"widths\": [...]}")
    seeds: int = option(3, "independent runs (the paper: 3)")
    epochs: int = option(60, "epochs")
    batch_size: int = option(512, "batch size")
    lr: float = option(0.4, "peak SGD learning rate")
    warmup_epochs: float = option(2.0, "linear learning-rate warmup, then cosine decay")
    momentum: float = option(0.9, "SGD Nesterov momentum")
    weight_decay: float = option(5e-4, "SGD weight decay")
    label_smoothing: float = option(0.1, "label smoothing")
    cutout: int = option(16, "cutout size [4]")
    eval_every: int = option(1, "test every this many epochs (history for time-to-accuracy)")

    QUICK = {**RunConfig.QUICK, "seeds": 2, "epochs": 3, "batch_size": 64, "lr": 0.1, "warmup_epochs": 0.5, "cutout": 8}

    def check(self):
        super().check()
        self.check_numbers(at_least_one=("seeds", "epochs", "batch_size", "eval_every"), positive=("lr",),
                           non_negative=("warmup_epochs", "momentum", "weight_decay", "label_smoothing", "cutout"))

    def default_name(self) -> str:
        return f"scratch-{self.dataset}-s{self.seed}"


def load_arch(spec: str, ess: ExpandedSearchSpace) -> Arch:
    """An architecture from a nas.json (its ``arch``), a JSON file or inline JSON."""
    text = spec
    if not spec.lstrip().startswith("{"):
        try:
            text = Path(spec).read_text()
        except OSError as e:
            raise RunError(f"cannot read the architecture file {spec}: {e.strerror or e}") from None
    try:
        d = json.loads(text)
        return Arch.from_dict(d["arch"] if isinstance(d, dict) and "arch" in d else d).validate(ess)
    except (ValueError, TypeError) as e:
        raise RunError(f"malformed architecture JSON in {spec}: {e}") from None


def train_from_scratch(arch: Arch, ess: ExpandedSearchSpace, data: data_mod.ImageData, cfg: ScratchConfig,
                       seed: int) -> dict:
    """Train ``build(arch)`` from scratch with cutout; the final test error and its history."""
    device = nss.resolve_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    data = data.to(device)
    torch.manual_seed(seed)
    net = build(arch, ess).to(device)
    if amp:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                          weight_decay=cfg.weight_decay)
    loader = data_mod.Loader(data.train_x, data.train_y, data.mean, data.std, min(cfg.batch_size, len(data.train_y)),
                             data_mod.make_generator(device, seed), cutout=cfg.cutout, channels_last=amp)
    _, test_x, test_y = eval_tensors(data, 0, None, seed, channels_last=amp)
    history, start, step = [], time.time(), 0
    # one fixed network: let cuDNN pick the fastest kernels (the supernets' changing shapes must not)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    for epoch in tqdm(range(cfg.epochs), desc=f"scratch seed {seed}", leave=False, disable=not cfg.progress):
        net.train()
        for x, y in loader:
            lr = nss.cosine_lr(cfg.lr, step, cfg.epochs * len(loader), int(cfg.warmup_epochs * len(loader)))
            nss.train_step(net, opt, x, y, lr, amp, cfg.label_smoothing)
            step += 1
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            net.eval()
            with nss.autocast(device, amp):
                error = test_error(net, test_x, test_y)
            history.append({"epoch": epoch + 1, "test_error": error, "seconds": time.time() - start})
    torch.backends.cudnn.benchmark = False
    return {"seed": seed, "error": history[-1]["test_error"], "history": history, "seconds": time.time() - start}


def run_scratch(cfg: ScratchConfig, arch: Arch | None = None, data: data_mod.ImageData | None = None,
                run_dir: Path | None = None) -> dict:
    """Train an architecture over ``cfg.seeds`` seeds; writes scratch.json after every seed (resumable per seed).

    With an ``--arch`` nas.json the result goes beside it, so that ``table`` pairs them.
    """
    cfg.check()
    num_classes = data.num_classes if data is not None else data_mod.num_classes_of(cfg.dataset, cfg.data_dir)
    ess = cfg.ess(num_classes)
    if arch is None and not cfg.arch:
        raise RunError("--arch is required: a nas.json, an architecture JSON file or inline JSON")
    arch = arch or load_arch(cfg.arch, ess)
    if run_dir is None:
        beside_nas = cfg.arch.endswith("nas.json") and not cfg.name
        run_dir = Path(cfg.arch).parent if beside_nas else Path(cfg.out) / (cfg.name or cfg.default_name())
    out = run_dir / "scratch.json"
    runs = []
    if out.exists() and not cfg.overwrite:
        previous = json.loads(out.read_text())
        if not cfg.resume:
            raise RunError(f"{out} exists: pass --resume to finish its seeds or --overwrite to replace it")
        if previous["arch"] != arch.to_dict():
            raise RunError(f"{out} holds another architecture; use --overwrite or another --name")
        runs = previous["runs"]
    data = nss.load_data(cfg, ess) if data is None else data
    run_dir.mkdir(parents=True, exist_ok=True)
    result = {}
    for seed in range(cfg.seed + len(runs), cfg.seed + cfg.seeds):
        runs.append(train_from_scratch(arch, ess, data, cfg, seed))
        errors = [r["error"] for r in runs]
        result = {"arch": arch.to_dict(), "flops": arch_flops(arch, ess), "params": arch_params(arch, ess),
                  "dataset": cfg.dataset, "errors": errors, "mean": float(np.mean(errors)),
                  "std": float(np.std(errors)), "runs": runs, "config": cfg.to_dict()}
        nss.write_json(out, result)
    return result or json.loads(out.read_text())


# --------------------------------------------------------------------------------------------
# Table 1
# --------------------------------------------------------------------------------------------

def table_rows(runs_dir: str | Path, match: str = "*") -> list[dict]:
    """Table 1's rows from every nas.json under ``runs_dir`` whose run folder matches the glob ``match``
    (with the scratch.json beside it, if any)."""
    rows: dict = defaultdict(dict)
    for path in sorted(p for p in Path(runs_dir).rglob("nas.json") if p.parent.match(match)):
        r = json.loads(path.read_text())
        scratch = path.parent / "scratch.json"
        error = json.loads(scratch.read_text())["mean"] if scratch.exists() else None
        kind = "full" if r["space_source"] == "full" else "elite"
        rows[(r["dataset"], r["target"])][kind] = {"flops": r["flops"], "deviation": r["deviation"],
                                                    "samples": r["samples"], "error": error}
    return [{"dataset": ds, "target": t, **cells} for (ds, t), cells in sorted(rows.items())]


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


# --------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------

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
        nss.write_atomic(target, lambda p: fig.savefig(p, format=ext, dpi=150, bbox_inches="tight"))
        files.append(target)
    return files


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
        f = [s["flops"] for s in scores if xmax is None or s["flops"] <= xmax]
        e = [s["error"] for s in scores if xmax is None or s["flops"] <= xmax]
        ax.scatter(f, e, s=8, alpha=0.6, color=group_color(label, i, colors), label=f"{label} ({len(f)})", linewidths=0)
        all_f += f
        all_e += e
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
        ax.set_xlim(0 if not log_flops else None, xmax)
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
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


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
    if len(groups) > 4:   # many curves: keep the legend off them
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    else:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


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
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

@dataclass
class ScoreConfig(RunConfig):
    """Scoring N architectures from each of several spaces with an evaluation supernet."""

    supernet: str = option("", "supernet.pt written by `evaluate.py supernet`")
    spaces: str = option("full", "comma-separated: 'full', NSS result.json files, space JSON files")
    n: int = option(1000, "architectures per space")
    calib_images: int = option(2000, "training images for BN recalibration (0: none)")
    test_images: int = option(0, "test images (0: all)")
    batch_size: int = option(1000, "evaluation batch size")
    flops_min: float = option(0.0, "keep only architectures with at least these FLOPs")
    flops_max: float = option(0.0, "keep only architectures with at most these FLOPs (0: no bound)")
    ordering: str = option("", "'', 'regnet' (d1≤d2≤d3, w1≤w2≤w3) or 'elite' (d1≤d3≤d2, w1≤w3≤w2)")

    def check(self):
        super().check()
        self.check_numbers(at_least_one=("n", "batch_size"), non_negative=("calib_images", "test_images", "flops_min", "flops_max"))
        if not self.supernet:
            raise RunError("--supernet is required: a supernet.pt written by `evaluate.py supernet`")
        if self.ordering not in ("", "regnet", "elite"):
            raise RunError(f"--ordering must be regnet or elite, got {self.ordering!r}")

    def default_name(self) -> str:
        return f"scores-{self.dataset}-s{self.seed}"


def run_score(cfg: ScoreConfig) -> dict:
    """Sample and score architectures from each space; writes runs/<name>/scores.json."""
    cfg.check()
    device = nss.resolve_device(cfg.device)
    supernet = load_supernet(cfg.supernet, device)
    ess = supernet.ess
    spaces = {spec: nas.load_space(spec, ess) for spec in cfg.spaces.split(",")}
    run_dir = Path(cfg.out) / (cfg.name or cfg.default_name())
    if (run_dir / "scores.json").exists() and not cfg.overwrite:
        raise RunError(f"{run_dir}/scores.json exists: pass --overwrite or another --name")
    data = nss.load_data(cfg, ess, device)
    band = (cfg.flops_min, cfg.flops_max or math.inf) if (cfg.flops_min or cfg.flops_max) else None
    g = torch.Generator().manual_seed(cfg.seed)
    result = {"dataset": cfg.dataset, "supernet": cfg.supernet, "ordering": cfg.ordering, "band": band, "spaces": {}}
    for spec, space in spaces.items():
        archs = sample_archs(space, cfg.n, ess, g, band, cfg.ordering or None)
        scores = score_archs(supernet, archs, data, cfg.calib_images, cfg.test_images or None, cfg.batch_size,
                             cfg.seed, cfg.amp, cfg.progress)
        result["spaces"][spec] = {"space": space.to_dict(), "scores": scores}
        print(f"{spec}: {len(scores)} architectures, median error {np.median([s['error'] for s in scores]):.2f}%",
              file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    nss.write_json(run_dir / "scores.json", result)
    return result


@dataclass
class TableConfig:
    """Table 1 from the NAS runs (and their from-scratch errors) found under a folder."""

    runs: str = option("runs", "folder searched for nas.json (and scratch.json beside them)")
    match: str = option("*", "only run folders whose name matches this glob, e.g. 'nas-cifar10-*'")
    out: str = option("table1", "output stem: writes <out>.md and <out>.csv")

    def check(self):
        if not Path(self.runs).is_dir():
            raise RunError(f"--runs {self.runs} is not a folder")


def run_table(cfg: TableConfig) -> str:
    rows = table_rows(cfg.runs, cfg.match)
    if not rows:
        raise RunError(f"no nas.json under {cfg.runs} in folders matching {cfg.match!r}: run nas.py first")
    markdown, csv_text = table1(rows)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nss.write_atomic(out.with_suffix(".md"), lambda p: p.write_text(markdown))
    nss.write_atomic(out.with_suffix(".csv"), lambda p: p.write_text(csv_text))
    return markdown


# --------------------------------------------------------------------------------------------
# --quick: every protocol end to end on synthetic data
# --------------------------------------------------------------------------------------------

def quick(out: str | Path = "runs/eval-quick", progress: bool = False, targets=(4e6, 9e6)) -> dict:
    """Every protocol on a reduced space and synthetic data, in a few minutes on a laptop CPU."""
    out = Path(out)
    common = dict(dataset="synthetic", synthetic_size=2000, d_max=4, w_max=16, d_step=2, w_step=4,
                  device="cpu", out=str(out), progress=progress, overwrite=True)
    data = nss.load_data(nss.RunConfig(**common), ExpandedSearchSpace(d_max=4, w_max=16, d_step=2, w_step=4))
    supernet, _ = train_supernet(SupernetConfig(**common, epochs=6, batch_size=64, lr=0.1), data)
    ess = supernet.ess
    g = torch.Generator().manual_seed(0)
    score = lambda archs: score_archs(supernet, archs, data, calib_images=200, test_images=250, progress=progress)
    full_scores = score(sample_archs(ess.full_space(), 60, ess, g))
    scratch_cfg = ScratchConfig(**common, seeds=2, epochs=2, batch_size=64, lr=0.1, warmup_epochs=0.5, cutout=8)
    panels, nas_flops = [], {}
    for target in targets:
        search = dict(common, target=target, epochs=6, warmup_epochs=2, arch_lr=0.05, tau_decay=0.7)
        elite = nss.run(nss.NSSConfig(**search, name=f"nss-{format_flops(target)}"), data)
        elite_scores = score(sample_archs(Space.from_dict(elite["elite_space"]), 60, ess, g))
        panels.append({"title": f"target {format_flops(target)}", "target": target,
                       "groups": {"Expanded Search Space": full_scores, "Elite Space": elite_scores}})
        nas_flops[target] = {}
        for label, spec in (("Elite Space", str(Path(elite["run_dir"]) / "result.json")), ("Expanded Search Space", "full")):
            found = nas.run(nas.NASConfig(**dict(search, epochs=4, warmup_epochs=1), space=spec, max_samples=200,
                                          name=f"nas-{format_flops(target)}-{nas.space_label(spec)}"), data)
            nas_flops[target][label] = [arch_flops(a, ess) for a in nas.final_archs(found, 100)]
            run_scratch(scratch_cfg, Arch.from_dict(found["arch"]), data, run_dir=Path(found["run_dir"]))
    figures = out / "figures"
    plot_grid(panels, figures / "error_vs_flops")
    plot_flops_edfs(nas_flops[targets[-1]], targets[-1], figures / "flops_edf")
    band = (0.7 * targets[0], 1.3 * targets[0])
    principles = {f"{name}{' in band' if b else ''}": score(sample_archs(ess.full_space(), 60, ess, g, b, order))
                  for name, order in (("RegNet principles", "regnet"), ("Elite ordering", "elite")) for b in (band, None)}
    plot_error_edfs([("with FLOPs constraint", {k: [s["error"] for s in v] for k, v in principles.items() if "band" in k}),
                     ("without FLOPs constraint", {k: [s["error"] for s in v] for k, v in principles.items() if "band" not in k})],
                    figures / "error_edfs")
    markdown = run_table(TableConfig(runs=str(out), out=str(out / "table1")))
    summary = {"median_error_within": {p["title"]: {k: median_error_within(v, p["target"]) for k, v in p["groups"].items()}
                                       for p in panels},
               "table1": markdown, "figures": sorted(str(p) for p in figures.glob("*.png"))}
    nss.write_json(out / "quick.json", summary)
    return summary


def scratch_summary(cfg: ScratchConfig) -> str:
    r = run_scratch(cfg)
    return f"{Arch.from_dict(r['arch'])}: error {r['mean']:.2f} ± {r['std']:.2f}% over {len(r['errors'])} seeds"


COMMANDS = {"supernet": (SupernetConfig, lambda c: f"supernet written to {train_supernet(c)[1]['supernet']}"),
            "score": (ScoreConfig, lambda c: f"scores of {', '.join(run_score(c)['spaces'])} written"),
            "scratch": (ScratchConfig, scratch_summary),
            "table": (TableConfig, run_table)}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv == ["--quick"]:
        summary = quick()
        print(summary["table1"])
        print("figures:", *summary["figures"], sep="\n  ")
        return 0
    if argv and argv[0] in COMMANDS:
        cls, action = COMMANDS[argv[0]]
        print(action(nss.parse_config(cls, argv[1:], description=f"evaluate.py {argv[0]}: {cls.__doc__}")))
        return 0
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    raise RunError(f"{'unknown command ' + repr(argv[0]) if argv else 'no command'}: give one of "
                   f"{', '.join(COMMANDS)}, or --quick alone (see --help)")


if __name__ == "__main__":
    nss.cli(main)
