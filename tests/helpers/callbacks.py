"""Lightning callbacks the tests put into a run from its command line
(``+callbacks.<name>._target_=helpers.callbacks.<Class>``): a fault at a chosen epoch."""

from __future__ import annotations

import os
import signal

import lightning as L


class StopServerAfterEpoch(L.Callback):
    """Stops the server process group ``pid`` at the end of training epoch ``epoch``: a tracking
    store lost mid-run."""

    def __init__(self, pid: int, epoch: int) -> None:
        self.pid, self.epoch = int(pid), int(epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


class InterruptAfterEpoch(L.Callback):
    """Raises ``KeyboardInterrupt`` (a Ctrl-C) at the end of training epoch ``epoch``, once: it
    writes ``marker`` then, and a later process that finds it (the rerun) lets the run go on."""

    def __init__(self, epoch: int, marker: str) -> None:
        self.epoch, self.marker = int(epoch), marker

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise KeyboardInterrupt


class CrashAtBatch(L.Callback):
    """Raises (like a crash) at the start of training batch ``batch`` of ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            raise RuntimeError("simulated preemption")
