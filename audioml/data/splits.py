"""Split protocols as pure functions of (labels, groups, seed).

Every function returns integer index arrays into the manifest. Groups (babies, actors, tracks)
never straddle two parts; class proportions are matched as closely as whole groups allow.
``split_groups`` is the switch between that protocol (``"grouped"``) and the per-file one some
studies used (``"random"``: every file its own group, so a speaker can be in train and test).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["SPLIT_MODES", "SPLIT_MODE_HINTS", "EMOBOX_RAVDESS_FOLDS", "assign_groups", "emobox_ravdess_split",
           "group_holdout_split", "group_kfold", "holdout_from_kfold", "split_groups"]

#: ``data.split`` values every DataModule accepts.
SPLIT_MODES = ("grouped", "random")

#: Why a DataModule without a dataset-specific split mode cannot take it (appended to the error).
SPLIT_MODE_HINTS = {"emobox": ": EmoBox's folds hold out RAVDESS actors; evaluation=emobox needs data=ravdess "
                              "(or a dataset in RAVDESS's layout)"}

#: EmoBox's RAVDESS folds (Ma et al., Interspeech 2024; emo-box/EmoBox ``data/ravdess/fold_<k>``):
#: fold number -> its four held-out test actors; each fold trains on the other 20 actors.
EMOBOX_RAVDESS_FOLDS: dict[int, tuple[int, ...]] = {
    1: (1, 11, 20, 21), 2: (4, 10, 12, 14), 3: (8, 9, 19, 23),
    4: (3, 5, 7, 24), 5: (2, 15, 16, 18), 6: (6, 13, 17, 22)}


def split_groups(groups: Sequence, mode: str) -> np.ndarray:
    """The groups a split keeps together: ``groups`` itself for ``mode="grouped"``, one group per
    sample (``0..n-1``) for ``mode="random"`` (stratified per file, groups ignored).

    Raises ``ValueError`` for another ``mode``.
    """
    if mode not in SPLIT_MODES:
        raise ValueError(f"data.split={mode!r}: use one of {list(SPLIT_MODES)}")
    groups = np.asarray(groups)
    return groups if mode == "grouped" else np.arange(groups.shape[0])


def assign_groups(labels: Sequence[int], groups: Sequence, fractions: Sequence[float],
                  seed: int) -> np.ndarray:
    """Assign every sample to one of ``len(fractions)`` bins, whole groups at a time.

    Greedy stratification: groups are visited rarest-class first (ties in a seeded random
    order) and each goes to the bin whose per-class deficit, weighted by class rarity, is
    largest. Deterministic for a given ``seed``.

    Returns an array of bin ids, shape ``(n_samples,)``.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    if labels.shape[0] != groups.shape[0]:
        raise ValueError(f"labels ({labels.shape[0]}) and groups ({groups.shape[0]}) differ in length")
    fractions = np.asarray(fractions, dtype=float)
    if (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError(f"split fractions must be non-negative and sum to > 0, got {fractions.tolist()}")
    fractions = fractions / fractions.sum()
    classes, label_ids = np.unique(labels, return_inverse=True)
    group_names, group_ids = np.unique(groups, return_inverse=True)
    n_groups, n_classes, n_bins = len(group_names), len(classes), len(fractions)

    group_counts = np.zeros((n_groups, n_classes))
    np.add.at(group_counts, (group_ids, label_ids), 1)
    class_totals = group_counts.sum(axis=0)
    targets = fractions[:, None] * class_totals[None, :]
    assigned = np.zeros((n_bins, n_classes))

    rng = np.random.default_rng(seed)
    tie_break = rng.permutation(n_groups)
    # Rarest class present in the group first; bigger groups first among equals.
    rarity = np.array([class_totals[row > 0].min() for row in group_counts])
    order = np.lexsort((tie_break, -group_counts.sum(axis=1), rarity))

    group_bin = np.empty(n_groups, dtype=int)
    class_weight = 1.0 / np.maximum(class_totals, 1)
    for group in order:
        counts = group_counts[group]
        deficit = ((targets - assigned) * class_weight[None, :] * (counts > 0)[None, :]).sum(axis=1)
        # Empty bins that should hold data get priority so no requested split ends up empty.
        empty = (assigned.sum(axis=1) == 0) & (fractions > 0)
        score = deficit + 1e6 * empty
        score[fractions == 0] = -np.inf
        best = np.flatnonzero(score == score.max())
        chosen = best[rng.integers(len(best))] if len(best) > 1 else best[0]
        group_bin[group] = chosen
        assigned[chosen] += counts
    return group_bin[group_ids]


def group_holdout_split(labels: Sequence[int], groups: Sequence, val_fraction: float,
                        test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Train/val/test indices grouped by ``groups`` and stratified by ``labels``.

    Raises ``ValueError`` when there are fewer groups than non-empty parts.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in "
                         "[0, 1) and sum to less than 1")
    fractions = [1.0 - val_fraction - test_fraction, val_fraction, test_fraction]
    n_parts = sum(f > 0 for f in fractions)
    if len(np.unique(np.asarray(groups))) < n_parts:
        raise ValueError(f"need at least {n_parts} groups for a train/val/test split, "
                         f"got {len(np.unique(np.asarray(groups)))}")
    bins = assign_groups(labels, groups, fractions, seed)
    return {name: np.flatnonzero(bins == i) for i, name in enumerate(("train", "val", "test"))}


def group_kfold(labels: Sequence[int], groups: Sequence, k: int,
                seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` folds ``(train_idx, test_idx)``; each sample is in exactly one test fold.

    Raises ``ValueError`` when ``k < 2`` or there are fewer groups than folds.
    """
    if k < 2:
        raise ValueError(f"k-fold needs k >= 2, got k={k}")
    n_groups = len(np.unique(np.asarray(groups)))
    if n_groups < k:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} groups, got {n_groups}")
    bins = assign_groups(labels, groups, [1.0] * k, seed)
    return [(np.flatnonzero(bins != fold), np.flatnonzero(bins == fold)) for fold in range(k)]


def holdout_from_kfold(labels: Sequence[int], groups: Sequence, k: int, fold: int,
                       val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Fold ``fold`` of a grouped k-fold as test; a grouped validation part carved from the rest."""
    if not 0 <= fold < k:
        raise ValueError(f"fold={fold} is outside 0..{k - 1}")
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    train_val, test = group_kfold(labels, groups, k, seed)[fold]
    if val_fraction <= 0:
        return {"train": train_val, "val": np.array([], dtype=int), "test": test}
    inner = assign_groups(labels[train_val], groups[train_val], [1 - val_fraction, val_fraction], seed + 1)
    return {"train": train_val[inner == 0], "val": train_val[inner == 1], "test": test}


def emobox_ravdess_split(labels: Sequence[int], actors: Sequence[int], fold: int, val_actors: int,
                         val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Train/val/test indices of EmoBox's RAVDESS fold ``fold`` (1-6, ``EMOBOX_RAVDESS_FOLDS``).

    Test: the clips of the fold's four actors (those present). Validation, carved from the
    other actors: ``val_actors`` whole actors, half of them female (even numbers) and half male
    (odd), drawn with ``seed``; with ``val_actors=0`` (EmoBox's own recipe), or when fewer than
    ``val_actors + 1`` training actors are present, a stratified random ``val_fraction`` of the
    training actors' files instead (speakers then shared with training; the test part stays
    speaker-independent). Training: the rest.

    Raises ``ValueError`` for a fold outside 1-6, or when none of the fold's test actors is in
    ``actors``.
    """
    if fold not in EMOBOX_RAVDESS_FOLDS:
        raise ValueError(f"EmoBox fold {fold}: RAVDESS has folds {sorted(EMOBOX_RAVDESS_FOLDS)}")
    labels, actors = np.asarray(labels), np.asarray(actors).astype(int)
    test_actors = EMOBOX_RAVDESS_FOLDS[fold]
    test_mask = np.isin(actors, test_actors)
    present = sorted(set(actors.tolist()))
    if not test_mask.any():
        holding = [f for f, members in EMOBOX_RAVDESS_FOLDS.items() if set(members) & set(present)]
        raise ValueError(f"EmoBox fold {fold} tests actors {_actor_list(test_actors)}; none of them is in the data "
                         f"(actors {_actor_list(present)}). The folds with test actors here: {holding} "
                         f"(evaluation.folds={holding})")
    train = np.flatnonzero(~test_mask)
    training_actors = sorted(set(actors[train].tolist()))
    if val_actors > 0 and len(training_actors) > val_actors:
        rng = np.random.default_rng(seed)
        by_gender = [rng.permutation([a for a in training_actors if a % 2 == parity]).tolist() for parity in (0, 1)]
        chosen: list[int] = []
        while len(chosen) < val_actors:  # female, male, female, ... while each has actors left
            for group in by_gender:
                if group and len(chosen) < val_actors:
                    chosen.append(group.pop())
        val_mask = np.isin(actors, chosen)
        return {"train": np.flatnonzero(~test_mask & ~val_mask), "val": np.flatnonzero(val_mask),
                "test": np.flatnonzero(test_mask)}
    if val_fraction <= 0:
        return {"train": train, "val": np.array([], dtype=int), "test": np.flatnonzero(test_mask)}
    inner = assign_groups(labels[train], np.arange(len(train)), [1 - val_fraction, val_fraction], seed + 1)
    return {"train": train[inner == 0], "val": train[inner == 1], "test": np.flatnonzero(test_mask)}


def _actor_list(actors: Sequence[int]) -> str:
    return ", ".join(f"{int(a):02d}" for a in actors)
