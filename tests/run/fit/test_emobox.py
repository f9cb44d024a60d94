"""evaluation=emobox: EmoBox's scores against scikit-learn, the fold results combined as EmoBox
publishes them (mean over folds) beside the pooled honest numbers, refusals that say what to do,
and the protocol end to end on generated RAVDESS-layout data (real Hydra config, Trainer, MLflow)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers.datasets import make_ravdess
from helpers.runners import read_metrics
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from audioml.data.ravdess import EMOTIONS
from audioml.run.fit.emobox import EmoBox, emobox_scores
from audioml.run.fit.protocols import RunResult
from audioml.stats import confusion_matrices


def sklearn_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """What EmoBox's EmoEval.ComputePerformance reports."""
    return {"ua": balanced_accuracy_score(truth, predicted), "wa": accuracy_score(truth, predicted),
            "macro_f1": f1_score(truth, predicted, average="macro")}


@pytest.mark.parametrize("case", ["random", "class-only-predicted", "class-never-predicted", "perfect"])
def test_emobox_scores_equal_scikit_learns(case):
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 8, 200)
    predicted = np.where(rng.random(200) < 0.6, truth, rng.integers(0, 8, 200))
    if case == "class-only-predicted":  # class 7 has no true clip but is predicted: UA leaves it out, F1 counts it
        truth[truth == 7] = 6
    elif case == "class-never-predicted":  # class 2 is true but never predicted, class 5 absent from both
        predicted[predicted == 2] = 3
        truth[truth == 5], predicted[predicted == 5] = 4, 4
    elif case == "perfect":
        predicted = truth.copy()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns about the class without true clips
        expected = sklearn_scores(truth, predicted)
    got = emobox_scores(confusion_matrices(truth, predicted, 8))
    for name, value in expected.items():
        assert float(got[name]) == pytest.approx(value, abs=1e-12), name
    stacked = emobox_scores(np.stack([confusion_matrices(truth, predicted, 8)] * 3))  # batched like the bootstrap
    assert stacked["ua"].shape == (3,) and np.allclose(stacked["ua"], got["ua"])


def fold_result(fold_actors: list[int], accuracy: float, seed: int) -> RunResult:
    """A fold's test predictions: 60 clips per actor, correct with probability ``accuracy``."""
    rng = np.random.default_rng(seed)
    per_actor = np.repeat(np.arange(8), [4] + [8] * 7)
    truth = np.tile(per_actor, len(fold_actors))
    predicted = np.where(rng.random(len(truth)) < accuracy, truth, rng.integers(0, 8, len(truth)))
    probabilities = np.full((len(truth), 8), 0.01)
    probabilities[np.arange(len(truth)), predicted] = 0.93
    actors = np.repeat(fold_actors, len(per_actor))
    table = pd.DataFrame({"path": [f"a{a}_{i}.wav" for i, a in enumerate(actors)],
                          "group": [f"actor_{a:02d}" for a in actors],
                          "actor": actors, "true": [EMOTIONS[t] for t in truth],
                          "predicted": [EMOTIONS[p] for p in predicted]})
    for index, name in enumerate(EMOTIONS):
        table[f"p_{name}"] = probabilities[:, index]
    acc = float((truth == predicted).mean())
    return RunResult({"test/acc": acc, "test/macro_f1": acc, "baseline/majority_class": 1.0}, table)


def test_folds_combine_into_emobox_means_pooled_scores_and_intervals():
    protocol = EmoBox(folds=[1, 5], bootstrap_samples=200, seed=0)
    results = [fold_result([1, 11, 20, 21], 0.7, seed=1), fold_result([2, 15, 16, 18], 0.4, seed=2)]
    combined = protocol.combine(results)
    metrics = combined.metrics
    per_fold = []
    for result in results:
        truth = result.predictions["true"].map(EMOTIONS.index).to_numpy()
        per_fold.append(sklearn_scores(truth, result.predictions["predicted"].map(EMOTIONS.index).to_numpy()))
    pooled = pd.concat([r.predictions for r in results])
    pooled_expected = sklearn_scores(pooled["true"].map(EMOTIONS.index), pooled["predicted"].map(EMOTIONS.index))
    for name in ("ua", "wa", "macro_f1"):
        assert metrics[f"emobox/{name}"] == pytest.approx(np.mean([f[name] for f in per_fold]))
        assert metrics[f"emobox/{name}_std"] == pytest.approx(np.std([f[name] for f in per_fold], ddof=1))
        assert metrics[f"emobox/pooled_{name}"] == pytest.approx(pooled_expected[name])
        assert metrics[f"emobox/fold1_{name}"] == pytest.approx(per_fold[0][name])
        assert metrics[f"emobox/{name}_ci_low"] < metrics[f"emobox/{name}"] < metrics[f"emobox/{name}_ci_high"]
    # the pooled honest numbers of k-fold are there too, and the folds are named by EmoBox's numbers
    assert {"test/balanced_acc", "test/balanced_acc_ci_low", "baseline/macro_f1"} <= set(metrics)
    assert metrics["test/balanced_acc"] == pytest.approx(pooled_expected["ua"])
    assert combined.folds["fold"].tolist() == [1, 5] and sorted(combined.oof["fold"].unique()) == [1, 5]
    assert combined.folds["test_actors"].tolist() == ["01 11 20 21", "02 15 16 18"]
    assert metrics["emobox/complete"] == 0.0  # two folds of six: not comparable with the published table


def manifest_module(actors: list[int] | None) -> SimpleNamespace:
    """What ``check_data`` reads of a loaded DataModule: its manifest (with or without actors)."""
    manifest = pd.DataFrame({"path": ["x.wav"]}) if actors is None else \
        pd.DataFrame({"path": [f"{a}.wav" for a in actors], "actor": actors})
    return SimpleNamespace(manifest=manifest, root="/data/ravdess")


def test_the_protocol_refuses_data_it_cannot_run_on_saying_what_to_do():
    with pytest.raises(ValueError, match="no actors: use data=ravdess"):
        EmoBox().check_data(manifest_module(None))
    with pytest.raises(ValueError, match=r"folds \[2, 3, 4, 6\] have none of their test actors.*"
                                         r"audioml-data download ravdess.*evaluation.folds=\[1,5\] runs the folds"):
        EmoBox().check_data(manifest_module([1, 2]))
    with pytest.raises(ValueError, match=r"actors .*03.* are missing"):
        EmoBox().check_data(manifest_module([a for a in range(1, 25) if a != 3]))
    EmoBox().check_data(manifest_module(list(range(1, 25))))
    EmoBox(folds=[5, 1]).check_data(manifest_module([1, 2]))  # the smoke test runs
    with pytest.raises(ValueError, match=r"folds \[2\]"):
        EmoBox(folds=[1, 2]).check_data(manifest_module([1, 2]))
    with pytest.raises(ValueError, match="EmoBox's RAVDESS folds are"):
        EmoBox(folds=[7])


def test_emobox_end_to_end_on_generated_ravdess(tmp_path):
    from audioml.config import compose_config
    from audioml.run.fit.training import run_evaluation

    data = make_ravdess(tmp_path / "data" / "ravdess", actors=(1, 2, 3, 5), statements=(1,))
    common = ("data=ravdess", f"data.root={data}", "model=cnn", "model.backbone.channels=[4,8]",
              "model.backbone.dense=8", "data.clip_seconds=0.6", "data.batch_size=16", "trainer.max_epochs=1",
              "evaluation=emobox", "evaluation.bootstrap_samples=50", "trainer.enable_progress_bar=false",
              f"paths.output_dir={tmp_path / 'out'}")
    with pytest.raises(ValueError, match=r"evaluation.folds=\[1,4,5\] runs the folds with test actors here"):
        run_evaluation(compose_config([*common, "logger.enabled=false"]), tmp_path / "refused")
    parent = tmp_path / "out" / "runs" / "emobox"
    run_evaluation(compose_config([*common, "evaluation.folds=[1,4]"]), parent)
    metrics = read_metrics(parent)
    assert metrics["emobox/folds"] == 2 and metrics["emobox/complete"] == 0
    folds = pd.read_csv(parent / "fold_metrics.csv", dtype={"test_actors": str})
    assert folds["fold"].tolist() == [1, 4] and folds["test_actors"].tolist() == ["01", "03 05"]
    assert folds["emobox_ua"].mean() == pytest.approx(metrics["emobox/ua"])
    for fold, test_actors in ((1, {1}), (4, {3, 5})):
        predictions = pd.read_csv(parent / f"fold_{fold}" / "test_predictions.csv")
        assert set(predictions["actor"]) == test_actors
        assert "split: emobox" in (parent / f"fold_{fold}" / "config.yaml").read_text()
