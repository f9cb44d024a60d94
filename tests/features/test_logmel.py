"""LogMel against librosa.feature.melspectrogram on synthetic tones."""

import librosa
import numpy as np
import pytest
import torch

from audioml.features import LogMel


def _tones(sample_rate: int, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    chirp = np.sin(2 * np.pi * (200 + 1500 * t) * t)
    return np.stack([0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t),
                     0.3 * chirp]).astype(np.float32)


@pytest.mark.parametrize("settings", [
    dict(sample_rate=16000, n_fft=512, hop_length=160, win_length=400, n_mels=64),
    dict(sample_rate=8000, n_fft=256, hop_length=128, n_mels=40, f_min=50.0, f_max=3800.0),
    dict(sample_rate=22050, n_fft=1024, hop_length=256, n_mels=128, power=1.0),
])
def test_mel_power_matches_librosa(settings):
    waveforms = _tones(settings["sample_rate"])
    frontend = LogMel(**settings)
    ours = frontend.mel_power(torch.from_numpy(waveforms)).numpy()
    for index, waveform in enumerate(waveforms):
        reference = librosa.feature.melspectrogram(
            y=waveform, sr=settings["sample_rate"], n_fft=settings["n_fft"],
            hop_length=settings["hop_length"], win_length=settings.get("win_length"),
            n_mels=settings["n_mels"], fmin=settings.get("f_min", 0.0), fmax=settings.get("f_max"),
            power=settings.get("power", 2.0), center=True, pad_mode="constant")
        assert ours[index].shape == reference.shape
        np.testing.assert_allclose(ours[index], reference, rtol=1e-3, atol=1e-4 * reference.max())


def test_log_and_db_outputs_match_librosa():
    waveform = _tones(16000)[:1]
    log_frontend = LogMel(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, log="log", log_offset=1e-6)
    db_frontend = LogMel(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, log="db",
                         log_offset=1e-10, top_db=80.0)
    mel = librosa.feature.melspectrogram(y=waveform[0], sr=16000, n_fft=512, hop_length=160, n_mels=64,
                                         pad_mode="constant")
    ours_log = log_frontend(torch.from_numpy(waveform))[0, 0].numpy()
    np.testing.assert_allclose(ours_log, np.log(mel + 1e-6), atol=2e-3)
    ours_db = db_frontend(torch.from_numpy(waveform))[0, 0].numpy()
    np.testing.assert_allclose(ours_db, librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0), atol=2e-2)


def test_shape_batch_equals_per_item_and_normalisation():
    frontend = LogMel(sample_rate=16000, n_fft=512, hop_length=160, n_mels=64, normalize="instance")
    batch = torch.from_numpy(_tones(16000))
    out = frontend(batch)
    assert out.shape == (2, 1, 64, frontend.frames(16000))
    single = frontend(batch[1:2])
    torch.testing.assert_close(out[1:2], single, rtol=1e-4, atol=1e-4)
    assert out[0].mean().abs() < 1e-4 and (out[0].std() - 1).abs() < 1e-2


def test_buffers_follow_the_module_and_bad_settings_are_rejected():
    frontend = LogMel(sample_rate=16000)
    assert {name for name, _ in frontend.named_buffers()} == {"window", "mel_basis"}
    with pytest.raises(ValueError, match="Nyquist"):
        LogMel(sample_rate=8000, f_max=6000)
    with pytest.raises(ValueError, match="features.log"):
        LogMel(log="ln")
