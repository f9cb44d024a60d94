"""``audioml-export``: the exported file (ONNX through onnxruntime, TorchScript through
``torch.jit.load``) answers like the PyTorch model on real recordings, with another batch size
and another length than the export saw; axes a model fixes are fixed in the file; a layer the
format cannot express is named; a file that answers differently is not published. Models: the
scratch CNN and EfficientAT mn04 (real AudioSet weights) trained for a few steps on synthetic
data, the CRNN regressor on a generated MuSe package, and two small layers of a user's own package
(``helpers.user_models``, trusted as ``helpers``) that ONNX cannot express."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import soundfile as sf
import torch
from helpers.datasets import make_muse_package
from helpers.runners import SHARED, run_entry_point

from audioml.api import compose_config, train
from audioml.data.decoder import ClipDecoder
from audioml.data.synthetic import _render_clip
from audioml.run.use.checkpoint import model_from_record, read_record
from audioml.run.use.export import CONTRACT_KEY, ExportError, ParityError, export_checkpoint

TOLERANCE = 1e-4
CRIES = SHARED / "data" / "donateacry-corpus" / "donateacry_corpus_cleaned_and_updated_data"
MN04 = SHARED / "weights" / "efficientat-mn04"
# A few seconds of training on fewer synthetic clips: the tests are about the file, not accuracy.
QUICK = ["data=synthetic", "data.clips_per_class=8", "logger=none", "trainer.max_epochs=1",
         "trainer.enable_progress_bar=false", "data.num_workers=0", "evaluation.bootstrap_samples=0"]
SMALL_CNN = ["model=cnn", "model.backbone.channels=[8,16]", "model.backbone.dense=16"]


# ------------------------------------------------------------------------------- fixtures
def _train(folder: Path, *overrides: str) -> Path:
    """The best checkpoint of a short in-process training run (the audioml-train code path)."""
    cfg = compose_config([*QUICK, f"paths.output_dir={folder}", f"hydra.run.dir={folder / 'run'}", *overrides])
    _, run_dir = train(cfg)
    return next((run_dir / "checkpoints").glob("best-*.ckpt"))


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("cnn"), *SMALL_CNN)


@pytest.fixture(scope="module")
def efficientat_checkpoint(tmp_path_factory) -> Path:
    if not (MN04 / "mn04_as_mAP_432.pt").is_file():
        pytest.skip(f"EfficientAT mn04 weights not in {MN04}")
    return _train(tmp_path_factory.mktemp("mn04"), "model=efficientat_mn04", f"paths.weights_dir={MN04}",
                  "+trainer.limit_train_batches=2")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> list[Path]:
    """Real infant cries (one per class folder, 8 kHz phone recordings, decoded to each model's
    rate) where ../shared has them; otherwise generated tone clips written as WAV."""
    if CRIES.is_dir():
        found = [next(iter(sorted(folder.glob("*.wav"))), None) for folder in sorted(CRIES.iterdir())
                 if folder.is_dir()]
        if len([f for f in found if f]) >= 3:
            return [f for f in found if f]
    folder = tmp_path_factory.mktemp("recordings")
    paths = []
    for index in range(4):
        path = folder / f"tone{index}.wav"
        sf.write(path, _render_clip(np.random.default_rng(index), index % 3, 0.0, 16000, 2.5), 16000)
        paths.append(path)
    return paths


def _clips(checkpoint: Path, recordings: list[Path], count: int, seconds: float | None = None) -> np.ndarray:
    """``count`` clips of the recordings as the checkpoint's decoder makes them (``seconds``
    long instead of the training clip, when given)."""
    record, _ = read_record(checkpoint, ["helpers"])
    decoder = ClipDecoder.from_settings(record["decoder"])
    if seconds is not None:
        decoder = decoder.with_options(clip_seconds=seconds)
    return np.stack([decoder(recordings[i % len(recordings)]) for i in range(count)])


def _reference(checkpoint: Path, inputs: np.ndarray) -> np.ndarray:
    """The checkpoint's own answers (softmax / values) for ``inputs``, in PyTorch."""
    record, state = read_record(checkpoint, ["helpers"])
    model = model_from_record(record, state)
    with torch.no_grad():
        output = model(torch.from_numpy(inputs))
    return (output.softmax(-1) if record["task"] == "classification" else output).numpy()


def _run_file(path: Path, inputs: np.ndarray) -> np.ndarray:
    if path.suffix == ".onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"waveform": inputs})[0]
    with torch.no_grad():
        return torch.jit.load(str(path))(torch.from_numpy(inputs)).numpy()


def _embedded_contract(path: Path) -> dict:
    if path.suffix == ".onnx":
        return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[CONTRACT_KEY])
    files = {CONTRACT_KEY: ""}
    torch.jit.load(str(path), _extra_files=files)
    return json.loads(files[CONTRACT_KEY])


# --------------------------------------------------------------------------------- parity
def _check_classifier_export(checkpoint: Path, recordings: list[Path], format: str, tmp_path: Path,
                             name: str) -> None:
    """Export with batch 2, run the file with batch 3 at the clip length and at 1.5 clips on real
    recordings, compare with PyTorch; check the contract."""
    started = time.perf_counter()
    result = export_checkpoint(checkpoint, format, tmp_path / f"model{'.onnx' if format == 'onnx' else '.pt'}",
                               parity_files=[str(p) for p in recordings], parity_clips=6)
    exported = time.perf_counter() - started
    contract = json.loads(result.contract_path.read_text())
    assert result.contract_path == Path(f"{result.path}.json") and contract == result.contract
    record, _ = read_record(checkpoint)
    decoder = ClipDecoder.from_settings(record["decoder"])
    assert contract["task"] == "classification" and contract["class_names"] == record["class_names"]
    assert (contract["sample_rate"], contract["num_samples"]) == (decoder.sample_rate, decoder.num_samples)
    assert (contract["input_name"], contract["output_name"]) == ("waveform", "probabilities")
    assert contract["input_shape"] == contract["dynamic_axes"] == ["batch", "time"]
    assert contract["output_shape"] == ["batch", "classes"]
    parity = contract["parity"]
    assert parity["max_abs_diff"] <= TOLERANCE and parity["inputs"] == 6
    assert [check["shape"][1] for check in parity["checks"]] == [decoder.num_samples, decoder.num_samples * 3 // 2]
    assert not any(s.startswith("generated") for s in parity["sources"])  # the recordings, not test signals
    assert _embedded_contract(result.path)["sample_rate"] == decoder.sample_rate
    if format == "onnx":
        graph_input = onnx.load(str(result.path)).graph.input[0]
        assert [d.dim_param for d in graph_input.type.tensor_type.shape.dim] == ["batch", "time"]

    # Independently of the export's own check: batch 3, then a longer input, on the recordings.
    differences = {}
    for label, inputs in (("batch 3", _clips(checkpoint, recordings, 3)),
                          ("batch 3 x 1.5 clips", _clips(checkpoint, recordings, 3, decoder.clip_seconds * 1.5))):
        answers = _run_file(result.path, inputs)
        expected = _reference(checkpoint, inputs)
        assert answers.shape == expected.shape == (3, len(record["class_names"]))
        differences[label] = float(np.abs(answers - expected).max())
        assert differences[label] <= TOLERANCE, (label, differences[label])
        np.testing.assert_allclose(answers.sum(axis=1), 1.0, atol=1e-5)
    print(f"{name} {format}: export {exported:.1f}s, parity {parity['max_abs_diff']:.2g}, "
          + ", ".join(f"{k} {v:.2g}" for k, v in differences.items()))


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_cnn_export_answers_like_the_model(cnn_checkpoint, recordings, format, tmp_path):
    _check_classifier_export(cnn_checkpoint, recordings, format, tmp_path, "cnn")


@pytest.mark.parametrize("format", [pytest.param("onnx", marks=pytest.mark.slow), "torchscript"])  # ONNX: 17 s
def test_efficientat_export_answers_like_the_model(efficientat_checkpoint, recordings, format, tmp_path):
    _check_classifier_export(efficientat_checkpoint, recordings, format, tmp_path, "efficientat_mn04")


def test_the_command_writes_the_file_and_its_contract(cnn_checkpoint, recordings, tmp_path):
    run_dir = cnn_checkpoint.parent.parent
    process = run_entry_point("audioml.export", f"source={run_dir}", "format=torchscript",
                              f"parity_inputs=[{recordings[0]}]", f"paths.output_dir={tmp_path}")
    output = tmp_path / "export" / f"{run_dir.name}-{cnn_checkpoint.stem}.pt"  # the default: named after the run
    contract = json.loads(Path(f"{output}.json").read_text())
    assert contract["format"] == "torchscript" and contract["parity"]["max_abs_diff"] <= TOLERANCE
    assert contract["checkpoint"] == str(cnn_checkpoint.resolve())
    assert "parity: max abs difference" in process.stdout and str(output) in process.stdout
    inputs = _clips(cnn_checkpoint, recordings, 3)
    assert np.abs(_run_file(output, inputs) - _reference(cnn_checkpoint, inputs)).max() <= TOLERANCE
    refused = run_entry_point("audioml.export", "format=onnx", f"paths.output_dir={tmp_path}", check=False)
    assert refused.returncode != 0 and "give the model as source=" in refused.stderr


# ------------------------------------------------------------------------------- regression
@pytest.fixture(scope="module")
def regression_checkpoint(tmp_path_factory) -> Path:
    """``crnn_attention`` trained one epoch on a generated MuSe package (sequences of 8 windows)."""
    base = tmp_path_factory.mktemp("muse")
    make_muse_package(base / "data" / "muse" / "c3_muse_stress_2022", seconds=10.0)
    cfg = compose_config(["data=muse", "model=crnn_attention", "loss=ccc", "monitor=val/ccc", "monitor_mode=max",
                          "optimized_metric=test/ccc", "data.targets=[valence,arousal]", "data.sequence_length=8",
                          "data.stride=4", "model.frontend.n_mels=32", "model.frontend.n_fft=512", "logger=none",
                          "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "data.num_workers=0",
                          f"paths.data_dir={base / 'data'}", f"paths.output_dir={base}",
                          f"hydra.run.dir={base / 'run'}"])
    _, run_dir = train(cfg)
    return next((run_dir / "checkpoints").glob("best-*.ckpt"))


def test_a_regressor_exports_values_per_window(regression_checkpoint, tmp_path):
    recording = next(regression_checkpoint.parents[2].glob("data/muse/*/raw_data/audio/6.wav"))
    audio = ClipDecoder.from_settings(read_record(regression_checkpoint)[0]["decoder"]).read(recording)
    windows = audio[: 16 * 8000].reshape(16, 8000)
    three = np.stack([windows[0:8], windows[4:12], windows[8:16]])          # batch 3 of 8 windows
    expected = _reference(regression_checkpoint, three)

    # ONNX: torch.export fixes the LSTM's sequence length, so the file takes 8 windows and says so.
    onnx_result = export_checkpoint(regression_checkpoint, "onnx", tmp_path / "valence.onnx",
                                    parity_files=[str(recording)])
    contract = onnx_result.contract
    assert contract["task"] == "regression" and contract["class_names"] == ["valence", "arousal"]
    assert contract["input_shape"] == ["batch", 8, 8000] and contract["dynamic_axes"] == ["batch"]
    assert contract["output_name"] == "values" and contract["output_shape"] == ["batch", "windows", "targets"]
    assert contract["parity"]["max_abs_diff"] <= TOLERANCE
    answers = _run_file(onnx_result.path, three)
    assert answers.shape == (3, 8, 2) and np.abs(answers - expected).max() <= TOLERANCE
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # onnxruntime refuses 16 windows
        _run_file(onnx_result.path, windows[None])

    # TorchScript keeps the number of windows dynamic (checked at 12 windows during the export).
    script = export_checkpoint(regression_checkpoint, "torchscript", tmp_path / "valence.pt",
                               parity_files=[str(recording)])
    assert script.contract["dynamic_axes"] == ["batch", "windows"]
    assert [c["shape"][1] for c in script.contract["parity"]["checks"]] == [8, 12]
    assert np.abs(_run_file(script.path, three) - expected).max() <= TOLERANCE
    assert np.abs(_run_file(script.path, windows[None]) - _reference(regression_checkpoint, windows[None])).max() \
        <= TOLERANCE
    print(f"crnn_attention: onnx {contract['parity']['max_abs_diff']:.2g}, "
          f"torchscript {script.contract['parity']['max_abs_diff']:.2g}")


# ------------------------------------------------------------------- what cannot be exported
@pytest.fixture(scope="module")
def median_checkpoint(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("median"), *SMALL_CNN, "model.backbone._target_=helpers.user_models.MedianPoolCNN",
                  "trusted_modules=[helpers]")


@pytest.fixture(scope="module")
def gated_checkpoint(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("gated"), *SMALL_CNN, "features._target_=helpers.user_models.SilenceGatedLogMel",
                  "trusted_modules=[helpers]")


def test_an_operator_onnx_lacks_names_its_layer_and_torchscript_exports_it(median_checkpoint, recordings,
                                                                           tmp_path):
    output = tmp_path / "median.onnx"
    with pytest.raises(ExportError) as refused:
        export_checkpoint(median_checkpoint, "onnx", output, trusted_modules=["helpers"])
    message = str(refused.value)
    assert "layer model.backbone.time_pool (helpers.user_models.MedianTimePool)" in message
    assert "aten.median" in message and "format=torchscript" in message and "user_models.py:" in message
    assert not output.exists() and not list(tmp_path.iterdir())  # nothing left behind
    result = export_checkpoint(median_checkpoint, "torchscript", tmp_path / "median.pt",
                               trusted_modules=["helpers"], parity_files=[str(p) for p in recordings])
    inputs = _clips(median_checkpoint, recordings, 3)
    assert result.max_abs_diff <= TOLERANCE
    assert np.abs(_run_file(result.path, inputs) - _reference(median_checkpoint, inputs)).max() <= TOLERANCE


def test_a_branch_on_tensor_values_is_named_for_onnx_and_fails_the_torchscript_parity(gated_checkpoint, tmp_path):
    with pytest.raises(ExportError, match=r"layer model\.frontend \(helpers\.user_models\.SilenceGatedLogMel\) cannot be "
                                          r"exported: its Python code branches on tensor values"):
        export_checkpoint(gated_checkpoint, "onnx", tmp_path / "gated.onnx", trusted_modules=["helpers"])
    # The trace follows the branch of its (loud) example; quiet recordings take the other one.
    quiet = []
    for index in range(3):
        quiet.append(tmp_path / f"quiet{index}.wav")
        sf.write(quiet[-1], _render_clip(np.random.default_rng(index), index, 0.0, 16000, 1.0) * 0.03, 16000)
    output = tmp_path / "gated.pt"
    with pytest.raises(ParityError, match=r"differs from the PyTorch model by .* tolerance=0\.0001.*nothing was "
                                          r"written") as failed:
        export_checkpoint(gated_checkpoint, "torchscript", output, trusted_modules=["helpers"],
                          parity_files=[str(p) for p in quiet])
    assert "quiet" in str(failed.value) and not output.exists() and not Path(f"{output}.json").exists()


def test_without_recordings_parity_is_checked_on_generated_signals(cnn_checkpoint, tmp_path):
    result = export_checkpoint(cnn_checkpoint, "torchscript", tmp_path / "cnn.pt")
    sources = result.contract["parity"]["sources"]
    assert len(sources) == 8 and all(s.startswith("generated#") for s in sources)
    assert result.max_abs_diff <= TOLERANCE


def test_settings_out_of_range_are_refused(cnn_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="format='tflite': use one of"):
        export_checkpoint(cnn_checkpoint, "tflite", tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="tolerance=-1"):
        export_checkpoint(cnn_checkpoint, "onnx", tmp_path / "m.onnx", tolerance=-1)
    with pytest.raises(ValueError, match="parity_clips=1"):
        export_checkpoint(cnn_checkpoint, "onnx", tmp_path / "m.onnx", parity_clips=1)
