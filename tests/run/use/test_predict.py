"""From a trained run to an answer: ``audioml-predict`` on real recordings (sliding windows,
aggregation, every model source, bad files), a regressor's time series, and the run's MLflow
model loaded with ``mlflow.pyfunc`` and served by a real ``mlflow models serve`` process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from helpers.datasets import make_muse_package
from helpers.runners import find_run_dirs, run_entry_point
from helpers.servers import free_port, wait_until_answering

from audioml.data.decoder import ClipDecoder
from audioml.data.synthetic import _render_clip
from audioml.run.use.checkpoint import model_from_record, read_record
from audioml.run.use.inference import Predictor, collect_inputs, find_checkpoint

QUIET = ["trainer.enable_progress_bar=false", "data.num_workers=0"]
RATE = 16000
CLASSES = ["class_0", "class_1", "class_2"]
COLUMNS = [f"p_{c}" for c in CLASSES]


def _store(output: Path) -> str:
    return f"sqlite:///{output / 'mlflow' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """A scratch CNN that tells the synthetic classes apart (12 epochs), its MLflow model
    logged and registered as ``synth-cnn``."""
    output = tmp_path_factory.mktemp("cnn")
    run_entry_point("audioml.train", "data=synthetic", "model=cnn", "trainer.max_epochs=12",
                    "model.optimizer.lr=3e-3", "logger.register_model=synth-cnn", f"paths.output_dir={output}", *QUIET)
    (run_dir,) = find_run_dirs(output)
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    return output, run_dir, run_id


def _reference(run_dir: Path, inputs: np.ndarray) -> np.ndarray:
    """The checkpoint's own probabilities for ``inputs`` (batch, samples)."""
    record, state = read_record(find_checkpoint(run_dir))
    model = model_from_record(record, state)
    with torch.no_grad():
        return model(torch.from_numpy(inputs)).softmax(-1).numpy()


def _long_recording(path: Path, planted: int = 2, seconds: float = 6.0, at: float = 3.0,
                    clip: np.ndarray | None = None) -> Path:
    """Low noise for ``seconds`` with one clean synthetic clip of class ``planted`` (or ``clip``)
    at ``at`` s."""
    rng = np.random.default_rng(5)
    audio = rng.normal(0, 0.01, int(seconds * RATE)).astype(np.float32)
    start = int(at * RATE)
    audio[start:start + RATE] += _render_clip(rng, planted, 0.0, RATE, 1.0) if clip is None else clip
    sf.write(path, audio, RATE)
    return path


def _recognised_clip(run_dir: Path) -> tuple[int, np.ndarray]:
    """A clean synthetic clip the model classifies right, most confidently (the model is small
    and trained for seconds: the test is about where the windows look, not about accuracy)."""
    clips = np.stack([_render_clip(np.random.default_rng(10 + k), k, 0.0, RATE, 1.0) for k in range(3)])
    probabilities = _reference(run_dir, clips)
    right = [k for k in range(3) if probabilities[k].argmax() == k]
    assert right, f"the model recognises none of the clean clips: {probabilities}"
    best = max(right, key=lambda k: probabilities[k, k])
    return best, clips[best]


@pytest.mark.slow  # trains its own model (about 30 s)
def test_sliding_windows_cover_a_long_recording_and_find_the_planted_class(cnn_run, tmp_path):
    output, run_dir, _ = cnn_run
    planted, clip = _recognised_clip(run_dir)
    recording = _long_recording(tmp_path / "long.wav", clip=clip)
    out_csv = tmp_path / "out" / "predictions.csv"
    process = run_entry_point("audioml.predict", f"source={run_dir}", f"inputs=[{recording}]", f"output={out_csv}",
                              "per_window=true", "hop_seconds=0.5", f"paths.output_dir={output}")
    windows = pd.read_csv(out_csv.with_suffix(".windows.csv"))
    assert windows["start_s"].tolist() == [i * 0.5 for i in range(11)]  # 6 s, 1 s clips every 0.5 s
    assert np.allclose(windows[COLUMNS].sum(axis=1), 1, atol=1e-5)
    at_three = int(np.flatnonzero(windows["start_s"] == 3.0)[0])
    assert windows.loc[at_three, COLUMNS].to_numpy(dtype=float).argmax() == planted
    confident = set(np.flatnonzero(windows[f"p_class_{planted}"] > 0.5))
    assert at_three in confident <= {at_three - 1, at_three, at_three + 1}  # found where it was planted, only there
    # each window is the model's answer for exactly that slice of the file
    audio = sf.read(recording, dtype="float32")[0]
    assert np.allclose(windows.loc[6, COLUMNS].to_numpy(dtype=np.float32),
                       _reference(run_dir, audio[None, 3 * RATE:4 * RATE])[0], atol=1e-5)
    per_file = pd.read_csv(out_csv)
    assert per_file["windows"].tolist() == [11]
    assert np.allclose(per_file[COLUMNS].to_numpy()[0], windows[COLUMNS].mean().to_numpy(), atol=1e-6)
    document = json.loads(out_csv.with_suffix(".json").read_text())
    assert document["classes"] == CLASSES and document["sample_rate"] == RATE
    assert len(document["files"][0]["windows_detail"]) == 11
    assert "1 files" in process.stdout


def test_aggregations_and_training_crop(cnn_run, tmp_path):
    _, run_dir, _ = cnn_run
    recording = _long_recording(tmp_path / "long.wav", planted=0, seconds=4.2, at=1.0)
    windows = {}
    for aggregate in ("mean", "max", "vote"):
        predictions = Predictor.from_source(run_dir, aggregate=aggregate).predict_files([recording], progress=False)
        windows[aggregate] = predictions.windows[COLUMNS].to_numpy()
        row = predictions.files.iloc[0]
        scores = windows[aggregate]
        expected = {"mean": scores.mean(0), "max": scores.max(0),
                    "vote": np.bincount(scores.argmax(1), minlength=3) / len(scores)}[aggregate]
        assert np.allclose(row[COLUMNS].to_numpy(dtype=float), expected, atol=1e-6), aggregate
        assert row["predicted"] == CLASSES[int(np.argmax(expected))]
    # 4.2 s, 1 s windows every 0.5 s: starts 0..3.0 and one ending at the end (3.2 s)
    assert Predictor.from_source(run_dir).predict_files([recording], progress=False).windows["start_s"].round(
        3).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.2]
    # sliding_windows=false: the clip training would have seen (the shared decoder's crop)
    cropped = Predictor.from_source(run_dir, sliding_windows=False).predict_files([recording], progress=False)
    decoder = ClipDecoder.from_settings(read_record(find_checkpoint(run_dir))[0]["decoder"])
    assert np.allclose(cropped.files[COLUMNS].to_numpy(dtype=np.float32),
                       _reference(run_dir, decoder(recording)[None]), atol=1e-5)
    # a short file is padded as in training: one window
    short = tmp_path / "short.wav"
    sf.write(short, _render_clip(np.random.default_rng(1), 1, 0.0, RATE, 0.4), RATE)
    assert Predictor.from_source(run_dir).predict_files([short], progress=False).files["windows"].tolist() == [1]


def test_real_formats_are_scored_and_bad_files_listed(cnn_run, shared_data, tmp_path):
    """3gp (AMR) and caf uploads, an Emotify mp3, a 48 kHz stereo RAVDESS wav; a corrupt file
    and a file whose name is not UTF-8 among them."""
    output, run_dir, _ = cnn_run
    corpus = shared_data / "donateacry-corpus"
    real = [sorted((corpus / "donateacry-android-upload-bucket").glob("*.3gp"))[0],
            sorted((corpus / "donateacry-ios-upload-bucket").glob("*.caf"))[0],
            sorted((shared_data / "emotify").rglob("*.mp3"))[0],
            sorted((shared_data / "ravdess").rglob("*.wav"))[0]]
    folder = tmp_path / "in"
    folder.mkdir()
    for path in real:
        shutil.copy(path, folder / path.name)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    odd_name = os.fsencode(folder) + b"/odd-\xff\xfe-name.wav"
    shutil.copy(real[3], odd_name)
    out_csv = tmp_path / "predictions.csv"
    process = run_entry_point("audioml.predict", f"source={run_dir}", f"inputs=[{folder}]", f"output={out_csv}",
                              f"paths.output_dir={output}")
    scored = pd.read_csv(out_csv)
    assert len(scored) == 5 and np.allclose(scored[COLUMNS].sum(axis=1), 1, atol=1e-5)
    assert {Path(p).suffix for p in scored["path"]} == {".3gp", ".caf", ".mp3", ".wav"}
    assert any("\\xff\\xfe" in p for p in scored["path"])  # the odd name, escaped, not a crash
    skipped = pd.read_csv(out_csv.with_suffix(".skipped.csv"))
    assert [Path(p).name for p in skipped["path"]] == ["corrupt.wav"] and skipped["reason"].str.len().min() > 10
    assert "skipped 1 of 6" in process.stderr + process.stdout


def test_every_model_source_gives_the_same_answer(cnn_run, tmp_path):
    output, run_dir, run_id = cnn_run
    recording = _long_recording(tmp_path / "long.wav", seconds=2.0, at=0.5)
    store = _store(output)
    sources = [run_dir, find_checkpoint(run_dir), f"runs:/{run_id}/model", "models:/synth-cnn/1"]
    answers = [Predictor.from_source(s, tracking_uri=store, download_dir=tmp_path / f"dl{i}")
               .predict_files([recording], progress=False).files[COLUMNS].to_numpy() for i, s in enumerate(sources)]
    for answer in answers[1:]:
        assert np.allclose(answer, answers[0], atol=1e-6)
    # through the command line too, with the tracking URI given
    out_csv = tmp_path / "registry.csv"
    run_entry_point("audioml.predict", "source=models:/synth-cnn/1", f"tracking_uri={store}", f"inputs=[{recording}]",
                    f"output={out_csv}")
    assert np.allclose(pd.read_csv(out_csv)[COLUMNS].to_numpy(), answers[0], atol=1e-6)
    with pytest.raises(FileNotFoundError, match="could not be fetched"):
        Predictor.from_source("models:/no-such-model/1", tracking_uri=store, download_dir=tmp_path / "none")


def test_inputs_are_files_folders_and_globs(tmp_path):
    for name in ("a.wav", "sub/b.WAV", "sub/c.flac", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in collect_inputs([str(tmp_path)])] == ["a.wav", "b.WAV", "c.flac"]
    assert [p.name for p in collect_inputs([f"{tmp_path}/**/*.flac", str(tmp_path / "a.wav")])] == ["c.flac", "a.wav"]
    with pytest.raises(FileNotFoundError, match="no audio file at"):
        collect_inputs([str(tmp_path / "missing.wav")])
    with pytest.raises(ValueError, match="nothing to predict"):
        collect_inputs([])


def test_the_mlflow_model_loads_with_pyfunc_and_gives_the_checkpoints_probabilities(cnn_run, tmp_path, monkeypatch):
    output, run_dir, run_id = cnn_run
    monkeypatch.setenv("AUDIOML_SERVING_PATHS", str(tmp_path))
    clip = _render_clip(np.random.default_rng(2), 1, 0.0, RATE, 1.0)
    path = tmp_path / "clip.wav"
    sf.write(path, clip, RATE, subtype="FLOAT")
    mlflow.set_tracking_uri(_store(output))
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    expected = _reference(run_dir, clip[None])
    by_waveform = model.predict(pd.DataFrame({"waveform": [clip.astype(float).tolist()]}))
    by_path = model.predict(pd.DataFrame({"path": [str(path)]}))
    for answer in (by_waveform, by_path):
        assert np.allclose(answer[COLUMNS].to_numpy(dtype=np.float32), expected, atol=1e-5)
        assert answer["predicted"].tolist() == [CLASSES[int(expected.argmax())]]
    inputs = {spec.name for spec in model.metadata.get_input_schema().inputs}
    assert inputs == {"waveform", "path"}
    requirements = (Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "m")))
                    / "requirements.txt").read_text()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements and "audioml==" in requirements
    with pytest.raises(Exception, match="waveform"):
        model.predict(pd.DataFrame({"other": [1]}))


def test_a_served_model_bounds_what_a_request_may_ask(cnn_run, tmp_path, monkeypatch):
    """(issue 35, 3k) the sample_rate param is a real rate, a row and a request carry bounded
    audio, and a path row reads only inside the folders AUDIOML_SERVING_PATHS names."""
    output, _, run_id = cnn_run
    mlflow.set_tracking_uri(_store(output))
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    short = {"waveform": [np.zeros(1600).tolist()]}
    for rate in (0, 1, 10**9):
        with pytest.raises(Exception, match=f"sample_rate={rate}: give the waveform's rate"):
            model.predict(pd.DataFrame(short), params={"sample_rate": rate})
    with pytest.raises(Exception, match="a row carries at most 600 s"):
        model.predict(pd.DataFrame({"waveform": [np.full(1000 * 601, 0.1).tolist()]}), params={"sample_rate": 1000})
    secret = tmp_path / "elsewhere" / "clip.wav"
    secret.parent.mkdir()
    sf.write(secret, np.full(RATE, 0.1, dtype=np.float32), RATE)
    monkeypatch.delenv("AUDIOML_SERVING_PATHS", raising=False)
    with pytest.raises(Exception, match="read only inside the folders AUDIOML_SERVING_PATHS lists"):
        model.predict(pd.DataFrame({"path": [str(secret)]}))
    monkeypatch.setenv("AUDIOML_SERVING_PATHS", str(tmp_path / "allowed"))
    with pytest.raises(Exception, match="read only inside"):
        model.predict(pd.DataFrame({"path": [str(tmp_path / "allowed" / ".." / "elsewhere" / "clip.wav")]}))


def test_mlflow_models_serve_answers_rest_requests(cnn_run):
    output, run_dir, run_id = cnn_run
    port = free_port()
    bin_dir = Path(sys.executable).parent  # mlflow starts uvicorn from PATH, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": _store(output), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    mlflow_cli = bin_dir / "mlflow"
    server = subprocess.Popen([str(mlflow_cli), "models", "serve", "-m", f"runs:/{run_id}/model", "--env-manager",
                               "local", "--host", "127.0.0.1", "--port", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_answering(f"http://127.0.0.1:{port}/ping", server,
                             lambda: server.stdout.read().decode()[-3000:] if server.poll() is not None else "", 180)
        clip = _render_clip(np.random.default_rng(3), 2, 0.0, RATE, 1.0)
        body = json.dumps({"dataframe_records": [{"waveform": clip.astype(float).tolist()}]}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            answer = json.loads(reply.read())["predictions"][0]
        expected = _reference(run_dir, clip[None])[0]
        assert np.allclose([answer[c] for c in COLUMNS], expected, atol=1e-5)
        assert answer["predicted"] == CLASSES[int(expected.argmax())]
    finally:
        if server.poll() is None:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)


@pytest.mark.slow  # kept out of the default run for its time (15-30 s); `pytest -m slow` runs it
def test_a_regression_checkpoint_gives_a_time_series(tmp_path):
    make_muse_package(tmp_path / "data" / "muse" / "c3_muse_stress_2022", seconds=10.0)
    output = tmp_path / "out"
    run_entry_point("audioml.train", "data=muse", "model=crnn_attention", "loss=ccc", "monitor=val/ccc",
                    "optimized_metric=test/ccc", "data.targets=[valence,arousal]", "data.sequence_length=8",
                    "data.stride=4", "trainer.max_epochs=1", "logger.log_model=false", f"paths.output_dir={output}",
                    *QUIET[:1], env={"AUDIOML_DATA_DIR": str(tmp_path / "data")})
    (run_dir,) = find_run_dirs(output)
    recording = tmp_path / "data" / "muse" / "c3_muse_stress_2022" / "raw_data" / "audio" / "6.wav"
    long = tmp_path / "long.wav"
    audio = sf.read(recording, dtype="float32")[0]
    sf.write(long, np.concatenate([audio, audio[: int(1.2 * RATE)]]), RATE)  # 11.2 s: a tail window
    out_csv = tmp_path / "valence.csv"
    run_entry_point("audioml.predict", f"source={run_dir}", f"inputs=[{long}]", f"output={out_csv}",
                    f"paths.output_dir={output}")
    series = pd.read_csv(out_csv.with_suffix(".windows.csv"))
    assert len(series) == 23 and np.allclose(series["start_s"], np.arange(23) * 0.5)  # 0.5 s windows, all of it
    assert series[["valence", "arousal"]].notna().all().all()
    per_file = pd.read_csv(out_csv)
    assert per_file["valence"].iloc[0] == pytest.approx(series["valence"].mean(), abs=1e-6)
    # the first 8 windows are one sequence: exactly the model's output on it
    record, state = read_record(find_checkpoint(run_dir))
    model = model_from_record(record, state)
    with torch.no_grad():
        first = model(torch.from_numpy(audio[: 8 * 8000].reshape(1, 8, 8000))).numpy()[0]
    assert np.allclose(series[["valence", "arousal"]].to_numpy()[:8], first, atol=1e-5)


@pytest.mark.slow  # kept out of the default run for its time (~30 s); `pytest -m slow` runs it
def test_eval_logs_a_linked_evaluation_run_on_any_split_or_a_dataset_with_the_same_classes(cnn_run, tmp_path):
    output, run_dir, run_id = cnn_run
    run_entry_point("audioml.evaluate", f"source={run_dir}", "split=val", f"paths.output_dir={output}",
                    "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path / 'val'}")
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert {"test/acc", "test/macro_f1_ci_low", "test/macro_f1_ci_high", "baseline/macro_f1"} <= set(metrics)
    assert (tmp_path / "val" / "confusion_matrix.png").is_file()
    client = mlflow.MlflowClient(_store(output))
    training = client.get_run(run_id)
    (evaluation,) = client.search_runs([training.info.experiment_id], f"tags.`audioml.evaluates` = '{run_id}'")
    assert evaluation.data.tags["audioml.split"] == "val" and evaluation.info.status == "FINISHED"
    assert evaluation.data.metrics["test/acc"] == pytest.approx(metrics["test/acc"])
    assert {"confusion_matrix.png", "metrics.json"} <= {a.path for a in client.list_artifacts(evaluation.info.run_id)}
    # the registered model on another dataset config with the same classes (here: regenerated)
    run_entry_point("audioml.evaluate", "source=models:/synth-cnn/1", "dataset=synthetic",
                    "+data.generator_seed=7", f"paths.output_dir={output}", "trainer.enable_progress_bar=false",
                    f"hydra.run.dir={tmp_path / 'other'}")
    other = json.loads((tmp_path / "other" / "metrics.json").read_text())
    assert 0 <= other["test/acc"] <= 1
    runs = client.search_runs([training.info.experiment_id], f"tags.`audioml.evaluates` = '{run_id}'")
    assert sorted(r.data.tags.get("audioml.dataset", "") for r in runs) == ["", "synthetic"]
    refused = run_entry_point("audioml.evaluate", f"source={run_dir}", "dataset=synthetic", "+data.num_classes=4",
                              f"paths.output_dir={output}", check=False)
    assert refused.returncode != 0 and "same classes" in refused.stderr


def test_a_second_prediction_into_the_same_output_leaves_no_stale_files(tiny_run, tmp_path):
    """(issue 30, 9) <stem>.skipped.csv and <stem>.windows.csv of an earlier call are removed when
    this call writes none: they would describe another set of files."""
    from audioml.predict import write_predictions

    output_dir, _, best = tiny_run
    clip = next((output_dir / "cache").glob("synthetic-*/class_0/*.wav"))
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF junk")
    predictor = Predictor.from_source(best, device="cpu")
    output = tmp_path / "answers.csv"
    first = write_predictions(predictor.predict_files([clip, corrupt], progress=False), predictor, output, "m", True)
    assert {p.name for p in first} == {"answers.csv", "answers.json", "answers.windows.csv", "answers.skipped.csv"}
    second = write_predictions(predictor.predict_files([clip], progress=False), predictor, output, "m", False)
    assert {p.name for p in second} == {"answers.csv", "answers.json"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("answers")) == ["answers.csv", "answers.json"]
