"""Generators of small datasets in each publisher's own layout and codecs: donateacry (cleaned
WAVs and raw 3gp/caf uploads), RAVDESS (Zenodo and Kaggle layouts), Emotify (data.csv + MP3) and
MuSe-Stress packages (2021/2022 layouts). ``tests/data/test_fixtures.py`` checks that they are
what the publishers ship."""

from __future__ import annotations

import uuid
from pathlib import Path

import av
import numpy as np
import pandas as pd
import soundfile as sf

from audioml.data.donateacry import CLEANED_FOLDER
from audioml.data.emotify import GEMS, GENRE_OFFSETS

EMOTIFY_HEADER = ("track id, genre, amazement, solemnity, tenderness, nostalgia, calmness, power, "
                  "joyful_activation, tension, sadness, mood, liked, disliked, age, gender, mother tongue")


def tone(seconds: float, sample_rate: int, frequency: float, seed: int = 0, amplitude: float = 0.3) -> np.ndarray:
    """A sine with a little noise, float32 ``(time,)``."""
    time = np.arange(int(round(seconds * sample_rate))) / sample_rate
    noise = np.random.default_rng(seed).normal(0, 0.01, time.shape)
    return (amplitude * np.sin(2 * np.pi * frequency * time) + noise).astype(np.float32)


def write_encoded(path: Path, container: str, codec: str, sample_rate: int, audio: np.ndarray,
                  channels: int = 1, bit_rate: int | None = None) -> Path:
    """Encode ``audio`` ``(time,)`` with PyAV's bundled FFmpeg (e.g. ``3gp``/``libopencore_amrnb``,
    ``caf``/``adpcm_ima_qt``, ``mp3``/``libmp3lame``); ``channels=2`` duplicates it."""
    layout = "mono" if channels == 1 else "stereo"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container) as output:
        stream = output.add_stream(codec, rate=sample_rate, layout=layout)
        if bit_rate:
            stream.bit_rate = bit_rate
        frame = av.AudioFrame.from_ndarray(np.tile(audio.astype(np.float32), (channels, 1)), format="fltp",
                                           layout=layout)
        frame.sample_rate = sample_rate
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return path


def ravdess_name(actor: int, emotion: int, statement: int = 1, repetition: int = 1, intensity: int = 1,
                 channel: int = 1) -> str:
    return f"03-{channel:02d}-{emotion:02d}-{intensity:02d}-{statement:02d}-{repetition:02d}-{actor:02d}.wav"


def make_ravdess(root: Path, actors=(1, 2, 3, 4, 5, 6), emotions=range(1, 9), statements=(1, 2),
                 layout: str = "zenodo", seconds: float = 0.6, sample_rate: int = 48000,
                 stereo_actor: int | None = 1) -> Path:
    """RAVDESS speech files: ``root/Actor_XX`` (zenodo) or ``root/audio_speech_actors_01-24/Actor_XX``
    (kaggle); a tone per emotion. The first file of ``stereo_actor`` is stereo (right channel silent)."""
    base = root if layout == "zenodo" else root / "audio_speech_actors_01-24"
    for actor in actors:
        folder = base / f"Actor_{actor:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for emotion in emotions:
            for statement in statements:
                audio = tone(seconds, sample_rate, 200 + 60 * emotion, seed=actor * 100 + emotion)
                name = ravdess_name(actor, emotion, statement)
                if actor == stereo_actor and emotion == 1 and statement == 1:
                    audio = np.stack([audio, np.zeros_like(audio)], axis=1)
                sf.write(folder / name, audio, sample_rate, subtype="PCM_16")
    return root


def make_emotify(root: Path, tracks: dict[int, dict], sample_rate: int = 22050) -> Path:
    """``root/data.csv`` with the publisher's ``", "`` header and ``root/emotifymusic/<genre>/<n>.mp3``.

    ``tracks`` maps a track id to ``{"counts": {emotion: listeners}, "seconds": float,
    "audio": bool}``; listener ``j`` ticks an emotion when ``j < count``.
    """
    lines = [EMOTIFY_HEADER]
    genres = {offset: genre for genre, offset in GENRE_OFFSETS.items()}
    for track_id, spec in sorted(tracks.items()):
        genre = genres[(track_id - 1) // 100 * 100]
        counts = [spec["counts"].get(e, 0) for e in GEMS]
        for listener in range(max(counts)):
            ticks = [int(listener < c) for c in counts]
            lines.append(",".join(map(str, [track_id, genre, *ticks, 3, 1, 0, 30, listener % 2, "English"])))
        if spec.get("audio", True):
            number = track_id - GENRE_OFFSETS[genre]
            write_encoded(root / "emotifymusic" / genre / f"{number}.mp3", "mp3", "libmp3lame", sample_rate,
                          tone(spec["seconds"], sample_rate, 150 + 80 * GEMS.index(max(spec["counts"], key=spec["counts"].get)),
                               seed=track_id), channels=2)
    (root / "emotifymusic").mkdir(parents=True, exist_ok=True)
    (root / "data.csv").write_text("\n".join(lines) + "\n")
    return root


def write_android_upload(path: Path, seconds: float, frequency: float = 440.0) -> Path:
    """3GPP / AMR-NB 8 kHz mono, as the Android app uploaded."""
    return write_encoded(path, "3gp", "libopencore_amrnb", 8000, tone(seconds, 8000, frequency), bit_rate=12200)


def write_ios_upload(path: Path, seconds: float, frequency: float = 440.0) -> Path:
    """CAF / IMA ADPCM (``adpcm_ima_qt``) 16 kHz mono, as the iOS app uploaded."""
    return write_encoded(path, "caf", "adpcm_ima_qt", 16000, tone(seconds, 16000, frequency))


def make_cleaned_corpus(root, per_class=None, seed=0, seconds=1.0, sample_rate=8000):
    """Cleaned layout with 2 clips per fake uuid; returns the corpus root."""
    per_class = per_class or {"belly_pain": 4, "burping": 4, "discomfort": 6, "hungry": 20, "tired": 6}
    codes = {"belly_pain": "bp", "burping": "bu", "discomfort": "dc", "hungry": "hu", "tired": "ti"}
    rng = np.random.default_rng(seed)
    for label, count in per_class.items():
        folder = root / CLEANED_FOLDER / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            if index % 2 == 0:
                app = str(uuid.UUID(int=int(rng.integers(2**62))))
            audio = (0.1 * rng.standard_normal(int(seconds * sample_rate))).astype(np.float32)
            sf.write(folder / f"{app}-{1430000000000 + index}-1.7-f-26-{codes[label]}.wav", audio, sample_rate)
    return root


ANDROID = "donateacry-android-upload-bucket"


IOS = "donateacry-ios-upload-bucket"


def upload_uuid(n: int, upper: bool = False) -> str:
    text = f"{n:08x}-1111-4222-8333-{n:012x}"
    return text.upper() if upper else text


def make_raw_corpus(root: Path) -> Path:
    """Android and iOS uploads covering every rule, a malformed iOS name, a too-short clip and an
    unreadable file."""
    for n, reason in enumerate(["hu", "hu", "bp", "ch", "lo", "sc"]):
        write_android_upload(root / ANDROID / f"{upload_uuid(n)}-14300{n}0000000-1.7-f-26-{reason}.3gp", 1.5, 300 + 50 * n)
    for n, reason in enumerate(["ti", "bu", "dc", "dk"], start=10):
        write_ios_upload(root / IOS / f"{upload_uuid(n, True)}-14300{n}000-1.0-m-04-{reason}.caf", 1.5, 300 + 40 * n)
    write_ios_upload(root / IOS / f"{upload_uuid(20, True)}-1426957748.47029-1-{upload_uuid(21, True)}-f-26-ti.caf.caf", 1.5)
    write_ios_upload(root / IOS / f"{upload_uuid(22, True)}-1427012079-1.0-m-04-ti.caf", 0.004)
    (root / ANDROID / f"{upload_uuid(23)}-1430000000000-1.7-m-72-hu.3gp").write_bytes(b"\x00" * 64)
    return root


def make_muse_package(folder: Path, version: int = 2022, partitions: dict[str, list[str]] | None = None,
                      seconds: float = 12.0, sample_rate: int = 16000, test_labels: bool = False,
                      ramp: bool = False, devel_gain: float = 1.0, extra_label_seconds: float = 0.0,
                      short: dict[str, float] | None = None) -> Path:
    """Write a MuSe package: audio whose loudness follows valence (learnable), labels every
    500 ms from 0, partition.csv. ``ramp`` writes audio[n] = n / length (float WAV) to check
    alignment exactly; ``short`` maps ids to shorter durations."""
    partitions = partitions or {"train": ["1", "2", "3"], "devel": ["4", "5"], "test": ["6"]}
    arousal_folder = "physio-arousal" if version == 2022 else "arousal"
    id_column = "subject_id" if version == 2022 else "segment_id"
    for sub in ("raw_data/audio", "label_segments/valence", f"label_segments/{arousal_folder}", "metadata"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    rng = np.random.default_rng(0)
    for partition, ids in partitions.items():
        for recording in ids:
            rows.append({"Id": recording, "Proposal": partition})
            duration = (short or {}).get(recording, seconds)
            length = int(duration * sample_rate)
            times = np.arange(0, int(round((duration + extra_label_seconds) * 1000)), 500)
            valence = np.sin(times / 1000 * 0.7 + int(recording)).astype(np.float32) * 0.8
            arousal = np.cos(times / 1000 * 0.3 + int(recording)).astype(np.float32) * 0.5
            if ramp:
                audio = np.arange(length, dtype=np.float32) / length
                subtype = "FLOAT"
            else:
                gain = np.repeat(0.05 + 0.2 * (valence + 1), int(0.5 * sample_rate))[:length]
                gain = np.pad(gain, (0, max(0, length - len(gain))), mode="edge")
                audio = (rng.normal(0, 1, length) * gain).astype(np.float32)
                if partition == "devel":
                    audio = audio * devel_gain
                subtype = "PCM_16"
            sf.write(folder / "raw_data/audio" / f"{recording}.wav", np.clip(audio, -1, 1), sample_rate, subtype=subtype)
            if partition == "test" and not test_labels:
                continue
            for name, values in (("valence", valence), (arousal_folder, arousal)):
                pd.DataFrame({"timestamp": times, "value": values, id_column: recording}).to_csv(
                    folder / "label_segments" / name / f"{recording}.csv", index=False)
    pd.DataFrame(rows).to_csv(folder / "metadata" / "partition.csv", index=False)
    return folder
