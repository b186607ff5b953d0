"""space.py: the Expanded Search Space, architectures, spaces and their JSON forms."""
import itertools
import json

import pytest
import torch

from space import ORDERINGS, Arch, ExpandedSearchSpace, Options, Space, uniform_in

TINY = ExpandedSearchSpace.reduced()


def test_paper_defaults():
    ess = ExpandedSearchSpace()
    assert (ess.num_stages, ess.d_max, ess.w_max, ess.d_step, ess.w_step) == (3, 16, 512, 4, 32)
    assert ess.num_spaces == 2 ** 18
    assert ess.pixels == (1024, 256, 64)
    assert ess.depth_ranges == ((1, 4), (5, 8), (9, 12), (13, 16))
    assert len(ess.width_ranges) == 16 and ess.width_ranges[-1] == (481, 512)


@pytest.mark.parametrize("kwargs", [dict(d_step=3), dict(w_step=5), dict(strides=(1, 2)), dict(d_max=0)])
def test_bad_space_config(kwargs):
    with pytest.raises(ValueError):
        ExpandedSearchSpace(**kwargs)


def test_index_bijection_on_every_tiny_space():
    spaces = list(TINY.candidate_spaces())
    assert len(spaces) == TINY.num_spaces == (2 * 4) ** 3
    assert len(set(spaces)) == len(spaces)
    for i, s in enumerate(spaces):
        assert TINY.index_of(s) == i
        d, w = TINY.range_indices(s)
        assert Options.nss(TINY).space(d, w) == s


def test_index_bijection_on_default_space():
    ess = ExpandedSearchSpace()
    g = torch.Generator().manual_seed(0)
    for i in torch.randint(ess.num_spaces, (200,), generator=g).tolist() + [0, ess.num_spaces - 1]:
        s = ess.space_at(i)
        assert ess.index_of(s) == i
        assert all(hi - lo + 1 == 4 for lo, hi in s.depths) and all(hi - lo + 1 == 32 for lo, hi in s.widths)
    assert ess.space_at(0) == Space(((1, 4),) * 3, ((1, 32),) * 3)
    with pytest.raises(ValueError):
        ess.space_at(ess.num_spaces)
    with pytest.raises(ValueError, match="not one of the candidate"):
        ess.index_of(Space(((1, 3),) * 3, ((1, 32),) * 3))


def test_full_space_and_contains():
    full = TINY.full_space()
    assert full.size == (4 * 16) ** 3
    assert full.contains(TINY.largest_arch()) and full.contains(TINY.smallest_arch())
    s = Space(((1, 2), (3, 4), (1, 2)), ((1, 4), (5, 8), (13, 16)))
    assert s.contains(Arch((2, 3, 1), (4, 5, 16)))
    assert not s.contains(Arch((3, 3, 1), (4, 5, 16)))
    assert not s.contains(Arch((2, 3), (4, 5)))


def test_validation():
    with pytest.raises(ValueError, match="outside"):
        Arch((1, 2, 5), (1, 2, 3)).validate(TINY)
    with pytest.raises(ValueError, match="stages"):
        Arch((1, 2), (1, 2)).validate(TINY)
    with pytest.raises(ValueError, match="outside"):
        Space(((1, 2),) * 3, ((1, 17),) * 3).validate(TINY)
    with pytest.raises(ValueError, match="lo > hi"):
        Space(((2, 1),) * 3, ((1, 4),) * 3)
    with pytest.raises(ValueError):
        Arch((1, 2.5, 3), (1, 2, 3))
    with pytest.raises(ValueError):
        Arch((1, 2, 3), (1, 2))


def test_json_and_repr_round_trip():
    arch = Arch((2, 3, 1), (4, 5, 16))
    space = Space(((1, 2), (3, 4), (1, 2)), ((1, 4), (5, 8), (13, 16)))
    assert Arch.from_json(arch.to_json()) == arch
    assert Space.from_json(space.to_json()) == space
    assert Space.from_dict(json.loads(json.dumps(space.to_dict()))) == space
    assert eval(repr(arch)) == arch and eval(repr(space)) == space
    assert ExpandedSearchSpace.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY


@pytest.mark.parametrize("text", ["{", "[]", '{"depths": [[1, 2]]}', '{"depths": 3, "widths": 4}',
                                  '{"depths": [[1, 2, 3]], "widths": [[1, 2]]}'])
def test_malformed_space_json(text):
    with pytest.raises(ValueError):
        Space.from_json(text)


def test_uniform_sampling_is_seeded_and_uniform():
    space = Space(((1, 2), (3, 4), (1, 1)), ((1, 3), (5, 5), (2, 3)))   # 2·2·1 · 3·1·2 = 24 archs
    a = space.sample(torch.Generator().manual_seed(1), 6000)
    b = space.sample(torch.Generator().manual_seed(1), 6000)
    assert a == b and all(space.contains(x) for x in a)
    counts = {}
    for x in a:
        counts[x] = counts.get(x, 0) + 1
    assert len(counts) == space.size == 24
    expected = 6000 / 24
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 50    # 23 degrees of freedom: p ≈ 1e-3 at 50


@pytest.mark.parametrize("ordering", sorted(ORDERINGS))
def test_ordered_sampling_is_uniform_over_the_constrained_set(ordering):
    space = Space(((1, 3),) * 3, ((1, 3),) * 3)
    allowed = [Arch(d, w) for d in itertools.product(range(1, 4), repeat=3)
               for w in itertools.product(range(1, 4), repeat=3) if Arch(d, w).satisfies(ordering)]
    samples = space.sample(torch.Generator().manual_seed(0), 20 * len(allowed), ordering=ordering)
    assert all(x.satisfies(ordering) for x in samples)
    assert set(samples) == set(allowed)
    counts = torch.tensor([samples.count(a) for a in allowed], dtype=torch.float)
    assert counts.min() > 5 and counts.max() < 40


def test_orderings_match_the_paper():
    a = Arch((1, 3, 2), (16, 64, 32))     # d1 ≤ d3 ≤ d2, w1 ≤ w3 ≤ w2
    b = Arch((1, 2, 3), (16, 32, 64))     # d1 ≤ d2 ≤ d3, w1 ≤ w2 ≤ w3
    assert a.satisfies("elite") and not a.satisfies("regnet")
    assert b.satisfies("regnet") and not b.satisfies("elite")


def test_options():
    nss = Options.nss(TINY)
    assert nss.sizes == ((2, 4),) * 3
    assert nss.hull == TINY.full_space()
    space = Space(((1, 2), (3, 4), (1, 2)), ((1, 4), (5, 8), (13, 16)))
    nas = Options.nas(space)
    assert nas.sizes == ((2, 4),) * 3 and nas.hull == space
    chosen = nas.space([1, 0, 1], [0, 3, 2])
    assert chosen == Space(((2, 2), (3, 3), (2, 2)), ((1, 1), (8, 8), (15, 15)))


def test_as_arch():
    assert Space(((2, 2), (1, 1), (3, 3)), ((5, 5), (6, 6), (7, 7))).as_arch() == Arch((2, 1, 3), (5, 6, 7))
    with pytest.raises(ValueError, match="not one"):
        Space(((2, 3), (1, 1), (3, 3)), ((5, 5), (6, 6), (7, 7))).as_arch()


def test_the_reduced_space_constructor():
    assert ExpandedSearchSpace.reduced() == ExpandedSearchSpace(d_max=4, w_max=16, d_step=2, w_step=4)
    assert ExpandedSearchSpace.reduced().num_spaces == 512
    assert ExpandedSearchSpace.reduced(num_classes=100).num_classes == 100


def test_options_draw_one_value_inside_every_option_with_the_one_uniform_sampler():
    options = Options.nss(TINY)
    depth_values, width_values = options.draw_values(torch.Generator().manual_seed(3))
    for values, per_stage in ((depth_values, options.depths), (width_values, options.widths)):
        assert [len(v) for v in values] == [len(r) for r in per_stage]
        assert all(lo <= v <= hi for vs, rs in zip(values, per_stage) for v, (lo, hi) in zip(vs, rs))
    # the same random stream as the space sampler: stage by stage, depths first, one row each
    g = torch.Generator().manual_seed(3)
    expected_d = [uniform_in(r, g, 1)[0].tolist() for r in options.depths]
    expected_w = [uniform_in(r, g, 1)[0].tolist() for r in options.widths]
    assert (depth_values, width_values) == (expected_d, expected_w)
    # uniform: every value of a range is drawn about equally often
    counts = torch.bincount(uniform_in([(5, 8)], torch.Generator().manual_seed(0), 4000)[:, 0] - 5)
    assert counts.tolist() and (counts - 1000).abs().max() < 120
