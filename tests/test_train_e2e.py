"""End to end through the real entry points: train -> files + MLflow -> eval -> predict."""

import json

import mlflow
import pytest
import yaml
from helpers.runners import SHARED, find_run_dirs, read_metrics, run_entry_point

FAST = ["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "data.num_workers=0"]


def _mlflow_client(output_dir):
    uri = f"sqlite:///{output_dir / 'mlflow' / 'mlflow.db'}"
    return uri, mlflow.tracking.MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    output = tmp_path_factory.mktemp("train")
    run_entry_point("audioml.train", "data=synthetic", "model=cnn", f"paths.output_dir={output}", *FAST)
    (run_dir,) = find_run_dirs(output)
    return output, run_dir


def test_run_directory_holds_metrics_config_and_checkpoints(trained):
    output, run_dir = trained
    metrics = read_metrics(run_dir)
    assert {"test/acc", "test/macro_f1", "test/loss", "test/recall_class_0"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("test/acc", "test/macro_f1"))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["_target_"].endswith("SyntheticDataModule") and config["seed"] == 42
    assert "${" not in (run_dir / "config.yaml").read_text()  # resolved
    checkpoints = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    assert "last.ckpt" in checkpoints and any(name.startswith("best-") for name in checkpoints)
    assert (run_dir / "confusion_matrix.png").stat().st_size > 1000
    assert run_dir.name.startswith("synthetic-cnn-")


def test_run_is_recorded_in_mlflow(trained):
    output, run_dir = trained
    uri, client = _mlflow_client(output)
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=["synthetic"], output_format="list")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_id == (run_dir / "mlflow_run_id").read_text().strip()
    assert run.data.params["model.backbone.channels"] == "[32, 64]"
    assert run.data.params["data._target_"] == "audioml.data.synthetic.SyntheticDataModule"
    metrics = read_metrics(run_dir)
    assert run.data.metrics["test/macro_f1"] == pytest.approx(metrics["test/macro_f1"])
    history = client.get_metric_history(run.info.run_id, "val/loss")
    assert len(history) == 2  # one value per epoch
    for key in ("train/loss", "val/loss"):  # plotted against the epoch
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1], key
    # the name says what the run is; locations are tags, not params the compare view would plot
    assert run.info.run_name == "cnn max_epochs=2"
    assert not [k for k in run.data.params if k.startswith("paths.") or k.endswith(".dirpath")]
    assert run.data.tags["path.paths.run_dir"] == str(run_dir)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "metrics.json", "confusion_matrix.png", "per_class_report.csv"} <= artifacts


def test_eval_rebuilds_the_checkpoint_and_reproduces_test_metrics(trained, tmp_path):
    output, run_dir = trained
    (best,) = (run_dir / "checkpoints").glob("best-*.ckpt")
    run_entry_point("audioml.evaluate", f"ckpt_path={best}", f"paths.output_dir={output}",
                    "trainer.enable_progress_bar=false", cwd=tmp_path)
    (eval_metrics_file,) = (output / "eval").glob("*/metrics.json")
    reproduced = json.loads(eval_metrics_file.read_text())
    original = read_metrics(run_dir)
    for name in ("test/acc", "test/macro_f1", "test/loss"):
        assert reproduced[name] == pytest.approx(original[name], abs=1e-5), name


def test_predict_scores_files_and_reports_undecodable_ones(trained, tmp_path):
    output, run_dir = trained
    clips = sorted((output / "cache").glob("synthetic-*/class_1/*.wav"))[:3]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    out_csv = tmp_path / "preds.csv"
    process = run_entry_point("audioml.predict", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                              f"inputs=[{','.join(map(str, clips))},{broken}]", f"output={out_csv}",
                              f"paths.output_dir={output}")
    import pandas as pd

    predictions = pd.read_csv(out_csv)
    assert len(predictions) == 3
    probabilities = predictions[["p_class_0", "p_class_1", "p_class_2"]].to_numpy()
    assert abs(probabilities.sum(axis=1) - 1).max() < 1e-4
    skipped = pd.read_csv(out_csv.with_suffix(".skipped.csv"))
    assert skipped.path.tolist() == [str(broken)]
    assert "skipped 1 of 4" in process.stderr + process.stdout


def test_missing_dataset_fails_with_the_expected_path(tmp_path):
    process = run_entry_point("audioml.train", "data=donateacry", f"paths.data_dir={tmp_path}/none",
                              f"paths.output_dir={tmp_path}", check=False)
    assert process.returncode != 0
    assert f"{tmp_path}/none/donateacry-corpus/donateacry_corpus_cleaned_and_updated_data does not exist" \
        in process.stderr


@pytest.mark.slow
def test_real_donateacry_three_epochs(shared_data, tmp_path):
    run_entry_point("audioml.train", "data=donateacry", "model=cnn", "trainer.max_epochs=3",
                    f"paths.output_dir={tmp_path}", "trainer.enable_progress_bar=false",
                    env={"AUDIOML_DATA_DIR": str(shared_data)})
    (run_dir,) = find_run_dirs(tmp_path)
    metrics = read_metrics(run_dir)
    assert {"test/acc", "test/macro_f1"} <= set(metrics)
    uri, client = _mlflow_client(tmp_path)
    mlflow.set_tracking_uri(uri)
    (run,) = mlflow.search_runs(experiment_names=["donateacry"], output_format="list")
    assert run.data.params["data.labels"] == "multiclass"
    assert len(client.get_metric_history(run.info.run_id, "val/macro_f1")) == 3


def test_a_run_prints_its_directory_and_mlflow_run_at_start_and_end(trained):
    output, run_dir = trained
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    lines = (run_dir / "train.log").read_text()
    uri = f"sqlite:///{output / 'mlflow' / 'mlflow.db'}"
    assert lines.count(f"run directory {run_dir}; MLflow run {run_id} in {uri}") == 1  # at the start
    end = lines[lines.index("finished in "):]  # the summary at the end says where to look
    assert f"run directory {run_dir} (metrics.json" in end and f"MLflow run {run_id}: mlflow ui --backend-store-uri {uri}" in end


@pytest.mark.slow  # the synthetic quick start to 10 epochs (the README's quick start has its own slow test)
def test_the_readme_quick_start_learns(tmp_path):
    """``audioml-train data=synthetic model=cnn trainer.max_epochs=10`` (README quick start) ends
    well above the majority baseline."""
    run_entry_point("audioml.train", "data=synthetic", "model=cnn", "trainer.max_epochs=10",
                    "trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path}")
    metrics = read_metrics(find_run_dirs(tmp_path)[0])
    assert metrics["test/macro_f1"] > metrics["baseline/macro_f1"] + 0.2


@pytest.mark.slow  # the README's first command on the real corpus (about a minute on 2 cores)
@pytest.mark.skipif(not (SHARED / "data" / "donateacry-corpus").is_dir()
                    or not (SHARED / "weights" / "efficientat-mn04").is_dir(), reason="needs ../shared (data, weights)")
def test_the_quickstart_experiment_learns_more_than_the_majority_baseline(tmp_path):
    """``audioml-train experiment=quickstart`` (README): hungry vs not on donateacry, frozen mn04."""
    env = {"AUDIOML_DATA_DIR": str(SHARED / "data"), "AUDIOML_WEIGHTS_DIR": str(SHARED / "weights" / "efficientat-mn04")}
    run_entry_point("audioml.train", "experiment=quickstart", "trainer.enable_progress_bar=false",
                    f"paths.output_dir={tmp_path}", env=env)
    metrics = read_metrics(find_run_dirs(tmp_path)[0])
    assert metrics["test/macro_f1"] > metrics["baseline/macro_f1"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_crash_after_the_run_opened_leaves_it_failed_not_running(tmp_path):
    process = run_entry_point("audioml.train", "data=synthetic", "model=cnn", "model.optimizer.lr=nan", *FAST,
                              f"paths.output_dir={tmp_path}", check=False, env={"HYDRA_FULL_ERROR": "0"})
    assert process.returncode == 1 and "Invalid learning rate" in process.stderr
    assert "Traceback (most recent call last)" in process.stderr  # not a user's mistake: a bug shows its trace
    _, client = _mlflow_client(tmp_path)
    (run,) = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["audioml.error"].startswith("ValueError: Invalid learning rate: nan")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="trainer=ddp is valid where there is a GPU")
def test_a_trainer_that_cannot_run_here_is_refused_before_any_run_opens(tmp_path):
    process = run_entry_point("audioml.train", "data=synthetic", "model=cnn", "trainer=ddp", *FAST,
                              f"paths.output_dir={tmp_path}", check=False)
    assert process.returncode != 0 and "trainer=ddp_cpu" in process.stderr
    assert not (tmp_path / "mlflow").exists() and not (tmp_path / "cache").exists()  # nothing opened or decoded
