"""Resume machinery in process: loader positions, atomic checkpoints, damaged-file fallback, and
an interrupted real Trainer continuing into the same MLflow run exactly (weights and metrics)."""

from __future__ import annotations

import logging
import os
import random
import signal

import lightning as L
import numpy as np
import pytest
import torch
from helpers.callbacks import CrashAtBatch
from hydra import compose, initialize_config_dir
from lightning.pytorch.utilities.exceptions import SIGTERMException
from mlflow import MlflowClient

from audioml import config as entry
from audioml.data.resumable import EpochRandomSampler, EpochWeightedRandomSampler, ResumableDataLoader
from audioml.run.fit import compose as run_compose
from audioml.run.fit import resume
from audioml.run.fit.checkpointing import AtomicCheckpointIO, checkpoint_is_intact, find_resume_checkpoint
from audioml.run.outcome import PREEMPTED_EXIT_CODE, ending, stop_on_sigterm
from audioml.run.record import tracking
from audioml.run.record.store import Store
from audioml.run.rundir import RunDir


def _loader(items, sampler, batch_size=4, workers=0):
    return ResumableDataLoader(items, batch_size=batch_size, sampler=sampler, num_workers=workers,
                               generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_order_depends_on_seed_and_epoch_and_resumes_mid_epoch(workers):
    items = list(range(30))
    full = _loader(items, EpochRandomSampler(items, seed=3), workers=workers)
    epochs = []
    for epoch in range(2):
        full.batch_sampler.sampler.set_epoch(epoch)
        epochs.append([b.tolist() for b in full])
    assert sorted(sum(epochs[1], [])) == items and epochs[0] != epochs[1]
    # a new loader restored at "epoch 1, 3 batches done" continues with batch 4 of epoch 1
    state = {"epoch": 1, "batches": 3}
    resumed = _loader(items, EpochRandomSampler(items, seed=3), workers=workers)
    resumed.load_state_dict(state)
    assert [b.tolist() for b in resumed] == epochs[1][3:]
    assert resumed.state_dict() == {"epoch": 1, "batches": len(epochs[1])}
    # a recorded complete pass resumes with the next epoch from its start
    after_full_pass = _loader(items, EpochRandomSampler(items, seed=3), workers=workers)
    after_full_pass.load_state_dict({"epoch": 0, "batches": len(epochs[0])})
    assert [b.tolist() for b in after_full_pass] == epochs[1]


def test_weighted_sampler_draws_are_a_function_of_seed_and_epoch():
    weights = torch.tensor([0.1] * 10 + [1.0] * 10, dtype=torch.double)
    first, second = EpochWeightedRandomSampler(weights, 20, seed=1), EpochWeightedRandomSampler(weights, 20, seed=1)
    torch.manual_seed(0)
    draws = list(first)
    torch.manual_seed(123)  # the global RNG plays no part
    assert list(second) == draws
    second.set_epoch(1)
    assert list(second) != draws
    # under a DataLoader that must drop batches (custom batch layout), skipping still works
    loader = ResumableDataLoader(list(range(20)), batch_size=5, sampler=EpochWeightedRandomSampler(weights, 20, seed=1),
                                 generator=torch.Generator())
    reference = [b.tolist() for b in loader]
    loader.load_state_dict({"epoch": 0, "batches": 2})
    assert [b.tolist() for b in loader] == reference[2:]


def test_atomic_checkpoint_write_keeps_the_old_file_when_a_save_fails(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpt" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    assert checkpoint_is_intact(path)
    with pytest.raises(Exception):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "unpicklable": lambda: None}, path)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary left behind


def test_a_truncated_last_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    io = AtomicCheckpointIO()
    run = RunDir(tmp_path)
    last, previous = run.resume_checkpoints()
    io.save_checkpoint({"step": torch.tensor(1)}, previous)
    io.save_checkpoint({"step": torch.tensor(2)}, last)
    assert find_resume_checkpoint(run) == last
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # torn write
    with caplog.at_level(logging.WARNING, logger="audioml.run.fit.checkpointing"):
        found = find_resume_checkpoint(run)
    assert found == previous and "damaged" in caplog.text
    assert (run.checkpoints / "last.ckpt.damaged").is_file() and not last.exists()
    previous.write_bytes(b"garbage")
    assert find_resume_checkpoint(run) is None


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    states = resume.capture_rng_states()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(states, tmp_path / "rng.pt")
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    resume.restore_rng_states(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_done_marker_round_trip_and_unfinished_runs(tmp_path):
    run = RunDir(tmp_path)
    assert run.finished() is None
    run.mark_done({"test/acc": 0.5})
    assert run.finished() == {"test/acc": 0.5}
    (tmp_path / RunDir.DONE).write_text("{broken")
    assert run.finished() is None


# ----------------------------------------------- a real Trainer interrupted and continued


class _Sigterm(L.Callback):
    """Sends this process a real SIGTERM during training batch ``batch`` of ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def small_config(tmp_path_factory):
    output = tmp_path_factory.mktemp("resume")
    with initialize_config_dir(entry.CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "data=synthetic", "data.clips_per_class=12", "model=cnn", "augmentation=specaugment", "data.batch_size=4",
            f"paths.output_dir={output}", f"paths.run_dir={output}/unused", "evaluation=holdout"])
    return cfg, output, f"sqlite:///{output / 'mlflow.db'}"  # one store for the module: creating one is slow


def _fit(cfg, run_dir, store, experiment, interrupt=None, sigterm=None):
    L.seed_everything(cfg.seed, workers=True)
    datamodule = run_compose.build_datamodule(cfg)
    model = run_compose.build_model(cfg, datamodule.class_names, datamodule.train_class_counts())
    run = RunDir(run_dir)
    logger = tracking.open_run(experiment, "run", Store(store), run)
    callbacks = [resume.ResumeCheckpoint(run.checkpoints, every_n_train_steps=2, every_n_epochs=1)]
    if interrupt is not None:
        callbacks.append(CrashAtBatch(*interrupt))
    if sigterm is not None:
        callbacks.append(_Sigterm(*sigterm))
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=logger, callbacks=callbacks,
                        deterministic=True, log_every_n_steps=1, num_sanity_val_steps=0,
                        enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()])
    start = find_resume_checkpoint(run)
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=str(start) if start else None)
    except RuntimeError as error:
        assert "simulated preemption" in str(error)
    except SIGTERMException as error:
        with pytest.raises(SystemExit) as stopped, stop_on_sigterm(), ending(logger):
            raise error  # what a run does with it: its MLflow run KILLED, the process ends resumable
        assert stopped.value.code == PREEMPTED_EXIT_CODE
        assert trainer.global_step == 5  # the batch in flight when the signal came was finished
    return model, logger.run_id


@pytest.fixture(scope="module")
def uninterrupted(small_config):
    cfg, output, store = small_config
    return _fit(cfg, output / "reference", store, "reference")


@pytest.mark.parametrize("interrupt", [(1, 3), (1, 0)], ids=["mid-epoch", "first-batch"])
def test_an_interrupted_fit_continues_exactly_into_the_same_mlflow_run(small_config, uninterrupted, tmp_path,
                                                                        interrupt):
    cfg, _, store = small_config
    reference, reference_id = uninterrupted
    experiment = f"interrupted-{interrupt[0]}-{interrupt[1]}"
    _, first_id = _fit(cfg, tmp_path / "run", store, experiment, interrupt=interrupt)
    assert find_resume_checkpoint(RunDir(tmp_path / "run")) is not None
    continued, continued_id = _fit(cfg, tmp_path / "run", store, experiment)
    assert continued_id == first_id

    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, continued.state_dict()[name]), name
    client = MlflowClient(store)
    assert len(client.search_runs([client.get_experiment_by_name(experiment).experiment_id])) == 1
    # system/* are samples of the machine (MLflow's system metrics), not of the training
    keys = [k for k in client.get_run(reference_id).data.metrics if not k.startswith("system/")]
    assert {"val/loss", "val/macro_f1", "train/loss", "train/acc", "epoch"} <= set(keys)
    for key in keys:
        expected = sorted((m.step, m.value) for m in client.get_metric_history(reference_id, key))
        got = sorted((m.step, m.value) for m in client.get_metric_history(continued_id, key))
        assert got == expected, key
    assert len(client.get_metric_history(continued_id, "val/loss")) == 2  # one per epoch


def test_sigterm_checkpoints_exits_resumable_and_the_rerun_matches(small_config, uninterrupted, tmp_path):
    cfg, _, store = small_config
    reference, reference_id = uninterrupted
    previous_handler = signal.getsignal(signal.SIGTERM)
    _, run_id = _fit(cfg, tmp_path / "run", store, "sigterm", sigterm=(0, 4))
    assert signal.getsignal(signal.SIGTERM) == previous_handler  # the handler is only installed while fitting
    client = MlflowClient(store)
    assert client.get_run(run_id).info.status == "KILLED"
    saved = torch.load(RunDir(tmp_path / "run").last_checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 5  # written right after the batch during which SIGTERM arrived

    continued, continued_id = _fit(cfg, tmp_path / "run", store, "sigterm")
    assert continued_id == run_id and client.get_run(run_id).info.status == "FINISHED"
    for name, tensor in reference.state_dict().items():
        assert torch.equal(tensor, continued.state_dict()[name]), name
    for key in ("val/loss", "train/loss", "train/macro_f1"):
        assert (sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
                == sorted((m.step, m.value) for m in client.get_metric_history(reference_id, key))), key
