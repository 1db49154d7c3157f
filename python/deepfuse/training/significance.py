"""Is a forecast better than a trivial one, or is the difference noise? Two paired tests over the same days.

- ``diebold_mariano``: equal predictive accuracy of two forecasts of one series (Diebold & Mariano 1995) with the
  Harvey, Leybourne & Newbold (1997) small-sample correction. Loss differential ``d_t = L(e1_t) - L(e2_t)``
  (squared or absolute errors); ``DM = mean(d) / sqrt(V / n)`` where ``V`` is the Newey-West long-run variance of
  ``d`` (autocovariances with divisor n, Bartlett weights ``1 - k / (lags + 1)``; ``lags = horizon - 1`` by
  default, so plain variance at horizon 1); ``HLN = DM * sqrt((n + 1 - 2h + h(h - 1) / n) / n)`` against Student's
  t with n - 1 degrees of freedom, two-sided. At horizon 1 this is R's ``forecast::dm.test``; beyond, its
  ``varestimator = "bartlett"``.
- ``mcnemar_exact``: two classifiers' right/wrong on the same days; under equal accuracy the days where exactly one
  is right split 50/50, so the count of one kind is Binomial(discordant, 1/2); exact two-sided p-value.

Both return None for the statistic and p-value, with a ``reason``, when the test is undefined (too few days,
a loss differential without variance, no discordant day): never NaN, so the results go into strict JSON.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LOSSES = {"squared": np.square, "absolute": np.abs}


@dataclass(frozen=True)
class SignificanceResult:
    statistic: float | None  # None when the test is undefined here
    p_value: float | None  # two-sided
    better: str | None  # "first", "second" or None (equal), by the mean loss / the count of right calls
    n: int
    reason: str = ""  # why statistic / p_value are None

    def to_dict(self, prefix: str) -> dict:
        return {f"{prefix}_{k}": v for k, v in asdict(self).items() if k != "better" and (k != "reason" or v)}


def long_run_variance(d: np.ndarray, lags: int) -> float:
    """Newey-West (Bartlett-weighted) long-run variance of ``d``: gamma_0 + 2 sum_k (1 - k/(lags+1)) gamma_k,
    autocovariances with divisor n."""
    n = len(d)
    centred = d - d.mean()
    variance = float(centred @ centred) / n
    for k in range(1, min(lags, n - 1) + 1):
        variance += 2.0 * (1.0 - k / (lags + 1)) * float(centred[k:] @ centred[:-k]) / n
    return variance


def diebold_mariano(
    errors_first: np.ndarray,
    errors_second: np.ndarray,
    loss: str = "squared",
    horizon: int = 1,
    lags: int | None = None,
) -> SignificanceResult:
    """HLN-corrected Diebold-Mariano test of the first forecast's errors against the second's (same days, same
    order). A negative statistic: the first forecast has the smaller loss."""
    # scipy: optional (it comes with scikit-learn, deepfuse[models]); loaded by the test that uses it
    from scipy.stats import t as student_t

    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if horizon < 1:
        raise ValueError(f"horizon must be at least 1, got {horizon}")
    first, second = np.asarray(errors_first, dtype=np.float64), np.asarray(errors_second, dtype=np.float64)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"two 1-D error series of one length expected, got {first.shape} and {second.shape}")
    d = LOSSES[loss](first) - LOSSES[loss](second)
    n = len(d)
    if n < 3 or not np.isfinite(d).all():
        reason = f"{n} days" if n < 3 else "non-finite errors"
        return SignificanceResult(None, None, None, n, f"undefined: {reason}")
    mean = float(d.mean())
    better = "first" if mean < 0 else "second" if mean > 0 else None
    variance = long_run_variance(d, horizon - 1 if lags is None else lags)
    # relative to the losses' own size: a differential equal to rounding noise has no variance worth testing
    scale = max(float(np.abs(d).max()), 1e-300)
    if not variance > (1e-12 * scale) ** 2:
        reason = (
            "the two forecasts' losses are equal on every day"
            if better is None
            else (f"the loss difference is the same ({mean:.3g}) on every day: no variance to test against")
        )
        return SignificanceResult(None, None, better, n, f"undefined: {reason}")
    correction = math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    statistic = mean / math.sqrt(variance / n) * correction
    p_value = float(2.0 * student_t.sf(abs(statistic), df=n - 1))
    return SignificanceResult(float(statistic), min(p_value, 1.0), better, n)


def mcnemar_exact(first_right: np.ndarray, second_right: np.ndarray) -> SignificanceResult:
    """Exact McNemar test of two classifiers' right (True) / wrong calls on the same items. The statistic is the
    count of items only the first got right; n is the number of discordant items (only one got right)."""
    # scipy: optional (it comes with scikit-learn, deepfuse[models]); loaded by the test that uses it
    from scipy.stats import binomtest

    first, second = np.asarray(first_right, dtype=bool), np.asarray(second_right, dtype=bool)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(f"two 1-D series of one length expected, got {first.shape} and {second.shape}")
    only_first, only_second = int((first & ~second).sum()), int((~first & second).sum())
    discordant = only_first + only_second
    better = "first" if only_first > only_second else "second" if only_second > only_first else None
    if discordant == 0:
        return SignificanceResult(None, None, None, 0, "undefined: the two make the same call on every day")
    p_value = float(binomtest(only_first, discordant, 0.5).pvalue)
    return SignificanceResult(float(only_first), min(p_value, 1.0), better, discordant)


def verdict(result: SignificanceResult, what: str, baseline: str, level: float = 0.05) -> str:
    """One phrase: "<what> beats <baseline> (p = ...)" only when the difference is significant at ``level`` and
    in the model's favour ("first"); otherwise "worse than", "not distinguishable from" or "cannot be tested"."""
    if result.p_value is None:
        return f"{what} cannot be tested against {baseline} ({result.reason})"
    shown = f"p = {result.p_value:.3g}"
    if result.p_value < level:
        if result.better == "first":
            return f"{what} beats {baseline} ({shown})"
        return f"{what} is worse than {baseline} ({shown})"
    return f"{what} is not distinguishable from {baseline} ({shown})"
