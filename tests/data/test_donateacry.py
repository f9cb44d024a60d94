"""donateacry: file names, manifest, uuid-grouped splits, bad files, missing folder."""


import numpy as np
import pytest
import soundfile as sf
from helpers.datasets import make_cleaned_corpus

from audioml.data.donateacry import CLEANED_FOLDER, DonateacryDataModule, parse_cry_filename


def test_parse_regular_and_malformed_names():
    ios = parse_cry_filename("0D1AD73E-4C5E-45F3-85C4-9A3CB71E8856-1430742197-1.0-m-04-hu.caf")
    assert (ios.app_instance_id, ios.timestamp, ios.app_version, ios.gender, ios.age, ios.reason) == (
        "0d1ad73e-4c5e-45f3-85c4-9a3cb71e8856", "1430742197", "1.0", "m", "04", "hu")
    android = parse_cry_filename("0c8f14a9-6999-485b-97a2-913c1cbf099c-1431028888092-1.7-m-26-sc.3gp")
    assert android.reason == "sc" and android.timestamp == "1431028888092"
    broken = parse_cry_filename("CF7F6316-019B-4B3C-9EE1-A62EB5F1D0EE-1426957748.47029-1-"
                                "0911C8F7-99D0-4A44-BC34-894BA5D83032-f-26-ti.caf.caf")
    assert (broken.app_instance_id, broken.gender, broken.age, broken.reason) == (
        "cf7f6316-019b-4b3c-9ee1-a62eb5f1d0ee", "f", "26", "ti")
    with pytest.raises(ValueError, match="unknown reason code 'xx'"):
        parse_cry_filename("0c8f14a9-6999-485b-97a2-913c1cbf099c-1431028888092-1.7-m-26-xx.3gp")
    with pytest.raises(ValueError, match="uuid"):
        parse_cry_filename("short-name-m-26-hu.wav")


def test_fixture_corpus_loads_with_grouped_deterministic_splits(tmp_path):
    root = make_cleaned_corpus(tmp_path / "donateacry-corpus")
    kwargs = dict(root=root, sample_rate=16000, clip_seconds=1.5, seed=5, cache_dir=tmp_path / "cache")
    dm = DonateacryDataModule(**kwargs)
    dm.setup()
    assert dm.num_classes == 5 and dm.task == "classification"
    assert len(dm.manifest) == 40 and set(dm.manifest.columns) >= {"path", "target", "group", "gender", "age"}
    groups = {name: set(dm.manifest.group.iloc[idx]) for name, idx in dm.split_indices.items()}
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"]) \
        and not (groups["val"] & groups["test"])
    waveform, target = dm.dataset("train")[0]
    assert waveform.shape == (24000,) and waveform.dtype.is_floating_point and target.dtype.is_signed
    again = DonateacryDataModule(**kwargs)
    again.setup()
    assert all(np.array_equal(dm.split_indices[k], again.split_indices[k]) for k in dm.split_indices)
    binary = DonateacryDataModule(**{**kwargs, "labels": "binary"})
    binary.setup()
    assert binary.class_names == ["hungry", "not_hungry"]
    assert (binary.manifest.target == (binary.manifest.reason != "hungry")).all()


def test_corrupt_and_too_short_files_are_skipped_listed_and_counted(tmp_path):
    root = make_cleaned_corpus(tmp_path / "donateacry-corpus")
    hungry = root / CLEANED_FOLDER / "hungry"
    (hungry / "0c8f14a9-6999-485b-97a2-913c1cbf0000-1431028888092-1.7-m-26-hu.wav").write_bytes(b"RIFFjunk")
    sf.write(hungry / "0c8f14a9-6999-485b-97a2-913c1cbf0001-1431028888092-1.7-m-26-hu.wav",
             np.full(40, 0.1, dtype=np.float32), 8000)
    dm = DonateacryDataModule(root=root, sample_rate=8000, clip_seconds=1.0, min_seconds=0.5, seed=0)
    dm.setup()
    assert len(dm.manifest) == 40 and len(dm.skipped) == 2
    reasons = " ".join(dm.skipped.reason)
    assert "cannot decode" in reasons and "too short" in reasons
    assert dm.describe()["n_skipped"] == 2


def test_missing_folder_names_the_path_and_the_fix(tmp_path):
    dm = DonateacryDataModule(root=tmp_path / "nowhere" / "donateacry-corpus")
    with pytest.raises(FileNotFoundError, match="nowhere/donateacry-corpus/donateacry_corpus_cleaned") as error:
        dm.prepare_data()
    assert "AUDIOML_DATA_DIR" in str(error.value) and "audioml-data download donateacry" in str(error.value)


def test_real_cleaned_corpus(shared_data, tmp_path):
    dm = DonateacryDataModule(root=shared_data / "donateacry-corpus", sample_rate=8000, clip_seconds=7.0,
                              val_fraction=0.15, test_fraction=0.2, seed=42, cache_dir=tmp_path)
    dm.setup()
    counts = dm.manifest.reason.value_counts().to_dict()
    assert counts == {"hungry": 382, "discomfort": 27, "tired": 24, "belly_pain": 16, "burping": 8}
    assert dm.manifest.group.nunique() == 221 and len(dm.skipped) == 0
    splits = {name: set(dm.manifest.group.iloc[idx]) for name, idx in dm.split_indices.items()}
    assert not (splits["train"] & splits["test"]) and not (splits["train"] & splits["val"]) \
        and not (splits["val"] & splits["test"])
    for name, idx in dm.split_indices.items():  # every class present in every part
        assert dm.manifest.target.iloc[idx].nunique() == 5, name
    assert abs(len(dm.split_indices["test"]) / 457 - 0.2) < 0.04
