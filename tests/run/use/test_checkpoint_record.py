"""The checkpoint is the model: crafted checkpoints are refused before anything runs, old ones
say which format they are, and a checkpoint evaluates and predicts without what only training
needed (augmentation folders) and through the decoder training used (silence trimming)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from helpers.datasets import make_ravdess
from helpers.runners import find_run_dirs, read_metrics, run_entry_point

from audioml.config import compose_config
from audioml.data.decoder import ClipDecoder
from audioml.run.use.checkpoint import FORMAT, UntrustedCheckpointError, check_record, read_record
from audioml.run.use.inference import evaluate_checkpoint, predict_files

SMALL = ["model=cnn", "model.backbone.channels=[8,16]", "model.backbone.dense=16", "data.num_workers=0",
         "trainer.enable_progress_bar=false"]


def _tones(folder, count, seed, sample_rate=16000):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(count):
        sf.write(folder / f"x{index}.wav", (0.1 * rng.standard_normal(sample_rate // 2)).astype(np.float32), sample_rate)
    return folder


@pytest.fixture(scope="module")
def noise_ir_run(tmp_path_factory):
    """A run trained with augmentation=noise_ir, whose noise and IR folders are then deleted."""
    base = tmp_path_factory.mktemp("noise_ir")
    noises, irs = _tones(base / "noises", 3, 0), _tones(base / "irs", 2, 1)
    output = base / "out"
    run_entry_point("audioml.train", "data=synthetic", *SMALL, "augmentation=noise_ir",
                    f"augmentation.noise_dir={noises}", f"augmentation.ir_dir={irs}", "trainer.max_epochs=2",
                    f"paths.output_dir={output}")
    shutil.rmtree(noises)
    shutil.rmtree(irs)
    (run_dir,) = find_run_dirs(output)
    return output, run_dir


def _best(run_dir):
    return next((run_dir / "checkpoints").glob("best-*.ckpt"))


def test_a_noise_ir_checkpoint_evaluates_and_predicts_without_its_augmentation_folders(noise_ir_run, tmp_path):
    """audioml-eval's and audioml-predict's code paths, in this process (the commands themselves
    are run by other tests), on a checkpoint whose noise and IR folders are gone."""
    output, run_dir = noise_ir_run
    record, _ = read_record(_best(run_dir))
    assert record["format"] == FORMAT and "augmentation" not in json.dumps(record)
    eval_cfg = compose_config([f"ckpt_path={_best(run_dir)}", f"paths.output_dir={output}",
                               "trainer.enable_progress_bar=false"], config_name="eval")
    evaluated, _ = evaluate_checkpoint(_best(run_dir), eval_cfg.paths, eval_cfg.trainer)
    trained = read_metrics(run_dir)
    for name in ("test/acc", "test/macro_f1", "test/loss"):
        assert evaluated[name] == pytest.approx(trained[name], abs=1e-5), name
    clips = sorted((output / "cache").glob("synthetic-*/class_0/*.wav"))[:4]
    table, skipped = predict_files(_best(run_dir), clips, device="cpu")
    assert len(table) == 4 and len(skipped) == 0


def _craft(run_dir, tmp_path, name, change):
    """A copy of the run's best checkpoint whose record ``change`` edits."""
    checkpoint = torch.load(_best(run_dir), map_location="cpu", weights_only=True)
    change(checkpoint["audioml"])
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


class _Payload:
    """Unpickling it runs a shell command (what ``pandas.read_pickle`` of a URL did)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_crafted_checkpoint_is_refused_before_any_code_runs(noise_ir_run, tmp_path):
    output, run_dir = noise_ir_run
    written = tmp_path / "written.txt"
    savetxt = _craft(run_dir, tmp_path, "savetxt.ckpt", lambda record: record["model"].update(
        backbone={"_target_": "numpy.savetxt", "fname": str(written), "X": [1.0, 2.0]}))
    refused = run_entry_point("audioml.evaluate", f"ckpt_path={savetxt}", f"paths.output_dir={output}",
                              cwd=tmp_path, check=False)
    assert refused.returncode != 0 and not written.exists()
    assert "model.backbone._target_='numpy.savetxt'" in refused.stderr and "refused" in refused.stderr

    marker = tmp_path / "pwned"
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps(_Payload(marker)))
    read_pickle = _craft(run_dir, tmp_path, "pickle.ckpt", lambda record: record["model"].update(
        head={"_target_": "pandas.read_pickle", "filepath_or_buffer": str(payload)}))
    clip = next((output / "cache").glob("synthetic-*/class_0/*.wav"))
    refused = run_entry_point("audioml.predict", f"ckpt_path={read_pickle}", f"inputs=[{clip}]",
                              f"output={tmp_path / 'p.csv'}", cwd=tmp_path, check=False)
    assert refused.returncode != 0 and not marker.exists() and not (tmp_path / "p.csv").exists()
    assert "model.head._target_='pandas.read_pickle'" in refused.stderr


@pytest.mark.parametrize("change, message", [
    (lambda r: r.update(data={**r["data"], "_target_": "os.system"}), "data._target_='os.system'"),
    (lambda r: r["model"]["backbone"].update(_target_="audioml.models.classifier.os.system"), "not a class"),
    (lambda r: r["model"]["backbone"].update(_target_="audioml.models.base.L.LightningModule"),
     "not a Module defined in"),
    (lambda r: r["model"].update(sample_rate="${oc.env:HOME}"), "model.sample_rate='${oc.env:HOME}'"),
    (lambda r: r["data"].update(root="${oc.env:HOME}/x"), "interpolations are not allowed"),
    (lambda r: r["model"].update(_set_={"a": 1}), "model._set_: unknown special key"),
    (lambda r: r.update(loss={"_target_": "builtins.exec", "_args_": ["print(1)"]}), "loss._target_='builtins.exec'"),
])
def test_record_checks_name_the_offending_key(noise_ir_run, tmp_path, change, message):
    _, run_dir = noise_ir_run
    crafted = _craft(run_dir, tmp_path, "crafted.ckpt", change)
    with pytest.raises(UntrustedCheckpointError, match="refused|not|unknown") as error:
        read_record(crafted)
    assert message in str(error.value)


def test_a_users_own_package_is_trusted_only_when_listed(noise_ir_run, tmp_path, monkeypatch):
    _, run_dir = noise_ir_run
    (tmp_path / "mylab_models.py").write_text("from torch import nn\n\nclass Tiny(nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    record, _ = read_record(_best(run_dir))
    record["model"]["backbone"]["_target_"] = "mylab_models.Tiny"
    with pytest.raises(UntrustedCheckpointError, match=r"trusted_modules=\[mylab_models\]"):
        check_record(record)
    assert "mylab_models" not in sys.modules  # refused by name: the module was not even imported
    check_record(record, trusted_modules=["mylab_models"])


def test_an_old_format_checkpoint_says_which_format_and_what_to_do(tmp_path):
    old = tmp_path / "old.ckpt"
    torch.save({"state_dict": {}, "audioml": {"config": {"model": {}}, "num_classes": 2}}, old)
    with pytest.raises(ValueError, match="format 1.*retrain"):
        read_record(old)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(ValueError, match="not written by audioml-train"):
        read_record(foreign)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a checkpoint .*truncated, or another kind of file"):
        read_record(junk)


@pytest.mark.slow  # kept out of the default run for its time (15-30 s); `pytest -m slow` runs it
def test_predict_on_a_trimmed_ravdess_checkpoint_sees_the_test_set_inputs(tmp_path):
    """data.trim_db=30: predict trims as training did, so its probabilities for the test files
    are the ones the run's test loop wrote."""
    root = make_ravdess(tmp_path / "data" / "ravdess", actors=(1, 2, 3, 4), emotions=(1, 3, 5),
                        seconds=0.5, stereo_actor=None)
    rng = np.random.default_rng(0)
    for path in sorted(root.rglob("*.wav")):  # silence of a different length around every file
        audio, rate = sf.read(path, dtype="float32")
        lead, tail = rng.integers(2000, 30000, size=2)
        sf.write(path, np.concatenate([np.zeros(lead, np.float32), audio, np.zeros(tail, np.float32)]), rate)
    output = tmp_path / "out"
    run_entry_point("audioml.train", "data=ravdess", "data.trim_db=30", "data.clip_seconds=1.0", *SMALL,
                    "trainer.max_epochs=1", f"paths.output_dir={output}",
                    env={"AUDIOML_DATA_DIR": str(tmp_path / "data")})
    (run_dir,) = find_run_dirs(output)
    tested = pd.read_csv(run_dir / "test_predictions.csv")
    out_csv = tmp_path / "predictions.csv"
    run_entry_point("audioml.predict", f"ckpt_path={_best(run_dir)}", f"inputs=[{','.join(tested['path'])}]",
                    f"output={out_csv}", cwd=tmp_path)
    predicted = pd.read_csv(out_csv).set_index("path").loc[tested["path"]]
    columns = [c for c in tested.columns if c.startswith("p_")]
    assert len(columns) == 8 and len(predicted) == len(tested) > 0
    assert np.allclose(predicted[columns].to_numpy(), tested[columns].to_numpy(), atol=1e-5)
    assert (predicted["predicted"].to_numpy() == tested["predicted"].to_numpy()).all()


@pytest.mark.parametrize("temperature", ["1.5", float("nan"), float("inf"), -1.0, 0, True, [1.5]])
def test_a_records_temperature_is_a_finite_positive_number(temperature):
    record = {"model": {"_target_": "audioml.models.classifier.AudioClassifier"}, "loss": None,
              "data": {"_target_": "audioml.data.synthetic.SyntheticDataModule"}, "class_names": ["a", "b"],
              "task": "classification", "decoder": ClipDecoder(16000, 1.0).settings()}
    check_record({**record, "temperature": 1.7})
    check_record(record)  # absent: no temperature scaling
    with pytest.raises(UntrustedCheckpointError, match=r"temperature=.* must be a finite number > 0"):
        check_record({**record, "temperature": temperature})
