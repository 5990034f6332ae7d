"""The logit margin: how far a model still is from being fooled, the one definition every margin loss uses.

A single-logit model :math:`z \\in \\mathbb{R}^{N \\times 1}` is the two-class model with logits :math:`(0, z)`
(:func:`as_two_logits`): softmax over them is :math:`\\sigma(z)`, so cross-entropy on them equals BCE on :math:`z`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F

__all__ = ["as_two_logits", "margin", "two_logit_model"]


def as_two_logits(out: Any) -> Any:
    """``(N, 1)`` logits :math:`z` -> ``(N, 2)`` logits :math:`(0, z)`; anything else is returned as it is."""
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] == 1:
        return torch.cat([torch.zeros_like(out), out], dim=1)
    return out


def two_logit_model(model: Callable[[torch.Tensor], Any]) -> Callable[[torch.Tensor], Any]:
    """``model`` with its outputs through :func:`as_two_logits` (the model itself is used as given)."""
    return lambda x: as_two_logits(model(x))


def margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Per-sample margin ``(N,)``: positive while the model resists, negative once it is fooled.

    .. math::
        g = z_y - \\max_{j \\ne y} z_j \\ \\text{(untargeted, labels } y), \\qquad
        g = \\max_{j \\ne t} z_j - z_t \\ \\text{(targeted, labels } t)

    on ``(N, K)`` logits, or on :math:`(0, z)` for a single logit (:math:`g = (2y - 1) z` untargeted). ``labels``
    are ``(N,)`` class ids (no validation here: callers check them once, outside their loops).
    """
    z = as_two_logits(logits)
    y = labels.reshape(-1).long()
    own = z.gather(1, y[:, None])[:, 0]
    other = z.masked_fill(F.one_hot(y, z.shape[1]).bool(), float("-inf")).amax(dim=1)
    return other - own if targeted else own - other
