"""A synthetic BraTS 2021 look-alike built on real anatomy: the MNI152 2009 template, deformed per subject.

:func:`anatomical_subject` draws one subject's four modalities and segmentation; :func:`make_anatomical_brats`
writes one folder per subject in the BraTS 2021 layout (``BraTS2021_00007/BraTS2021_00007_{t1,...,seg}.nii.gz``),
like :func:`~medadv_monai.data.synthetic_dataset.make_synthetic_brats`.

**Anatomy.** nilearn's bundled ICBM152 2009 (sym) templates, read from the installed package (no download): the
skull-stripped T1 gives the brain mask (> 0.2), the grey- and white-matter probability maps give the GM and WM
fractions, and CSF is the rest of the brain mask (partial-volume fractions summing to 1). The arrays are flipped
to the BraTS (LPS) array orientation: ``x`` runs right to left, ``y`` front to back, ``z`` (axial) upwards.

**Grid.** Isotropic voxels of :func:`voxel_size` mm: 1 mm when the brain fits (the BraTS grid 240 x 240 x 155
gives the BraTS field of view), coarser for smaller grids (the default (96, 96, 64) gives about 2.4 mm, the
template being low-pass filtered first). The vertex sits just under the top slice; the brain stem is cut below.

**Per subject** (subject ``i`` depends only on ``(seed, i, shape, tumour, noise, bias)``): a random affine (size
0.9..1.03, per-axis stretch, rotations of a few degrees) and a smooth random displacement field of 2..4 mm move
the tissue maps (``scipy.ndimage.map_coordinates``); each modality mixes the tissue means of
:data:`ANATOMY_MEANS` by the fractions (T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: GM > WM, CSF nulled; T1ce:
T1 plus tumour-rim enhancement), then gets a random gain, a light texture, a smooth multiplicative bias field
``exp(bias * f)`` with ``f`` in [-1, 1] and Rician noise (the magnitude of complex Gaussian noise of standard
deviation ``noise`` x the mean brain intensity). Background outside the brain is exactly 0, and every brain voxel
is at least :data:`~medadv_monai.data.synthetic.MIN_BRAIN_INTENSITY`, so ``image > 0`` is the brain mask.

**Tumour** (``tumour=True``): centred in deep supratentorial white matter; an irregular enhancing shell (label 4,
outer radius 10..28 mm, wall 3..8 mm) around a necrotic core (label 1), and oedema (label 2) grown from it as a
front that spreads easily through white matter, slowly through grey matter and not into CSF (a geodesic reach of
8..35 mm). Tumour tissue is textured; its contrast follows BraTS (FLAIR/T2 oedema bright, T1 hypointense, T1ce
rim enhancing, necrosis dark on T1/T1ce and bright on T2; the medians of :data:`ANATOMY_MEANS` were matched to
real BraTS 2018 cases). A tumour subject has all of labels 1, 2 and 4; ``tumour=False`` gives the same brain,
bias and noise with no tumour (the voxels away from the tumour are identical).
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import graph

from medadv_monai.data.layouts import MODALITIES
from medadv_monai.data.synthetic import (
    DEFAULT_SUBJECTS,
    MIN_BRAIN_INTENSITY,
    _smooth_field,
    check_args,
    has_tumour,
)
from medadv_monai.data.synthetic_dataset import write_subjects
from medadv_monai.errors import MedAdvInputError

__all__ = [
    "ANATOMY_DEFAULT_SHAPE",
    "ANATOMY_MEANS",
    "ANATOMY_MIN_DIM",
    "BRATS_SHAPE",
    "anatomical_subject",
    "make_anatomical_brats",
    "voxel_size",
]

BRATS_SHAPE: tuple[int, int, int] = (240, 240, 155)
ANATOMY_DEFAULT_SHAPE: tuple[int, int, int] = (96, 96, 64)
ANATOMY_MIN_DIM = 16
"""Smallest allowed size of each axis (a smaller brain has no room for a tumour with three labels)."""

ANATOMY_MEANS: dict[str, dict[str, float]] = {
    "t1": {"csf": 230.0, "gm": 560.0, "wm": 720.0, "necrosis": 480.0, "oedema": 570.0, "enhancing": 590.0},
    "t1ce": {"csf": 230.0, "gm": 590.0, "wm": 700.0, "necrosis": 480.0, "oedema": 540.0, "enhancing": 950.0},
    "t2": {"csf": 1050.0, "gm": 500.0, "wm": 420.0, "necrosis": 980.0, "oedema": 740.0, "enhancing": 820.0},
    "flair": {"csf": 120.0, "gm": 520.0, "wm": 430.0, "necrosis": 800.0, "oedema": 720.0, "enhancing": 720.0},
}
"""Mean raw intensity of each tissue in each modality, before the per-subject gain, texture, bias and noise."""

_TUMOUR = ("necrosis", "enhancing", "oedema")
_SEG = {"necrosis": 1, "enhancing": 4, "oedema": 2}
_TOP_MARGIN = 0.04  # share of the z axis left empty above the vertex
_FILL_XY = 0.92  # largest share of an in-plane axis the template brain may take
_STREAM = 2  # random stream id (the geometric generator uses 0 and 1)


# ---------------------------------------------------------------------------------------------------- template
@functools.lru_cache(maxsize=1)
def _template() -> dict[str, np.ndarray]:
    """The 1 mm MNI152 2009 brain mask and GM/WM/CSF fractions, LPS array order (cached)."""
    try:
        from nilearn import datasets
    except ImportError as exc:  # a declared dependency: only a broken install gets here
        raise MedAdvInputError("anatomical synthetic BraTS needs nilearn (its bundled MNI152 template); "
                               "expected it installed: pip install nilearn") from exc
    load = {"mask": datasets.load_mni152_brain_mask, "gm": datasets.load_mni152_gm_template,
            "wm": datasets.load_mni152_wm_template}
    out = {k: np.ascontiguousarray(np.asarray(f(resolution=1).get_fdata(), np.float32)[::-1, ::-1])
           for k, f in load.items()}
    mask = out["mask"] > 0.5
    gm, wm = (np.clip(out[k], 0.0, 1.0) * mask for k in ("gm", "wm"))
    total = np.maximum(gm + wm, np.float32(1.0))
    out.update(gm=gm / total, wm=wm / total, mask=mask.astype(np.float32))
    out["csf"] = (1.0 - out["gm"] - out["wm"]) * out["mask"]
    return out


@functools.lru_cache(maxsize=4)
def _filtered(sigma: float) -> dict[str, np.ndarray]:
    """The template maps low-pass filtered with a Gaussian of ``sigma`` mm (before sampling coarser voxels)."""
    maps = _template()
    if sigma <= 0.0:
        return maps
    return {k: ndimage.gaussian_filter(v, sigma, mode="constant") for k, v in maps.items()}


@functools.lru_cache(maxsize=1)
def _anchor_and_extent() -> tuple[np.ndarray, np.ndarray]:
    """Template anchor (centre in x, y; top of the brain in z; voxels) and brain extent (mm) per axis."""
    idx = np.argwhere(_template()["mask"] > 0.5)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    return np.array([(lo[0] + hi[0]) / 2.0, (lo[1] + hi[1]) / 2.0, float(hi[2])]), (hi - lo + 1).astype(float)


def voxel_size(shape: Sequence[int]) -> float:
    """Isotropic voxel size (mm) of a grid of ``shape``: 1 mm when the template brain fits, else larger."""
    _, extent = _anchor_and_extent()
    fill = np.array([_FILL_XY, _FILL_XY, 1.0])  # the brain stem may be cut
    return float(max(1.0, *(extent / (np.asarray(shape, dtype=float) * fill))))


# ------------------------------------------------------------------------------------------------------ anatomy
def _rotation(rng: np.random.Generator, max_deg: Sequence[float]) -> np.ndarray:
    """Rotation by small random angles (uniform in +-``max_deg`` degrees) about x, y and z."""
    a = np.deg2rad(rng.uniform(-1.0, 1.0, size=3) * np.asarray(max_deg, dtype=float))
    c, s = np.cos(a), np.sin(a)
    rx = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
    ry = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
    rz = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
    return rz @ ry @ rx


def _anatomy(rng: np.random.Generator, shape: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """Deform the template onto ``shape``: brain mask, GM/WM/CSF fractions and template z (voxels) per voxel."""
    s = voxel_size(shape)
    maps = _filtered(round(0.5 * math.sqrt(s * s - 1.0), 2))
    anchor_tpl, _ = _anchor_and_extent()
    n = np.asarray(shape, dtype=float)
    anchor_out = np.array([(n[0] - 1) / 2.0, (n[1] - 1) / 2.0, n[2] - 1 - max(1.0, _TOP_MARGIN * n[2])])
    scale = rng.uniform(0.9, 1.03) * rng.uniform(0.96, 1.04, size=3)
    matrix = (_rotation(rng, (4.0, 3.0, 5.0)) / scale[None, :] * s).astype(np.float32)  # out voxel -> template mm
    amp = rng.uniform(2.0, 4.0)
    cycles = n * s / 80.0  # wavelengths of ~80 mm and more
    axes = [np.arange(k, dtype=np.float32) - np.float32(a) for k, a in zip(shape, anchor_out)]
    grid = (axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :])
    coords = np.empty((3, *shape), dtype=np.float32)
    for r in range(3):
        coords[r] = (matrix[r, 0] * grid[0] + matrix[r, 1] * grid[1] + matrix[r, 2] * grid[2]
                     + np.float32(anchor_tpl[r]) + np.float32(amp) * _smooth_field(rng, shape, cycles, rank=4))
    brain = ndimage.map_coordinates(maps["mask"], coords, order=1, mode="constant", prefilter=False) > 0.5
    inside = coords[:, brain]
    out = {"brain": brain, "tz": coords[2]}
    for key in ("gm", "wm"):
        out[key] = np.zeros(shape, dtype=np.float32)
        out[key][brain] = ndimage.map_coordinates(maps[key], inside, order=1, mode="constant", prefilter=False)
    norm = np.maximum(out["gm"] + out["wm"], np.float32(1.0))
    out["gm"] /= norm
    out["wm"] /= norm
    out["csf"] = np.where(brain, 1.0 - out["gm"] - out["wm"], np.float32(0.0)).astype(np.float32)
    return out


# ------------------------------------------------------------------------------------------------------- tumour
def _tumour(
    rng: np.random.Generator, anat: dict[str, np.ndarray], s: float
) -> tuple[tuple[slice, ...], dict[str, np.ndarray], np.ndarray]:
    """Draw a tumour: its bounding box, the masks of necrosis, enhancing rim and oedema in it, and the oedema's
    strength (its contrast factor, fading from 1.2 at the core to 0.5 at its edge)."""
    shape = anat["brain"].shape
    tz_mm = anat["tz"] - 72.0  # MNI z (mm; the template's z origin is -72): keep to the cerebrum, under the vertex
    for wm_min in (0.9, 0.6, 0.0):
        candidates = np.flatnonzero(anat["brain"] & (anat["wm"] > wm_min) & (tz_mm > -20.0) & (tz_mm < 60.0))
        if candidates.size:
            break
    else:
        candidates = np.flatnonzero(anat["brain"])
    centre = np.array(np.unravel_index(candidates[rng.integers(candidates.size)], shape), dtype=float)
    wall = max(rng.uniform(3.0, 8.0) / s, 1.2)  # voxels
    r_out = max(math.exp(rng.uniform(math.log(10.0), math.log(28.0))) / s, wall + 1.3)
    reach_oedema = rng.uniform(8.0, 35.0) / s
    reach = 1.2 * r_out + reach_oedema + 2.0
    lo = np.maximum(np.floor(centre - reach).astype(int), 0)
    hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, np.asarray(shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))

    rot = _rotation(rng, (180.0, 90.0, 180.0))
    radii = r_out * rng.uniform(0.75, 1.0, size=3)
    rel = [np.arange(n, dtype=np.float32) + np.float32(a - c) for n, a, c in zip(box_shape, lo, centre)]
    grid = (rel[0][:, None, None], rel[1][None, :, None], rel[2][None, None, :])
    d2 = np.zeros(box_shape, dtype=np.float32)
    for k in range(3):
        q = np.float32(rot[0, k]) * grid[0] + np.float32(rot[1, k]) * grid[1] + np.float32(rot[2, k]) * grid[2]
        d2 += (q / np.float32(radii[k])) ** 2
    d = np.sqrt(d2)  # 1 at the enhancing shell's outer surface
    bumps = np.asarray(box_shape, dtype=float) / max(r_out, 1.0)
    brain = anat["brain"][box]
    core = (d < 1.0 + 0.2 * _smooth_field(rng, box_shape, bumps)) & brain
    necrosis = core & (d < (1.0 - wall / r_out) * (1.0 + 0.3 * _smooth_field(rng, box_shape, 1.5 * bumps)))
    c_box = tuple(int(c - a) for c, a in zip(centre, lo))
    necrosis[c_box] = core[c_box] = True  # never an empty core or rim, even on coarse grids
    enhancing = core & ~necrosis
    if not enhancing.any():
        enhancing = ndimage.binary_dilation(necrosis) & brain & ~necrosis
        core |= enhancing

    # oedema: a front from the core, fast through WM, slow through GM, stopped by CSF: a minimum-cost (geodesic)
    # distance in mm on a ~2 mm sub-grid of the box
    step = max(1, int(round(2.0 / s)))
    sub = (slice(None, None, step),) * 3
    ease = (anat["wm"][box] + 0.1 * anat["gm"][box])[sub]
    ease *= 1.0 + 0.3 * _smooth_field(rng, ease.shape, np.asarray(ease.shape) * s * step / 15.0)
    cost = np.where((ease > 0.15) & brain[sub], 1.0 / np.clip(ease, 0.15, 1.0), np.inf)
    starts = np.argwhere(core[sub])
    if starts.size == 0:
        starts = np.array([[c // step for c in c_box]])
    distance = graph.MCP_Geometric(cost).find_costs(starts)[0] * (s * step)
    distance = np.where(np.isfinite(distance), distance, 1e6).astype(np.float32)
    if step > 1:  # back to the box's grid (zoom factors n/m give exactly n voxels)
        zoom = [n / m for n, m in zip(box_shape, distance.shape)]
        distance = ndimage.zoom(distance, zoom, order=1, mode="nearest", grid_mode=True)
    oedema = (distance < reach_oedema * s) & brain & ~core
    if not oedema.any():
        oedema = ndimage.binary_dilation(core) & brain & ~core
    strength = np.clip(1.2 - 0.6 * distance / (reach_oedema * s), 0.5, 1.2)  # oedema fades away from the core
    return box, {"necrosis": necrosis, "enhancing": enhancing, "oedema": oedema}, strength.astype(np.float32)


# ------------------------------------------------------------------------------------------------------ imaging
def _render(
    rng: np.random.Generator,
    modality: str,
    anat: dict[str, np.ndarray],
    tumour: tuple[np.random.Generator, tuple[slice, ...], dict[str, np.ndarray], np.ndarray, float] | None,
    spacing: float,
    noise: float,
    bias: float,
) -> np.ndarray:
    """One raw-intensity float32 volume of ``modality``; background exactly 0.

    ``rng`` draws everything but the tumour's texture, which comes from the tumour's own generator (first item of
    ``tumour``), so a subject with and without tumour share their brain, gain, bias field and noise.
    """
    means = ANATOMY_MEANS[modality]
    brain, shape = anat["brain"], anat["brain"].shape
    wm = np.float32(means["wm"])  # normal-tissue contrast varies +-15 % between subjects (scanners, sequences)
    image = sum(np.float32(wm + rng.uniform(0.85, 1.15) * (means[t] - wm)) * anat[t] for t in ("csf", "gm", "wm"))
    image *= 1.0 + np.float32(0.03) * _smooth_field(rng, shape, np.asarray(shape) * spacing / 12.0, rank=6)
    gain = np.float32(rng.uniform(0.7, 1.4))
    field = np.exp(np.float32(bias) * _smooth_field(rng, shape, cycles=1.0, rank=4)) * gain if bias > 0.0 else gain
    image *= field
    sigma = np.float32(noise * float(image[brain].mean())) if brain.any() else np.float32(0.0)  # tumour-free
    if tumour is not None:
        tumour_rng, box, soft, strength, contrast = tumour
        region = image[box]  # a view
        total = sum(soft.values())
        texture = 1.0 + np.float32(0.15) * _smooth_field(tumour_rng, total.shape, np.asarray(total.shape) * spacing / 6)
        lesion = sum(f * (wm + np.float32(contrast * (means[t] - wm)) * (strength if t == "oedema" else 1.0))
                     for t, f in soft.items()) * texture
        region[...] = (1.0 - total) * region + lesion * (field[box] if bias > 0.0 else gain)
    values = image[brain]
    if noise > 0.0 and values.size:
        real = values + sigma * rng.standard_normal(values.size, dtype=np.float32)
        imag = sigma * rng.standard_normal(values.size, dtype=np.float32)
        values = np.sqrt(real * real + imag * imag)
    out = np.zeros(shape, dtype=np.float32)
    out[brain] = np.maximum(values, np.float32(MIN_BRAIN_INTENSITY))
    return out


def _check_subject_args(seed: object, index: object, shape: object, noise: object, bias: object,
                        where: str) -> tuple[int, tuple[int, int, int], float, float]:
    try:
        _, shape3, seed_, _, noise_, bias_ = check_args(1, shape, seed, 0.5, noise, bias)
    except MedAdvInputError as exc:
        raise MedAdvInputError(str(exc).replace("make_synthetic_brats", where)) from None
    if min(shape3) < ANATOMY_MIN_DIM:
        raise MedAdvInputError(f"{where}: shape={shape!r} is invalid; expected three integers >= "
                               f"{ANATOMY_MIN_DIM} (x, y, z), e.g. {ANATOMY_DEFAULT_SHAPE} or {BRATS_SHAPE}")
    if not isinstance(index, numbers.Integral) or isinstance(index, bool) or int(index) < 0:
        raise MedAdvInputError(f"{where}: index={index!r} is invalid; expected an integer >= 0")
    return seed_, shape3, noise_, bias_


def anatomical_subject(
    seed: int,
    index: int,
    shape: Sequence[int] = ANATOMY_DEFAULT_SHAPE,
    tumour: bool = True,
    noise: float = 0.03,
    bias: float = 0.25,
    with_tissue: bool = False,
) -> dict[str, np.ndarray]:
    """Generate anatomical synthetic subject ``index`` of run ``seed`` in memory.

    Args:
        seed: random seed, >= 0.
        index: subject index, >= 0; the subject depends only on ``(seed, index, shape, tumour, noise, bias)``.
        shape: volume shape ``(x, y, z)``, ``z`` axial, each >= :data:`ANATOMY_MIN_DIM`; :data:`BRATS_SHAPE` gives
            the BraTS grid at 1 mm.
        tumour: whether the subject has a tumour (the brain, bias and noise are the same either way).
        noise: Rician noise standard deviation relative to the mean brain intensity, >= 0.
        bias: amplitude of the multiplicative bias field ``exp(bias * f)``, ``f`` in [-1, 1]; >= 0.
        with_tissue: also return the float32 tissue fractions ``"gm"``, ``"wm"``, ``"csf"`` (0 outside the brain).

    Returns:
        ``{"t1", "t1ce", "t2", "flair"}``: float32 volumes of ``shape``; ``"seg"``: uint8 labels {0, 1, 2, 4}.

    Raises:
        MedAdvInputError: a bad argument; the message names it, its value and what was expected.
    """
    seed, shape3, noise, bias = _check_subject_args(seed, index, shape, noise, bias, "anatomical_subject")
    streams = [np.random.default_rng([seed, _STREAM, int(index), k]) for k in range(3)]
    anat = _anatomy(streams[0], shape3)
    seg = np.zeros(shape3, dtype=np.uint8)
    lesion = None
    s = voxel_size(shape3)
    if tumour:
        box, masks, strength = _tumour(streams[1], anat, s)
        soft = {}
        for name, mask in masks.items():
            seg[box][mask] = _SEG[name]
            soft[name] = ndimage.gaussian_filter(mask.astype(np.float32), 0.5, mode="constant") * anat["brain"][box]
        total = np.maximum(sum(soft.values()), np.float32(1.0))
        contrast = float(streams[1].uniform(0.7, 1.3))
        lesion = (streams[1], box, {k: v / total for k, v in soft.items()}, strength, contrast)
    out = {m: _render(streams[2], m, anat, lesion, s, noise, bias) for m in MODALITIES}
    out["seg"] = seg
    if with_tissue:
        out.update({k: anat[k] for k in ("gm", "wm", "csf")})
    return out


def _affine(shape: Sequence[int], spacing: float) -> np.ndarray:
    """The LPS affine of BraTS volumes, for the array orientation of :func:`anatomical_subject`."""
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[1, 3] = (shape[1] - 1) * spacing
    return affine


def make_anatomical_brats(
    out_dir: str | os.PathLike,
    subjects: int = DEFAULT_SUBJECTS,
    shape: Sequence[int] = ANATOMY_DEFAULT_SHAPE,
    seed: int = 0,
    tumour_fraction: float = 0.75,
    noise: float = 0.03,
    bias: float = 0.25,
    overwrite: bool = False,
) -> list[Path]:
    """Write a seeded anatomical synthetic BraTS 2021 dataset and return its subject folders.

    Each subject ``i`` goes to ``out_dir/BraTS2021_{i:05d}/BraTS2021_{i:05d}_{t1,t1ce,t2,flair,seg}.nii.gz`` (LPS
    affine of :func:`voxel_size` mm), written into a temporary folder renamed into place, so a folder is whole or
    absent; a complete folder is left alone unless ``overwrite``. Whether subject ``i`` has a tumour follows
    :func:`~medadv_monai.data.synthetic.has_tumour` (as the geometric generator: with two or more subjects and
    ``0 < tumour_fraction < 1`` there is at least one subject with and one without a tumour).

    Args:
        out_dir: dataset folder (created if missing).
        subjects: number of subjects, >= 1.
        shape: volume shape ``(x, y, z)``; see :func:`anatomical_subject`.
        seed: random seed, >= 0.
        tumour_fraction: share of subjects with a tumour, in [0, 1].
        noise: see :func:`anatomical_subject`.
        bias: see :func:`anatomical_subject`.
        overwrite: regenerate subjects whose folder is already complete.

    Returns:
        The subject folders, in order (including the ones left alone).

    Raises:
        MedAdvInputError: a bad argument (``out_dir`` an existing file, ...); the message names it.
    """
    where = "make_anatomical_brats"
    try:
        subjects, _, _, tumour_fraction, _, _ = check_args(subjects, shape, seed, tumour_fraction, noise, bias)
    except MedAdvInputError as exc:
        raise MedAdvInputError(str(exc).replace("make_synthetic_brats", where)) from None
    seed, shape3, noise, bias = _check_subject_args(seed, 0, shape, noise, bias, where)
    # write_subjects' errors name the folder or file, as make_synthetic_brats' do
    return write_subjects(out_dir, subjects, lambda index: anatomical_subject(
        seed, index, shape3, has_tumour(seed, index, tumour_fraction), noise, bias),
        _affine(shape3, voxel_size(shape3)), overwrite,
        {"generator": "anatomical", "shape": shape3, "seed": seed, "tumour_fraction": tumour_fraction,
         "noise": noise, "bias": bias})
