"""Split protocols: grouped, stratified, deterministic, covering."""

import numpy as np
import pytest

from audioml.data.splits import assign_groups, group_holdout_split, group_kfold, holdout_from_kfold


def _imbalanced(seed: int = 0, n_groups: int = 60):
    """Groups with 1-8 clips, each group one label; label 0 dominant like donateacry."""
    rng = np.random.default_rng(seed)
    labels, groups = [], []
    for group in range(n_groups):
        label = rng.choice(4, p=[0.7, 0.1, 0.1, 0.1])
        size = rng.integers(1, 9)
        labels += [label] * size
        groups += [f"g{group}"] * size
    return np.array(labels), np.array(groups)


def test_holdout_groups_never_straddle_parts():
    labels, groups = _imbalanced()
    parts = group_holdout_split(labels, groups, 0.15, 0.2, seed=3)
    group_sets = {name: set(groups[idx]) for name, idx in parts.items()}
    assert not group_sets["train"] & group_sets["val"]
    assert not group_sets["train"] & group_sets["test"]
    assert not group_sets["val"] & group_sets["test"]
    covered = np.sort(np.concatenate(list(parts.values())))
    assert np.array_equal(covered, np.arange(len(labels)))


def test_holdout_is_deterministic_per_seed_and_varies_across_seeds():
    labels, groups = _imbalanced()
    first = group_holdout_split(labels, groups, 0.15, 0.2, seed=7)
    again = group_holdout_split(labels, groups, 0.15, 0.2, seed=7)
    other = group_holdout_split(labels, groups, 0.15, 0.2, seed=8)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert any(not np.array_equal(first[k], other[k]) for k in first)


def test_holdout_fractions_and_stratification_are_close():
    labels, groups = _imbalanced(n_groups=200)
    parts = group_holdout_split(labels, groups, 0.15, 0.2, seed=0)
    n = len(labels)
    assert abs(len(parts["test"]) / n - 0.2) < 0.05
    assert abs(len(parts["val"]) / n - 0.15) < 0.05
    overall = np.bincount(labels, minlength=4) / n
    for idx in parts.values():
        share = np.bincount(labels[idx], minlength=4) / len(idx)
        assert np.abs(share - overall).max() < 0.1
        assert (np.bincount(labels[idx], minlength=4) > 0).all()  # every class in every part


def test_kfold_folds_disjoint_by_group_and_cover_every_clip_once():
    labels, groups = _imbalanced()
    folds = group_kfold(labels, groups, k=5, seed=1)
    tests = np.concatenate([test for _, test in folds])
    assert np.array_equal(np.sort(tests), np.arange(len(labels)))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert len(train) + len(test) == len(labels)


def test_holdout_from_kfold_carves_grouped_validation():
    labels, groups = _imbalanced()
    parts = holdout_from_kfold(labels, groups, k=5, fold=2, val_fraction=0.2, seed=0)
    _, test = group_kfold(labels, groups, k=5, seed=0)[2]
    assert np.array_equal(parts["test"], test)
    assert not set(groups[parts["train"]]) & set(groups[parts["val"]])
    assert len(parts["train"]) + len(parts["val"]) + len(parts["test"]) == len(labels)


@pytest.mark.parametrize("call, message", [
    (lambda l, g: group_kfold(l, g, k=1, seed=0), "k >= 2"),
    (lambda l, g: group_kfold(l, g[:], k=500, seed=0), "at least 500 groups"),
    (lambda l, g: group_holdout_split(l, g, 0.6, 0.5, seed=0), "sum to less than 1"),
    (lambda l, g: assign_groups(l, g[:-1], [1, 1], seed=0), "differ in length"),
])
def test_bad_split_requests_say_what_is_wrong(call, message):
    labels, groups = _imbalanced()
    with pytest.raises(ValueError, match=message):
        call(labels, groups)
