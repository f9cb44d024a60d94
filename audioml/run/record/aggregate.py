"""Runs that differ only in one key (the seed, a fold) summarised per configuration: the mean,
standard deviation and t-interval of each metric over that key (``audioml.stats.mean_interval``),
and whether two configurations' intervals overlap.

Works on the rows of ``audioml.run.record.listing.collect_runs`` (``params.*``, ``metrics.*``, ``status``).
A configuration is the set of the runs' params other than the aggregated key, the logger's, and
those that follow the key in every run (``data.split_seed: ${seed}``).
"""

from __future__ import annotations

import fnmatch
import itertools
from collections.abc import Sequence

import pandas as pd

from audioml.stats import mean_interval

__all__ = ["aggregate_runs", "overlap_notes", "aggregate_report", "DEFAULT_PATTERNS", "HIDDEN_PATTERNS"]

#: Aggregated unless told otherwise: the test metrics, without per-class values and bounds.
DEFAULT_PATTERNS = ("test/*",)
HIDDEN_PATTERNS = ("test/precision_*", "test/recall_*", "test/f1_*", "*_ci_low", "*_ci_high")
_NOT_CONFIGURATION = ("logger.", "hydra.", "paths.")


def _configuration_params(runs: pd.DataFrame, key: str) -> list[str]:
    """The param columns that tell configurations apart (see module docs)."""
    key_values = runs[f"params.{key}"].astype(str)
    names = []
    for column in runs.columns:
        if not column.startswith("params.") or column == f"params.{key}":
            continue
        if column[len("params."):].startswith(_NOT_CONFIGURATION):
            continue
        values = runs[column].astype(str)
        if values.nunique(dropna=False) > 1 and (values == key_values).all():
            continue  # interpolated from the key (data.split_seed: ${seed})
        names.append(column)
    return names


def aggregate_runs(runs: pd.DataFrame, key: str, metrics: Sequence[str] | None = None,
                   confidence: float = 0.95) -> pd.DataFrame:
    """One row per configuration of the FINISHED ``runs``: ``configuration`` (the params that
    differ between configurations, ``name=value``), ``n`` (runs), ``<key>`` (their values), and
    per metric matching ``metrics`` (patterns, default ``DEFAULT_PATTERNS`` less
    ``HIDDEN_PATTERNS``) ``<m> mean``, ``<m> std`` (ddof=1), ``<m> ci_low``, ``<m> ci_high`` (the
    ``confidence`` t-interval of the mean; NaN for one run). Rows in the order of their params' values.

    Raises ``ValueError`` when no run has the param ``key``, none has FINISHED or no metric matches.
    """
    if f"params.{key}" not in runs:
        params = sorted(c[len("params."):] for c in runs.columns if c.startswith("params."))
        raise ValueError(f"--aggregate {key}: the runs have no param {key!r} (they have e.g. {params[:8]})")
    runs = runs[runs["status"] == "FINISHED"] if "status" in runs else runs
    if runs.empty:
        raise ValueError(f"--aggregate {key}: no run has FINISHED (yet): nothing to aggregate")
    names = [c[len("metrics."):] for c in runs.columns if c.startswith("metrics.")]
    patterns = tuple(metrics) if metrics else DEFAULT_PATTERNS
    hidden = () if metrics else HIDDEN_PATTERNS
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)
              and not any(fnmatch.fnmatchcase(n, h) for h in hidden)]
    if not chosen:
        raise ValueError(f"--aggregate {key}: no finished run has a metric matching {list(patterns)}")
    chosen.sort()
    configuration = _configuration_params(runs, key)
    identity = runs[configuration].astype(str).fillna("") if configuration else pd.DataFrame(index=runs.index)
    varying = [c for c in configuration if identity[c].nunique() > 1]
    groups = identity.apply(tuple, axis=1) if configuration else pd.Series([()] * len(runs), index=runs.index)
    rows = []
    for group in sorted(dict.fromkeys(groups), key=lambda g: [_natural(v) for v in g]):
        members = runs[groups == group]
        label = " ".join(f"{c[len('params.'):]}={identity.loc[members.index[0], c]}" for c in varying)
        row = {"configuration": label or "(all runs)", "n": len(members),
               key: ",".join(sorted(members[f"params.{key}"].astype(str), key=_natural))}
        for name in chosen:
            values = members[f"metrics.{name}"].dropna().to_numpy(dtype=float)
            mean, std, low, high = mean_interval(values, confidence)
            row.update({f"{name} mean": mean, f"{name} std": std, f"{name} ci_low": low, f"{name} ci_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


def _natural(text: str):
    try:
        return (0, float(text), text)
    except ValueError:
        return (1, 0.0, text)


def overlap_notes(table: pd.DataFrame, metric: str, confidence: float = 0.95) -> list[str]:
    """One line per pair of configurations (adjacent ones by mean when there are more than ten):
    whether their intervals of ``metric`` overlap (the difference may be the seed's) or not."""
    if f"{metric} mean" not in table or len(table) < 2:
        return []
    ordered = table.sort_values(f"{metric} mean", ascending=False, kind="stable").reset_index(drop=True)
    pairs = (itertools.combinations(range(len(ordered)), 2) if len(ordered) <= 10
             else ((i, i + 1) for i in range(len(ordered) - 1)))
    lines = []
    for first, second in pairs:
        a, b = ordered.iloc[first], ordered.iloc[second]
        bounds = [(row[f"{metric} ci_low"], row[f"{metric} ci_high"]) for row in (a, b)]
        if any(pd.isna(v) for bound in bounds for v in bound):
            lines.append(f"{metric}: {a['configuration']} vs {b['configuration']}: no interval (one run)")
            continue
        overlap = bounds[0][0] <= bounds[1][1] and bounds[1][0] <= bounds[0][1]
        verdict = ("intervals overlap: the difference may be the seed's" if overlap
                   else "intervals do not overlap")
        lines.append(f"{metric}: {a['configuration']} ({a[f'{metric} mean']:.4f}) vs {b['configuration']} "
                     f"({b[f'{metric} mean']:.4f}): {verdict} ({confidence:.0%} t-intervals)")
    return lines


def aggregate_report(table: pd.DataFrame, key: str, metric: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """The table to print (one cell per metric: ``mean ± std [low, high]``) and the overlap notes
    of ``metric`` (default ``test/macro_f1`` when aggregated, else the first metric)."""
    metrics = [c[:-len(" mean")] for c in table.columns if c.endswith(" mean")]
    shown = table[["configuration", "n", key]].copy()
    for name in metrics:
        shown[name] = [_cell(row, name) for _, row in table.iterrows()]
    headline = metric if metric in metrics else ("test/macro_f1" if "test/macro_f1" in metrics else metrics[0])
    return shown, overlap_notes(table, headline)


def _cell(row: pd.Series, name: str) -> str:
    mean, std, low, high = (row[f"{name} {part}"] for part in ("mean", "std", "ci_low", "ci_high"))
    if pd.isna(mean):
        return ""
    if pd.isna(std):
        return f"{mean:.4f}"
    return f"{mean:.4f} ± {std:.4f} [{low:.4f}, {high:.4f}]"
