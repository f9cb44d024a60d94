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


# --------------------------------------------------------------------------- EmoBox's RAVDESS folds
#: The folds as /work/shared/PROTOCOLS.md gives them (EmoBox's data/ravdess/fold_<k>), typed again here.
EMOBOX_TABLE = {1: {1, 11, 20, 21}, 2: {4, 10, 12, 14}, 3: {8, 9, 19, 23}, 4: {3, 5, 7, 24}, 5: {2, 15, 16, 18},
                6: {6, 13, 17, 22}}


def _ravdess_rows(actors=range(1, 25)):
    """Full RAVDESS speech layout: per actor 60 clips (neutral 4, the 7 other emotions 8 each)."""
    per_actor = np.repeat(np.arange(8), [4] + [8] * 7)
    actors = np.repeat(list(actors), len(per_actor))
    return np.tile(per_actor, len(actors) // len(per_actor)), actors


def test_emobox_folds_are_the_published_ones():
    from helpers.runners import SHARED

    from audioml.data.splits import EMOBOX_RAVDESS_FOLDS, emobox_ravdess_split

    protocols = SHARED / "PROTOCOLS.md"
    if protocols.is_file():  # the table there, parsed: "| 1 | 01, 11, 20, 21 |"
        import re

        rows = re.findall(r"^\| (\d) \| ([\d, ]+) \|$", protocols.read_text(), flags=re.MULTILINE)
        assert {int(f): {int(a) for a in actors.split(",")} for f, actors in rows} == EMOBOX_TABLE
    assert {f: set(a) for f, a in EMOBOX_RAVDESS_FOLDS.items()} == EMOBOX_TABLE
    labels, actors = _ravdess_rows()
    tested = []
    for fold, test_actors in EMOBOX_TABLE.items():
        parts = emobox_ravdess_split(labels, actors, fold, val_actors=2, val_fraction=0.15, seed=0)
        assert set(actors[parts["test"]]) == test_actors and len(parts["test"]) == 240
        assert np.bincount(labels[parts["test"]]).tolist() == [16] + [32] * 7
        assert len(parts["train"]) + len(parts["val"]) == 1200
        val = set(actors[parts["val"]].tolist())
        assert len(val) == 2 and {a % 2 for a in val} == {0, 1}  # one female, one male
        assert not val & test_actors and not val & set(actors[parts["train"]])
        assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(1440))
        tested.append(parts["test"])
    assert np.array_equal(np.sort(np.concatenate(tested)), np.arange(1440))  # the test folds partition RAVDESS


def test_emobox_validation_modes_and_absent_actors():
    from audioml.data.splits import emobox_ravdess_split

    labels, actors = _ravdess_rows()
    first = emobox_ravdess_split(labels, actors, 3, 4, 0.15, seed=1)
    assert all(np.array_equal(first[k], emobox_ravdess_split(labels, actors, 3, 4, 0.15, seed=1)[k]) for k in first)
    assert len(set(actors[first["val"]])) == 4
    others = {frozenset(actors[emobox_ravdess_split(labels, actors, 3, 2, 0.15, seed=s)["val"]]) for s in range(6)}
    assert len(others) > 1  # the seed draws the validation actors
    files = emobox_ravdess_split(labels, actors, 3, 0, 0.2, seed=1)  # EmoBox's recipe: 20 % of the training files
    assert set(actors[files["val"]]) == set(actors[files["train"]]) and len(files["val"]) == 240
    # actors 1-2 only: fold 1 tests actor 1, trains on actor 2 (validation from its files); fold 2 has none
    labels, actors = _ravdess_rows([1, 2])
    parts = emobox_ravdess_split(labels, actors, 1, 2, 0.15, seed=0)
    assert set(actors[parts["test"]]) == {1} and set(actors[parts["train"]]) == set(actors[parts["val"]]) == {2}
    with pytest.raises(ValueError, match=r"fold 2 tests actors 04, 10, 12, 14; none of them is in the data "
                                         r"\(actors 01, 02\)"):
        emobox_ravdess_split(labels, actors, 2, 2, 0.15, seed=0)
    with pytest.raises(ValueError, match="folds"):
        emobox_ravdess_split(labels, actors, 7, 2, 0.15, seed=0)
