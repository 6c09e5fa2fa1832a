"""Rankings of methods over several metrics, and paired comparisons of two methods over the same cases.

- Sum-rank (the MbLS papers' summary of their tables: Liu et al. CVPR 2022; Murugesan et al. MedIA 2023): for each
  metric, the methods are ranked by their mean over cases (1 = best; ties share the mean of their ranks); the
  ranks are summed over the metrics. Lower is better.
- Mean case-rank (the "rank then aggregate" of segmentation challenges, Maier-Hein et al., Nat. Commun. 2018):
  the methods are ranked on every case and every metric; the ranks are averaged over cases and metrics.
- Paired Wilcoxon signed-rank test (Wilcoxon 1945; ``scipy.stats.wilcoxon``, two-sided) on the per-case
  differences of two methods: is a difference beyond case-to-case variation?

A missing value (NaN: no surface for a distance, a case one method lacks) ranks last; a pair with a NaN side is
left out of the paired test.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["higher_is_better", "rank_values", "sum_rank", "mean_case_rank", "paired_wilcoxon"]

#: metric name prefixes that are better when higher (everything else is an error or a distance: lower is better)
_HIGHER = ("dsc", "dice", "val_mean_dice", "accuracy")


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better: DSC yes; ASD, HD95, ECE, CECE, Brier, NLL no."""
    return metric.lower().startswith(_HIGHER)


def rank_values(values: Sequence[float], higher: bool) -> np.ndarray:
    """Ranks ``1..n`` of ``values`` (1 = best), ties sharing the mean of their ranks, NaN ranked after all others
    (several NaNs tie)."""
    from scipy.stats import rankdata

    v = np.asarray(values, dtype=float)
    key = np.where(np.isnan(v), np.inf, -v if higher else v)
    return rankdata(key, method="average")


def _check(per_method: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str]) -> list[str]:
    methods = list(per_method)
    if len(methods) < 1:
        raise ValueError("ranking needs at least one method.")
    for m in methods:
        missing = [k for k in metrics if k not in per_method[m]]
        if missing:
            raise ValueError(f"method {m!r} has no values for metric(s) {missing}.")
    return methods


def sum_rank(means: Mapping[str, Mapping[str, float]], metrics: Sequence[str]) -> dict[str, float]:
    """Sum over ``metrics`` of each method's rank among the methods by its mean value.

    Args:
        means: ``{method: {metric: mean over cases}}``.
        metrics: the metrics ranked; direction from :func:`higher_is_better`.
    """
    methods = _check({m: {k: [v] for k, v in d.items()} for m, d in means.items()}, metrics)
    total = np.zeros(len(methods))
    for k in metrics:
        total += rank_values([means[m][k] for m in methods], higher_is_better(k))
    return {m: float(r) for m, r in zip(methods, total)}


def mean_case_rank(per_case: Mapping[str, Mapping[str, Sequence[float]]], metrics: Sequence[str]) -> dict[str, float]:
    """Mean over cases and ``metrics`` of each method's rank among the methods on that case.

    Args:
        per_case: ``{method: {metric: values over the same cases, in the same order}}``.
    """
    methods = _check(per_case, metrics)
    n = {len(per_case[m][k]) for m in methods for k in metrics}
    if len(n) != 1:
        raise ValueError(f"every method needs the same cases for every metric, got case counts {sorted(n)}.")
    cases = n.pop()
    if cases == 0:
        raise ValueError("mean_case_rank needs at least one case.")
    total = np.zeros(len(methods))
    for k in metrics:
        table = np.array([np.asarray(per_case[m][k], dtype=float) for m in methods])  # (methods, cases)
        for c in range(cases):
            total += rank_values(table[:, c], higher_is_better(k))
    return {m: float(r / (cases * len(metrics))) for m, r in zip(methods, total)}


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Per-case differences ``a - b`` and the two-sided Wilcoxon signed-rank test (scipy; exact for small samples).

    Pairs with a NaN side are dropped. Returns ``n`` (pairs kept), ``mean_diff``, ``median_diff``, ``statistic``
    (scipy's: the smaller of the positive- and negative-rank sums) and ``p_value``: 1 when every difference is 0,
    NaN without pairs.
    """
    from scipy.stats import wilcoxon

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired values must be two 1D sequences of the same length, got shapes {x.shape} and {y.shape}.")
    d = (x - y)[~(np.isnan(x) | np.isnan(y))]
    out = {"n": float(d.size), "mean_diff": math.nan, "median_diff": math.nan, "statistic": math.nan, "p_value": math.nan}
    if d.size == 0:
        return out
    out["mean_diff"], out["median_diff"] = float(d.mean()), float(np.median(d))
    if not np.any(d != 0):
        out.update(statistic=0.0, p_value=1.0)
        return out
    res = wilcoxon(d, zero_method="wilcox", alternative="two-sided")
    out.update(statistic=float(res.statistic), p_value=float(res.pvalue))
    return out
