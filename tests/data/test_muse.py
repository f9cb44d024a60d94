"""MuSe-Stress DataModule on generated packages in the 2021 and 2022 layouts: windows aligned to
label timestamps, sequence counts, partitions, train-only normalisation, errors."""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from helpers.datasets import make_muse_package

from audioml.data.muse import MuseDataModule, cut_windows, sequence_starts, window_starts
from audioml.features import LogMel
from audioml.models.backbones.crnn import CRNNAttention
from audioml.models.regressor import SequenceRegressor


def _module(root: Path, **kwargs) -> MuseDataModule:
    defaults = dict(sample_rate=16000, sequence_length=8, stride=4, batch_size=4)
    return MuseDataModule(root, **{**defaults, **kwargs})


def test_pure_window_and_sequence_functions():
    assert window_starts(np.array([0, 500, 1000]), 0.5, "start", 16000).tolist() == [0, 8000, 16000]
    assert window_starts(np.array([500]), 0.5, "end", 16000).tolist() == [0]
    assert window_starts(np.array([500]), 0.5, "center", 16000).tolist() == [4000]
    audio = np.arange(10, dtype=np.float32) + 1
    windows = cut_windows(audio, np.array([-2, 0, 8]), 4)
    assert windows.tolist() == [[0, 0, 1, 2], [1, 2, 3, 4], [9, 10, 0, 0]]
    assert sequence_starts(24, 8, 4).tolist() == [0, 4, 8, 12, 16]
    assert sequence_starts(25, 8, 8).tolist() == [0, 8, 16, 17]  # the tail gets an end-aligned sequence
    assert sequence_starts(7, 8, 4).tolist() == []
    with pytest.raises(ValueError, match="alignment"):
        window_starts(np.array([0]), 0.5, "middle", 16000)


@pytest.mark.parametrize("version", [2022, 2021])
def test_layouts_windows_sequences_and_partitions(tmp_path, version):
    root = make_muse_package(tmp_path / "muse" / f"c3_muse_stress_{version}", version=version, sample_rate=8000)
    module = _module(tmp_path / "muse", targets=["valence", "arousal"])  # finds the package folder
    module.setup()
    assert module.task == "regression" and module.class_names == ["valence", "arousal"] and module.num_classes == 2
    # 12 s at 500 ms -> 24 windows per labelled recording (3 train + 2 devel; test labels withheld)
    assert len(module.windows) == 5 * 24
    counts = {k: len(v) for k, v in module.split_indices.items()}
    assert counts == {"train": 3 * 5, "val": 2 * 3, "test": 2 * 3}  # stride 4 vs eval stride 8
    assert np.array_equal(module.split_indices["test"], module.split_indices["val"])  # devel stands in
    groups = {k: set(module.manifest["recording"].iloc[v]) for k, v in module.split_indices.items()}
    assert groups["train"] == {"1", "2", "3"} and groups["val"] == {"4", "5"}
    waveform, target = module.dataset("train")[0]
    assert waveform.shape == (8, 8000) and waveform.dtype == torch.float32  # resampled from 8 kHz
    assert target.shape == (8, 2) and target.dtype == torch.float32
    labels = pd.read_csv(root / "label_segments" / "valence" / "1.csv")
    assert np.allclose(target[:, 0].numpy(), labels["value"].to_numpy()[:8])
    batch = next(iter(module.train_dataloader()))
    assert batch[0].shape == (4, 8, 8000) and batch[1].shape == (4, 8, 2)
    assert module.train_class_counts() == []


@pytest.mark.parametrize("alignment, offset_seconds", [("start", 0.0), ("end", -0.5), ("center", -0.25)])
def test_windows_aligned_to_label_timestamps(tmp_path, alignment, offset_seconds):
    make_muse_package(tmp_path, ramp=True, partitions={"train": ["1"], "devel": ["2"]})
    module = _module(tmp_path, alignment=alignment)
    module.setup()
    length = 12 * 16000
    for row in (0, 5, 23):
        timestamp = module.windows["timestamp"].iloc[row]
        window = np.asarray(module._waveforms[row])
        start = int(round((timestamp / 1000 + offset_seconds) * 16000))
        expected = np.array([(start + i) / length if 0 <= start + i < length else 0.0 for i in range(8000)])
        assert np.allclose(window, expected, atol=1e-6), (alignment, row)


def test_test_partition_used_when_labels_exist(tmp_path):
    make_muse_package(tmp_path, test_labels=True)
    module = _module(tmp_path)
    module.setup()
    assert set(module.manifest["recording"].iloc[module.split_indices["test"]]) == {"6"}
    assert not set(module.split_indices["test"]) & set(module.split_indices["val"])
    withheld = tmp_path / "withheld"
    make_muse_package(withheld)
    with pytest.raises(FileNotFoundError, match="withholds"):
        _module(withheld, test_partition="test").setup()


def _regressor(n_mels: int = 32, hop_length: int = 256) -> SequenceRegressor:
    """A small CRNN regressor whose front end is a log-mel with these settings."""
    frontend = LogMel(sample_rate=16000, n_mels=n_mels, n_fft=512, hop_length=hop_length)
    backbone = CRNNAttention(n_mels=n_mels, channels=[4], lstm_hidden=8, lstm_layers=1, attention_dim=8)
    return SequenceRegressor(backbone, frontend, 1, class_names=["valence"])


def _reference_statistics(folder: Path, recordings, n_mels: int = 32, hop_length: int = 256):
    """librosa on the 0.5 s windows cut straight from the files."""
    mels = []
    for recording in recordings:
        audio, _ = sf.read(folder / "raw_data/audio" / f"{recording}.wav", dtype="float32")
        for start in range(0, len(audio) - 7999, 8000):
            mel = librosa.feature.melspectrogram(y=audio[start:start + 8000], sr=16000, n_fft=512,
                                                 hop_length=hop_length, n_mels=n_mels, center=True,
                                                 pad_mode="constant")
            mels.append(np.log(mel + 1e-6))
    stacked = np.concatenate(mels, axis=1)
    return stacked.mean(axis=1), stacked.std(axis=1)


def test_normalisation_statistics_from_training_windows_only(tmp_path):
    make_muse_package(tmp_path, devel_gain=8.0)
    module = _module(tmp_path)
    module.setup()
    model = _regressor()
    assert torch.equal(model.feature_mean, torch.zeros(32)) and torch.equal(model.feature_std, torch.ones(32))
    stats = model.fit_feature_statistics(module.statistics_batches())
    assert set(stats) == {"feature_mean", "feature_std"}
    assert stats["feature_mean"].shape == (32,) and stats["feature_std"].shape == (32,)
    assert torch.equal(model.feature_mean, stats["feature_mean"])  # buffers: they travel in checkpoints
    mean, std = _reference_statistics(tmp_path, ["1", "2", "3"])
    assert np.allclose(stats["feature_mean"].numpy(), mean, atol=2e-3)
    assert np.allclose(stats["feature_std"].numpy(), std, rtol=2e-3, atol=2e-3)
    mean_all, _ = _reference_statistics(tmp_path, ["1", "2", "3", "4", "5"])
    assert np.abs(stats["feature_mean"].numpy() - mean_all).mean() > 0.5  # louder devel would shift it


@pytest.mark.parametrize("n_mels, hop_length", [(16, 256), (32, 128)])
def test_normalisation_statistics_follow_the_model_front_end(tmp_path, n_mels, hop_length):
    """The statistics come from the model's own front end: change a setting, they change with it."""
    make_muse_package(tmp_path)
    module = _module(tmp_path)
    module.setup()
    model = _regressor(n_mels, hop_length)
    stats = model.fit_feature_statistics(module.statistics_batches(batch_size=7))
    mean, std = _reference_statistics(tmp_path, ["1", "2", "3"], n_mels, hop_length)
    assert stats["feature_mean"].shape == (n_mels,)
    assert np.allclose(stats["feature_mean"].numpy(), mean, atol=2e-3)
    assert np.allclose(stats["feature_std"].numpy(), std, rtol=2e-3, atol=2e-3)


def test_short_recordings_and_labels_past_the_audio_are_skipped(tmp_path):
    make_muse_package(tmp_path, short={"3": 3.0}, extra_label_seconds=1.0)
    module = _module(tmp_path)
    module.setup()
    reasons = dict(zip(module.skipped["path"].map(lambda p: Path(p).stem), module.skipped["reason"]))
    assert "3" in reasons and "sequence_length" in reasons["3"]  # 6 windows < 8
    assert "outside" in reasons["1"]  # the 2 labels past the 12 s of audio
    assert set(module.manifest["recording"]) == {"1", "2", "4", "5"}
    assert module.manifest["end_ms"].max() == 11500


def test_missing_data_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="End User License Agreement"):
        _module(tmp_path / "nothing").setup()
    make_muse_package(tmp_path / "pkg")
    (tmp_path / "pkg/label_segments/valence/2.csv").unlink()
    with pytest.raises(FileNotFoundError, match=r"label_segments/valence/2\.csv"):
        _module(tmp_path / "pkg").setup()
    with pytest.raises(ValueError, match="targets"):
        _module(tmp_path / "pkg", targets=["dominance"])
    with pytest.raises(ValueError, match="does not apply"):
        _module(tmp_path / "pkg", fold=0)


def test_windows_are_cached(tmp_path):
    make_muse_package(tmp_path / "pkg", partitions={"train": ["1", "2"], "devel": ["3"]})
    first = _module(tmp_path / "pkg", cache_dir=tmp_path / "cache")
    first.setup()
    assert len(list((tmp_path / "cache").glob("waveforms-*.npy"))) == 1
    second = _module(tmp_path / "pkg", cache_dir=tmp_path / "cache")
    second.setup()
    assert isinstance(second._waveforms, np.memmap)  # read back, not decoded again
    assert np.array_equal(np.asarray(first._waveforms), np.asarray(second._waveforms))


@pytest.mark.parametrize("targets", [["valence"], ["valence", "arousal"]])
def test_audioml_train_gives_a_regressor_intervals_and_the_mean_baseline(tmp_path, targets):
    """A MuSe run of audioml-train's code path reports, beside its test CCC / MSE / MAE, their
    recording-bootstrap intervals and the scores of predicting the training mean (CCC 0, the MSE
    checked here against the test windows' targets)."""
    from audioml.api import compose_config, train
    from audioml.run.fit.compose import build_datamodule

    root = make_muse_package(tmp_path / "c3_muse_stress_2022", seconds=6.0, test_labels=True,
                             partitions={"train": ["1", "2", "3"], "devel": ["4", "5"], "test": ["6", "7", "8"]})
    cfg = compose_config(["data=muse", f"data.root={root}", "model=crnn_attention", "loss=ccc",
                          f"data.targets=[{','.join(targets)}]", "data.sequence_length=4", "data.stride=2",
                          "data.batch_size=4", "debug=fast", f"paths.output_dir={tmp_path / 'out'}",
                          f"paths.cache_dir={tmp_path / 'cache'}", "data.num_workers=0", "monitor=val/ccc",
                          "monitor_mode=max", "trainer.enable_progress_bar=false", "evaluation.bootstrap_samples=200"])
    metrics, _ = train(cfg)
    datamodule = build_datamodule(cfg)
    truth = np.stack(datamodule.split_manifest("test")["target"]).reshape(-1, len(targets)).astype(np.float64)
    mean = datamodule.train_target_mean()
    assert mean.shape == (len(targets),)
    suffixes = [""] if len(targets) == 1 else [f"_{name}" for name in targets]
    for column, suffix in enumerate(suffixes):
        for name in ("ccc", "mse", "mae"):
            low, high = metrics[f"test/{name}{suffix}_ci_low"], metrics[f"test/{name}{suffix}_ci_high"]
            assert low <= metrics[f"test/{name}{suffix}"] + 1e-6 and metrics[f"test/{name}{suffix}"] <= high + 1e-6
            assert high > low  # three test recordings resampled
        assert metrics[f"baseline/ccc{suffix}"] == pytest.approx(0.0, abs=1e-12)  # a constant prediction
        assert metrics[f"baseline/mse{suffix}"] == pytest.approx(((truth[:, column] - mean[column]) ** 2).mean())
