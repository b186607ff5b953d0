"""What every notebook starts with: the project's modules on the path and the settings the environment gives.

    from common import settings, by_scale, REDUCED
    SCALE, DEVICE, DATASET, DATA_DIR, OUT, FIGURES = settings()
    TARGETS = by_scale(smoke=[3e6, 6e6], cpu=[3e6, 8e6], gpu=[6e8, 4e9], paper=[6e8, 1.6e9, 4e9])

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

__all__ = ["REDUCED", "SCALES", "Settings", "by_scale", "data_findings", "data_name", "data_tag", "settings"]
SCALES = ("smoke", "cpu", "gpu", "paper")


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


def data_tag(dataset: str, data_dir: str) -> str:
    """A short name of the data for file names and titles: the dataset, or an image folder's own name."""
    return Path(data_dir).resolve().name if dataset == "folder" else dataset


def data_name(dataset: str, data_dir: str) -> str:
    """The data's name in findings and titles: NSS_DATA_NAME (say "CIFAR-10 (JPEG copy)"), else ``data_tag``."""
    return os.environ.get("NSS_DATA_NAME") or data_tag(dataset, data_dir)


def data_findings(images, name: str) -> dict:
    """What a notebook's FINDINGS say about its data: the name and the image and class counts."""
    return {"name": name, "training_images": len(images.train_y), "test_images": len(images.test_y),
            "classes": images.num_classes}


def by_scale(**values):
    """The value given for the current NSS_SCALE: ``by_scale(smoke=…, cpu=…, gpu=…, paper=…)``."""
    scale = settings().scale
    missing = [s for s in SCALES if s not in values]
    if missing:
        raise ValueError(f"by_scale needs a value for every scale; missing: {', '.join(missing)}")
    return values[scale]
