"""What a folder or table of files becomes (issue 35, 3i and 3n): a file listed twice cannot sit
in two splits, a folder named like a clip is listed as skipped, an empty class folder is said."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from helpers.datasets import make_cleaned_corpus

from audioml.data.custom import CsvDataModule, FolderDataModule
from audioml.data.donateacry import DonateacryDataModule

SETTINGS = dict(sample_rate=8000, clip_seconds=0.5, val_fraction=0.25, test_fraction=0.25, num_workers=0)


def _clips(folder, count, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        sf.write(folder / f"c{index}.wav", (0.1 * rng.standard_normal(4000)).astype(np.float32), 8000)
    return sorted(folder.glob("*.wav"))


def _table(tmp_path, rows):
    path = tmp_path / "clips.csv"
    pd.DataFrame(rows, columns=["path", "label", "group"]).to_csv(path, index=False)
    return path


def test_a_file_listed_twice_with_other_labels_or_groups_is_refused_naming_its_lines(tmp_path):
    files = _clips(tmp_path / "audio", 8)
    rows = [(f"audio/{p.name}", "a" if i % 2 else "b", f"g{i}") for i, p in enumerate(files)]
    relabelled = _table(tmp_path, [*rows, (rows[0][0], "a", "g99")])
    with pytest.raises(ValueError, match=r"lists 1 files more than once .* lines \[2, 10\]"):
        CsvDataModule(relabelled, **SETTINGS).setup("fit")
    (tmp_path / "audio" / "same.wav").symlink_to(files[1])  # the same recording under another name
    linked = _table(tmp_path, [*rows, ("audio/same.wav", rows[1][1], "other")])
    with pytest.raises(ValueError, match="more than once"):
        CsvDataModule(linked, **SETTINGS).setup("fit")


def test_exact_repeats_are_merged_with_a_warning(tmp_path, caplog):
    files = _clips(tmp_path / "audio", 8)
    rows = [(f"audio/{p.name}", "a" if i % 2 else "b", f"g{i}") for i, p in enumerate(files)]
    module = CsvDataModule(_table(tmp_path, [*rows, rows[3], rows[3]]), **SETTINGS)
    with caplog.at_level(logging.WARNING):
        module.setup("fit")
    assert len(module.manifest) == 8 and "2 rows" in caplog.text and "merged" in caplog.text
    parts = [set(module.manifest["path"].iloc[idx]) for idx in module.split_indices.values()]
    assert sum(len(p) for p in parts) == len(set().union(*parts)) == 8


def test_a_folder_named_like_a_clip_is_listed_and_an_empty_class_is_said(tmp_path, caplog):
    root = tmp_path / "mine"
    for name in ("cats", "dogs"):
        _clips(root / name, 6, seed=len(name))
    (root / "dogs" / "x.wav").mkdir()
    (root / "birds").mkdir()
    module = FolderDataModule(root, **SETTINGS)
    with caplog.at_level(logging.WARNING):
        module.setup("fit")
    assert module.class_names == ["cats", "dogs"]
    assert "without any audio file are not classes: birds" in caplog.text
    skipped = dict(zip(module.skipped["path"], module.skipped["reason"]))
    assert skipped[str(root / "dogs" / "x.wav")] == "a folder, not a file" and len(module.manifest) == 12
    with pytest.raises(FileNotFoundError, match="data.classes names 'birds'"):
        FolderDataModule(root, classes=["birds", "cats", "dogs"], **SETTINGS).setup("fit")


def test_donateacry_lists_a_folder_named_like_a_clip(tmp_path):
    root = make_cleaned_corpus(tmp_path / "donateacry-corpus")
    folder = next((root / "donateacry_corpus_cleaned_and_updated_data" / "hungry").glob("*.wav")).with_name(
        "0c8f14a9-6999-485b-97a2-913c1cbf099c-1431028888092-1.7-m-26-hu.wav")
    folder.mkdir()
    module = DonateacryDataModule(root, sample_rate=8000, clip_seconds=1.0, num_workers=0)
    module.setup("fit")
    assert "a folder, not a file" in set(module.skipped["reason"]) and str(folder) in set(module.skipped["path"])
