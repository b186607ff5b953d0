"""Run plumbing shared by the command lines (``nss.py``, ``nas.py``, ``evaluate.py``, ``bench.py``).

* flags generated from the settings dataclasses, each checked against the range its field declares
  (``parse_config``; ``--quick`` presets; ``--config FILE``, a run's config.json or a JSON of the settings);
* ``RunSettings``: the data, the space, the device and the run folder of a run;
* ``train_run``: a training loop with a checkpoint per epoch, exact resume under the same identity (settings,
  data, device kind), a line of its plan, time estimates, progress bars, epoch lines, ``metrics.jsonl`` and the
  divergence stop;
* ``cli``: every failure as one line on stderr with its exit code (``EXIT_CODES``).

None of the method is here: the search engine is ``search.py``; run folders and atomic files are ``rundir.py``.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import platform
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

import data as data_mod
import distributed
from rundir import RunError, empty, load_checkpoint, not_a_file, os_error, save_torch, write_atomic, write_json
from search import SearchSettings
from space import REDUCED, ExpandedSearchSpace, FileError
from train import Diverged, SettingError, check_loss, check_settings, setting

TORCH_THREADS = torch.get_num_threads()        # torch's own choice, before any run changes it
clock = time.perf_counter                      # what the time estimates of train_run measure steps with
EXIT_CODES = {"done": 0, "bad input, data or files": 2, "diverged": 3, "interrupted": 130}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


PATHS = ("input", "inputs", "output file", "output folder", "output stem")


def option(default, help: str = "", range: str | None = None, choices=None, path: str | None = None,
           suffixes: tuple[str, ...] = ()):
    """A settings field (``train.setting``: its help, its range, its choices) that may name a path, one of PATHS:
    "input" is a file the run reads (a resumed run needs it unchanged; a value that names no file, such as 'full' or
    inline JSON, is a setting like any other), "inputs" comma-separated ones, and the outputs are what the run
    writes (a file, a folder, or a stem; ``suffixes``: of a stem's files, or of the files written beside a file).
    ``check_fields`` checks them all one way."""
    f = setting(default, help, range, choices)
    if path is None:
        return f
    assert path in PATHS, path
    return dataclasses.field(default=default, metadata={**f.metadata, "path": path, "suffixes": suffixes})


def written(f: dataclasses.Field, value: str) -> list[Path]:
    """The files that an output field's value names (a file and those beside it, or a stem's files)."""
    kind, suffixes = f.metadata["path"], f.metadata["suffixes"]
    if kind == "output stem":
        return [Path(value + s) for s in suffixes]
    return [Path(value), *(Path(value).with_suffix(s) for s in suffixes)] if kind == "output file" else []


def check_fields(obj):
    """Every field of a settings dataclass in its declared range and choices (``train.check_settings``), and every
    output path a path that can be written: not empty, a file or stem not a folder, and no file it names there
    already, unless ``obj.overwrite``; one line (RunError) if not."""
    with user_input():
        check_settings(obj)
    for f in dataclasses.fields(obj):
        kind, value = f.metadata.get("path", ""), getattr(obj, f.name)
        if not kind.startswith("output"):
            continue
        what = kind.removeprefix("output ")
        if not isinstance(value, str) or not value.strip():
            raise RunError(f"{flag(f.name)} must name a {what} to write, got {value!r}")
        if what != "folder" and (value.endswith(("/", os.sep)) or Path(value).is_dir()):
            raise RunError(f"{flag(f.name)} {value} is a folder: name the {what} to write"
                           f"{' (it gets suffixes)' if what == 'stem' else ''}, e.g. {Path(value) / 'out'}")
        there = [str(p) for p in written(f, value) if p.exists() or p.is_symlink()]
        if there and not getattr(obj, "overwrite", False):
            raise RunError(f"{' and '.join(there)} already exist{'s' * (len(there) == 1)}: pass --overwrite to replace "
                           f"{'it' if len(there) == 1 else 'them'}, or another {flag(f.name)}")


def input_files(cfg) -> dict[str, dict[str, str]]:
    """The sha256 of every file that the settings' input fields name (``option(path="input" | "inputs")``), by
    field and value: what a run read, so that a resumed run can tell a file edited since from the same one."""
    out = {}
    for f in dataclasses.fields(cfg):
        kind, value = f.metadata.get("path"), getattr(cfg, f.name)
        if kind not in ("input", "inputs") or not isinstance(value, str):
            continue
        specs = value.split(",") if kind == "inputs" else [value]
        digests = {spec: sha256(spec) for spec in specs if not spec.lstrip().startswith("{") and Path(spec).is_file()}
        if digests:
            out[f.name] = digests
    return out


def sha256(path) -> str:
    """The sha256 of a file's content (hex)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as e:
        raise RunError(f"cannot read {path}: {e.strerror or e}") from None


@contextmanager
def user_input():
    """A ValueError of the code inside (a setting, a target or a file the method checks) as a one-line RunError;
    a SettingError names the setting's flag."""
    try:
        yield
    except SettingError as e:           # "tau_end must be … at most tau0 (5)" → "--tau-end must be … --tau0 (5)"
        requirement = e.requirement
        for name in e.refers:
            requirement = requirement.replace(f"{name} (", f"{flag(name)} (")
        raise RunError(f"{flag(e.name)} must be {requirement}, got {e.value!r}") from None
    except ValueError as e:
        raise RunError(str(e)) from None


# ---- Settings and their flags --------------------------------------------------------------------

@dataclass
class RunSettings:
    """Settings of every run: data, space, device and run folder. Defaults are the paper's (§4.1)."""

    dataset: str = option("cifar10", "cifar10 | cifar100 | folder | synthetic", choices=data_mod.DATASETS)
    data_dir: str = option("./data", "where the dataset is (or is downloaded to)")
    download: bool = option(True, "download CIFAR through torchvision when missing")
    synthetic_size: int = option(2000, "training images of the synthetic dataset", "[20, 1e6]")
    d_max: int = option(16, "d_max: most blocks per stage", "[1, 64]")
    w_max: int = option(512, "w_max: most channels per stage", "[1, 4096]")
    d_step: int = option(4, "depths per candidate range", "[1, d_max]")
    w_step: int = option(32, "widths per candidate range", "[1, w_max]")
    seed: int = option(0, "seed of everything", "[0, 4.6e18]")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = option(True, "bf16 autocast and channels_last on CUDA")
    out: str = option("runs", "folder of the runs", path="output folder")
    name: str = option("", "run name (default: derived from the settings)")
    resume: bool = option(False, "continue runs/<name> from its checkpoint")
    overwrite: bool = option(False, "replace an existing runs/<name>")
    reuse: bool = option(False, "continue runs/<name> if it holds this very run (same settings and data), else replace it")
    progress: bool = option(True, "progress bars (on a terminal)")
    threads: int = option(0, "CPU threads (0: torch's default, one per core); results depend on it", "[0, 4096]")
    quick: bool = option(False, "tiny offline demo: reduced space, synthetic data, a few epochs")

    QUICK = dict(dataset="synthetic", synthetic_size=2000, **REDUCED)
    # fields that do not change the result, so a resumed run may differ in them
    VOLATILE = ("resume", "overwrite", "reuse", "progress", "quick", "name", "out", "device", "threads")
    SHARDED_BATCH = False    # whether the processes under torchrun share each batch of --batch-size (else: the work)
    HIDDEN = ()     # fields a command does not use: no flag (and no --config key) for them

    def ess(self, num_classes: int) -> ExpandedSearchSpace:
        """The Expanded Search Space of this run."""
        return ExpandedSearchSpace(d_max=self.d_max, w_max=self.w_max, d_step=self.d_step, w_step=self.w_step,
                                   num_classes=num_classes)

    def ess_for(self, data: data_mod.ImageData | None = None) -> ExpandedSearchSpace:
        """The space for ``data``, or for the configured dataset's class count (without loading it)."""
        return self.ess(data.num_classes if data is not None else data_mod.num_classes_of(self.dataset, self.data_dir))

    def check(self):
        """Every field in its declared range, then what ranges cannot say; before any work starts."""
        check_fields(self)
        if self.SHARDED_BATCH and self.batch_size < distributed.world():
            raise RunError(f"--batch-size {self.batch_size} is the global batch, which the {distributed.world()} "
                           f"processes share: give each at least one image (--batch-size {distributed.world()} or more) "
                           f"or start fewer processes")
        if self.d_max % self.d_step or self.w_max % self.w_step:
            raise RunError("--d-step must divide --d-max and --w-step must divide --w-max")
        if self.resume + self.overwrite + self.reuse > 1:
            raise RunError("--resume, --overwrite and --reuse exclude each other")
        name = Path(self.name)
        if self.name and (name.is_absolute() or not name.parts or ".." in name.parts or not self.name.isprintable()):
            raise RunError(f"--name {self.name!r} must name a folder below --out {self.out} (such as 'my-run' or "
                           f"'group/my-run'): no '..', no absolute path, no control characters")
        resolve_device(self.device)
        torch.set_num_threads(self.threads or TORCH_THREADS)

    def part(self, cls):
        """The fields of the settings class ``cls`` (one that this config extends), as a ``cls``: what an engine gets."""
        return cls(**{f.name: getattr(self, f.name) for f in dataclasses.fields(cls)})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class SearchConfig(RunSettings, SearchSettings):
    """A search's command line (``nss.py``, ``nas.py``): the run's settings plus the search's hyperparameters."""

    QUICK = {**RunSettings.QUICK, "target": 6e6, "epochs": 12, "warmup_epochs": 3, "arch_lr": 0.05}
    SHARDED_BATCH = True


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, no usage block: reported by ``cli`` like every bad input
        raise RunError(message)


def integer(text: str) -> int:
    """An int flag's value: '2000', or an integral number in float notation such as '1e9'."""
    with suppress(ValueError):
        return int(text)
    with suppress(ValueError, OverflowError):
        if float(text).is_integer():
            return int(float(text))
    raise argparse.ArgumentTypeError(f"invalid int value: {text!r}")


RUN_CONTROL = ("resume", "overwrite", "reuse")     # how a run was started, not what it is: not taken from its config.json


def read_config_file(path: str, cls) -> dict:
    """The settings of ``--config FILE``: a run's config.json (its "config" dict, bar RUN_CONTROL) or a hand-written
    JSON object of the same fields; unknown keys and values of the wrong type are one line."""
    if not_a_file(path):
        raise RunError(f"--config {path}: cannot read it: {not_a_file(path).removeprefix('it is ')}")
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise RunError(f"--config {path}: cannot read it: {e.strerror or e}") from None
    try:
        settings = json.loads(text)
    except ValueError as e:
        raise RunError(f"--config {path} is not valid JSON ({e})") from None
    if isinstance(settings, dict) and isinstance(settings.get("config"), dict):       # a run's config.json
        settings = {k: v for k, v in settings["config"].items() if k not in RUN_CONTROL}
    if not isinstance(settings, dict):
        raise RunError(f"--config {path} must hold a JSON object of settings, or be a run's config.json")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in getattr(cls, "HIDDEN", ())}
    unknown = [k for k in settings if k not in fields]
    if unknown:
        raise RunError(f"--config {path}: unknown setting{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))}; "
                       f"--help lists the settings, which a JSON file spells with underscores (weight_decay for "
                       f"--weight-decay)")
    for k, v in settings.items():     # JSON's numbers: 2000.0 for an int, 6000000 for a float
        kind = fields[k].type
        if kind in ("int", int) and isinstance(v, float) and v.is_integer():
            settings[k] = int(v)
        elif kind in ("float", float) and isinstance(v, int) and not isinstance(v, bool):
            settings[k] = float(v)
    return settings


def parse_config(cls, argv=None, description: str = "", prog: str | None = None):
    """Build ``cls`` from command-line flags generated from its fields (but those of ``cls.HIDDEN``) and check it;
    ``--config FILE`` gives settings that the flags beside it override; --quick fills the settings left unset."""
    parser = _Parser(prog=prog, description=description, argument_default=argparse.SUPPRESS, allow_abbrev=False)
    parser.add_argument("--config", metavar="FILE", help="settings from a JSON file: a run's config.json, or an object of "
                                                         "the settings below (as in config.json); flags given beside it "
                                                         "override it")
    takes_value = {"--config"}
    for f in dataclasses.fields(cls):
        if f.name in getattr(cls, "HIDDEN", ()):
            continue
        shown = "the recipe" if f.default is None else f.default
        help_ = f"{f.metadata.get('help', '')} (default: {shown})".replace("%", "%%")
        if f.type in ("bool", bool):
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, help=help_)
        else:
            kind = {"int": integer, "float": float}.get(f.type, str)
            parser.add_argument(flag(f.name), type=kind, help=help_, metavar=f.name.upper())
            takes_value.add(flag(f.name))
    args: list[str] = []
    for arg in list(sys.argv[1:] if argv is None else argv):    # '--target -1e6': a value, refused as negative
        with suppress(ValueError):
            if args and args[-1] in takes_value and arg.startswith("-") and float(arg) is not None:
                args[-1] = f"{args[-1]}={arg}"
                continue
        args.append(arg)
    given = vars(parser.parse_args(args))
    given = {**(read_config_file(given.pop("config"), cls) if "config" in given else {}), **given}
    preset = getattr(cls, "QUICK", {}) if given.get("quick") else {}
    with user_input():         # a settings class may refuse a value as it is built (an unknown recipe, say)
        cfg = cls(**{**preset, **given})
    cfg.check()
    return cfg


def bar_off(progress: bool) -> bool | None:
    """tqdm's ``disable`` for a progress bar: off unless asked for on rank 0 with stdout on a terminal, so that a log
    that stdout goes to holds the epoch lines alone (``None``: tqdm then also hides it when stderr is no terminal)."""
    try:
        terminal = sys.stdout.isatty()
    except (AttributeError, ValueError):        # replaced or closed
        terminal = False
    return None if progress and terminal and distributed.is_main() else True


def spare_cores() -> int:
    """The cores this process may use that no other process is busy on right now (Linux's count of runnable tasks):
    on a shared machine, more threads than free cores make every step wait on a descheduled thread (with 2 busy
    processes on 2 cores, ``nss.py --quick`` took 333 s with 2 threads and 74 s with 1; 31 s and 45 s idle)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        busy = int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1   # not counting this process
    except (OSError, ValueError, IndexError):
        busy = 0
    return max(1, cores - busy)


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when available, else the CPU; under torchrun, this process's GPU."""
    try:
        device = torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                              "cpu" if name == "auto" else name)
    except (RuntimeError, TypeError):
        raise RunError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise RunError(f"--device {name}: this project runs on cpu or cuda devices")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RunError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    with user_input():
        return distributed.device_for(device)


def space_label(spec: str) -> str:
    """A short name for a --space value: 'full', 'elite-<NSS run>' or the file's stem."""
    path = Path(spec)
    return "full" if spec == "full" else f"elite-{path.parent.name}" if path.name == "result.json" else path.stem


# ---- A run's identity and its files --------------------------------------------------------------

def identity(cfg: RunSettings, data: dict, device: torch.device) -> dict:
    """What a checkpoint resumes only under: the program, its settings (bar the VOLATILE ones), the content of every
    input file they name (``input_files``), the data's fingerprint and the kind of device."""
    return {"program": type(cfg).__name__, "settings": {k: v for k, v in cfg.to_dict().items() if k not in cfg.VOLATILE},
            "inputs": input_files(cfg), "data": data, "device_type": device.type}


def check_identity(mine: dict, theirs, ignore: tuple[str, ...] = (), what: str = "the checkpoint"):
    """Refuse, in one line naming the first difference, a state written under another identity."""
    if not isinstance(theirs, dict) or set(theirs) != set(mine):
        raise RunError(f"{what} is not one of this program's: delete it or pass --overwrite")
    if theirs["program"] != mine["program"]:
        raise RunError(f"{what} was written by another program ({theirs['program']}, not {mine['program']}): "
                       f"resume it with its own program, or pass --overwrite")
    changed = lambda a, b: [k for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)]
    a, b = theirs["settings"], mine["settings"]
    if diff := changed(a, b):
        raise RunError(f"{what} was written with other settings ({', '.join(f'{flag(k)} {a.get(k)} → {b.get(k)}' for k in diff)}): "
                       f"resume with the same flags, or pass --overwrite or another --name")
    a, b = ({(n, spec): h for n, specs in side["inputs"].items() if n not in ignore
                for spec, h in specs.items()} for side in (theirs, mine))
    if diff := changed(a, b):
        (name, spec), was, now = diff[0], str(a.get(diff[0]))[:12], str(b.get(diff[0]))[:12]
        raise RunError(f"{what} was written with another {flag(name)} {spec}: the file has changed since (sha256 "
                       f"{was} then, {now} now): resume with the file it read, or pass --overwrite or another --name")
    a, b = theirs["data"], mine["data"]
    if diff := [k if isinstance(b.get(k), list) else f"{k} {a.get(k)} → {b.get(k)}" for k in b if a.get(k) != b.get(k)]:
        raise RunError(f"{what} was written on other data ({', '.join(diff)}): resume on the same data, "
                       f"or pass --overwrite or another --name to start over")
    if theirs["device_type"] != mine["device_type"]:
        raise RunError(f"{what} was written on {theirs['device_type']}; resume it on the same kind of device")


def versions() -> dict:
    """The versions of Python, the packages and this code (read from the package metadata: importing torchvision
    alone would take seconds)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except Exception:
        commit = ""
    installed = {}
    for package in ("torchvision", "numpy"):
        with suppress(PackageNotFoundError):
            installed[package] = version(package)
    return {"python": platform.python_version(), "torch": torch.__version__, **installed, "git_commit": commit}


def write_run_config(run_dir: Path, cfg, ess: ExpandedSearchSpace, device: torch.device):
    """config.json: the resolved config, the space, the device and the versions (the run describes itself)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    write_json(run_dir / "config.json", {"config": cfg.to_dict(), "ess": ess.to_dict(), "device": str(device),
                                         "device_name": name, "world_size": distributed.world(), "argv": sys.argv,
                                         "versions": versions()})


# ---- What a run says as it starts: its plan, then the time it will take --------------------------

def duration(seconds: float) -> str:
    """'0.35 s', '12 s', '4 min 10 s', '5 h 12 min'."""
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def start_line(run_dir: Path, device: torch.device, data: data_mod.ImageData, space: str,
               phases: list[tuple[str, int]], steps: int, batch: int | None, done: int) -> str:
    """One line: the run folder, the device, the data, the space and the schedule (``batch``: the batch its loaders
    draw, which a --batch-size beyond the data does not reach; and where a resumed run goes on)."""
    where = f"{device} ({torch.get_num_threads()} threads)" if device.type == "cpu" else str(device)
    where += f", {distributed.world()} processes" if distributed.world() > 1 else ""
    split = f" ({' + '.join(f'{n} {name}' for name, n in phases)})" if len(phases) > 1 else ""
    batch = f" at batch {batch}" if batch else ""
    total = sum(n for _, n in phases)
    schedule = f"{total} epochs{split} of {steps} step{'s' * (steps != 1)}{batch}"
    parts = [f"{run_dir} on {where}", f"{data.name}: {len(data.train_y):,} training images of {data.num_classes} classes",
             *([space] if space else []), schedule]
    return "; ".join(parts) + ("" if not done else f", from epoch {done + 1}" if done < total else ", all of them done already")


class Estimate:
    """The time of the whole run, estimated from the first few steps of each phase: ``step()`` after every step
    returns (seconds, the phase's name, seconds a step, whether later phases remain) once a phase has run
    ``AFTER`` steps (or all of its steps, if fewer), else None. The pace leaves out a phase's first step, which pays
    for one-off work."""

    AFTER = 4

    def __init__(self, phases: list[tuple[str, int]], steps: int, done_epochs: int, spent: float):
        self.names, self.ends = [name for name, _ in phases], list(itertools.accumulate(n for _, n in phases))
        self.steps, self.spent, self.done = steps, spent, done_epochs * steps
        self.started = self.last = clock()
        self.phase, self.count, self.first, self.phase_start, self.phase_steps = None, 0, 0.0, 0.0, 0

    def step(self):
        now, self.done = clock(), self.done + 1
        epoch = (self.done - 1) // self.steps
        phase = next((i for i, end in enumerate(self.ends) if epoch < end), len(self.ends) - 1)
        if phase != self.phase:
            self.phase, self.count, self.phase_start = phase, 0, self.last
            self.phase_steps = self.ends[phase] * self.steps - self.done + 1      # this phase's steps from here
        self.count, self.last = self.count + 1, now
        if self.count == 1:
            self.first = now
        if self.count != min(self.AFTER, self.phase_steps):
            return None
        pace = (now - self.first) / (self.count - 1) if self.count > 1 else now - self.phase_start
        total = self.spent + (now - self.started) + pace * (self.ends[-1] * self.steps - self.done)
        return total, self.names[phase], pace, phase < len(self.ends) - 1


def estimate_lines(cfg: RunSettings, device: torch.device, total: float, phase: str, pace: float, later: bool,
                   warned: bool) -> list[str]:
    """The estimate's line and, the first time a CPU run's estimate exceeds an hour, what to use instead."""
    lines = [f"time estimate: {'at least' if later else 'about'} {duration(total)} for the whole run ({phase} steps "
             f"take {duration(pace)}{'; the next phase is timed when it starts' if later else ''})"]
    if device.type == "cpu" and total > 3600 and not warned:
        reduced = all(getattr(cfg, k, v) <= v for k, v in REDUCED.items() if k in ("d_max", "w_max"))
        instead = "fewer --epochs or less data" if reduced else (
            "the reduced space (" + " ".join(f"{flag(k)} {v}" for k, v in REDUCED.items()) + ") or --quick")
        spare = spare_cores()
        busy = (f"; other processes keep cores busy here: --threads {spare} may be faster"
                if spare < torch.get_num_threads() else "")
        lines.append(f"this {'run' if reduced else 'space'} needs a GPU: on this CPU the run takes "
                     f"{'at least ' if later else ''}{duration(total)}; run it where CUDA is available (--device cuda), "
                     f"or use {instead}{busy}")
    return lines


# ---- Training loops with checkpoints, progress, epoch lines and the divergence stop --------------

def train_run(trainer, fit: Callable, steps: int, cfg: RunSettings, run_dir: Path, ess: ExpandedSearchSpace,
              data: data_mod.ImageData, device: torch.device, data_gen: torch.Generator, describe: Callable,
              status: Callable | None = None, on_step: Callable | None = None, callback: Callable | None = None,
              start: dict | None = None, ignore: tuple[str, ...] = (), space: str = "",
              phases: list[tuple[str, int]] | None = None, batch: int | None = None):
    """Run ``fit(on_step, on_epoch)`` of a ``trainer`` (``state_dict``, ``load_state_dict``, ``history``) of
    ``steps`` steps an epoch, in ``run_dir``: resumed from ``checkpoint.pt`` with --resume (or from the state
    ``start``), refusing another identity (bar the settings in ``ignore``); ``config.json`` first; after each
    epoch the divergence rule, the checkpoint (not of a suspect epoch), an epoch line (``describe(record)``) and
    a line of ``metrics.jsonl``; a progress bar with ``status(trainer, sums, n)``. On stdout first a line of the
    plan (``space`` says what the run searches or trains over; ``phases``: (name, epochs) in order, by default
    one of ``cfg.epochs``; ``batch``: the loaders' batch), then after the first few steps of each phase the
    estimated time of the whole run."""
    mine = identity(cfg, data_mod.fingerprint(data), device)
    state, resume = start, (run_dir / "checkpoint.pt").is_file() if cfg.reuse else cfg.resume
    if resume:                       # rank 0 checks the checkpoint first, then every process reads it itself
        keep = True
        if distributed.is_main():
            state = load_checkpoint(run_dir / "checkpoint.pt")
            try:
                check_identity(mine, state.get("identity"), ignore)
            except RunError:
                if not cfg.reuse:
                    raise
                empty(run_dir)       # --reuse: the folder holds another run, which this one replaces
                state, keep = start, False
        if distributed.broadcast(keep) and not distributed.is_main():
            state = load_checkpoint(run_dir / "checkpoint.pt")
    if state is start and start is not None:
        check_identity(mine, start.get("identity"), ignore)
    if state is not None:
        try:
            trainer.load_state_dict(state)
            data_gen.set_state(state["data_gen"])
            if not (isinstance(trainer.epoch, int) and isinstance(trainer.step, int) and 0 <= trainer.epoch <= trainer.step
                    and all(isinstance(h, dict) for h in trainer.history)):
                raise TypeError(f"its counters are epoch {trainer.epoch!r} and step {trainer.step!r}")
        except (MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as e:      # anything a foreign or damaged state trips, read whole inside this guard
            raise RunError(f"the checkpoint {run_dir / 'checkpoint.pt'} does not fit this run ({type(e).__name__}): "
                           f"delete it or pass --overwrite") from None
    write_run_config(run_dir, cfg, ess, device)
    metrics = run_dir / "metrics.jsonl"          # one JSON line per epoch, as it goes (resumed: the kept epochs)
    write_atomic(metrics, lambda p: p.write_text("".join(json.dumps(h) + "\n" for h in trainer.history)))
    current = lambda: {"identity": mine, "config": cfg.to_dict(), **trainer.state_dict(), "data_gen": data_gen.get_state()}
    bar = tqdm(total=steps, leave=False, dynamic_ncols=True, disable=bar_off(cfg.progress))
    phases = phases or [("training", cfg.epochs)]
    done = len(trainer.history)
    say = lambda line: (bar.clear(), print(line, flush=True)) if distributed.is_main() else None
    say(start_line(run_dir, device, data, space, phases, steps, batch, done))
    estimate, warned = Estimate(phases, steps, done, sum(h.get("seconds", 0.0) for h in trainer.history)), []

    def step(trainer, sums):
        if on_step is not None:
            on_step(trainer, sums)
        bar.update()
        timed = estimate.step()
        if timed is not None:
            lines = estimate_lines(cfg, device, *timed, warned=bool(warned))
            warned.extend(lines[1:])         # the GPU advice, once
            for line in lines:
                say(line)
        if status is not None and bar.n % 20 == 1:
            bar.set_postfix_str(status(trainer, sums, bar.n), refresh=False)

    def epoch(trainer, record):
        for key in ("loss", "task_loss", "flops_loss"):       # several processes: the mean over all of them
            if key in record:
                record[key] = distributed.mean(record[key], device)
        suspect = check_loss([h["loss"] for h in trainer.history], ess.num_classes, "the supernet's training loss",
                             f"lower --lr (now {cfg.lr:g})")
        if not suspect:
            write_atomic(run_dir / "checkpoint.pt", lambda p: save_torch(current(), p))
        if distributed.is_main():
            bar.clear()
            print(describe(record), flush=True)
            with open(metrics, "a") as f:
                f.write(json.dumps(record) + "\n")
        bar.reset()
        if callback is not None:
            callback(trainer, record)
    try:
        fit(step, epoch)
    finally:
        bar.close()


def cli(main: Callable[[list[str] | None], int]):
    """Run a command-line entry point: each failure is one line on stderr and an exit code of EXIT_CODES: bad
    input, data or files (an OSError: full disk, no permission…; out of memory) 2, a divergence 3, Ctrl-C 130.
    Under torchrun every process runs ``main``; a process that fails ends the run (torchrun stops the others)."""
    prog = Path(sys.argv[0]).name
    code, message = 0, None
    with suppress(ValueError):                     # from here Ctrl-C is a KeyboardInterrupt again (not while starting)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    for stream in (sys.stdout, sys.stderr):        # an ASCII terminal still gets every line
        with suppress(AttributeError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        if distributed.init() and not distributed.is_main():
            sys.stdout = open(os.devnull, "w")      # one summary, from rank 0; errors still reach stderr
        code = main(sys.argv[1:])
    except (RunError, data_mod.DataError, FileError) as e:
        code, message = EXIT_CODES["bad input, data or files"], f"error: {e}"
    except OSError as e:
        code, message = EXIT_CODES["bad input, data or files"], f"error: {os_error(e)}"
    except (MemoryError, RuntimeError) as e:         # torch.OutOfMemoryError, the CPU allocator's refusal
        if not isinstance(e, MemoryError) and "out of memory" not in str(e) and "can't allocate memory" not in str(e):
            raise
        first = str(e).split("\n")[0].split(". ")[0] or type(e).__name__
        code, message = EXIT_CODES["bad input, data or files"], f"error: out of memory ({first}): lower --batch-size, " \
                                                                f"or the space (--w-max, --d-max)"
    except Diverged as e:
        code, message = EXIT_CODES["diverged"], str(e)
    except KeyboardInterrupt as e:                # torchrun passes Ctrl-C to every process
        code, message = EXIT_CODES["interrupted"], str(e) or "interrupted"
    if message is not None:
        where = f" (rank {distributed.rank()})" if distributed.world() > 1 else ""
        print(f"{prog}{where}: {message}", file=sys.stderr)
    distributed.close()
    sys.exit(code)
