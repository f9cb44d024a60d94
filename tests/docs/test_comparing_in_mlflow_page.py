"""``docs/guide/comparing-in-mlflow.md`` runs as written: its commands are audioml's (fast), and
with ``-m slow`` every runnable block runs in order in a fresh folder, after which what the page
says the MLflow UI shows is read back through MLflow's API."""

from __future__ import annotations

import json

import pytest
import tomllib
from helpers.docs import PAGES, run_blocks, runnable_blocks
from helpers.runners import REPO
from mlflow import MlflowClient

PAGE = PAGES / "guide" / "comparing-in-mlflow.md"


def test_the_page_is_linked_and_its_commands_are_audioml_entry_points():
    assert "docs/guide/comparing-in-mlflow.md" in (REPO / "README.md").read_text()
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    blocks = runnable_blocks(PAGE)
    assert len(blocks) == 2 and all(block.slow for block in blocks)
    for block in blocks:
        for line in block.code.strip().splitlines():
            assert line.split()[0] in scripts, line


@pytest.mark.slow  # a 2 x 2 sweep, an 8-pipeline grid and an evaluation (about 5 minutes on 2 cores)
def test_the_page_runs_and_the_ui_gets_what_it_describes(tmp_path):
    output = run_blocks(runnable_blocks(PAGE), tmp_path)
    assert "runs?workflowType=machine_learning&viewStateShareKey=audioml" in output
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("synthetic")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    names = {run.info.run_name for run in runs}
    assert {"sweep lr x seed (4 jobs)", "synthetic mir svm grid"} <= names
    assert any(name.startswith("eval cnn max_epochs=4 lr=") and name.endswith(" test") for name in names)
    datasets = {(run.info.run_name, d.dataset.name) for run in runs for d in run.inputs.dataset_inputs}
    assert {name for _, name in datasets} == {"synthetic", "synthetic mir features", "synthetic test"}
    view = json.loads(json.loads(experiment.tags["mlflow.sharedViewState.audioml"])["state"])
    assert view["selectedColumns"][:3] == ["attributes.`Dataset`", "metrics.`val/best_macro_f1`",
                                           "metrics.`test/macro_f1`"]
    assert {"params.`model.optimizer.lr`", "params.`seed`", "params.`estimator`"} <= set(view["selectedColumns"])
    assert "sweep " in output and "4 jobs, 4 finished" in output  # audioml-compare --status
