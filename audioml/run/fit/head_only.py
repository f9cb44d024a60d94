"""Head-only checkpoints: while a model trains only its head on cached backbone outputs
(``audioml.models.embedding_cache``), the checkpoints written during the fit hold the head plus a
fingerprint of the frozen front end and backbone (``HEAD_ONLY_KEY``).

:class:`HeadOnlyCheckpoints` strips the frozen tensors from every checkpoint Lightning writes and
checks the fingerprint when one is loaded (other backbone weights: refused);
:func:`expand_checkpoints` rewrites the best and the last checkpoint as full models when the fit
ends. Also the one-thread pools of a head-only job. Why: docs/design/caches.md#head-only-jobs."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch

from audioml.files import atomic_write_bytes
from audioml.run.rundir import RunDir

log = logging.getLogger(__name__)

__all__ = ["HEAD_ONLY_KEY", "HeadOnlyCheckpoints", "add_head_only_checkpoints", "frozen_keys", "expand_checkpoints",
           "HeadOnlyCheckpointError",
           "HEAD_ONLY_THREADS", "threads_restored", "use_head_only_threads"]

#: Checkpoint entry of a head-only checkpoint: ``{"format", "fingerprint", "frozen_keys"}``.
HEAD_ONLY_KEY = "audioml_head_only"
_FORMAT = 1
#: CPU threads for the operators of a head-only fit, test and report (torch's and every BLAS /
#: OpenMP pool, through threadpoolctl). A head's matrix products on a batch of cached
#: embeddings take microseconds: split across threads they wait on each other, and a BLAS
#: pool left spinning after a NumPy call (the bootstrap, the report's PCA) takes the core the
#: job runs on. On 2 cores a 40-epoch job took 10-19 s with the default threads under load,
#: 3.5 s with one torch thread, 2 s with every pool at one.
HEAD_ONLY_THREADS = 1
_FROZEN_PREFIXES = ("frontend.", "backbone.")


@contextmanager
def threads_restored() -> Iterator[list]:
    """Put torch's intra-op thread count and the thread pools' limits back on exit; yields the
    list :func:`use_head_only_threads` records its limits in."""
    threads = torch.get_num_threads()
    limits: list = []
    try:
        yield limits
    finally:
        for limit in reversed(limits):
            limit.restore_original_limits()
        torch.set_num_threads(threads)


def use_head_only_threads(limits: list) -> None:
    """Run on ``HEAD_ONLY_THREADS`` threads from now on (until ``threads_restored`` ends)."""
    from threadpoolctl import threadpool_limits

    limits.append(threadpool_limits(limits=HEAD_ONLY_THREADS))
    torch.set_num_threads(HEAD_ONLY_THREADS)


class HeadOnlyCheckpointError(RuntimeError):
    """A head-only checkpoint that does not fit the model it is loaded into."""


def frozen_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the front end and the backbone outside its head."""
    return [key for key in model.state_dict() if key.startswith(_FROZEN_PREFIXES)
            and not key.startswith("backbone.head.")]


class HeadOnlyCheckpoints(L.Callback):
    """Writes checkpoints without the frozen tensors while the model trains on cached
    embeddings (``model.embedding_input`` set); does nothing for any other model.

    ``fingerprint``: ``module_fingerprint(frontend, backbone)`` of the model (the embedding
    cache computed it for its key).
    """

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self._frozen: list[str] = []
        self._training_ended = False

    @staticmethod
    def _active(pl_module: L.LightningModule) -> bool:
        return pl_module.embedding_input is not None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._active(pl_module):
            self._frozen = frozen_keys(pl_module)
            # A head-only checkpoint lacks the frozen keys: Lightning loads it non-strictly, and
            # on_load_checkpoint checks exactly which keys were left out, and why.
            pl_module.strict_loading = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Runs before the resume checkpoint's last save (``add_head_only_checkpoints`` puts this
        # callback before the checkpoint callbacks): that last checkpoint is written whole at once
        # instead of expanded afterwards.
        self._training_ended = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self._active(pl_module) or not self._frozen or self._training_ended:
            return
        state = checkpoint["state_dict"]
        for key in self._frozen:
            state.pop(key, None)
        checkpoint[HEAD_ONLY_KEY] = {"format": _FORMAT, "fingerprint": self.fingerprint,
                                     "frozen_keys": list(self._frozen)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self._active(pl_module):
            return
        expected = set(pl_module.state_dict())
        present = set(checkpoint.get("state_dict", {}))
        marker = checkpoint.get(HEAD_ONLY_KEY)
        if marker is None:  # a full checkpoint (e.g. an expanded best one): loaded as it is
            missing = expected - present
        else:
            if marker.get("fingerprint") != self.fingerprint:
                raise HeadOnlyCheckpointError(
                    f"this checkpoint holds a head trained on frozen weights with fingerprint "
                    f"{marker.get('fingerprint')}, and the model's front end and backbone now have fingerprint "
                    f"{self.fingerprint} (other pretrained weights or settings): it cannot continue. Point "
                    "paths.weights_dir at the weights the run started with, or delete the run directory to "
                    "train again")
            missing = expected - present - set(marker.get("frozen_keys", ()))
        unexpected = present - expected
        if missing or unexpected:
            raise HeadOnlyCheckpointError(
                f"the checkpoint does not fit this model: missing {sorted(missing)[:5]}, unexpected "
                f"{sorted(unexpected)[:5]}")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(pl_module) or not trainer.is_global_zero:
            return
        paths = [Path(c.best_model_path) for c in trainer.checkpoint_callbacks
                 if getattr(c, "best_model_path", "")]
        paths += [Path(c.dirpath) / RunDir.LAST for c in trainer.checkpoint_callbacks
                  if type(c).__name__ == "ResumeCheckpoint"]
        expand_checkpoints(pl_module, paths)


def add_head_only_checkpoints(trainer: L.Trainer, fingerprint: str) -> HeadOnlyCheckpoints:
    """Add a :class:`HeadOnlyCheckpoints` to a built trainer, before its checkpoint callbacks:
    Lightning orders checkpoint callbacks last when the Trainer is built, not for a callback
    added later, and this one's ``on_train_end`` must run before the resume checkpoint's last
    save (which it then writes whole)."""
    from lightning.pytorch.callbacks import Checkpoint

    callback = HeadOnlyCheckpoints(fingerprint)
    first = next((i for i, c in enumerate(trainer.callbacks) if isinstance(c, Checkpoint)), len(trainer.callbacks))
    trainer.callbacks.insert(first, callback)
    return callback


def expand_checkpoints(model: torch.nn.Module, paths: list[Path]) -> list[Path]:
    """Rewrite each head-only checkpoint in ``paths`` as a full one, the frozen tensors taken
    from ``model`` (whose fingerprint the checkpoint names); returns the files rewritten."""
    state = model.state_dict()
    rewritten = []
    for path in dict.fromkeys(paths):  # the best checkpoint may also be the last one
        if not path.is_file():
            continue
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        marker = checkpoint.pop(HEAD_ONLY_KEY, None)
        if marker is None:
            continue
        for key in marker["frozen_keys"]:
            checkpoint["state_dict"][key] = state[key].detach().cpu()
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write_bytes(path, buffer.getvalue())
        rewritten.append(path)
    if rewritten:
        log.debug("head-only checkpoints written as full models: %s", ", ".join(p.name for p in rewritten))
    return rewritten
