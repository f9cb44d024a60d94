"""The figure worker (audioml.run.figures.drawing): a figure drawn by the worker process is the figure drawn
in the calling process, pixel for pixel; failures are warnings, not crashed runs; a dead or
disabled worker falls back to drawing in the caller."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from audioml.run.figures import drawing as figures

CLASSES = ["belly_pain", "burping", "discomfort", "hungry", "a rather long class name"]


def _arguments(rng: np.random.Generator) -> dict[str, tuple]:
    history = [{"epoch": e, "train/loss": 1 / (e + 1), "val/loss": 1.2 / (e + 1), "train/macro_f1": e / 10,
                "val/macro_f1": float("nan") if e == 0 else e / 12} for e in range(6)]
    return {"plot_confusion_matrix": (rng.integers(0, 20, (5, 5)), CLASSES),
            "plot_learning_curves": (history,),
            "plot_embedding_pca": (rng.normal(size=(40, 64)), rng.normal(size=(40, 5)), rng.integers(0, 5, 40),
                                   CLASSES),
            "plot_reliability_diagram": _reliability(rng),
            "plot_layer_weights": (list(range(13)), list(rng.dirichlet(np.ones(13))))}


def _reliability(rng: np.random.Generator) -> tuple:
    from audioml.stats import reliability_bins

    probabilities = rng.dirichlet(np.full(5, 0.3), size=200)  # empty bins (NaN) among them
    bins = reliability_bins(probabilities, rng.integers(0, 5, 200))
    assert np.isnan(bins.accuracy).any()
    return bins.edges, bins.counts, bins.confidence, bins.accuracy


def test_worker_draws_the_same_pixels_as_the_caller(tmp_path: Path, fresh_worker) -> None:
    assert figures.start()
    process = figures._worker.process
    for name, arguments in _arguments(np.random.default_rng(0)).items():
        plot = figures.PLOTS[name]
        here = plot(*arguments, path=tmp_path / f"{name}-here.png")
        there = figures.draw(plot, *arguments, tmp_path / f"{name}-worker.png")
        assert there == (tmp_path / f"{name}-worker.png").resolve()
        figures.wait([there])
        assert np.array_equal(imread(here), imread(there)), name
    assert process.poll() is None  # drawn by the worker, which is still there for the next run


def test_a_failing_figure_is_a_warning_and_other_figures_are_drawn(tmp_path: Path, fresh_worker, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="audioml.run.figures.drawing")
    broken = figures.draw(figures.plot_confusion_matrix, np.zeros((2, 3, 4)), ["a", "b"], tmp_path / "broken.png")
    fine = figures.draw(figures.plot_confusion_matrix, np.eye(2, dtype=int), ["a", "b"], tmp_path / "fine.png")
    figures.wait()
    assert fine.is_file() and not broken.exists()
    assert "broken.png" in caplog.text and "could not be drawn" in caplog.text


def test_a_dead_worker_leaves_the_figures_to_the_caller(tmp_path: Path, fresh_worker) -> None:
    first = figures.draw(figures.plot_confusion_matrix, np.eye(2, dtype=int), ["a", "b"], tmp_path / "first.png")
    figures.wait([first])  # answered by the worker
    figures._worker.process.kill()
    figures._worker.process.wait()
    figures._worker.reader.join(timeout=10)
    path = figures.draw(figures.plot_confusion_matrix, np.eye(3, dtype=int), ["a", "b", "c"], tmp_path / "cm.png")
    figures.wait([path])
    assert first.is_file() and path.is_file()
    assert figures.start()  # it had drawn before: replaced for the next figures
    figures._worker.close()
    figures._worker = None
    assert figures.start()
    figures._worker.process.kill()  # a new one that ends before drawing anything: not started again
    figures._worker.reader.join(timeout=10)
    assert not figures.start()
    late = figures.draw(figures.plot_confusion_matrix, np.eye(2, dtype=int), ["a", "b"], tmp_path / "late.png")
    assert late.is_file()


def test_the_same_path_drawn_twice_is_waited_for_twice(tmp_path: Path, fresh_worker) -> None:
    path, six = tmp_path / "cm.png", [f"class {i}" for i in range(6)]
    figures.draw(figures.plot_confusion_matrix, np.eye(2, dtype=int), ["a", "b"], path)
    figures.draw(figures.plot_confusion_matrix, np.eye(6, dtype=int), six, path)
    figures.wait([path])
    assert not figures._pending.get(path.resolve())
    expected = figures.plot_confusion_matrix(np.eye(6, dtype=int), six, tmp_path / "here.png")
    assert np.array_equal(imread(path), imread(expected))  # the second drawing, written after the first


def test_turned_off_the_figure_is_drawn_before_draw_returns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(figures.WORKER_ENV, "0")
    monkeypatch.setattr(figures, "_worker", None)
    assert not figures.worker_enabled()
    path = figures.draw(figures.plot_learning_curves, [{"epoch": 0, "train/loss": 1.0}], tmp_path / "lc.png")
    assert path.is_file()
    figures.wait([path])


def test_only_the_registered_figures_go_to_the_worker(tmp_path: Path) -> None:
    def plot_something(path):
        Path(path).write_text("x")

    with pytest.raises(ValueError, match="not one of the figures"):
        figures.draw(plot_something, tmp_path / "x.png")
    with pytest.raises(TypeError):
        figures.draw(figures.plot_confusion_matrix, np.eye(2), ["a", "b"])  # no path


def test_the_wire_carries_arrays_without_pickle() -> None:
    arrays: list[np.ndarray] = []
    value = {"m": np.arange(6).reshape(2, 3), "rows": [{"epoch": np.int64(1), "x": 0.5}], "p": Path("/a/b.png")}
    encoded = figures._encode(value, arrays)
    assert figures._decode(encoded, arrays)["rows"] == [{"epoch": 1, "x": 0.5}]
    assert encoded["p"] == "/a/b.png" and len(arrays) == 1
    with pytest.raises(TypeError, match="cannot go to the worker"):
        figures._encode({"bad": object()}, [])


def test_learning_curves_of_a_fit_in_other_processes_are_found_where_rank_zero_writes_them(tmp_path: Path) -> None:
    """``trainer.strategy=ddp_spawn``: this process's copy of the callback saw no fit end, so the
    run takes the plot and table rank zero wrote (``-m slow`` trains such a run: test_ddp.py)."""
    from types import SimpleNamespace

    from audioml.run.figures.callbacks import LearningCurves

    trainer = SimpleNamespace(default_root_dir=str(tmp_path))
    callback = LearningCurves()
    assert callback.written(trainer) == []  # nothing drawn anywhere
    for name in ("learning_curves.png", "learning_curves.csv"):
        (tmp_path / name).write_bytes(b"drawn by rank zero")
    assert callback.written(trainer) == [tmp_path / "learning_curves.png", tmp_path / "learning_curves.csv"]
    callback.files = [tmp_path / "mine.png"]  # the fit ended in this process: its own files
    assert callback.written(trainer) == [tmp_path / "mine.png"]
