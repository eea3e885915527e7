import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import elta_core.flsa as flsa
from tests import reference as ref
from tests.flavours import FLAVOURS, assert_close, make, rounded, same_kind


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_similarity_matrices_match_reference(flavour, rng):
    features = rng.normal(size=(9, 5))
    features[3] = 0.0  # a zero vector: similarity 0, never NaN
    scores = rng.normal(5, 1, 9)
    c = flsa.feature_similarity(make(features, flavour))
    m = flsa.label_similarity(make(scores, flavour))
    assert same_kind(c, flavour) and same_kind(m, flavour)
    assert_close(c, ref.feature_similarity(rounded(features, flavour)), flavour)
    assert_close(m, ref.label_similarity(rounded(scores, flavour)), flavour)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("method", ["direct", "gram", "auto"])
@pytest.mark.parametrize("size,width", [(2, 3), (17, 4), (6, 16), (48, 32)])
def test_alignment_loss_matches_reference(flavour, method, size, width, rng):
    features = rng.normal(size=(size, width))
    scores = np.round(rng.normal(5, 1.5, size), 1)  # ties exercise the prefix sums
    loss = flsa.alignment_loss(make(features, flavour), make(scores, flavour), form=method)
    assert same_kind(loss, flavour)
    expected = ref.alignment_loss(rounded(features, flavour), rounded(scores, flavour))
    assert_close(loss, expected, flavour, scale=10)


def test_auto_picks_gram_when_batch_exceeds_width(rng, monkeypatch):
    from elta_core import kernels

    monkeypatch.setattr(kernels, "_enabled", False)  # the reference's own choice of form
    calls = []
    monkeypatch.setattr(flsa, "_gram_sum_and_grad", lambda b, zh, u, with_grad: calls.append("gram") or (0.0 * zh.sum(), 0.0 * zh))
    monkeypatch.setattr(flsa, "_direct_sum_and_grad", lambda b, zh, u, with_grad: calls.append("direct") or (0.0 * zh.sum(), 0.0 * zh))
    flsa.alignment_loss(rng.normal(size=(10, 4)), rng.normal(size=10))
    flsa.alignment_loss(rng.normal(size=(4, 10)), rng.normal(size=4))
    assert calls == ["gram", "direct"]


def test_trailing_dimensions_are_flattened(rng):
    features = rng.normal(size=(8, 2, 3))
    scores = rng.normal(5, 1, 8)
    assert flsa.alignment_loss(features, scores) == pytest.approx(
        flsa.alignment_loss(features.reshape(8, 6), scores), rel=1e-12
    )


def test_distribution_labels_use_their_scores(rng):
    dist = rng.dirichlet(np.ones(10), 12)
    features = rng.normal(size=(12, 5))
    assert flsa.alignment_loss(features, dist) == pytest.approx(
        flsa.alignment_loss(features, dist @ np.arange(1, 11)), rel=1e-12
    )


@pytest.mark.parametrize("method", ["direct", "gram"])
def test_gradcheck_float64(method):
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    size, width = (12, 5) if method == "gram" else (5, 12)
    features = torch.randn(size, width, dtype=torch.float64, generator=generator, requires_grad=True)
    scores = torch.round(torch.rand(size, dtype=torch.float64, generator=generator) * 90) / 10 + 1
    scores[3] = scores[4]  # a tie
    assert torch.autograd.gradcheck(lambda z: flsa.alignment_loss(z, scores, form=method), (features,))


def test_gram_and_direct_gradients_agree():
    torch = pytest.importorskip("torch")
    features = torch.randn(40, 8, dtype=torch.float64)
    scores = torch.rand(40, dtype=torch.float64) * 9 + 1
    grads = []
    for method in ("direct", "gram"):
        z = features.clone().requires_grad_()
        flsa.alignment_loss(z, scores, form=method).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_bf16_features_accumulate_in_float32():
    torch = pytest.importorskip("torch")
    features = torch.randn(64, 16).bfloat16().requires_grad_()
    loss = flsa.alignment_loss(features, torch.rand(64) * 9 + 1)
    assert loss.dtype == torch.float32
    loss.backward()
    assert features.grad.dtype == torch.bfloat16 and torch.isfinite(features.grad).all()


@pytest.mark.parametrize("method", ["direct", "gram"])
@pytest.mark.parametrize(
    "features,scores",
    [
        (np.ones((1, 4)), np.array([5.0])),  # B < 2
        (np.zeros((0, 4)), np.zeros(0)),  # empty
        (np.arange(12.0).reshape(6, 2), np.full(6, 5.5)),  # all scores equal
    ],
)
def test_degenerate_batches_give_zero_loss_and_gradient(method, features, scores):
    torch = pytest.importorskip("torch")
    assert flsa.alignment_loss(features, scores, form=method) == 0.0
    z = torch.tensor(features, requires_grad=True)
    loss = flsa.alignment_loss(z, torch.tensor(scores), form=method)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.all(z.grad == 0)


@pytest.mark.parametrize("method", ["direct", "gram"])
def test_zero_feature_vectors_give_finite_gradients(method):
    torch = pytest.importorskip("torch")
    z = torch.randn(6, 3, dtype=torch.float64)
    z[2] = 0
    z.requires_grad_()
    loss = flsa.alignment_loss(z, torch.arange(6.0, dtype=torch.float64), form=method)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


def _features_reproducing(scores: np.ndarray) -> np.ndarray:
    """Unit vectors whose cosines equal 1 - |u_i - u_j|: for u in [0, 1] a PSD kernel
    (the Laplace kernel on a line is), factorised by an eigendecomposition."""
    u = (scores - scores.min()) / np.ptp(scores)
    target = 1 - np.abs(u[:, None] - u[None, :])
    values, vectors = np.linalg.eigh(target)
    return vectors * np.sqrt(np.clip(values, 0, None))


@given(hnp.arrays(np.float64, st.integers(3, 24), elements=st.floats(1, 10)).filter(lambda s: np.ptp(s) > 0.1))
@settings(max_examples=40, deadline=None)
def test_loss_is_zero_when_features_reproduce_label_similarity(scores):
    features = _features_reproducing(scores)
    if np.min(np.linalg.norm(features, axis=1)) < 1e-6:
        return
    for method in ("direct", "gram"):
        assert flsa.alignment_loss(features, scores, form=method) == pytest.approx(0.0, abs=1e-9)


@given(st.integers(2, 30), st.integers(1, 12), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_loss_is_invariant_to_batch_order(size, width, seed):
    generator = np.random.default_rng(seed)
    features = generator.normal(size=(size, width))
    scores = np.round(generator.uniform(1, 10, size), 1)
    perm = generator.permutation(size)
    for method in ("direct", "gram"):
        a = flsa.alignment_loss(features, scores, form=method)
        b = flsa.alignment_loss(features[perm], scores[perm], form=method)
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("size", [257, 1000, 2500])
def test_the_chunked_gram_form_equals_the_direct_form(size):
    """Past CHUNK_ROWS rows the Gram form walks the batch in chunks, carrying its prefix
    sums across them; loss and gradient equal the B x B form (float64), ties included."""
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(size)
    features = torch.randn(size, 6, dtype=torch.float64, generator=generator)
    features[5] = 0.0  # a zero row: the floored norm
    scores = torch.randint(1, 11, (size,), generator=generator).double()  # many ties across chunk ends
    results = []
    for form in ("gram", "direct"):
        leaf = features.clone().requires_grad_(True)
        loss = flsa.alignment_loss(leaf, scores, form=form)
        loss.backward()
        results.append((float(loss), leaf.grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-10)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-9, atol=1e-15)
    numpy_loss = flsa.alignment_loss(features.numpy(), scores.numpy(), form="gram")
    assert float(numpy_loss) == pytest.approx(results[1][0], rel=1e-10)


@pytest.mark.parametrize("size", [40, 300])  # 40: the native kernel's domain; 300: the reference's Gram form
@pytest.mark.parametrize("magnitude", [1e20, 1e-25])
def test_float32_features_far_from_unit_norm_give_the_same_loss_at_any_batch_size(size, magnitude):
    """A float32 row of norm 1e20 squares past float32's range (and one of 1e-25 to 0): the
    cosine similarities do not depend on the scale, so neither does the loss."""
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(size)
    z = torch.randn(size, 24, generator=generator)
    scores = torch.rand(size, generator=generator) * 9 + 1
    expected = flsa.alignment_loss(z.double(), scores.double())
    leaf = (z * magnitude).requires_grad_(True)
    loss = flsa.alignment_loss(leaf, scores)
    loss.backward()
    if magnitude > 1:  # (a row of norm 1e-25 is below the floor 1e-8: it counts as zero, by design)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert torch.isfinite(leaf.grad).all()
