import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import elta_core.tfa as tfa
from tests import reference as ref
from tests.flavours import FLAVOURS, assert_close, make, rounded, same_kind, to_numpy

score_arrays = hnp.arrays(
    np.float64, st.integers(2, 40), elements=st.floats(1.0, 10.0, allow_nan=False)
)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("size", [1, 2, 7, 48])
def test_sampling_probs_matches_reference(flavour, size, rng):
    scores = rng.normal(5.4, 1.2, size)
    result = tfa.sampling_probs(make(scores, flavour), tau1=0.2)
    assert same_kind(result, flavour)
    assert_close(result, ref.sampling_probs(rounded(scores, flavour), 0.2), flavour)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("size", [1, 2, 9, 48])
def test_partner_probs_matches_reference(flavour, size, rng):
    scores = np.round(rng.normal(5.4, 1.2, size), 1)  # rounding makes ties
    result = tfa.partner_probs(make(scores, flavour), tau2=4.0, eps=1e-2)
    assert_close(result, ref.partner_probs(rounded(scores, flavour), 4.0, 1e-2), flavour)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_mix_factor_matches_reference(flavour, rng):
    scores = rng.normal(5.4, 1.2, 30)
    i, j = rng.integers(0, 30, 12), rng.integers(0, 30, 12)
    result = tfa.mix_factor(make(scores, flavour), i, j, tau1=0.2)
    assert_close(result, ref.mix_factor(rounded(scores, flavour), i, j, 0.2), flavour)


def test_partner_logits_stay_finite_at_tiny_gaps():
    # tau2 / eps = 400: a plain exp would overflow float32.
    scores = np.array([5.0, 5.0, 5.0001, 9.0], dtype=np.float32)
    probs = tfa.partner_probs(scores, tau2=4.0, eps=1e-2)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


@given(score_arrays, st.floats(0.05, 5.0), st.floats(0.5, 8.0))
@settings(max_examples=60, deadline=None)
def test_probabilities_are_distributions(scores, tau1, tau2):
    p = tfa.sampling_probs(scores, tau1)
    assert (p >= 0).all() and np.isclose(p.sum(), 1.0)
    q = tfa.partner_probs(scores, tau2)
    assert (q >= 0).all()
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-9)
    assert np.all(np.diag(q) == 0)


@given(score_arrays, st.data())
@settings(max_examples=60, deadline=None)
def test_mix_factor_favours_the_rarer_sample(scores, data):
    i = data.draw(st.integers(0, scores.size - 1))
    j = data.draw(st.integers(0, scores.size - 1))
    lam = float(tfa.mix_factor(scores, np.array([i]), np.array([j]))[0])
    assert 0.0 <= lam <= 1.0
    gap_i, gap_j = abs(scores[i] - scores.mean()), abs(scores[j] - scores.mean())
    if gap_i > gap_j + 1e-9:
        assert lam > 0.5
    elif gap_j > gap_i + 1e-9:
        assert lam < 0.5
    else:
        assert lam == pytest.approx(0.5)


@given(score_arrays, st.data())
@settings(max_examples=40, deadline=None)
def test_sampling_probs_are_permutation_equivariant(scores, data):
    perm = np.array(data.draw(st.permutations(range(scores.size))))
    np.testing.assert_allclose(tfa.sampling_probs(scores[perm]), tfa.sampling_probs(scores)[perm], rtol=1e-12)


def test_equal_scores_give_uniform_probabilities():
    scores = np.full(6, 5.5)
    np.testing.assert_allclose(tfa.sampling_probs(scores), np.full(6, 1 / 6))
    np.testing.assert_allclose(tfa.partner_probs(scores), (1 - np.eye(6)) / 5)


@pytest.mark.parametrize("size", [0, 1])
def test_degenerate_batches_have_no_pairs(size):
    pairs = tfa.sample_pairs(np.full(size, 5.0), num_pairs=size)
    assert len(pairs.i) == len(pairs.j) == len(pairs.lam) == 0
    assert tfa.partner_probs(np.full(size, 5.0)).shape == (size, size)
    z, y = tfa.mix(np.ones((size, 3)), np.full(size, 5.0), *pairs)
    assert z.shape == (size, 3) and y.shape == (size,)


@pytest.mark.parametrize("flavour", ["numpy-float64", "torch-float32"])
def test_sample_pairs_shapes_and_invariants(flavour, rng):
    scores = make(rng.normal(5.4, 1.2, 48), flavour)
    pairs = tfa.sample_pairs(scores, 12, seed=3)
    i, j, lam = (to_numpy(x) for x in pairs)
    assert len(set(i.tolist())) == 12, "first indices are drawn without replacement"
    assert np.all(i != j)
    assert np.all((lam > 0) & (lam < 1))
    assert_close(pairs.lam, ref.mix_factor(rounded(to_numpy(scores), flavour), i.astype(int), j.astype(int), 0.2), flavour)


def test_same_seed_same_pairs_on_every_backend(rng):
    torch = pytest.importorskip("torch")
    scores = rng.normal(5.4, 1.2, 64)
    from_numpy = tfa.sample_pairs(scores, 8, seed=11)
    again = tfa.sample_pairs(scores, 8, seed=11)
    from_torch = tfa.sample_pairs(torch.tensor(scores), 8, seed=11)
    for a, b, c in zip(from_numpy, again, from_torch):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, c.numpy())
    other = tfa.sample_pairs(scores, 8, seed=12)
    assert not np.array_equal(from_numpy.i, other.i)


def test_generators_reproduce_and_advance(rng):
    torch = pytest.importorskip("torch")
    scores = torch.tensor(rng.normal(5.4, 1.2, 64))
    first = tfa.sample_pairs(scores, 4, seed=torch.Generator().manual_seed(5))
    second = tfa.sample_pairs(scores, 4, seed=torch.Generator().manual_seed(5))
    torch.testing.assert_close(first.i, second.i)
    generator = np.random.default_rng(5)
    a = tfa.sample_pairs(scores.numpy(), 4, seed=generator)
    b = tfa.sample_pairs(scores.numpy(), 4, seed=generator)
    assert not (np.array_equal(a.i, b.i) and np.array_equal(a.j, b.j))


def test_first_picks_follow_eq2_distribution():
    scores = np.array([1.0, 5.0, 5.2, 5.4, 9.0, 5.1])
    expected = ref.sampling_probs(scores, 1.0)
    generator = np.random.default_rng(0)
    draws = np.array([tfa.sample_pairs(scores, 1, tau1=1.0, seed=generator).i[0] for _ in range(6000)])
    frequency = np.bincount(draws, minlength=6) / draws.size
    np.testing.assert_allclose(frequency, expected, atol=0.02)


def test_partners_follow_eq3_distribution():
    scores = np.array([2.0, 2.5, 3.0, 6.0, 7.0])
    expected = ref.partner_probs(scores, 1.0, 0.5)
    generator = np.random.default_rng(1)
    counts = np.zeros((5, 5))
    for _ in range(4000):
        pairs = tfa.sample_pairs(scores, 5, tau2=1.0, eps=0.5, seed=generator)
        counts[pairs.i, pairs.j] += 1
    np.testing.assert_allclose(counts / counts.sum(axis=1, keepdims=True), expected, atol=0.03)


@pytest.mark.parametrize("flavour", ["numpy-float64", "torch-float32", "torch-bfloat16"])
@pytest.mark.parametrize("label_width", [None, 1, 10])
def test_mix_appends_eq1_samples(flavour, label_width, rng):
    features = rng.normal(size=(10, 3, 4))
    if label_width == 10:
        labels = rng.dirichlet(np.ones(10), 10)
    else:
        labels = rng.normal(5, 1, 10) if label_width is None else rng.normal(5, 1, (10, 1))
    i, j, lam = np.array([2, 7]), np.array([5, 2]), np.array([0.8, 0.3])
    z, y = tfa.mix(make(features, flavour), make(labels, flavour), i, j, lam)
    f, l = rounded(features, flavour), rounded(labels, flavour)
    lam_f = rounded(lam, flavour)
    assert z.shape[0] == y.shape[0] == 12
    expected_z = np.concatenate([f, lam_f[:, None, None] * f[i] + (1 - lam_f[:, None, None]) * f[j]])
    lam_l = lam_f.reshape((-1,) + (1,) * (l.ndim - 1))
    expected_y = np.concatenate([l, lam_l * l[i] + (1 - lam_l) * l[j]])
    scale = 30 if flavour.endswith("bfloat16") else 1  # the mixed features are stored in bf16
    assert_close(z, expected_z, flavour, scale)
    assert_close(y, expected_y, flavour, scale)


def test_mix_replace_mode_keeps_the_batch_size(rng):
    features, labels = rng.normal(size=(6, 2)), rng.normal(5, 1, 6)
    z, y = tfa.mix(features, labels, np.array([1, 4]), np.array([0, 0]), np.array([0.5, 1.0]), mode="replace")
    assert z.shape == (6, 2)
    np.testing.assert_allclose(z[1], 0.5 * features[1] + 0.5 * features[0])
    np.testing.assert_allclose(z[4], features[4])
    np.testing.assert_allclose(np.delete(z, [1, 4], axis=0), np.delete(features, [1, 4], axis=0))
    with pytest.raises(ValueError, match="distinct"):
        tfa.mix(features, labels, np.array([1, 1]), np.array([0, 2]), np.array([0.5, 0.5]), mode="replace")


def test_mix_keeps_autograd():
    torch = pytest.importorskip("torch")
    features = torch.randn(5, 3, requires_grad=True)
    z, _ = tfa.mix(features, torch.rand(5) * 9 + 1, torch.tensor([0]), torch.tensor([1]), torch.tensor([0.25]))
    z[-1].sum().backward()
    expected = torch.zeros(5, 3)
    expected[0], expected[1] = 0.25, 0.75
    torch.testing.assert_close(features.grad, expected)


def test_num_pairs_fraction_and_bounds(rng):
    scores = rng.normal(5, 1, 10)
    assert len(tfa.sample_pairs(scores, 0.25, seed=0).i) == 2
    assert len(tfa.sample_pairs(scores, 10, seed=0).i) == 10
    with pytest.raises(ValueError, match="num_pairs"):
        tfa.sample_pairs(scores, 11)


def test_distribution_labels_use_their_mean_score(rng):
    dist = rng.dirichlet(np.ones(10), 20)
    scores = dist @ np.arange(1, 11)
    np.testing.assert_allclose(tfa.sampling_probs(dist), tfa.sampling_probs(scores))


def test_score_scale_rescales_temperatures(rng):
    scores = rng.uniform(1, 10, 20)
    np.testing.assert_allclose(tfa.sampling_probs(scores / 10, 0.02), tfa.sampling_probs(scores, 0.2), rtol=1e-9)
    np.testing.assert_allclose(tfa.sampling_probs(scores / 10, 0.2, score_scale=0.1), tfa.sampling_probs(scores, 0.2))


def test_first_picks_land_in_the_tails_of_real_ava(ava_scores):
    """On batches of 48 real AVA labels, TFA's first picks fall outside the middle 60 %
    (of the file's scores) far more often than uniform sampling (40 %) would."""
    low, high = np.quantile(ava_scores, [0.2, 0.8])
    generator = np.random.default_rng(0)
    tail_hits = picks = 0
    for _ in range(300):
        batch = ava_scores[generator.choice(ava_scores.size, 48, replace=False)]
        first = tfa.sample_pairs(batch, 1, seed=generator).i
        tail_hits += int(((batch[first] < low) | (batch[first] > high)).sum())
        picks += first.size
    share = tail_hits / picks
    assert share > 0.8, f"tail share of first picks {share:.2f} (uniform would be 0.40)"
