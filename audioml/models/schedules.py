"""Learning-rate schedules as pure functions of the optimiser step, and their schedulers."""

from __future__ import annotations

import math

import torch

__all__ = ["warmup_cosine_factor", "WarmupCosine"]


def warmup_cosine_factor(step: int, total_steps: int, warmup_steps: int, min_factor: float = 0.0) -> float:
    """Factor of the base learning rate at optimiser ``step`` (0-based): linear from
    ``1 / warmup_steps`` to 1 over the first ``warmup_steps`` steps, then half a cosine down to
    ``min_factor`` at ``total_steps``, and ``min_factor`` after it."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _Factor:
    """``warmup_cosine_factor`` with its settings as plain attributes: ``LambdaLR`` keeps a
    callable object's ``__dict__`` in its state, so a resumed fit restores them."""

    def __init__(self, warmup: float, min_factor: float) -> None:
        self.warmup, self.min_factor = float(warmup), float(min_factor)
        self.total_steps, self.warmup_steps = 1, 0

    def set_total_steps(self, total_steps: int) -> None:
        self.total_steps = int(total_steps)
        steps = round(self.warmup * total_steps) if self.warmup < 1 else int(self.warmup)
        self.warmup_steps = min(int(steps), self.total_steps)

    def __call__(self, step: int) -> float:
        return warmup_cosine_factor(step, self.total_steps, self.warmup_steps, self.min_factor)


class WarmupCosine(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up then cosine decay (``warmup_cosine_factor``), stepped every optimiser step,
    for every parameter group from its own base rate (e.g. layer-wise decayed ones).

    ``warmup``: a fraction of the run (< 1) or a number of steps. The run's length is given by
    ``set_total_steps`` (or ``total_steps``); the audioml task modules call it when the fit
    starts, once the training data is set up (``trainer.estimated_stepping_batches``).
    Raises ``ValueError`` for a negative ``warmup`` or a length below 1.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: float = 0.1, min_factor: float = 0.0,
                 total_steps: int | None = None) -> None:
        if warmup < 0:
            raise ValueError(f"model.scheduler.warmup={warmup}: use a fraction of the run (< 1) or a number of steps")
        super().__init__(optimizer, _Factor(warmup, min_factor))
        if total_steps is not None:
            self.set_total_steps(total_steps)

    def set_total_steps(self, total_steps: int) -> None:
        """Set the run's optimiser steps and the current learning rates to match."""
        if total_steps < 1:
            raise ValueError(f"warm-up + cosine needs the run's optimiser steps, got {total_steps}")
        for group, base, schedule in zip(self.optimizer.param_groups, self.base_lrs, self.lr_lambdas):
            schedule.set_total_steps(total_steps)
            group["lr"] = base * schedule(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
