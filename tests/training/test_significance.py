"""The significance tests against values worked out by hand and an independent loop implementation; undefined
cases give None with a reason, never NaN; the verdict claims a win only when it is significant."""

import math

import numpy as np
import pytest

from deepfuse.training.significance import diebold_mariano, long_run_variance, mcnemar_exact, verdict


def test_diebold_mariano_by_hand():
    """Squared errors (2, 1, 2, 1) against (1, 1, 1, 1): d = (3, 0, 3, 0), mean 1.5, variance 2.25 (divisor n),
    DM = 1.5 / sqrt(2.25 / 4) = 2, HLN factor sqrt((4 + 1 - 2) / 4) → sqrt(3). Student's t with 3 degrees of
    freedom: F(sqrt 3) = 1/2 + (1/pi)(1/2 + pi/4), so the two-sided p = 1/2 - 1/pi."""
    result = diebold_mariano([2.0, -1.0, 2.0, 1.0], [1.0, 1.0, -1.0, 1.0])
    assert result.statistic == pytest.approx(math.sqrt(3.0), rel=1e-12)
    assert result.p_value == pytest.approx(0.5 - 1.0 / math.pi, rel=1e-9)
    assert result.better == "second" and result.n == 4
    swapped = diebold_mariano([1.0, 1.0, -1.0, 1.0], [2.0, -1.0, 2.0, 1.0])
    assert swapped.statistic == pytest.approx(-math.sqrt(3.0)) and swapped.better == "first"
    assert swapped.p_value == pytest.approx(result.p_value)


def test_diebold_mariano_horizon_two_by_hand():
    """d = (3, 0, 3, 0): gamma_1 = 3 * (1.5 * -1.5) / 4 = -1.6875, Bartlett weight 1/2, V = 2.25 - 1.6875 =
    0.5625, DM = 1.5 / sqrt(0.5625 / 4) = 4, HLN factor sqrt((4 + 1 - 4 + 2/4) / 4) = sqrt(0.375) → sqrt(6)."""
    result = diebold_mariano([2.0, 1.0, 2.0, 1.0], [1.0, 1.0, 1.0, 1.0], horizon=2)
    assert result.statistic == pytest.approx(math.sqrt(6.0), rel=1e-12)


def _dm_by_loops(e1, e2, loss, horizon, lags):
    """An independent plain-Python transcription of the HLN-corrected DM statistic."""
    from scipy.stats import t

    f = (lambda e: e * e) if loss == "squared" else abs
    d = [f(a) - f(b) for a, b in zip(e1, e2, strict=True)]
    n = len(d)
    mean = sum(d) / n
    gamma = [sum((d[i] - mean) * (d[i - k] - mean) for i in range(k, n)) / n for k in range(lags + 1)]
    variance = gamma[0] + 2 * sum((1 - k / (lags + 1)) * gamma[k] for k in range(1, lags + 1))
    statistic = mean / math.sqrt(variance / n) * math.sqrt((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n)
    return statistic, 2 * t.sf(abs(statistic), n - 1)


@pytest.mark.parametrize("loss", ["squared", "absolute"])
@pytest.mark.parametrize("horizon, lags", [(1, None), (1, 5), (3, None)])
def test_diebold_mariano_matches_a_loop_implementation(loss, horizon, lags):
    rng = np.random.default_rng(7)
    truth = rng.standard_t(4, 301)
    model, naive = truth - 0.3 * rng.normal(size=301), truth - rng.normal(size=301)
    result = diebold_mariano(model, naive, loss, horizon, lags)
    statistic, p_value = _dm_by_loops(
        model.tolist(), naive.tolist(), loss, horizon, horizon - 1 if lags is None else lags
    )
    assert result.statistic == pytest.approx(statistic, rel=1e-10)
    assert result.p_value == pytest.approx(p_value, rel=1e-8)
    assert result.better == "first" and result.p_value < 1e-6  # the smaller errors are found, clearly


def test_long_run_variance_with_no_lags_is_the_variance():
    d = np.array([0.3, -1.2, 2.5, 0.0, 1.1])
    assert long_run_variance(d, 0) == pytest.approx(d.var())


def test_diebold_mariano_size_under_the_null():
    """Equally good forecasts: the test rejects at 5 % about 5 % of the time (1,000 series of 250 days)."""
    rng = np.random.default_rng(0)
    rejections = sum(diebold_mariano(rng.normal(size=250), rng.normal(size=250)).p_value < 0.05 for _ in range(1000))
    assert 30 <= rejections <= 75


def test_diebold_mariano_undefined_cases_are_none_with_a_reason():
    same = diebold_mariano([1.0, 2.0, -3.0], [-1.0, 2.0, 3.0])
    assert same.statistic is None and same.p_value is None and "equal on every day" in same.reason
    constant = diebold_mariano([2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0])
    assert constant.p_value is None and constant.better == "second" and "same (3) on every day" in constant.reason
    short = diebold_mariano([1.0, 2.0], [0.0, 0.0])
    assert short.p_value is None and "2 days" in short.reason
    with pytest.raises(ValueError, match="loss must be"):
        diebold_mariano([1.0] * 4, [0.0] * 4, loss="hinge")
    with pytest.raises(ValueError, match="one length"):
        diebold_mariano([1.0] * 4, [0.0] * 5)


def test_mcnemar_exact_by_hand():
    """8 days only the first is right, 2 only the second, 5 both, 3 neither: two-sided exact binomial p =
    2 * P(X <= 2 | n = 10, 1/2) = 2 * (1 + 10 + 45) / 1024."""
    first = np.array([1] * 8 + [0] * 2 + [1] * 5 + [0] * 3, dtype=bool)
    second = np.array([0] * 8 + [1] * 2 + [1] * 5 + [0] * 3, dtype=bool)
    result = mcnemar_exact(first, second)
    assert result.statistic == 8 and result.n == 10 and result.better == "first"
    assert result.p_value == pytest.approx(112 / 1024, rel=1e-12)
    agree = mcnemar_exact(first, first)
    assert agree.p_value is None and "same call on every day" in agree.reason


def test_verdict_claims_a_win_only_when_significant():
    better = diebold_mariano([1.0, 1.0, -1.0, 1.0], [2.0, -1.0, 2.0, 1.0])  # first better, p = 0.18
    assert verdict(better, "the model", "naive") == "the model is not distinguishable from naive (p = 0.182)"
    rng = np.random.default_rng(1)
    truth = rng.normal(size=500)
    clear = diebold_mariano(0.9 * truth, truth)  # errors 10 % smaller on every day
    assert verdict(clear, "the model", "naive").startswith("the model beats naive (p = ")
    worse = diebold_mariano(truth, 0.9 * truth)
    assert verdict(worse, "the model", "naive").startswith("the model is worse than naive (p = ")
    undefined = diebold_mariano([1.0, 2.0], [0.0, 0.0])
    assert verdict(undefined, "the model", "naive").startswith("the model cannot be tested against naive (")
    assert undefined.to_dict("dm") == {
        "dm_statistic": None,
        "dm_p_value": None,
        "dm_n": 2,
        "dm_reason": "undefined: 2 days",
    }
