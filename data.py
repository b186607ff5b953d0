"""Datasets as device-resident uint8 tensors, the 50/50 search split and on-device augmentation (§4.1).

Every dataset is decoded once into ``ImageData``: uint8 images (N, 3, H, W) and int64 labels,
kept on the run's device. Batches are drawn and augmented there (4-pixel pad and random crop,
horizontal flip, optional cutout, normalisation), with no per-image Python work.

Datasets: ``cifar10`` / ``cifar100`` (torchvision, downloaded into ``data_dir``), ``folder``
(an image-folder tree ``train/<class>/*`` and ``test/<class>/*``, e.g. the CIFAR-10 JPEG copy)
and ``synthetic`` (generated in memory, seeded, learnable; for tests and ``--quick``).

Run ``python data.py`` for a short demo on synthetic data.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

DATASETS = ("cifar10", "cifar100", "folder", "synthetic")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}
# the archive torchvision downloads, and the folder it unpacks to inside the data folder
CIFAR_FILES = {"cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
               "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python")}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataError(Exception):
    """A dataset that cannot be found, downloaded or read; the message says how to fix it."""


@dataclass
class ImageData:
    """A decoded dataset: uint8 images (N, C, H, W) and int64 labels, on one device."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: torch.Tensor           # (C,) per-channel mean of the training images, in [0, 1]
    std: torch.Tensor            # (C,)
    classes: tuple[str, ...] = ()   # the class names, where the dataset has them (image folders)

    def subset(self, n_train: int, n_test: int, seed: int = 0) -> ImageData:
        """A seeded random subset of ``n_train`` training and ``n_test`` test images (for quick looks at real data)."""
        pick = lambda n, m: torch.randperm(m, generator=torch.Generator().manual_seed(seed))[:n].to(self.train_y.device)
        tr, te = pick(n_train, len(self.train_y)), pick(n_test, len(self.test_y))
        return ImageData(self.name, self.train_x[tr], self.train_y[tr], self.test_x[te], self.test_y[te],
                         self.num_classes, self.mean, self.std, self.classes)

    def to(self, device) -> ImageData:
        move = lambda t: t.to(device)
        return ImageData(self.name, move(self.train_x), move(self.train_y), move(self.test_x), move(self.test_y),
                         self.num_classes, move(self.mean), move(self.std), self.classes)


# ---- Loading -------------------------------------------------------------------------------------

def num_classes_of(name: str, data_dir: str | Path = "./data") -> int:
    """The number of classes of a dataset, without loading it (for checking a FLOPs target early)."""
    if name == "folder":
        return len(_class_dirs(Path(data_dir) / "train", data_dir))
    return {"cifar10": 10, "cifar100": 100, "synthetic": 10}[_check_name(name)]


def load(name: str, data_dir: str | Path = "./data", download: bool = True, device="cpu",
         synthetic_train: int = 2000, synthetic_test: int = 500, image_size: int = 32, seed: int = 0) -> ImageData:
    """Load a dataset once into uint8 tensors on ``device`` (raises ``DataError`` with a fix)."""
    name = _check_name(name)
    if name == "synthetic":
        xs, ys = synthetic_images(synthetic_train + synthetic_test, image_size=image_size, seed=seed)
        parts = (xs[:synthetic_train], ys[:synthetic_train], xs[synthetic_train:], ys[synthetic_train:])
        num_classes, classes = 10, ()     # every class, even where a few images do not show them all
    elif name == "folder":
        (tr_x, tr_y, classes), (te_x, te_y, te_classes) = (_read_folder(Path(data_dir) / s, data_dir) for s in ("train", "test"))
        if classes != te_classes:
            raise DataError(f"{data_dir}: train/ and test/ have different class folders")
        if tr_x.shape[1:] != te_x.shape[1:]:
            (th, tw), (eh, ew) = tr_x.shape[-2:], te_x.shape[-2:]
            raise DataError(f"{data_dir}: train/ images are {th}×{tw} px but test/ images {eh}×{ew} px; "
                            f"resize them to one size")
        parts, num_classes, classes = (tr_x, tr_y, te_x, te_y), len(classes), tuple(classes)
    else:
        (parts, num_classes), classes = _read_cifar(name, Path(data_dir), download), ()
    scaled = parts[0].float() / 255
    mean, std = scaled.mean((0, 2, 3)), scaled.std((0, 2, 3))
    return ImageData(name, *parts, num_classes=num_classes, mean=mean, std=std, classes=classes).to(device)


def load_for(cfg, ess, device=None) -> ImageData:
    """A run's dataset (``cfg``: its ``dataset``, ``data_dir``, ``download``, ``synthetic_size``, ``seed`` and, without
    ``device``, ``device``) on its device, checked against the space ``ess``."""
    if device is None:
        device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    data = load(cfg.dataset, cfg.data_dir, cfg.download, device, synthetic_train=cfg.synthetic_size,
                synthetic_test=max(1, cfg.synthetic_size // 4), image_size=ess.image_size, seed=cfg.seed)
    if data.num_classes != ess.num_classes:
        raise DataError(f"the data has {data.num_classes} classes where the space was built for {ess.num_classes}")
    sizes = {tuple(x.shape[-2:]) for x in (data.train_x, data.test_x)}
    if sizes != {(ess.image_size, ess.image_size)}:
        raise DataError(f"the images are {' and '.join(f'{h}×{w}' for h, w in sorted(sizes))} px where the space "
                        f"needs {ess.image_size}×{ess.image_size}: resize them")
    return data


def fingerprint(data: ImageData) -> dict:
    """A small fingerprint of a dataset, kept in checkpoints: classes, image counts (per class), image shape and a
    digest of every image and label (the same counts of other images are other data)."""
    content = hashlib.sha256()
    for t in (data.train_x, data.train_y, data.test_x, data.test_y):
        content.update(t.detach().cpu().contiguous().numpy())
    return {"classes": data.num_classes, "class names": list(data.classes), "training images": len(data.train_y),
            "test images": len(data.test_y), "image shape": list(data.train_x.shape[1:]),
            "images per class": torch.bincount(data.train_y.cpu(), minlength=data.num_classes).tolist(),
            "content": content.hexdigest()[:16]}


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


def _read_cifar(name: str, root: Path, download: bool):
    import torchvision

    cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    corrupt = _corrupt_cifar_files(cls, root)       # files there that fail their checksum: not a missing dataset
    made = [p for p in (root, *root.parents) if not p.exists()]     # the folders a failed download would leave
    try:
        sets = [cls(str(root), train=train, download=download) for train in (True, False)]
    except Exception as e:   # torchvision raises RuntimeError when missing, URLError & co. offline
        if corrupt:
            one = len(corrupt) == 1
            off = "" if download else " (and downloading is off: --no-download)"
            raise DataError(f"{name} in {root.resolve()} is corrupt: {', '.join(corrupt)} fail{'s' * one} "
                            f"{'its' if one else 'their'} checksum{off}; delete {root.resolve() / cls.base_folder} "
                            f"and download it again (--download), or point --data-dir at a good copy") from None
        if made:             # what a failed download left (an empty ./data), then the folders made above it
            shutil.rmtree(root, ignore_errors=True)
            for p in made[1:]:
                with contextlib.suppress(OSError):      # rmdir removes only empty folders
                    p.rmdir()
        url, folder = CIFAR_FILES[name]
        why = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}" if download else "--no-download"
        raise DataError(f"{name} is not in {root.resolve()} and could not be downloaded ({why}): download {url} and "
                        f"unpack it into --data-dir, so that {root.resolve() / folder}/ holds its files; or point "
                        f"--data-dir at a copy; or use --dataset folder with an image folder") from None
    x = [torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous() for s in sets]     # (N, 3, H, W) uint8
    y = [torch.tensor(s.targets, dtype=torch.long) for s in sets]
    return (x[0], y[0], x[1], y[1]), len(sets[0].classes)


def _corrupt_cifar_files(cls, root: Path) -> list[str]:
    """The files of a torchvision CIFAR dataset (its archive, batches and meta file) that are in ``root`` but fail
    their md5 checksum."""
    from torchvision.datasets.utils import check_integrity

    folder = root / cls.base_folder
    files = [(folder / f, md5) for f, md5 in (*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"]))]
    files.append((root / cls.filename, cls.tgz_md5))
    return [p.name for p, md5 in files if p.is_file() and not check_integrity(str(p), md5)]


def class_names(data: ImageData, data_dir: str | Path = "./data") -> list[str]:
    """The names of a dataset's classes in label order: an image folder's, CIFAR-10's, CIFAR-100's (from its meta
    file in ``data_dir``), else the label numbers."""
    if data.classes:
        return list(data.classes)
    if data.name == "cifar10":
        return list(CIFAR10_CLASSES)
    if data.name == "cifar100":
        import pickle
        try:
            with open(Path(data_dir) / CIFAR_FILES["cifar100"][1] / "meta", "rb") as f:
                return list(pickle.load(f, encoding="latin1")["fine_label_names"])
        except (OSError, KeyError, pickle.UnpicklingError, EOFError):
            pass
    return [str(i) for i in range(data.num_classes)]


def _class_dirs(split_dir: Path, data_dir) -> list[Path]:
    if not split_dir.is_dir():
        raise DataError(f"no image folder at {split_dir.resolve()}: image-folder data needs "
                        f"{Path(data_dir)}/train/<class>/* and {Path(data_dir)}/test/<class>/*; "
                        f"unpack a copy there or point --data-dir at one")
    try:
        dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
    except OSError as e:
        raise DataError(f"cannot read {split_dir.resolve()}: {e.strerror}") from None
    if len(dirs) < 2:
        raise DataError(f"{split_dir.resolve()} has {len(dirs) or 'no'} class folder{'s' if not dirs else ''}"
                        f"{' (' + dirs[0].name + ')' if dirs else ''}: a classifier needs at least two classes")
    return dirs


def _rgb8(im):
    """An image as uint8 RGB (H, W, 3); 16-bit greyscale ('I;16', 'I') is scaled to 8 bits, not clipped to white."""
    import numpy as np

    if im.mode.startswith("I"):
        grey = (np.asarray(im, dtype=np.float64) / 257).round().clip(0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def _read_folder(split_dir: Path, data_dir):
    """Decode every image of ``split_dir/<class>/*`` (classes sorted, as torchvision's ImageFolder)."""
    import numpy as np
    from PIL import Image    # Pillow comes with torchvision

    dirs = _class_dirs(split_dir, data_dir)
    images, labels = [], []
    for label, d in enumerate(dirs):
        try:
            files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as e:
            raise DataError(f"cannot read the class folder {d.resolve()}: {e.strerror}") from None
        if not files:
            raise DataError(f"the class folder {d.resolve()} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for f in files:
            try:      # the whole decode inside: PIL's DecompressionBombError is no OSError, zlib's error neither
                with Image.open(f) as im:
                    images.append(_rgb8(im))
            except MemoryError:
                raise
            except Exception as e:
                raise DataError(f"cannot decode {f} ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})") from None
        labels += [label] * len(files)
    if len({im.shape for im in images}) > 1:
        raise DataError(f"images in {split_dir.resolve()} have different sizes; resize them to one size first")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()     # (N, 3, H, W) uint8
    return x, torch.tensor(labels, dtype=torch.long), [d.name for d in dirs]


# ---- Synthetic data: learnable, seeded, with structure at two scales -----------------------------

def synthetic_images(n: int, num_classes: int = 10, image_size: int = 32, seed: int = 0,
                     noise: float = 0.35) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` seeded uint8 images whose class is a coarse shape crossed with a fine texture.

    Half the classes share each coarse colour template; a faint oriented grating under noise
    tells them apart, so a network must resolve fine detail (more capacity) to separate all of
    them. Random shifts make the task one for convolutions, not for pixel lookup.
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(math.ceil(num_classes / 2), 3, 4, 4, generator=g)       # one shape per two classes
    templates = F.interpolate(coarse, size=(image_size, image_size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(image_size), torch.arange(image_size), indexing="ij")
    angles = torch.tensor([0.0, math.pi / 2])
    gratings = torch.stack([torch.sin(2.2 * (xx * torch.cos(a) + yy * torch.sin(a))) for a in angles])
    labels = torch.randint(num_classes, (n,), generator=g)
    images = templates[labels // 2] + 0.18 * gratings[labels % 2][:, None]
    images = images * (0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)) + noise * torch.randn(images.shape, generator=g)
    shifts = torch.randint(-3, 4, (n, 2), generator=g)
    images = torch.stack([im.roll(tuple(s), dims=(1, 2)) for im, s in zip(images, shifts.tolist())])
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


# ---- Splits, batches and on-device augmentation --------------------------------------------------

def search_split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The seeded 50/50 split of the training set: (train half for weights, val half for Θ) (§4.1)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n // 2].sort().values, perm[n // 2:].sort().values


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) → float, standardised per channel."""
    return (x.float() / 255 - mean[:, None, None]) / std[:, None, None]


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Batched pad-and-crop and horizontal flip of uint8 images (B, C, H, W), on their device."""
    B, C, H, W = x.shape
    dev = x.device
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))                                   # (B, C, H+2p, W+2p)
        dy, dx = torch.randint(0, 2 * pad + 1, (2, B, 1), generator=generator, device=dev)
        rows = (dy + torch.arange(H, device=dev))[:, None, :, None]               # (B, 1, H, 1)
        cols = (dx + torch.arange(W, device=dev))[:, None, None, :]               # (B, 1, 1, W)
        x = padded[torch.arange(B, device=dev)[:, None, None, None], torch.arange(C, device=dev)[None, :, None, None], rows, cols]
    if flip:
        flipped = torch.rand(B, generator=generator, device=dev) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    return x


def cutout_size(num_classes: int) -> int:
    """Cutout's hole side as in [4]: 16 for 10 classes (CIFAR-10), 8 for 100 (CIFAR-100)."""
    return 8 if num_classes >= 100 else 16


def cutout(x: torch.Tensor, size: int, generator: torch.Generator | None = None,
           centres: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Cutout [4] on normalised images (B, C, H, W): a size×size square, centred on a uniform pixel and clipped at
    the borders, is set to 0, the mean colour. Rows cy − size//2 … cy − size//2 + size − 1 (and so for columns)."""
    B, _, H, W = x.shape
    dev = x.device
    cy, cx = centres if centres is not None else (torch.randint(0, H, (B, 1), generator=generator, device=dev),
                                                   torch.randint(0, W, (B, 1), generator=generator, device=dev))
    rows, cols = torch.arange(H, device=dev) - (cy - size // 2), torch.arange(W, device=dev) - (cx - size // 2)
    hole = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]   # (B, H, W)
    return x.masked_fill(hole[:, None], 0.0)


@dataclass
class Loader:
    """Shuffled mini-batches of a subset of device-resident images, augmented and normalised on the device.

    ``generator`` draws the permutation and the augmentation; it lives on the data's device and
    its state is all a checkpoint needs to replay the same batches.
    """

    images: torch.Tensor          # uint8 (N, C, H, W)
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    batch_size: int
    generator: torch.Generator
    train: bool = True            # shuffle and augment
    cutout: int = 0               # side of cutout's hole, applied after normalisation (0: off)
    channels_last: bool = False
    drop_last: bool = True

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator, device=self.images.device) if self.train else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            idx = slice(start, start + self.batch_size) if order is None else order[start:start + self.batch_size]
            x, y = self.images[idx], self.labels[idx]
            if self.train:
                x = augment(x, self.generator)
            x = normalize(x, self.mean, self.std)
            if self.train and self.cutout:
                x = cutout(x, self.cutout, self.generator)
            yield (x.contiguous(memory_format=torch.channels_last) if self.channels_last else x), y


def search_loaders(data: ImageData, seed: int, batch_size: int, generator: torch.Generator,
                   channels_last: bool = False) -> tuple[Loader, Loader]:
    """Loaders over the seeded 50/50 split of the training images: the train half for the weights, the val half
    for Θ (§4.1); both draw from ``generator``. Too few images for one batch in each half is a DataError."""
    halves = [h.to(data.train_x.device) for h in search_split(len(data.train_y), seed)]
    if min(len(h) for h in halves) == 0:
        raise DataError(f"too few images: {len(data.train_y)} training images cannot be split into two halves")
    return tuple(Loader(data.train_x[i], data.train_y[i], data.mean, data.std, min(batch_size, len(i)), generator,
                        channels_last=channels_last) for i in halves)


class Mapped:
    """``fn`` applied to every batch of ``batches``, which keeps its ``len`` (a process's share of each batch, say)."""

    def __init__(self, batches, fn):
        self.batches, self.fn = batches, fn

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        return (self.fn(b) for b in self.batches)


def make_generator(device, seed: int) -> torch.Generator:
    """A seeded generator on ``device`` (augmentation and shuffling run where the data lives)."""
    return torch.Generator(device=device).manual_seed(seed)


if __name__ == "__main__":
    data = load("synthetic", synthetic_train=512, synthetic_test=128)
    print(f"{data.name}: train {tuple(data.train_x.shape)} test {tuple(data.test_x.shape)}, "
          f"{data.num_classes} classes, mean {data.mean.tolist()}")
    tr, va = search_split(len(data.train_y), seed=0)
    print(f"search split: {len(tr)} images for weights, {len(va)} for Θ")
    loader = Loader(data.train_x[tr], data.train_y[tr], data.mean, data.std, 64, make_generator("cpu", 0), cutout=8)
    x, y = next(iter(loader))
    print(f"{len(loader)} batches of {tuple(x.shape)} {x.dtype}, labels {y[:8].tolist()}")
