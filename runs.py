"""Run plumbing shared by the command lines (``nss.py``, ``nas.py``, ``evaluate.py``, ``bench.py``).

* flags generated from the settings dataclasses, each checked against the range its field declares
  (``parse_config``; ``--quick`` presets);
* ``RunSettings``: the data, the space, the device and the run folder of a run;
* ``train_run``: a training loop with a checkpoint per epoch, exact resume under the same identity (settings,
  data, device kind), progress bars, epoch lines, ``metrics.jsonl`` and the divergence stop;
* ``cli``: every failure as one line on stderr with its exit code (``EXIT_CODES``).

None of the method is here: the search engine is ``search.py``; run folders and atomic files are ``rundir.py``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
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
from rundir import RunError, empty, load_checkpoint, os_error, save_torch, write_atomic, write_json
from search import SearchSettings
from space import REDUCED, ExpandedSearchSpace, FileError
from train import Diverged, SettingError, check_loss, check_settings, setting as option

TORCH_THREADS = torch.get_num_threads()        # torch's own choice, before any run changes it
EXIT_CODES = {"done": 0, "bad input, data or files": 2, "diverged": 3, "interrupted": 130}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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


# --------------------------------------------------------------------------------------------
# Settings and their flags
# --------------------------------------------------------------------------------------------

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
    out: str = option("runs", "folder of the runs")
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

    def ess(self, num_classes: int) -> ExpandedSearchSpace:
        """The Expanded Search Space of this run."""
        return ExpandedSearchSpace(d_max=self.d_max, w_max=self.w_max, d_step=self.d_step, w_step=self.w_step,
                                   num_classes=num_classes)

    def ess_for(self, data: data_mod.ImageData | None = None) -> ExpandedSearchSpace:
        """The space for ``data``, or for the configured dataset's class count (without loading it)."""
        return self.ess(data.num_classes if data is not None else data_mod.num_classes_of(self.dataset, self.data_dir))

    def check(self):
        """Every field in its declared range, then what ranges cannot say; before any work starts."""
        with user_input():
            check_settings(self)
        if self.d_max % self.d_step or self.w_max % self.w_step:
            raise RunError("--d-step must divide --d-max and --w-step must divide --w-max")
        if self.resume + self.overwrite + self.reuse > 1:
            raise RunError("--resume, --overwrite and --reuse exclude each other")
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


def parse_config(cls, argv=None, description: str = ""):
    """Build ``cls`` from command-line flags generated from its fields and check it; --quick fills unset flags."""
    parser = _Parser(description=description, argument_default=argparse.SUPPRESS)
    takes_value = set()
    for f in dataclasses.fields(cls):
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
    preset = getattr(cls, "QUICK", {}) if given.get("quick") else {}
    with user_input():         # a settings class may refuse a value as it is built (an unknown recipe, say)
        cfg = cls(**{**preset, **given})
    cfg.check()
    return cfg


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


# --------------------------------------------------------------------------------------------
# A run's identity and its files
# --------------------------------------------------------------------------------------------

def identity(cfg: RunSettings, data: dict, device: torch.device) -> dict:
    """What a checkpoint resumes only under: the program, its settings (bar the VOLATILE ones), the data's
    fingerprint and the kind of device."""
    return {"program": type(cfg).__name__, "settings": {k: v for k, v in cfg.to_dict().items() if k not in cfg.VOLATILE},
            "data": data, "device_type": device.type}


def check_identity(mine: dict, theirs, ignore: tuple[str, ...] = (), what: str = "the checkpoint"):
    """Refuse, in one line naming the first difference, a state written under another identity."""
    if not isinstance(theirs, dict) or set(theirs) != set(mine):
        raise RunError(f"{what} is not one of this program's: delete it or pass --overwrite")
    if theirs["program"] != mine["program"]:
        raise RunError(f"{what} was written by another program ({theirs['program']}, not {mine['program']}): "
                       f"resume it with its own program, or pass --overwrite")
    a, b = theirs["settings"], mine["settings"]
    diff = [k for k in sorted(set(a) | set(b)) if k not in ignore and a.get(k) != b.get(k)]
    if diff:
        raise RunError(f"{what} was written with other settings ({', '.join(f'{flag(k)} {a.get(k)} → {b.get(k)}' for k in diff)}): "
                       f"resume with the same flags, or pass --overwrite or another --name")
    a, b = theirs["data"], mine["data"]
    diff = [k if isinstance(b.get(k), list) else f"{k} {a.get(k)} → {b.get(k)}" for k in b if a.get(k) != b.get(k)]
    if diff:
        raise RunError(f"{what} was written on other data ({', '.join(diff)}): resume on the same data, "
                       f"or pass --overwrite or another --name to start over")
    if theirs["device_type"] != mine["device_type"]:
        raise RunError(f"{what} was written on {theirs['device_type']}; resume it on the same kind of device")


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


def write_run_config(run_dir: Path, cfg, ess: ExpandedSearchSpace, device: torch.device):
    """config.json: the resolved config, the space, the device and the versions (the run describes itself)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    write_json(run_dir / "config.json", {"config": cfg.to_dict(), "ess": ess.to_dict(), "device": str(device),
                                         "device_name": name, "world_size": distributed.world(), "argv": sys.argv,
                                         "versions": versions()})


# --------------------------------------------------------------------------------------------
# Training loops with checkpoints, progress, epoch lines and the divergence stop
# --------------------------------------------------------------------------------------------

def train_run(trainer, fit: Callable, steps: int, cfg: RunSettings, run_dir: Path, ess: ExpandedSearchSpace,
              data: data_mod.ImageData, device: torch.device, data_gen: torch.Generator, describe: Callable,
              status: Callable | None = None, on_step: Callable | None = None, callback: Callable | None = None,
              start: dict | None = None, ignore: tuple[str, ...] = ()):
    """Run ``fit(on_step, on_epoch)`` of a ``trainer`` (``state_dict``, ``load_state_dict``, ``history``) of
    ``steps`` steps an epoch, in ``run_dir``: resumed from ``checkpoint.pt`` with --resume (or from the state
    ``start``), refusing another identity (bar the settings in ``ignore``); ``config.json`` first; after each
    epoch the divergence rule, the checkpoint (not of a suspect epoch), an epoch line (``describe(record)``) and
    a line of ``metrics.jsonl``; a progress bar with ``status(trainer, sums, n)``."""
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
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise RunError(f"the checkpoint {run_dir / 'checkpoint.pt'} does not fit this run ({type(e).__name__}): "
                           f"delete it or pass --overwrite") from None
    write_run_config(run_dir, cfg, ess, device)
    metrics = run_dir / "metrics.jsonl"          # one JSON line per epoch, as it goes (resumed: the kept epochs)
    write_atomic(metrics, lambda p: p.write_text("".join(json.dumps(h) + "\n" for h in trainer.history)))
    current = lambda: {"identity": mine, "config": cfg.to_dict(), **trainer.state_dict(), "data_gen": data_gen.get_state()}
    bar = tqdm(total=steps, leave=False, dynamic_ncols=True, disable=None if cfg.progress and distributed.is_main() else True)

    def step(trainer, sums):
        if on_step is not None:
            on_step(trainer, sums)
        bar.update()
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
