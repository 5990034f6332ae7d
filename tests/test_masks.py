"""Tests for medadv_monai.masks: seg/ring/patch masks, combination, softening, metrics and MONAI transforms."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.data import MetaTensor

from medadv_monai.errors import MedAdvInputError
from medadv_monai.masks import (
    COMBINE_MODES,
    AttackMask,
    AttackMaskd,
    PatchSpec,
    area,
    attackable,
    combine_masks,
    coverage,
    dilate,
    make_attack_mask,
    patch_mask,
    ring_mask,
    seg_mask,
    soften,
)

H = W = 32


def blank(n: int = 1, h: int = H, w: int = W) -> torch.Tensor:
    return torch.zeros(n, 1, h, w, dtype=torch.bool)


def block(y0: int, y1: int, x0: int, x1: int, h: int = H, w: int = W) -> torch.Tensor:
    """A (1, 1, h, w) bool tumour that is the rectangle rows y0..y1-1, cols x0..x1-1."""
    t = blank(1, h, w)
    t[..., y0:y1, x0:x1] = True
    return t


def bbox(m: torch.Tensor) -> tuple[int, int, int, int]:
    """(ymin, ymax, xmin, xmax) inclusive of the non-zero pixels of a 2D mask."""
    ys, xs = torch.nonzero(m.reshape(m.shape[-2:]), as_tuple=True)
    return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())


def box_centre(m: torch.Tensor) -> tuple[float, float]:
    y0, y1, x0, x1 = bbox(m)
    return (y0 + y1) / 2, (x0 + x1) / 2


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ seg and ring


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.int64, torch.float32])
def test_seg_equals_tumour(dtype):
    t = block(4, 9, 10, 20)
    m = seg_mask(t.to(dtype))
    assert m.dtype == torch.float32 and m.shape == t.shape
    assert torch.equal(m, t.float())


def test_seg_keeps_float_dtype_and_unions_channels():
    t = torch.zeros(2, 3, 8, 8, dtype=torch.float64)
    t[0, 0, 1, 1] = 1
    t[0, 2, 5, 5] = 4  # BraTS-style label value
    m = seg_mask(t)
    assert m.dtype == torch.float64 and m.shape == (2, 1, 8, 8)
    assert m.sum().item() == 2 and m[0, 0, 1, 1] == 1 and m[0, 0, 5, 5] == 1


def disk(radius: int, ndim: int = 2) -> np.ndarray:
    axis = np.arange(-radius, radius + 1)
    grids = np.meshgrid(*([axis] * ndim), indexing="ij")
    return sum(g**2 for g in grids) <= radius**2


@pytest.mark.parametrize("width", [1, 2, 3, 5])
def test_ring_of_single_pixel_is_disk_minus_centre(width):
    t = blank()
    t[0, 0, 16, 16] = True
    ring = ring_mask(t, width)[0, 0].numpy().astype(bool)
    expected = np.zeros((H, W), bool)
    expected[16 - width : 17 + width, 16 - width : 17 + width] = disk(width)
    expected[16, 16] = False
    np.testing.assert_array_equal(ring, expected)
    # outer extent is exactly `width` pixels along the axes
    assert bbox(torch.from_numpy(ring)) == (16 - width, 16 + width, 16 - width, 16 + width)


def test_ring_is_disjoint_contained_and_non_empty():
    t = block(8, 14, 10, 13) | block(20, 22, 20, 27)
    for width in (1, 3):
        ring = ring_mask(t, width)
        assert set(ring.unique().tolist()) <= {0.0, 1.0}
        assert ring.sum() > 0
        assert (ring * t).sum() == 0
        assert torch.all(ring <= dilate(t.float(), width))
        assert torch.equal(ring + t.float(), dilate(t.float(), width))  # ring and tumour tile the dilation


def test_ring_at_border_and_empty_tumour():
    t = blank(2)
    t[0, 0, 0, 0] = True
    ring = ring_mask(t, 2)
    assert ring[0].sum() == (disk(2)[2:, 2:].sum() - 1)  # a quarter disk, no wrap-around
    assert ring[1].sum() == 0


def test_ring_3d_is_ball_minus_centre():
    t = torch.zeros(1, 1, 12, 12, 12, dtype=torch.bool)
    t[0, 0, 6, 6, 6] = True
    ring = ring_mask(t, 2)
    assert ring.shape == t.shape
    expected = np.zeros((12, 12, 12), bool)
    expected[4:9, 4:9, 4:9] = disk(2, ndim=3)
    expected[6, 6, 6] = False
    np.testing.assert_array_equal(ring[0, 0].numpy().astype(bool), expected)


# ------------------------------------------------------------------------------------------------ patches


def test_rect_rel_at_centre():
    m = patch_mask((1, 1, H, W), PatchSpec(size=(0.25, 0.25)))
    assert m.shape == (1, 1, H, W) and m.dtype == torch.float32
    assert m.sum() == 64
    assert bbox(m) == (12, 19, 12, 19)
    assert box_centre(m) == ((H - 1) / 2, (W - 1) / 2)


def test_rect_size_is_width_by_height():
    m = patch_mask((H, W), {"size": (0.25, 0.5)})  # 8 wide, 16 tall
    y0, y1, x0, x1 = bbox(m)
    assert (y1 - y0 + 1, x1 - x0 + 1) == (16, 8) and m.sum() == 128


def test_rect_pixel_units():
    m = patch_mask((2, 1, H, W), PatchSpec(size=(5, 3), units="px"))
    assert m.shape == (2, 1, H, W)
    for i in range(2):
        y0, y1, x0, x1 = bbox(m[i])
        assert (y1 - y0 + 1, x1 - x0 + 1) == (3, 5) and m[i].sum() == 15


def test_like_tensor_sets_batch_device_and_dtype():
    like = torch.zeros(3, 4, H, W, dtype=torch.float64)
    m = patch_mask(like, PatchSpec())
    assert m.shape == (3, 1, H, W) and m.dtype == torch.float64


def test_ellipse_area_close_to_pi_a_b():
    m = patch_mask((1, 1, 64, 64), PatchSpec(shape="ellipse", size=(40, 24), units="px"))
    assert m.sum().item() == pytest.approx(math.pi * 20 * 12, rel=0.05)
    y0, y1, x0, x1 = bbox(m)
    assert (y1 - y0 + 1, x1 - x0 + 1) == (24, 40)


@pytest.mark.parametrize("units, size, thickness", [("rel", (0.75, 0.5), 0.3), ("px", (24, 16), 3)])
def test_ellipse_ring_inside_ellipse_and_hollow(units, size, thickness):
    spec = PatchSpec(shape="ellipse_ring", size=size, units=units, thickness=thickness)
    ring = patch_mask((1, 1, H, W), spec)
    full = patch_mask((1, 1, H, W), PatchSpec(shape="ellipse", size=size, units=units))
    assert ring.sum() > 0 and ring.sum() < full.sum()
    assert torch.all(ring <= full)
    cy, cx = box_centre(full)
    assert ring[0, 0, math.floor(cy), math.floor(cx)] == 0 and ring[0, 0, math.ceil(cy), math.ceil(cx)] == 0


@pytest.mark.parametrize("size", [(0.25, 0.25), (0.125, 0.5), (0.5, 0.125)])
def test_thin_ellipse_ring_is_never_empty(size):
    # a 0.1-radius-thick ring on a 4-pixel box would fall between the pixel centres; 1 px is the minimum
    ring = patch_mask((16, 16), PatchSpec(shape="ellipse_ring", size=size, thickness=0.1))
    full = patch_mask((16, 16), PatchSpec(shape="ellipse", size=size))
    assert 0 < ring.sum() and torch.all(ring <= full)
    assert bbox(ring) == bbox(full)  # the ring reaches the ellipse's extreme pixels


def test_ellipse_ring_full_thickness_is_ellipse():
    ring = patch_mask((H, W), PatchSpec(shape="ellipse_ring", size=(0.5, 0.5), thickness=1.0))
    assert torch.equal(ring, patch_mask((H, W), PatchSpec(shape="ellipse", size=(0.5, 0.5))))


@pytest.mark.parametrize("row", [0, 1, 2])
@pytest.mark.parametrize("col", [0, 2])
def test_grid_cell_placement(row, col):
    spec = PatchSpec(size=(4, 4), units="px", anchor="grid", grid=(3, 4), cell=(row, col))
    m = patch_mask((1, 1, 36, 40), spec)
    cell_h, cell_w = 36 / 3, 40 / 4
    y0, y1, x0, x1 = bbox(m)
    assert row * cell_h <= y0 and y1 < (row + 1) * cell_h
    assert col * cell_w <= x0 and x1 < (col + 1) * cell_w
    cy, cx = box_centre(m)
    assert abs(cy - ((row + 0.5) * cell_h - 0.5)) <= 0.5 and abs(cx - ((col + 0.5) * cell_w - 0.5)) <= 0.5


def test_grid_centre_cell_matches_centre_anchor():
    spec = PatchSpec(size=(0.2, 0.2), anchor="grid", grid=(3, 3), cell=(1, 1))
    assert torch.equal(patch_mask((H, W), spec), patch_mask((H, W), PatchSpec(size=(0.2, 0.2))))


def test_centroid_and_bbox_anchor_on_tumour():
    t = torch.cat([block(3, 8, 4, 11), block(20, 29, 18, 25)])  # two samples, different tumours
    for anchor in ("centroid", "bbox"):
        m = patch_mask(t, PatchSpec(size=(5, 5), units="px", anchor=anchor), tumour=t)
        for i in range(2):
            assert box_centre(m[i]) == pytest.approx(box_centre(t[i]), abs=0.5)


def test_centroid_differs_from_bbox_for_l_shape():
    t = block(4, 24, 4, 8) | block(20, 24, 4, 24)  # L: the centroid is pulled to the corner
    ys, xs = torch.nonzero(t[0, 0], as_tuple=True)
    centroid = (ys.float().mean().item(), xs.float().mean().item())
    m_c = patch_mask(t, PatchSpec(size=(3, 3), units="px", anchor="centroid"), tumour=t)
    m_b = patch_mask(t, PatchSpec(size=(3, 3), units="px", anchor="bbox"), tumour=t)
    assert box_centre(m_c) == pytest.approx(centroid, abs=0.5)
    assert box_centre(m_b) == pytest.approx(box_centre(t), abs=0.5)
    assert not torch.equal(m_c, m_b)


def test_tumour_anchor_falls_back_to_centre_for_empty_tumour():
    for anchor in ("centroid", "bbox"):
        m = patch_mask(blank(), PatchSpec(size=(0.25, 0.25), anchor=anchor), tumour=blank())
        assert torch.equal(m, patch_mask((H, W), PatchSpec(size=(0.25, 0.25))))


def test_outside_anchor_never_overlaps_tumour():
    t = block(8, 24, 8, 24)
    for shape in ("rect", "ellipse", "ellipse_ring"):
        spec = PatchSpec(shape=shape, size=(8, 8), units="px", anchor="outside")
        full = patch_mask((H, W), PatchSpec(shape=shape, size=(8, 8), units="px")).sum()
        for seed in range(10):
            m = patch_mask(t, spec, tumour=t, generator=gen(seed))
            assert (m * t).sum() == 0 and m.sum() == full


def test_outside_anchor_impossible_raises():
    t = block(12, 20, 12, 20)
    with pytest.raises(MedAdvInputError, match="outside"):
        patch_mask(t, PatchSpec(size=(0.75, 0.75), anchor="outside"), tumour=t, generator=gen(0))


@pytest.mark.parametrize(
    "spec",
    [
        PatchSpec(size=(6, 6), units="px", anchor="random"),
        PatchSpec(size=(6, 6), units="px", anchor="center", jitter=5),
        PatchSpec(size=(6, 6), units="px", anchor="outside", jitter=2),
    ],
)
def test_random_and_jitter_are_deterministic_per_seed(spec):
    t = block(2, 6, 2, 6).expand(4, 1, H, W)
    a = patch_mask(t, spec, tumour=t, generator=gen(1))
    b = patch_mask(t, spec, tumour=t, generator=gen(1))
    assert torch.equal(a, b)
    others = [patch_mask(t, spec, tumour=t, generator=gen(s)) for s in range(2, 6)]
    assert any(not torch.equal(a, o) for o in others)
    assert len({tuple(box_centre(a[i])) for i in range(4)}) > 1  # samples of a batch differ too


def test_patch_is_never_clipped():
    t = block(0, 2, 30, 32)  # tumour in a corner pulls the tumour anchors to the edge
    cases = [
        (PatchSpec(size=(10, 10), units="px", anchor="random", jitter=20), 100),
        (PatchSpec(size=(0.5, 0.5), anchor="grid", grid=(3, 3), cell=(0, 2), jitter=3), 256),
        (PatchSpec(size=(0.5, 0.25), anchor="bbox", jitter=6), 16 * 8),
        (PatchSpec(shape="ellipse", size=(12, 12), units="px", anchor="centroid", jitter=4), None),
        (PatchSpec(shape="ellipse_ring", size=(14, 10), units="px", thickness=2, anchor="random"), None),
    ]
    for spec, expected in cases:
        if expected is None:  # the same pixel-sized shape drawn in the middle of a larger canvas
            expected = patch_mask((64, 64), replace(spec, anchor="center", jitter=0)).sum().item()
        for seed in range(8):
            m = patch_mask(t, spec, tumour=t, generator=gen(seed))
            assert m.sum().item() == expected, (spec, seed)


def test_jitter_stays_within_range():
    base = box_centre(patch_mask((H, W), PatchSpec(size=(4, 4), units="px")))
    for seed in range(10):
        m = patch_mask((H, W), PatchSpec(size=(4, 4), units="px", jitter=2), generator=gen(seed))
        cy, cx = box_centre(m)
        assert abs(cy - base[0]) <= 2 and abs(cx - base[1]) <= 2


def test_patch_combine_applied_with_tumour():
    t = block(10, 16, 10, 16)
    p = patch_mask((H, W), PatchSpec(size=(0.25, 0.25)))
    m = patch_mask(t, PatchSpec(size=(0.25, 0.25), combine="patch_minus_seg"), tumour=t)
    assert torch.equal(m, p * (1 - t.float()))


# ------------------------------------------------------------------------------------------------ PatchSpec


def test_patch_spec_from_dict_and_name():
    spec = PatchSpec.from_dict({"shape": "ellipse", "size": [0.1, 0.2], "anchor": "grid", "grid": [2, 3],
                                "cell": [1, 2]})
    assert spec.size == (0.1, 0.2) and spec.grid == (2, 3) and spec.cell == (1, 2)
    assert spec.name == "ellipse_0.10x0.20_grid2x3r1c2"
    assert PatchSpec().name == "rect_0.10x0.10_center"
    assert PatchSpec.from_any(None) == PatchSpec()
    assert PatchSpec.from_any(spec) is spec
    assert hash(spec) == hash(PatchSpec.from_dict(dict(shape="ellipse", size=(0.1, 0.2), anchor="grid", grid=(2, 3),
                                                       cell=(1, 2))))


def test_patch_spec_from_string():
    assert PatchSpec.from_any("rect:0.1x0.1@center") == PatchSpec()
    spec = PatchSpec.from_any("ellipse:12x8px@random")
    assert (spec.shape, spec.size, spec.units, spec.anchor) == ("ellipse", (12.0, 8.0), "px", "random")
    assert spec.name == "ellipse_12x8px_random"
    with pytest.raises(MedAdvInputError, match="shape:WxH@anchor"):
        PatchSpec.from_any("rect 0.1")


def test_patch_spec_names_differ():
    specs = [PatchSpec(), PatchSpec(jitter=2), PatchSpec(combine="union"), PatchSpec(shape="ellipse_ring"),
             PatchSpec(size=(3, 3), units="px"), PatchSpec(anchor="grid", cell=(0, 0))]
    assert len({s.name for s in specs}) == len(specs)


# ---------------------------------------------------------------------------------- combine, soften, metrics


def test_combine_modes_match_set_algebra():
    rng = np.random.default_rng(0)
    p = rng.random((2, 1, 8, 8)) > 0.5
    t = rng.random((2, 1, 8, 8)) > 0.5
    expected = {"none": p, "union": p | t, "intersect": p & t, "patch_minus_seg": p & ~t, "seg_minus_patch": t & ~p}
    for mode, want in expected.items():
        got = combine_masks(torch.from_numpy(p).float(), torch.from_numpy(t), mode)
        np.testing.assert_array_equal(got.numpy(), want.astype(np.float32), err_msg=mode)


def test_combine_broadcasts_and_rejects_bad_shapes():
    p = torch.ones(1, 1, 8, 8)
    t = torch.zeros(3, 1, 8, 8)
    assert combine_masks(p, t, "intersect").shape == (3, 1, 8, 8)
    with pytest.raises(MedAdvInputError, match=r"not broadcastable"):
        combine_masks(p, torch.zeros(1, 1, 8, 9), "union")
    with pytest.raises(MedAdvInputError, match="combine mode"):
        combine_masks(p, t, "xor")


def test_soften():
    m = block(6, 26, 6, 26).float()
    assert soften(m, 0) is m
    s = soften(m, 1.5)
    assert s.shape == m.shape and s.min() >= 0 and s.max() <= 1
    assert ((s > 0) & (s < 1)).any()  # edges became soft
    assert s[0, 0, 16, 16] == pytest.approx(1.0, abs=1e-5) and s[0, 0, 0, 0] == pytest.approx(0.0, abs=1e-6)
    edge = torch.ones(1, 1, 8, 8)
    assert torch.allclose(soften(edge, 2.0), edge)  # replicate padding: no darkening at the border
    vol = torch.zeros(1, 1, 9, 9, 9)
    vol[..., 4, 4, 4] = 1
    sv = soften(vol, 1.0)
    assert sv.shape == vol.shape and sv.max() <= 1 and (sv > 0).sum() > 1
    assert soften(torch.ones(1, 1, 4, 4, dtype=torch.bool), 0).dtype == torch.float32


def test_coverage_area_attackable():
    t = torch.cat([block(0, 2, 0, 2), block(0, 2, 0, 2), blank()])  # tumours of 4, 4 and 0 pixels
    m = torch.zeros(3, 1, H, W)
    m[0, 0, 0, 0:2] = 1  # covers 2 of 4
    m[1, 0, 0:2, 0:2] = 0.5  # soft: half of each
    m[1, 0, 10, 10] = 1  # outside the tumour, does not count
    cov = coverage(m, t)
    assert cov[0].item() == pytest.approx(0.5) and cov[1].item() == pytest.approx(0.5) and torch.isnan(cov[2])
    assert area(m).tolist() == pytest.approx([2 / (H * W), 3 / (H * W), 0.0])
    assert attackable(m).tolist() == [True, True, False]


# ------------------------------------------------------------------------------------------------ make_attack_mask


def test_make_attack_mask_kinds():
    t = block(10, 14, 10, 14)
    assert torch.equal(make_attack_mask("seg", t), seg_mask(t))
    assert torch.equal(make_attack_mask("ring", t, width=2), ring_mask(t, 2))
    like = torch.zeros(2, 4, H, W)
    none = make_attack_mask("none", None, like=like)
    assert none.shape == (2, 1, H, W) and torch.all(none == 1)
    assert make_attack_mask("none", t).shape == t.shape
    spec = PatchSpec(size=(0.25, 0.25), anchor="bbox")
    assert torch.equal(make_attack_mask("patch", t, patch=spec), patch_mask(t, spec, t))
    assert make_attack_mask("patch", None, like=like).shape == (2, 1, H, W)
    soft = make_attack_mask("seg", t, sigma=1.0)
    assert torch.allclose(soft, soften(seg_mask(t), 1.0))


def test_make_attack_mask_3d():
    t = torch.zeros(1, 1, 10, 10, 10, dtype=torch.bool)
    t[..., 4:6, 4:6, 4:6] = True
    assert make_attack_mask("ring", t, width=1, sigma=0.5).shape == t.shape
    with pytest.raises(MedAdvInputError, match="2D only"):
        make_attack_mask("patch", t)


# ------------------------------------------------------------------------------------------------ errors


def test_error_patch_too_big_names_size_and_image():
    with pytest.raises(MedAdvInputError, match=r"40x8.*32x32") as err:
        patch_mask((1, 1, H, W), PatchSpec(size=(40, 8), units="px"))
    assert "PatchSpec(" in str(err.value)
    with pytest.raises(MedAdvInputError, match=r"1\.5x0\.1.*32x32"):
        patch_mask((1, 1, H, W), {"size": (1.5, 0.1)})
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: PatchSpec(anchor="middle"), r"anchor.*'middle'"),
        (lambda: PatchSpec(shape="star"), r"shape.*'star'"),
        (lambda: PatchSpec(units="mm"), r"units.*'mm'"),
        (lambda: PatchSpec(combine="xor"), r"combine.*'xor'"),
        (lambda: PatchSpec(anchor="grid", grid=(2, 2), cell=(2, 0)), r"cell \(2, 0\).*2x2 grid"),
        (lambda: PatchSpec(size=(0, 0.1)), r"size"),
        (lambda: PatchSpec(jitter=-1), r"jitter"),
        (lambda: PatchSpec.from_dict({"shapee": "rect"}), r"unknown keys \['shapee'\]"),
        (lambda: ring_mask(block(1, 3, 1, 3), 0), r"width.*>= 1.*0"),
        (lambda: soften(torch.ones(1, 1, 4, 4), -1.0), r"sigma.*>= 0.*-1"),
        (lambda: make_attack_mask("seg", block(1, 3, 1, 3), sigma=-0.5), r"sigma"),
        (lambda: make_attack_mask("blob", block(1, 3, 1, 3)), r"kind.*'blob'"),
        (lambda: make_attack_mask("seg", None), r"needs a tumour"),
        (lambda: patch_mask((H, W), PatchSpec(anchor="centroid")), r"needs a tumour"),
        (lambda: patch_mask((2, 1, H, W), PatchSpec(), tumour=blank(1, H, W + 1)), r"not broadcastable"),
        (lambda: seg_mask(torch.zeros(4, 4)), r"\(N, C, H, W\)"),
    ],
)
def test_clear_errors(call, match):
    with pytest.raises(MedAdvInputError, match=match):
        call()


# ------------------------------------------------------------------------------------------------ property test

spec_strategy = st.builds(
    PatchSpec,
    shape=st.sampled_from(["rect", "ellipse", "ellipse_ring"]),
    size=st.tuples(st.floats(0.05, 1.0), st.floats(0.05, 1.0)),
    anchor=st.sampled_from(["center", "grid", "random", "centroid", "bbox"]),
    grid=st.just((2, 2)),
    cell=st.tuples(st.integers(0, 1), st.integers(0, 1)),
    jitter=st.integers(0, 4),
    thickness=st.floats(0.1, 1.0),
    combine=st.sampled_from(list(COMBINE_MODES)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tumour=st.lists(st.booleans(), min_size=16 * 16, max_size=16 * 16),
    spec=spec_strategy,
    seed=st.integers(0, 2**16),
    width=st.integers(1, 3),
)
def test_property_masks_in_range_and_set_relations(tumour, spec, seed, width):
    t = torch.tensor(tumour).reshape(1, 1, 16, 16)
    tf = t.float()
    m = patch_mask(t, spec, tumour=t, generator=gen(seed))
    assert m.shape == (1, 1, 16, 16) and m.dtype == torch.float32
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    p = patch_mask(t, replace(spec, combine="none"), tumour=t, generator=gen(seed))
    centred = patch_mask((16, 16), replace(spec, anchor="center", jitter=0, combine="none"))
    assert p.sum() > 0 and p.sum() == centred.sum()  # never clipped
    relations = {
        "none": torch.equal(m, p),
        "union": torch.all(m >= p) and torch.all(m >= tf) and torch.all(m <= p + tf),
        "intersect": torch.all(m <= p) and torch.all(m <= tf) and torch.equal(m, p * tf),
        "patch_minus_seg": torch.all(m <= p) and (m * tf).sum() == 0 and torch.equal(m + p * tf, p),
        "seg_minus_patch": torch.all(m <= tf) and (m * p).sum() == 0 and torch.equal(m + p * tf, tf),
    }
    assert relations[spec.combine]
    for mask in (ring_mask(t, width), soften(m, 0.7), make_attack_mask("patch", t, patch=spec, sigma=1.0,
                                                                          generator=gen(seed))):
        assert mask.shape == (1, 1, 16, 16) and mask.min() >= 0 and mask.max() <= 1
    assert (ring_mask(t, width) * tf).sum() == 0


# ------------------------------------------------------------------------------------------------ MONAI transforms


def meta_mask() -> MetaTensor:
    affine = torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0]))
    return MetaTensor(block(10, 16, 12, 18)[0].to(torch.uint8), affine=affine)


def test_attack_maskd_writes_output_and_keeps_mask():
    mask = meta_mask()
    before = mask.clone()
    d = AttackMaskd("mask", kind="ring", width=2)({"mask": mask, "image": torch.zeros(1, H, W)})
    assert d["mask"] is mask and torch.equal(d["mask"], before) and d["mask"].dtype == torch.uint8
    out = d["attack_mask"]
    assert isinstance(out, torch.Tensor) and out.shape == (1, H, W) and out.dtype == torch.float32
    assert torch.equal(out.as_tensor(), ring_mask(mask.as_tensor()[None], 2)[0])
    assert torch.equal(out.affine, mask.affine)


def test_attack_maskd_random_is_deterministic_with_set_random_state():
    spec = {"size": (6, 6), "units": "px", "anchor": "random", "jitter": 2}
    data = {"mask": meta_mask()}
    t1 = AttackMaskd("mask", kind="patch", patch=spec)
    t2 = AttackMaskd("mask", kind="patch", patch=spec)
    t1.set_random_state(7)
    t2.set_random_state(7)
    first = [t1(data)["attack_mask"] for _ in range(3)]
    second = [t2(data)["attack_mask"] for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(first[0], f) for f in first[1:])  # a fresh placement per call
    t3 = AttackMaskd("mask", kind="patch", patch=spec).set_random_state(8)
    third = [t3(data)["attack_mask"] for _ in range(3)]
    assert any(not torch.equal(a, c) for a, c in zip(first, third))  # another seed, other placements


def test_attack_maskd_numpy_multiple_keys_and_missing():
    a = np.zeros((1, H, W), np.uint8)
    a[0, 5:9, 5:9] = 1
    b = np.zeros((1, H, W), np.float32)
    tr = AttackMaskd(["m1", "m2"], output_key=["a1", "a2"], kind="seg", sigma=0.0)
    d = tr({"m1": a, "m2": b})
    assert isinstance(d["a1"], torch.Tensor) and torch.equal(d["a1"], torch.from_numpy(a).float())
    assert d["a2"].sum() == 0 and isinstance(d["m1"], np.ndarray)
    tr = AttackMaskd(["m1", "m2"], output_key=["a1", "a2"], kind="seg", allow_missing_keys=True)
    assert set(tr({"m1": a})) == {"m1", "a1"}
    with pytest.raises(MedAdvInputError, match="output_key"):
        AttackMaskd(["m1", "m2"], output_key="attack_mask")


def test_attack_mask_array_transform():
    tr = AttackMask("patch", patch="rect:0.25x0.25@centroid")
    out = tr(block(0, 4, 0, 4)[0])
    assert out.shape == (1, H, W) and out.sum() == 64 and bbox(out) == (0, 7, 0, 7)
    with pytest.raises(MedAdvInputError, match="kind"):
        AttackMask("blob")
