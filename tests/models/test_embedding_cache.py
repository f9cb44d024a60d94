"""Frozen-backbone embedding cache: head on cached outputs == uncached forward, reuse across
runs and heads, invalidation by data / front end / weights, explicit refusal with augmentation,
and full waveform checkpoints from cached training."""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from hydra import compose, initialize_config_dir

import audioml.models.embedding_cache as embedding_cache
from audioml.data.synthetic import SyntheticDataModule
from audioml.features import LogMel
from audioml.models.backbones.cnn import ScratchCNN
from audioml.models.classifier import AudioClassifier
from audioml.models.embedding_cache import CachedEmbeddingDataModule, use_embedding_cache
from audioml.models.heads import LinearHead, TransformerHead

GENERATOR = dict(num_classes=3, clips_per_class=8, num_groups=6, seconds=0.5, learnable=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audio")


def make_datamodule(root: Path, cache_dir: Path, **overrides) -> SyntheticDataModule:
    kwargs = dict(root=root, cache_dir=cache_dir, sample_rate=16000, batch_size=8, seed=0, **GENERATOR)
    kwargs.update(overrides)
    datamodule = SyntheticDataModule(**kwargs)
    datamodule.setup("fit")
    return datamodule


def make_model(seed: int = 0, head=None, n_mels: int = 32, **overrides) -> AudioClassifier:
    torch.manual_seed(seed)
    frontend = LogMel(16000, n_fft=512, hop_length=160, win_length=400, n_mels=n_mels, normalize="instance")
    backbone = ScratchCNN(channels=[8, 16], dense=24, dropout=0.3)
    kwargs = dict(backbone=backbone, frontend=frontend, num_classes=3, freeze="all", head=head)
    kwargs.update(overrides)
    return AudioClassifier(**kwargs)



def uncached_logits(model: AudioClassifier, datamodule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        batches = [(model(w), t) for w, t in getattr(datamodule, f"{split}_dataloader")()]
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.mark.parametrize("head", [None, partial(TransformerHead, d_model=16, num_layers=1, num_heads=2)],
                         ids=["pooled-linear", "tokens-transformer"])
def test_head_on_cached_outputs_equals_uncached_forward(data_root, tmp_path, head):
    datamodule = make_datamodule(data_root, tmp_path / "cache")
    model = make_model(head=head)
    expected, expected_targets = uncached_logits(model, datamodule, "test")
    wrapped = use_embedding_cache(model, datamodule, tmp_path / "cache")
    assert isinstance(wrapped, CachedEmbeddingDataModule)
    assert model.embedding_input == ("pooled" if head is None else "tokens")
    batch, _ = next(iter(wrapped.test_dataloader()))
    assert batch.dim() == (2 if head is None else 3)
    model.eval()
    with torch.no_grad():
        cached = torch.cat([model(x) for x, _ in wrapped.test_dataloader()])
    targets = torch.cat([t for _, t in wrapped.test_dataloader()])
    torch.testing.assert_close(cached, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(targets, expected_targets)
    assert len(wrapped.train_dataloader().dataset) == len(datamodule.dataset("train"))
    assert wrapped.split_manifest("test").equals(datamodule.split_manifest("test"))  # delegated


def test_cache_reused_across_runs_and_heads_and_invalidated_by_inputs(data_root, tmp_path, compute_calls):
    cache_dir = tmp_path / "cache"

    def run(datamodule=None, **model_args) -> tuple[str, str]:
        datamodule = datamodule or make_datamodule(data_root, cache_dir)
        wrapped = use_embedding_cache(make_model(**model_args), datamodule, cache_dir)
        return wrapped.cache_path.name, wrapped.cache_status

    first, status = run()
    assert status == "built" and compute_calls == [24]
    compute_calls.clear()
    assert run() == (first, "hit") and compute_calls == []  # second run: no backbone pass
    assert run(head=partial(LinearHead, dropout=0.5))[0] == first and compute_calls == []  # head sweep
    assert run(optimizer=partial(torch.optim.SGD, lr=0.1))[0] == first and compute_calls == []
    changed = {
        "weights": run(seed=1),
        "front end": run(n_mels=40),
        "data": run(datamodule=make_datamodule(data_root, cache_dir, clip_seconds=0.4)),
        "tokens": run(head=partial(TransformerHead, d_model=16, num_layers=1, num_heads=2)),
    }
    names = [name for name, _ in changed.values()]
    assert first not in names and len(set(names)) == 4
    assert all(status == "built" for _, status in changed.values()) and len(compute_calls) == 4
    assert len(list(cache_dir.glob("embeddings-*.npy"))) == 5


def test_augmentation_or_partial_freeze_disables_cache_with_a_log_line(data_root, tmp_path, caplog):
    datamodule = make_datamodule(data_root, tmp_path / "cache")
    caplog.set_level(logging.INFO, logger="audioml.models.embedding_cache")
    model = make_model(spec_augment=torchaudio.transforms.FrequencyMasking(4))
    assert use_embedding_cache(model, datamodule, tmp_path / "cache") is datamodule
    assert model.embedding_input is None
    assert "embedding cache disabled" in caplog.text
    assert "spec_augment (FrequencyMasking) must be seen by the backbone" in caplog.text
    caplog.clear()
    model = make_model(freeze="features.3")
    assert use_embedding_cache(model, datamodule, tmp_path / "cache") is datamodule
    model = make_model(embedding_cache=False)
    assert use_embedding_cache(model, datamodule, tmp_path / "cache") is datamodule
    assert "model.embedding_cache is off" in caplog.text
    assert not list((tmp_path / "cache").glob("embeddings-*"))


def _compose(output_dir: Path, run_name: str, *overrides: str):
    from audioml.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[
            "data=synthetic", "model=cnn", "model.freeze=all", "logger=none", "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false", "data.clips_per_class=8", "data.num_groups=6",
            "data.seconds=0.5", "model.backbone.channels=[8,16]", "model.backbone.dense=24",
            f"paths.output_dir={output_dir}", f"paths.run_dir={output_dir}/runs/{run_name}", *overrides])


def test_cached_training_reuses_embeddings_and_checkpoint_runs_on_waveforms(tmp_path, caplog):
    from audioml.run.fit.training import train
    from audioml.run.use.inference import evaluate_checkpoint

    caplog.set_level(logging.INFO, logger="audioml")
    first = _compose(tmp_path, "a")
    train(first, tmp_path / "runs" / "a")
    assert "embedding cache built" in caplog.text
    caplog.clear()
    second = _compose(tmp_path, "b", "model.optimizer.lr=0.01")  # a sweep job: other head settings
    metrics = train(second, tmp_path / "runs" / "b").metrics
    assert "embedding cache hit" in caplog.text
    assert json.loads((tmp_path / "runs" / "b" / "metrics.json").read_text())["test/acc"] == pytest.approx(
        metrics["test/acc"])
    (best,) = (tmp_path / "runs" / "b" / "checkpoints").glob("best-*.ckpt")
    # The checkpoint is a full waveform model: evaluation runs front end + backbone + head.
    reproduced, _ = evaluate_checkpoint(best, second.paths, second.trainer)
    for name in ("test/acc", "test/macro_f1", "test/loss"):
        assert reproduced[name] == pytest.approx(metrics[name], abs=1e-5), name
    state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.startswith("backbone.features.") for k in state) and any(k.startswith("backbone.head.") for k in state)
    assert np.isfinite(metrics["test/loss"])


def test_offline_copies_enter_the_key():
    from audioml.data.base import WaveformDataset, _RowView

    array = np.zeros((4, 8), dtype=np.float32)

    def fingerprint(extra):
        view = _RowView(array, np.arange(4), extra)
        return embedding_cache._items_fingerprint(WaveformDataset(view, np.zeros(6), np.arange(len(view))))

    copies = np.ones((2, 8), dtype=np.float32)
    assert fingerprint(None) != fingerprint(copies) != fingerprint(copies * 2)
    assert fingerprint(copies) == fingerprint(copies.copy())


def test_evaluation_loaders_hold_the_whole_split_in_one_batch(data_root, tmp_path):
    datamodule = make_datamodule(data_root, tmp_path / "cache", batch_size=2)
    model = make_model()
    cached = use_embedding_cache(model, datamodule, tmp_path / "cache")
    assert isinstance(cached, CachedEmbeddingDataModule)
    for split in ("val", "test"):
        original = getattr(datamodule, f"{split}_dataloader")()
        batches = list(getattr(cached, f"{split}_dataloader")())
        assert len(original.dataset) > 2 and len(batches) == 1  # not the training batch size
        embeddings, targets = batches[0]
        rows = original.dataset.indices
        assert np.array_equal(embeddings.numpy(), cached.embeddings[rows])  # same rows, same order
        assert np.array_equal(targets.numpy(), original.dataset.targets[rows])
    assert [len(t) for t, _ in cached.train_dataloader()][0] == 2  # training batches stay as configured


def test_validation_puts_every_module_back_in_its_mode(data_root, tmp_path):
    """Lightning's default restores each submodule's mode after validation; audioml overrides the
    hooks (a head-only fit switches only the head) and must do the same."""
    import lightning as L

    class Modes(L.Callback):
        def __init__(self):
            self.after_validation: list[dict[str, bool]] = []

        def on_train_start(self, trainer, pl_module):
            pl_module.backbone.features.eval()  # e.g. a frozen block kept in eval mode

        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch:
                self.after_validation.append({n: m.training for n, m in pl_module.named_modules()})

    for freeze, cache in (("none", False), ("all", True)):
        datamodule = make_datamodule(data_root, tmp_path / "cache")
        model = make_model(freeze=freeze, embedding_cache=cache)
        data = use_embedding_cache(model, datamodule, tmp_path / "cache") if cache else datamodule
        assert (model.embedding_input is not None) == cache
        modes = Modes()
        L.Trainer(max_epochs=2, callbacks=[modes], logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(model, datamodule=data)
        (after,) = modes.after_validation
        assert not any(mode for name, mode in after.items() if name.startswith("backbone.features")), freeze
        assert after["backbone.head"] and after[""], freeze


def test_a_batch_limit_keeps_the_configured_evaluation_batches(data_root, tmp_path):
    """``limit_val_batches`` counts batches of data.batch_size: the whole-split batch would change
    what it means (and a fraction of one batch is refused by Lightning)."""
    import lightning as L

    from audioml.run.fit.head_only import HeadOnlyCheckpoints, add_head_only_checkpoints
    from audioml.run.fit.resume import ResumeCheckpoint

    datamodule = make_datamodule(data_root, tmp_path / "cache", batch_size=2)
    model = make_model()
    cached = use_embedding_cache(model, datamodule, tmp_path / "cache")
    trainer = L.Trainer(max_epochs=1, limit_val_batches=0.5, logger=False, enable_progress_bar=False,
                        callbacks=[ResumeCheckpoint(dirpath=tmp_path / "ckpt")], default_root_dir=tmp_path)
    cached.trainer = trainer
    assert len(cached.val_dataloader()) == len(datamodule.val_dataloader()) > 1
    # the head-only callback goes before the checkpoint callbacks (its on_train_end runs first)
    added = add_head_only_checkpoints(trainer, cached.frozen_fingerprint)
    kinds = [type(c) for c in trainer.callbacks]
    assert isinstance(added, HeadOnlyCheckpoints) and kinds.index(HeadOnlyCheckpoints) < kinds.index(ResumeCheckpoint)


def test_a_run_failing_after_its_fit_still_logs_its_learning_curves(tmp_path, monkeypatch):
    """The curves are logged with the run's other reports; a test that fails after the fit must
    not leave them out of MLflow."""
    from mlflow import MlflowClient

    from audioml.run.fit.training import TrainingRun, train

    cfg = _compose(tmp_path, "failing", "logger=mlflow", "logger.experiment_name=synthetic", "trainer.max_epochs=1",
                   "logger.system_metrics=false")

    def failing_test(self, *args, **kwargs):
        raise RuntimeError("the test set is unreadable")

    monkeypatch.setattr(TrainingRun, "_test", failing_test)
    with pytest.raises(RuntimeError, match="unreadable"):
        train(cfg, tmp_path / "runs" / "failing")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    run_id = (tmp_path / "runs" / "failing" / "mlflow_run_id").read_text().strip()
    assert client.get_run(run_id).info.status == "FAILED"
    assert {"learning_curves.png", "learning_curves.csv"} <= {a.path for a in client.list_artifacts(run_id)}
