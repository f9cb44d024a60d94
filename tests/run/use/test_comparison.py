"""Two runs compared on the same test items (``audioml.run.use.comparison``, ``audioml-compare A B``,
``--sweep --paired``): pairing by file identity, refusals that say what differs, the paired
statistics of classifiers and regressors, Holm over a sweep, and the MLflow comparison record,
on predictions tables as runs write them and a real MLflow store in a temp dir."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from audioml import compare
from audioml.run.record import tracking
from audioml.run.record.sweep import find_or_create_sweep_run
from audioml.run.use.comparison import ItemMismatchError, ScoredRun, compare_runs, load_run
from audioml.stats import holm_adjust

CLASSES = ["hungry", "tired", "burping"]


def _table(correct: np.ndarray, seed: int, groups: int = 12, per_group: int = 4) -> pd.DataFrame:
    """A classifier's predictions table as ``write_run_reports`` writes it: right where ``correct``."""
    n = groups * per_group
    truth = np.arange(n) % 3
    predicted = np.where(correct, truth, (truth + 1) % 3)
    probabilities = np.full((n, 3), 0.1)
    probabilities[np.arange(n), predicted] = 0.8
    files = [f"baby{i // per_group:02d}/clip{i % per_group}.wav" for i in range(n)]
    table = pd.DataFrame({"path": [f"/data/donateacry-corpus/{f}" for f in files], "file": files,
                          "sha256": [hashlib.sha256(f.encode()).hexdigest() for f in files],
                          "group": [f.split("/")[0] for f in files], "true": [CLASSES[t] for t in truth],
                          "predicted": [CLASSES[p] for p in predicted]})
    for index, name in enumerate(CLASSES):
        table[f"p_{name}"] = probabilities[:, index]
    return table.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # pairing must not rely on order


def _pair(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    easy = np.repeat(rng.random(12) < 0.6, 4)
    fixes = rng.random(48) < 0.35
    return _table(easy, 1), _table(easy | fixes, 2)


def _run(table: pd.DataFrame, label: str, run_id: str | None = None) -> ScoredRun:
    return ScoredRun(label, run_id, label, table)


def test_runs_are_paired_by_file_identity_whatever_their_order():
    table_a, table_b = _pair()
    result = compare_runs(_run(table_a, "A"), _run(table_b, "B"), bootstrap_samples=500, permutations=2000)
    assert result.paired_on == ["file", "sha256"]
    by_metric = {d.metric: d for d in result.differences}
    sorted_a, sorted_b = table_a.sort_values("file"), table_b.sort_values("file")
    accuracy = ((sorted_b["predicted"] == sorted_b["true"]).mean() - (sorted_a["predicted"] == sorted_a["true"]).mean())
    assert by_metric["acc"].difference == pytest.approx(accuracy) and by_metric["acc"].items == 48
    assert by_metric["acc"].groups == 12 and by_metric["acc"].test == "McNemar exact"
    for difference in result.differences:
        assert difference.ci_low <= difference.difference <= difference.ci_high
    assert any("McNemar" in note for note in result.notes)  # 4 clips per baby: said


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(index=[3, 7]), "not scored on the same test items: 2 of A's 48 are not B's .*, 0 of B's 46"),
    (lambda t: t.assign(sha256=t["sha256"].where(t.index != 5, "0" * 64)), "1 test files have other contents"),
    (lambda t: t.assign(true=t["true"].where(t.index != 0, "hungry" if t["true"][0] != "hungry" else "tired")),
     "1 test items have other labels"),
    (lambda t: t.rename(columns={"p_burping": "p_discomfort"}), "compare runs of the same classes"),
])
def test_other_test_items_are_refused_saying_what_differs(change, message):
    table_a, table_b = _pair()
    with pytest.raises(ItemMismatchError, match=message):
        compare_runs(_run(table_a, "A"), _run(change(table_b), "B"), bootstrap_samples=10, permutations=10)


def test_tables_written_before_item_identity_pair_on_their_paths_and_say_so():
    table_a, table_b = _pair()
    old_a, old_b = (t.drop(columns=["file", "sha256"]) for t in (table_a, table_b))
    result = compare_runs(_run(old_a, "A"), _run(old_b, "B"), bootstrap_samples=10, permutations=10)
    assert result.paired_on == ["path"] and any("absolute paths" in note for note in result.notes)
    mixed = compare_runs(_run(table_a, "A"), _run(old_b, "B"), bootstrap_samples=10, permutations=10)
    assert mixed.paired_on == ["path"] and mixed.differences == result.differences
    moved = old_b.assign(path=old_b["path"].str.replace("/data/", "/elsewhere/"))
    with pytest.raises(ItemMismatchError, match="paired on path.*absolute paths"):
        compare_runs(_run(old_a, "A"), _run(moved, "B"), bootstrap_samples=10, permutations=10)


def test_regressors_are_compared_per_target_on_every_window():
    rng = np.random.default_rng(3)
    rows = pd.DataFrame({"file": np.repeat([f"rec{i}.wav" for i in range(6)], 8), "start_ms": 0,
                         "window": np.tile(np.arange(8), 6), "group": np.repeat([f"rec{i}" for i in range(6)], 8)})
    rows = pd.concat([rows, rows.iloc[:8]], ignore_index=True)  # one sequence twice (overlapping strides)
    target = rng.normal(size=len(rows))
    tables = []
    for noise in (0.9, 0.3):
        table = rows.copy()
        for name, shift in (("valence", 0.0), ("arousal", 0.5)):
            table[f"true_{name}"] = target + shift
            table[f"predicted_{name}"] = target + shift + rng.normal(0, noise, len(rows))
        tables.append(table)
    result = compare_runs(_run(tables[0], "A"), _run(tables[1], "B"), bootstrap_samples=300, permutations=2000)
    assert [d.metric for d in result.differences] == [f"{m}_{t}" for t in ("valence", "arousal")
                                                      for m in ("ccc", "mse", "mae")]
    ccc = next(d for d in result.differences if d.metric == "ccc_valence")
    assert ccc.items == 56 and ccc.groups == 6 and ccc.difference > 0 and ccc.test == "paired permutation"


@pytest.fixture()
def store(tmp_path):
    """A sweep of three jobs whose MLflow runs hold their predictions as artifacts, and a
    fourth run scored on other items."""
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    tracking.prepare_store(uri)
    client = MlflowClient(uri)
    experiment = tracking.get_or_create_experiment(uri, "donateacry")
    parent = find_or_create_sweep_run(uri, experiment, "feedbeef1234", ["model=a,b,c"])
    table_a, table_b = _pair()
    worse = _table(np.zeros(48, dtype=bool) | (np.arange(48) % 5 == 0), 3)
    ids = {}
    for name, table, val in (("good", table_b, 0.7), ("plain", table_a, 0.6), ("bad", worse, 0.4)):
        run = client.create_run(experiment, run_name=name, tags={"mlflow.parentRunId": parent,
                                                                 "audioml.sweep_key": "feedbeef1234"})
        path = tmp_path / name / "test_predictions.csv"
        path.parent.mkdir()
        table.to_csv(path, index=False)
        client.log_artifact(run.info.run_id, str(path))
        client.log_metric(run.info.run_id, "val/best_macro_f1", val)
        tracking.set_status(client, run.info.run_id, "FINISHED")
        ids[name] = run.info.run_id
    return tmp_path, uri, client, ids


def test_two_runs_by_id_prefix_print_the_paired_table_and_are_logged_linking_both(store, capsys):
    output, uri, client, ids = store
    csv = output / "paired.csv"
    assert compare.main([ids["plain"][:8], ids["good"], "--output-dir", str(output), "--csv", str(csv),
                         "--bootstrap", "300", "--permutations", "2000"]) == 0
    printed = capsys.readouterr().out
    assert "A = plain" in printed and "48 test items in 12 groups, paired on file + sha256" in printed
    assert "macro_f1: B - A = +" in printed and "McNemar" in printed
    table = pd.read_csv(csv)
    assert table["metric"].tolist() == ["acc", "balanced_acc", "macro_f1"] and (table["items"] == 48).all()
    (logged,) = client.search_runs([client.get_run(ids["plain"]).info.experiment_id],
                                   "tags.`audioml.kind` = 'comparison'")
    assert logged.data.tags["audioml.compares.a"] == ids["plain"]
    assert logged.data.tags["audioml.compares.b"] == ids["good"]
    assert logged.data.metrics["paired/acc_difference"] == pytest.approx(table["difference"][0])
    assert [a.path for a in client.list_artifacts(logged.info.run_id)] == ["paired_comparison.csv"]
    listed = output / "listed.csv"  # the record trained nothing: the experiment's table leaves it out
    assert compare.main(["--experiment", "donateacry", "--output-dir", str(output), "--csv", str(listed)]) == 0
    assert sorted(pd.read_csv(listed)["run_name"]) == ["bad", "good", "plain"]


def test_a_sweep_compares_every_job_with_the_best_by_validation_with_holm(store, capsys):
    output, uri, client, ids = store
    csv = output / "sweep.csv"
    assert compare.main(["--sweep", "feedbeef1234", "--paired", "--output-dir", str(output), "--csv", str(csv),
                         "--bootstrap", "200", "--permutations", "2000"]) == 0
    table = pd.read_csv(csv)
    assert set(table["a_run"]) == {"good"} and set(table["b_run"]) == {"plain", "bad"}  # best val/best_macro_f1
    for metric, rows in table.groupby("metric"):
        assert np.allclose(rows["p_holm"], holm_adjust(rows["p_value"].to_numpy()))
        assert (rows["p_holm"] >= rows["p_value"]).all()
    assert "(Holm)" in capsys.readouterr().out
    (logged,) = client.search_runs([client.get_run(ids["good"]).info.experiment_id],
                                   "tags.`audioml.kind` = 'comparison'")
    assert logged.data.tags["audioml.compares.reference"] == ids["good"]
    csv_reference = output / "reference.csv"
    compare.main(["--sweep", "feedbeef1234", "--reference", ids["bad"], "--output-dir", str(output), "--csv",
                  str(csv_reference), "--bootstrap", "50", "--permutations", "100", "--no-log"])
    assert set(pd.read_csv(csv_reference)["a_run"]) == {"bad"}


def test_run_directories_and_mistakes_on_the_command_line(store, capsys, tmp_path):
    output, uri, client, ids = store
    table_a, _ = _pair()
    for name, table in (("one", table_a), ("two", table_a.drop(index=[0]))):
        (tmp_path / "runs" / name).mkdir(parents=True)
        table.to_csv(tmp_path / "runs" / name / "test_predictions.csv", index=False)
    assert load_run(str(tmp_path / "runs" / "one")).label == "one"
    (tmp_path / "runs" / "kfold").mkdir()  # a k-fold parent: its pooled out-of-fold predictions
    table_a.assign(fold=np.arange(48) % 5).to_csv(tmp_path / "runs" / "kfold" / "oof_predictions.csv", index=False)
    kfold = load_run(str(tmp_path / "runs" / "kfold"))
    assert compare_runs(load_run(str(tmp_path / "runs" / "one")), kfold, 10, 10).differences[0].difference == 0
    assert load_run("plain", client).run_id == ids["plain"]  # by its MLflow run name
    for argv, message in (([str(tmp_path / "runs" / "one")], "give two runs"),
                          ([str(tmp_path / "runs" / "one"), str(tmp_path / "runs" / "two"), "--no-log"],
                           "not scored on the same test items"),
                          ([str(tmp_path / "runs" / "one"), "no-such-run"], "neither a run directory nor the name"),
                          ([str(tmp_path / "runs" / "one"), "feedface"], "no MLflow run whose id starts with"),
                          (["--experiment", "donateacry", "--paired"], "add --sweep"),
                          ([ids["good"], ids["bad"], "--sweep", "feedbeef1234"], "exclude each other"),
                          ([str(tmp_path)], "give two runs")):
        code = compare.main([*argv, "--output-dir", str(output)])
        error = capsys.readouterr().err
        assert code == 2 and message in error and "Traceback" not in error, (argv, error)
