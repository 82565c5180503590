"""The statistics of a comparison over seeds: a row's mean and standard deviation, the per-seed
differences of two rows, the paired t-test of a row against the reference row (or of an
increment's two rows), and Holm's adjustment of the p-values of one metric (every row tested
against the same reference forms one family; so do the listed increments).

With 3 seeds the t-test has 2 degrees of freedom and little power: a p above 0.05 does not show
that two models are equal, and only large, consistent gaps come out significant.
"""

import math
import warnings

import numpy as np


def mean_std(values):
    """Mean and sample standard deviation (n - 1) of the finite values (over seeds); NaN when
    there are none (the deviation: fewer than two)."""
    values = [value for value in values if value is not None and math.isfinite(value)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def paired_differences(values, reference_values):
    """``{seed: value - reference value}`` over the seeds both have."""
    return {
        seed: values[seed] - reference_values[seed] for seed in sorted(set(values) & set(reference_values))
    }


def paired_test(values, reference_values):
    """Paired t-test (``scipy.stats.ttest_rel``) of ``{seed: value}`` against
    ``reference_values`` over the seeds both have: ``(mean difference, p-value, n)``."""
    from scipy import stats

    seeds = sorted(set(values) & set(reference_values))
    a = np.array([values[seed] for seed in seeds], dtype=float)
    b = np.array([reference_values[seed] for seed in seeds], dtype=float)
    if len(seeds) < 2:
        return (float(np.mean(a - b)) if seeds else math.nan), math.nan, len(seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical differences: p is nan
        p_value = float(stats.ttest_rel(a, b).pvalue)
    return float(np.mean(a - b)), p_value, len(seeds)


def paired_summary(values, reference_values):
    """``{seed: value}`` against ``reference_values`` over the seeds both have: the per-seed
    ``differences``, their ``mean`` and sample ``std``, the paired t-test's ``p`` and ``n``."""
    differences = paired_differences(values, reference_values)
    mean, std = mean_std(differences.values())
    _, p_value, n = paired_test(values, reference_values)
    return {"differences": differences, "mean": mean, "std": std, "p": p_value, "n": n}


def holm_adjusted(p_values):
    """Holm's step-down adjustment of ``{name: p}`` for testing them together (NaN stays NaN).

    Sorted ascending, the ``i``-th of ``m`` p-values becomes ``max_{j <= i} min(1, (m - j + 1) p_j)``
    (S. Holm, "A simple sequentially rejective multiple test procedure", Scand. J. Statist. 1979).
    """
    finite = sorted((p, name) for name, p in p_values.items() if p is not None and math.isfinite(p))
    adjusted = {name: math.nan for name in p_values}
    running_max = 0.0
    for rank, (p_value, name) in enumerate(finite):
        running_max = max(running_max, min(1.0, (len(finite) - rank) * p_value))
        adjusted[name] = running_max
    return adjusted


def paired_power(effect, n, alpha=0.05):
    """The power of a two-sided paired t-test at level ``alpha`` with ``n`` pairs when the paired
    differences have mean / standard deviation ``effect``: ``P(|T| > t_crit)`` for the noncentral
    t with ``n - 1`` degrees of freedom and noncentrality ``effect * sqrt(n)``, integrated over
    its chi-distributed scale where scipy's ``nct`` gives NaN (a large noncentrality: the NaN made
    a clear separation look as if it needed more seeds)."""
    from scipy import integrate, stats

    if n < 2 or not math.isfinite(effect):
        return math.nan
    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = abs(effect) * math.sqrt(n)
    power = stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality)
    if math.isfinite(power):  # fast, and the integral below agrees with it to 1e-10
        return float(power)

    def rejected(scale):  # P(|Z + noncentrality| > critical * scale), scale = chi / sqrt(df)
        bound = critical * scale
        return stats.norm.sf(bound - noncentrality) + stats.norm.cdf(-bound - noncentrality)

    # over the chi distribution's mass (quad over (0, inf) misses its narrow peak at large df)
    low, high = stats.chi.ppf(1e-15, df), stats.chi.isf(1e-15, df)
    power, _ = integrate.quad(
        lambda x: rejected(x / math.sqrt(df)) * stats.chi.pdf(x, df),
        low,
        high,
        points=[math.sqrt(max(df - 1, 0))],
        epsabs=1e-10,
        limit=200,
    )
    return float(min(max(power, 0.0), 1.0))


def seeds_needed(differences, alpha=0.05, power=0.8, most=1000):
    """The fewest seeds with which a two-sided paired t-test at level ``alpha`` separates two rows
    with probability ``power``, when their per-seed differences behave as ``differences`` do (the
    effect: their mean over their sample standard deviation). ``math.inf`` when the differences
    are all zero or more than ``most`` seeds would be needed; NaN with fewer than two."""
    values = np.asarray([value for value in differences if math.isfinite(value)], dtype=float)
    if len(values) < 2:
        return math.nan
    spread = float(np.std(values, ddof=1))
    mean = float(np.mean(values))
    if spread == 0:
        return 2 if mean != 0 else math.inf
    effect = mean / spread
    if paired_power(effect, most, alpha) < power:
        return math.inf
    low, high = 1, most  # the power grows with n: the fewest seeds by bisection
    while high - low > 1:
        middle = (low + high) // 2
        if paired_power(effect, middle, alpha) >= power:
            high = middle
        else:
            low = middle
    return high
