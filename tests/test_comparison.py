"""Paired differences with a Student-t interval, against SciPy."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elta_core.comparison import paired_difference, t_quantile

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("dof", [1, 2, 3, 4, 5, 6, 9, 10, 29, 30, 100])
@pytest.mark.parametrize("probability", [0.6, 0.9, 0.95, 0.975, 0.995])
def test_t_quantile_equals_scipy(dof, probability):
    assert t_quantile(probability, dof) == pytest.approx(scipy_stats.t.ppf(probability, dof), rel=1e-9, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 12), st.integers(0, 2**31 - 1))
def test_interval_equals_scipy_and_is_centred_on_the_mean_difference(n, seed):
    rng = np.random.default_rng(seed)
    baseline = rng.normal(0.8, 0.05, n)
    method = baseline + rng.normal(0.01, 0.02, n)
    result = paired_difference(method, baseline)
    differences = method - baseline
    low, high = scipy_stats.t.interval(0.95, n - 1, loc=differences.mean(), scale=scipy_stats.sem(differences))
    assert (result.low, result.high) == pytest.approx((low, high), rel=1e-9, abs=1e-12)
    assert result.mean == pytest.approx(differences.mean()) and result.n == n
    assert result.excludes_zero == (low > 0 or high < 0)


def test_a_constant_shift_is_significant_and_noise_is_not():
    baseline = [0.80, 0.82, 0.79, 0.81, 0.80]
    shifted = paired_difference([b + 0.01 for b in baseline], baseline)
    assert shifted.excludes_zero and shifted.low == pytest.approx(0.01) and shifted.describe().endswith("*")
    noisy = paired_difference([0.81, 0.80, 0.80, 0.82, 0.79], baseline)
    assert not noisy.excludes_zero and "*" not in noisy.describe()


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="paired runs"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2 paired runs"):
        paired_difference([1.0], [1.0])
    with pytest.raises(ValueError, match="a NaN result has no difference"):
        paired_difference([1.0, math.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="confidence"):
        paired_difference([1.0, 2.0], [1.0, 1.5], confidence=95)
    with pytest.raises(ValueError, match="dof"):
        t_quantile(0.975, 0)
