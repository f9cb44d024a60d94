"""Honest statistics, as pure functions of predictions (NumPy, SciPy; no torch, no files):

- ``scoring``: metrics from confusion matrices, group-bootstrap intervals, the majority-class
  baseline, label-permutation tests, collapsed tasks, fold aggregates, ``HonestScoring``;
- ``regression``: the concordance correlation coefficient, MSE, MAE and their intervals;
- ``resampling``: the group bootstrap's draws.
"""

from audioml.stats.regression import concordance_cc, regression_point, regression_scores
from audioml.stats.resampling import group_bootstrap_draws
from audioml.stats.scoring import (SUMMARY_METRICS, HonestScoring, Scores, aggregate_folds, collapse_probabilities,
                                   confusion_matrices, group_bootstrap_confusions, group_confusions, group_strata,
                                   mean_interval, metric_name_parts, metrics_from_confusion, per_class_table,
                                   permutation_test)

__all__ = ["SUMMARY_METRICS", "confusion_matrices", "metrics_from_confusion", "metric_name_parts", "per_class_table",
           "group_bootstrap_confusions", "group_bootstrap_draws", "group_confusions", "group_strata",
           "permutation_test", "collapse_probabilities", "aggregate_folds", "mean_interval", "Scores",
           "HonestScoring", "concordance_cc", "regression_point", "regression_scores"]
