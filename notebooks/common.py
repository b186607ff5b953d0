"""What every notebook starts with: the project's modules on the path and the settings the environment gives.

    from common import settings, REDUCED
    SCALE, DEVICE, DATASET, DATA_DIR, OUT, FIGURES = settings()

The notebooks live one folder below the flat modules; importing this file puts that folder on
``sys.path``. Each notebook then picks its own sizes for the scale (``NSS_SCALE``):

* ``smoke`` (the default): a reduced space and synthetic data on the CPU, in about a minute; what the
  tests run. It checks that the pipeline runs, not the paper's claims.
* ``gpu``: the full Expanded Search Space on CIFAR-10/100 (or an image-folder copy), with shortened
  schedules, fewer targets and fewer sampled architectures, so that each notebook takes at most 10
  minutes of one H100 by the cost model (``costs.py``) that its parameters cell prints.
* ``paper``: the paper's settings wherever one GPU can run them (six targets, 1000 architectures,
  three seeds of [4]'s 200-epoch recipe), however long that takes: hours.

``python notebooks/render.py --estimate --scale gpu`` prints every notebook's cost breakdown.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from space import REDUCED  # noqa: E402  (the reduced space of the smoke scale)

__all__ = ["REDUCED", "SCALES", "Settings", "settings"]
SCALES = ("smoke", "gpu", "paper")


class Settings(NamedTuple):
    scale: str       # NSS_SCALE: "smoke" (reduced space, synthetic data, CPU: the tests) | "gpu" (full space, CIFAR,
                     # ≤ 10 minutes of one H100 by the cost model) | "paper" (the paper's settings, hours)
    device: str      # NSS_DEVICE: auto | cpu | cuda | cuda:N
    dataset: str     # NSS_DATASET: cifar10 | cifar100 | folder (an image-folder copy such as the CIFAR-10 JPEG one)
    data_dir: str    # NSS_DATA_DIR
    out: str         # NSS_OUT: the run folders
    figures: str     # NSS_FIGURES: every figure is saved here as PNG and PDF


def settings() -> Settings:
    """The notebook settings from the NSS_* environment variables, with their defaults."""
    scale = os.environ.get("NSS_SCALE", "smoke")
    if scale not in SCALES:
        raise ValueError(f"NSS_SCALE must be one of {', '.join(SCALES)}, got {scale!r}")
    return Settings(scale=scale, device=os.environ.get("NSS_DEVICE", "auto"),
                    dataset=os.environ.get("NSS_DATASET", "cifar10"), data_dir=os.environ.get("NSS_DATA_DIR", "../data"),
                    out=os.environ.get("NSS_OUT", "runs"), figures=os.environ.get("NSS_FIGURES", "figures"))
