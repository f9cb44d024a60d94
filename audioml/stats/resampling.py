"""The group bootstrap's draws, shared by every statistic resampled over groups."""

from __future__ import annotations

import numpy as np

__all__ = ["group_bootstrap_draws"]


def group_bootstrap_draws(strata: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """How often each group is drawn in each of ``n_boot`` resamples ``(n_boot, groups)``: per
    stratum (``strata``: one id per group), as many draws with replacement as the stratum has
    groups. Every statistic that is a sum over groups (confusion matrices, calibration bins,
    sums of squares) is resampled by a product with these counts."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    draws = np.zeros((n_boot, strata.shape[0]), dtype=np.int64)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        draws[:, members] = rng.multinomial(len(members), np.full(len(members), 1.0 / len(members)), size=n_boot)
    return draws
