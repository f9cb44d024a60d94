"""Users' own data: ``data=folder`` and ``data=csv`` on generated files (splits, the given split
column, bad and missing files, letter case of extensions, clip regression), and user config
folders through ``AUDIOML_CONFIG_PATH`` whose checkpoints evaluate and predict without them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from helpers.runners import find_run_dirs, read_metrics, run_entry_point

from audioml.config import compose_config, user_config_dirs
from audioml.data.custom import CsvDataModule, FolderDataModule
from audioml.run.use.checkpoint import datamodule_from_record, read_record
from audioml.run.use.inference import evaluate_checkpoint, predict_files

RATE = 8000


def _tone(frequency: float, seed: int, seconds: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.5 * np.sin(2 * np.pi * frequency * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _class_folders(root: Path, speakers: int = 6, per_speaker: int = 3) -> Path:
    """``root/{low,high}/spk<k>_<i>.<ext>`` with mixed extension case and formats."""
    extensions = ["wav", "WAV", "flac", "Wav"]
    for label, frequency in (("low", 220.0), ("high", 1200.0)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for speaker in range(speakers):
            for item in range(per_speaker):
                index = speaker * per_speaker + item
                extension = extensions[index % len(extensions)]
                sf.write(root / label / f"spk{speaker}_{item}.{extension}", _tone(frequency, index),
                         RATE, format="FLAC" if extension == "flac" else "WAV")
    return root


def _module(cls, **kwargs):
    defaults = {"sample_rate": RATE, "clip_seconds": 0.5, "val_fraction": 0.2, "test_fraction": 0.2, "seed": 3,
                "batch_size": 4, "min_seconds": 0.1, "cache_dir": None}
    module = cls(**{**defaults, **kwargs})
    module.setup("fit")
    return module


def test_folder_groups_never_straddle_splits_and_every_extension_case_is_read(tmp_path):
    root = _class_folders(tmp_path / "sounds")
    (root / "low" / "readme.txt").write_text("not audio")
    module = _module(FolderDataModule, root=root, group_pattern=r"/(spk\d+)_")
    assert module.class_names == ["high", "low"]
    assert len(module.manifest) == 36  # .WAV, .Wav and .flac included; the .txt is not audio
    groups = {name: set(module.manifest["group"].iloc[idx]) for name, idx in module.split_indices.items()}
    assert groups["train"] and groups["val"] and groups["test"]
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"] \
        and not groups["val"] & groups["test"]
    assert module.train_class_counts() == [int((module.manifest["target"].iloc[module.split_indices["train"]]
                                                == c).sum()) for c in (0, 1)]


def test_folder_random_split_shares_groups_and_the_pattern_must_match(tmp_path):
    root = _class_folders(tmp_path / "sounds")
    random = _module(FolderDataModule, root=root, group_pattern=r"/(spk\d+)_", split="random")
    train = set(random.manifest["group"].iloc[random.split_indices["train"]])
    test = set(random.manifest["group"].iloc[random.split_indices["test"]])
    assert train & test  # files split independently: speakers shared, as in the studies' protocol
    with pytest.raises(ValueError, match=r"group_pattern.*does not match"):
        _module(FolderDataModule, root=root, group_pattern=r"/(speaker\d+)_")


def _table(tmp_path: Path, with_split: bool) -> Path:
    root = _class_folders(tmp_path / "audio")
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        speaker = int(path.name[3])
        rows.append({"path": path.relative_to(tmp_path).as_posix(), "label": path.parent.name,
                     "group": f"spk{speaker}",
                     **({"split": ["train", "train", "train", "train", "Validation", "test"][speaker]}
                        if with_split else {})})
    table = tmp_path / "clips.csv"
    pd.DataFrame(rows).to_csv(table, index=False)
    return table


def test_csv_given_split_column_is_honoured(tmp_path):
    module = _module(CsvDataModule, csv=_table(tmp_path, with_split=True))
    parts = {name: sorted(set(module.manifest["group"].iloc[idx])) for name, idx in module.split_indices.items()}
    assert parts == {"train": ["spk0", "spk1", "spk2", "spk3"], "val": ["spk4"], "test": ["spk5"]}
    # split=grouped ignores the column: the same split as the table without it
    grouped = _module(CsvDataModule, csv=_table(tmp_path, with_split=True), split="grouped")
    (tmp_path / "plain").mkdir()
    plain = _module(CsvDataModule, csv=_table(tmp_path / "plain", with_split=False))
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(grouped.split_indices[name], plain.split_indices[name])


def test_csv_bad_file_is_skipped_and_listed_and_missing_file_is_named(tmp_path):
    table = _table(tmp_path, with_split=False)
    (tmp_path / "audio" / "low" / "spk0_0.wav").write_bytes(b"RIFF but not really audio")
    module = _module(CsvDataModule, csv=table)
    assert len(module.manifest) == 35
    assert module.skipped["path"].str.endswith("spk0_0.wav").tolist() == [True]
    rows = pd.read_csv(table)
    rows.loc[len(rows)] = {"path": "audio/low/gone.wav", "label": "low", "group": "spk9"}
    rows.to_csv(table, index=False)
    with pytest.raises(FileNotFoundError, match=r"gone\.wav.*allow_missing"):
        _module(CsvDataModule, csv=table)
    allowed = _module(CsvDataModule, csv=table, allow_missing=True)
    assert set(Path(p).name for p in allowed.skipped["path"]) == {"spk0_0.wav", "gone.wav"}
    rows.loc[0, "label"] = "loud"
    rows.to_csv(table, index=False)
    with pytest.raises(ValueError, match=r"labels \['loud'\] are not in data.classes"):
        _module(CsvDataModule, csv=table, classes=["low", "high"], allow_missing=True)


def test_csv_without_required_columns_says_which(tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("file,label\na.wav,x\n")
    with pytest.raises(ValueError, match="needs a 'path' column"):
        CsvDataModule(csv=table)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CsvDataModule(csv=tmp_path / "nope.csv")


@pytest.mark.slow  # a regression run on a generated table (about 15 s)
def test_csv_regression_trains_with_the_cnn_regressor(tmp_path):
    rows = []
    (tmp_path / "clips").mkdir()
    for index in range(24):
        sf.write(tmp_path / "clips" / f"c{index}.wav", _tone(200 + 40 * index, index), RATE)
        rows.append({"path": f"clips/c{index}.wav", "target": index / 23, "group": f"g{index % 8}"})
    pd.DataFrame(rows).to_csv(tmp_path / "ratings.csv", index=False)
    output = tmp_path / "out"
    run_entry_point("audioml.train", "data=csv", f"data.csv={tmp_path / 'ratings.csv'}", "data.clip_seconds=0.5",
                    "data.batch_size=8", "data.test_fraction=0.25", "model=cnn_regressor", "model.backbone.channels=[8,16]",
                    "model.backbone.dense=16", "loss=mse", "monitor=val/ccc", "optimized_metric=test/ccc",
                    "trainer.max_epochs=2", f"paths.output_dir={output}")
    (run_dir,) = find_run_dirs(output)
    metrics = read_metrics(run_dir)
    assert {"test/ccc", "test/mse", "test/mae"} <= set(metrics)
    assert all(np.isfinite(metrics[k]) for k in ("test/ccc", "test/mse", "test/mae"))
    # intervals over the test groups and the training-mean baseline, as for classes
    assert metrics["test/mse_ci_low"] <= metrics["test/mse"] <= metrics["test/mse_ci_high"]
    record, _ = read_record(next((run_dir / "checkpoints").glob("best-*.ckpt")))
    data = datamodule_from_record(record, compose_config([f"paths.output_dir={output}"]).paths)
    train_mean = data.split_manifest("train")["target"].mean()
    test_targets = data.split_manifest("test")["target"].to_numpy(dtype=np.float64)
    assert metrics["baseline/ccc"] == pytest.approx(0.0, abs=1e-12)  # a constant prediction
    assert metrics["baseline/mse"] == pytest.approx(((test_targets - train_mean) ** 2).mean(), rel=1e-6)
    # every test window's value, named by its file (audioml-compare pairs two regressors on them)
    windows = pd.read_csv(run_dir / "test_predictions.csv")
    (name,) = [c[len("predicted_"):] for c in windows.columns if c.startswith("predicted_")]
    assert set(windows["file"]) == set(data.split_manifest("test")["path"].map(lambda p: Path(p).relative_to(
        tmp_path).as_posix())) and windows["sha256"].str.len().eq(64).all()
    assert ((windows[f"predicted_{name}"] - windows[f"true_{name}"]) ** 2).mean() == pytest.approx(metrics["test/mse"],
                                                                                                   rel=1e-5)


def test_user_config_folder_trains_and_its_checkpoint_evaluates_and_predicts_without_it(tmp_path):
    sounds = _class_folders(tmp_path / "sounds", speakers=6, per_speaker=4)
    user = tmp_path / "myproject" / "conf"
    (user / "data").mkdir(parents=True)
    (user / "model").mkdir()
    (user / "data" / "mysounds.yaml").write_text(
        f"defaults:\n  - folder\nroot: {sounds}\ngroup_pattern: '/(spk\\d+)_'\nclip_seconds: 0.5\nbatch_size: 8\n")
    (user / "model" / "tinycnn.yaml").write_text(
        "defaults:\n  - cnn\nbackbone:\n  channels: [8, 16]\n  dense: 16\n")
    output = tmp_path / "out"
    assert user_config_dirs(str(user)) == [user.resolve()]
    with pytest.raises(NotADirectoryError, match="AUDIOML_CONFIG_PATH"):
        user_config_dirs(str(tmp_path / "typo"))
    run_entry_point("audioml.train", "data=mysounds", "model=tinycnn", "trainer.max_epochs=3",
                    f"paths.output_dir={output}", env={"AUDIOML_CONFIG_PATH": str(user)}, cwd=tmp_path)
    run_dir, = find_run_dirs(output)
    assert run_dir.name.startswith("mysounds-tinycnn-")
    trained = read_metrics(run_dir)
    shutil.rmtree(tmp_path / "myproject")  # the user's folder is gone: the checkpoint alone must do
    best = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    # audioml-eval's and audioml-predict's code paths, in this process (their commands are tested elsewhere)
    eval_cfg = compose_config([f"ckpt_path={best}", f"paths.output_dir={output}"], config_name="eval")
    evaluated, _ = evaluate_checkpoint(best, eval_cfg.paths, eval_cfg.trainer)
    assert evaluated["test/macro_f1"] == pytest.approx(trained["test/macro_f1"], abs=1e-6)
    scored, _ = predict_files(best, sorted(p for p in (sounds / "high").rglob("*") if p.is_file()), device="cpu")
    assert len(scored) == 24 and set(scored.columns) >= {"path", "predicted", "p_high", "p_low"}
    assert np.allclose(scored[["p_high", "p_low"]].sum(axis=1), 1.0, atol=1e-5)
