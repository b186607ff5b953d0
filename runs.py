"""Run plumbing shared by every command line (``nss.py``, ``nas.py``, ``evaluate.py``, ``bench.py``).

* settings dataclasses → command-line flags (``parse_config``), with ``--quick`` presets;
* ``RunSettings``: the data, the space, the device and the run folder of a run;
* run folders, atomic files, checkpoints that resume only under the settings that wrote them,
  ``config.json`` with the versions, and the one-line error reporting of ``cli``.

None of the method is here: the search engine is ``search.py``, and ``run_search`` only gives it a
run folder, resumable checkpoints and a result file's common fields.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import data as data_mod
from search import SearchSettings, Searcher, check_target
from space import REDUCED, ExpandedSearchSpace, Options


class RunError(Exception):
    """Bad input to a run (flags, target, files): reported as one line, exit code 2."""


@contextmanager
def user_input():
    """Report a ValueError of the code inside (a setting or target checked by the method) as a RunError."""
    try:
        yield
    except ValueError as e:
        raise RunError(str(e)) from None


# --------------------------------------------------------------------------------------------
# Settings and their flags
# --------------------------------------------------------------------------------------------

def option(default, help: str = "", **kw):
    """A config field with its CLI help text; without help, the flag keeps the help of the field it overrides."""
    return field(default=default, metadata={"help": help, **kw} if help else kw)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def help_of(cls, name: str) -> str:
    """A field's help text, from the nearest class in the MRO that gives one."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and f.metadata.get("help"):
            return f.metadata["help"]
    return ""


@dataclass
class RunSettings:
    """Settings of every run: data, space, device and run folder. Defaults are the paper's (§4.1)."""

    # data
    dataset: str = option("cifar10", "cifar10 | cifar100 | folder | synthetic")
    data_dir: str = option("./data", "where the dataset is (or is downloaded to)")
    download: bool = option(True, "download CIFAR through torchvision when missing")
    synthetic_size: int = option(2000, "training images of the synthetic dataset")
    # space (§4.4 shrinks d_max and w_max)
    d_max: int = option(16, "d_max: most blocks per stage")
    w_max: int = option(512, "w_max: most channels per stage")
    d_step: int = option(4, "depths per candidate range")
    w_step: int = option(32, "widths per candidate range")
    # run
    seed: int = option(0, "seed of everything")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = option(True, "bf16 autocast and channels_last on CUDA")
    out: str = option("runs", "folder of the runs")
    name: str = option("", "run name (default: derived from the settings)")
    resume: bool = option(False, "continue runs/<name> from its checkpoint")
    overwrite: bool = option(False, "replace an existing runs/<name>")
    progress: bool = option(True, "show progress bars")
    quick: bool = option(False, "tiny offline demo: reduced space, synthetic data, a few epochs")

    QUICK = dict(dataset="synthetic", synthetic_size=2000, **REDUCED)
    # fields that do not change the result, so a resumed run may differ in them
    VOLATILE = ("resume", "overwrite", "progress", "quick", "name", "out", "device")

    def ess(self, num_classes: int) -> ExpandedSearchSpace:
        """The Expanded Search Space of this run."""
        return ExpandedSearchSpace(d_max=self.d_max, w_max=self.w_max, d_step=self.d_step, w_step=self.w_step,
                                   num_classes=num_classes)

    def ess_for(self, data: data_mod.ImageData | None = None) -> ExpandedSearchSpace:
        """The space for ``data``, or for the configured dataset's class count (without loading it)."""
        return self.ess(data.num_classes if data is not None else data_mod.num_classes_of(self.dataset, self.data_dir))

    def check(self):
        """Reject invalid values before any work starts."""
        if self.dataset not in data_mod.DATASETS:
            raise RunError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(data_mod.DATASETS)}")
        self.check_numbers(at_least_one=("synthetic_size", "d_max", "w_max", "d_step", "w_step"))
        if self.d_max % self.d_step or self.w_max % self.w_step:
            raise RunError("--d-step must divide --d-max and --w-step must divide --w-max")
        if self.resume and self.overwrite:
            raise RunError("--resume and --overwrite exclude each other")
        resolve_device(self.device)

    def check_numbers(self, at_least_one=(), positive=(), non_negative=()):
        for name in at_least_one:
            if getattr(self, name) < 1:
                raise RunError(f"{flag(name)} must be at least 1, got {getattr(self, name)}")
        for names, ok, what in ((positive, lambda v: v > 0, "positive"), (non_negative, lambda v: v >= 0, "non-negative")):
            for name in names:
                value = getattr(self, name)
                if not (math.isfinite(value) and ok(value)):
                    raise RunError(f"{flag(name)} must be a finite {what} number, got {value}")

    def part(self, cls):
        """The fields of the settings class ``cls`` (one that this config extends), as a ``cls``: what an engine gets."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SearchConfig(RunSettings, SearchSettings):
    """A search's command line (``nss.py``, ``nas.py``): the run's settings plus the search's hyperparameters."""

    QUICK = {**RunSettings.QUICK, "target": 6e6, "epochs": 12, "warmup_epochs": 3, "arch_lr": 0.05}

    def check(self):
        RunSettings.check(self)
        with user_input():
            SearchSettings.check(self)


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, no usage block: reported by ``cli`` like every bad input
        raise RunError(message)


def parse_config(cls, argv=None, description: str = ""):
    """Build ``cls`` from command-line flags generated from its fields; --quick fills unset flags."""
    parser = _Parser(description=description, argument_default=argparse.SUPPRESS)
    for f in dataclasses.fields(cls):
        help_ = f"{help_of(cls, f.name)} (default: {'the recipe' if f.default is None else f.default})"
        if f.type in ("bool", bool):
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, help=help_)
        else:
            kind = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(flag(f.name), type=kind, help=help_, metavar=f.name.upper())
    given = vars(parser.parse_args(argv))
    preset = getattr(cls, "QUICK", {}) if given.get("quick") else {}
    with user_input():         # a settings class may refuse a value as it is built (e.g. an unknown recipe)
        cfg = cls(**{**preset, **given})
    cfg.check()
    return cfg


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: CUDA is not available on this machine")
    return device


# --------------------------------------------------------------------------------------------
# Files: atomic writes, run folders, checkpoints
# --------------------------------------------------------------------------------------------

def write_atomic(path: Path, write: Callable[[Path], None]):
    """Write through a temporary file and rename it, so a crash never leaves a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, obj):
    write_atomic(path, lambda p: p.write_text(json.dumps(obj, indent=2) + "\n"))


def versions() -> dict:
    import numpy
    import torchvision
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except Exception:
        commit = ""
    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "git_commit": commit}


def check_run_dir(cfg: RunSettings, default_name: str) -> Path:
    """runs/<name>, checked: an earlier run is never overwritten unless asked, resuming needs a checkpoint."""
    run_dir = Path(cfg.out) / (cfg.name or default_name)
    checkpoint = run_dir / "checkpoint.pt"
    if cfg.resume and not checkpoint.exists():
        raise RunError(f"nothing to resume: {checkpoint} does not exist")
    if not cfg.resume and not cfg.overwrite and run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} already holds a run: pass --resume to continue it, --overwrite to replace it, "
                       f"or --name for a new one")
    return run_dir


def check_same_settings(cfg: RunSettings, state: dict, device: torch.device):
    """A checkpoint resumes only under the settings that wrote it (bar the VOLATILE ones) and device kind."""
    try:
        mine = {k: v for k, v in cfg.to_dict().items() if k not in cfg.VOLATILE}
        theirs = {k: v for k, v in state["config"].items() if k not in cfg.VOLATILE}
        kind = state["device_type"]
    except (KeyError, TypeError, AttributeError):
        raise RunError("the checkpoint is not one of this program's: delete it or pass --overwrite") from None
    if mine != theirs:
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise RunError(f"the checkpoint was written with other settings ({', '.join(diff)}); "
                       f"resume with the same flags or start a new --name")
    if kind != device.type:
        raise RunError(f"the checkpoint was written on {kind}; resume it on the same kind of device")


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RunError(f"cannot read the checkpoint {path} ({type(e).__name__}); it is corrupt or not ours: "
                       f"delete it or pass --overwrite") from None


def load_data(cfg: RunSettings, ess: ExpandedSearchSpace, device: torch.device | None = None) -> data_mod.ImageData:
    """The run's dataset on its device, checked against the space."""
    device = device or resolve_device(cfg.device)
    data = data_mod.load(cfg.dataset, cfg.data_dir, cfg.download, device, synthetic_train=cfg.synthetic_size,
                         synthetic_test=max(1, cfg.synthetic_size // 4), image_size=ess.image_size, seed=cfg.seed)
    if data.num_classes != ess.num_classes or data.image_size != ess.image_size:
        raise RunError(f"the data ({data.num_classes} classes, {data.image_size} px) does not fit the space {ess}")
    return data


def write_run_config(run_dir: Path, cfg, ess: ExpandedSearchSpace, device: torch.device):
    """config.json: the resolved config, the space, the device and the versions (the run describes itself)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    write_json(run_dir / "config.json", {"config": cfg.to_dict(), "ess": ess.to_dict(), "device": str(device),
                                         "device_name": name, "argv": sys.argv, "versions": versions()})


def train_run(trainer, cfg: RunSettings, run_dir: Path, ess: ExpandedSearchSpace, data: data_mod.ImageData,
              device: torch.device, callback: Callable | None = None):
    """Resume ``trainer`` if asked, attach the data, write config.json and ``fit`` it with a checkpoint per epoch.

    ``trainer`` has ``attach(data)``, ``fit(on_epoch)``, ``state_dict()``, ``load_state_dict(state)`` and
    ``describe(record)``; ``checkpoint.pt`` holds its state with the config and the device kind.
    """
    if cfg.resume:
        state = load_checkpoint(run_dir / "checkpoint.pt")
        check_same_settings(cfg, state, device)
        trainer.load_state_dict(state)
    trainer.attach(data.to(device))
    write_run_config(run_dir, cfg, ess, device)

    def on_epoch(trainer, record):
        state = {"config": cfg.to_dict(), "device_type": device.type, **trainer.state_dict()}
        write_atomic(run_dir / "checkpoint.pt", lambda p: torch.save(state, p))
        if cfg.progress:
            print(trainer.describe(record), file=sys.stderr)
        if callback is not None:
            callback(trainer, record)
    trainer.fit(on_epoch)


def run_search(cfg: SearchConfig, ess: ExpandedSearchSpace, options: Options, what: str, default_name: str,
               finish: Callable[[Searcher], dict], data: data_mod.ImageData | None = None,
               callback: Callable | None = None) -> dict:
    """Check the target, search with a checkpoint per epoch (resumable), and ``finish`` the searcher into a
    result with P_Θ, the history, the dataset, the space, the timings and the run folder (NSS and NAS)."""
    started = time.time()
    with user_input():
        check_target(cfg.target, options, ess, what)
    run_dir = check_run_dir(cfg, default_name)
    device = resolve_device(cfg.device)
    data = load_data(cfg, ess, device) if data is None else data
    searcher = Searcher(cfg.part(SearchSettings), ess, options, device, cfg.amp, cfg.progress)
    train_run(searcher, cfg, run_dir, ess, data, device, callback)
    return finish(searcher) | searcher.result() | {
        "dataset": cfg.dataset, "ess": ess.to_dict(), "seconds": searcher.seconds,
        "wall_seconds": time.time() - started, "run_dir": str(run_dir)}


def cli(main: Callable[[list[str] | None], int]):
    """Run a CLI entry point: bad input prints one line and exits 2, Ctrl-C exits 130."""
    prog = Path(sys.argv[0]).name
    try:
        sys.exit(main(sys.argv[1:]))
    except (RunError, data_mod.DataError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the last finished epoch is saved: rerun with --resume", file=sys.stderr)
        sys.exit(130)
