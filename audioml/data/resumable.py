"""Training loaders that a preempted run can resume in the middle of an epoch.

Two properties make a resumed run draw exactly the batches an uninterrupted one would:

- the order of an epoch is a pure function of ``(seed, epoch)``: the samplers below reseed a
  private generator from it whenever Lightning calls ``set_epoch`` and never touch the global
  RNG (whose state the checkpoint restores separately);
- :class:`ResumableDataLoader` implements Lightning's ``state_dict``/``load_state_dict`` loader
  protocol: a checkpoint records how many batches of the current epoch were consumed, and the
  first epoch after loading it skips them (by index, without loading their audio, when the
  sampler supports it; by drawing and dropping batches otherwise, e.g. under DDP's sampler).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, WeightedRandomSampler

__all__ = ["epoch_seed", "EpochRandomSampler", "EpochWeightedRandomSampler", "ResumableDataLoader"]


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch`` of a run seeded ``seed`` (a 63-bit integer, injective for
    ``0 <= epoch < 1_000_003``)."""
    return (int(seed) * 1_000_003 + int(epoch)) % (2**63 - 1)


class _EpochSeeded:
    """Mixin: ``set_epoch`` reseeds ``self.generator``; ``skip_next(n)`` drops the first ``n``
    indices of the next pass only (used to resume an epoch without loading skipped items)."""

    seed: int
    epoch: int
    _skip: int

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_next(self, num_indices: int) -> None:
        self._skip = max(0, int(num_indices))

    def _seeded_indices(self, indices: Iterator[int]) -> Iterator[int]:
        skip, self._skip = self._skip, 0
        for position, index in enumerate(indices):
            if position >= skip:
                yield index


class EpochRandomSampler(_EpochSeeded, RandomSampler):
    """Shuffles without replacement; the permutation of epoch ``e`` depends only on
    ``(seed, e)``. A subclass of ``RandomSampler``, so Lightning replaces it by its seeded
    ``DistributedSampler`` under DDP (whose order is also a function of seed and epoch)."""

    def __init__(self, data_source, seed: int = 0) -> None:
        super().__init__(data_source, replacement=False, generator=torch.Generator())
        self.seed, self.epoch, self._skip = int(seed), 0, 0

    def __iter__(self) -> Iterator[int]:
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        return self._seeded_indices(super().__iter__())


class EpochWeightedRandomSampler(_EpochSeeded, WeightedRandomSampler):
    """``WeightedRandomSampler`` whose draws for epoch ``e`` depend only on ``(seed, e)``."""

    def __init__(self, weights, num_samples: int, replacement: bool = True, seed: int = 0) -> None:
        super().__init__(weights, num_samples, replacement=replacement, generator=torch.Generator())
        self.seed, self.epoch, self._skip = int(seed), 0, 0

    def __iter__(self) -> Iterator[int]:
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        return self._seeded_indices(super().__iter__())


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` whose position within an epoch travels in Lightning checkpoints.

    Takes exactly ``DataLoader``'s arguments (so Lightning can rebuild it with a distributed
    sampler). Give it a sampler with ``set_epoch`` (above) for a reproducible order, and a
    ``generator`` so creating an iterator (worker base seeds) does not draw from the global RNG.

    ``state_dict()`` -> ``{"epoch": int, "batches": int}``: batches handed out in the current
    pass. After ``load_state_dict``, the next pass starts after those batches, or with the next
    epoch when the recorded pass was complete.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = 0
        self._batches_yielded = 0
        self._resume_skip = 0
        self._generator_seed = self.generator.initial_seed() if self.generator is not None else None

    @property
    def _epoch_sampler(self):
        sampler = self.batch_sampler.sampler if self.batch_sampler is not None else self.sampler
        return sampler if hasattr(sampler, "set_epoch") else None

    def state_dict(self) -> dict[str, int]:
        sampler = self._epoch_sampler
        epoch = int(getattr(sampler, "epoch", self._epoch))
        return {"epoch": epoch, "batches": int(self._batches_yielded)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        epoch, batches = int(state_dict.get("epoch", 0)), int(state_dict.get("batches", 0))
        try:
            complete = batches >= len(self)
        except TypeError:  # an iterable dataset has no length: its position cannot be skipped to
            complete, batches = False, 0
        if complete:  # the recorded pass was complete: the next one is a new epoch
            epoch, batches = epoch + 1, 0
        self._epoch, self._resume_skip = epoch, batches
        if self._epoch_sampler is not None:
            # Lightning calls set_epoch too, but only after creating the first iterator
            # (which, with workers, already draws indices).
            self._epoch_sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        skip, self._resume_skip = self._resume_skip, 0
        sampler = self._epoch_sampler
        epoch = int(getattr(sampler, "epoch", self._epoch))
        if self._generator_seed is not None:
            self.generator.manual_seed(epoch_seed(self._generator_seed, epoch))
        drop = skip
        if skip and hasattr(sampler, "skip_next") and type(self.batch_sampler) is BatchSampler:
            sampler.skip_next(skip * self.batch_size)  # consecutive indices form the batches
            drop = 0
        self._batches_yielded = skip
        return self._count(super().__iter__(), drop)

    def _count(self, iterator: Iterator[Any], drop: int) -> Iterator[Any]:
        for _ in range(drop):
            next(iterator)
        for batch in iterator:
            self._batches_yielded += 1
            yield batch
