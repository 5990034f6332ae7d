"""A seeded synthetic BraTS 2021 look-alike, so that every pipeline runs and is tested without the real data.

:func:`synthetic_subject` draws one subject's four modalities and segmentation;
:func:`~medadv_monai.data.synthetic_dataset.make_synthetic_brats` writes one folder per subject in the BraTS 2021
layout::

    out_dir/BraTS2021_00000/BraTS2021_00000_t1.nii.gz
                            BraTS2021_00000_t1ce.nii.gz
                            BraTS2021_00000_t2.nii.gz
                            BraTS2021_00000_flair.nii.gz
                            BraTS2021_00000_seg.nii.gz

Each volume has axes ``(x, y, z)`` with ``z`` the axial (slice) axis, as in real BraTS (240 x 240 x 155), and a
1 mm isotropic identity affine.

**The phantom.** A skull-stripped brain: an ellipsoid with a slightly irregular surface, a random size and a
random position jitter per subject. It fills most of the in-plane field of view and most of ``z``: a few slices
at the top and bottom stay empty and, the brain being an ellipsoid, the slices near its poles hold little brain.
Inside it sit a grey-matter (GM) cortical ribbon with a wavy (gyral) inner border, white matter (WM), two deep
grey-matter nuclei and two lateral ventricles filled with cerebrospinal fluid (CSF).

**The tumour** (in a ``tumour_fraction`` share of subjects) is an ellipsoid of random size, elongation and
orientation, distorted by smooth noise, placed at random inside the brain. From the inside out it has a necrotic
core (label 1, NCR; absent in some tumours), an enhancing rim (label 4, ET) and peritumoral oedema (label 2, ED).
It never spans more than part of the brain's axial extent, so a tumour subject also has tumour-free brain slices.

**Contrasts** (:data:`TISSUE_MEANS`, mean raw intensity per tissue and modality) follow the usual appearance:

=========  ======  ======  ======  ======  =========  ==========  ==========
modality   CSF     GM      WM      NCR     ED         ET          note
=========  ======  ======  ======  ======  =========  ==========  ==========
T1         dark    mid     bright  dark    mid-dark   iso (GM)    WM > GM
T1ce       dark    mid     bright  dark    mid-dark   very bright enhancement
T2         bright  mid     dark    bright  bright     mid-bright  WM < GM
FLAIR      dark    mid     dark    mid     bright     mid-bright  CSF nulled
=========  ======  ======  ======  ======  =========  ==========  ==========

Tumour contrast is scaled per subject by a random factor (tumour tissue = WM + factor x (table value - WM)), so
it is learnable but not trivial. Intensities are float32 in raw scanner-like units (brain tissue roughly
200..1500), multiplied by a random global gain per subject and modality and **not** normalised, so a per-volume
robust intensity scaling matters downstream. Each modality then gets a light tissue texture, a little
partial-volume blur, a smooth multiplicative bias field ``exp(bias * f)`` with ``f`` a low-frequency field in
[-1, 1], and Rician noise whose standard deviation is ``noise`` times the mean brain intensity. Noise, bias and
blur are applied inside the brain only; the background is exactly 0 in all four modalities and every brain voxel
is at least :data:`MIN_BRAIN_INTENSITY`. The segmentation is uint8 with labels {0, 1, 2, 4}, non-zero only inside
the brain.

**Determinism.** Subject ``i`` is drawn from ``np.random.default_rng([seed, 1, i])`` alone, so its voxels depend
only on ``(seed, i, shape, tumour_fraction, noise, bias)``: generating 4 subjects gives the same first 4 subjects
as generating 16. Whether subject ``i`` has a tumour follows a seeded low-discrepancy sequence (so any prefix of
the subjects holds close to a ``tumour_fraction`` share of tumours) except that, when ``0 < tumour_fraction < 1``,
one of subjects 0 and 1 (chosen by the seed) always has a tumour and the other never has, so every run of two or
more subjects has both kinds.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medadv_monai.data.layouts import MODALITIES
from medadv_monai.errors import MedAdvInputError

__all__ = [
    "DEFAULT_SHAPE",
    "DEFAULT_SUBJECTS",
    "MODALITIES",
    "SEG_LABELS",
    "TISSUE_MEANS",
    "MIN_BRAIN_INTENSITY",
    "MIN_DIM",
    "subject_name",
    "has_tumour",
    "synthetic_subject",
    "check_args",
]

SEG_LABELS: tuple[int, ...] = (0, 1, 2, 4)
MIN_BRAIN_INTENSITY = 1.0
"""Smallest value a brain voxel may take, so that ``image > 0`` is exactly the brain mask."""
MIN_DIM = 8
# The demo's dataset: enough subjects that a 70/15/15 split validates on several tumour subjects, at the
# classifier's in-plane size so no resampling is needed. 240x240x155 (BraTS) works too.
DEFAULT_SUBJECTS = 40
DEFAULT_SHAPE: tuple[int, int, int] = (64, 64, 48)
"""Smallest allowed size of each volume axis."""

TISSUE_MEANS: dict[str, dict[str, float]] = {
    "t1": {"csf": 300.0, "gm": 620.0, "wm": 900.0, "necrosis": 320.0, "oedema": 560.0, "enhancing": 620.0},
    "t1ce": {"csf": 280.0, "gm": 650.0, "wm": 880.0, "necrosis": 300.0, "oedema": 580.0, "enhancing": 1450.0},
    "t2": {"csf": 1500.0, "gm": 820.0, "wm": 560.0, "necrosis": 1350.0, "oedema": 1200.0, "enhancing": 950.0},
    "flair": {"csf": 180.0, "gm": 680.0, "wm": 520.0, "necrosis": 650.0, "oedema": 1250.0, "enhancing": 950.0},
}
"""Mean raw intensity of each tissue in each modality, before the per-subject gain, texture, bias and noise."""

# internal tissue codes of the phantom's tissue map (index into a per-modality look-up table)
_TISSUES: tuple[str, ...] = ("background", "csf", "gm", "wm", "necrosis", "oedema", "enhancing")
_CODE = {name: code for code, name in enumerate(_TISSUES)}
_TUMOUR_TISSUES: tuple[str, ...] = ("necrosis", "oedema", "enhancing")
_SEG_OF_TISSUE = {"necrosis": 1, "oedema": 2, "enhancing": 4}

_BLUR_SIGMA = 0.6  # partial-volume blur, voxels
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0  # step of the low-discrepancy tumour/no-tumour sequence
_FLAG_STREAM, _SUBJECT_STREAM = 0, 1  # keep the per-run and the per-subject random streams apart


# ----------------------------------------------------------------------------------------------------- arguments
def _fail(name: str, value: object, expected: str) -> MedAdvInputError:
    return MedAdvInputError(f"make_synthetic_brats: {name}={value!r} is invalid; expected {expected}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_args(
    subjects: object, shape: object, seed: object, tumour_fraction: object, noise: object, bias: object
) -> tuple[int, tuple[int, int, int], int, float, float, float]:
    """Validate and normalise the generator's arguments; raise :class:`MedAdvInputError` naming the bad one."""
    if not _is_int(subjects) or int(subjects) < 1:
        raise _fail("subjects", subjects, "an integer >= 1")
    if (
        isinstance(shape, (str, bytes))
        or not isinstance(shape, (Sequence, np.ndarray))
        or len(shape) != 3
        or not all(_is_int(s) and int(s) >= MIN_DIM for s in shape)
    ):
        raise _fail("shape", shape, f"three integers >= {MIN_DIM} (x, y, z), e.g. (96, 96, 64)")
    if not _is_int(seed) or int(seed) < 0:
        raise _fail("seed", seed, "an integer >= 0")
    floats = {}
    for name, value, expected in (
        ("tumour_fraction", tumour_fraction, "a number in [0, 1]"),
        ("noise", noise, "a finite number >= 0"),
        ("bias", bias, "a finite number >= 0"),
    ):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(float(value)):
            raise _fail(name, value, expected)
        floats[name] = float(value)
    if not 0.0 <= floats["tumour_fraction"] <= 1.0:
        raise _fail("tumour_fraction", tumour_fraction, "a number in [0, 1]")
    for name in ("noise", "bias"):
        if floats[name] < 0.0:
            raise _fail(name, floats[name], "a finite number >= 0")
    shape3 = (int(shape[0]), int(shape[1]), int(shape[2]))  # type: ignore[index]
    return int(subjects), shape3, int(seed), floats["tumour_fraction"], floats["noise"], floats["bias"]


# ------------------------------------------------------------------------------------------------------ helpers
def subject_name(index: int) -> str:
    """BraTS 2021 style subject id, e.g. ``BraTS2021_00007``."""
    return f"BraTS2021_{index:05d}"


def has_tumour(seed: int, index: int, tumour_fraction: float) -> bool:
    """Whether subject ``index`` of a run with ``seed`` gets a tumour (see the module docstring for the rule)."""
    if tumour_fraction <= 0.0:
        return False
    if tumour_fraction >= 1.0:
        return True
    rng = np.random.default_rng([seed, _FLAG_STREAM])
    first_with_tumour = int(rng.integers(2))
    offset = float(rng.random())
    if index < 2:
        return index == first_with_tumour
    return (offset + index * _GOLDEN) % 1.0 < tumour_fraction


def _smooth_field(
    rng: np.random.Generator, shape: Sequence[int], cycles: float | Sequence[float], rank: int = 6, terms: int = 3
) -> np.ndarray:
    """A random smooth field in [-1, 1] with zero mean.

    The field is a sum of ``rank`` separable products ``f(x) g(y) h(z)`` of random 1-D cosine series, which is
    smooth, cheap (one ``einsum``, no loop over voxels) and exactly reproducible.

    Args:
        rng: random generator.
        shape: field shape.
        cycles: highest number of cosine cycles across each axis (one number or one per axis).
        rank: number of separable products summed.
        terms: cosines per 1-D factor.
    """
    cycles_per_axis = np.broadcast_to(np.asarray(cycles, dtype=np.float64), (3,))
    factors = []
    for n, c in zip(shape, cycles_per_axis):
        t = np.linspace(0.0, 1.0, int(n))
        freq = rng.uniform(0.25, 1.0, size=(rank, terms, 1)) * c
        phase = rng.uniform(0.0, 2.0 * np.pi, size=(rank, terms, 1))
        amp = rng.standard_normal(size=(rank, terms, 1))
        factors.append((amp * np.cos(2.0 * np.pi * freq * t + phase)).sum(axis=1).astype(np.float32))
    fx, fy, fz = factors  # (rank, n) each
    field = np.einsum("kx,kyz->xyz", fx, fy[:, :, None] * fz[:, None, :])
    field -= field.mean()
    peak = float(np.abs(field).max())
    if peak > 0.0:
        field /= peak
    return field


def _grid(shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel coordinates as three broadcastable float32 arrays of shapes (X,1,1), (1,Y,1), (1,1,Z)."""
    x, y, z = (np.arange(int(n), dtype=np.float32) for n in shape)
    return x[:, None, None], y[None, :, None], z[None, None, :]


def _ellipsoid_r2(
    grid: tuple[np.ndarray, np.ndarray, np.ndarray], centre: Sequence[float], radii: Sequence[float]
) -> np.ndarray:
    """Squared normalised distance ``sum(((coord - centre) / radius) ** 2)``: < 1 inside the ellipsoid."""
    x, y, z = grid
    return (
        ((x - np.float32(centre[0])) / np.float32(radii[0])) ** 2
        + ((y - np.float32(centre[1])) / np.float32(radii[1])) ** 2
        + ((z - np.float32(centre[2])) / np.float32(radii[2])) ** 2
    )


# ----------------------------------------------------------------------------------------------------- anatomy
def _brain_phantom(
    rng: np.random.Generator, shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Draw a brain: tissue-code map, brain mask, brain centre and brain semi-axes (all in voxels).

    The brain is an ellipsoid (longest front to back, along ``y``) whose surface is jittered by 4 % with smooth
    noise; its axial extent leaves at least ``max(1, 6 %)`` empty slices at each end of ``z``.
    """
    n = np.asarray(shape, dtype=np.float64)
    margin_z = max(1, int(round(0.06 * n[2])))
    centre = n / 2.0 - 0.5 + rng.uniform(-0.02, 0.02, size=3) * n * np.array([1.0, 1.0, 0.5])
    radii = np.array([0.38, 0.44, 0.0]) * n * rng.uniform(0.92, 1.04, size=3)
    # largest axial semi-axis that keeps the (4 % bumpy) surface clear of the empty end slices
    room_z = min(centre[2], n[2] - 1.0 - centre[2]) - margin_z
    radii[2] = max(room_z / 1.05 * rng.uniform(0.9, 1.0), 2.0)

    grid = _grid(shape)
    rho2 = _ellipsoid_r2(grid, centre, radii)
    surface = 1.0 + 0.04 * _smooth_field(rng, shape, cycles=3.0)  # >= 0.96: normalised radius of the surface
    rho = np.sqrt(rho2) / surface  # < 1 inside the brain
    brain = rho < 1.0
    brain[:, :, :margin_z] = False
    brain[:, :, shape[2] - margin_z :] = False

    tissue = np.zeros(shape, dtype=np.uint8)
    # cortical ribbon: the outer ~15 % of the radius, with a wavy (gyral) inner border
    gyri = _smooth_field(rng, shape, cycles=12.0, rank=8)
    tissue[brain] = _CODE["wm"]
    tissue[brain & (rho > 0.84 + 0.1 * gyri)] = _CODE["gm"]
    # deep grey nuclei (thalamus / basal ganglia), left and right of the midline
    for side in (-1.0, 1.0):
        c = centre + radii * np.array([side * 0.22, -0.05, 0.0])
        r = radii * np.array([0.12, 0.18, 0.15]) * rng.uniform(0.85, 1.15, size=3)
        tissue[brain & (_ellipsoid_r2(grid, c, r) < 1.0)] = _CODE["gm"]
    # lateral ventricles: CSF, elongated front to back, size varies between subjects (atrophy)
    scale = rng.uniform(0.7, 1.4)
    for side in (-1.0, 1.0):
        c = centre + radii * np.array([side * 0.09, 0.05, 0.18])
        r = np.maximum(radii * np.array([0.07, 0.32, 0.12]) * scale * rng.uniform(0.9, 1.1, size=3), 0.75)
        tissue[brain & (_ellipsoid_r2(grid, c, r) < 1.0)] = _CODE["csf"]
    return tissue, brain, centre, radii


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation matrix."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _add_tumour(
    rng: np.random.Generator, tissue: np.ndarray, brain: np.ndarray, centre: np.ndarray, radii: np.ndarray
) -> None:
    """Paint a tumour (oedema, enhancing rim, optional necrotic core) into ``tissue`` in place, inside ``brain``.

    The outer (oedema) ellipsoid has a base radius of 12..50 % of the brain's mean in-plane semi-axis
    (log-uniform, so small tumours are common; at least 2.5 voxels), per-axis elongation 0.65..1, a random
    orientation and a boundary distorted by up to 30 %. It is shrunk if needed so that its half-extent along
    ``z`` is at most 45 % of the brain's axial semi-axis: with the distortion the tumour spans at most about
    1.2 of the brain's ~2 axial semi-axes, which leaves tumour-free brain slices. Its centre lies within 55 % of
    the brain radius, so the tumour always has voxels inside the brain.
    """
    shape = tissue.shape
    direction = rng.standard_normal(3)
    direction /= np.linalg.norm(direction)
    p = centre + direction * rng.uniform(0.0, 0.55) * radii
    base = max(float(np.exp(rng.uniform(np.log(0.12), np.log(0.5)))) * float(radii[:2].mean()), 2.5)
    r_axes = base * rng.uniform(0.65, 1.0, size=3)
    rot = _random_rotation(rng)  # column k: direction of the tumour's k-th semi-axis
    half_extent_z = float(np.sqrt(np.sum((rot[2, :] * r_axes) ** 2)))
    if half_extent_z > 0.45 * radii[2]:
        r_axes *= 0.45 * radii[2] / half_extent_z
        base = float(r_axes.max())
    r_enh = rng.uniform(0.45, 0.7)  # enhancing rim inside this fraction of the oedema radius
    r_core = r_enh * rng.uniform(0.4, 0.75) if rng.random() < 0.8 else 0.0  # some tumours have no core

    # work in the tumour's bounding box only
    reach = 1.3 * float(r_axes.max()) + 1.0
    lo = np.maximum(np.floor(p - reach).astype(int), 0)
    hi = np.minimum(np.ceil(p + reach).astype(int) + 1, np.asarray(shape))
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    box_shape = tuple(int(b - a) for a, b in zip(lo, hi))
    x, y, z = _grid(box_shape)
    dx, dy, dz = x + np.float32(lo[0] - p[0]), y + np.float32(lo[1] - p[1]), z + np.float32(lo[2] - p[2])
    d2 = np.zeros(box_shape, dtype=np.float32)
    for k in range(3):  # coordinates in the tumour's own (rotated) frame, normalised by its semi-axes
        qk = np.float32(rot[0, k]) * dx + np.float32(rot[1, k]) * dy + np.float32(rot[2, k]) * dz
        d2 += (qk / np.float32(r_axes[k])) ** 2
    d = np.sqrt(d2)
    # a few bumps across the tumour: cycles across the box ~ box size / tumour radius
    cycles = np.asarray(box_shape, dtype=np.float64) / max(base, 1.0)
    outer = d < 1.0 + 0.3 * _smooth_field(rng, box_shape, cycles=cycles)
    inner_scale = 1.0 + 0.3 * _smooth_field(rng, box_shape, cycles=cycles)

    region = tissue[box]  # a view: painting it paints ``tissue``
    inside = brain[box]
    region[outer & inside] = _CODE["oedema"]
    region[(d < r_enh * inner_scale) & inside] = _CODE["enhancing"]
    if r_core > 0.0:
        region[(d < r_core * inner_scale) & inside] = _CODE["necrosis"]


# ----------------------------------------------------------------------------------------------------- imaging
def _render(
    rng: np.random.Generator,
    modality: str,
    tissue: np.ndarray,
    brain: np.ndarray,
    brain_blur: np.ndarray,
    tumour_contrast: float,
    noise: float,
    bias: float,
) -> np.ndarray:
    """Turn a tissue map into one raw-intensity float32 volume of ``modality``; background exactly 0.

    ``brain_blur`` is the brain mask blurred like the image (positive inside the brain): dividing the blurred
    image by it keeps the background from darkening the brain's edge.
    """
    means = TISSUE_MEANS[modality]
    wm = means["wm"]
    lut = np.zeros(len(_TISSUES), dtype=np.float32)
    for name, code in _CODE.items():
        if name == "background":
            continue
        if name in _TUMOUR_TISSUES:  # per-subject contrast, with a small per-modality jitter
            lut[code] = wm + tumour_contrast * rng.uniform(0.9, 1.1) * (means[name] - wm)
        else:
            lut[code] = means[name]
    gain = np.float32(rng.uniform(0.7, 1.4))
    image = lut[tissue] * gain

    # texture: mild in normal tissue, stronger (heterogeneous) in the tumour
    tumour = tissue >= _CODE["necrosis"]
    texture = _smooth_field(rng, tissue.shape, cycles=10.0, rank=8)
    image *= 1.0 + np.where(tumour, np.float32(0.12), np.float32(0.04)) * texture

    # partial-volume blur inside the brain (normalised convolution: the background does not bleed in)
    smoothed = ndimage.gaussian_filter(np.where(brain, image, np.float32(0.0)), sigma=_BLUR_SIGMA, mode="constant")
    image = np.where(brain, smoothed / brain_blur, np.float32(0.0))

    # multiplicative low-frequency bias field
    if bias > 0.0:
        image *= np.exp(np.float32(bias) * _smooth_field(rng, tissue.shape, cycles=1.0, rank=4))

    # Rician noise inside the brain only, std = noise x mean brain intensity
    values = image[brain]
    if noise > 0.0 and values.size:
        sigma = np.float32(noise * float(values.mean()))
        real = values + sigma * rng.standard_normal(values.size, dtype=np.float32)
        imag = sigma * rng.standard_normal(values.size, dtype=np.float32)
        values = np.sqrt(real * real + imag * imag)
    image[brain] = np.maximum(values, np.float32(MIN_BRAIN_INTENSITY))
    image[~brain] = 0.0
    return image.astype(np.float32, copy=False)


def synthetic_subject(
    index: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    seed: int = 0,
    tumour_fraction: float = 0.75,
    noise: float = 0.03,
    bias: float = 0.25,
) -> dict[str, np.ndarray]:
    """Generate subject ``index`` in memory, exactly as :func:`make_synthetic_brats` writes it.

    Returns:
        ``{"t1", "t1ce", "t2", "flair"}``: float32 volumes of ``shape``; ``"seg"``: uint8 labels {0, 1, 2, 4}.

    Raises:
        MedAdvInputError: a bad argument (see :func:`make_synthetic_brats`) or a negative ``index``.
    """
    if not _is_int(index) or int(index) < 0:
        raise _fail("index", index, "an integer >= 0")
    _, shape3, seed, tumour_fraction, noise, bias = check_args(1, shape, seed, tumour_fraction, noise, bias)
    rng = np.random.default_rng([seed, _SUBJECT_STREAM, int(index)])
    tissue, brain, centre, radii = _brain_phantom(rng, shape3)
    if has_tumour(seed, int(index), tumour_fraction):
        _add_tumour(rng, tissue, brain, centre, radii)
    tumour_contrast = float(rng.uniform(0.6, 1.0))
    brain_blur = ndimage.gaussian_filter(brain.astype(np.float32), sigma=_BLUR_SIGMA, mode="constant")
    brain_blur = np.maximum(brain_blur, np.float32(1e-6))
    out = {m: _render(rng, m, tissue, brain, brain_blur, tumour_contrast, noise, bias) for m in MODALITIES}
    seg = np.zeros(shape3, dtype=np.uint8)
    for name, label in _SEG_OF_TISSUE.items():
        seg[tissue == _CODE[name]] = label
    out["seg"] = seg
    return out
