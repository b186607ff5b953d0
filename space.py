"""The Expanded Search Space, its architectures and its network spaces (paper §3.2, §4.1).

A network in the Expanded Search Space is a stem, N stages of residual basic blocks and a
head. Stage i has depth d_i (number of blocks) and width w_i (channels), with
d_i ∈ {1..d_max} and w_i ∈ {1..w_max}.

* ``Arch``  : one architecture a = (d_1..d_N, w_1..w_N).
* ``Space`` : one network space 𝒜 = an inclusive (lo, hi) range of depths and of widths per
  stage. Its architectures are every combination inside the ranges.
* ``Options``: the per-stage choices that Θ = (α, β) ranks. For NSS (§3.3) the options are the
  ranges tiling {1..d_max} and {1..w_max}; for FBNetV2-style NAS (§4.3) they are every single
  depth and width of a given space.

The candidate spaces of NSS tile the depths into ranges of ``d_step`` and the widths into
ranges of ``w_step``: with the paper's settings (16/4 · 512/32)^3 = 2^18 spaces.

Run ``python space.py`` for a short demo.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from itertools import accumulate
from pathlib import Path
from typing import Iterator, Sequence

import torch

Range = tuple[int, int]

# The reduced space of the tests, the --quick demos and the smoke-scale notebooks: ≤ 4 blocks of
# ≤ 16 channels per stage, ranges of 2 depths and 4 widths, (2·4)^3 = 512 candidate spaces.
REDUCED = dict(d_max=4, w_max=16, d_step=2, w_step=4)

# The §4.5 orderings, as the order in which stage values must be non-decreasing.
ORDERINGS: dict[str, tuple[int, ...]] = {
    "regnet": (0, 1, 2),  # d1 ≤ d2 ≤ d3 and w1 ≤ w2 ≤ w3, the design principles of RegNet [23]
    "elite": (0, 2, 1),   # d1 ≤ d3 ≤ d2 and w1 ≤ w3 ≤ w2, the trend seen in Elite Spaces
}
ORDERING_RULES = {"regnet": "d1 ≤ d2 ≤ d3 and w1 ≤ w2 ≤ w3", "elite": "d1 ≤ d3 ≤ d2 and w1 ≤ w3 ≤ w2"}
MAX_ORDERED_DRAWS = 20_000_000       # draws before an ordering that (almost) no architecture obeys is given up


# ---- The space's configuration -------------------------------------------------------------------

@dataclass(frozen=True)
class ExpandedSearchSpace:
    """Every parameter of the Expanded Search Space (§3.2) with the paper's defaults (§4.1).

    The stem width, the strides and the image size are choices of ours (README, "Choices the
    paper leaves open"): the paper defers them to its unavailable supplementary material.
    """

    num_stages: int = 3
    d_max: int = 16
    w_max: int = 512
    d_step: int = 4          # depths per candidate range: {1..4}, {5..8}, ...
    w_step: int = 32         # widths per candidate range: {1..32}, {33..64}, ...
    stem_width: int = 16     # (choice) pycls ResStemCifar: 3×3 conv, 3 → 16 channels
    strides: tuple[int, ...] = (1, 2, 2)
    num_classes: int = 10
    image_size: int = 32
    in_channels: int = 3

    def __post_init__(self):
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        for name in (f.name for f in fields(self) if f.name != "strides"):   # every other field is a positive int
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ExpandedSearchSpace.{name} must be a positive integer, got {value!r}")
        if self.d_max % self.d_step or self.w_max % self.w_step:
            raise ValueError(f"d_step={self.d_step} must divide d_max={self.d_max} and "
                             f"w_step={self.w_step} must divide w_max={self.w_max}")
        if len(self.strides) != self.num_stages or min(self.strides) < 1:
            raise ValueError(f"need {self.num_stages} positive strides, got {self.strides}")

    @classmethod
    def reduced(cls, **overrides) -> ExpandedSearchSpace:
        """The reduced space ``REDUCED`` (4 blocks, 16 channels, 512 candidate spaces) for tests and demos."""
        return cls(**{**REDUCED, **overrides})

    # ---- geometry -----------------------------------------------------------------------
    @property
    def stage_sizes(self) -> tuple[int, ...]:
        """Side length of the feature map of each stage (3×3 convs with padding 1)."""
        return tuple(accumulate(self.strides, lambda h, s: (h - 1) // s + 1, initial=self.image_size))[1:]

    @property
    def pixels(self) -> tuple[int, ...]:
        """A_i: the number of pixels of each stage's feature map (1024, 256, 64 by default)."""
        return tuple(h * h for h in self.stage_sizes)

    # ---- candidate spaces -----------------------------------------------------------------
    @property
    def depth_ranges(self) -> tuple[Range, ...]:
        """The contiguous depth ranges that tile {1..d_max}, each of ``d_step`` values."""
        return tuple((lo, lo + self.d_step - 1) for lo in range(1, self.d_max + 1, self.d_step))

    @property
    def width_ranges(self) -> tuple[Range, ...]:
        """The contiguous width ranges that tile {1..w_max}, each of ``w_step`` values."""
        return tuple((lo, lo + self.w_step - 1) for lo in range(1, self.w_max + 1, self.w_step))

    @property
    def num_spaces(self) -> int:
        """Number of candidate spaces: (d_max/d_step · w_max/w_step)^N (2^18 by default)."""
        return (len(self.depth_ranges) * len(self.width_ranges)) ** self.num_stages

    def space_at(self, index: int) -> Space:
        """The candidate space with this index, in 0 .. num_spaces - 1 (mixed radix, stage 1 first)."""
        if not 0 <= index < self.num_spaces:
            raise ValueError(f"space index {index} is outside 0..{self.num_spaces - 1}")
        nd, nw, n = len(self.depth_ranges), len(self.width_ranges), self.num_stages
        codes = [index // (nd * nw) ** (n - 1 - i) % (nd * nw) for i in range(n)]   # stage i's code: d_idx·nw + w_idx
        return Options.nss(self).space([c // nw for c in codes], [c % nw for c in codes])

    def range_indices(self, space: Space) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-stage indices (into depth_ranges, width_ranges) of a candidate space: Θ's coordinates."""
        try:
            d = tuple(self.depth_ranges.index(r) for r in space.depths)
            w = tuple(self.width_ranges.index(r) for r in space.widths)
        except ValueError:
            raise ValueError(f"{space} is not one of the candidate spaces of {self}") from None
        if len(d) != self.num_stages:
            raise ValueError(f"{space} has {len(d)} stages, expected {self.num_stages}")
        return d, w

    def index_of(self, space: Space) -> int:
        """Inverse of ``space_at``."""
        d, w = self.range_indices(space)
        index = 0
        for di, wi in zip(d, w):
            index = (index * len(self.depth_ranges) + di) * len(self.width_ranges) + wi
        return index

    def candidate_spaces(self) -> Iterator[Space]:
        """Every candidate space, in index order."""
        return (self.space_at(i) for i in range(self.num_spaces))

    def full_space(self) -> Space:
        """The whole Expanded Search Space as one ``Space``."""
        return Space(depths=((1, self.d_max),) * self.num_stages, widths=((1, self.w_max),) * self.num_stages)

    def smallest_arch(self) -> Arch:
        return Arch(depths=(1,) * self.num_stages, widths=(1,) * self.num_stages)

    def largest_arch(self) -> Arch:
        """The supernet's shape: d_max blocks of w_max channels in every stage."""
        return Arch(depths=(self.d_max,) * self.num_stages, widths=(self.w_max,) * self.num_stages)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExpandedSearchSpace:
        return cls(**d)


# ---- Architectures and spaces --------------------------------------------------------------------

def _ints(values, what: str) -> tuple[int, ...]:
    try:
        out = tuple(values)
    except TypeError:
        raise ValueError(f"{what} must be a list of integers, got {values!r}") from None
    if not out or not all(isinstance(v, int) and not isinstance(v, bool) for v in out):
        raise ValueError(f"{what} must be a non-empty list of integers, got {values!r}")
    return out


def _ranges(values, what: str) -> tuple[Range, ...]:
    try:
        out = tuple(tuple(r) for r in values)
    except TypeError:
        raise ValueError(f"{what} must be a list of [lo, hi] pairs, got {values!r}") from None
    if not out or not all(len(r) == 2 for r in out):
        raise ValueError(f"{what} must be a non-empty list of [lo, hi] pairs, got {values!r}")
    for r in out:
        _ints(r, what)
        if r[0] > r[1]:
            raise ValueError(f"{what} has an empty range {list(r)}: lo > hi")
    return out


def _check_bounds(values: Sequence[int], upper: int, what: str, ess: ExpandedSearchSpace):
    if len(values) != ess.num_stages:
        raise ValueError(f"{what} has {len(values)} stages, the space has {ess.num_stages}")
    for v in values:
        if not 1 <= v <= upper:
            raise ValueError(f"{what} value {v} is outside 1..{upper}")


class FileError(ValueError):
    """A space or architecture file that cannot be read or holds none; the message is one line."""


def read_json(path, what: str) -> dict:
    """The JSON object in the file ``path``; anything else (missing, unreadable, not UTF-8, not a JSON object) is a
    one-line FileError naming ``what`` ("space", say)."""
    if Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir():     # a FIFO would block
        raise FileError(f"cannot read the {what} file {path}: it is not a regular file")
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise FileError(f"cannot read the {what} file {path}: {e.strerror or e}") from None
    except ValueError:
        raise FileError(f"cannot read the {what} file {path}: it is not UTF-8 text") from None
    try:
        return _load_json(text, what)
    except ValueError as e:
        raise FileError(f"{e} in {path}") from None


def _load_json(text_or_dict, what: str) -> dict:
    if isinstance(text_or_dict, dict):
        return text_or_dict
    try:
        d = json.loads(text_or_dict)
    except json.JSONDecodeError as e:
        raise ValueError(f"malformed {what} JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"malformed {what} JSON: expected an object, got {type(d).__name__}")
    return d


@dataclass(frozen=True)
class Arch:
    """One architecture a: depth d_i and width w_i of every stage i (§3.2)."""

    depths: tuple[int, ...]
    widths: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "depths", _ints(self.depths, "Arch.depths"))
        object.__setattr__(self, "widths", _ints(self.widths, "Arch.widths"))
        if len(self.depths) != len(self.widths):
            raise ValueError(f"Arch has {len(self.depths)} depths but {len(self.widths)} widths")

    def validate(self, ess: ExpandedSearchSpace) -> Arch:
        """Raise ValueError unless d_i ≤ d_max and w_i ≤ w_max for every stage."""
        _check_bounds(self.depths, ess.d_max, "Arch.depths", ess)
        _check_bounds(self.widths, ess.w_max, "Arch.widths", ess)
        return self

    def satisfies(self, ordering: str | None) -> bool:
        """Whether depths and widths are non-decreasing in the stage order ``ORDERINGS[ordering]`` (§4.5)."""
        values = torch.tensor([list(self.depths), list(self.widths)])
        return bool(_ordered(values, ordering).all())

    def to_dict(self) -> dict:
        return {"depths": list(self.depths), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, d: dict) -> Arch:
        d = _load_json(d, "architecture")
        if set(d) != {"depths", "widths"}:
            raise ValueError(f"an architecture needs exactly the keys 'depths' and 'widths', got {sorted(d)}")
        return cls(depths=d["depths"], widths=d["widths"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    from_json = from_dict

    @classmethod
    def read(cls, spec: str, ess: ExpandedSearchSpace) -> Arch:
        """An architecture of ``ess`` from inline JSON, or from a JSON file of one or of a result holding one under
        "arch" (a nas.json); a FileError otherwise."""
        inline = spec.lstrip().startswith("{")
        d = spec if inline else read_json(spec, "architecture")
        try:
            d = _load_json(d, "architecture")
            return cls.from_dict(d["arch"] if isinstance(d.get("arch"), dict) else d).validate(ess)
        except ValueError as e:
            where = repr(spec) if inline else f"in {spec}"
            raise FileError(f"malformed architecture JSON {where}: {e}") from None


@dataclass(frozen=True)
class Space:
    """A network space 𝒜: an inclusive (lo, hi) range of depths and of widths per stage (§3.3)."""

    depths: tuple[Range, ...]
    widths: tuple[Range, ...]

    def __post_init__(self):
        object.__setattr__(self, "depths", _ranges(self.depths, "Space.depths"))
        object.__setattr__(self, "widths", _ranges(self.widths, "Space.widths"))
        if len(self.depths) != len(self.widths):
            raise ValueError(f"Space has {len(self.depths)} depth ranges but {len(self.widths)} width ranges")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def size(self) -> int:
        """Number of architectures in the space, Π_i |d_i^𝒜|·|w_i^𝒜|."""
        return math.prod((d[1] - d[0] + 1) * (w[1] - w[0] + 1) for d, w in zip(self.depths, self.widths))

    def as_arch(self) -> Arch:
        """The single architecture of a space whose every range is one value."""
        if self.size != 1:
            raise ValueError(f"{self} holds {self.size} architectures, not one")
        return Arch(tuple(lo for lo, _ in self.depths), tuple(lo for lo, _ in self.widths))

    def ends(self) -> tuple[Arch, Arch]:
        """The smallest and the largest architecture of 𝒜: every stage at the low, then the high end of its ranges."""
        return tuple(Arch(tuple(r[k] for r in self.depths), tuple(r[k] for r in self.widths)) for k in (0, 1))

    def validate(self, ess: ExpandedSearchSpace) -> Space:
        """Raise ValueError unless every range lies inside {1..d_max} and {1..w_max}."""
        for ranges, upper, name in ((self.depths, ess.d_max, "depths"), (self.widths, ess.w_max, "widths")):
            for bounds in zip(*ranges):          # every lo, then every hi
                _check_bounds(bounds, upper, f"Space.{name}", ess)
        return self

    def contains(self, arch: Arch) -> bool:
        """a ∈ 𝒜: every d_i and w_i lies in the stage's ranges."""
        values, ranges = arch.depths + arch.widths, self.depths + self.widths
        return len(arch.depths) == self.num_stages and all(lo <= v <= hi for v, (lo, hi) in zip(values, ranges))

    def sample(self, generator: torch.Generator, n: int | None = None,
               ordering: str | None = None) -> Arch | list[Arch]:
        """a ~ U(𝒜) (the uniform P_θ of Eq. 3); ``n`` of them as a list, optionally under an §4.5 ordering.

        An ordering is enforced by rejection, so the result is uniform over the constrained set.
        """
        count = 1 if n is None else n
        depths, widths = self.sample_tensors(generator, count, ordering)
        archs = [Arch(tuple(d), tuple(w)) for d, w in zip(depths.tolist(), widths.tolist())]
        return archs[0] if n is None else archs

    def sample_tensors(self, generator: torch.Generator, n: int,
                       ordering: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` uniform architectures as (n, N) depth and width tensors, by batched rejection: an ordering that no
        architecture of the space obeys is refused before any draw, and one that almost none obeys after
        ``MAX_ORDERED_DRAWS`` draws (a ValueError naming it)."""
        self.check_ordering(ordering)
        got_d, got_w, have, drawn = [], [], 0, 0
        while have < n:
            if drawn >= MAX_ORDERED_DRAWS:
                raise ValueError(f"only {have} of {n} architectures of {self} obey the {ordering} ordering "
                                 f"({ORDERING_RULES[ordering]}) after {drawn:,} draws")
            # ~1/36 of the space obeys an ordering; cap a draw at 2M rows (~100 MB)
            batch = max(2 * (n - have), 64) if ordering is None else min(max(40 * (n - have), 1024), 2_000_000)
            d, w = uniform_in(self.depths, generator, batch), uniform_in(self.widths, generator, batch)
            drawn += batch
            keep = _ordered(d, ordering) & _ordered(w, ordering)
            got_d.append(d[keep])
            got_w.append(w[keep])
            have += int(keep.sum())
        return torch.cat(got_d)[:n], torch.cat(got_w)[:n]

    def check_ordering(self, ordering: str | None):
        """Raise ValueError unless some architecture of the space obeys the ordering (§4.5); exact, without a draw:
        greedily, each stage's value is the least that its range and the stages before it in the order allow."""
        order = ORDERINGS.get(ordering)
        if order is None or len(order) != self.num_stages:
            return               # none, or one that ``_ordered`` rejects
        for ranges in (self.depths, self.widths):
            least = accumulate((ranges[stage][0] for stage in order), max)
            if any(value > ranges[stage][1] for value, stage in zip(least, order)):
                raise ValueError(f"no architecture of {self} obeys the {ordering} ordering "
                                 f"({ORDERING_RULES[ordering]})")

    def to_dict(self) -> dict:
        return {"depths": [list(r) for r in self.depths], "widths": [list(r) for r in self.widths]}

    @classmethod
    def from_dict(cls, d: dict) -> Space:
        d = _load_json(d, "space")
        if "depths" not in d or "widths" not in d:
            raise ValueError(f"a space needs the keys 'depths' and 'widths', got {sorted(d)}")
        return cls(depths=d["depths"], widths=d["widths"])

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    from_json = from_dict

    @classmethod
    def read(cls, spec: str, ess: ExpandedSearchSpace) -> Space:
        """'full' (the whole of ``ess``), or a space of ``ess`` from a JSON file of one or of an NSS result holding one
        under "elite_space" (a result.json); a FileError otherwise."""
        if spec == "full":
            return ess.full_space()
        d = read_json(spec, "space")
        try:
            return cls.from_dict(d["elite_space"] if isinstance(d.get("elite_space"), dict) else d).validate(ess)
        except ValueError as e:
            raise FileError(f"malformed space JSON in {spec}: {e}") from None


def uniform_in(ranges: Sequence[Range], generator: torch.Generator, n: int) -> torch.Tensor:
    """(n, K) integers, column k uniform on the inclusive range ``ranges[k]``: the one uniform sampler."""
    lo = torch.tensor([r[0] for r in ranges])
    span = torch.tensor([r[1] - r[0] + 1 for r in ranges])
    u = torch.rand(n, len(ranges), generator=generator, dtype=torch.float64)
    return lo + (u * span).long().clamp_max(span - 1)


def _ordered(values: torch.Tensor, ordering: str | None) -> torch.Tensor:
    """Row mask of (n, N) ``values`` that are non-decreasing in the stage order of ``ordering``."""
    if ordering is None:
        return torch.ones(values.shape[0], dtype=torch.bool)
    if ordering not in ORDERINGS:
        raise ValueError(f"unknown ordering {ordering!r}; choose from {sorted(ORDERINGS)}")
    order = list(ORDERINGS[ordering])
    if values.shape[1] != len(order):
        raise ValueError(f"the ordering {ordering!r} is defined for {len(order)} stages, not {values.shape[1]}")
    v = values[:, order]
    return (v[:, 1:] >= v[:, :-1]).all(dim=1)


# ---- Options: what Θ chooses among ---------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    """Per-stage options of Θ: ``depths[i][k]`` and ``widths[i][k]`` are (lo, hi) ranges.

    NSS (§3.3): the ranges tiling {1..d_max} and {1..w_max}. NAS (§4.3): the single values
    (v, v) of a space's ranges. Choosing option indices per stage gives back a ``Space``.
    """

    depths: tuple[tuple[Range, ...], ...]
    widths: tuple[tuple[Range, ...], ...]

    @classmethod
    def nss(cls, ess: ExpandedSearchSpace) -> Options:
        """The candidate ranges of Network Space Search, identical in every stage."""
        n = ess.num_stages
        return cls(depths=(ess.depth_ranges,) * n, widths=(ess.width_ranges,) * n)

    @classmethod
    def nas(cls, space: Space) -> Options:
        """Every single depth and width of ``space`` (FBNetV2-style NAS, §4.3)."""
        singles = lambda ranges: tuple(tuple((v, v) for v in range(lo, hi + 1)) for lo, hi in ranges)
        return cls(depths=singles(space.depths), widths=singles(space.widths))

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def sizes(self) -> tuple[tuple[int, int], ...]:
        """(number of depth options, number of width options) per stage."""
        return tuple((len(d), len(w)) for d, w in zip(self.depths, self.widths))

    @property
    def hull(self) -> Space:
        """The smallest space holding every option."""
        return Space(depths=tuple((o[0][0], o[-1][1]) for o in self.depths),
                     widths=tuple((o[0][0], o[-1][1]) for o in self.widths))

    def draw_values(self, generator: torch.Generator) -> tuple[list[list[int]], list[list[int]]]:
        """One depth and one width drawn uniformly inside every option of every stage (the Θ step, §3.3):
        ``(depth_values, width_values)`` with ``depth_values[i][k]`` inside ``depths[i][k]``."""
        draw = lambda per_stage: [uniform_in(ranges, generator, 1)[0].tolist() for ranges in per_stage]
        return draw(self.depths), draw(self.widths)

    def space(self, depth_idx: Sequence[int], width_idx: Sequence[int]) -> Space:
        """The space made of option ``depth_idx[i]`` and ``width_idx[i]`` in every stage."""
        return Space(depths=tuple(o[k] for o, k in zip(self.depths, depth_idx)),
                     widths=tuple(o[k] for o, k in zip(self.widths, width_idx)))


# ---- Demo ----------------------------------------------------------------------------------------

if __name__ == "__main__":
    ess = ExpandedSearchSpace()
    print(ess)
    print(f"pixels per stage A_i = {ess.pixels}; {ess.num_spaces:,} candidate spaces "
          f"= ({len(ess.depth_ranges)}·{len(ess.width_ranges)})^{ess.num_stages}")
    g = torch.Generator().manual_seed(0)
    for i in torch.randint(ess.num_spaces, (3,), generator=g).tolist():
        space = ess.space_at(i)
        assert ess.index_of(space) == i
        print(f"space #{i:6d}: {space}  ({space.size:,} architectures)")
        print(f"   a sample: {space.sample(g)}")
    print("elite-ordered samples of the full space:", *ess.full_space().sample(g, 2, ordering="elite"), sep="\n   ")
