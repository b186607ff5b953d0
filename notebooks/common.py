"""What every notebook starts with: the project's modules on the path and the settings the environment gives.

    from common import settings, by_scale, REDUCED
    SCALE, DEVICE, DATASET, DATA_DIR, OUT, FIGURES = settings()
    TARGETS = by_scale(smoke=[3e6, 6e6], gpu=[6e8, 4e9], paper=[6e8, 1.6e9, 4e9])

The notebooks live one folder below the flat modules; importing this file puts that folder on
``sys.path``. The README's section on the notebooks describes the scales (``NSS_SCALE``).
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

__all__ = ["REDUCED", "SCALES", "Settings", "by_scale", "settings"]
SCALES = ("smoke", "gpu", "paper")


class Settings(NamedTuple):
    scale: str       # NSS_SCALE: one of SCALES
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


def by_scale(**values):
    """The value given for the current NSS_SCALE: ``by_scale(smoke=…, gpu=…, paper=…)``."""
    scale = settings().scale
    missing = [s for s in SCALES if s not in values]
    if missing:
        raise ValueError(f"by_scale needs a value for every scale; missing: {', '.join(missing)}")
    return values[scale]
