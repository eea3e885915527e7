import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from elta_core import losses, metrics
from tests import reference as ref
from tests.flavours import FLAVOURS, assert_close, make, rounded, same_kind


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_emd_matches_reference(flavour, rng):
    pred, target = rng.dirichlet(np.ones(10), 16), rng.dirichlet(np.ones(10), 16)
    result = losses.emd(make(pred, flavour), make(target, flavour))
    assert same_kind(result, flavour)
    assert_close(result, ref.emd(rounded(pred, flavour), rounded(target, flavour)), flavour, scale=10)


def test_emd_batch_form_and_reductions(rng):
    pred, target = rng.dirichlet(np.ones(5), 8), rng.dirichlet(np.ones(5), 8)
    gap = np.cumsum(pred, 1) - np.cumsum(target, 1)
    assert losses.emd(pred, target, form="batch") == pytest.approx(np.sqrt(np.mean(gap**2)))
    per_sample = losses.emd(pred, target, reduction="none")
    assert per_sample.shape == (8,)
    assert losses.emd(pred, target, reduction="sum") == pytest.approx(per_sample.sum())
    assert losses.emd(pred, target, r=1) == pytest.approx(np.mean(np.abs(gap)))


def test_emd_gradient_is_zero_not_nan_at_a_perfect_prediction():
    torch = pytest.importorskip("torch")
    logits = torch.randn(4, 10, requires_grad=True)
    target = torch.softmax(logits, 1).detach()
    losses.emd(torch.softmax(logits, 1), target).backward()
    assert torch.isfinite(logits.grad).all()


def test_scores_and_counts(rng):
    counts = rng.integers(0, 40, (7, 10))
    counts[:, 4] += 1
    dist = losses.distribution_from_counts(counts)
    np.testing.assert_allclose(dist.sum(1), 1)
    np.testing.assert_allclose(losses.scores_from_distribution(dist), (counts / counts.sum(1, keepdims=True)) @ np.arange(1, 11))
    para = np.arange(1.0, 5.01, 0.5)
    np.testing.assert_allclose(losses.scores_from_distribution(dist[:, :9] / dist[:, :9].sum(1, keepdims=True), para).max() <= 5, True)
    with pytest.raises(ValueError, match="row 1 has no votes"):
        losses.distribution_from_counts(np.array([[1, 2], [0, 0]]))
    with pytest.raises(ValueError, match="counts: expected non-negative"):
        losses.distribution_from_counts(np.array([[1, -2]]))


def test_mse(rng):
    a, b = rng.normal(size=9), rng.normal(size=(9, 1))
    assert losses.mse(a, b) == pytest.approx(np.mean((a - b[:, 0]) ** 2))
    with pytest.raises(ValueError, match="target"):
        losses.mse(a, b[:5])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_metrics_match_scipy(flavour, rng):
    true = np.round(rng.normal(5.4, 1.1, 200), 1)
    pred = np.round(true + rng.normal(0, 0.6, 200), 1)
    p, t = rounded(pred, flavour), rounded(true, flavour)
    result = metrics.evaluate(make(pred, flavour), make(true, flavour))
    assert result["plcc"] == pytest.approx(scipy.stats.pearsonr(p, t)[0], rel=1e-9)
    assert result["srcc"] == pytest.approx(scipy.stats.spearmanr(p, t)[0], rel=1e-9)
    assert result["accuracy"] == pytest.approx(np.mean((p > 5) == (t > 5)))
    low, medium, high = ref.segment_mae(p, t)
    assert (result["mae_low"], result["mae_medium"], result["mae_high"]) == pytest.approx((low, medium, high), rel=1e-9)


def test_segments_cover_every_sample_once():
    true = np.arange(10.0)
    pred = true + np.array([5, 5, 0, 0, 0, 0, 0, 0, 1, 1.0])
    segments = metrics.segment_mae(pred, true)
    assert segments == (5.0, 0.0, 1.0)
    assert metrics.segment_sizes(10) == (2, 6, 2)
    assert metrics.segment_sizes(3) == (1, 1, 1)
    with pytest.raises(ValueError, match="at least 3"):
        metrics.segment_mae([1.0, 2.0], [1.0, 2.0])


@given(hnp.arrays(np.float64, st.integers(5, 60), elements=st.floats(1, 10)), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_metrics_are_invariant_to_order(true, seed):
    generator = np.random.default_rng(seed)
    pred = true + generator.normal(0, 1, true.size)
    perm = generator.permutation(true.size)
    a, b = metrics.segment_mae(pred, true), metrics.segment_mae(pred[perm], true[perm])
    assert a == pytest.approx(b)


def test_constant_prediction_warns_and_gives_nan():
    with pytest.warns(RuntimeWarning, match="constant"):
        assert np.isnan(metrics.plcc(np.ones(5), np.arange(5.0)))


def test_metrics_accept_distributions(rng):
    pred, true = rng.dirichlet(np.ones(10), 30), rng.dirichlet(np.ones(10), 30)
    values = np.arange(1, 11)
    assert metrics.plcc(pred, true) == pytest.approx(metrics.plcc(pred @ values, true @ values))


@given(st.integers(0, 2**31 - 1), st.integers(5, 120), st.booleans())
@settings(max_examples=40, deadline=None)
def test_accumulated_metrics_equal_the_whole_set_for_any_batching(seed, size, score_sorted):
    rng = np.random.default_rng(seed)
    true = np.round(rng.uniform(1, 10, size), 1)
    pred = true + rng.normal(0, 1, size)
    order = np.argsort(true, kind="stable") if score_sorted else rng.permutation(size)
    cuts = np.sort(rng.choice(np.arange(1, size), size=min(size - 1, rng.integers(0, 6)), replace=False))
    accumulator = metrics.MetricAccumulator()
    for rows in np.split(order, cuts):
        if rows.size:
            accumulator.update(pred[rows], true[rows])
    expected = metrics.evaluate(pred, true)
    for key, value in accumulator.compute().items():
        assert value == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key


def test_accumulators_merge_sync_and_refuse_mismatches():
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 10, 60)
    pred = true + rng.normal(0, 1, 60)
    ranks = [metrics.MetricAccumulator() for _ in range(3)]
    for k, rows in enumerate(np.array_split(np.arange(60), 3)):
        ranks[k].update(pred[rows], true[rows])
    synced = ranks[1].sync(lambda state: [r.state_dict() for r in ranks])
    assert len(synced) == 60 and synced.compute() == pytest.approx(metrics.evaluate(pred, true))
    merged = metrics.MetricAccumulator().merge(ranks[0]).merge(ranks[1].state_dict()).merge(ranks[2])
    assert merged.compute() == pytest.approx(metrics.evaluate(pred, true))
    with pytest.raises(ValueError, match="other: expected an accumulator with the same threshold"):
        metrics.MetricAccumulator(threshold=6.0).merge(ranks[0])
    with pytest.raises(ValueError, match="pred: no samples were accumulated"):
        metrics.MetricAccumulator().compute()
    result = metrics.evaluate(pred, true)
    errors = (pred - true) ** 2
    assert result["mse"] == pytest.approx(errors.mean())
    order = np.lexsort((pred, true))
    assert result["mse_low"] == pytest.approx(errors[order][:12].mean())


def test_tail_segments_depend_on_the_true_scores_alone():
    """Tied true scores at the 20 % boundaries were split by the predicted score, so the
    best-predicted tied samples filled the tails (L = H = 0.5 here)."""
    from elta_core import metrics

    true = np.array([2, 2, 2, 5, 5, 5, 5, 8, 8, 8], dtype=float)
    pred = np.array([2, 3, 4, 5, 5, 5, 5, 8, 7, 6], dtype=float)
    result = metrics.segment_mae(pred, true)
    assert (result.low, result.high) == (pytest.approx(1.0), pytest.approx(1.0))
    shuffled = np.random.default_rng(0).permutation(10)
    assert metrics.segment_mae(pred[shuffled], true[shuffled]) == pytest.approx(tuple(result))
    # the predictions within a tied group do not move its share: reversed, the same
    reversed_within = np.array([4, 3, 2, 5, 5, 5, 5, 6, 7, 8], dtype=float)
    assert metrics.segment_mae(reversed_within, true) == pytest.approx(tuple(result))
    assert metrics.evaluate(pred, true)["mae_low"] == pytest.approx(1.0)
    accumulator = metrics.MetricAccumulator()
    accumulator.update(pred[:4], true[:4])
    accumulator.update(pred[4:], true[4:])
    assert accumulator.compute()["mae_high"] == pytest.approx(1.0)
    assert list(metrics.segments(true)) == ["low"] * 3 + ["medium"] * 4 + ["high"] * 3
    # no ties: every sample in one segment, as before
    distinct = np.arange(10, dtype=float)
    np.testing.assert_allclose(metrics._segment_weights(distinct).sum(0), 1.0)
    assert metrics.segment_mae(distinct + 1, distinct) == pytest.approx((1.0, 1.0, 1.0))


def test_a_constant_input_has_no_correlation_within_floating_tolerance():
    from elta_core import metrics

    generator = np.random.default_rng(1)
    defined = 0
    for _ in range(300):
        constant = np.full(7, generator.uniform(1, 10))
        with pytest.warns(RuntimeWarning, match="constant"):
            assert np.isnan(metrics.plcc(generator.normal(size=7), constant))
        defined += 1
    assert defined == 300
