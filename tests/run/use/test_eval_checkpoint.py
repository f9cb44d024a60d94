"""``audioml-eval source=<run dir>`` scores the checkpoint the run's test scored and reproduces its
``metrics.json``; every output names the checkpoint file; another file of the run (``last.ckpt``)
is said to differ. Real training and eval processes on synthetic data."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers.runners import find_run_dirs, read_metrics, run_entry_point

from audioml.run.rundir import RunDir
from audioml.run.use.inference import evaluated_checkpoint

QUIET = ["trainer.enable_progress_bar=false", "data.num_workers=0", "evaluation.bootstrap_samples=0"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    output = tmp_path_factory.mktemp("eval")
    run_entry_point("audioml.train", "data=synthetic", "model=cnn", "trainer.max_epochs=3", "logger.log_model=false",
                    f"paths.output_dir={output}", *QUIET)
    (run_dir,) = find_run_dirs(output)
    return output, run_dir


def test_eval_of_a_run_directory_reproduces_its_test_metrics_and_names_the_checkpoint(run, tmp_path):
    output, run_dir = run
    tested = RunDir(run_dir).tested_checkpoint()
    assert tested is not None and tested.parent == run_dir / "checkpoints" and tested.name.startswith("best-")
    process = run_entry_point("audioml.evaluate", f"source={run_dir}", f"paths.output_dir={output}",
                              f"hydra.run.dir={tmp_path}", "trainer.enable_progress_bar=false",
                              "evaluation.bootstrap_samples=0")
    printed = process.stdout.splitlines()  # the table: the checkpoint, what it is, then the metrics
    at = printed.index(f"checkpoint {tested.resolve()}")
    assert "the numbers of its metrics.json" in printed[at + 1] and printed[at + 2].startswith("baseline/")
    trained, evaluated = read_metrics(run_dir), read_metrics(tmp_path)
    for name in ("test/acc", "test/macro_f1", "test/loss", "test/recall_class_0"):
        assert evaluated[name] == pytest.approx(trained[name], abs=1e-6), name
    report = json.loads((tmp_path / "evaluation.json").read_text())
    assert report["checkpoint"] == str(tested.resolve()) and report["split"] == "test"


def test_another_checkpoint_of_the_run_is_said_to_differ(run, tmp_path):
    _, run_dir = run
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint, what = evaluated_checkpoint(last)
    assert checkpoint == last and what.startswith("not the checkpoint the test of run")
    assert f"({RunDir(run_dir).tested_checkpoint().name}, whose numbers are in its metrics.json)" in what
    same, what = evaluated_checkpoint(RunDir(run_dir).tested_checkpoint())
    assert "the numbers of its metrics.json" in what and not what.startswith("not")
    # a copy whose tested checkpoint was rewritten afterwards: said, and not taken for the tested one
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    (copy / json.loads((copy / RunDir.TESTED).read_text())["checkpoint"]).write_bytes(b"other")
    assert RunDir(copy).tested_checkpoint() is None
    assert "gone or was rewritten" in evaluated_checkpoint(copy, download_dir=tmp_path / "dl")[1]
