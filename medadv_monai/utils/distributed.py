"""``torch.distributed`` for runs started with ``torchrun``: which rank this process is, and Python objects passed
between the ranks. Without a process group (a plain run) there is one rank, 0, and nothing is passed."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["all_gather", "broadcast", "is_distributed", "is_main", "rank", "world_size"]


def is_distributed() -> bool:
    """Whether this process is one rank of a process group (``init_process_group`` was called)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return torch.distributed.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return torch.distributed.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this is rank 0, the one that logs and writes files (every process without a process group)."""
    return rank() == 0


def broadcast(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) on every rank; ``obj`` itself without a process group."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out
