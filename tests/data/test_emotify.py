"""Emotify DataModule on a generated copy (real header spacing, real MP3s) and the real sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers.datasets import make_emotify

from audioml.data.emotify import EmotifyDataModule, read_annotations, segment_offsets, track_audio_path, track_emotions

# 10 tracks over the four genres. Track 3 ties calmness with tension (calmness is first in GEMS
# order); amazement is dominant in one track only (dropped with min_tracks_per_class=2); track 102
# is shorter than one segment.
TRACKS = {
    1: {"counts": {"calmness": 5, "sadness": 2}, "seconds": 7.0},
    2: {"counts": {"calmness": 4, "tension": 1}, "seconds": 7.0},
    3: {"counts": {"calmness": 3, "tension": 3, "power": 1}, "seconds": 7.0},
    101: {"counts": {"power": 6, "tension": 2}, "seconds": 7.0},
    102: {"counts": {"power": 3}, "seconds": 2.0},
    103: {"counts": {"power": 4, "calmness": 1}, "seconds": 7.0},
    201: {"counts": {"tension": 5}, "seconds": 7.0},
    202: {"counts": {"tension": 4, "power": 3}, "seconds": 7.0},
    301: {"counts": {"amazement": 4, "joyful_activation": 1}, "seconds": 7.0},
    302: {"counts": {"tension": 2, "calmness": 1}, "seconds": 7.0},
}


@pytest.fixture(scope="module")
def emotify_root(tmp_path_factory) -> Path:
    return make_emotify(tmp_path_factory.mktemp("emotify"), TRACKS)


def _module(root: Path, **kwargs) -> EmotifyDataModule:
    return EmotifyDataModule(root, **{"sample_rate": 16000, "segment_seconds": 3.0, "min_tracks_per_class": 2,
                                      "num_folds": 3, "val_fraction": 0.25, "seed": 0, **kwargs})


def test_pure_functions(emotify_root):
    annotations = read_annotations(emotify_root / "data.csv")
    assert list(annotations.columns[:3]) == ["track id", "genre", "amazement"]  # ", " header stripped
    tracks = track_emotions(annotations)
    assert tracks.loc[3, "dominant"] == "calmness"  # 3-3 tie: first in GEMS order
    assert tracks.loc[301, "dominant"] == "amazement"
    assert tracks.loc[1, "n_listeners"] == 5 and tracks.loc[1, "frac_sadness"] == pytest.approx(0.4)
    assert track_audio_path(366, "pop") == "emotifymusic/pop/66.mp3"
    with pytest.raises(ValueError, match="outside the rock range 101-200"):
        track_audio_path(66, "rock")
    assert segment_offsets(60.04, 15, 15) == [0, 15, 30, 45]
    assert segment_offsets(25.84, 15, 15) == [0]  # classical/66.mp3: one segment
    assert segment_offsets(60.04, 15, 5) == [0, 5, 10, 15, 20, 25, 30, 35, 40, 45]
    assert segment_offsets(10.0, 15, 15) == [0]  # shorter than a segment: one padded segment


def test_labels_segments_and_grouped_folds(emotify_root):
    module = _module(emotify_root)
    module.setup()
    assert module.class_names == ["calmness", "power", "tension"] and module.task == "classification"
    manifest = module.manifest
    assert 301 not in set(manifest["track_id"])  # its class (amazement) was dropped
    per_track = manifest.groupby("track_id").size().to_dict()
    assert per_track[102] == 1 and per_track[1] == 2  # 2 s -> 1 padded segment; 7 s -> 2 of 3 s
    assert len(manifest) == 8 * 2 + 1
    assert manifest.groupby("track_id")["label"].nunique().max() == 1
    assert manifest.loc[manifest["track_id"] == 3, "emotion"].iloc[0] == "calmness"
    waveform, target = module.dataset("train")[0]
    assert waveform.shape == (48000,) and target.ndim == 0
    short = manifest.index[manifest["track_id"] == 102][0]
    assert not module.dataset("all")[short][0][int(2.1 * 16000):].any()  # padded after 2 s
    tests = []
    for fold in range(3):
        folded = _module(emotify_root, fold=fold)
        folded.setup()
        parts = {name: set(folded.manifest["track_id"].iloc[idx]) for name, idx in folded.split_indices.items()}
        assert not (parts["train"] & parts["test"] or parts["train"] & parts["val"] or parts["val"] & parts["test"])
        tests.append(parts["test"])
    assert sorted(t for part in tests for t in part) == sorted(per_track)  # each track tested exactly once


def test_hop_gives_overlapping_segments(emotify_root):
    module = _module(emotify_root, hop_seconds=1.5)
    module.setup()
    track = module.manifest[module.manifest["track_id"] == 1]
    assert track["offset"].tolist() == [0.0, 1.5, 3.0]  # 7 s: starts 0, 1.5, 3 (4.5 would overrun)
    first, second = module.dataset("all")[track.index[0]][0], module.dataset("all")[track.index[1]][0]
    assert np.allclose(first[24000:].numpy(), second[:24000].numpy(), atol=1e-4)  # same audio, 1.5 s apart


def test_soft_labels(emotify_root):
    module = _module(emotify_root, soft_labels=True)
    module.setup()
    targets = np.stack(module.manifest["target"].to_list())
    assert targets.dtype == np.float32 and targets.shape == (17, 3)
    assert np.allclose(targets.sum(axis=1), 1.0)
    assert (targets.argmax(axis=1) == module.manifest["label"].to_numpy()).all()
    row = module.manifest.index[module.manifest["track_id"] == 101][0]
    assert np.allclose(targets[row], [0, 6 / 8, 2 / 8])  # calmness, power, tension counts 0, 6, 2
    _, batch_targets = next(iter(module.train_dataloader()))
    assert batch_targets.dtype.is_floating_point and batch_targets.shape[1] == 3
    assert module.train_class_counts() == np.bincount(
        module.manifest["label"].iloc[module.split_indices["train"]], minlength=3).tolist()


def test_missing_audio_refused_or_listed(tmp_path):
    tracks = {**TRACKS, 2: {**TRACKS[2], "audio": False}, 202: {**TRACKS[202], "audio": False}}
    root = make_emotify(tmp_path, tracks)
    with pytest.raises(FileNotFoundError, match=r"2 of 9 tracks .*classical/2\.mp3, emotifymusic/electronic/2\.mp3.*allow_missing"):
        _module(root).setup()
    module = _module(root, allow_missing=True)
    module.setup()
    assert set(module.manifest["track_id"]) == {1, 3, 101, 102, 103, 201, 302}
    missing = module.skipped[module.skipped["reason"] == "missing audio file"]["path"].map(lambda p: Path(p).name)
    assert sorted(missing) == ["2.mp3", "2.mp3"] and len(module.skipped) == 2


def test_unreadable_mp3_is_skipped_not_fatal(tmp_path):
    root = make_emotify(tmp_path, TRACKS)
    (root / "emotifymusic/rock/3.mp3").write_bytes(b"not an mp3 at all" * 10)
    module = _module(root)
    module.setup()
    assert 103 not in set(module.manifest["track_id"])
    assert len(module.skipped) == 1 and module.skipped["path"].iloc[0].endswith("rock/3.mp3")


def test_bad_csv_and_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data\.csv.*emotifymusic.*audioml-data download emotify"):
        _module(tmp_path / "emotify").setup()
    root = make_emotify(tmp_path / "bad", {1: TRACKS[1]})
    text = (root / "data.csv").read_text().replace("1,classical,", "1,jazz,", 1)
    (root / "data.csv").write_text(text)
    with pytest.raises(ValueError, match="track 1"):
        _module(root, min_tracks_per_class=1).setup()


def test_real_sample(shared_data):
    root = shared_data / "emotify"
    annotations = read_annotations(root / "data.csv")
    assert len(annotations) == 8407 and annotations["track id"].nunique() == 400
    with pytest.raises(FileNotFoundError, match=r"388 of 397 tracks in data\.csv have no audio file"):
        EmotifyDataModule(root, sample_rate=16000).setup()
    module = EmotifyDataModule(root, sample_rate=16000, allow_missing=True)
    assert "amazement" not in module.class_names and len(module.class_names) == 8
    module.setup()
    manifest = module.manifest
    per_track = manifest.groupby("track_id").size().to_dict()
    assert per_track == {1: 4, 2: 4, 66: 1, 101: 4, 102: 4, 201: 4, 202: 4, 301: 4, 302: 4}
    assert manifest["genre"].value_counts().to_dict() == {"classical": 9, "rock": 8, "electronic": 8, "pop": 8}
    assert len(module.skipped) == 388 and (module.skipped["reason"] == "missing audio file").all()
    parts = {name: set(manifest["track_id"].iloc[idx]) for name, idx in module.split_indices.items()}
    assert not (parts["train"] & parts["test"] or parts["val"] & parts["test"] or parts["train"] & parts["val"])
    assert pd.Series(manifest["track_seconds"]).round(1).loc[manifest["track_id"] == 66].iloc[0] == pytest.approx(25.8)
