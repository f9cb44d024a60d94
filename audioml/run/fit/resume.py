"""Preemption-proof training: :class:`ResumeCheckpoint` keeps a run's resume checkpoints (the
newest and the one before it) up to date, stops cleanly on SIGTERM, and makes the continued run
compute exactly what an uninterrupted one would (``docs/design/resume-and-finishing.md``).
"""

from __future__ import annotations

import logging
import random
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from audioml.models.base import persist_metric_states
from audioml.run.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["ResumeCheckpoint", "capture_rng_states", "restore_rng_states", "stop_requested"]

_STATE_KEY = "audioml_resume"
_NO_HANDLER = object()  # "ours is not installed" (signal.signal may return None for C handlers)


# ------------------------------------------------------------------------------ RNG states
def capture_rng_states() -> dict[str, Any]:
    """The global RNG states (torch CPU, every initialised CUDA device, NumPy, ``random``) as
    plain tensors / lists, loadable with ``torch.load(weights_only=True)``."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(cached)],
        "python": [int(version), list(internal), gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the global RNGs to ``states`` from :func:`capture_rng_states`."""
    torch.set_rng_state(states["torch"].cpu())
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        cuda_states = states["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
        else:
            log.warning("checkpoint holds %d CUDA RNG states for %d devices: CUDA RNG not restored",
                        len(cuda_states), torch.cuda.device_count())


# -------------------------------------------------------------------------- random streams
def _stream_positions(module: L.LightningModule) -> dict[str, int]:
    return {name: int(sub.calls) for name, sub in module.named_modules()
            if isinstance(getattr(sub, "calls", None), int) and callable(getattr(sub, "reset", None))}


def _restore_stream_positions(module: L.LightningModule, positions: dict[str, int]) -> None:
    modules = dict(module.named_modules())
    for name, calls in positions.items():
        if name in modules:
            modules[name].reset(calls)
        else:
            log.warning("checkpoint has a random stream position for %r, which the model lacks", name)


# --------------------------------------------------------------------------- the callback
class ResumeCheckpoint(Checkpoint):
    """Writes the run's resume checkpoints and stops cleanly on SIGTERM (see module docs).

    Args:
        dirpath: folder of the resume checkpoints (``RunDir.resume_checkpoints``); ``None``: the
            run directory's ``checkpoints/`` (set by ``audioml.run.fit.compose.build_trainer``).
        every_n_train_steps: optimiser steps between checkpoints; ``None``/0 = only per epoch.
        every_n_epochs: epochs between checkpoints; ``None``/0 = only every N steps.
        handle_sigterm: on SIGTERM, finish the current batch, write a checkpoint and raise
            Lightning's ``SIGTERMException`` (all DDP ranks stop at the same batch).
        head_only_min_interval_s: while only the head trains on cached embeddings (epochs of
            milliseconds), the periodic checkpoints are at least this many seconds apart (the
            one at the end of training and the SIGTERM one are always written); ``0``: no limit.

    Before each save the loggers' buffered metric points are written (``flush``), so a run
    resumed from this checkpoint has every point logged before it.

    After the fit, :attr:`stop_requested` tells whether a SIGTERM arrived (e.g. during the
    last epoch, where the end-of-training checkpoint is the one kept).
    """

    def __init__(self, dirpath: str | Path | None = None, every_n_train_steps: int | None = 500,
                 every_n_epochs: int | None = 1, handle_sigterm: bool = True,
                 head_only_min_interval_s: float = 10.0) -> None:
        for name, value in (("every_n_train_steps", every_n_train_steps), ("every_n_epochs", every_n_epochs)):
            if value is not None and int(value) < 0:
                raise ValueError(f"callbacks.resume_checkpoint.{name}={value}: use a positive number, or 0/null to disable")
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.every_n_train_steps = int(every_n_train_steps or 0)
        self.every_n_epochs = int(every_n_epochs or 0)
        self.handle_sigterm = handle_sigterm
        self.head_only_min_interval_s = float(head_only_min_interval_s or 0)
        self._last_saved_at = time.monotonic()
        self.stop_requested = False
        self._signal_received = False
        self._previous_handler: Any = _NO_HANDLER
        self._last_saved_step = -1
        self._restored: dict[str, Any] | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(dirpath=str(self.dirpath))

    # -------------------------------------------------------------------------- saving
    def _save(self, trainer: L.Trainer) -> None:
        latest, previous = (self.dirpath / name for name in (RunDir.LAST, RunDir.PREVIOUS))
        incoming = self.dirpath / RunDir.INCOMING
        for logger in trainer.loggers:
            getattr(logger, "flush", lambda: None)()
        trainer.save_checkpoint(incoming)  # every rank takes part; rank zero writes (atomically)
        if trainer.is_global_zero:
            if latest.is_file():
                latest.replace(previous)
            incoming.replace(latest)
        trainer.strategy.barrier("audioml-resume-checkpoint")
        self._last_saved_step = trainer.global_step
        self._last_saved_at = time.monotonic()

    def _throttled(self, pl_module: L.LightningModule) -> bool:
        """Whether a periodic save is skipped: head-only training, last save too recent."""
        return (pl_module.embedding_input is not None and self.head_only_min_interval_s > 0
                and time.monotonic() - self._last_saved_at < self.head_only_min_interval_s)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[_STATE_KEY] = {"version": 2, "rng": capture_rng_states(), "streams": _stream_positions(pl_module)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._restored = checkpoint.get(_STATE_KEY)

    def state_dict(self) -> dict[str, Any]:
        return {"last_saved_step": self._last_saved_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_saved_step = int(state_dict.get("last_saved_step", -1))

    # ----------------------------------------------------------------------- the hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before Lightning restores a checkpoint into the module: metric states in state_dict.
        persist_metric_states(pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.train_dataloader
        if loader is not None and not (hasattr(loader, "state_dict") and hasattr(loader, "load_state_dict")):
            log.warning("the train loader (%s) cannot resume mid-epoch: a resumed epoch restarts its order",
                        type(loader).__name__)
        if self._restored is not None:
            # Restored here, right before the first batch is drawn, so nothing in between
            # (loader set-up, sanity checks) consumes the restored random streams.
            restore_rng_states(self._restored["rng"])
            _restore_stream_positions(pl_module, self._restored.get("streams", {}))
            self._restored = None
        if self.handle_sigterm:
            try:
                self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
            except ValueError:  # not the main thread (e.g. a thread-based launcher): Lightning's handling stays
                log.warning("SIGTERM handling needs the main thread; a SIGTERM will not write a checkpoint")

    def _on_sigterm(self, signum, frame) -> None:
        self._signal_received = True
        log.warning("SIGTERM received: the run will checkpoint after this batch and exit")

    def _restore_handler(self) -> None:
        if self._previous_handler is not _NO_HANDLER:
            signal.signal(signal.SIGTERM, self._previous_handler if self._previous_handler is not None
                          else signal.SIG_DFL)
            self._previous_handler = _NO_HANDLER

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        stop = trainer.strategy.reduce_boolean_decision(self._signal_received, all=False)
        self.stop_requested = self.stop_requested or stop
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: gradients are not part of a checkpoint
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # see the module docs: the next epoch's first step saves instead
        step, epoch = trainer.global_step, trainer.current_epoch
        first_step_of_epoch = batch_idx + 1 == trainer.accumulate_grad_batches
        due = ((self.every_n_train_steps and step % self.every_n_train_steps == 0)
               or (self.every_n_epochs and first_step_of_epoch and epoch > 0 and epoch % self.every_n_epochs == 0))
        if (stop or (due and not self._throttled(pl_module))) and step != self._last_saved_step:
            self._save(trainer)
        if stop:
            raise SIGTERMException()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handler()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handler()


def stop_requested(trainer: L.Trainer) -> bool:
    """Whether a :class:`ResumeCheckpoint` of ``trainer`` saw a SIGTERM during the fit."""
    return any(isinstance(c, ResumeCheckpoint) and c.stop_requested for c in trainer.callbacks)
