"""The paired-difference interval of the reproduction's comparisons, checked against independent references:
the continuity-corrected score equation solved numerically, statsmodels' Wilson limits, and the exact
McNemar test it must agree with."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import binomtest, norm
from statsmodels.stats.proportion import proportion_confint

from cxrtl.evaluation.compare import paired_bootstrap
from cxrtl.paper.paired import min_resolvable, newcombe_paired, paired_counts, wilson_cc

Z = norm.ppf(0.975)


@pytest.mark.parametrize("k,n", [(0, 20), (1, 29), (15, 148), (81, 263), (5, 10), (29, 29), (9, 10)])
def test_wilson_cc_limits_solve_the_continuity_corrected_score_equation(k, n):
    # |p - pi| - 1/(2n) = z * sqrt(pi (1 - pi) / n), solved for pi below and above p by root finding.
    p = k / n

    def gap(pi, side):
        return side * (pi - p) - 1 / (2 * n) - Z * math.sqrt(pi * (1 - pi) / n)

    want_lo = 0.0 if k == 0 else brentq(gap, 1e-12, p, args=(-1,))
    want_hi = 1.0 if k == n else brentq(gap, p, 1 - 1e-12, args=(1,))
    lo, hi = wilson_cc(k, n)
    assert lo == pytest.approx(want_lo, abs=1e-9) and hi == pytest.approx(want_hi, abs=1e-9)
    plain = proportion_confint(k, n, method="wilson")  # the correction only ever widens
    assert lo <= plain[0] + 1e-12 and hi >= plain[1] - 1e-12


def _square_and_add(both, a_only, b_only, neither):
    """Newcombe's method 10 written out from statsmodels' Wilson limits (Fagerland et al., ch. 8)."""
    n = both + a_only + b_only + neither
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    l1, u1 = proportion_confint(both + a_only, n, method="wilson")
    l2, u2 = proportion_confint(both + b_only, n, method="wilson")
    rows = [both + a_only, b_only + neither, both + b_only, a_only + neither]
    psi = 0.0
    if min(rows) > 0:
        a = both * neither - a_only * b_only
        psi = (
            (a - n / 2) / math.sqrt(math.prod(rows)) if a > n / 2 else min(a, 0) / math.sqrt(math.prod(rows))
        )
    lower = p1 - p2 - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2 - 2 * psi * (p1 - l1) * (u2 - p2))
    upper = p1 - p2 + math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * psi * (p2 - l2) * (u1 - p1))
    return lower, upper


@pytest.mark.parametrize(
    "table", [(1, 1, 7, 12), (59, 6, 16, 80), (5, 0, 4, 1), (36, 12, 2, 0), (3, 0, 0, 7)]
)
def test_method_10_matches_the_square_and_add_written_out(table):
    assert newcombe_paired(*table, continuity=False) == pytest.approx(_square_and_add(*table), abs=1e-12)
    lo, hi = newcombe_paired(*table)  # method 11 (the default) is wider, around the same estimate
    lo10, hi10 = _square_and_add(*table)
    d = (table[1] - table[2]) / sum(table)
    assert lo <= lo10 + 1e-12 and hi >= hi10 - 1e-12 and lo <= d <= hi


@cache
def _exact_p(a_only, b_only):
    return 1.0 if a_only + b_only == 0 else binomtest(a_only, a_only + b_only, 0.5).pvalue


def test_interval_agrees_with_the_exact_mcnemar_test():
    # The case: 10 images, the two disagree on 4, all for b: -40 pp, exact p = 0.125.
    a = np.array([1] * 5 + [0] * 4 + [0], bool)
    b = np.array([1] * 5 + [1] * 4 + [0], bool)
    assert paired_counts(a, b) == (5, 0, 4, 1) and _exact_p(0, 4) == pytest.approx(0.125)
    boot = paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert boot[1] < 0  # the percentile bootstrap excluded 0 beside "not distinguishable"
    lo, hi = newcombe_paired(5, 0, 4, 1)
    assert lo < -0.4 < 0 < hi  # this interval does not
    # Every table of 10, 20 and 34 images: never p < 0.05 with 0 inside; rarely 0 outside at p >= 0.05.
    tables = outside = 0
    for n in (10, 20, 34):
        for a_only in range(n + 1):
            for b_only in range(n + 1 - a_only):
                p = _exact_p(a_only, b_only)
                for both in range(n - a_only - b_only + 1):
                    lo, hi = newcombe_paired(both, a_only, b_only, n - a_only - b_only - both)
                    tables += 1
                    if p < 0.05:
                        assert lo > 0 or hi < 0, (n, both, a_only, b_only)
                    elif lo > 0 or hi < 0:
                        outside += 1
    assert tables == 9827 and outside / tables < 0.02


def test_fewest_one_sided_disagreements_for_a_verdict():
    assert min_resolvable(0.05) == 6  # 2 * 0.5**6 = 0.031; 5 of 5 gives 0.0625
    assert _exact_p(6, 0) < 0.05 <= _exact_p(5, 0)
