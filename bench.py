"""Speed benchmarks of the hot loops, on one device; prints a table and writes JSON.

    python bench.py                                   # the full benchmark on the default device
    python bench.py --data-dir /path/to/cifar10-jpeg  # adds from-scratch time-to-accuracy on a real copy
    python bench.py --device cpu --quick              # seconds-long smoke run at tiny sizes (run by the tests)

What is measured (effective TFLOP/s count 2 FLOPs per multiply-accumulate, as torch's counter does;
training steps count forward and backward as torch.utils.flop_counter counts them on the first step):
  1. plain network anchor: build(arch) training step, the same blocks without masks or slicing;
  2. masked Θ step on the full space (batch 64 and 256): img/s and TFLOP/s of the executed FLOPs;
  3. sliced weight steps on architectures of about 0.6, 2, 4 and 16 GF at the search batch size,
     and the ~2 GF one at batch 512;
  4. NSS search: seconds per warmup epoch and per search epoch on CIFAR-10-sized data (25k + 25k);
  5. evaluation: architectures scored per minute in a 1.6 GF space (BN recalibration on 2000
     images, the 10k test images);
  6. from scratch (with --data-dir): seconds per epoch and time to 90% and 93% test accuracy.
"""
from __future__ import annotations

import datetime
import itertools
import platform
import time
from dataclasses import dataclass
from pathlib import Path


if __name__ == "__main__":           # Ctrl-C while the imports below load: one line, exit code 130
    import startup
    startup.guard()

import torch
from torch.utils.flop_counter import FlopCounterMode

import data as data_mod
import evaluate
import runs
from rundir import RunError, write_json
from flops import arch_flops, flops_range, format_flops, space_flops
from scratch import ScratchConfig, train_from_scratch
from search import SearchSettings, Searcher
from space import Arch, ExpandedSearchSpace, Options
from supernet import SuperNet, build
from train import train_step


@dataclass
class BenchConfig:
    """The command line of ``bench.py``: each setting with its range, checked before anything runs. The sizes of
    what is timed (``HIDDEN``: no flags) are fixed, and smaller with --quick."""

    device: str = runs.option("auto", "auto | cpu | cuda | cuda:N")
    quick: bool = runs.option(False, "tiny sizes, seconds on a CPU (the tests run this)")
    data_dir: str = runs.option("", "an image-folder copy of CIFAR-10 for the from-scratch benchmark")
    steps: int = runs.option(20, "timed steps per step benchmark", "[1, 1e6]")
    epoch_steps: int = runs.option(0, "time this many steps of an NSS epoch and scale up (0: whole epochs)", "[0, 1e6]")
    scratch_epochs: int = runs.option(60, "from-scratch epochs, with --data-dir", "[1, 1e5]")
    out: str = runs.option("bench.json", "the JSON file of the results", path="output file")
    overwrite: bool = runs.option(False, "replace --out if it exists")
    batch_sizes: tuple[int, ...] = (64, 256)       # masked Θ step
    search_batch: int = 64                         # sliced weight steps, as the search uses
    arch_targets: tuple[float, ...] = (6e8, 2e9, 4e9, 1.6e10)
    big_batch: int = 512                           # the goal's sliced step: ~2 GF at batch 512
    eval_archs: int = 20

    HIDDEN = ("batch_sizes", "search_batch", "arch_targets", "big_batch", "eval_archs")
    QUICK = dict(steps=2, epoch_steps=2, scratch_epochs=1, batch_sizes=(8,), search_batch=8, arch_targets=(2e6, 6e6),
                 big_batch=16, eval_archs=2)

    def check(self):
        runs.check_fields(self)
        runs.resolve_device(self.device)


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device, warmup: int = 2) -> float:
    """Seconds per call of ``fn``, averaged over ``steps`` calls after ``warmup`` (device-synchronised)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def counted_flops(fn) -> int:
    """FLOPs (2 per multiply-accumulate) that torch counts while ``fn`` runs once, forward and backward."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def batch(n: int, ess: ExpandedSearchSpace, device: torch.device, channels_last: bool):
    x = torch.randn(n, 3, ess.image_size, ess.image_size, device=device)
    y = torch.randint(ess.num_classes, (n,), device=device)
    return (x.contiguous(memory_format=torch.channels_last) if channels_last else x), y


def row(name: str, seconds: float, images: int, flops: int | None = None, **extra) -> dict:
    out = {"name": name, "seconds": seconds, "img_per_s": images / seconds, **extra}
    if flops is not None:
        out["tflops"] = flops / seconds / 1e12
    return out


# ---- The benchmarks ------------------------------------------------------------------------------

def bench_plain(ess, device, amp, sizes, steps) -> list[dict]:
    """The anchor: a standalone network's SGD step (no masks, no slicing), with cudnn.benchmark as measured."""
    rows = []
    torch.backends.cudnn.benchmark = device.type == "cuda"
    net = build(ess.largest_arch(), ess).to(device)
    net = net.to(memory_format=torch.channels_last) if amp else net
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for n in sizes:
        x, y = batch(n, ess, device, amp)
        step = lambda: train_step(net, opt, x, y, 0.01, amp)
        rows.append(row(f"plain largest network, batch {n}", timed(step, steps, device), n, counted_flops(step),
                        macs=arch_flops(ess.largest_arch(), ess), batch=n))
    torch.backends.cudnn.benchmark = False   # the supernet's shapes change every step: autotuning would dominate
    return rows


def bench_masked(ess, device, amp, sizes, steps) -> list[dict]:
    """NSS's Θ step on the full space from uniform Θ: nothing is truncated, the whole supernet runs."""
    rows = []
    settings = SearchSettings(target=flops_range(Options.nss(ess), ess)[1] / 2)
    searcher = Searcher(settings, ess, Options.nss(ess), device=device, amp=amp)
    for n in sizes:
        x, y = batch(n, ess, device, amp)
        step = lambda: searcher.theta_step(x, y, tau=5.0)
        rows.append(row(f"masked Θ step, full space, batch {n}", timed(step, steps, device), n, counted_flops(step),
                        macs=arch_flops(ess.largest_arch(), ess), batch=n))
    return rows


def arch_near(ess: ExpandedSearchSpace, target: float, seed: int = 0) -> Arch:
    """A seeded architecture of the full space within 5% of ``target`` FLOPs."""
    g = torch.Generator().manual_seed(seed)
    return evaluate.sample_archs(ess.full_space(), 1, ess, g, flops_band=(0.95 * target, 1.05 * target))[0]


def bench_sliced(ess, device, amp, batch_size, targets, big_batch, steps) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    supernet = SuperNet(ess).to(device)
    supernet = supernet.to(memory_format=torch.channels_last) if amp else supernet
    opt = torch.optim.SGD(supernet.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    cases = [(t, batch_size) for t in targets] + [(targets[1], big_batch)]   # + the goal's ~2 GF at batch 512
    for target, n in cases:
        arch = arch_near(ess, target)
        x, y = batch(n, ess, device, amp)
        step = lambda: train_step(lambda inp: supernet(inp, arch), opt, x, y, 0.01, amp)
        rows.append(row(f"sliced weight step {format_flops(arch_flops(arch, ess))} {arch}, batch {n}",
                        timed(step, steps, device), n, counted_flops(step), macs=arch_flops(arch, ess), batch=n))
    return rows


def bench_search(ess, device, amp, cfg: BenchConfig) -> list[dict]:
    """Seconds per NSS epoch (warmup and search) with the default config on CIFAR-10-sized synthetic data."""
    data = data_mod.load("synthetic", synthetic_train=64 if cfg.quick else 50_000, synthetic_test=10,
                         image_size=ess.image_size, device=device)
    settings = SearchSettings(target=1.6e9 if not cfg.quick else 6e6, batch_size=cfg.search_batch, epochs=2,
                              warmup_epochs=1)
    searcher = Searcher(settings, ess, Options.nss(ess), device=device, amp=amp)
    loaders = data_mod.search_loaders(data, 0, cfg.search_batch, data_mod.make_generator(device, 1), searcher.amp)
    full_steps = min(len(b) for b in loaders)
    steps = min(cfg.epoch_steps, full_steps) if cfg.epoch_steps else full_steps
    train, val = (First(b, steps) for b in loaders)
    rows = []
    one_epoch = lambda: searcher.fit(train, val, until=searcher.epoch + 1)
    for phase in ("warmup", "search"):
        seconds = timed(one_epoch, 1, device, warmup=0) * full_steps / steps
        rows.append(row(f"NSS {phase} epoch ({full_steps} steps of {cfg.search_batch}"
                        f"{', scaled from ' + str(steps) if steps < full_steps else ''})",
                        seconds, full_steps * cfg.search_batch * (1 if phase == "warmup" else 2)))
    return rows


class First:
    """The first ``n`` batches of ``batches``, with a length."""

    def __init__(self, batches, n: int):
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.n)


def bench_eval(ess, device, amp, cfg: BenchConfig) -> list[dict]:
    """Architectures per minute scored in the candidate space closest to 1.6 GF (2000 calibration, 10k test images)."""
    target = 1.6e9 if not cfg.quick else 6e6
    space = min((ess.space_at(i) for i in range(0, ess.num_spaces, max(1, ess.num_spaces // 4096))),
                key=lambda s: abs(space_flops(s, ess) / target - 1))
    n_train, n_test = (2000, 10_000) if not cfg.quick else (32, 16)
    data = data_mod.load("synthetic", synthetic_train=n_train, synthetic_test=n_test, image_size=ess.image_size,
                         device=device)
    torch.manual_seed(0)
    supernet = SuperNet(ess).to(device)
    supernet = supernet.to(memory_format=torch.channels_last) if amp else supernet
    archs = evaluate.sample_archs(space, cfg.eval_archs + 1, ess, torch.Generator().manual_seed(0))
    score = lambda some: evaluate.score_archs(supernet, some, data, calib_images=n_train, amp=amp, progress=False)
    score(archs[:1])                                                                  # warm-up
    seconds = timed(lambda: score(archs[1:]), 1, device, warmup=0) / cfg.eval_archs
    return [{"name": f"score archs of {space} ({format_flops(space_flops(space, ess))})",
             "seconds": seconds, "archs_per_min": 60 / seconds, "img_per_s": (n_train + n_test) / seconds}]


def bench_scratch(ess, device, amp, cfg: BenchConfig, data: data_mod.ImageData) -> list[dict]:
    """From-scratch training of a ~1.6 GF architecture on an image folder: s/epoch and time to 90% / 93%."""
    arch = arch_near(ess, 1.6e9) if not cfg.quick else Arch((1, 1, 1), (4, 4, 4))
    scratch_cfg = ScratchConfig(dataset="folder", data_dir=cfg.data_dir, recipe="fast", device=str(device), amp=amp,
                                epochs=cfg.scratch_epochs, progress=False)
    result, _ = train_from_scratch(arch, ess, data, scratch_cfg, seed=0)
    reach = lambda acc: next((h["seconds"] for h in result["history"] if 100 - h["test_error"] >= acc), None)
    return [{"name": f"from scratch {format_flops(arch_flops(arch, ess))} {arch}, {cfg.scratch_epochs} epochs",
             "seconds": result["seconds"], "seconds_per_epoch": result["seconds"] / cfg.scratch_epochs,
             "final_accuracy": 100 - result["error"], "seconds_to_90": reach(90.0), "seconds_to_93": reach(93.0)}]


def run(cfg: BenchConfig) -> dict:
    device = runs.resolve_device(cfg.device)
    amp = device.type == "cuda"
    ess = ExpandedSearchSpace() if not cfg.quick else ExpandedSearchSpace.reduced()
    # what could fail at the end fails first: the image folder is read and --out's folder made before any timing
    data = data_mod.load("folder", cfg.data_dir, device=device) if cfg.data_dir else None
    try:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"--out {cfg.out}: cannot make its folder: {e.strerror or e}") from None
    sections = {}
    for name, fn in (("plain", lambda: bench_plain(ess, device, amp, cfg.batch_sizes, cfg.steps)),
                     ("masked", lambda: bench_masked(ess, device, amp, cfg.batch_sizes, cfg.steps)),
                     ("sliced", lambda: bench_sliced(ess, device, amp, cfg.search_batch, cfg.arch_targets,
                                                     cfg.big_batch, cfg.steps)),
                     ("search", lambda: bench_search(ess, device, amp, cfg)),
                     ("eval", lambda: bench_eval(ess, device, amp, cfg))):
        sections[name] = fn()
        print_rows(sections[name])
    if cfg.data_dir:
        sections["scratch"] = bench_scratch(ess, device, amp, cfg, data)
        print_rows(sections["scratch"])
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else (platform.processor() or platform.machine()), "date": datetime.date.today().isoformat(),
              "torch": torch.__version__, "amp": amp, "quick": cfg.quick, "sections": sections}
    write_json(Path(cfg.out), result)
    return result


def print_rows(rows: list[dict]):
    for r in rows:
        parts = [f"{r['name']:<70s}"]
        for key, fmt in (("img_per_s", "{:>10,.0f} img/s"), ("tflops", "{:>8.1f} TFLOP/s"), ("archs_per_min", "{:>8.1f} archs/min"),
                         ("seconds_per_epoch", "{:>8.1f} s/epoch"), ("seconds_to_93", "to 93%: {} s")):
            if r.get(key) is not None:
                parts.append(fmt.format(r[key]))
        if "img_per_s" not in r or "NSS" in r["name"]:
            parts.append(f"{r['seconds']:.3f} s")
        print("  ".join(parts), flush=True)


def main(argv=None) -> int:
    run(runs.parse_config(BenchConfig, argv, description=__doc__.split("\n\n")[0], prog="bench.py"))
    return 0


if __name__ == "__main__":
    runs.cli(main)
