"""Every study experiment (``conf/experiment/<dataset>/<system>.yaml``) composes with its study's
settings, documents its protocol and command, switches to the study's split with
``data.split=random``, and runs the whole pipeline (``debug=fast``: one epoch of two batches,
then the whole test split) on data generated in the publishers' layouts; pretrained backbones
start from random weights (none are downloaded). A model trained with waveform preprocessing
predicts through the same preprocessing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.datasets import make_cleaned_corpus, make_muse_package, make_ravdess
from helpers.experiments import EXPERIMENT_DIR, study_experiments
from omegaconf import OmegaConf

from audioml.api import compose_config, train
from audioml.data.decoder import ClipDecoder
from audioml.features import Preprocessed
from audioml.run.use.checkpoint import model_from_record, read_record
from audioml.run.use.inference import predict_files

STUDY_EXPERIMENTS = study_experiments()

#: Per study: what keeps a run to seconds on a CPU (sizes only; the architecture and recipe stay).
SMALL = {
    "donateacry": ["data.clip_seconds=1.0", "data.batch_size=8", "evaluation.k=2",
                   "augmentation.offline.max_copies=1"],
    "ravdess": ["data.clip_seconds=0.6", "data.batch_size=8", "features.image_size=[32,32]",
                "model.pretrain_epochs=1"],
    "muse": ["data.sequence_length=8", "data.stride=4", "data.batch_size=4"],
}
#: ImageNet CNNs pool a 7x7 map: the smallest image that keeps VGG-16's layers.
LARGER_IMAGE = {"ravdess/emotion_vgg16": ["features.image_size=[64,64]"]}


def _compose(name: str, *overrides: str):
    return compose_config([f"experiment={name}", "paths.output_dir=/tmp/audioml-compose", "paths.data_dir=/tmp/data",
                           *overrides])


@pytest.mark.parametrize("name", STUDY_EXPERIMENTS)
def test_study_experiment_composes_documents_and_switches_split(name):
    text = (EXPERIMENT_DIR / f"{name}.yaml").read_text()
    assert f"audioml-train experiment={name}" in text and "reported" in text and "protocol" in text.lower()
    config = OmegaConf.to_container(_compose(name), resolve=True)
    assert config["data"]["sample_rate"] == config["model"]["sample_rate"]
    assert config["callbacks"]["model_checkpoint"]["monitor"] == config["monitor"]
    if name.startswith("muse/"):  # the challenge partitions: grouped by subject already
        assert "split" not in config["data"]
        return
    expected = "random" if name == "ravdess/actor_cnn" else "grouped"
    assert config["data"]["split"] == expected
    assert f"experiment={name} data.split=random" in text or name == "ravdess/actor_cnn"
    switched = OmegaConf.to_container(_compose(name, "data.split=random"), resolve=True)
    assert switched["data"]["split"] == "random"
    assert {k: v for k, v in switched["data"].items() if k != "split"} == \
        {k: v for k, v in config["data"].items() if k != "split"}  # the study's fractions stay


def test_emotify_deep_features_is_the_svm_grid():
    grid = compose_config(["experiment=emotify/deep_features", "paths.output_dir=/tmp/audioml-compose"],
                          config_name="classical").grid
    assert (sorted(grid.scalers), sorted(grid.reducers), sorted(grid.estimators)) == (
        ["none", "standard"], ["none"], ["svm_cubic", "svm_linear", "svm_quadratic", "svm_rbf"])
    assert grid.select_by == "acc"  # the study's metric


def test_study_settings_reach_the_configs():
    vggish = _compose("donateacry/vggish").model.preprocess
    assert (vggish.pre_emphasis, vggish.zscore) == (0.97, True)
    muse = _compose("muse/valence_crnn")
    assert muse.model.preprocess.peak_dbfs == -3.0 and muse.data.batch_size == 64
    assert (muse.model.frontend.n_mels, muse.model.frontend.n_fft, muse.model.frontend.hop_length) == (128, 1024, 256)
    assert muse.loss._target_.endswith("CCCLoss") and muse.callbacks.early_stopping.monitor == "val/ccc"
    assert muse.model.scheduler._target_.endswith("CosineAnnealingLR") and muse.model.optimizer.weight_decay > 0
    augmented = _compose("ravdess/emotion_cnn_augmented")
    (zoom,) = augmented.augmentation.spectrogram.transforms
    assert (zoom.zoom, zoom.width_shift, zoom.height_shift) == (0.05, 0.02, 0.02)
    assert augmented.model.backbone.dense == 256 and list(augmented.features.image_size) == [256, 256]
    assert _compose("ravdess/actor_cnn").model.backbone.dense == 512
    transformer = _compose("donateacry/panns_transformer")
    assert transformer.evaluation.k == 7 and transformer.data.balance == "sampler"
    assert (transformer.model.head.d_model, transformer.model.head.num_layers, transformer.model.head.num_heads,
            transformer.model.head.pooling) == (256, 2, 4, "mean")
    assert _compose("ravdess/emotion_vgg16").model.freeze == "model.features.10"  # block3_conv1
    panns = _compose("donateacry/panns_mlp")  # early stopping, the plateau scheduler and the kept checkpoint agree
    assert (panns.monitor, panns.monitor_mode, panns.model.scheduler_monitor, panns.callbacks.early_stopping.monitor,
            panns.callbacks.model_checkpoint.monitor, panns.callbacks.model_checkpoint.mode) == \
        ("val/loss", "min", "val/loss", "val/loss", "val/loss", "min")
    autoencoder = _compose("ravdess/emotion_autoencoder")  # one resize, in the front end
    assert list(autoencoder.model.backbone.input_size) == list(autoencoder.features.image_size) == [256, 256]
    assert _compose("ravdess/emotion_autoencoder", "features=logmel").model.backbone.input_size is None  # 64x64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Three layouts, generated small: donateacry (48 clips, 24 babies), RAVDESS (6 actors),
    a MuSe package (6 subjects)."""
    root = tmp_path_factory.mktemp("data")
    # 4 babies per minority class, so every fold of a 2-fold split trains on each class
    make_cleaned_corpus(root / "donateacry-corpus", seconds=1.0,
                        per_class={"belly_pain": 8, "burping": 8, "discomfort": 8, "hungry": 16, "tired": 8})
    make_ravdess(root / "ravdess", actors=range(1, 7), statements=(1, 2), seconds=0.6, sample_rate=16000)
    make_muse_package(root / "muse" / "c3_muse_stress_2022", seconds=8.0)
    return root


def _fast_run(name: str, data_dir: Path, output: Path) -> tuple[dict, Path]:
    study = name.split("/")[0]
    overrides = [f"experiment={name}", "debug=fast", f"paths.data_dir={data_dir}", f"paths.output_dir={output}",
                 f"paths.cache_dir={data_dir.parent / 'cache'}", "data.num_workers=0",
                 "trainer.enable_progress_bar=false", "evaluation.bootstrap_samples=0"]
    probe = compose_config(overrides)
    absent = object()
    # Size overrides apply where the experiment has the key (k-fold, offline copies, two stages).
    small = [o for o in [*SMALL[study], *LARGER_IMAGE.get(name, [])]
             if OmegaConf.select(probe, o.split("=")[0], default=absent) is not absent]
    if "pretrained" in probe.model:  # random initialisation: no weights on this machine
        small.append("model.pretrained=false")
    return train(compose_config([*overrides, *small]))


#: Full-size pretrained architectures (70-140M parameters, random weights here) take 15-40 s each
#: on a shared CPU: ``-m slow`` runs them; the small ones run by default.
HEAVY = {"donateacry/panns_mlp", "donateacry/panns_transformer", "donateacry/vggish", "ravdess/emotion_vgg16"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in STUDY_EXPERIMENTS])
def test_study_experiment_runs_end_to_end(name, data_dir, tmp_path):
    metrics, run_dir = _fast_run(name, data_dir, tmp_path)
    metric = "test/ccc" if name.startswith("muse/") else "test/macro_f1"
    assert metric in metrics and math.isfinite(metrics[metric]), sorted(metrics)
    if name.startswith("donateacry/"):
        assert "test/binary_macro_f1" in metrics  # hungry vs not-hungry, scored after the 5 classes
    if name != "donateacry/panns_transformer":  # k-fold: one checkpoint per fold
        assert list((run_dir / "checkpoints").glob("best-*.ckpt")), sorted(p.name for p in run_dir.rglob("*"))
    if name == "donateacry/vggish":  # the study's preprocessing in front of VGGish's own log-mel
        _check_prediction_preprocesses(next((run_dir / "checkpoints").glob("best-*.ckpt")), data_dir)


def test_prediction_applies_the_preprocessing_the_model_was_trained_with(data_dir, tmp_path):
    """The scratch CNN with the Korean study's preprocessing on donateacry: the checkpoint carries
    it and audioml-predict's code path applies it."""
    cfg = compose_config(["data=donateacry", "model=cnn", "preprocess=[pre_emphasis,zscore]", "debug=fast",
                          "model.backbone.channels=[8,16]", "model.backbone.dense=16", "data.clip_seconds=1.0",
                          f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}",
                          f"paths.cache_dir={data_dir.parent / 'cache'}", "data.num_workers=0",
                          "trainer.enable_progress_bar=false", "evaluation.bootstrap_samples=0"])
    _, run_dir = train(cfg)
    _check_prediction_preprocesses(next((run_dir / "checkpoints").glob("best-*.ckpt")), data_dir)


def _check_prediction_preprocesses(checkpoint: Path, data_dir: Path) -> None:
    """``predict_files`` (audioml-predict's code path) rebuilds pre-emphasis + z-score in front of
    the model's front end and scores a file exactly as the model with its preprocessing does
    (and not as it would without)."""
    record, state = read_record(checkpoint)
    assert record["model"]["preprocess"] == {"_target_": "audioml.features.WaveformPreprocess",
                                             "pre_emphasis": 0.97, "zscore": True}
    model = model_from_record(record, state)
    assert isinstance(model.frontend, Preprocessed)
    clip = sorted((data_dir / "donateacry-corpus").rglob("*.wav"))[0]
    table, _ = predict_files(checkpoint, [clip], device="cpu")
    predicted = table[[f"p_{name}" for name in record["class_names"]]].to_numpy(dtype=float)[0]
    waveform = torch.from_numpy(ClipDecoder.from_settings(record["decoder"])(clip))[None]
    with torch.no_grad():
        expected = model(waveform).softmax(dim=1)[0].numpy()
        unprocessed = model.backbone(model.frontend.frontend(waveform)).softmax(dim=1)[0].numpy()
    np.testing.assert_allclose(predicted, expected, atol=1e-5)
    assert not np.allclose(expected, unprocessed, atol=1e-4)
