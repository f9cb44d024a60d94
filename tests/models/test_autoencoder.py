"""`audioml-train model=autoencoder_ffnn`: one command runs the reconstruction stage and then the
classifier on frozen latent codes, both logged to the same MLflow run; the classifier beats
the majority baseline on the synthetic tones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.runners import find_run_dirs, read_metrics, run_entry_point
from mlflow.tracking import MlflowClient

from audioml.models.backbones.autoencoder import ConvAutoencoder


def test_autoencoder_shapes_and_reconstruction_target() -> None:
    autoencoder = ConvAutoencoder(input_size=(32, 48), channels=(8, 16), latent_dim=12)
    spec = torch.randn(3, 1, 64, 101)
    assert autoencoder.encode(spec).shape == (3, 12)
    assert autoencoder.decode(autoencoder.encode(spec)).shape == (3, 1, 32, 48)
    assert autoencoder.forward_features(spec).shape == (3, 1, 12)
    assert autoencoder.reconstruction_loss(spec).ndim == 0
    assert ConvAutoencoder().input_size == (64, 64)  # what model=autoencoder_ffnn gets without an image size
    names = [n for n, _ in autoencoder.backbone_parameters()]
    assert names.index("to_latent.weight") < names.index("from_latent.weight") < names.index("decoder.0.weight")


@pytest.mark.slow  # kept out of the default run for its time (15-30 s); `pytest -m slow` runs it
def test_two_stages_in_one_run(tmp_path: Path) -> None:
    run_entry_point("audioml.train", "data=synthetic", "model=autoencoder_ffnn", "model.pretrain_epochs=2",
                    "trainer.max_epochs=8", "model.optimizer.lr=3e-3", "trainer.enable_progress_bar=false",
                    f"paths.output_dir={tmp_path}")
    (run_dir,) = find_run_dirs(tmp_path)
    metrics = read_metrics(run_dir)
    assert metrics["test/macro_f1"] > metrics["baseline/macro_f1"] + 0.1, metrics

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    (run,) = client.search_runs([experiment.experiment_id])
    history = {key: [m.value for m in client.get_metric_history(run.info.run_id, key)]
               for key in ("pretrain/train/loss", "pretrain/val/loss", "train/loss", "val/macro_f1")}
    assert len(history["pretrain/train/loss"]) == 2 and len(history["pretrain/val/loss"]) == 2
    assert history["pretrain/train/loss"][-1] < history["pretrain/train/loss"][0]
    assert len(history["val/macro_f1"]) == 8 and history["train/loss"]

    # The autoencoder stays frozen in the classifier stage: its checkpoints (best and last
    # epoch) hold the same encoder and decoder, and the head is the 256-128-64 MLP.
    checkpoints = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    states = [torch.load(path, map_location="cpu", weights_only=True)["state_dict"] for path in checkpoints]
    assert len(states) >= 2
    for key in ("backbone.encoder.0.weight", "backbone.to_latent.weight", "backbone.decoder.0.weight"):
        assert all(torch.equal(state[key], states[0][key]) for state in states[1:]), key
    assert [states[0][f"backbone.head.net.{i}.weight"].shape[0] for i in (0, 4, 8)] == [256, 128, 64]
