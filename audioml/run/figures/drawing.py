"""The figures of a run (confusion matrices, learning curves, embedding PCA, reliability diagram,
layer weights) and the report worker that draws them on another core beside training.

:func:`draw` hands a figure to the worker (``python -m audioml.run.figures.drawing``, started by
:func:`start`) and returns its path at once; :func:`wait` returns when it is written. Requests are
JSON plus ``.npy`` payloads (nothing unpickled); the worker also runs the functions marked
:func:`worker_task` (:func:`run_task`). Without a worker the figures are drawn in the calling
process: same files. Why a worker: docs/design/caches.md#the-report-worker."""

from __future__ import annotations

import atexit
import inspect
import io
import json
import logging
import os
import queue
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

__all__ = ["plot_confusion_matrix", "plot_learning_curves", "plot_embedding_pca", "plot_reliability_diagram",
           "plot_layer_weights", "pca_2d",
           "PLOTS", "draw", "wait", "worker_task", "run_task", "start", "stop_worker", "worker_enabled"]

def _figure(width: float, height: float):
    """A matplotlib ``Figure`` on the Agg canvas, outside pyplot (no global figure list to
    close, safe in any thread)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


#: Width of one character of the default 10 pt tick labels, in inches (DejaVu Sans averages
#: ~0.6 em). The figures place their axes with margins computed from the longest label instead
#: of ``tight_layout``, which measured every text by rendering it: half of a head job's
#: report time (0.3 of 0.6 s for the learning curves on 2 cores).
_CHAR_INCHES = 0.075


def _place(fig, left: float, bottom: float, right: float = 0.2, top: float = 0.45,
           wspace: float | None = None) -> None:
    """Axes margins in inches (``left`` ... ``top``); ``wspace`` as a fraction of an axes' width."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=min(left / width, 0.45), right=1 - right / width, bottom=min(bottom / height, 0.45),
                        top=1 - top / height, wspace=wspace)


def plot_confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: str | Path,
                          title: str = "test confusion matrix") -> Path:
    """PNG of counts with row-normalised recall shading; rows are true classes."""
    matrix = np.asarray(matrix)
    recall = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    label = _CHAR_INCHES * max((len(str(name)) for name in class_names), default=1)
    size = max(4.0, 0.8 * len(class_names) + 2)
    fig = _figure(size + label, size + 0.71 * label)  # x labels at 45 degrees: 0.71 of their length down
    ax = fig.subplots()
    ax.imshow(recall, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, int(matrix[i, j]), ha="center", va="center",
                    color="white" if recall[i, j] > 0.5 else "black")
    _place(fig, left=label + 0.55, bottom=0.71 * label + 0.6)
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def plot_learning_curves(history: Sequence[dict[str, float]], path: str | Path,
                         title: str = "learning curves") -> Path:
    """PNG with one panel per metric name (``loss``, ``macro_f1``, ...), train and val curves
    against the epoch. ``history``: one dict per epoch with ``epoch`` and ``train/<m>`` /
    ``val/<m>`` values."""
    from matplotlib.ticker import MaxNLocator

    table = pd.DataFrame(list(history))
    names = sorted({c.split("/", 1)[1] for c in table.columns if c.startswith(("train/", "val/"))},
                   key=lambda n: (n != "loss", n))
    fig = _figure(4 * max(1, len(names)), 3.4)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)
    for ax, name in zip(axes[0], names):
        for stage, style in (("train", "-o"), ("val", "-s")):
            column = f"{stage}/{name}"
            if column in table:
                ax.plot(table["epoch"] + 1, table[column], style, markersize=3, label=stage)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper right" if name == "loss" else "lower right")  # "best" tests every point
    fig.suptitle(title)
    _place(fig, left=0.55, bottom=0.5, top=0.6, wspace=0.3)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project ``(n, d)`` features on their first two principal components.
    Returns ``(coordinates (n, 2), explained variance ratio (2,))`` (zeros pad ``d < 2``)."""
    centred = np.asarray(features, dtype=np.float64)
    centred = centred - centred.mean(axis=0, keepdims=True)
    from threadpoolctl import threadpool_limits

    # One BLAS thread: a (clips x features) SVD takes milliseconds; OpenBLAS's threads on cores
    # busy with other work took over a second for 92 x 960 (a head job's test report).
    with threadpool_limits(1):
        _, singular, components = np.linalg.svd(centred, full_matrices=False)
    coordinates = np.zeros((centred.shape[0], 2))
    kept = min(2, components.shape[0])
    coordinates[:, :kept] = centred @ components[:kept].T
    variance = singular ** 2
    ratio = np.zeros(2)
    ratio[:kept] = variance[:kept] / variance.sum() if variance.sum() > 0 else 0.0
    return coordinates, ratio


def plot_embedding_pca(before_head: np.ndarray, after_head: np.ndarray, labels: np.ndarray,
                       class_names: Sequence[str], path: str | Path) -> Path:
    """Two scatter plots side by side: 2-D PCA of the pooled backbone embeddings ``(n, d)``
    (before the head) and of the head's outputs ``(n, C)`` (logits), coloured by true class."""
    from matplotlib import colormaps

    fig = _figure(10, 4.4)
    axes = fig.subplots(1, 2)
    colours = colormaps["tab10" if len(class_names) <= 10 else "tab20"]
    for ax, features, name in ((axes[0], before_head, "embeddings before the head"),
                               (axes[1], after_head, "head outputs (logits)")):
        coordinates, ratio = pca_2d(features)
        for index, class_name in enumerate(class_names):
            chosen = np.asarray(labels) == index
            if chosen.any():
                ax.scatter(coordinates[chosen, 0], coordinates[chosen, 1], s=12, alpha=0.75,
                           color=colours(index % colours.N), label=class_name)
        ax.set_title(name)
        ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
        ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
    axes[1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside, not over
    fig.suptitle("test set, 2-D PCA, coloured by true class")
    legend = 0.065 * max((len(str(name)) for name in class_names), default=1) + 0.45  # 8 pt entries + marker
    _place(fig, left=0.75, bottom=0.55, right=legend + 0.1, top=0.6, wspace=0.3)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_reliability_diagram(edges: np.ndarray, counts: np.ndarray, confidence: np.ndarray, accuracy: np.ndarray,
                             path: str | Path, title: str = "test reliability diagram",
                             ece: float | None = None) -> Path:
    """PNG of a classifier's calibration (``audioml.stats.calibration.Reliability``): per
    confidence bin (``edges`` ``(bins + 1,)``) the share of its clips predicted right against
    their mean top-class probability, bars over the diagonal of perfect calibration, the gap to
    it shaded; below, the clips per bin. NaN (empty) bins are left blank."""
    edges, counts = np.asarray(edges, dtype=float), np.asarray(counts)
    confidence, accuracy = np.asarray(confidence, dtype=float), np.asarray(accuracy, dtype=float)
    centres, widths = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = counts > 0
    fig = _figure(4.6, 5.4)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    top.bar(centres[filled], accuracy[filled], width=widths[filled], edgecolor="black", color="tab:blue",
            alpha=0.8, label="accuracy")
    top.bar(centres[filled], confidence[filled] - accuracy[filled], bottom=accuracy[filled], width=widths[filled],
            color="tab:red", alpha=0.3, edgecolor="tab:red", label="gap to confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.set_title(title if ece is None else f"{title} (ECE {ece:.3f})")
    bottom.bar(centres, counts, width=widths, color="grey", edgecolor="black")
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("clips")
    _place(fig, left=0.7, bottom=0.55, top=0.4)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def plot_layer_weights(layers: Sequence[int], weights: Sequence[float], path: str | Path,
                       title: str = "learned layer weights") -> Path:
    """Bar chart of the weight a layer-weighted head learned for each hidden layer (layer 0:
    the input side), with the uniform weight ``1 / len(layers)`` marked."""
    fig = _figure(max(4.0, 0.32 * len(layers) + 1.6), 3.2)
    ax = fig.subplots()
    ax.bar([str(layer) for layer in layers], weights, color="tab:blue")
    ax.axhline(1.0 / max(1, len(layers)), color="grey", linestyle="--", linewidth=1, label="uniform")
    ax.set_xlabel("layer")
    ax.set_ylabel("softmax weight")
    ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    _place(fig, left=0.7, bottom=0.55, top=0.5)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


#: The figures :func:`draw` can hand to the worker, by name.
PLOTS: dict[str, Callable[..., Path]] = {f.__name__: f for f in (plot_confusion_matrix, plot_learning_curves,
                                                                  plot_embedding_pca, plot_reliability_diagram,
                                                                  plot_layer_weights)}
#: The attribute :func:`worker_task` sets: the only functions the worker runs besides :data:`PLOTS`.
_TASK_MARK = "_audioml_worker_task"
#: Environment variable: ``0`` draws every figure (and runs every task) in the calling process.
WORKER_ENV = "AUDIOML_FIGURE_WORKER"
_PRELOAD_ENV = "_AUDIOML_WORKER_PRELOAD"  # set by the caller: the modules whose preload() runs at start
_HEADER = struct.Struct(">Q")  # the length of each frame on the pipes
_MAX_FRAME = 4 << 30


def worker_enabled() -> bool:
    """Whether figures go to a worker: more than one CPU for this process and not turned off."""
    if os.environ.get(WORKER_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return cpus > 1


# ------------------------------------------------------------------------------- the wire
def _write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)


def _read_frame(stream: BinaryIO) -> bytes | None:
    """The next frame, or ``None`` at the end of the stream; ``ValueError`` for a length no
    request or answer has."""
    head = stream.read(_HEADER.size)
    if len(head) < _HEADER.size:
        return None
    size = _HEADER.unpack(head)[0]
    if size > _MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes")
    data = stream.read(size)
    if len(data) < size:
        return None
    return data


def _encode(value: Any, arrays: list[np.ndarray]) -> Any:
    """``value`` as JSON, its arrays replaced by ``{"__array__": index into arrays}``."""
    if isinstance(value, np.ndarray):
        arrays.append(value)
        return {"__array__": len(arrays) - 1}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _encode(v, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, arrays) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a figure argument of type {type(value).__name__} cannot go to the worker")


def _decode(value: Any, arrays: list[np.ndarray]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {k: _decode(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    return value


def _request_frames(request_id: int, name: str, arguments: dict[str, Any]) -> list[bytes]:
    """A request: its JSON header, then one ``.npy`` payload per array."""
    arrays: list[np.ndarray] = []
    encoded = _encode(arguments, arrays)
    payloads = []
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array), allow_pickle=False)
        payloads.append(buffer.getvalue())
    header = {"id": request_id, "plot": name, "arguments": encoded, "arrays": len(payloads)}
    return [json.dumps(header).encode(), *payloads]


# ---------------------------------------------------------------------- the calling side
class _Worker:
    """The worker process and the drawings sent to it (their futures, by request id). Requests
    are written by a thread of their own: a payload larger than the pipe's buffer (an
    embedding matrix) would otherwise block the caller until the worker finished the figure
    before it."""

    def __init__(self, preload: Sequence[str] = ()) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", _PRELOAD_ENV: ",".join(preload)}
        self.process = subprocess.Popen([sys.executable, "-m", "audioml.run.figures.drawing"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env=env)
        self.lock = threading.Lock()
        self.pending: dict[int, tuple[Future, str, dict[str, Any]]] = {}
        self.outbox: queue.SimpleQueue[list[bytes] | None] = queue.SimpleQueue()
        self.next_id = 0
        self.answered = 0
        self.alive = True
        self.reader = threading.Thread(target=self._read, name="audioml-figures-read", daemon=True)
        self.writer = threading.Thread(target=self._write, name="audioml-figures-write", daemon=True)
        self.reader.start()
        self.writer.start()

    def submit(self, name: str, arguments: dict[str, Any]) -> Future:
        """Queue a drawing; raises (and the caller draws it) when the arguments cannot be sent
        or the worker has ended."""
        with self.lock:
            request_id, self.next_id = self.next_id, self.next_id + 1
        frames = _request_frames(request_id, name, arguments)
        future: Future = Future()
        with self.lock:  # checked and registered together: the reader drains pending when the worker ends
            if not self.alive:
                raise BrokenPipeError("the figure worker has ended")
            self.pending[request_id] = (future, name, arguments)
            self.outbox.put(frames)
        return future

    def _write(self) -> None:
        while (frames := self.outbox.get()) is not None:
            try:
                for frame in frames:
                    _write_frame(self.process.stdin, frame)
                self.process.stdin.flush()
            except (OSError, ValueError):  # the worker ended: the reader draws what is pending
                self.process.kill()
                return
        try:
            self.process.stdin.close()  # the worker draws what it was sent, then ends
        except OSError:
            pass

    def _read(self) -> None:
        stdout = self.process.stdout
        try:
            while (frame := _read_frame(stdout)) is not None:
                answer = json.loads(frame)
                with self.lock:
                    entry = self.pending.pop(int(answer["id"]), None)
                if entry is not None:
                    self.answered += 1
                    entry[0].set_result(answer.get("error") if entry[1] in PLOTS else answer)
        except (ValueError, KeyError, TypeError, OSError) as error:  # not an answer: stop trusting the worker
            log.debug("figure worker answered %r: drawing here from now on", error)
            self.process.kill()
        finally:
            with self.lock:  # the worker ended: what it did not answer is drawn here (wait)
                self.alive = False
                unanswered = list(self.pending.values())
                self.pending.clear()
            for future, name, arguments in unanswered:  # a task's caller runs it itself (run_task)
                future.set_result(_draw_here(name, arguments) if name in PLOTS else {"lost": True})

    def close(self) -> None:
        with self.lock:
            self.alive = False
        self.outbox.put(None)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.reader.join(timeout=60)


def _draw_here(name: str, arguments: dict[str, Any]) -> str | None:
    """Draw in this process; the error's text, or ``None``."""
    try:
        PLOTS[name](**arguments)
    except Exception as error:  # noqa: BLE001 - a figure that fails is reported, the run's numbers stand
        return f"{type(error).__name__}: {error}"
    return None


_worker: _Worker | None = None
_worker_failed = False
_pending: dict[Path, list[tuple[Future, str]]] = {}
_state_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child (DataLoader workers, ``ddp_fork``) has the parent's worker object but
    not its threads: it starts its own when it draws."""
    global _worker, _pending, _state_lock
    _worker, _pending, _state_lock = None, {}, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def start(preload: Sequence[str] = ()) -> bool:
    """Start the worker process now (it imports matplotlib while the caller trains, and runs the
    ``preload()`` of the audioml modules named in ``preload``: what their tasks need); returns
    whether figures will go to it. Called by
    ``TrainingRun`` on rank zero; :func:`draw` starts it too. A worker that ended before
    answering anything is not started again (it cannot start here); one that ended later is
    replaced."""
    global _worker, _worker_failed
    with _state_lock:
        if _worker is not None and _worker.alive:
            return True
        if _worker is not None and not _worker.answered:
            _worker_failed = True
            log.info("figures are drawn in this process (the worker process ended before drawing)")
        if _worker_failed or not worker_enabled():
            return False
        try:
            _worker = _Worker(preload)
        except OSError as error:
            _worker_failed = True
            log.info("figures are drawn in this process (no worker process: %s)", error)
            return False
        atexit.register(_worker.close)
        return True


def draw(plot: Callable[..., Path], *args: Any, **kwargs: Any) -> Path:
    """Start drawing ``plot(*args, **kwargs)`` (one of :data:`PLOTS`) and return the path it
    writes at once; :func:`wait` returns when it is written. Drawn in the calling process when
    no worker runs (then the file exists on return). A figure that fails is logged as a warning
    by :func:`wait`, and the file is absent: the run's numbers do not depend on it."""
    name = plot.__name__
    if PLOTS.get(name) is not plot:
        raise ValueError(f"{name} is not one of the figures the worker draws: {sorted(PLOTS)}")
    arguments = dict(inspect.signature(plot).bind(*args, **kwargs).arguments)
    path = arguments["path"] = Path(arguments["path"]).resolve()  # the worker may not share our cwd later
    future = None
    if start():
        try:
            future = _worker.submit(name, arguments)
        except Exception as error:  # noqa: BLE001 - arguments the wire cannot carry, a worker gone: drawn here
            log.debug("figure %s drawn in this process: %s", path.name, error)
    if future is None:
        future = Future()
        future.set_result(_draw_here(name, arguments))
    with _state_lock:
        _pending.setdefault(path, []).append((future, name))
    return path


def worker_task(function: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``function`` (module level, in audioml, its arguments and result JSON) as a job
    :func:`run_task` may hand to the worker; the worker runs no other function."""
    setattr(function, _TASK_MARK, True)
    return function


def _task_function(name: str) -> Callable[..., Any]:
    """The function ``<module>:<name>`` names: one marked by :func:`worker_task` in an audioml
    module (the only names taken from the wire), else ``LookupError``."""
    import importlib

    module, _, function = name.partition(":")
    found = getattr(importlib.import_module(module), function, None) if module.startswith("audioml.") else None
    if not getattr(found, _TASK_MARK, False):
        raise LookupError(f"{name} is not a task of the worker")
    return found


def run_task(task: Callable[..., Any], arguments: dict[str, Any]) -> Future | None:
    """Start ``task(**arguments)`` (a :func:`worker_task`) in the worker; its future's result is
    the answer ``{"result", "error", "traceback", "logs"}``, or ``{"lost": True}`` when the
    worker ended before answering. ``None`` when no worker runs or the arguments cannot be
    sent: the caller runs the task itself."""
    if not getattr(task, _TASK_MARK, False):
        raise ValueError(f"{task.__qualname__} is not marked as a task of the worker (worker_task)")
    name = f"{task.__module__}:{task.__qualname__}"
    if not start():
        return None
    try:
        return _worker.submit(name, arguments)
    except Exception as error:  # noqa: BLE001 - arguments the wire cannot carry, a worker gone
        log.debug("task %s runs in this process: %s", name, error)
        return None


def stop_worker() -> None:
    """Kill the worker (one that does not answer): its unanswered drawings are drawn here, its
    tasks come back ``{"lost": True}``; the next :func:`start` starts a new one."""
    with _state_lock:
        worker = _worker
    if worker is not None:
        worker.process.kill()
        worker.reader.join(timeout=60)


def wait(paths: Iterable[str | Path] | None = None, timeout: float = 600) -> None:
    """Return when the figures :func:`draw` started for ``paths`` (every one when ``None``) are
    written; a figure that could not be drawn, or not within ``timeout`` seconds, is logged as a
    warning (the run's numbers do not depend on it)."""
    with _state_lock:
        keys = list(_pending) if paths is None else [Path(p).resolve() for p in paths]
        entries = [(key, entry) for key in keys if key in _pending for entry in _pending.pop(key)]
    for path, (future, name) in entries:
        try:
            error = future.result(timeout=timeout)
        except (TimeoutError, FutureTimeout):  # the same class from Python 3.11 on
            error = f"not drawn within {timeout:.0f} s"
        if error:
            log.warning("figure %s (%s) could not be drawn: %s", path, name, error)


# ------------------------------------------------------------------------ the worker side
def _serve(requests: BinaryIO, answers: BinaryIO) -> None:
    """Draw each request from ``requests`` and answer ``{"id", "error"}`` on ``answers``."""
    import matplotlib

    try:  # background work: the run it serves comes first when both want a core
        os.nice(10)
    except OSError:
        pass
    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # noqa: F401 - imported now, not at the first request

    from audioml.logs import quiet_third_party

    quiet_third_party()  # the worker shares the command's terminal: the same lines are left out

    global _preloading
    modules = [m for m in os.environ.get(_PRELOAD_ENV, "").split(",") if m.startswith("audioml.")]
    if modules:  # the tasks' modules (MLflow) load while figures are drawn
        import importlib

        def preload() -> None:
            for module in modules:
                getattr(importlib.import_module(module), "preload", lambda: None)()

        _preloading = threading.Thread(target=preload, name="audioml-worker-preload", daemon=True)
        _preloading.start()

    while (header := _read_frame(requests)) is not None:
        request = json.loads(header)
        arrays = []
        for _ in range(int(request["arrays"])):
            payload = _read_frame(requests)
            if payload is None:
                return
            arrays.append(np.load(io.BytesIO(payload), allow_pickle=False))
        name = request.get("plot")
        if ":" in str(name):  # <module>:<function> of a worker_task
            answer = _run_task_here(name, _decode(request["arguments"], arrays))
        elif name not in PLOTS:
            answer = {"error": f"unknown figure {name!r}"}
        else:
            answer = {"error": _draw_here(name, _decode(request["arguments"], arrays))}
        _write_frame(answers, json.dumps({"id": request["id"], **answer}, default=str).encode())
        answers.flush()


_preloading: threading.Thread | None = None


class _Collected(logging.Handler):
    """The log records of one task in the worker, sent back with its answer."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, record.name, record.getMessage()))


def _run_task_here(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Run task ``name`` in the worker: ``{"result", "error", "traceback", "logs"}``."""
    import traceback

    if _preloading is not None:  # a task may change the environment: no import runs meanwhile
        _preloading.join()
    handler = _Collected()
    root = logging.getLogger()
    root.addHandler(handler)
    level, root.level = root.level, logging.INFO
    try:
        result = _task_function(name)(**arguments)
        answer = {"result": result, "error": None}
    except Exception as error:  # noqa: BLE001 - the caller decides what a failed task means
        answer = {"result": None, "error": f"{type(error).__name__}: {error}",
                  "traceback": "".join(traceback.format_exception(type(error), error, error.__traceback__))}
    finally:
        root.removeHandler(handler)
        root.level = level
    # third-party chatter below a warning stays in the worker
    answer["logs"] = [line for line in handler.lines if line[1].startswith("audioml") or line[0] >= logging.WARNING]
    return answer


if __name__ == "__main__":
    import signal

    # Ctrl-C and a SIGTERM to the job's process group are for the run: the worker completes what
    # it was sent and ends when the run closes its stdin (or dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Answers go to the original stdout; anything a library prints goes to stderr instead of
    # into the answers.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    _serve(sys.stdin.buffer, answers)
