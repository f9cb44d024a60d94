"""A classifier head with a second input (``model.head.extra_features=egemaps``): the vector
is openSMILE's eGeMAPS of each clip, standardised with the training clips' statistics; a real
training run computes it once per clip (not per epoch), before waveform augmentation; the
checkpoint rebuilds the model, which computes it for new files; export refuses such a model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from audioml.api import compose_config, train
from audioml.features.smile import SmileInput, SmileSettings
from audioml.run.use.checkpoint import model_from_record, read_record
from audioml.run.use.export import ExportError, export_checkpoint

opensmile = pytest.importorskip("opensmile", reason="the opensmile extra (pip install -e '.[opensmile]')")

HEAD = "model.head={_target_:audioml.models.heads.MLPHead,_partial_:true,hidden:16,extra_features:egemaps}"
QUICK = ["data=synthetic", "data.clips_per_class=6", "logger=none", "trainer.max_epochs=2",
         "trainer.enable_progress_bar=false", "data.num_workers=0", "evaluation.bootstrap_samples=0",
         "model=cnn", "model.backbone.channels=[8,16]", "model.backbone.dense=16"]


def test_the_extra_input_is_opensmiles_vector_standardised():
    rng = np.random.default_rng(0)
    clips = torch.from_numpy((0.1 * rng.standard_normal((6, 16000))).astype(np.float32))
    extra = SmileInput("egemaps", 16000)
    extra.fit([clips[:3], clips[3:]])
    reference = np.stack([opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02).process_signal(
        clip.numpy(), 16000).to_numpy()[0] for clip in clips])
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    expected = (reference - mean) / np.where(std > 1e-12, std, 1.0)
    assert extra.width == 88
    np.testing.assert_allclose(extra(clips).numpy(), expected, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="use one of"):
        SmileInput("mfcc", 16000)


@pytest.fixture(scope="module")
def extra_run(tmp_path_factory) -> tuple[Path, list[int]]:
    """A short real training run with the eGeMAPS head and waveform augmentation; the number
    of openSMILE computations it made, and its best checkpoint."""
    folder = tmp_path_factory.mktemp("extra")
    calls: list[int] = []
    real = SmileSettings.describe
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(SmileSettings, "describe", lambda self, *a: (calls.append(1), real(self, *a))[1])
        cfg = compose_config([*QUICK, HEAD, "augmentation=waveform", f"paths.output_dir={folder}",
                              f"hydra.run.dir={folder / 'run'}"])
        _, run_dir = train(cfg)
    return next((run_dir / "checkpoints").glob("best-*.ckpt")), calls


def test_training_computes_each_clip_once_and_the_checkpoint_rebuilds_the_model(extra_run):
    checkpoint, calls = extra_run
    record, state = read_record(checkpoint)
    assert record["model"]["head"]["extra_features"] == "egemaps"
    clips = 3 * 6  # every clip of the synthetic data set: train (fit + 2 epochs), val (2 epochs), test
    assert 0 < len(calls) <= clips  # once per clip, though waveform augmentation changes every batch
    model = model_from_record(record, state).eval()
    assert model.extra_input is not None and not torch.equal(model.extra_input.std, torch.ones(88))
    waveform = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 16000 * 2)).astype(np.float32) * 0.1)
    with torch.no_grad():
        computed = model(waveform)  # new files: the model computes the vector itself
        given = model(waveform, model.extra_input(waveform))
        zeroed = model(waveform, torch.zeros(2, 88))
    assert computed.shape == (2, 3) and torch.allclose(computed, given)
    assert not torch.allclose(computed, zeroed)  # the head does read the second input


def test_export_refuses_a_model_whose_head_takes_opensmile_features(extra_run, tmp_path):
    checkpoint, _ = extra_run
    with pytest.raises(ExportError, match="extra_features=egemaps.*audioml-predict"):
        export_checkpoint(checkpoint, "onnx", tmp_path / "model.onnx", output_dir=tmp_path)
    assert not (tmp_path / "model.onnx").exists()


def test_mixup_token_heads_and_sequence_regressors_refuse_extra_features(tmp_path):
    from audioml.run.fit.compose import build_model

    cfg = compose_config([*QUICK, HEAD, "augmentation=mixup", f"paths.output_dir={tmp_path}"])
    with pytest.raises(Exception, match="mixup mixes spectrograms"):  # Hydra wraps the ValueError
        build_model(cfg, ["a", "b", "c"])
    cfg = compose_config([*QUICK, "model.head={_target_:audioml.models.heads.TransformerHead,_partial_:true,"
                          "extra_features:egemaps}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(Exception, match="MLPHead or LinearHead"):
        build_model(cfg, ["a", "b", "c"])
    cfg = compose_config(["data=muse", "model=crnn_attention", "loss=ccc", f"paths.output_dir={tmp_path}",
                          "model.head={_target_:audioml.models.heads.MLPHead,_partial_:true,extra_features:egemaps}"])
    with pytest.raises(Exception, match="sequence regressor's head scores each window"):
        build_model(cfg, ["valence"])
