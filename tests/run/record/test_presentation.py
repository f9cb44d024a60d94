"""What the MLflow UI shows of audioml's runs, read back through MLflow's API on a real store: the
experiment kind, the names of sweep and grid parents, the data as a dataset input, the saved view
with its columns and charts (``audioml.run.record.presentation``)."""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from audioml.data.synthetic import SyntheticDataModule
from audioml.run.fit.compose import data_tags
from audioml.run.record import presentation, tracking
from audioml.run.record.sweep import find_or_create_sweep_run

VIEW_TAG = f"mlflow.sharedViewState.{presentation.VIEW_KEY}"


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking.prepare_store(uri)
    return uri, MlflowClient(uri)


def _view_state(client, experiment_id: str) -> tuple[dict, dict]:
    envelope = json.loads(client.get_experiment(experiment_id).tags[VIEW_TAG])
    return envelope, json.loads(envelope["state"])


def test_experiments_open_as_model_training_and_a_users_kind_is_kept(store):
    uri, client = store
    created = tracking.get_or_create_experiment(uri, "cry")
    assert client.get_experiment(created).tags[presentation.EXPERIMENT_KIND_TAG] == "custom_model_development"
    earlier = client.create_experiment("made-before")  # an audioml experiment from before: marked when used
    assert presentation.EXPERIMENT_KIND_TAG not in client.get_experiment(earlier).tags
    assert tracking.get_or_create_experiment(uri, "made-before") == earlier
    assert client.get_experiment(earlier).tags[presentation.EXPERIMENT_KIND_TAG] == "custom_model_development"
    chosen = client.create_experiment("genai-by-choice", tags={presentation.EXPERIMENT_KIND_TAG: "genai_development"})
    tracking.get_or_create_experiment(uri, "genai-by-choice")
    assert client.get_experiment(chosen).tags[presentation.EXPERIMENT_KIND_TAG] == "genai_development"


def test_sweep_search_and_grid_parents_are_named_after_what_they_vary():
    jobs = [[f"model.optimizer.lr={lr}", f"seed={seed}", "model=cnn"] for lr in (1e-3, 3e-3) for seed in (1, 2, 3)]
    assert presentation.sweep_run_name(["model.optimizer.lr=1e-3,3e-3", "seed=1,2,3", "model=cnn"], jobs) == \
        "sweep lr x seed (6 jobs)"
    # without the plan (a sweep Hydra expands itself): the keys given several values
    assert presentation.sweep_run_name(["loss=ce,weighted_ce", "seed=range(1,4)", "data=synthetic"]) == \
        "sweep loss x seed"
    # two keys ending alike keep their whole names
    assert presentation.sweep_run_name(["data.seed=1,2", "evaluation.seed=3,4"]) == "sweep data.seed x evaluation.seed"
    assert presentation.search_run_name("synthetic-cnn-0123456789ab", 20) == "search synthetic-cnn-0123456789ab (20 trials)"
    assert presentation.grid_run_name("synthetic", "mir", "classification") == "synthetic mir classification grid"
    assert presentation.grid_run_name(None, "None", "svm") == "svm grid"


def test_a_sweep_parent_keeps_its_key_and_an_old_name_is_replaced(store):
    uri, client = store
    experiment = tracking.get_or_create_experiment(uri, "cry")
    parent = find_or_create_sweep_run(uri, experiment, "0123456789ab", ["model.optimizer.lr=1e-3,3e-3", "seed=1,2"],
                                      "sweep lr x seed (4 jobs)")
    run = client.get_run(parent)
    assert run.info.run_name == "sweep lr x seed (4 jobs)" and run.data.tags["audioml.sweep_key"] == "0123456789ab"
    client.set_tag(parent, "mlflow.runName", "sweep-0123456789ab")  # as audioml named parents before
    assert find_or_create_sweep_run(uri, experiment, "0123456789ab", ["model.optimizer.lr=1e-3,3e-3", "seed=1,2"],
                                    "sweep lr x seed (4 jobs)") == parent
    assert client.get_run(parent).info.run_name == "sweep lr x seed (4 jobs)"


def test_the_data_is_the_runs_dataset_input(store, tmp_path):
    uri, client = store
    datamodule = SyntheticDataModule(root=tmp_path / "synthetic", clips_per_class=6, num_groups=6, seconds=0.25,
                                     sample_rate=8000, batch_size=4, num_workers=0, seed=3)
    datamodule.prepare_data()
    datamodule.setup("fit")
    fingerprint = data_tags(datamodule)["data.fingerprint"]
    experiment = tracking.get_or_create_experiment(uri, "synthetic")
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]
    data = presentation.data_input("synthetic", fingerprint, datamodule)
    for run_id in runs:
        presentation.log_data_input(client, run_id, data)
    presentation.log_data_input(client, runs[0], data)  # a continued run logs it again: nothing added
    inputs = client.get_run(runs[0]).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset, tags = inputs[0].dataset, {t.key: t.value for t in inputs[0].tags}
    assert (dataset.name, dataset.digest, dataset.source_type) == ("synthetic", fingerprint, "local")
    assert json.loads(dataset.source) == {"uri": str(datamodule.root)}
    profile = json.loads(dataset.profile)
    assert profile["clips"] == 18 and profile["classes"] == ["class_0", "class_1", "class_2"]
    assert {c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]} >= {"path", "group"}
    assert tags["mlflow.data.context"] == "training"
    sizes = {split: int(tags[f"audioml.split.{split}"]) for split in ("train", "val", "test")}
    assert sizes == {split: len(datamodule.split_indices[split]) for split in sizes} and sum(sizes.values()) == 18
    # both runs link to one dataset of the experiment
    other = client.get_run(runs[1]).inputs.dataset_inputs[0].dataset
    assert (other.name, other.digest) == (dataset.name, dataset.digest)


def test_the_view_holds_the_scores_first_and_grows_with_the_runs(store):
    uri, client = store
    experiment = tracking.get_or_create_experiment(uri, "synthetic")
    metrics = ["val/best_macro_f1", "val/macro_f1", "test/macro_f1", "test/macro_f1_ci_low", "test/acc",
               "test/f1_class_0", "baseline/macro_f1", "lr-Adam", "test/balanced_acc"]
    choices = {"data": "synthetic", "model": "cnn", "loss": "ce", "trainer": "default", "paths": "default"}
    params = presentation.setting_keys(["model.optimizer.lr=0.003", "seed=2", "loss=ce", "paths.output_dir=/o",
                                        "logger.run_name=x", "+trainer.limit_val_batches=2"], choices)
    assert params == ["model.optimizer.lr", "seed", "trainer.limit_val_batches"]
    columns = presentation.view_columns(metrics, "val/macro_f1", choices, params)
    assert columns == ["attributes.`Dataset`", "metrics.`val/best_macro_f1`", "metrics.`test/macro_f1`",
                       "metrics.`baseline/macro_f1`", "metrics.`test/acc`", "metrics.`test/balanced_acc`",
                       "params.`model.optimizer.lr`", "params.`seed`", "params.`trainer.limit_val_batches`",
                       "tags.`audioml.choice.data`", "tags.`audioml.choice.model`", "tags.`audioml.choice.loss`"]
    assert presentation.update_view(client, experiment, columns, "val/macro_f1")
    assert not presentation.update_view(client, experiment, columns, "val/macro_f1")  # nothing new: not rewritten
    envelope, state = _view_state(client, experiment)
    assert envelope["name"] == presentation.VIEW_NAME and envelope["createdAt"] <= envelope["updatedAt"]
    assert state["selectedColumns"] == columns
    assert state["columnOrder"][:3] == ["attributes.`Run Name`", "runDateAndNestInfo", "attributes.`Dataset`"]
    charted = [c.get("metricKey") for c in state["compareRunCharts"]]
    assert charted[:3] == ["val/best_macro_f1", "test/macro_f1", "baseline/macro_f1"] and "val/macro_f1" in charted
    assert {c["metricSectionId"] for c in state["compareRunCharts"]} == {state["compareRunSections"][0]["uuid"]}
    # a grid's run adds its own columns, kept in their kind's place
    grid = presentation.view_columns(["val/macro_f1", "test/macro_f1"], "val/macro_f1",
                                     {"data": "synthetic", "grid": "classification"}, ["scaler", "estimator"])
    assert presentation.update_view(client, experiment, grid, "val/macro_f1")
    selected = _view_state(client, experiment)[1]["selectedColumns"]
    assert selected[:3] == ["attributes.`Dataset`", "metrics.`val/best_macro_f1`", "metrics.`test/macro_f1`"]
    assert selected.index("metrics.`val/macro_f1`") < selected.index("params.`scaler`") < \
        selected.index("tags.`audioml.choice.grid`")
    assert presentation.view_link(uri, experiment) == (f"http://127.0.0.1:5000/#/experiments/{experiment}/runs?"
                                                       "workflowType=machine_learning&viewStateShareKey=audioml")
    assert presentation.view_link("http://tracking:5000/", "7").startswith("http://tracking:5000/#/experiments/7/")


def test_a_view_saved_over_in_the_ui_is_left_alone(store):
    uri, client = store
    experiment = tracking.get_or_create_experiment(uri, "synthetic")
    users = json.dumps({"name": "mine", "createdAt": 1, "updatedAt": 2,
                        "state": json.dumps({"selectedColumns": ["metrics.`test/acc`"]})})
    client.set_experiment_tag(experiment, VIEW_TAG, users)
    assert not presentation.update_view(client, experiment, ["metrics.`test/macro_f1`"], "val/macro_f1")
    compressed = json.dumps({"name": "mine", "createdAt": 1, "updatedAt": 2, "state": "H4sIAAAA"})
    client.set_experiment_tag(experiment, VIEW_TAG, compressed)
    assert not presentation.update_view(client, experiment, ["metrics.`test/macro_f1`"], "val/macro_f1")
    assert client.get_experiment(experiment).tags[VIEW_TAG] == compressed
