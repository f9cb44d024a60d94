"""donateacry raw uploads: decode 3gp (AMR-NB) / caf (IMA ADPCM), clean, convert, report —
on the real sample and on generated uploads; and data.source=raw in the DataModule."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from helpers.datasets import ANDROID, IOS, make_raw_corpus, upload_uuid

from audioml.data.donateacry import DonateacryDataModule
from audioml.data.donateacry_raw import STATUSES, cleaned_class, ensure_prepared, prepare_raw_uploads


def test_rules():
    assert [cleaned_class(code) for code in ("hu", "bu", "bp", "dc", "ch", "ti", "lo", "sc", "dk")] == \
        ["hungry", "burping", "belly_pain", "discomfort", "discomfort", "tired", None, None, None]


def test_generated_uploads_report_and_prepared_folder(tmp_path):
    root = make_raw_corpus(tmp_path / "donateacry-corpus")
    report = prepare_raw_uploads(root, tmp_path / "prepared", min_seconds=1.0, progress=False)
    assert report["status"].value_counts().to_dict() == {"kept": 8, "dropped_rule": 3, "too_short": 1, "unreadable": 1}
    assert set(report["status"]) <= set(STATUSES)
    on_disk = pd.read_csv(tmp_path / "prepared" / "report.csv")
    assert on_disk["status"].tolist() == report["status"].tolist() and len(on_disk) == 13
    kept = report[report["status"] == "kept"]
    assert kept["class"].value_counts().to_dict() == {"hungry": 2, "tired": 2, "discomfort": 2,
                                                      "belly_pain": 1, "burping": 1}
    ch = report[report["reason_code"] == "ch"].iloc[0]
    assert ch["class"] == "discomfort" and "cold/hot" in ch["reason"]
    malformed = kept[kept["file"].str.endswith(".caf.caf")].iloc[0]
    assert malformed["output"].startswith("tired/") and malformed["output"].endswith("-f-26-ti.wav")
    unreadable = report[report["status"] == "unreadable"].iloc[0]
    assert unreadable["file"].startswith(ANDROID) and "cannot decode" in unreadable["reason"]
    for relative in kept["output"]:
        info = sf.info(tmp_path / "prepared" / relative)
        assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
        assert 1.4 < info.duration < 1.6
    ios = sf.read(tmp_path / "prepared" / kept[kept["file"].str.startswith(IOS)]["output"].iloc[0])[0]
    assert np.abs(ios).max() > 0.2  # 16 kHz ADPCM really decoded and resampled, not zeros
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == \
        ["belly_pain", "burping", "discomfort", "hungry", "prepare.json", "report.csv", "tired"]
    assert not list(tmp_path.glob(".prepared-staging-*"))


def test_prepare_is_idempotent_and_follows_settings(tmp_path):
    root = make_raw_corpus(tmp_path / "corpus")
    ensure_prepared(root, tmp_path / "out", min_seconds=1.0)
    stamp = (tmp_path / "out" / "prepare.json").stat().st_mtime_ns
    again = ensure_prepared(root, tmp_path / "out", min_seconds=1.0)
    assert (tmp_path / "out" / "prepare.json").stat().st_mtime_ns == stamp
    assert again["status"].value_counts()["kept"] == 8
    stricter = ensure_prepared(root, tmp_path / "out", min_seconds=2.0)
    assert stricter["status"].value_counts().to_dict() == {"too_short": 9, "dropped_rule": 3, "unreadable": 1}
    assert not any((tmp_path / "out").glob("*/*.wav"))


def test_unknown_reason_code_names_the_file(tmp_path):
    root = make_raw_corpus(tmp_path / "corpus")
    bad = root / ANDROID / f"{upload_uuid(30)}-1430000000000-1.7-f-26-xx.3gp"
    os.link(next((root / ANDROID).glob("*-hu.3gp")), bad)
    with pytest.raises(ValueError, match=f"{bad.name}: unknown reason code 'xx'"):
        prepare_raw_uploads(root, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_real_sample_report(shared_data, tmp_path):
    report = prepare_raw_uploads(shared_data / "donateacry-corpus", tmp_path / "prepared", min_seconds=1.0,
                                 progress=False)
    assert len(report) == 39  # 18 Android + 21 iOS uploads
    assert report["status"].value_counts().to_dict() == {"kept": 25, "dropped_rule": 12, "too_short": 2}
    assert set(report.loc[report["status"] == "dropped_rule", "reason_code"]) == {"lo", "sc", "dk"}
    short = report[report["status"] == "too_short"]
    assert (short["seconds"] < 0.01).all() and short["file"].str.endswith(".caf").all()
    kept = report[report["status"] == "kept"]
    assert kept["class"].value_counts().to_dict() == {"discomfort": 8, "tired": 5, "belly_pain": 4,
                                                      "burping": 4, "hungry": 4}
    assert (kept.loc[kept["reason_code"] == "ch", "class"] == "discomfort").all()
    malformed = kept[kept["file"].str.endswith(".caf.caf")]
    assert len(malformed) == 2 and malformed["output"].str.endswith("-f-26-ti.wav").all()
    assert kept["app_instance_id"].str.len().eq(36).all()
    durations = [sf.info(tmp_path / "prepared" / p).duration for p in kept["output"]]
    assert min(durations) > 6.4 and max(durations) < 7.1


def test_datamodule_raw_source(tmp_path):
    root = make_raw_corpus(tmp_path / "donateacry-corpus")
    module = DonateacryDataModule(root, source="raw", cache_dir=tmp_path / "cache", sample_rate=16000,
                                  clip_seconds=1.5, val_fraction=0.2, test_fraction=0.2)
    module.prepare_data()
    module.setup()
    assert (tmp_path / "cache" / "donateacry-raw" / "report.csv").is_file()
    assert len(module.manifest) == 8 and module.num_classes == 5
    assert module.manifest["reason"].value_counts()["discomfort"] == 2
    groups = {s: set(module.manifest["group"].iloc[i]) for s, i in module.split_indices.items()}
    assert not (groups["train"] & groups["test"] or groups["train"] & groups["val"])
    assert module.dataset("train")[0][0].shape == (24000,)
    with pytest.raises(ValueError, match="data.source='wav'"):
        DonateacryDataModule(root, source="wav")
    with pytest.raises(FileNotFoundError, match="donateacry-android-upload-bucket"):
        DonateacryDataModule(tmp_path / "nothing", source="raw").setup()
