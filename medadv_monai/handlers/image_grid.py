"""Ignite handler: the clean | adversarial | difference | mask image grid of an attacked batch."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medadv_monai.utils.checks import check_int
from medadv_monai.visualize import adversarial_grid

__all__ = ["AttackImageGrid"]

_ROW_KEYS = ("subject", "slice_index", "label", "clean_prob", "clean_pred", "adv_prob", "adv_pred")


def _item(values: Any, i: int) -> Any:
    value = values[i]
    return value.item() if isinstance(value, torch.Tensor) else value


class AttackImageGrid:
    """Keep the image grid of the first batch of every run, and write it to TensorBoard.

    Rows are up to ``max_samples`` samples of the batch, tumour slices first; columns are clean | adversarial |
    :math:`|x' - x| / \\epsilon` | attack mask (first channel, all in [0, 1];
    :func:`~medadv_monai.visualize.adversarial_grid`). The grid is written to TensorBoard at global step
    ``engine.state.epoch`` (the trainer's epoch under ``ValidationHandler``) and kept as :attr:`grid`; the same
    samples are kept as :attr:`samples` (first channel, with the model's predictions per row) for
    :func:`~medadv_monai.visualize.attack_examples`.

    Args:
        summary_writer: a TensorBoard ``SummaryWriter`` (``None``: keep the grid only).
        max_samples: rows of the grid.
        tag: image tag.
        eps: scale of the difference column (its largest possible value); ``None``: the largest difference.
    """

    def __init__(self, summary_writer: Any = None, max_samples: int = 4, tag: str = "attack/clean_adv_diff_mask",
                 eps: float | None = None) -> None:
        self.writer, self.tag, self.eps = summary_writer, tag, eps
        self.max_samples = check_int(max_samples, "max_samples", 1)
        self.grid: np.ndarray | None = None
        self.samples: dict[str, Any] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.epoch_length and (engine.state.iteration - 1) % engine.state.epoch_length != 0:
            return
        out = engine.state.output
        x = out["image"]
        order = torch.argsort(torch.as_tensor(out["label"]).reshape(-1).float().cpu(), descending=True,
                              stable=True)[: self.max_samples]
        mask = out.get("attack_mask")
        if mask is not None:
            mask = torch.as_tensor(mask).expand(len(x), *mask.shape[1:])[order.to(mask.device)]
        idx = order.to(x.device)
        self.grid = adversarial_grid(x[idx], out["adv"][idx], mask, n=self.max_samples, eps=self.eps)
        columns = out.get("per_sample", {})
        first = lambda v: v[idx, 0].detach().cpu().float().numpy()  # noqa: E731
        self.samples = {"image": first(x), "adv": first(out["adv"]),
                        "mask": None if mask is None else mask[:, 0].detach().cpu().float().numpy(),  # chosen above
                        "rows": [{k: _item(columns[k], int(i)) for k in _ROW_KEYS if k in columns}
                                 for i in order.tolist()]}
        if self.writer is not None:
            self.writer.add_image(self.tag, self.grid[None], global_step=engine.state.epoch, dataformats="CHW")
