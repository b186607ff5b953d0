"""data.py: loading, the search split and on-device augmentation against simple references."""
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

import data


def test_synthetic_is_seeded_and_class_dependent():
    x1, y1 = data.synthetic_images(200, seed=3)
    x2, y2 = data.synthetic_images(200, seed=3)
    x3, _ = data.synthetic_images(200, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.dtype == torch.uint8 and x1.shape == (200, 3, 32, 32) and set(y1.tolist()) == set(range(10))
    # class means differ far more than the noise of a mean over ~20 images
    means = torch.stack([x1[y1 == c].float().mean(0) for c in range(10)])
    assert (means[::2] - means[1::2]).abs().mean() > 2     # classes sharing a template still differ


def test_nearest_class_mean_beats_chance_but_not_perfectly():
    """Learnable, yet not trivial: a linear template matcher is well above 10% and below 100%."""
    x, y = data.synthetic_images(3000, seed=0)
    xf = x.float().flatten(1)
    means = torch.stack([xf[:2000][y[:2000] == c].mean(0) for c in range(10)])
    acc = (torch.cdist(xf[2000:], means).argmin(1) == y[2000:]).float().mean()
    assert 0.2 < acc < 0.95


def test_search_split_is_a_seeded_half_partition():
    a, b = data.search_split(101, seed=0)
    assert len(a) == 50 and len(b) == 51
    assert sorted(torch.cat([a, b]).tolist()) == list(range(101))
    a2, _ = data.search_split(101, seed=0)
    a3, _ = data.search_split(101, seed=1)
    assert torch.equal(a, a2) and not torch.equal(a, a3)


def test_augment_is_a_padded_crop_and_flip():
    x = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = data.augment(x, torch.Generator().manual_seed(0), pad=2, flip=True)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):   # each output is some 8×8 window of the padded image, maybe mirrored
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    # the identity crop without flip happens, and not always
    same = sum(torch.equal(out[i], x[i]) for i in range(64))
    assert 0 <= same < 64
    again = data.augment(x, torch.Generator().manual_seed(0), pad=2, flip=True)
    assert torch.equal(out, again)


def test_cutout_zeroes_one_square():
    x = torch.full((16, 3, 16, 16), 1.5)
    out = data.cutout(x, 6, torch.Generator().manual_seed(0))
    for img in out:
        zero = (img[0] == 0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 1 <= zero.sum() <= 36
        assert zero.sum() == len(rows) * len(cols)        # a (clipped) square
        assert torch.equal(img[:, zero], torch.zeros_like(img[:, zero]))


def test_cutout_is_a_16_by_16_hole_of_the_mean_colour_as_in_devries_and_taylor():
    """[4]: an interior centre zeroes exactly 16×16 = 256 pixels per channel; at a corner it is clipped
    (the square spans cy − 8 … cy + 7, so 8 rows remain at the top edge and 9 at the bottom, as in [4]'s code)."""
    x = torch.full((3, 3, 32, 32), 2.0)
    centres = (torch.tensor([[16], [0], [31]]), torch.tensor([[10], [0], [31]]))
    out = data.cutout(x, 16, centres=centres)
    zeros = (out == 0).all(1)                                   # (B, H, W): every channel zeroed
    assert zeros.sum((1, 2)).tolist() == [256, 8 * 8, 9 * 9]    # rows 0…7 at the top, 23…31 at the bottom
    assert zeros[0, 8:24, 2:18].all() and zeros[0].sum() == 256  # rows cy−8 … cy+7, columns cx−8 … cx+7
    assert (out != 0).sum() == 3 * (3 * 32 * 32 - 256 - 64 - 81)  # nothing else is touched
    # through the loader: after normalisation the hole is 0, the mean colour, not black (which is < 0)
    d = data.load("synthetic", synthetic_train=64, synthetic_test=8)
    loader = data.Loader(d.train_x, d.train_y, d.mean, d.std, 64, torch.Generator().manual_seed(1), cutout=16)
    batch, _ = next(iter(loader))
    holes = (batch == 0).all(1).sum((1, 2))
    assert holes.max() == 256 and holes.min() >= 64 and (batch.amin((1, 2, 3)) < 0).all()
    assert data.cutout_size(10) == 16 and data.cutout_size(100) == 8


def test_loader_batches_and_normalises():
    d = data.load("synthetic", synthetic_train=100, synthetic_test=20)
    loader = data.Loader(d.train_x, d.train_y, d.mean, d.std, 32, torch.Generator().manual_seed(0), train=False,
                         drop_last=False)
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [32, 32, 32, 4]
    x = torch.cat([b[0] for b in batches])
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std((0, 2, 3)), torch.ones(3), atol=1e-3)
    shuffled = data.Loader(d.train_x, d.train_y, d.mean, d.std, 32, torch.Generator().manual_seed(0))
    assert len(shuffled) == 3 and sorted(torch.cat([y for _, y in shuffled]).tolist()) != d.train_y[:96].tolist()


def make_folder(root: Path, classes=("cat", "ant", "dog"), per_class=3, size=8):
    for split in ("train", "test"):
        for k, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), (40 * k + i,) * 3).save(root / split / name / f"{i}.png")


def test_folder_dataset(tmp_path):
    make_folder(tmp_path)
    d = data.load("folder", tmp_path)
    assert d.num_classes == 3 == data.num_classes_of("folder", tmp_path)
    assert d.train_x.shape == (9, 3, 8, 8) and d.test_x.shape == (9, 3, 8, 8)
    # labels follow sorted class names, as torchvision's ImageFolder: ant=0, cat=1, dog=2
    assert d.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert d.train_x[0, 0, 0, 0] == 40 and d.train_x[3, 0, 0, 0] == 0


@pytest.mark.parametrize("name, kwargs, message", [
    ("cifar10", dict(download=False), "could not be downloaded"),
    ("folder", {}, "no image folder"),
    ("imagenet", {}, "unknown dataset"),
])
def test_missing_data_gives_a_clear_error(tmp_path, name, kwargs, message):
    with pytest.raises(data.DataError, match=message) as e:
        data.load(name, tmp_path / "nowhere", **kwargs)
    if name != "imagenet":
        assert "nowhere" in str(e.value) and "--data-dir" in str(e.value)


JPEG_COPY = Path(os.environ.get("NSS_CIFAR_JPEG", "data/cifar10-jpeg"))


@pytest.mark.slow
@pytest.mark.skipif(not (JPEG_COPY / "train").is_dir(), reason="the CIFAR-10 JPEG copy is not unpacked here")
def test_cifar10_jpeg_copy_loads_like_cifar10():
    d = data.load("folder", JPEG_COPY)
    assert d.train_x.shape == (50000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert d.num_classes == 10 and torch.bincount(d.train_y).tolist() == [5000] * 10


# ---- image folders are checked whole ------------------------------------------------------------

def test_a_test_split_of_another_image_size_is_refused(tmp_path):
    make_folder(tmp_path)
    for f in (tmp_path / "test").rglob("*.png"):
        Image.new("RGB", (10, 10)).save(f)
    with pytest.raises(data.DataError, match="train/ images are 8×8 px but test/ images 10×10 px"):
        data.load("folder", tmp_path)


def test_one_class_or_an_empty_class_folder_is_refused(tmp_path):
    make_folder(tmp_path / "one", classes=("cat",))
    for call in (data.load, data.num_classes_of):
        with pytest.raises(data.DataError, match=r"has 1 class folder \(cat\): a classifier needs at least two classes"):
            call("folder", tmp_path / "one")
    make_folder(tmp_path / "empty")
    for f in (tmp_path / "empty" / "test" / "dog").iterdir():
        f.unlink()
    with pytest.raises(data.DataError, match="the class folder .*dog has no images"):
        data.load("folder", tmp_path / "empty")


def test_a_16_bit_png_is_scaled_to_8_bits_not_white(tmp_path):
    import numpy as np
    make_folder(tmp_path)
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(tmp_path / "train" / "ant" / "0.png")   # mid grey
    d = data.load("folder", tmp_path)
    assert d.train_x[0].unique().tolist() == [128]
