"""Feature tables made from feature tables: several sources side by side (``fuse``) and each
group's rows standardised with that group's own statistics (``standardise_per_group``).

Both are pure functions of their input tables; neither reads a label. ``standardise_per_group``
is transductive on purpose: a test speaker's features are z-scored with statistics of that
speaker's own (unlabelled) rows, as speaker-independent emotion recognition does, so it uses
the test speakers' audio, never their labels, and never another group's rows.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd

from audioml.classical.table import TABLE_VERSION, FeatureTable
from audioml.files import fingerprint

log = logging.getLogger(__name__)

__all__ = ["fuse", "standardise_per_group", "SOURCE_SEPARATOR", "row_identity"]

#: Between a source's name and its own column name (scikit-learn's ``ColumnTransformer`` style).
SOURCE_SEPARATOR = "__"
_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Columns of ``FeatureTable.rows`` that say what a row is about, not which part it is in.
_NOT_IDENTITY = ("group", "split")


def row_identity(rows: pd.DataFrame) -> list[tuple]:
    """One hashable identity per row: its columns other than ``group`` and ``split`` (path,
    segment offset and duration, MuSe window), as strings."""
    columns = [c for c in rows.columns if c not in _NOT_IDENTITY]
    return list(rows[columns].astype(str).itertuples(index=False, name=None))


def fuse(tables: Mapping[str, FeatureTable]) -> FeatureTable:
    """The tables side by side: columns ``<source>__<column>`` in the order of ``tables``, rows
    those every source has (in the first source's order); a row one source lacks is listed in
    ``skipped`` with that source named.

    Raises ``ValueError`` for fewer than two sources, a source name that is not a plain word,
    sources of other tasks, classes or row descriptions, and rows whose target or group differ
    between sources (tables of different data)."""
    if len(tables) < 2:
        raise ValueError(f"descriptors=fusion needs at least two sources, got {list(tables)}: add one with "
                         "+descriptors@descriptors.sources.<name>=<descriptors config>")
    names = list(tables)
    bad = [n for n in names if not _SOURCE_NAME.fullmatch(n) or SOURCE_SEPARATOR in n]
    if bad:
        raise ValueError(f"descriptors.sources: names {bad} must be letters, digits, '.', '-' or single '_'")
    first = tables[names[0]]
    for name in names[1:]:
        table = tables[name]
        if (table.task, list(table.class_names)) != (first.task, list(first.class_names)):
            raise ValueError(f"descriptors.sources: {name} is a {table.task} table of classes {table.class_names}, "
                             f"{names[0]} a {first.task} table of {first.class_names}: fuse tables of the same data")
        if sorted(c for c in table.rows.columns if c not in _NOT_IDENTITY) != \
                sorted(c for c in first.rows.columns if c not in _NOT_IDENTITY):
            raise ValueError(f"descriptors.sources: the rows of {name} ({list(table.rows.columns)}) and of "
                             f"{names[0]} ({list(first.rows.columns)}) describe different things")
    positions = {name: {identity: i for i, identity in enumerate(row_identity(tables[name].rows))} for name in names}
    base = row_identity(first.rows)
    lacking = [[n for n in names[1:] if identity not in positions[n]] for identity in base]
    keep = [i for i, sources in enumerate(lacking) if not sources]
    missing = [(i, sources) for i, sources in enumerate(lacking) if sources]
    if not keep:
        raise ValueError(f"descriptors.sources {names}: no row has features from every source")
    blocks, skipped = [], [tables[n].skipped.reindex(columns=["path", "reason"]).assign(
        reason=lambda frame, n=n: f"{n}: " + frame["reason"].astype(str)) for n in names]
    for name in names:
        table = tables[name]
        order = np.array([positions[name][base[i]] for i in keep], dtype=int)
        if name != names[0]:
            targets, groups = np.asarray(table.targets)[order], table.rows["group"].astype(str).to_numpy()[order]
            if not np.array_equal(targets, np.asarray(first.targets)[keep]) or \
                    not np.array_equal(groups, first.rows["group"].astype(str).to_numpy()[keep]):
                raise ValueError(f"descriptors.sources: {name} and {names[0]} give the same rows other targets or "
                                 "groups: they were computed from different data")
        blocks.append(np.asarray(table.values, dtype=np.float32)[order])
    skipped.append(pd.DataFrame({"path": [first.rows["path"].iloc[i] for i, _ in missing],
                                 "reason": [f"no {', '.join(sources)} features" for _, sources in missing]}))
    columns = [f"{name}{SOURCE_SEPARATOR}{column}" for name in names for column in tables[name].columns]
    key = fingerprint({"fusion": {name: tables[name].key for name in names}, "version": TABLE_VERSION})
    return FeatureTable(np.concatenate(blocks, axis=1), columns, first.rows.iloc[keep].reset_index(drop=True),
                        np.asarray(first.targets)[keep], first.task, list(first.class_names), key,
                        pd.concat(skipped, ignore_index=True))


def standardise_per_group(table: FeatureTable) -> FeatureTable:
    """Each group's rows z-scored with that group's own mean and standard deviation per column
    (a column constant within a group becomes 0 there; a one-row group becomes all zeros, with a
    warning). Uses the feature values and groups only, never the targets."""
    values = np.asarray(table.values, dtype=np.float64)
    groups = table.rows["group"].astype(str).to_numpy()
    out = np.empty_like(values)
    single = []
    for group in np.unique(groups):
        index = np.flatnonzero(groups == group)
        block = values[index]
        std = block.std(axis=0)
        out[index] = (block - block.mean(axis=0)) / np.where(std > 0, std, 1.0)
        if len(index) == 1:
            single.append(group)
    if single:
        log.warning("normalise_per_group: %d groups have one row each (%s): their features are all 0", len(single),
                    ", ".join(single[:5]))
    return FeatureTable(out.astype(np.float32), list(table.columns), table.rows, table.targets, table.task,
                        list(table.class_names), fingerprint({"standardised_per_group": table.key}), table.skipped)
