"""The ``peers`` section: APGD, Square and CW-L2 against torchattacks' implementations, same model, same batch.

Both sides attack the bundle's slice classifier as the two-logit model :math:`(0, z)` (torchattacks needs class
logits; :func:`~medadv_monai.attacks.margin.as_two_logits`) on one random batch, with the same budget: APGD-CE
``steps`` iterations and one restart, Square ``queries`` queries (L-inf, ``p_init`` 0.8), CW-L2 ``steps`` Adam
steps at one ``c`` (ours: one binary-search round). The labels are the model's own predictions, since both
libraries attack only the samples a model classifies correctly. Each pair is timed interleaved
(:func:`~medadv_monai.bench.timing.interleaved`); ``ratio`` is the median of ours / theirs over the repeats
(target: <= 1.05), per run for APGD and Square, and per model call for CW-L2, because torchattacks' CW returns as
soon as its loss rises (``*_calls`` count the model calls of one run of each). torchattacks is a test-only extra:
without it the section is skipped.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from medadv_monai.attacks.apgd import apgd
from medadv_monai.attacks.cw import cw_l2
from medadv_monai.attacks.margin import as_two_logits
from medadv_monai.attacks.registry import DEFAULT_EPS
from medadv_monai.attacks.square import square
from medadv_monai.bench.models import bundle_classifier
from medadv_monai.bench.timing import check_shape, devices, interleaved

__all__ = ["TwoLogits", "bench_peers", "section"]


class TwoLogits(nn.Module):
    """A single-logit model as the two-class model :math:`(0, z)`, shifted by +10 (no decision, margin or softmax
    changes: torchattacks' CW takes the largest other logit as ``max((1 - onehot) * z)``, which is 0 for negative
    logits, leaving it no gradient), counting its calls (``calls``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return as_two_logits(self.model(x)) + 10.0


def bench_peers(
    batch: int = 32,
    steps: int = 10,
    queries: int = 200,
    repeats: int = 3,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Time our APGD, Square and CW-L2 against torchattacks' on the bundle's classifier, pairwise interleaved.

    Args:
        batch: batch size.
        steps: APGD iterations and CW-L2 Adam steps.
        queries: Square's query budget.
        repeats: timed repeats after one warm-up of each.
        device: where to run.

    Returns:
        ``{"apgd": {"ours_s", "torchattacks_s", "ours_calls", "torchattacks_calls", "ratio"}, "square": {...},
        "cw_l2": {...}, "model", "device",
        "batch", "shape", "steps", "queries", "repeats", "torchattacks"}``; times are medians in seconds.
    """
    import torchattacks  # a test-only extra; its absence skips the section

    net, shape = bundle_classifier()
    check_shape(shape, batch, repeats, steps)
    dev = torch.device(device)
    model = TwoLogits(net).to(dev).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *shape), generator=gen).to(dev)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correct: both sides attack the whole batch
    eps = DEFAULT_EPS
    pairs: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "apgd": (lambda: apgd(model, x, y, eps=eps, steps=steps),
                 lambda: torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce",
                                           seed=0)(x, y)),
        "square": (lambda: square(model, x, y, eps=eps, queries=queries, generator=torch.Generator().manual_seed(0)),
                   lambda: torchattacks.Square(model, norm="Linf", eps=eps, n_queries=queries, n_restarts=1,
                                               p_init=0.8, loss="margin", resc_schedule=True, seed=0)(x, y)),
        "cw_l2": (lambda: cw_l2(model, x, y, c=1e3, kappa=1e6, steps=steps, binary_steps=1),
                  lambda: torchattacks.CW(model, c=1e3, kappa=1e6, steps=steps, lr=0.01)(x, y)),
    }
    out: dict[str, Any] = {}
    for name, (ours, theirs) in pairs.items():
        calls = {}
        for side, fn in (("ours", ours), ("theirs", theirs)):
            model.calls = 0
            fn()
            calls[side] = model.calls
        times = interleaved({"ours": ours, "theirs": theirs}, repeats, dev)
        # CW: per model call, since torchattacks' CW stops early (the calls show how early); otherwise per run
        per = (calls["ours"], calls["theirs"]) if name == "cw_l2" else (1, 1)
        out[name] = {"ours_s": statistics.median(times["ours"]), "torchattacks_s": statistics.median(times["theirs"]),
                     "ours_calls": calls["ours"], "torchattacks_calls": calls["theirs"],
                     "ratio": statistics.median((a / per[0]) / (b / per[1])
                                                for a, b in zip(times["ours"], times["theirs"]))}
    return {**out, "model": type(net).__name__, "device": str(dev), "batch": batch, "shape": list(shape),
            "steps": steps, "queries": queries, "repeats": repeats, "torchattacks": torchattacks.__version__}


def section(quick: bool = False) -> dict[str, Any]:
    """The ``peers`` section of ``medadv bench``: :func:`bench_peers` on each device (``quick``: batch 8, 2
    repeats, 50 queries)."""
    kwargs = {"batch": 8, "repeats": 2, "queries": 50} if quick else {}
    return {dev: bench_peers(device=dev, **kwargs) for dev in devices()}
