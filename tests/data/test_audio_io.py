"""Decoding: soundfile and PyAV paths, resampling, downmix, bad files."""

import numpy as np
import pytest
import soundfile as sf

from audioml.data.audio import AudioDecodeError, fix_length, load_audio


def _tone(sample_rate: int, seconds: float, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(int(sample_rate * seconds)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def test_wav_stereo_is_downmixed_and_resampled(tmp_path):
    left, right = _tone(48000, 0.5), -_tone(48000, 0.5) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 48000)
    audio = load_audio(path, 16000)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - 8000) <= 1
    # mean of the channels = (0.5 - 0.25) / 2 * tone: the resampled peak keeps that amplitude
    assert np.abs(audio[200:-200]).max() == pytest.approx(0.125, abs=0.01)


def test_compressed_audio_goes_through_pyav(tmp_path):
    import av

    path = tmp_path / "tone.mp3"
    tone = _tone(44100, 1.0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libmp3lame", rate=44100, layout="mono")
        frame = av.AudioFrame.from_ndarray(tone[None, :], format="fltp", layout="mono")
        frame.sample_rate = 44100
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    audio = load_audio(path, 16000)
    assert 0.95 * 16000 < len(audio) < 1.1 * 16000
    spectrum = np.abs(np.fft.rfft(audio[2000:14000]))
    peak_hz = spectrum.argmax() * 16000 / 12000
    assert abs(peak_hz - 440) < 5


def test_bad_files_raise_decode_errors_with_the_path(tmp_path):
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really audio")
    with pytest.raises(AudioDecodeError, match="garbage.wav"):
        load_audio(garbage)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 8000)
    with pytest.raises(AudioDecodeError, match="no samples"):
        load_audio(empty)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(800, np.nan, dtype=np.float32), 8000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match="NaN"):
        load_audio(nan)
    with pytest.raises(AudioDecodeError, match="not found"):
        load_audio(tmp_path / "missing.wav")


def test_a_float_clip_far_beyond_full_scale_is_refused_naming_it(tmp_path):
    """Amplitude 1e30 passes the NaN check and makes the loss NaN: refused at decode time."""
    huge = tmp_path / "huge.wav"
    sf.write(huge, np.full(800, 1e30, dtype=np.float32), 8000, subtype="FLOAT")
    with pytest.raises(AudioDecodeError, match=r"huge.wav: samples reach 1e\+30"):
        load_audio(huge)
    loud = tmp_path / "loud.wav"  # a float file a little above full scale is still audio
    sf.write(loud, np.full(800, 1.5, dtype=np.float32), 8000, subtype="FLOAT")
    assert load_audio(loud).max() == pytest.approx(1.5)


def test_fix_length_pads_and_crops():
    audio = np.arange(10, dtype=np.float32)
    assert np.array_equal(fix_length(audio, 4), audio[:4])
    assert np.array_equal(fix_length(audio, 4, "center"), audio[3:7])
    padded = fix_length(audio, 14, "center")
    assert padded.shape == (14,) and np.array_equal(padded[2:12], audio)


def test_real_raw_uploads_decode(shared_data):
    bucket = shared_data / "donateacry-corpus"
    caf = sorted((bucket / "donateacry-ios-upload-bucket").glob("*.caf"))[0]
    gp3 = sorted((bucket / "donateacry-android-upload-bucket").glob("*.3gp"))[0]
    for path in (caf, gp3):
        audio = load_audio(path, 8000)
        assert audio.ndim == 1 and len(audio) > 800 and np.isfinite(audio).all()
