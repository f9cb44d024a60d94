"""Honest statistics, as pure functions of predictions (NumPy, SciPy; no torch, no files):

- ``scoring``: metrics from confusion matrices, group-bootstrap intervals, the majority-class
  baseline, label-permutation tests, collapsed tasks, fold aggregates, ``HonestScoring``;
- ``regression``: the concordance correlation coefficient, MSE, MAE and their intervals;
- ``paired``: two models on the same test items: paired group-bootstrap intervals of the
  difference, McNemar's exact test, paired permutation tests, Holm's correction;
- ``calibration``: expected calibration error, Brier score, negative log-likelihood, the
  reliability diagram's bins and temperature scaling;
- ``resampling``: the group bootstrap's draws.
"""

from audioml.stats.calibration import (
                                       Reliability,
                                       apply_temperature,
                                       brier_score,
                                       calibration_scores,
                                       expected_calibration_error,
                                       fit_temperature,
                                       negative_log_likelihood,
                                       reliability_bins,
)
from audioml.stats.paired import PairedDifference, holm_adjust, mcnemar_exact, paired_classification, paired_regression
from audioml.stats.regression import concordance_cc, regression_point, regression_scores
from audioml.stats.resampling import group_bootstrap_draws
from audioml.stats.scoring import (
                                       SUMMARY_METRICS,
                                       HonestScoring,
                                       Scores,
                                       aggregate_folds,
                                       collapse_probabilities,
                                       confusion_matrices,
                                       group_bootstrap_confusions,
                                       group_confusions,
                                       group_strata,
                                       mean_interval,
                                       metric_name_parts,
                                       metrics_from_confusion,
                                       per_class_table,
                                       permutation_test,
)

__all__ = ["SUMMARY_METRICS", "confusion_matrices", "metrics_from_confusion", "metric_name_parts", "per_class_table",
           "group_bootstrap_confusions", "group_bootstrap_draws", "group_confusions", "group_strata",
           "permutation_test", "collapse_probabilities", "aggregate_folds", "mean_interval", "Scores",
           "HonestScoring", "concordance_cc", "regression_point", "regression_scores", "mcnemar_exact",
           "holm_adjust", "PairedDifference", "paired_classification", "paired_regression",
           "expected_calibration_error", "brier_score", "negative_log_likelihood", "Reliability",
           "reliability_bins", "calibration_scores", "fit_temperature", "apply_temperature"]
