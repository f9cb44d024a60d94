"""Generators of small datasets in each publisher's own layout and codecs (RAVDESS WAV folders,
Emotify data.csv + MP3, donateacry 3gp/caf uploads), used by the other test_data_* files; the
tests here check that the generated files really are what the publishers ship."""

from __future__ import annotations

from pathlib import Path

import av
import soundfile as sf
from helpers.datasets import (
    EMOTIFY_HEADER,
    make_emotify,
    make_ravdess,
    ravdess_name,
    write_android_upload,
    write_ios_upload,
)


def _codec(path: Path) -> tuple[str, str, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return container.format.name, stream.codec_context.name, stream.rate, stream.channels


def test_generated_uploads_use_the_publishers_codecs(tmp_path):
    android = write_android_upload(tmp_path / "a.3gp", 1.0)
    ios = write_ios_upload(tmp_path / "b.caf", 1.0)
    assert _codec(android)[1:] == ("amrnb", 8000, 1) and "3gp" in _codec(android)[0]
    assert _codec(ios) == ("caf", "adpcm_ima_qt", 16000, 1)


def test_generated_emotify_has_real_header_and_stereo_mp3(tmp_path):
    make_emotify(tmp_path, {1: {"counts": {"calmness": 3}, "seconds": 2.0},
                            301: {"counts": {"power": 2}, "seconds": 1.0, "audio": False}})
    header = (tmp_path / "data.csv").read_text().splitlines()[0]
    assert header == EMOTIFY_HEADER and ", genre, " in header
    fmt, codec, rate, channels = _codec(tmp_path / "emotifymusic/classical/1.mp3")
    assert (fmt, codec, rate, channels) == ("mp3", "mp3float", 22050, 2)
    assert not (tmp_path / "emotifymusic/pop/1.mp3").exists()


def test_generated_ravdess_layouts_and_stereo(tmp_path):
    make_ravdess(tmp_path / "z", actors=(1, 2), emotions=(1, 2), statements=(1,))
    make_ravdess(tmp_path / "k", actors=(1,), emotions=(1,), statements=(1,), layout="kaggle")
    stereo = sf.info(tmp_path / "z/Actor_01" / ravdess_name(1, 1))
    assert (stereo.channels, stereo.samplerate) == (2, 48000)
    assert sf.info(tmp_path / "z/Actor_02" / ravdess_name(2, 2)).channels == 1
    assert (tmp_path / "k/audio_speech_actors_01-24/Actor_01" / ravdess_name(1, 1)).is_file()
