"""Patch masks: a rectangle, ellipse or elliptical ring placed on a 2D slice.

A patch is described by a :class:`PatchSpec` (shape, size, anchor, jitter, how to combine it with the tumour) and
drawn by :func:`patch_mask` for a whole batch at once. Placement works on the patch's bounding box of
``ph x pw`` pixels: the anchor gives a (sub-pixel) centre, the box's top-left corner is the centre minus
``(size - 1) / 2`` rounded to the nearest pixel, the jitter shifts it, and it is then clamped so the whole box lies
inside the image -- a patch is never clipped.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import torch
import torch.nn.functional as F

from medadv_monai.errors import MedAdvInputError
from medadv_monai.masks.core import COMBINE_MODES, check_batch, combine_masks, float_dtype, seg_mask

__all__ = ["ANCHORS", "SHAPES", "UNITS", "PatchSpec", "PatchSpecLike", "patch_mask"]

SHAPES: tuple[str, ...] = ("rect", "ellipse", "ellipse_ring")
UNITS: tuple[str, ...] = ("rel", "px")
ANCHORS: tuple[str, ...] = ("center", "grid", "random", "centroid", "bbox", "outside")
_TUMOUR_ANCHORS = ("centroid", "bbox", "outside")

_COMPACT = re.compile(r"^(?P<shape>\w+):(?P<w>[\d.]+)x(?P<h>[\d.]+)(?P<px>px)?@(?P<anchor>\w+)$")


def _choice(value: Any, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise MedAdvInputError(f"patch {what}: expected one of {list(allowed)}, got {value!r}")
    return value


def _int_pair(value: Any, what: str, minimum: int) -> tuple[int, int]:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise MedAdvInputError(f"patch {what}: expected a pair of integers, got {value!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in (a, b)):
        raise MedAdvInputError(f"patch {what}: expected a pair of integers >= {minimum}, got {value!r}")
    return int(a), int(b)


@dataclass(frozen=True)
class PatchSpec:
    """How to draw a patch mask.

    Attributes:
        shape: ``"rect"``, ``"ellipse"`` (inscribed in the box: semi-axes :math:`a = p_w/2,\\ b = p_h/2`) or
            ``"ellipse_ring"`` (the ellipse minus the concentric ellipse with semi-axes
            :math:`a - t_a,\\ b - t_b`).
        size: ``(width, height)``; fractions of the image width W and height H if ``units == "rel"``
            (:math:`p_w = \\mathrm{round}(w W)`), pixels if ``units == "px"``.
        units: ``"rel"`` or ``"px"``; also the unit of ``thickness``.
        anchor: where the patch centre goes: ``"center"`` (image centre), ``"grid"`` (centre of ``cell`` in a
            ``grid`` of rows x cols), ``"random"`` (uniform over all positions where the patch fits),
            ``"centroid"`` / ``"bbox"`` (tumour centroid / bounding-box centre; the image centre for an empty
            tumour), ``"outside"`` (uniform over the positions where the patch's pixels do not overlap the
            tumour).
        grid: ``(rows, cols)`` of the grid for ``anchor == "grid"``.
        cell: ``(row, col)`` of the grid cell, 0-based.
        jitter: maximum random shift in pixels, drawn uniformly in ``[-jitter, jitter]`` per axis and applied to
            the anchor before clamping. Ignored for ``"outside"`` (already random; a shift could overlap the
            tumour).
        thickness: ring thickness of ``"ellipse_ring"``: a fraction of each semi-axis in ``(0, 1]``
            (:math:`t_a = t\\,a`) if ``units == "rel"``, pixels if ``units == "px"``; at least 1 pixel is used.
        combine: how to combine the patch with the tumour, one of
            :data:`~medadv_monai.masks.core.COMBINE_MODES`.
    """

    shape: str = "rect"
    size: tuple[float, float] = (0.1, 0.1)
    units: str = "rel"
    anchor: str = "center"
    grid: tuple[int, int] = (3, 3)
    cell: tuple[int, int] = (1, 1)
    jitter: int = 0
    thickness: float = 0.3
    combine: str = "none"

    def __post_init__(self) -> None:
        _choice(self.shape, SHAPES, "shape")
        _choice(self.units, UNITS, "units")
        _choice(self.anchor, ANCHORS, "anchor")
        _choice(self.combine, COMBINE_MODES, "combine mode")
        try:
            w, h = (float(v) for v in self.size)
        except (TypeError, ValueError):
            raise MedAdvInputError(f"patch size: expected (width, height) numbers, got {self.size!r}") from None
        if not (w > 0 and h > 0 and math.isfinite(w) and math.isfinite(h)):
            raise MedAdvInputError(f"patch size: expected (width, height) > 0, got {self.size!r}")
        grid = _int_pair(self.grid, "grid", 1)
        cell = _int_pair(self.cell, "cell", 0)
        if cell[0] >= grid[0] or cell[1] >= grid[1]:
            raise MedAdvInputError(f"patch cell {cell} is outside the {grid[0]}x{grid[1]} grid in {self}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int) or self.jitter < 0:
            raise MedAdvInputError(f"patch jitter: expected an integer >= 0 (pixels), got {self.jitter!r}")
        thick = float(self.thickness)
        if not (thick > 0 and (thick <= 1 or self.units == "px")):
            expected = "pixels > 0" if self.units == "px" else "a fraction in (0, 1]"
            raise MedAdvInputError(f"patch thickness: expected {expected}, got {self.thickness!r}")
        for name, value in (("size", (w, h)), ("grid", grid), ("cell", cell), ("thickness", thick)):
            object.__setattr__(self, name, value)  # normalise lists from YAML/JSON to tuples

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PatchSpec:
        """Build a spec from a mapping of field names (e.g. a YAML config); unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise MedAdvInputError(f"patch spec: unknown keys {unknown}; expected a subset of {sorted(fields)}")
        return cls(**dict(d))

    @classmethod
    def from_string(cls, s: str) -> PatchSpec:
        """Parse the compact form ``"shape:WxH@anchor"`` (relative size) or ``"shape:WxHpx@anchor"`` (pixels).

        Example: ``"rect:0.1x0.1@center"``, ``"ellipse:12x8px@random"``. Other fields keep their defaults.
        """
        m = _COMPACT.match(s.strip())
        if m is None:
            raise MedAdvInputError(
                f"patch spec {s!r}: expected 'shape:WxH@anchor' or 'shape:WxHpx@anchor', e.g. 'rect:0.1x0.1@center'"
            )
        try:
            size = (float(m["w"]), float(m["h"]))
        except ValueError:
            raise MedAdvInputError(f"patch spec {s!r}: size {m['w']}x{m['h']} is not two numbers") from None
        return cls(shape=m["shape"], size=size, units="px" if m["px"] else "rel", anchor=m["anchor"])

    @classmethod
    def from_any(cls, spec: PatchSpecLike | None) -> PatchSpec:
        """Accept a :class:`PatchSpec`, a mapping, a compact string or ``None`` (the default spec)."""
        if spec is None:
            return cls()
        if isinstance(spec, PatchSpec):
            return spec
        if isinstance(spec, Mapping):
            return cls.from_dict(spec)
        if isinstance(spec, str):
            return cls.from_string(spec)
        raise MedAdvInputError(f"patch spec: expected a PatchSpec, dict or string, got {type(spec).__name__}")

    @property
    def name(self) -> str:
        """Short label for result tables, e.g. ``"rect_0.10x0.10_center"`` or ``"ellipse_12x8px_grid3x3r0c2"``."""
        w, h = self.size
        size = f"{w:.2f}x{h:.2f}" if self.units == "rel" else f"{w:g}x{h:g}px"
        parts = [self.shape, size]
        if self.shape == "ellipse_ring":
            parts[-1] += f"_t{self.thickness:g}"
        anchor = self.anchor
        if anchor == "grid":
            anchor += f"{self.grid[0]}x{self.grid[1]}r{self.cell[0]}c{self.cell[1]}"
        parts.append(anchor)
        if self.jitter:
            parts.append(f"j{self.jitter}")
        if self.combine != "none":
            parts.append(self.combine)
        return "_".join(parts)

    def pixel_size(self, height: int, width: int) -> tuple[int, int]:
        """The patch's bounding box ``(ph, pw)`` in pixels on an ``height x width`` image.

        Raises:
            MedAdvInputError: the box is larger than the image (the message names the spec and the image size).
        """
        w, h = self.size
        if self.units == "rel":
            pw, ph = max(1, math.floor(w * width + 0.5)), max(1, math.floor(h * height + 0.5))
        else:
            pw, ph = max(1, math.floor(w + 0.5)), max(1, math.floor(h + 0.5))
        too_big_rel = self.units == "rel" and (w > 1 or h > 1)
        if too_big_rel or pw > width or ph > height:
            raise MedAdvInputError(
                f"patch size {w:g}x{h:g} ({self.units}, WxH; {pw}x{ph} px) does not fit the image of "
                f"{width}x{height} px (WxH); spec: {self}"
            )
        return ph, pw


PatchSpecLike = Union[PatchSpec, Mapping[str, Any], str]


def _shape_mask(
    spec: PatchSpec, ph: int, pw: int, cy: torch.Tensor, cx: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor
) -> torch.Tensor:
    """Evaluate the patch shape with box centre ``(cy, cx)`` on pixel coordinates ``ys``, ``xs`` (broadcasting).

    With semi-axes :math:`a = p_w/2,\\ b = p_h/2` and :math:`q(a, b) = ((x-c_x)/a)^2 + ((y-c_y)/b)^2`:
    rect is :math:`|x - c_x| \\le (p_w-1)/2 \\wedge |y - c_y| \\le (p_h-1)/2`, ellipse is :math:`q(a, b) \\le 1`,
    ellipse_ring is :math:`q(a, b) \\le 1 \\wedge q(a - t_a, b - t_b) > 1` with :math:`t_a, t_b \\ge 1` pixel (a
    thinner digital ring could contain no pixel at all); if :math:`t_a \\ge a` or :math:`t_b \\ge b` it is the full
    ellipse.
    """
    dy, dx = ys - cy, xs - cx
    if spec.shape == "rect":
        return (dy.abs() <= (ph - 1) / 2) & (dx.abs() <= (pw - 1) / 2)
    a, b = pw / 2, ph / 2
    inside = (dx / a) ** 2 + (dy / b) ** 2 <= 1
    if spec.shape == "ellipse":
        return inside
    ta, tb = (spec.thickness * a, spec.thickness * b) if spec.units == "rel" else (spec.thickness,) * 2
    ia, ib = a - max(ta, 1.0), b - max(tb, 1.0)  # at least 1 px thick: a thinner ring can miss every pixel
    if ia <= 0 or ib <= 0:
        return inside
    return inside & ((dx / ia) ** 2 + (dy / ib) ** 2 > 1)


def _footprint(spec: PatchSpec, ph: int, pw: int, device: torch.device) -> torch.Tensor:
    """The patch's pixels inside its own ``ph x pw`` box, as a float32 ``(1, 1, ph, pw)`` conv weight."""
    ys = torch.arange(ph, device=device, dtype=torch.float32)[:, None]
    xs = torch.arange(pw, device=device, dtype=torch.float32)[None, :]
    c = torch.tensor([(ph - 1) / 2, (pw - 1) / 2], device=device)
    return _shape_mask(spec, ph, pw, c[0], c[1], ys, xs).float()[None, None]


def _randint(high: int, n: int, generator: torch.Generator | None, low: int = 0) -> torch.Tensor:
    """``n`` integers uniform in ``[low, high)``, drawn on the generator's device (CPU without one)."""
    device = generator.device if generator is not None else "cpu"
    return torch.randint(low, high, (n,), generator=generator, device=device)


def _tumour_centres(tumour: torch.Tensor, anchor: str, height: int, width: int) -> torch.Tensor:
    """Per-sample tumour centre ``(N, 2)`` as (y, x): centroid or bounding-box centre; image centre if empty."""
    t = seg_mask(tumour)[:, 0].float()  # (N, H, W)
    ys = torch.arange(height, device=t.device, dtype=torch.float32)[None, :, None].expand_as(t)
    xs = torch.arange(width, device=t.device, dtype=torch.float32)[None, None, :].expand_as(t)
    present = t > 0
    if anchor == "centroid":
        mass = t.flatten(1).sum(1).clamp_min(1)
        centre = torch.stack([(t * ys).flatten(1).sum(1), (t * xs).flatten(1).sum(1)], 1) / mass[:, None]
    else:
        inf = torch.tensor(float("inf"), device=t.device)
        lo = [torch.where(present, g, inf).flatten(1).amin(1) for g in (ys, xs)]
        hi = [torch.where(present, g, -inf).flatten(1).amax(1) for g in (ys, xs)]
        centre = torch.stack([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2], 1)
    image_centre = torch.tensor([(height - 1) / 2, (width - 1) / 2], device=t.device)
    return torch.where(present.flatten(1).any(1)[:, None], centre, image_centre)


def _outside_corners(
    spec: PatchSpec, tumour: torch.Tensor, ph: int, pw: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Top-left corners ``(N, 2)`` drawn uniformly among the positions where the patch misses the tumour.

    The overlap of the patch footprint :math:`P` placed at every corner is one cross-correlation
    :math:`(T \\star P)_{y_0, x_0}`; valid corners are those with zero overlap.
    """
    t = seg_mask(tumour).float()
    overlap = F.conv2d(t, _footprint(spec, ph, pw, t.device))  # (N, 1, H-ph+1, W-pw+1)
    valid = (overlap < 0.5).flatten(1)
    impossible = (~valid.any(1)).nonzero().flatten().tolist()
    if impossible:
        height, width = tumour.shape[-2:]
        raise MedAdvInputError(
            f"patch anchor 'outside': no position of the {pw}x{ph} px (WxH) patch on the {width}x{height} image "
            f"avoids the tumour in samples {impossible}: {spec}"
        )
    device = generator.device if generator is not None else valid.device
    flat = torch.multinomial(valid.float().to(device), 1, generator=generator)[:, 0]
    ncols = tumour.shape[-1] - pw + 1
    return torch.stack([flat // ncols, flat % ncols], 1)


def _anchor_centres(spec: PatchSpec, n: int, height: int, width: int, tumour: torch.Tensor | None) -> torch.Tensor:
    """Box centres ``(N, 2)`` as (y, x) in pixel coordinates (CPU) for the deterministic anchors."""
    if spec.anchor in ("centroid", "bbox"):
        return _tumour_centres(tumour, spec.anchor, height, width).cpu()
    if spec.anchor == "grid":
        (rows, cols), (r, c) = spec.grid, spec.cell
        return torch.tensor([[(r + 0.5) * height / rows - 0.5, (c + 0.5) * width / cols - 0.5]]).expand(n, 2)
    return torch.tensor([[(height - 1) / 2, (width - 1) / 2]]).expand(n, 2)  # center


def _corners(
    spec: PatchSpec,
    n: int,
    height: int,
    width: int,
    ph: int,
    pw: int,
    tumour: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Top-left corners ``(N, 2)`` (y, x; int64, CPU or generator device) of the patch box for every sample.

    Random draws happen in a fixed order (anchor, then jitter), so a seeded generator gives the same corners.
    """
    if spec.anchor == "outside":
        return _outside_corners(spec, tumour, ph, pw, generator)
    if spec.anchor == "random":
        corners = torch.stack([_randint(height - ph + 1, n, generator), _randint(width - pw + 1, n, generator)], 1)
    else:
        half = torch.tensor([(ph - 1) / 2, (pw - 1) / 2])
        corners = torch.floor(_anchor_centres(spec, n, height, width, tumour) - half + 0.5).long()
    if spec.jitter:
        shift = [_randint(spec.jitter + 1, n, generator, low=-spec.jitter) for _ in range(2)]
        corners = corners.to(shift[0].device) + torch.stack(shift, 1)
    limit = torch.tensor([height - ph, width - pw], device=corners.device)
    return torch.minimum(corners.clamp_min(0), limit)


def _like_shape(shape_or_like: torch.Tensor | Sequence[int]) -> tuple[int, int, int]:
    """``(N, H, W)`` from a tensor ``(N, C, H, W)`` or a shape ``(N, C, H, W)`` / ``(H, W)``."""
    shape = tuple(shape_or_like.shape) if isinstance(shape_or_like, torch.Tensor) else tuple(shape_or_like)
    if len(shape) == 5:
        raise MedAdvInputError(f"patch masks are 2D only: got a 3D shape {shape}; expected (N, C, H, W) or (H, W)")
    if len(shape) == 2:
        shape = (1, 1) + shape
    if len(shape) != 4 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise MedAdvInputError(f"patch mask shape: expected (N, C, H, W) or (H, W) positive integers, got {shape}")
    return shape[0], shape[2], shape[3]


def patch_mask(
    shape_or_like: torch.Tensor | Sequence[int],
    spec: PatchSpecLike | None = None,
    tumour: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw a patch mask for every sample of a 2D batch, combined with the tumour as ``spec.combine`` says.

    Args:
        shape_or_like: a tensor ``(N, C, H, W)`` (its device and floating dtype are used) or a shape
            ``(N, C, H, W)`` / ``(H, W)``.
        spec: a :class:`PatchSpec`, a dict of its fields, a compact string (see :meth:`PatchSpec.from_string`) or
            ``None`` for the default spec.
        tumour: tumour ``(N or 1, C, H, W)``; needed for the ``centroid``, ``bbox`` and ``outside`` anchors and for
            ``combine != "none"``. The output batch is the broadcast of ``N`` and the tumour's batch.
        generator: torch random generator for the ``random``/``outside`` anchors and ``jitter``; the same seed gives
            the same masks. ``None`` uses torch's global RNG.

    Returns:
        Float tensor ``(N, 1, H, W)`` with values in ``{0, 1}``; the whole patch always lies inside the image.

    Raises:
        MedAdvInputError: a 3D shape, a patch that does not fit the image, a tumour anchor or combine mode without a
            tumour, a tumour whose shape does not fit, or no tumour-free position for the ``outside`` anchor.
    """
    spec = PatchSpec.from_any(spec)
    n, height, width = _like_shape(shape_or_like)
    like = shape_or_like if isinstance(shape_or_like, torch.Tensor) else None
    device = like.device if like is not None else (tumour.device if tumour is not None else torch.device("cpu"))
    dtype = float_dtype(like) if like is not None else torch.float32
    if tumour is not None:
        check_batch(tumour, "tumour", spatial_dims=(2,))
        batch_ok = tumour.shape[0] in (1, n) or n == 1
        if tuple(tumour.shape[-2:]) != (height, width) or not batch_ok:
            raise MedAdvInputError(
                f"tumour shape {tuple(tumour.shape)} is not broadcastable to the patch mask shape ({n}, 1, {height}, "
                f"{width})"
            )
        n = max(n, tumour.shape[0])
        tumour = tumour.to(device).expand(n, *tumour.shape[1:])
    elif spec.anchor in _TUMOUR_ANCHORS or spec.combine != "none":
        what = f"anchor {spec.anchor!r}" if spec.anchor in _TUMOUR_ANCHORS else f"combine mode {spec.combine!r}"
        raise MedAdvInputError(f"patch {what} needs a tumour mask, got tumour=None: {spec}")
    ph, pw = spec.pixel_size(height, width)
    corners = _corners(spec, n, height, width, ph, pw, tumour, generator).to(device)
    centre = corners.float() + torch.tensor([(ph - 1) / 2, (pw - 1) / 2], device=device)
    ys = torch.arange(height, device=device, dtype=torch.float32)[None, :, None]
    xs = torch.arange(width, device=device, dtype=torch.float32)[None, None, :]
    mask = _shape_mask(spec, ph, pw, centre[:, 0, None, None], centre[:, 1, None, None], ys, xs)
    mask = mask[:, None].to(dtype)
    return combine_masks(mask, tumour, spec.combine) if tumour is not None else mask
