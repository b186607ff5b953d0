"""Run plumbing shared by every command line (``nss.py``, ``nas.py``, ``evaluate.py``, ``bench.py``).

* settings dataclasses → command-line flags (``parse_config``), with ``--quick`` presets;
* ``RunSettings``: the data, the space, the device and the run folder of a run;
* checkpoints that resume only in the program, under the settings and on the data that wrote them
  (run folders held by one run at a time and atomic files are ``rundir.py``'s), ``config.json``
  with the versions, and the one-line error reporting of ``cli`` with its exit codes (``EXIT_CODES``).

None of the method is here: the search engine is ``search.py``, and ``run_search`` only gives it a
run folder, resumable checkpoints and a result file's common fields.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import data as data_mod
import distributed
from flops import arch_params
from rundir import RunError, load_checkpoint, os_error, run_folder, save_torch, write_atomic, write_json
from search import SearchSettings, Searcher, check_target
from supernet import Diverged
from space import REDUCED, ExpandedSearchSpace, Options

EXIT_CODES = {"done": 0, "bad input, data or files": 2, "diverged": 3, "interrupted": 130}


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
        self.check_numbers(at_least_one=("d_max", "w_max", "d_step", "w_step"))
        if self.d_max % self.d_step or self.w_max % self.w_step:
            raise RunError("--d-step must divide --d-max and --w-step must divide --w-max")
        if self.resume and self.overwrite:
            raise RunError("--resume and --overwrite exclude each other")
        if not 0 <= self.seed < 2 ** 62:
            raise RunError(f"--seed must be an integer from 0 to 2^62 - 1 (torch's seeds are 64-bit), got {self.seed}")
        resolve_device(self.device)
        if self.dataset == "synthetic":
            n = self.synthetic_size
            if n < 20:
                raise RunError(f"too few images: --synthetic-size must be at least 20 (two per class), got {n}")
            image = 3 * self.ess(10).image_size ** 2        # generated in float32, two copies at least
            self.check_memory((f"--synthetic-size {n}", 2 * 4 * image * n, "generating the synthetic images", False))

    def check_memory(self, *needs: tuple[str, float, str, bool]):
        """Refuse requests that cannot fit: each need is (flags, bytes, for what, on the run's device?), with
        bytes a low estimate, checked against all the memory of the host or the device (one line, before any work)."""
        for flags, need, what, on_device in needs:
            device = resolve_device(self.device) if on_device else torch.device("cpu")
            have, where = memory_of(device)
            if need > have:
                raise RunError(f"{flags} needs at least {format_bytes(need)} for {what}, more than the "
                               f"{format_bytes(have)} of {where}")

    def supernet_memory(self) -> tuple[str, float, str, bool]:
        """The supernet's weights, gradients and momentum (fp32): the need of every run that trains one."""
        ess = self.ess(10)
        return (f"--d-max {self.d_max} --w-max {self.w_max}", 3 * 4 * arch_params(ess.largest_arch(), ess),
                "the supernet's weights, gradients and momentum", True)

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
        nss = Options.nss(self.ess(10))   # NAS has more options: this is the low estimate
        draws = 4 * 4 * self.flops_samples * sum(len(o) for o in nss.depths + nss.widths)
        needs = [(f"--flops-samples {self.flops_samples}", draws, "the Gumbel-softmax draws of a Θ step", False)]
        self.check_memory(*needs, *([self.supernet_memory()] if self.task_loss else []))


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, no usage block: reported by ``cli`` like every bad input
        raise RunError(message)


def integer(text: str) -> int:
    """An int flag's value: '2000', or an integral number in float notation such as '1e9'."""
    try:
        return int(text)
    except ValueError:
        with suppress(ValueError):
            if float(text).is_integer():
                return int(float(text))
    raise argparse.ArgumentTypeError(f"invalid int value: {text!r}")


def is_number(text: str) -> bool:
    try:
        return float(text) is not None
    except ValueError:
        return False


def join_negative_values(argv: list[str], takes_value: set[str]) -> list[str]:
    """'--target -1e6' → '--target=-1e6': argparse takes '-1e6' (unlike '-1') for a flag, and the real reason
    to refuse it ("must be positive") would be lost to "expected one argument"."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in takes_value and arg.startswith("-") and is_number(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def parse_config(cls, argv=None, description: str = ""):
    """Build ``cls`` from command-line flags generated from its fields; --quick fills unset flags."""
    parser = _Parser(description=description, argument_default=argparse.SUPPRESS)
    takes_value = set()
    for f in dataclasses.fields(cls):
        help_ = f"{help_of(cls, f.name)} (default: {'the recipe' if f.default is None else f.default})"
        if f.type in ("bool", bool):
            parser.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, help=help_)
        else:
            kind = {"int": integer, "float": float, "str": str}.get(f.type, f.type)
            parser.add_argument(flag(f.name), type=kind, help=help_, metavar=f.name.upper())
            takes_value.add(flag(f.name))
    argv = join_negative_values(list(sys.argv[1:] if argv is None else argv), takes_value)
    given = vars(parser.parse_args(argv))
    preset = getattr(cls, "QUICK", {}) if given.get("quick") else {}
    with user_input():         # a settings class may refuse a value as it is built (e.g. an unknown recipe)
        cfg = cls(**{**preset, **given})
    cfg.check()
    if not distributed.is_main() and hasattr(cfg, "progress"):
        cfg.progress = False   # under torchrun rank 0 alone shows progress
    return cfg


def resolve_device(name: str) -> torch.device:
    """'auto' means CUDA when available, else the CPU."""
    if name == "auto":
        return distributed.device_for(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RunError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RunError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise RunError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return distributed.device_for(device)


def memory_of(device: torch.device) -> tuple[int, str]:
    """All the memory of the device (the host's RAM for the CPU), in bytes, and its name for messages."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"{device} ({torch.cuda.get_device_name(device)})"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's memory"


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000


# --------------------------------------------------------------------------------------------
# Files: atomic writes, run folders, checkpoints
# --------------------------------------------------------------------------------------------

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


def check_same_settings(cfg: RunSettings, state: dict, device: torch.device, ignore: tuple[str, ...] = ()):
    """A checkpoint resumes only in the program and under the settings that wrote it (bar the VOLATILE ones
    and those in ``ignore``), and on the same kind of device."""
    try:
        mine = {k: v for k, v in cfg.to_dict().items() if k not in cfg.VOLATILE + ignore}
        theirs = {k: v for k, v in state["config"].items() if k not in cfg.VOLATILE + ignore}
        kind = state["device_type"]
    except (KeyError, TypeError, AttributeError):
        raise RunError("the checkpoint is not one of this program's: delete it or pass --overwrite") from None
    program, mine_is = state.get("program"), type(cfg).__name__
    if program not in (None, mine_is) or set(mine) != set(theirs):
        raise RunError(f"the checkpoint was written by another program ({program or 'other settings'}, not "
                       f"{mine_is}): resume it with its own program, or pass --overwrite")
    if mine != theirs:
        diff = sorted(k for k in mine if mine[k] != theirs[k])
        raise RunError(f"the checkpoint was written with other settings ({', '.join(diff)}); "
                       f"resume with the same flags or start a new --name")
    if kind != device.type:
        raise RunError(f"the checkpoint was written on {kind}; resume it on the same kind of device")


def fingerprint(data: data_mod.ImageData) -> dict:
    """A small fingerprint of a dataset, kept in checkpoints: classes, image counts (per class) and image shape."""
    return {"classes": data.num_classes, "class names": list(data.classes), "training images": len(data.train_y),
            "test images": len(data.test_y), "image shape": list(data.train_x.shape[1:]),
            "images per class": torch.bincount(data.train_y.cpu(), minlength=data.num_classes).tolist()}


def check_same_data(now: dict, then: dict | None, what: str = "the checkpoint"):
    """A run resumes only on the data it started on (``then`` None: written before fingerprints, not checked)."""
    if then is not None and now != then:
        diff = [k if isinstance(now.get(k), list) else f"{k} {then.get(k)} → {now.get(k)}"
                for k in now if now.get(k) != then.get(k)]
        raise RunError(f"{what} was written on other data ({', '.join(diff)}): resume on the same data, "
                       f"or pass --overwrite or another --name to start over")


def load_data(cfg: RunSettings, ess: ExpandedSearchSpace, device: torch.device | None = None) -> data_mod.ImageData:
    """The run's dataset on its device, checked against the space."""
    device = device or resolve_device(cfg.device)
    data = data_mod.load(cfg.dataset, cfg.data_dir, cfg.download, device, synthetic_train=cfg.synthetic_size,
                         synthetic_test=max(1, cfg.synthetic_size // 4), image_size=ess.image_size, seed=cfg.seed)
    if data.num_classes != ess.num_classes:
        raise RunError(f"the data has {data.num_classes} classes where the space was built for {ess.num_classes}")
    sizes = {tuple(x.shape[-2:]) for x in (data.train_x, data.test_x)}
    if sizes != {(ess.image_size, ess.image_size)}:
        raise RunError(f"the images are {' and '.join(f'{h}×{w}' for h, w in sorted(sizes))} px where the space "
                       f"needs {ess.image_size}×{ess.image_size}: resize them")
    return data


def write_run_config(run_dir: Path, cfg, ess: ExpandedSearchSpace, device: torch.device):
    """config.json: the resolved config, the space, the device and the versions (the run describes itself)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    write_json(run_dir / "config.json", {"config": cfg.to_dict(), "ess": ess.to_dict(), "device": str(device),
                                         "device_name": name, "world_size": distributed.world(), "argv": sys.argv,
                                         "versions": versions()})


def train_run(trainer, cfg: RunSettings, run_dir: Path, ess: ExpandedSearchSpace, data: data_mod.ImageData,
              device: torch.device, callback: Callable | None = None, start: dict | None = None,
              until: int | None = None, ignore: tuple[str, ...] = ()):
    """Resume ``trainer`` if asked (else start it from the state ``start``, if given), attach the data, write
    config.json and ``fit`` it up to epoch ``until`` with a checkpoint per epoch.

    ``trainer`` has ``attach(data)``, ``fit(on_epoch, until)``, ``state_dict()``, ``load_state_dict(state)``,
    ``describe(record)`` and ``suspect`` (the last epoch's loss is far above chance: not checkpointed);
    ``checkpoint.pt`` holds its state with the program, the config, the device kind and the data's fingerprint.
    A resumed checkpoint must match the config, bar the settings named in ``ignore``.
    """
    data_print = fingerprint(data)
    state = None
    if cfg.resume and distributed.is_main():    # several processes: rank 0 reads, every process resumes
        state = load_checkpoint(run_dir / "checkpoint.pt")
    elif start is not None:
        # a copy of ``start``: an optimiser's load_state_dict may keep its tensors (momentum) and train them in place
        state = copy.deepcopy(start)
    if state is not None:
        check_same_settings(cfg, state, device, ignore)
        check_same_data(data_print, state.get("data"))
    distributed.agree()                         # every process is ready, or all stop here with one line
    if cfg.resume:
        state = distributed.broadcast(state)
    if state is not None:
        try:
            trainer.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise RunError(f"the checkpoint {run_dir / 'checkpoint.pt'} does not fit this run ({type(e).__name__}): "
                           f"delete it or pass --overwrite") from None
    trainer.attach(data.to(device))
    write_run_config(run_dir, cfg, ess, device)

    def on_epoch(trainer, record):
        if not getattr(trainer, "suspect", False):
            state = {"program": type(cfg).__name__, "config": cfg.to_dict(), "device_type": device.type,
                     "data": data_print, **trainer.state_dict()}
            write_atomic(run_dir / "checkpoint.pt", lambda p: save_torch(state, p))
        if cfg.progress and distributed.is_main():
            print(trainer.describe(record), file=sys.stderr)
        if callback is not None:
            callback(trainer, record)
    with distributed.steps():
        trainer.fit(on_epoch, until=until)
    return trainer


def run_search(cfg: SearchConfig, ess: ExpandedSearchSpace, options: Options, what: str, default_name: str,
               finish: Callable[[Searcher], dict], data: data_mod.ImageData | None = None,
               callback: Callable | None = None, result_file: str = "result.json", start: dict | None = None) -> dict:
    """Check the target, search with a checkpoint per epoch (resumable), ``finish`` the searcher into a result
    with P_Θ, the history, the dataset, the space, the timings and the run folder, and write it to
    ``result_file``, all while holding the run folder (NSS and NAS). ``start``: a warmed-up state to go on from."""
    started = time.time()
    with user_input():
        check_target(cfg.target, options, ess, what)
    with run_folder(Path(cfg.out) / (cfg.name or default_name), cfg) as run_dir:
        device = resolve_device(cfg.device)
        data = load_data(cfg, ess, device) if data is None else data
        searcher = Searcher(cfg.part(SearchSettings), ess, options, device, cfg.amp, cfg.progress, distributed)
        train_run(searcher, cfg, run_dir, ess, data, device, callback, start=start, ignore=("target",) * bool(start))
        result = finish(searcher) | searcher.result() | {
            "dataset": cfg.dataset, "ess": ess.to_dict(), "seconds": searcher.seconds,
            "wall_seconds": time.time() - started, "run_dir": str(run_dir)}
        write_json(run_dir / result_file, result)
    return result


def run_searches(cfgs: list[SearchConfig], names: list[str], warmup_name: str, ess: ExpandedSearchSpace,
                 options: Options, what: str, finish: Callable[[SearchConfig, Searcher], dict],
                 data: data_mod.ImageData | None = None, callback: Callable | None = None) -> list[dict]:
    """Several FLOPs targets, one warmup: the warmup epochs (uniform sampling, weight steps only, §4.1) do not
    depend on the target, so they run once, in runs/<warmup_name>, and each target's search goes on from the
    warmed-up state in its own run folder runs/<name> with its own result.json.

    The configs differ only in ``target``. With --resume, the warmup and every target go on from their own
    checkpoint where one exists (a target not started yet starts from the warmup), so a run killed anywhere
    resumes; a target searched here gives the result of the same target searched alone (same seed).
    """
    base = cfgs[0]
    with user_input():
        for cfg in cfgs:
            check_target(cfg.target, options, ess, what)
    device = resolve_device(base.device)
    data = load_data(base, ess, device) if data is None else data
    has_checkpoint = lambda name: (Path(base.out) / name / "checkpoint.pt").is_file()
    warm_cfg = dataclasses.replace(base, name=warmup_name, resume=base.resume and has_checkpoint(warmup_name))
    with run_folder(Path(base.out) / warmup_name, warm_cfg) as warm_dir:
        searcher = Searcher(base.part(SearchSettings), ess, options, device, base.amp, base.progress, distributed)
        train_run(searcher, warm_cfg, warm_dir, ess, data, device, callback, until=base.warmup_epochs,
                  ignore=("target",))
        warm = {"program": type(base).__name__, "config": warm_cfg.to_dict(), "device_type": device.type,
                "data": fingerprint(data), **searcher.state_dict()}
    results = []
    for cfg, name in zip(cfgs, names):
        cfg = dataclasses.replace(cfg, name=name, resume=base.resume and has_checkpoint(name))
        results.append(run_search(cfg, ess, options, what, name,
                                  lambda s, cfg=cfg: finish(cfg, s) | {"warmup_run": str(warm_dir)}, data, callback,
                                  start=warm))
    return results


def cli(main: Callable[[list[str] | None], int]):
    """Run a CLI entry point: each failure is one line on stderr and an exit code of EXIT_CODES: bad input,
    data or files (an OSError: full disk, no permission…) 2, a divergence 3, Ctrl-C 130.

    Under torchrun every process runs ``main`` (``distributed``); a process that fails before the
    collective steps tells the others, so all of them stop with one line instead of waiting.
    """
    prog = Path(sys.argv[0]).name
    code, message, relay = 0, None, True
    try:
        if distributed.init() and not distributed.is_main():
            sys.stdout = open(os.devnull, "w")      # one summary, from rank 0; errors still reach stderr
        code = main(sys.argv[1:])
    except (RunError, data_mod.DataError) as e:
        code, message = EXIT_CODES["bad input, data or files"], f"error: {e}"
    except OSError as e:
        code, message = EXIT_CODES["bad input, data or files"], f"error: {os_error(e)}"
    except distributed.RankFailed as e:           # another process failed and told this one
        code, message, relay = EXIT_CODES["bad input, data or files"], f"error: {e}", False
    except Diverged as e:
        code, message = EXIT_CODES["diverged"], str(e)
    except KeyboardInterrupt as e:                # torchrun passes Ctrl-C to every process
        code, message, relay = EXIT_CODES["interrupted"], str(e) or "interrupted", False
    if message is not None:
        where = f" (rank {distributed.rank()})" if distributed.world() > 1 else ""
        print(f"{prog}{where}: {message}", file=sys.stderr)
        if relay:
            distributed.fail(message)
    distributed.close()
    sys.exit(code)
