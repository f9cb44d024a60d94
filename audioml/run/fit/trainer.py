"""The Lightning Trainer with audioml's speed options: mixed precision chosen by device, and
``torch.compile`` as a switch (``conf/trainer``: ``trainer.precision``, ``trainer.compile``).

``make_trainer`` is the ``_target_`` of ``conf/trainer/default.yaml``; every other key of that
group is a ``lightning.pytorch.Trainer`` argument.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["make_trainer", "resolve_precision", "CompileModules", "SameCollectivesOnEveryRank"]

_GPU_ACCELERATORS = ("auto", "gpu", "cuda")


def resolve_precision(precision: str | int | None, accelerator: str | None, cuda_available: bool,
                      bf16_supported: bool) -> str | int:
    """``"auto"``/``None`` -> the Lightning precision for the device: ``"32-true"`` on CPU
    (mixed precision would slow CPU training and change its numbers), ``"bf16-mixed"`` on CUDA
    devices that support bfloat16, else ``"16-mixed"``. Any other value is returned unchanged."""
    if precision not in (None, "auto"):
        return precision
    if not cuda_available or str(accelerator or "auto").lower() not in _GPU_ACCELERATORS:
        return "32-true"
    return "bf16-mixed" if bf16_supported else "16-mixed"


class CompileModules(L.Callback):
    """``torch.compile`` the model's ``frontend`` and ``backbone`` (the whole module when it has
    neither) in place before fitting, testing or predicting.

    ``nn.Module.compile`` keeps parameter names, so checkpoints load into uncompiled models.

    Args:
        mode: ``torch.compile`` mode (``None``, ``"default"``, ``"reduce-overhead"``,
            ``"max-autotune"``).
        dynamic: passed to ``torch.compile``; ``None`` lets it mark changing sizes (the last,
            smaller batch) as dynamic after one recompilation.
    """

    def __init__(self, mode: str | None = None, dynamic: bool | None = None) -> None:
        self.mode = mode
        self.dynamic = dynamic
        self.compiled: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.compiled:
            return
        targets = [(name, getattr(pl_module, name)) for name in ("frontend", "backbone")
                   if isinstance(getattr(pl_module, name, None), nn.Module)] or [("model", pl_module)]
        for name, module in targets:
            module.compile(mode=self.mode, dynamic=self.dynamic)
            self.compiled.append(name)
        log.info("torch.compile (mode=%s): %s", self.mode or "default", ", ".join(self.compiled))


class SameCollectivesOnEveryRank(L.Callback):
    """Computes the epoch's logged metrics on every rank at the start of the train-epoch-end
    hooks, so that all ranks enter the same collectives in the same order.

    Without it DDP deadlocks at the first epoch end: the progress bar runs on rank zero only,
    and reading its metrics reduces the ``sync_dist`` values (an ``all_reduce``) there, while
    the other ranks go on to the module's epoch-end hook and its torchmetrics ``compute``
    (an ``all_gather``). Lightning caches a computed value until the epoch's results are
    reset, so computing them here first leaves the progress bar nothing to reduce. Harmless
    (one cached computation) in a single process.
    """

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics  # the property computes (and reduces) every logged value
        if trainer.world_size > 1:  # each rank's log shows the values it holds: equal on all ranks
            shown = {k: float(v) for k, v in sorted(metrics.items()) if k.startswith(("val/", "train/loss"))}
            log.info("rank %d of %d, epoch %d: %s", trainer.global_rank, trainer.world_size, trainer.current_epoch,
                     " ".join(f"{k}={v:.6f}" for k, v in shown.items()))


def make_trainer(precision: str | int | None = "auto", compile: bool = False, compile_mode: str | None = None,
                 callbacks: list[L.Callback] | None = None, **trainer_kwargs: Any) -> L.Trainer:
    """A ``lightning.pytorch.Trainer`` with ``precision="auto"`` resolved by ``resolve_precision``
    and, when ``compile`` is true, a ``CompileModules(compile_mode)`` callback.

    Raises ``RuntimeError`` when ``compile`` is requested but ``torch.compile`` is unavailable
    (Windows without a compiler toolchain, Python versions torch does not support yet).
    """
    cuda = torch.cuda.is_available()
    if str(trainer_kwargs.get("accelerator")) in ("gpu", "cuda") and not cuda:
        raise ValueError(f"trainer.accelerator={trainer_kwargs['accelerator']} but this machine has no CUDA GPU: "
                         "use trainer=ddp_cpu (several CPU processes) or trainer.accelerator=cpu, "
                         "or trainer=default (picks what is there)")
    resolved = resolve_precision(precision, trainer_kwargs.get("accelerator"), cuda,
                                 cuda and torch.cuda.is_bf16_supported())
    # First in the list, so that it runs before the progress bar's epoch-end hook (see the class).
    callbacks = [SameCollectivesOnEveryRank(), *(callbacks or [])]
    if compile:
        if not hasattr(torch, "compile"):
            raise RuntimeError("trainer.compile=true needs torch.compile (torch >= 2.0); set trainer.compile=false")
        callbacks.append(CompileModules(compile_mode))
    return L.Trainer(precision=resolved, callbacks=callbacks, **trainer_kwargs)
