import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import elta_core.apds as apds
from tests import reference as ref
from tests.flavours import FLAVOURS, assert_close, make, rounded, same_kind, to_numpy


def _calibration(rng, size=400, num_bins=10):
    true = np.clip(rng.normal(5.4, 1.1, size), 1, 10)
    centres = np.arange(1, num_bins + 1)
    logits = -((centres[None, :] - (true + rng.normal(0, 0.7, size))[:, None]) ** 2) / rng.uniform(0.5, 3, (size, 1))
    return logits, true


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("beta", [0.5, 1.25])
def test_sharpen_matches_reference(flavour, beta, rng):
    logits, _ = _calibration(rng, 33)
    result = apds.sharpen(make(logits, flavour), beta)
    assert same_kind(result, flavour)
    assert_close(result, ref.sharpen(rounded(logits, flavour), beta), flavour, scale=20)


def test_sharpen_with_bin_values_and_mean_score(rng):
    logits = rng.normal(size=(20, 9))
    values = np.arange(1.0, 5.01, 0.5)  # PARA: 9 half-step bins
    np.testing.assert_allclose(
        apds.sharpen(logits, 1.1, bin_values=values, mean_score=3.0),
        ref.sharpen(logits, 1.1, values, 3.0),
        rtol=1e-10,
    )


@given(st.integers(0, 2**31 - 1), st.floats(0.01, 3.0))
@settings(max_examples=60, deadline=None)
def test_sharpening_keeps_argmax_and_raises_max(seed, beta):
    generator = np.random.default_rng(seed)
    logits = generator.normal(0, 2, size=(16, 10))
    sharp = apds.sharpen(logits, beta)
    plain = ref.softmax(logits)
    np.testing.assert_allclose(sharp.sum(axis=1), 1.0, rtol=1e-12)
    assert (sharp >= 0).all()
    unique_max = np.sort(plain, axis=1)[:, -1] - np.sort(plain, axis=1)[:, -2] > 1e-9
    assert np.array_equal(sharp.argmax(axis=1)[unique_max], plain.argmax(axis=1)[unique_max])
    assert np.all(sharp.max(axis=1) >= plain.max(axis=1) - 1e-12)


def test_temperatures_are_eq8(rng):
    logits = rng.normal(size=(12, 10))
    s_hat = ref.softmax(logits) @ np.arange(1, 11)
    np.testing.assert_allclose(apds.temperatures(logits, 1.2), np.exp(-1.2 * np.abs(s_hat - s_hat.mean())))


@pytest.mark.parametrize("pseudo_label", ["prediction", "sharpened"])
@pytest.mark.parametrize("flavour", ["numpy-float64", "torch-float64", "torch-float32"])
def test_grid_search_equals_brute_force(pseudo_label, flavour, rng):
    logits, true = _calibration(rng)
    betas, thresholds = (0.5, 1.0, 1.25), (0.3, 0.5, 0.7, 0.9)
    result = apds.grid_search(make(logits, flavour), make(true, flavour), betas, thresholds, pseudo_label=pseudo_label)
    best, table = ref.grid_search_brute_force(rounded(logits, flavour), rounded(true, flavour), betas, thresholds, 11, pseudo_label)
    counts = [cell.num_selected for cell in result.table]
    expected_counts = [row[3] for row in table]
    if flavour.endswith("float32"):  # a max probability may sit within an ulp of a threshold
        assert np.max(np.abs(np.subtract(counts, expected_counts))) <= 1
        return
    assert counts == expected_counts
    for cell, row in zip(result.table, table):
        assert (cell.beta, cell.threshold) == row[:2]
        assert cell.mae == pytest.approx(row[2], rel=1e-9) if row[2] is not None else cell.mae is None
    assert (result.beta, result.threshold, result.num_selected) == (best[0], best[1], best[3])
    assert result.mae == pytest.approx(best[2], rel=1e-9)


@given(st.integers(0, 2**31 - 1), st.integers(1, 30))
@settings(max_examples=30, deadline=None)
def test_grid_search_property_equals_brute_force(seed, min_selected):
    generator = np.random.default_rng(seed)
    logits, true = _calibration(generator, 60)
    betas, thresholds = (1.0, 1.1, 1.2, 1.25), (0.70, 0.75, 0.80, 0.85, 0.90)
    try:
        best, table = ref.grid_search_brute_force(logits, true, betas, thresholds, min_selected, "sharpened")
    except ValueError:  # no eligible cell
        with pytest.raises(ValueError, match="min_selected"):
            apds.grid_search(logits, true, thresholds="paper", min_selected=min_selected)
        return
    result = apds.grid_search(logits, true, thresholds="paper", min_selected=min_selected)
    assert (result.beta, result.threshold, result.num_selected) == (best[0], best[1], best[3])


def test_grid_search_accepts_distribution_labels(rng):
    logits, true = _calibration(rng)
    dist = ref.softmax(np.log(np.clip(ref.softmax(logits), 1e-9, 1)) + rng.normal(0, 0.1, logits.shape))
    by_dist = apds.grid_search(logits, dist)
    by_score = apds.grid_search(logits, dist @ np.arange(1, 11))
    assert (by_dist.beta, by_dist.threshold, by_dist.num_selected) == (by_score.beta, by_score.threshold, by_score.num_selected)


def test_grid_search_strict_threshold_and_table_outputs(rng):
    # Equal logits keep a max probability of exactly 0.5 under any sharpening.
    logits = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    true = np.array([1.5, 1.2, 1.9])
    result = apds.grid_search(logits, true, betas=(1.0,), thresholds=(0.5,), min_selected=1)
    assert result.num_selected == 3
    strict = apds.grid_search(logits, true, betas=(1.0,), thresholds=(0.5,), min_selected=1, strict=True)
    assert strict.num_selected == 2
    assert "| 1 | 0.5 |" in result.to_markdown()
    assert result.as_dict()["table"][0]["num_selected"] == 3


def test_grid_search_reports_when_nothing_is_eligible(rng):
    logits = rng.normal(0, 0.01, size=(50, 10))  # nearly uniform: never confident
    with pytest.raises(ValueError, match=r"min_selected: .*at least 11 of 50.*largest selection is 0"):
        apds.grid_search(logits, rng.uniform(1, 10, 50), thresholds="paper")


def test_min_selected_as_fraction(rng):
    logits, true = _calibration(rng)
    result = apds.grid_search(logits, true, min_selected=0.25)
    assert result.min_selected == 100 and result.num_selected >= 100


@pytest.mark.parametrize("flavour", ["numpy-float64", "torch-float32"])
@pytest.mark.parametrize("pseudo_label", ["prediction", "sharpened"])
def test_select_keeps_confident_samples(flavour, pseudo_label, rng):
    logits, _ = _calibration(rng, 120)
    selection = apds.select(make(logits, flavour), 1.2, 0.8, pseudo_label=pseudo_label)
    sharp = ref.sharpen(rounded(logits, flavour), 1.2)
    expected = np.flatnonzero(sharp.max(axis=1) >= 0.8)
    np.testing.assert_array_equal(to_numpy(selection.indices).astype(int), expected)
    labels = ref.softmax(rounded(logits, flavour)) if pseudo_label == "prediction" else sharp
    assert_close(selection.labels, labels[expected], flavour, scale=20)


def test_extreme_logits_stay_finite():
    logits = np.array([[800.0, -800.0, 0.0], [0.0, 0.0, 0.0], [-1e4, 1e4, 5.0]], dtype=np.float32)
    for beta in (0.1, 1.25, 5.0):
        assert np.isfinite(apds.sharpen(logits, beta)).all()
    apds.grid_search(logits, np.array([1.0, 2.0, 3.0]), min_selected=1)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_predicted_scores_match_reference(flavour, rng):
    logits = rng.normal(0, 2, size=(25, 9))
    values = np.arange(1.0, 5.01, 0.5)
    result = apds.predicted_scores(make(logits, flavour), values)
    assert same_kind(result, flavour)
    assert_close(result, ref.softmax(rounded(logits, flavour)) @ values, flavour, scale=20)


def test_flsa_loss_without_gradient_equals_with_gradient(rng):
    torch = pytest.importorskip("torch")
    from elta_core import flsa

    z, s = torch.randn(40, 8, dtype=torch.float64), torch.rand(40, dtype=torch.float64) * 9 + 1
    for method in ("direct", "gram"):
        with torch.no_grad():
            plain = flsa.alignment_loss(z, s, form=method)
        tracked = flsa.alignment_loss(z.clone().requires_grad_(), s, form=method)
        assert plain.grad_fn is None and tracked.grad_fn is not None
        torch.testing.assert_close(plain, tracked.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_keep_most_confident_equals_brute_force(framework):
    rng = np.random.default_rng(12)
    logits = rng.normal(size=(40, 10)) * 2
    logits[7] = logits[3]  # a tie: the earlier row wins
    chosen = apds.select(logits, 1.1, 0.2, pseudo_label="sharpened")
    confidence = ref.sharpen(logits, 1.1).max(axis=1)
    cap = len(chosen.indices) // 2
    ranked = sorted(chosen.indices.tolist(), key=lambda i: (-confidence[i], i))
    expected = sorted(ranked[:cap])
    if framework == "torch":
        torch = pytest.importorskip("torch")
        kept = apds.keep_most_confident(torch.tensor(logits), apds.select(torch.tensor(logits), 1.1, 0.2,
                                        pseudo_label="sharpened"), 1.1, cap)
        indices, labels = kept.indices.numpy(), kept.labels.numpy()
    else:
        kept = apds.keep_most_confident(logits, chosen, 1.1, cap)
        indices, labels = kept.indices, kept.labels
    assert indices.tolist() == expected
    np.testing.assert_allclose(labels, ref.sharpen(logits, 1.1)[expected], atol=1e-12)
    assert apds.keep_most_confident(logits, chosen, 1.1, len(chosen.indices)) is chosen
    with pytest.raises(ValueError, match="max_selected: expected an int >= 0"):
        apds.keep_most_confident(logits, chosen, 1.1, -1)


# -- overflow: sharpening is finite for every finite input (a one-hot row at worst) -------

def _implementations():
    """(name, make logits, context) for each implementation of the APDS rows and grid."""
    import contextlib

    from elta_core.kernels import dispatch, native_available

    implementations = [("numpy", np.asarray, contextlib.nullcontext)]
    torch = pytest.importorskip("torch")
    implementations.append(("torch", torch.as_tensor, contextlib.nullcontext))
    if native_available():
        @contextlib.contextmanager
        def native_for_all_sizes():
            previous, dispatch.NATIVE_GRID_MIN_ROWS = dispatch.NATIVE_GRID_MIN_ROWS, 1
            try:
                yield
            finally:
                dispatch.NATIVE_GRID_MIN_ROWS = previous
        implementations.append(("native", np.asarray, native_for_all_sizes))
    try:
        import triton  # noqa: F401

        from elta_core.kernels.triton_ops import cpu_tensors_under_interpreter
        if os.environ.get("TRITON_INTERPRET") == "1":
            implementations.append(("triton", torch.as_tensor, cpu_tensors_under_interpreter))
    except ImportError:
        pass
    return implementations


@pytest.mark.parametrize("implementation", _implementations(), ids=lambda item: item[0])
@given(seed=st.integers(0, 2**31 - 1), beta=st.sampled_from([1.0, 30.0, 88.0, 710.0, 1e3, 1e6]),
       score_scale=st.sampled_from([1e-3, 1.0 / 9, 1.0, 40.0]), dtype=st.sampled_from(["float32", "float64"]))
@settings(max_examples=12, deadline=None)
def test_sharpen_is_finite_and_grid_agrees_with_select(implementation, seed, beta, score_scale, dtype):
    name, make, context = implementation
    generator = np.random.default_rng(seed)
    logits = generator.normal(0, 3, size=(24, 10)).astype(dtype)
    true = generator.uniform(1, 10, 24)
    thresholds = (0.3, 0.6, 0.9, 1.0)
    with context():
        sharp = apds.sharpen(make(logits), beta, score_scale=score_scale)
        grid = apds.grid_search(make(logits), make(true), [beta], thresholds, min_selected=1,
                                score_scale=score_scale)
        counts = [len(apds.select(make(logits), beta, t, score_scale=score_scale).indices) for t in thresholds]
    sharp = np.asarray(sharp, dtype=np.float64)
    assert np.isfinite(sharp).all(), f"{name}: NaN or Inf in the sharpened rows"
    np.testing.assert_allclose(sharp.sum(axis=1), 1.0, rtol=1e-5)
    assert [cell.num_selected for cell in grid.table] == counts, name


@pytest.mark.parametrize("implementation", _implementations(), ids=lambda item: item[0])
def test_beta_zero_is_the_unsharpened_softmax_and_its_confidence(implementation):
    """beta = 0 (the unsharpened ablation of elta compare): temperature 1 for every sample,
    so sharpening is the plain softmax and the grid thresholds its max probability."""
    name, make, context = implementation
    generator = np.random.default_rng(5)
    logits = generator.normal(0, 2, size=(40, 10))
    true = generator.uniform(1, 10, 40)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    with context():
        sharp = np.asarray(apds.sharpen(make(logits), 0.0), dtype=np.float64)
        grid = apds.grid_search(make(logits), make(true), [0.0], (0.2, 0.4), min_selected=1)
        temperatures = np.asarray(apds.temperatures(make(logits), 0.0), dtype=np.float64)
    np.testing.assert_allclose(sharp, softmax, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(temperatures, 1.0)
    assert [cell.num_selected for cell in grid.table] == [int((softmax.max(1) >= t).sum()) for t in (0.2, 0.4)], name


def test_an_overflowing_temperature_gives_a_one_hot_row():
    logits = np.array([[0.0, 5.0, 1.0], [2.0, 0.0, 0.0], [0.0, 1.0, 9.0]])
    sharp = apds.sharpen(logits, 1e300)
    np.testing.assert_array_equal(sharp[[0, 2]], [[0, 1, 0], [0, 0, 1]])
    assert np.isfinite(sharp).all()



def test_auto_thresholds_fall_back_to_the_calibration_quantiles_when_the_paper_grid_selects_nothing(rng):
    wide = rng.normal(0, 0.3, size=(400, 10))  # a young model: every confidence far below 0.7
    true = rng.uniform(1, 10, 400)
    with pytest.raises(ValueError, match="no \\(beta, threshold\\) cell selects at least 11 of 400 samples "
                                         "\\(thresholds: the paper's grid; 20 of 20 cells empty\\).*falls back"):
        apds.grid_search(wide, true, thresholds="paper")
    result = apds.grid_search(wide, true)
    assert result.thresholds_from.startswith("the paper's grid selected fewer than min_selected; quantiles 0.5")
    assert result.num_selected >= 11 and result.threshold < 0.7
    assert "thresholds: the paper's grid selected fewer" in result.to_markdown()
    assert result.as_dict()["empty_cells"] == result.empty_cells
    quantiles = apds.grid_search(wide, true, thresholds="quantiles")
    assert quantiles.table == result.table
    small = apds.grid_search(wide[:16], true[:16])  # a small calibration set still gets an eligible cell
    assert small.num_selected >= 11
    confident = wide * 40  # a trained model: the paper's grid selects
    assert apds.grid_search(confident, true).thresholds_from == "the paper's grid"
    with pytest.raises(ValueError, match="thresholds: expected 'auto', 'paper', 'quantiles' or numbers"):
        apds.grid_search(wide, true, thresholds="fixed")
