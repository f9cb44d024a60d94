"""A trained model as one file: ``audioml-export`` writes a checkpoint's ``OutputModel`` (waveform
in, class probabilities or regression values out, the front end included) as ONNX or TorchScript,
and its input contract beside it (``<file>.json``).

Nothing is published unless the written file, run on recordings or generated signals at another
batch size (and length, where dynamic), answers within ``tolerance`` of the PyTorch model
(``ParityError``); a layer a format cannot express raises ``ExportError`` naming the layer and the
operator. Shapes: docs/guide/trained-models.md; why these exporters: docs/design/export.md."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from audioml.data.audio import AudioDecodeError
from audioml.data.decoder import ClipDecoder
from audioml.files import atomic_write_bytes
from audioml.models.base import AudioModule
from audioml.run.rundir import RunDir
from audioml.run.use.checkpoint import read_record
from audioml.run.use.inference import OutputModel, collect_inputs, display_path, find_checkpoint

log = logging.getLogger(__name__)

__all__ = ["FORMATS", "INPUT_NAME", "OUTPUT_NAMES", "DEFAULT_TOLERANCE", "ExportError", "ParityError",
           "ExportResult", "InputLayout", "export_checkpoint", "export_model", "parity_inputs",
           "generated_signals", "default_output", "sequence_length", "CONTRACT_KEY"]

#: Export formats and the file ending each gets.
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
#: Name of the exported model's input (ONNX graph input; TorchScript ``forward`` argument).
INPUT_NAME = "waveform"
#: Name of the output per task.
OUTPUT_NAMES = {"classification": "probabilities", "regression": "values"}
#: Largest absolute difference to the PyTorch model accepted by default (probabilities, values).
DEFAULT_TOLERANCE = 1e-4
#: Key of the input contract inside the file (ONNX ``metadata_props``, TorchScript extra file).
CONTRACT_KEY = "audioml.json"
_EXAMPLE_BATCH = 2
_MIN_PARITY_ROWS = 3  # != _EXAMPLE_BATCH: the check runs another batch size than the export saw
_TRANSLATED_NODE = re.compile(r"Error when translating node %(\S+) .*?target=([\w.]+)")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in \S+\n(.*)')
_MISSING_FUNCTION = re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)', overload='(\w+)'\)>")


class ExportError(RuntimeError):
    """The model cannot be written in the asked format; the message names the layer and what to do."""


class ParityError(RuntimeError):
    """The written file answers differently from the PyTorch model (beyond the tolerance)."""


@dataclass(frozen=True)
class InputLayout:
    """The input a task's ``OutputModel`` takes: axis names, the example shape the export runs,
    the axes it asks to be dynamic and the output's axis names."""

    axes: tuple[str, ...]
    example_shape: tuple[int, ...]
    wanted_dynamic: tuple[int, ...]
    output_axes: tuple[str, ...]

    @classmethod
    def of(cls, record: dict[str, Any], num_samples: int) -> InputLayout:
        if record["task"] == "classification":
            return cls(("batch", "time"), (_EXAMPLE_BATCH, num_samples), (0, 1), ("batch", "classes"))
        # Sequences of the training length: torch.export fixes the windows axis of recurrent
        # models at the example's value, so the example must be the length the model knows.
        windows = sequence_length(record)
        batch = _EXAMPLE_BATCH + 1 if windows == _EXAMPLE_BATCH else _EXAMPLE_BATCH  # distinct sizes
        per_step = (record.get("model") or {}).get("output", "per_step") != "per_sequence"
        return cls(("batch", "windows", "window_samples"), (batch, windows, num_samples), (0, 1),
                   ("batch", "windows", "targets") if per_step else ("batch", "targets"))


@dataclass(frozen=True)
class ExportResult:
    """What ``export_checkpoint`` wrote: the model file, its contract file and the contract."""

    path: Path
    contract_path: Path
    contract: dict[str, Any]

    @property
    def max_abs_diff(self) -> float:
        return self.contract["parity"]["max_abs_diff"]


def sequence_length(record: dict[str, Any]) -> int:
    """Windows per sequence of a regressor (``data.sequence_length``; 40 when not recorded, as
    ``Predictor`` assumes)."""
    return int((record.get("data") or {}).get("sequence_length") or 40)


def default_output(checkpoint: Path, format: str, folder: str | Path) -> Path:
    """``<folder>/<run name>-<checkpoint stem>.<ext>``, the run name being the folder holding
    ``checkpoints/`` (a bare checkpoint elsewhere: its stem alone)."""
    run = checkpoint.parent.parent.name if checkpoint.parent.name == RunDir.CHECKPOINTS else ""
    return Path(folder) / f"{run + '-' if run else ''}{checkpoint.stem}{FORMATS[format]}"


# --------------------------------------------------------------------------------- the inputs
def generated_signals(count: int, num_samples: int, sample_rate: int, seed: int = 0) -> np.ndarray:
    """``(count, num_samples)`` float32 test signals in [-1, 1]: near-silence, white noise, a
    chirp, a harmonic tone in noise, clipped noise, a click train, then noise of rising level.
    They reach what recordings reach (quiet frames near the log offset, full scale, every band)."""
    rng = np.random.default_rng(seed)
    time = np.arange(num_samples) / sample_rate
    duration = max(time[-1], 1.0 / sample_rate)
    sweep = 50.0 * (0.45 * sample_rate / 50.0) ** (time / duration)  # 50 Hz -> 0.45 rate, exponential
    kinds = [lambda: 1e-4 * rng.standard_normal(num_samples),
             lambda: 0.1 * rng.standard_normal(num_samples),
             lambda: 0.5 * np.sin(2 * np.pi * np.cumsum(sweep) / sample_rate),
             lambda: sum(0.3 / k * np.sin(2 * np.pi * 220 * k * time) for k in range(1, 5))
             + 0.01 * rng.standard_normal(num_samples),
             lambda: np.clip(3.0 * rng.standard_normal(num_samples), -1.0, 1.0),
             lambda: np.where(np.arange(num_samples) % max(1, sample_rate // 10) == 0, 0.9, 0.0)]
    rows = [kinds[i]() if i < len(kinds) else 0.05 * (i - len(kinds) + 1) * rng.standard_normal(num_samples)
            for i in range(count)]
    return np.clip(np.stack(rows), -1.0, 1.0).astype(np.float32)


def parity_inputs(record: dict[str, Any], files: Sequence[str | Path] = (), count: int = 8,
                  ) -> tuple[np.ndarray, list[str]]:
    """``(inputs, sources)``: up to ``count`` model inputs at the training shape, from ``files``
    decoded by the checkpoint's decoder (classifier: its clips, sliding windows over longer
    recordings; regressor: sequences of the training length of 0.5 s windows, a short recording
    repeated to fill one), taken from as many files as possible (the first clip of each, then the
    second...), topped up with ``generated_signals`` to at least 3 rows (another batch size than
    the export example). ``sources`` names each row (``<file>#<clip>``, ``generated#<n>``). Files
    that cannot be decoded are skipped with a warning."""
    if not isinstance(count, int) or count < _MIN_PARITY_ROWS:
        raise ValueError(f"parity_clips={count!r}: use a whole number >= {_MIN_PARITY_ROWS}")
    decoder = ClipDecoder.from_settings(record["decoder"]).with_options(min_seconds=0.0)
    regression = record["task"] == "regression"
    per_file: list[tuple[str, np.ndarray]] = []
    for path in files:
        if len(per_file) >= count:
            break
        try:
            audio = decoder.read(path)
            found = _sequences(decoder.trimmed(audio, path), decoder.num_samples, sequence_length(record)) \
                if regression else decoder.windows(audio, source=path)[0]
        except (AudioDecodeError, OSError) as error:
            log.warning("parity check: %s skipped (%s)", display_path(path), error)
            continue
        per_file.append((display_path(path), found))
    rows: list[np.ndarray] = []
    sources: list[str] = []
    for index in range(max((len(found) for _, found in per_file), default=0)):  # one per file, then the next
        for name, found in per_file:
            if index < len(found) and len(rows) < count:
                rows.append(found[index])
                sources.append(f"{name}#{index}")
    missing = max(_MIN_PARITY_ROWS - len(rows), 0 if rows else count)
    if missing:
        shape = (sequence_length(record), decoder.num_samples) if regression else (decoder.num_samples,)
        flat = generated_signals(missing * int(np.prod(shape[:-1], dtype=int)), shape[-1], decoder.sample_rate)
        rows += list(flat.reshape(missing, *shape))
        sources += [f"generated#{index}" for index in range(missing)]
    return np.ascontiguousarray(np.stack(rows), dtype=np.float32), sources


def _sequences(audio: np.ndarray, window: int, length: int) -> np.ndarray:
    """Decoded audio as ``(n, length, window)`` sequences of consecutive windows (the tail
    window zero-padded, as the MuSe data pads it; a recording shorter than a sequence repeated)."""
    count = -(-audio.shape[0] // window)
    padded = np.zeros(count * window, dtype=np.float32)
    padded[:audio.shape[0]] = audio
    windows = padded.reshape(count, window)
    if count < length:
        windows = np.resize(windows, (length, window))
    usable = windows.shape[0] // length * length
    return windows[:usable].reshape(-1, length, window)


def _other_length(inputs: np.ndarray, layout: InputLayout) -> np.ndarray:
    """The parity inputs re-cut at 1.5 times the length of the length axis (time samples of a
    classifier, windows of a regressor), at least 2 rows: consecutive rows joined, so every
    sample is still real input."""
    axis_length = inputs.shape[1]
    longer = axis_length + max(1, axis_length // 2)
    stream = inputs.reshape(-1, *inputs.shape[2:])
    rows = max(2, min(len(inputs), stream.shape[0] // longer))
    needed = rows * longer
    if stream.shape[0] < needed:
        stream = np.resize(stream, (needed, *stream.shape[1:]))
    return np.ascontiguousarray(stream[:needed].reshape(rows, longer, *inputs.shape[2:]))


# ------------------------------------------------------------------------------------ exporting
def export_checkpoint(source: str | Path, format: str = "onnx", output: str | Path | None = None,
                      trusted_modules: Iterable[str] = (), parity_files: Sequence[str] = (),
                      parity_clips: int = 8, tolerance: float = DEFAULT_TOLERANCE, opset: int | None = None,
                      optimize: bool = True, tracking_uri: str | None = None,
                      output_dir: str | Path = "outputs/export") -> ExportResult:
    """Export the model behind ``source`` (a ``.ckpt``, run directory or MLflow model:
    ``find_checkpoint``) as ``format`` to ``output`` (default ``default_output`` in
    ``output_dir``), check its parity on ``parity_files`` (files, folders, globs; none:
    generated signals) and write the contract ``<output>.json``.

    Raises ``ExportError`` (a layer the format cannot express), ``ParityError`` (the file's
    answers differ by more than ``tolerance``), the errors of ``read_record`` and
    ``collect_inputs``, and ``ValueError`` for settings out of range."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: use one of {list(FORMATS)}")
    if not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ValueError(f"tolerance={tolerance!r}: use a number >= 0 (the largest absolute difference accepted)")
    folder = Path(output_dir)
    checkpoint = find_checkpoint(source, tracking_uri, folder / ".downloads")
    record, state_dict = read_record(checkpoint, trusted_modules)
    model = OutputModel.of_record(record, state_dict)
    if isinstance(model.model, AudioModule) and (extra := model.model.extra_input) is not None:
        raise ExportError(f"{checkpoint}: its head also takes openSMILE features (model.head.extra_features="
                          f"{extra.name}), computed from the clip by openSMILE's native library, which {format} "
                          "cannot carry: use audioml-predict or the run's MLflow model instead")
    files = collect_inputs(list(parity_files)) if parity_files else []
    inputs, sources = parity_inputs(record, files, parity_clips)
    if not files:
        log.info("parity is checked on generated signals; give parity_inputs=[recordings] to check real audio")
    output = Path(output) if output is not None else default_output(checkpoint, format, folder)
    contract = export_model(model, record, format, output, inputs, sources, tolerance, opset, optimize,
                            checkpoint=display_path(checkpoint.resolve()))
    contract_path = Path(f"{output}.json")
    atomic_write_bytes(contract_path, json.dumps(contract, indent=1).encode())
    return ExportResult(output, contract_path, contract)


def export_model(model: OutputModel, record: dict[str, Any], format: str, output: Path, inputs: np.ndarray,
                 sources: Sequence[str], tolerance: float = DEFAULT_TOLERANCE, opset: int | None = None,
                 optimize: bool = True, checkpoint: str | None = None) -> dict[str, Any]:
    """Write ``model`` (in eval mode) as ``format`` to ``output`` once its parity on ``inputs``
    (at the training shape, from ``parity_inputs``) is within ``tolerance``; returns the
    contract (module docs; ``checkpoint`` names the source), which the file also carries.

    The file is written beside ``output`` and renamed into place only after the check, so a
    failed export leaves an older file as it was."""
    decoder = ClipDecoder.from_settings(record["decoder"])
    layout = InputLayout.of(record, decoder.num_samples)
    if tuple(inputs.shape[1:]) != layout.example_shape[1:]:
        raise ValueError(f"parity inputs of shape {list(inputs.shape)}: the model takes "
                         f"(batch, {', '.join(map(str, layout.example_shape[1:]))})")
    # The example is noise, not the parity inputs: what a trace freezes from its example shows
    # up as a difference on other inputs.
    example = torch.from_numpy((0.1 * np.random.default_rng(12345).standard_normal(layout.example_shape))
                               .astype(np.float32))
    output_name = OUTPUT_NAMES[record["task"]]
    output.parent.mkdir(parents=True, exist_ok=True)
    with _temporary_beside(output) as written:
        if format == "onnx":
            dynamic, opset = _export_onnx(model, example, layout, output_name, written, opset, optimize)
        else:
            dynamic, opset = _export_torchscript(model, example, layout, written), None

        def reference(batch: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return model(torch.from_numpy(batch)).float().numpy()

        parity = _check_parity(_runner(format, written), reference, inputs, sources, layout, dynamic, tolerance,
                               format)
        if parity.pop("length_fixed"):
            dynamic.remove(1)
            if format == "onnx":  # declared dynamic but wrong at another length: refuse other lengths
                _fix_onnx_axis(written, 1, layout.example_shape[1])
        contract = _contract(record, decoder, layout, dynamic, format, opset, output, output_name, parity, checkpoint)
        _embed_contract(format, written, contract)
        os.replace(written, output)
    log.info("%s written (%s); parity: max abs difference %.3g over %d inputs (tolerance %g)", output, format,
             parity["max_abs_diff"], parity["inputs"], tolerance)
    return contract


def _contract(record: dict[str, Any], decoder: ClipDecoder, layout: InputLayout, dynamic: list[int], format: str,
              opset: int | None, output: Path, output_name: str, parity: dict[str, Any],
              checkpoint: str | None) -> dict[str, Any]:
    """What a user of the file needs to feed it and read it (the sidecar; also inside the file)."""
    regression = record["task"] == "regression"
    contract: dict[str, Any] = {
        "format": format, "file": output.name, **({"opset": opset} if opset else {}), "task": record["task"],
        "sample_rate": decoder.sample_rate, "clip_seconds": decoder.clip_seconds, "num_samples": decoder.num_samples,
        **({"sequence_length": layout.example_shape[1]} if regression else {}),
        "class_names": [str(c) for c in record["class_names"]],
        "input_name": INPUT_NAME, "input_dtype": "float32",
        "input_shape": [layout.axes[a] if a in dynamic else layout.example_shape[a] for a in range(len(layout.axes))],
        "dynamic_axes": [layout.axes[a] for a in dynamic],
        "output_name": output_name, "output_shape": list(layout.output_axes),
        "decoder": decoder.settings(), "parity": parity}
    if not regression:  # the file's probabilities are those of the logits divided by it (temperature scaling)
        contract["temperature"] = float(record.get("temperature") or 1.0)
    if regression:
        contract["note"] = ("class_names are the regression targets; num_samples is one window of clip_seconds; "
                            "the input is sequences of consecutive windows")
    versions = {}
    for package in ("audioml", "torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    contract["exported_with"] = versions
    if checkpoint is not None:
        contract["checkpoint"] = checkpoint
    return contract


@contextmanager
def _temporary_beside(output: Path) -> Iterator[Path]:
    """A temporary file name in ``output``'s folder (so the final rename is atomic), removed
    unless the block moved it into place."""
    handle, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=output.suffix)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------- ONNX
def _export_onnx(model: OutputModel, example: torch.Tensor, layout: InputLayout, output_name: str, path: Path,
                 opset: int | None, optimize: bool) -> tuple[list[int], int]:
    """Capture with ``torch.export`` (``Dim.AUTO`` on the wanted axes), translate to ONNX, name
    the axes; returns ``(dynamic axes, opset)``."""
    import onnx

    auto = torch.export.Dim.AUTO
    try:
        with torch.no_grad():
            program = torch.export.export(model, (example,), strict=False,
                                          dynamic_shapes={INPUT_NAME: {a: auto for a in layout.wanted_dynamic}})
    except Exception as error:  # any capture failure is reported with its layer
        raise ExportError(_capture_failure("onnx", model, error)) from error
    shape = _input_shape(program)
    dynamic = [axis for axis in layout.wanted_dynamic if not isinstance(shape[axis], int)]
    if 0 not in dynamic:
        raise ExportError(f"format=onnx: the model fixes the batch size at {shape[0]} during export (a layer "
                          "reshapes with a batch size taken as a number); export with format=torchscript")
    for axis in layout.wanted_dynamic:
        if axis not in dynamic:
            log.warning("format=onnx: the model fixes the %s axis at %d during export (e.g. nn.LSTM fixes the "
                        "sequence length): the file takes only that length; format=torchscript may keep it dynamic",
                        layout.axes[axis], shape[axis])
    try:
        with _quiet("onnx_ir", "onnxscript"):
            onnx_program = torch.onnx.export(program, (example,), input_names=[INPUT_NAME],
                                             output_names=[output_name], opset_version=opset, dynamo=True,
                                             optimize=optimize, verbose=False)
    except Exception as error:  # the translation failure is reported with its layer
        raise ExportError(_translation_failure(program, error)) from error
    onnx_program.save(str(path))
    proto = onnx.load(str(path))
    names = {str(shape[axis]): layout.axes[axis] for axis in dynamic}
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
            elif dim.dim_param.isdigit():  # a fixed axis the translation left as a name
                dim.dim_value = int(dim.dim_param)
    onnx.save(proto, str(path))
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset or 0)
    return dynamic, int(opset_used)


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """The optimiser's passes log every step at INFO (the entry point's level): keep them at WARNING."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _input_shape(program) -> list[int | str]:
    """The exported program's input shape: ints for fixed axes, the symbol's name for dynamic ones."""
    name = program.graph_signature.user_inputs[0]
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name == name)
    return [int(d) if isinstance(d, int) else str(d) for d in node.meta["val"].shape]


def _embed_contract(format: str, path: Path, contract: dict[str, Any]) -> None:
    """Put the contract inside the file: ONNX ``metadata_props``, a TorchScript extra file (both
    under ``CONTRACT_KEY``), so the file explains itself without its sidecar."""
    text = json.dumps(contract)
    if format == "onnx":
        import onnx

        proto = onnx.load(str(path))
        kept = [p for p in proto.metadata_props if p.key != CONTRACT_KEY]
        del proto.metadata_props[:]
        proto.metadata_props.extend(kept)
        entry = proto.metadata_props.add()
        entry.key, entry.value = CONTRACT_KEY, text
        onnx.save(proto, str(path))
    else:
        torch.jit.save(torch.jit.load(str(path), map_location="cpu"), str(path), _extra_files={CONTRACT_KEY: text})


def _fix_onnx_axis(path: Path, axis: int, size: int) -> None:
    """Declare ``axis`` of the ONNX input fixed at ``size`` (onnxruntime then refuses other sizes)."""
    import onnx

    proto = onnx.load(str(path))
    dim = proto.graph.input[0].type.tensor_type.shape.dim[axis]
    dim.ClearField("dim_param")
    dim.dim_value = size
    onnx.save(proto, str(path))


# -------------------------------------------------------------------------------- TorchScript
@contextmanager
def _lightning_tracing() -> Iterator[None]:
    """Let the tracer read a LightningModule that has no Trainer: its ``trainer`` property
    raises without one unless ``_jit_is_scripting`` is set, as Lightning's own
    ``to_torchscript`` sets it (the tracer visits every attribute of every submodule)."""
    import lightning as L

    before = L.LightningModule._jit_is_scripting
    L.LightningModule._jit_is_scripting = True
    try:
        yield
    finally:
        L.LightningModule._jit_is_scripting = before


def _export_torchscript(model: OutputModel, example: torch.Tensor, layout: InputLayout, path: Path) -> list[int]:
    """Trace on ``example`` and save; returns the axes to check as dynamic (all wanted: a trace
    does not say, the parity check at another length decides)."""
    import warnings

    try:
        with _lightning_tracing(), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # what it warns of, parity measures
            traced = torch.jit.trace(model, (example,), check_trace=False)
    except Exception as error:  # any tracing failure is reported with its layer
        raise ExportError(_capture_failure("torchscript", model, error)) from error
    torch.jit.save(traced, str(path))
    return list(layout.wanted_dynamic)


# ------------------------------------------------------------------------------------- parity
def _runner(format: str, path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The written file as a function ``inputs -> outputs`` (onnxruntime on CPU; torch.jit.load)."""
    if format == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # its constant-folding notes are not the user's concern
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own untyped errors
            raise ExportError(f"format=onnx: onnxruntime {metadata.version('onnxruntime')} cannot load the exported "
                              f"model: {str(error).splitlines()[0]}; export with format=torchscript") from None
        return lambda batch: session.run(None, {INPUT_NAME: batch})[0]
    loaded = torch.jit.load(str(path), map_location="cpu")

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(batch)).float().numpy()

    return run


def _check_parity(runner, reference, inputs: np.ndarray, sources: Sequence[str], layout: InputLayout,
                  dynamic: list[int], tolerance: float, format: str) -> dict[str, Any]:
    """Run the file and the model on ``inputs`` (a batch of another size than the example) and,
    where the length axis is dynamic, on ``inputs`` re-cut longer; returns the parity record.

    A difference above ``tolerance`` at the training shape raises ``ParityError``; at the other
    length it only marks the length as fixed (``length_fixed``): the file answers right at the
    training length, and the contract then says it takes only that."""
    checks = []
    try:
        got = runner(inputs)
    except Exception as error:  # the runtime's own error, shown to the user
        raise ParityError(f"format={format}: the exported file fails on a batch of {len(inputs)} inputs of shape "
                          f"{list(inputs.shape)}: {str(error).splitlines()[0]}") from None
    expected = reference(inputs)
    difference = _max_abs_diff(got, expected)
    checks.append({"shape": list(inputs.shape), "max_abs_diff": difference})
    if not difference <= tolerance:
        worst = int(np.abs(got - expected).reshape(len(inputs), -1).max(axis=1).argmax()) \
            if got.shape == expected.shape else 0
        raise ParityError(f"format={format}: the exported model differs from the PyTorch model by {difference:.3g} "
                          f"(max abs, tolerance={tolerance:g}) on {len(inputs)} inputs of shape "
                          f"{list(inputs.shape)}, most on {sources[worst]}; nothing was written. A layer computes "
                          "differently when exported (a traced Python branch or number, an operator's precision): "
                          f"try format={_other(format)}, or accept the difference with tolerance=<larger>")
    length_fixed = False
    if 1 in dynamic:
        longer = _other_length(inputs, layout)
        try:
            other = _max_abs_diff(runner(longer), reference(longer))
            problem = None if other <= tolerance else f"max abs difference {other:.3g} > tolerance {tolerance:g}"
        except Exception as error:  # a runtime that refuses the length: fixed length
            other, problem = None, str(error).splitlines()[0]
        checks.append({"shape": list(longer.shape), "max_abs_diff": other})
        if problem:
            length_fixed = True
            log.warning("format=%s: the exported model does not answer like the PyTorch model at %d %s (%s): it is "
                        "kept for inputs of %d %s only", format, longer.shape[1], layout.axes[1], problem,
                        layout.example_shape[1], layout.axes[1])
    passed = [difference] if length_fixed else [c["max_abs_diff"] for c in checks]
    return {"max_abs_diff": max(passed), "tolerance": tolerance,
            "inputs": len(inputs), "sources": list(sources), "checks": checks, "length_fixed": length_fixed}


def _max_abs_diff(got: np.ndarray, expected: np.ndarray) -> float:
    if got.shape != expected.shape:
        raise ParityError(f"the exported model answers with shape {list(got.shape)}, the PyTorch model with "
                          f"{list(expected.shape)}")
    return float(np.abs(got.astype(np.float64) - expected.astype(np.float64)).max())


# ------------------------------------------------------------------------ naming the failing layer
def _other(format: str) -> str:
    return "torchscript" if format == "onnx" else "onnx"


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and its causes, outermost first."""
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _reason(error: BaseException) -> str:
    """The error's first line, and what it means when it is torch.export's data-dependence error."""
    text = str(error).strip()
    line = f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".strip()
    if "data-dependent" in text or type(error).__name__.startswith("GuardOnDataDependent"):
        return (f"its Python code branches on tensor values, which an exported graph cannot follow ({line}); "
                "torch.where or torch.cond express such a branch")
    return line


def _capture_failure(format: str, model: torch.nn.Module, error: BaseException) -> str:
    """The message for a failure while the model's Python runs (``torch.export``, the tracer):
    the innermost layer of ``model`` on the failing stack, its source line, the reason."""
    modules = {id(module): name for name, module in model.named_modules()}
    for cause in reversed(_chain(error)):  # the root cause holds the user's frames
        layer = None
        traceback = cause.__traceback__
        while traceback is not None:
            owner = traceback.tb_frame.f_locals.get("self")
            if owner is not None and id(owner) in modules:
                layer = (modules[id(owner)], owner, traceback.tb_frame.f_code.co_filename, traceback.tb_lineno)
            traceback = traceback.tb_next
        if layer is not None:
            name, owner, filename, line = layer
            cls = f"{type(owner).__module__}.{type(owner).__qualname__}"
            return (f"format={format}: layer {name or '<the model>'} ({cls}) cannot be exported: {_reason(cause)} "
                    f"(at {filename}:{line}). Export with format={_other(format)}, or change that layer")
    return (f"format={format}: the model cannot be exported: {_reason(_chain(error)[-1])}. "
            f"Export with format={_other(format)}")


def _translation_failure(program, error: BaseException) -> str:
    """The message for an operator the ONNX translation lacks: the operator, and the layer the
    graph node came from (its ``nn_module_stack``) with the source line."""
    text = "\n".join(str(cause) for cause in _chain(error))
    node_name, target = None, None
    if found := _TRANSLATED_NODE.search(text):
        node_name, target = found.group(1), found.group(2)
    if missing := _MISSING_FUNCTION.search(text):
        target = target or f"{missing.group(1)}.{missing.group(2)}"
    operator = (target or "").removeprefix("torch.ops.")
    node = next((n for n in program.graph.nodes if n.name == node_name), None) or \
        next((n for n in program.graph.nodes if operator and str(n.target) == operator), None)
    what = f"ONNX has no translation of the operator {operator}" if missing and operator else \
        f"the ONNX translation of {operator or 'an operator'} failed ({_reason(_chain(error)[-1])})"
    stack = (node.meta.get("nn_module_stack") or {}) if node is not None else {}
    if stack:
        path, cls = list(stack.values())[-1]
        cls = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
        frames = _FRAME.findall(node.meta.get("stack_trace") or "")
        at = f" (at {frames[-1][0]}:{frames[-1][1]}: {frames[-1][2].strip()})" if frames else ""
        return (f"format=onnx: layer {path or '<the model>'} ({cls}) cannot be exported: {what}{at}. "
                "Export with format=torchscript, or change that layer")
    return f"format=onnx: the model cannot be exported: {what}. Export with format=torchscript"
