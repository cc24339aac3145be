"""Figures of a multi-seed study: mean ± standard deviation, and a paired t-test.

The p-value comes from SciPy's ``ttest_rel`` when SciPy is installed, else
from the Student t distribution computed here (regularised incomplete beta
function by its continued fraction, Numerical Recipes §6.4), which agrees
with SciPy to about 1e-10.
"""

import math

import numpy as np


def mean_std(values):
    """Return the mean and sample standard deviation (ddof 1) of finite values.

    Args:
        values: Numbers (None and NaN are skipped).

    Returns:
        ``(mean, std, n)``; ``std`` is NaN with one value, both NaN with none.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(finite)
    if not n:
        return float("nan"), float("nan"), 0
    mean = sum(finite) / n
    if n == 1:
        return mean, float("nan"), 1
    return mean, float(np.std(finite, ddof=1)), n


def _betacf(a, b, x, iterations=300, eps=1e-15):
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iterations + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < eps:
            break
    return h


def regularized_beta(a, b, x):
    """Return the regularised incomplete beta function I_x(a, b).

    Args:
        a: Positive shape parameter.
        b: Positive shape parameter.
        x: A value in [0, 1].

    Returns:
        I_x(a, b) in [0, 1].
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast for x < (a + 1) / (a + b + 2).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t, df):
    """Return the two-sided p-value of a Student t statistic.

    ``P(|T| >= |t|) = I_{df / (df + t²)}(df / 2, 1 / 2)``.

    Args:
        t: The statistic.
        df: Degrees of freedom (> 0).

    Returns:
        The p-value in [0, 1].
    """
    if math.isinf(t):
        return 0.0
    return regularized_beta(df / 2.0, 0.5, df / (df + t * t))


def paired_comparison(values, baseline):
    """Compare a model with a baseline over the same seeds: a paired t-test.

    Args:
        values: The model's figure per seed.
        baseline: The baseline's figure for the same seeds, in the same order.

    Returns:
        A dict: ``n`` (pairs), ``mean_diff`` and ``std_diff`` (sample
        standard deviation of the differences), ``t``, ``p`` (two-sided; NaN
        with fewer than 2 pairs or differences that do not vary) and
        ``method`` (``scipy`` or ``math``).

    Raises:
        ValueError: The two lists differ in length.
    """
    if len(values) != len(baseline):
        raise ValueError(f"{len(values)} values against {len(baseline)} baseline values")
    diffs = [float(a) - float(b) for a, b in zip(values, baseline, strict=True)]
    mean, std, n = mean_std(diffs)
    result = {"n": n, "mean_diff": mean, "std_diff": std, "t": float("nan"), "p": float("nan")}
    result["method"] = "math"
    if n < 2 or not std > 0:
        return result
    t = mean / (std / math.sqrt(n))
    result["t"] = t
    try:
        from scipy import stats
    except ImportError:
        result["p"] = t_two_sided_p(t, n - 1)
        return result
    result["p"] = float(stats.ttest_rel(values, baseline).pvalue)
    result["method"] = "scipy"
    return result
