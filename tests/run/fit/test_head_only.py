"""Head-only jobs (a frozen backbone on the embedding cache): checkpoints hold the head alone
while the fit runs, a SIGTERM-interrupted job continues bit-exactly into the same MLflow run,
and the finished run's checkpoint is the full model that ``audioml-eval`` / ``audioml-predict``
score on waveforms. A real Trainer on generated tones, EfficientAT mn04 with random weights."""

from __future__ import annotations

import os
import signal

import lightning as L
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from audioml.api import compose_config, train
from audioml.run.fit import compose as run_compose
from audioml.run.fit import training
from audioml.run.fit.head_only import HEAD_ONLY_KEY, HeadOnlyCheckpointError, HeadOnlyCheckpoints, frozen_keys
from audioml.run.use.inference import predict_files

MLP = "{_target_:audioml.models.heads.MLPHead,_partial_:true,hidden:32,dropout:0.3}"


class SigtermAt(L.Callback):
    """Sends this process a SIGTERM at the start of training batch ``batch`` of ``epoch``."""

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)


def _config(tmp_path, name: str, *extra: str):
    return compose_config(["data=synthetic", "data.clips_per_class=8", "data.batch_size=4", "model=efficientat_mn04",
                           "model.freeze=all", "++model.pretrained=false", f"model.head={MLP}",
                           "trainer.max_epochs=5", "trainer.enable_progress_bar=false",
                           "++trainer.enable_model_summary=false", "evaluation.bootstrap_samples=0",
                           "logger.log_model=false", f"paths.cache_dir={tmp_path / 'cache'}",
                           f"paths.output_dir={tmp_path / name}", *extra])


def _history(run_dir) -> dict[str, list[tuple[int, float]]]:
    client = MlflowClient(f"sqlite:///{run_dir.parent.parent / 'mlflow' / 'mlflow.db'}")
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted head-only job, and the same job SIGTERMed in epoch 2 and continued."""
    tmp_path = tmp_path_factory.mktemp("head-only")
    whole_metrics, whole_dir = train(_config(tmp_path, "whole"))
    original = run_compose.build_trainer

    def with_sigterm(cfg, run_dir, callbacks, logger):  # the interruption: a SIGTERM in epoch 2
        return original(cfg, run_dir, [*callbacks, SigtermAt(epoch=2, batch=1)], logger)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as stopped:
        patch.setattr(run_compose, "build_trainer", with_sigterm)
        patch.setattr(training, "build_trainer", with_sigterm)
        train(_config(tmp_path, "resumed"))
    (resumed_dir,) = (tmp_path / "resumed" / "runs").iterdir()
    interrupted = {"code": stopped.value.code, "run_id": (resumed_dir / "mlflow_run_id").read_text().strip(),
                   "last": torch.load(resumed_dir / "checkpoints" / "last.ckpt", weights_only=True)}
    resumed_metrics, again = train(_config(tmp_path, "resumed"))
    assert again == resumed_dir
    return {"whole": (whole_metrics, whole_dir), "resumed": (resumed_metrics, resumed_dir), "interrupted": interrupted}


def test_checkpoints_hold_only_the_head_during_the_fit(runs):
    last = runs["interrupted"]["last"]
    assert runs["interrupted"]["code"] == 143
    marker = last[HEAD_ONLY_KEY]
    assert marker["frozen_keys"] and all(k.startswith(("frontend.", "backbone.")) for k in marker["frozen_keys"])
    assert not set(marker["frozen_keys"]) & set(last["state_dict"])
    assert all(k.startswith("backbone.head.") or not k.startswith(("frontend.", "backbone."))
               for k in last["state_dict"]), "only the head's tensors"


def test_an_interrupted_head_only_job_continues_bit_exactly_into_the_same_mlflow_run(runs):
    (whole, whole_dir), (resumed, resumed_dir) = runs["whole"], runs["resumed"]
    for name in ("test/acc", "test/loss", "test/macro_f1", "val/best_macro_f1"):
        assert resumed[name] == whole[name], name
    whole_best = torch.load(next((whole_dir / "checkpoints").glob("best-*.ckpt")), weights_only=True)["state_dict"]
    resumed_best = torch.load(next((resumed_dir / "checkpoints").glob("best-*.ckpt")), weights_only=True)["state_dict"]
    assert whole_best.keys() == resumed_best.keys()
    assert all(torch.equal(whole_best[k], resumed_best[k]) for k in whole_best)
    assert (resumed_dir / "mlflow_run_id").read_text().strip() == runs["interrupted"]["run_id"]
    assert (resumed_dir / "DONE").is_file()
    whole_curves, resumed_curves = _history(whole_dir), _history(resumed_dir)
    assert {"val/loss", "train/loss", "val/macro_f1"} <= set(resumed_curves)
    for key in ("val/loss", "train/loss", "val/macro_f1"):  # every epoch once, with the same values
        assert resumed_curves[key] == whole_curves[key], key


def test_the_finished_run_leaves_full_checkpoints_that_predict_on_waveforms(runs):
    _, run_dir = runs["resumed"]
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    left_out = runs["interrupted"]["last"][HEAD_ONLY_KEY]["frozen_keys"]
    for path in (best, run_dir / "checkpoints" / "last.ckpt"):
        checkpoint = torch.load(path, weights_only=True)
        assert HEAD_ONLY_KEY not in checkpoint
        assert set(left_out) <= set(checkpoint["state_dict"]), path.name  # every frozen tensor is back
    tested = pd.read_csv(run_dir / "test_predictions.csv")
    files, skipped = predict_files(best, [str(p) for p in tested["path"]], device="cpu")
    assert skipped.empty
    probabilities = [c for c in tested.columns if c.startswith("p_")]
    merged = tested.merge(files, on="path", suffixes=("_test", "_predict"))
    assert len(merged) == len(tested)
    for column in probabilities:  # the full waveform model scores what the cached-head test scored
        assert merged[f"{column}_predict"].to_numpy() == pytest.approx(merged[f"{column}_test"].to_numpy(), abs=1e-5)


def test_a_head_trained_on_other_backbone_weights_is_refused(runs):
    _, run_dir = runs["resumed"]
    from audioml.run.use.checkpoint import model_from_record, read_record

    record, state = read_record(run_dir / "checkpoints" / "last.ckpt")
    model = model_from_record(record, state)
    model.embedding_input = "pooled"
    callback = HeadOnlyCheckpoints("another-fingerprint")
    callback.setup(None, model, "fit")
    head_only = {"state_dict": {k: v for k, v in state.items() if k not in frozen_keys(model)},
                 HEAD_ONLY_KEY: {"format": 1, "fingerprint": "the-first-one", "frozen_keys": frozen_keys(model)}}
    with pytest.raises(HeadOnlyCheckpointError, match="the-first-one.*another-fingerprint"):
        callback.on_load_checkpoint(None, model, head_only)


def test_eval_and_predict_refuse_a_head_only_checkpoint_saying_how_to_finish_it(runs, tmp_path):
    from audioml.run.use.checkpoint import read_record

    path = tmp_path / "last.ckpt"
    torch.save(runs["interrupted"]["last"], path)
    with pytest.raises(ValueError, match="holds only the head.*Rerun the training command"):
        read_record(path)
