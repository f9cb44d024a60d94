"""The config choices the studies needed, against reference formulas: peak normalisation to a dBFS
level, pre-emphasis, per-example z-scoring, the spectrogram as a [0, 1] image (librosa + a NumPy
bilinear resize), Keras-style zoom/shift (scipy's affine transform); and the split switch
(``data.split=random`` shares groups between parts, ``grouped`` never does)."""

from __future__ import annotations

import logging

import librosa
import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
import torch
from helpers.datasets import make_ravdess

from audioml.api import compose_config
from audioml.augment import AugmentationChain, ZoomShift, zoom_shift
from audioml.data.ravdess import RavdessDataModule
from audioml.data.splits import split_groups
from audioml.data.synthetic import SyntheticDataModule
from audioml.features import LogMel, PeakNormalize, PreEmphasis, Preprocessed, WaveformPreprocess, ZScore
from audioml.run.fit.compose import build_model
from audioml.run.use.checkpoint import instantiate_model


def _waveforms(batch: int = 3, length: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scale = np.array([0.05, 0.3, 0.9])[:batch, None]
    return (scale * rng.standard_normal((batch, length)) + 0.01).astype(np.float32)


# ------------------------------------------------------------------------ waveform preprocessing
def test_peak_normalisation_reaches_the_dbfs_level():
    x = _waveforms()
    out = PeakNormalize(-3.0)(torch.from_numpy(x)).numpy()
    expected = x * (10 ** (-3.0 / 20)) / np.abs(x).max(axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(20 * np.log10(np.abs(out).max(axis=1)), -3.0, atol=1e-5)
    silent = torch.zeros(2, 100)
    assert torch.equal(PeakNormalize(-3.0)(silent), silent)  # silence stays silence, no NaN
    with pytest.raises(ValueError, match="above full scale"):
        PeakNormalize(1.0)


def test_pre_emphasis_is_the_first_order_difference_equation():
    x = _waveforms()
    out = PreEmphasis(0.97)(torch.from_numpy(x)).numpy()
    reference = scipy.signal.lfilter([1.0, -0.97], [1.0], x.astype(np.float64), axis=1)  # y[n] = x[n] - a x[n-1]
    np.testing.assert_allclose(out, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        PreEmphasis(1.5)


def test_zscore_standardises_each_example():
    x = _waveforms()
    out = ZScore()(torch.from_numpy(x)).numpy()
    reference = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)  # population std
    np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5)


def test_preprocess_choices_merge_into_one_module_in_a_fixed_order(tmp_path):
    cfg = compose_config(["data=synthetic", "preprocess=[zscore,peak_normalize,pre_emphasis]",
                          f"paths.output_dir={tmp_path}"])
    assert dict(cfg.model.preprocess) == {"_target_": "audioml.features.WaveformPreprocess", "peak_dbfs": -3.0,
                                          "pre_emphasis": 0.97, "zscore": True}
    model = instantiate_model(cfg.model, None, ["a", "b", "c"], None)
    x = _waveforms(length=16000)
    peak = x * (10 ** (-3 / 20)) / np.abs(x).max(axis=1, keepdims=True)
    emphasised = scipy.signal.lfilter([1.0, -0.97], [1.0], peak.astype(np.float64), axis=1)
    expected = (emphasised - emphasised.mean(axis=1, keepdims=True)) / emphasised.std(axis=1, keepdims=True)
    np.testing.assert_allclose(model.frontend.preprocess(torch.from_numpy(x)).numpy(), expected, rtol=1e-4, atol=1e-4)
    # The model's front end is preprocessing then log-mel: its output is the log-mel of `expected`.
    logmel = model.frontend.frontend
    np.testing.assert_allclose(model.frontend(torch.from_numpy(x)).numpy(),
                               logmel(torch.from_numpy(expected.astype(np.float32))).numpy(), atol=1e-3)
    assert isinstance(WaveformPreprocess()(torch.from_numpy(x)), torch.Tensor)  # no step: identity
    np.testing.assert_array_equal(WaveformPreprocess()(torch.from_numpy(x)).numpy(), x)


# ------------------------------------------------------------------------ spectrogram as image
def _bilinear_resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Half-pixel-centre bilinear resize (the convention of image libraries' `resize`)."""
    def weights(size_in: int, size_out: int):
        source = np.maximum((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, size_in - 1)
        return low, high, source - low

    rows_low, rows_high, row_weight = weights(image.shape[0], height)
    cols_low, cols_high, col_weight = weights(image.shape[1], width)
    top = image[rows_low] * (1 - row_weight[:, None]) + image[rows_high] * row_weight[:, None]
    return top[:, cols_low] * (1 - col_weight[None, :]) + top[:, cols_high] * col_weight[None, :]


@pytest.mark.parametrize("size", [(256, 256), (48, 40)])
def test_spectrogram_image_is_the_resized_db_mel_scaled_to_unit_range(size):
    sample_rate = 16000
    t = np.arange(int(1.5 * sample_rate)) / sample_rate
    clip = (0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-t) + 0.01 * np.random.default_rng(1).standard_normal(t.size))
    frontend = LogMel(sample_rate=sample_rate, n_fft=1024, hop_length=256, n_mels=128, log="db",
                      log_offset=1e-10, top_db=80.0, normalize="minmax", image_size=size)
    image = frontend(torch.from_numpy(clip[None].astype(np.float32)))[0, 0].numpy()
    mel = librosa.feature.melspectrogram(y=clip, sr=sample_rate, n_fft=1024, hop_length=256, n_mels=128,
                                         center=True, pad_mode="constant")
    db = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0)
    resized = _bilinear_resize(db, *size)
    expected = (resized - resized.min()) / (resized.max() - resized.min())
    assert image.shape == size and image.min() == 0.0 and image.max() == 1.0
    np.testing.assert_allclose(image, expected, atol=2e-3)
    assert frontend.frames(len(clip)) == size[1]


def test_minmax_of_a_constant_spectrogram_is_zero_and_bad_sizes_are_refused():
    frontend = LogMel(log="db", normalize="minmax", image_size=(8, 8))
    assert torch.equal(frontend(torch.zeros(1, 1600)), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="image_size"):
        LogMel(image_size=(8,))


# ------------------------------------------------------------------------ zoom / shift
def test_zoom_shift_equals_scipy_affine_transform():
    rng = np.random.default_rng(0)
    images = rng.random((3, 1, 20, 31)).astype(np.float32)
    zoom = np.array([[1.05, 0.96], [0.95, 1.0], [1.0, 1.04]])
    shift = np.array([[0.4, -0.6], [-0.3, 0.0], [1.2, 2.5]])  # pixels (height, width), beyond the edge too
    out = zoom_shift(torch.from_numpy(images), torch.from_numpy(zoom), torch.from_numpy(shift)).numpy()
    for i in range(3):
        centre = (np.array(images.shape[2:]) - 1) / 2
        # output o samples input c + z (o - c) + s: matrix diag(z), offset c - z c + s
        expected = scipy.ndimage.affine_transform(images[i, 0].astype(np.float64), np.diag(zoom[i]),
                                                  offset=centre - zoom[i] * centre + shift[i], order=1,
                                                  mode="nearest")
        np.testing.assert_allclose(out[i, 0], expected, atol=1e-5)


def test_zoom_shift_draws_shifts_within_the_keras_ranges():
    height, width = 16, 200
    ramp = torch.arange(width, dtype=torch.float32).expand(64, 1, height, width).contiguous()
    chain = AugmentationChain([ZoomShift(zoom=0.0, width_shift=0.02, height_shift=0.0, p=1.0)], seed=3)
    out = chain(ramp)
    shift = (out - ramp)[:, 0, :, 20:-20]  # interior columns: the shift itself
    per_image = shift.mean(dim=(1, 2))
    assert torch.allclose(shift, per_image[:, None, None], atol=1e-3)  # a pure translation
    assert per_image.abs().max() <= 0.02 * width + 1e-4 and per_image.abs().max() > 0.01 * width
    assert torch.equal(AugmentationChain([ZoomShift(0.0, 0.0, 0.0)], seed=3)(ramp), ramp)
    again = AugmentationChain([ZoomShift(zoom=0.0, width_shift=0.02, height_shift=0.0, p=1.0)], seed=3)
    assert torch.equal(again(ramp), out)  # seeded: the same draw
    with pytest.raises(ValueError, match="zoom"):
        ZoomShift(zoom=1.5)


def test_zoom_shift_draws_zooms_within_the_keras_range_per_axis():
    """A pure zoom about the centre turns a ramp of slope 1 into one of slope z: the slopes seen
    along each axis are the drawn factors, within U[1 - zoom, 1 + zoom], spread over the range
    and drawn independently for height and width."""
    size, zoom = 64, 0.2
    across_width = torch.arange(size, dtype=torch.float32).expand(256, 1, size, size).contiguous()
    across_height = across_width.transpose(2, 3).contiguous()
    torch.manual_seed(0)
    images = torch.cat([across_width, across_height], dim=1)  # the same draw for both channels
    out = ZoomShift(zoom=zoom, width_shift=0.0, height_shift=0.0, p=1.0).transform(images)
    centre = slice(size // 2 - 8, size // 2 + 8)  # no border clamping there for zoom <= 1.2
    width_slope = out[:, 0, centre, centre].diff(dim=2).mean(dim=(1, 2))
    height_slope = out[:, 1, centre, centre].diff(dim=1).mean(dim=(1, 2))
    for slope in (width_slope, height_slope):
        assert slope.min() >= 1 - zoom - 1e-4 and slope.max() <= 1 + zoom + 1e-4
        assert slope.min() < 1 - zoom / 2 and slope.max() > 1 + zoom / 2  # the whole range is drawn
    assert abs(float(torch.corrcoef(torch.stack([width_slope, height_slope]))[0, 1])) < 0.2  # independent


# ------------------------------------------------------------------------ the split switch
def _shared_groups(manifest, parts) -> set:
    train = set(manifest["group"].iloc[parts["train"]])
    return train & (set(manifest["group"].iloc[parts["test"]]) | set(manifest["group"].iloc[parts["val"]]))


def test_split_groups_switch():
    groups = np.array(["a", "a", "b", "b"])
    np.testing.assert_array_equal(split_groups(groups, "grouped"), groups)
    np.testing.assert_array_equal(split_groups(groups, "random"), np.arange(4))
    with pytest.raises(ValueError, match="data.split='speaker'"):
        split_groups(groups, "speaker")


@pytest.mark.parametrize("fold", [None, 1])
def test_random_split_shares_groups_and_grouped_does_not(tmp_path, fold):
    def parts(split):
        data = SyntheticDataModule(tmp_path / "synthetic", num_classes=3, clips_per_class=12, num_groups=6,
                                   seconds=0.2, sample_rate=16000, split=split, val_fraction=0.2,
                                   test_fraction=0.2, fold=fold, num_folds=3, cache_dir=tmp_path / "cache")
        data.setup()
        return data.manifest, data.split_indices

    manifest, grouped = parts("grouped")
    assert not _shared_groups(manifest, grouped)
    manifest, shuffled = parts("random")
    assert _shared_groups(manifest, shuffled)
    assert sorted(np.concatenate(list(shuffled.values()))) == list(range(len(manifest)))  # a partition
    if fold is None:  # the fractions hold per file
        assert abs(len(shuffled["test"]) - 0.2 * len(manifest)) <= 3
    with pytest.raises(ValueError, match="data.split='files'"):
        SyntheticDataModule(tmp_path / "synthetic", split="files")


def test_ravdess_random_split_shares_actors(tmp_path):
    root = make_ravdess(tmp_path / "ravdess", actors=range(1, 9), statements=(1,), seconds=0.3)

    def actors(split):
        data = RavdessDataModule(root, task="emotion", split=split, sample_rate=16000, clip_seconds=0.3,
                                 cache_dir=tmp_path / "cache")
        data.setup()
        return [set(data.manifest["actor"].iloc[data.split_indices[name]]) for name in ("train", "val", "test")]

    train, val, test = actors("grouped")
    assert not train & test and not train & val and not val & test
    train, _, test = actors("random")
    assert train & test
    with pytest.raises(ValueError, match="split=random splits files"):
        RavdessDataModule(root, split="random", test_actors=[1])


def test_cnn_image_without_a_fixed_input_size_says_how_to_get_one():
    from audioml.models.backbones.cnn import ScratchCNN

    with pytest.raises(ValueError, match="features=logmel_image"):
        ScratchCNN(channels=[4], dense=8, flatten=True, input_size=None)
    assert ScratchCNN(channels=[4], dense=8, flatten=True, input_size=[16, 16]).input_size == (16, 16)


def test_preprocess_none_builds_the_model_without_preprocessing():
    from audioml.features.logmel import LogMel
    from audioml.features.preprocess import WaveformPreprocess
    from audioml.models.backbones.cnn import ScratchCNN
    from audioml.models.classifier import AudioClassifier

    plain = AudioClassifier(ScratchCNN(channels=[4], dense=8), LogMel(16000), 2, sample_rate=16000)
    empty = AudioClassifier(ScratchCNN(channels=[4], dense=8), LogMel(16000), 2, sample_rate=16000,
                            preprocess=WaveformPreprocess())
    assert list(empty.state_dict()) == list(plain.state_dict())


# ------------------------------------------------------------------------ augment after preprocessing
@pytest.mark.parametrize("after_preprocess", [False, True])
def test_augmentation_after_preprocessing_reaches_the_front_end(tmp_path, after_preprocess):
    """Peak normalisation to -3 dBFS and a fixed -6 dB gain: preprocessed in the front end (the
    default) the gain is undone and the front end sees -3 dBFS; with
    ``augmentation.after_preprocess`` (the MuSe study's order) it sees -9 dBFS in training, and
    -3 dBFS in validation either way (no augmentation there)."""
    import lightning as L

    from audioml.augment import Gain
    from audioml.models.backbones.cnn import ScratchCNN
    from audioml.models.classifier import AudioClassifier

    data = SyntheticDataModule(tmp_path / "synthetic", num_classes=2, clips_per_class=8, num_groups=4, seconds=0.2,
                               sample_rate=16000, batch_size=4, num_workers=0, cache_dir=tmp_path / "cache")
    model = AudioClassifier(ScratchCNN(channels=[4], dense=8), LogMel(16000), 2, sample_rate=16000,
                            preprocess=WaveformPreprocess(peak_dbfs=-3.0),
                            waveform_augment=AugmentationChain([Gain(min_gain_db=-6.001, max_gain_db=-5.999, p=1.0)],
                                                               seed=0),
                            augment_preprocessed=after_preprocess)
    seen: dict[bool, list[float]] = {True: [], False: []}
    model.frontend.frontend.register_forward_pre_hook(
        lambda _, args: seen[model.trainer.training].extend(
            (20 * args[0].abs().amax(dim=1).log10()).tolist()))
    L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0, logger=False,
              enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
              default_root_dir=tmp_path).fit(model, datamodule=data)
    np.testing.assert_allclose(seen[True], -9.0 if after_preprocess else -3.0, atol=1e-3)
    np.testing.assert_allclose(seen[False], -3.0, atol=1e-3)


def test_the_muse_augmentation_preprocesses_first(caplog):
    cfg = compose_config(["experiment=muse/valence_crnn", "paths.data_dir=/tmp/data",
                          "paths.output_dir=/tmp/audioml-compose"])
    assert cfg.augmentation.after_preprocess is True
    model = build_model(cfg, ["valence"])  # audioml-train's path from the config to the model
    assert model.augment_preprocessed and model.hparams.augment_preprocessed
    assert isinstance(model.frontend, Preprocessed)
    plain = compose_config(["augmentation=waveform", "preprocess=peak_normalize"])
    assert plain.augmentation.after_preprocess is False and not build_model(plain, ["a", "b"]).augment_preprocessed
    useless = compose_config(["augmentation=waveform", "augmentation.after_preprocess=true"])  # no preprocess=
    with caplog.at_level(logging.WARNING, logger="audioml"):
        build_model(useless, ["a", "b"])
    assert "after_preprocess=true does nothing here" in caplog.text and "no preprocess= choice" in caplog.text
