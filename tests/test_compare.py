"""``audioml-compare`` on a real MLflow store: experiment and sweep listings, sorting, CSV."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric

from audioml import compare
from audioml.run.record import tracking
from audioml.run.record.sweep import find_or_create_sweep_run


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory):
    """``<output>/mlflow/mlflow.db`` with a 3-job sweep and one run outside it."""
    output = tmp_path_factory.mktemp("compare")
    uri = f"sqlite:///{output / 'mlflow' / 'mlflow.db'}"
    (output / "mlflow").mkdir()
    tracking.prepare_store(uri)
    client = MlflowClient(uri)
    experiment = tracking.get_or_create_experiment(uri, "cry")
    parent = find_or_create_sweep_run(uri, experiment, "abc123abc123", ["model=cnn,cnn_deep"])
    jobs = [("cnn", "ce", 0.61), ("cnn_deep", "ce", 0.72), ("cnn", "weighted_ce", 0.55)]
    for model, loss, f1 in jobs:
        run = client.create_run(experiment, run_name=f"cry-{model}-{loss}", tags={
            "mlflow.parentRunId": parent, "audioml.sweep_key": "abc123abc123",  # as real jobs carry it
            "audioml.choice.model": model, "audioml.choice.loss": loss,
            "audioml.choice.data": "donateacry"})
        tracking.log_params(client, run.info.run_id, {"model.backbone.dense": "128", "seed": "42",
                                                       "paths.run_dir": f"/runs/{model}-{loss}",
                                                       "loss.weighting": str(loss == "weighted_ce")})
        for name, value in {"test/macro_f1": f1, "test/acc": f1 + 0.1, "test/f1_hungry": 0.9,
                            "test/macro_f1_ci_low": f1 - 0.1, "val/best_macro_f1": f1 - 0.05}.items():
            client.log_metric(run.info.run_id, name, value)
        tracking.set_status(client, run.info.run_id, "FINISHED")
    lone = client.create_run(experiment, run_name="cry-lone", tags={
        "audioml.choice.model": "ast", "audioml.choice.loss": "ce", "audioml.choice.data": "donateacry"})
    tracking.log_params(client, lone.info.run_id, {"model.backbone.dense": "128", "seed": "42",
                                                    "paths.run_dir": "/runs/lone", "loss.weighting": "False"})
    client.log_metric(lone.info.run_id, "test/macro_f1", 0.8)  # still RUNNING: listed with its status
    return output, parent


def test_experiment_runs_side_by_side_sorted_by_a_metric(output_dir, capsys, tmp_path):
    output, _ = output_dir
    csv = tmp_path / "out" / "compare.csv"
    assert compare.main(["--experiment", "cry", "--sort", "test/macro_f1", "--csv", str(csv),
                         "--output-dir", str(output)]) == 0
    table = pd.read_csv(csv)
    assert table["run_name"].tolist() == ["cry-lone", "cry-cnn_deep-ce", "cry-cnn-ce", "cry-cnn-weighted_ce"]
    assert {"model", "loss", "loss.weighting", "test/macro_f1", "test/acc", "val/best_macro_f1", "run_id"} <= set(table)
    # same-for-all params, file locations, per-class values and confidence bounds are left out
    assert not {"seed", "model.backbone.dense", "paths.run_dir", "test/f1_hungry", "test/macro_f1_ci_low",
                "data"} & set(table)
    printed = capsys.readouterr().out
    assert "cry-cnn_deep-ce" in printed and "4 runs written" in printed
    assert len(table["run_id"][0]) == 32 and table["run_id"][0][:8] in printed


def test_sweep_children_by_parent_id_or_sweep_key(output_dir, tmp_path):
    output, parent = output_dir
    for sweep in (parent, "abc123abc123"):
        csv = tmp_path / f"{sweep}.csv"
        compare.main(["--sweep", sweep, "--sort", "test/macro_f1", "--ascending", "--csv", str(csv),
                      "--metrics", "test/*", "--output-dir", str(output)])
        table = pd.read_csv(csv)
        assert table["run_name"].tolist() == ["cry-cnn-weighted_ce", "cry-cnn-ce", "cry-cnn_deep-ce"]
        assert "test/f1_hungry" in table  # asked for with --metrics


def test_errors_name_what_is_missing(output_dir, tmp_path, capsys):
    output, _ = output_dir
    for argv, message in ((["--experiment", "nope"], "no MLflow experiment 'nope'.*cry"),
                          (["--experiment", "cry", "--sort", "test/nothing"], "no such metric")):
        assert compare.main([*argv, "--output-dir", str(output)]) == 2
        assert re.search(message, capsys.readouterr().err)
    assert compare.main(["--experiment", "cry", "--output-dir", str(tmp_path)]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    # the library raises; only the entry point turns it into an exit status
    with pytest.raises(LookupError, match="no MLflow experiment 'nope'"):
        compare.collect_runs(MlflowClient(f"sqlite:///{output / 'mlflow' / 'mlflow.db'}"), ["nope"])


def test_console_script_runs_the_comparison(output_dir):
    output, _ = output_dir
    script = Path(sys.executable).with_name("audioml-compare")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "audioml.compare"]
    process = subprocess.run([*command, "--experiment", "cry", "--sort", "test/acc", "--output-dir", str(output)],
                             capture_output=True, text=True)
    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    assert lines[0].split()[:2] == ["run_name", "status"] and lines[1].split()[0] == "cry-cnn_deep-ce"


def test_printed_table_fits_the_terminal_and_the_csv_keeps_everything(output_dir, tmp_path, capsys, monkeypatch):
    output, parent = output_dir
    monkeypatch.setenv("COLUMNS", "120")
    csv = tmp_path / "all.csv"
    assert compare.main(["--experiment", "cry", "--metrics", "*", "--params", "*", "--csv", str(csv),
                         "--output-dir", str(output)]) == 0
    printed = capsys.readouterr().out
    assert max(len(line) for line in printed.splitlines()) <= 120
    full = pd.read_csv(csv)
    assert len(full.columns) > 10 and full["run_id"].str.len().eq(32).all()
    wide = pd.DataFrame({"x" * 300: ["y" * 500, "z"], **{f"params.long.name.{i}": ["v" * 80, "w"] for i in range(15)}})
    assert max(len(line) for line in compare.fit_to_width(wide, 120).splitlines()) <= 120


def test_wide_runs_print_within_120_columns_when_not_a_terminal(tmp_path):
    """Long run titles and many long params (what a real sweep logs): every printed line fits the
    default 120 columns of a pipe, each block of columns starts with the run name again, and the
    CSV keeps every value whole."""
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    tracking.prepare_store(uri)
    client = MlflowClient(uri)
    experiment = tracking.get_or_create_experiment(uri, "wide")
    names = [f"cnn lr=0.0003 seed={seed} " + " ".join(f"model.backbone.option_{i}=value_{i}" for i in range(12))
             for seed in (1, 2)]
    for seed, name in zip((1, 2), names):
        run = client.create_run(experiment, run_name=name)
        tracking.log_params(client, run.info.run_id, {f"model.backbone.setting_number_{i}": f"{seed}-" + "x" * 80
                                                       for i in range(30)})
        client.log_metric(run.info.run_id, "test/macro_f1", 0.5 + seed / 10)
    csv = tmp_path / "wide.csv"
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    process = subprocess.run([sys.executable, "-m", "audioml.compare", "--experiment", "wide", "--sort",
                              "test/macro_f1", "--csv", str(csv), "--tracking-uri", uri],
                             capture_output=True, text=True, env=env)
    assert process.returncode == 0, process.stderr
    lines = process.stdout.splitlines()
    assert max(len(line) for line in lines) <= 120
    blocks = process.stdout.split("\n\n")[:-1]  # the last one is the CSV note
    assert len(blocks) > 3
    header = blocks[0].splitlines()[0]
    key_width = header.index("run_id") + len("run_id ")  # two names cut alike: the short id follows them
    keys = [line[:key_width] for line in blocks[0].splitlines()]
    assert keys[0].split() == ["run_name", "run_id"] and keys[1] != keys[2]
    assert keys[1].startswith("cnn lr=0.0003 seed=") and "...option_11=value_11 " in keys[1]
    for block in blocks:
        assert [line[:key_width] for line in block.splitlines()] == keys
    full = pd.read_csv(csv)
    assert full["run_name"].tolist() == names[::-1]
    assert full["model.backbone.setting_number_29"].tolist() == ["2-" + "x" * 80, "1-" + "x" * 80]


def test_one_seed_column_no_empty_columns_and_readable_at_80_columns(tmp_path, monkeypatch, capsys):
    """A sweep over lr and seed as a real run logs it: seed interpolated into data.seed and
    evaluation.seed, each loss with its own _target_, a param only some runs have, a metric empty
    for every run. One seed column, the loss choice without its _target_, no empty column, and at
    80 columns every line fits and the first block shows the configuration whole."""
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    tracking.prepare_store(uri)
    client = MlflowClient(uri)
    experiment = tracking.get_or_create_experiment(uri, "cry")
    for lr in ("0.001", "0.003"):
        for seed in ("1", "2"):
            loss = "ce" if seed == "1" else "weighted_ce"
            run = client.create_run(experiment, run_name=f"cnn lr={lr} seed={seed} loss={loss}", tags={
                "audioml.choice.model": "cnn", "audioml.choice.loss": loss, "audioml.choice.data": "donateacry"})
            params = {"model.optimizer.lr": lr, "seed": seed, "data.seed": seed, "evaluation.seed": seed,
                      "loss._target_": f"audioml.losses.{loss}", "data.root": ""}
            if loss == "weighted_ce":
                params["loss.weighting"] = "inverse"  # one value, only where the choice has it: the choice says it
            tracking.log_params(client, run.info.run_id, params)
            client.log_batch(run.info.run_id, metrics=[
                Metric("test/macro_f1", 0.5 + float(lr), 0, 0), Metric("val/best_macro_f1", 0.4, 0, 0),
                Metric("test/nll", float("nan"), 0, 0)])
    table = compare.comparison_table(compare.collect_runs(client, ["cry"]))
    assert list(table.columns) == ["run_name", "status", "loss", "model.optimizer.lr", "seed", "test/macro_f1",
                                   "val/best_macro_f1", "run_id", "experiment"]
    monkeypatch.setenv("COLUMNS", "80")
    assert compare.main(["--experiment", "cry", "--tracking-uri", uri]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = lines[0].split()
    assert header[:2] == ["run_name", "status"] and {"loss", "model.optimizer.lr", "seed"} <= set(header)
    assert any(line.startswith("cnn lr=0.003 seed=2 loss=weighted_ce") for line in lines)
