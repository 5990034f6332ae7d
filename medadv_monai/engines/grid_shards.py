"""The attack grid's batches, their shards under ``torch.distributed`` and its random seeds.

A grid run is reproducible slice by slice, whatever the number of ranks: batches are ``batch_size`` consecutive
slices (:func:`batch_indices`), dealt whole to the ranks (:func:`shard`: batch ``b`` to rank ``b % world_size``); the
rows of every rank go back into slice order (:func:`gather_rows`); a mask transform is seeded per slice
(:class:`SliceSeeded`) and an attack per batch (the ``batch_seeds`` of
:class:`~medadv_monai.engines.AttackEvaluator`), each from :func:`derived_seed`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data import Dataset
from monai.transforms import Compose

from medadv_monai.errors import MedAdvInputError
from medadv_monai.utils.distributed import all_gather, rank, world_size

__all__ = ["SliceSeeded", "batch_indices", "derived_seed", "gather_rows", "seed_batch", "shard"]


def derived_seed(*keys: Any) -> int:
    """A 32-bit seed made from ``keys`` (ints and strings), the same in every process, run and platform."""
    return int.from_bytes(hashlib.blake2b(repr(keys).encode(), digest_size=4).digest(), "little")


def seed_batch(engine: Any, seeds: Sequence[int], owner: str) -> None:
    """Seed torch's generator with ``seeds[i]`` for batch ``i`` of the engine's epoch (an attack evaluator's
    ``batch_seeds``), so an attack's random draws depend on its batch alone.

    Raises:
        MedAdvInputError: fewer seeds than batches (``owner`` names the evaluator).
    """
    i = (engine.state.iteration - 1) % engine.state.epoch_length if engine.state.epoch_length else 0
    if i >= len(seeds):
        raise MedAdvInputError(f"{owner}: batch_seeds has {len(seeds)} seeds, but the data loader gave batch {i + 1}; "
                               "give one seed per batch")
    torch.manual_seed(seeds[i])


def batch_indices(n: int, size: int) -> list[list[int]]:
    """The indices of ``n`` slices in batches of ``size`` consecutive slices (the last one may be shorter)."""
    return [list(range(i, min(i + size, n))) for i in range(0, n, size)]


def shard(n_batches: int) -> list[int]:
    """The batches this rank attacks: ``b`` with ``b % world_size == rank`` (all of them in a single process)."""
    return list(range(rank(), n_batches, world_size()))


def gather_rows(mine: Sequence[int], rows: list[Any], sizes: Sequence[int]) -> list[Any]:
    """Every rank's ``rows`` on every rank, in batch order: ``rows`` are this rank's, of its batches ``mine`` in
    order, batch ``b`` holding ``sizes[b]`` rows. Every rank must call it (a collective); a single process gets its
    own rows back."""
    if world_size() == 1:
        return rows
    by_batch: dict[int, list[Any]] = {}
    for sender, (theirs, got, n_slices) in enumerate(all_gather((list(mine), rows, sum(sizes)))):
        expected = sum(sizes[b] for b in theirs)
        if n_slices != sum(sizes) or len(got) != expected:  # every rank raises: they all see the same lists
            raise RuntimeError(f"rank {sender} attacked {n_slices} slices and sent {len(got)} rows for batches "
                               f"{theirs}; expected {sum(sizes)} slices and {expected} rows: the ranks do not see "
                               "the same slices")
        for b in theirs:
            by_batch[b], got = got[: sizes[b]], got[sizes[b]:]
    if sorted(by_batch) != list(range(len(sizes))):
        raise RuntimeError(f"the ranks attacked batches {sorted(by_batch)}, expected 0..{len(sizes) - 1}")
    return [row for b in sorted(by_batch) for row in by_batch[b]]


class SliceSeeded(Dataset):
    """A MONAI ``Dataset`` whose transform's random state is set from ``seeds(index)`` before slice ``index`` is
    transformed: a slice draws the same (a random patch anchor) whichever batch or rank it is in and whatever was
    transformed before it."""

    def __init__(self, data: Sequence[Any], transform: Compose, seeds: Callable[[int], int]) -> None:
        super().__init__(data, transform)
        self.seeds = seeds

    def _transform(self, index: int) -> Any:
        self.transform.set_random_state(seed=self.seeds(index))
        return super()._transform(index)
