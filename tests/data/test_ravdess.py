"""RAVDESS DataModule on generated Zenodo and Kaggle layouts and on the real 2-actor sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers.datasets import make_ravdess, ravdess_name, tone

from audioml.data.audio import load_audio
from audioml.data.ravdess import EMOTIONS, RavdessDataModule, actor_split, parse_ravdess_filename


def _module(root: Path, **kwargs) -> RavdessDataModule:
    return RavdessDataModule(root, **{"sample_rate": 16000, "clip_seconds": 0.5, "val_fraction": 0.2,
                                      "test_fraction": 0.2, "seed": 0, **kwargs})


def _actors(module: RavdessDataModule, split: str) -> set[int]:
    return set(module.manifest["actor"].iloc[module.split_indices[split]])


def test_filename_parsing_and_unknown_codes():
    fields = parse_ravdess_filename("03-01-06-02-01-02-13.wav")
    assert (fields.emotion_name, fields.intensity, fields.statement, fields.repetition, fields.actor) == \
        ("fearful", "02", "01", "02", 13)
    assert fields.gender == "male" and parse_ravdess_filename("03-01-01-01-01-01-24.wav").gender == "female"
    for bad, message in (("03-01-09-01-01-01-01.wav", "emotion code '09'"),
                         ("03-01-01-01-01-01-25.wav", "actor code '25'"),
                         ("03-03-01-01-01-01-01.wav", "vocal channel code '03'"),
                         ("03-01-01-01-01-01.wav", "seven two-digit fields")):
        with pytest.raises(ValueError, match=f"{bad}.*{message}"):
            parse_ravdess_filename(bad)


@pytest.mark.parametrize("layout", ["zenodo", "kaggle"])
def test_layouts_tasks_and_speaker_independent_splits(tmp_path, layout):
    make_ravdess(tmp_path, layout=layout)  # 6 actors x 8 emotions x 2 statements
    module = _module(tmp_path, task="emotion")
    module.setup()
    assert module.task == "classification" and module.class_names == list(EMOTIONS) and module.num_classes == 8
    assert len(module.manifest) == 96 and len(module.skipped) == 0
    assert np.bincount(module.manifest["target"], minlength=8).tolist() == [12] * 8
    parts = [_actors(module, s) for s in ("train", "val", "test")]
    assert all(parts) and not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == {1, 2, 3, 4, 5, 6}
    waveform, target = module.dataset("train")[0]
    assert waveform.shape == (8000,) and int(target) in range(8)
    gender = _module(tmp_path, task="gender")
    gender.setup()
    assert gender.class_names == ["male", "female"]
    assert (gender.manifest["target"] == (gender.manifest["actor"] % 2 == 0)).all()
    statement = _module(tmp_path, task="statement")
    statement.setup()
    assert statement.class_names == ["kids", "dogs"]
    assert np.bincount(statement.manifest["target"]).tolist() == [48, 48]


def test_actor_task_is_split_per_file_and_stratified(tmp_path):
    make_ravdess(tmp_path)
    module = _module(tmp_path, task="actor")
    module.setup()
    assert module.class_names == [f"actor_{a:02d}" for a in range(1, 7)]
    for split in ("train", "val", "test"):
        assert _actors(module, split) == {1, 2, 3, 4, 5, 6}  # every actor in every part
    paths = [set(module.manifest["path"].iloc[module.split_indices[s]]) for s in ("train", "val", "test")]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    with pytest.raises(ValueError, match="task=actor cannot be split by actor"):
        _module(tmp_path, task="actor", test_actors=[1])


def test_explicit_actor_lists_override_fractions(tmp_path):
    make_ravdess(tmp_path)
    module = _module(tmp_path, val_actors=[2], test_actors=[5, 6])
    module.setup()
    assert (_actors(module, "train"), _actors(module, "val"), _actors(module, "test")) == ({1, 3, 4}, {2}, {5, 6})
    module = _module(tmp_path, train_actors=[1, 2], test_actors=[3])  # val: from the training actors' files
    module.setup()
    assert _actors(module, "test") == {3} and _actors(module, "val") <= {1, 2}
    assert not set(module.split_indices["val"]) & set(module.split_indices["train"])
    assert 4 not in set(module.manifest["actor"].iloc[np.concatenate(list(module.split_indices.values()))])
    for kwargs, message in (({"val_actors": [2], "test_actors": [2]}, "overlap"),
                            ({"test_actors": [9]}, r"actors \[9\] are not in the data"),
                            ({"val_actors": [2]}, "test_actors is empty")):
        with pytest.raises(ValueError, match=message):
            _module(tmp_path, **kwargs).setup()


def test_emobox_split_holds_out_the_folds_actors(tmp_path):
    from audioml.data.donateacry import DonateacryDataModule

    make_ravdess(tmp_path)  # actors 1-6
    module = _module(tmp_path, split="emobox", fold=4)
    module.setup()
    val = _actors(module, "val")
    assert _actors(module, "test") == {3, 5} and len(val) == 2 and {a % 2 for a in val} == {0, 1}
    assert _actors(module, "train") == {1, 2, 4, 6} - val
    files = _module(tmp_path, split="emobox", fold=4, emobox_val_actors=0)
    files.setup()
    assert _actors(files, "val") == _actors(files, "train") == {1, 2, 4, 6}
    for kwargs, message in (({"split": "emobox"}, "needs data.fold"),
                            ({"split": "emobox", "fold": 2, "test_actors": [1]}, "leave train_actors"),
                            ({"split": "emobox", "fold": 3}, r"none of them is in the data .*folds with test actors")):
        with pytest.raises(ValueError, match=message):
            _module(tmp_path, **kwargs).setup()
    with pytest.raises(ValueError, match="EmoBox's folds hold out RAVDESS actors; evaluation=emobox needs "
                                         "data=ravdess"):
        DonateacryDataModule(tmp_path, split="emobox", fold=1)


def test_actor_split_with_two_actors_keeps_test_speaker_independent():
    labels = np.tile(np.arange(4), 10)
    actors = np.repeat([1, 2], 20)
    parts = actor_split(labels, actors, 0.2, 0.2, seed=0)
    train_actors, test_actors = set(actors[parts["train"]]), set(actors[parts["test"]])
    assert len(train_actors) == 1 and len(test_actors) == 1 and train_actors != test_actors
    assert set(actors[parts["val"]]) == train_actors and len(parts["val"]) > 0
    with pytest.raises(ValueError, match="at least 2 actors"):
        actor_split(labels[:20], actors[:20], 0.2, 0.2, seed=0)


def test_stereo_48k_downmixed_and_resampled(tmp_path):
    make_ravdess(tmp_path, actors=(1, 2, 3), emotions=(1, 2), stereo_actor=1)
    module = _module(tmp_path, clip_seconds=1.0)
    module.setup()
    stereo_path = str(tmp_path / "Actor_01" / ravdess_name(1, 1))
    row = int(np.flatnonzero(module.manifest["path"] == stereo_path)[0])
    waveform = module.dataset("all")[row][0].numpy()
    left, _ = sf.read(stereo_path, dtype="float32")
    expected = load_audio(stereo_path, 16000, mono=False)
    assert expected.shape[0] == 2 and left.shape == (28800, 2)  # really stereo 48 kHz on disk
    assert np.allclose(waveform[:9600], expected.mean(axis=0), atol=1e-6)  # 0.6 s at 16 kHz, mean of channels
    assert np.abs(waveform[:9600]).max() == pytest.approx(np.abs(expected[0]).max() / 2, rel=0.05)
    assert not waveform[9600:].any()  # padded to clip_seconds


def test_silence_trimming_is_part_of_the_cached_decode(tmp_path):
    make_ravdess(tmp_path, actors=(1, 2, 3), emotions=(1, 2), stereo_actor=None)
    quiet = np.zeros(int(0.4 * 48000), dtype=np.float32)
    for path in sorted(tmp_path.glob("Actor_*/*.wav")):
        sf.write(path, np.concatenate([quiet, tone(0.5, 48000, 300), quiet]), 48000, subtype="PCM_16")
    plain = _module(tmp_path, clip_seconds=1.3, cache_dir=tmp_path / "cache")
    plain.setup()
    trimmed = _module(tmp_path, clip_seconds=1.3, cache_dir=tmp_path / "cache", trim_db=30)
    trimmed.setup()
    assert len(list((tmp_path / "cache").glob("waveforms-*.npy"))) == 2  # trim_db is in the key
    raw, cut = plain.dataset("all")[0][0].numpy(), trimmed.dataset("all")[0][0].numpy()
    assert np.abs(raw[:6000]).max() < 1e-3 and np.abs(cut[:1000]).max() > 0.1  # leading silence gone
    assert 0.45 < np.flatnonzero(np.abs(cut) > 1e-3).max() / 16000 < 0.7  # ~0.5 s of tone remains


def test_song_files_ignored_and_bad_files_named(tmp_path):
    make_ravdess(tmp_path, actors=(1, 2, 3), emotions=(1, 2))
    sf.write(tmp_path / "Actor_01" / ravdess_name(1, 3, channel=2), tone(0.5, 48000, 300), 48000)
    module = _module(tmp_path)
    module.setup()
    assert len(module.manifest) == 12 and (module.manifest["vocal_channel"] == "speech").all()
    misplaced = tmp_path / "Actor_02" / ravdess_name(3, 1)
    sf.write(misplaced, tone(0.5, 48000, 300), 48000)
    with pytest.raises(ValueError, match=f"{misplaced.name}.*does not match its folder Actor_02"):
        _module(tmp_path).setup()
    misplaced.unlink()
    unknown = tmp_path / "Actor_02" / "03-01-11-01-01-01-02.wav"
    sf.write(unknown, tone(0.5, 48000, 300), 48000)
    with pytest.raises(ValueError, match="03-01-11-01-01-01-02.wav: unknown emotion code '11'"):
        _module(tmp_path).setup()


def test_missing_folder_names_expected_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no Actor_XX folders in .*ravdess.*audio_speech_actors_01-24.*"
                                                r"audioml-data download ravdess"):
        _module(tmp_path / "ravdess").setup()


def test_real_sample(shared_data):
    root = shared_data / "ravdess"
    module = _module(root, task="emotion", clip_seconds=4.0, val_fraction=0.15, test_fraction=0.15)
    module.setup()
    manifest = module.manifest
    assert len(manifest) == 120 and len(module.skipped) == 0
    assert manifest.groupby("actor").size().to_dict() == {1: 60, 2: 60}
    counts = manifest["emotion"].value_counts().to_dict()
    assert counts.pop("neutral") == 8 and set(counts.values()) == {16} and len(counts) == 7
    stereo = [p for p in manifest["path"] if sf.info(p).channels == 2]
    assert len(stereo) == 2 and all("Actor_01" in p for p in stereo)
    assert {sf.info(p).samplerate for p in manifest["path"]} == {48000}
    assert _actors(module, "test").isdisjoint(_actors(module, "train"))
    gender = _module(root, task="gender")
    gender.setup()
    assert gender.manifest.groupby("actor")["gender"].first().to_dict() == {1: "male", 2: "female"}
