"""The established methods (LDS, FDS, RankSim, C-Mixup, Balanced MSE): each equation
against the float64 reference, their invariants, and their use through ELTAWrapper."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from elta_core import losses
from elta_core.adapters.torch import ELTAWrapper, fit
from elta_core.adapters.torch import peers as P
from tests import reference as ref

scores_1_10 = hnp.arrays(np.float64, st.integers(3, 40), elements=st.floats(1, 10)).filter(lambda s: np.ptp(s) > 0.1)


# -- the equations against the reference ---------------------------------------------


@pytest.mark.parametrize("size,sigma", [(1, 1.0), (5, 2.0), (9, 0.7), (3, 5.0), (7, 1.3)])
def test_gaussian_window_matches_reference_and_the_authors_scipy_filter(size, sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    got = P.gaussian_window(size, sigma).numpy()
    np.testing.assert_allclose(got, ref.gaussian_window(size, sigma), rtol=1e-12)
    impulse = np.zeros(size)
    impulse[size // 2] = 1.0
    blurred = ndimage.gaussian_filter1d(impulse, sigma)  # how DIR builds its window
    np.testing.assert_allclose(got, blurred / blurred.sum(), rtol=1e-12)


def test_the_default_window_folds_the_gaussian_tails_back():
    np.testing.assert_allclose(P.gaussian_window(5, 2.0).numpy(), [0.186, 0.205, 0.217, 0.205, 0.186], atol=1e-3)


@pytest.mark.parametrize("edges", ["constant", "reflect"])
@given(values=hnp.arrays(np.float64, st.integers(3, 30), elements=st.floats(-5, 5)))
@settings(max_examples=30, deadline=None)
def test_smooth_bins_matches_reference(edges, values):
    window = ref.gaussian_window(5, 2.0)
    got = P.smooth_bins(torch.from_numpy(values), torch.from_numpy(window), edges).numpy()
    np.testing.assert_allclose(got, ref.smooth_bins(values, window, edges), atol=1e-12)


@given(scores=scores_1_10, num_bins=st.integers(2, 30), reweight=st.sampled_from(["sqrt_inv", "inverse"]))
@settings(max_examples=40, deadline=None)
def test_lds_weights_match_reference_and_average_one_over_the_training_set(scores, num_bins, reweight):
    window = P.gaussian_window(5, 2.0)
    scores_t = torch.from_numpy(scores)
    weights = P.lds_weights(scores_t, scores.min(), scores.max(), num_bins, window, reweight)
    np.testing.assert_allclose(weights.numpy(), ref.lds_weights(scores, num_bins, window.numpy(), reweight), rtol=1e-10)
    per_sample = weights[P.bin_index(scores_t, scores.min(), scores.max(), num_bins)]
    assert float(per_sample.mean()) == pytest.approx(1.0, rel=1e-10)


def test_lds_inverse_weights_are_the_authors_with_their_integer_counts(ava_scores):
    """DIR's code keeps the clipped counts in an int array; SciPy's ``convolve1d`` returns
    the smoothing in the input's dtype, so it is truncated (by a window whose peak is 1).
    Written out as their procedure, on AVA's scores."""
    ndimage = pytest.importorskip("scipy.ndimage")
    scores = ava_scores[:3000]
    low, high, num_bins = float(scores.min()), float(scores.max()), 100
    window = P.gaussian_window(5, 2.0).numpy()
    bins = P.bin_index(torch.from_numpy(scores), low, high, num_bins).numpy()
    counts = np.clip(np.bincount(bins, minlength=num_bins), 5, 1000).astype(np.int64)  # their value_dict
    smoothed = ndimage.convolve1d(counts, weights=window / window.max(), mode="constant")
    assert smoothed.dtype == np.int64
    per_sample = 1.0 / smoothed[bins].astype(np.float64)
    theirs = per_sample * len(per_sample) / per_sample.sum()
    ours = P.lds_weights(torch.from_numpy(scores), low, high, num_bins, torch.from_numpy(window), "inverse")
    np.testing.assert_allclose(ours.numpy()[bins], theirs, rtol=1e-12)


def test_lds_weights_rarer_labels_more():
    scores = torch.tensor([5.0] * 50 + [7.0] * 10 + [9.0] * 2 + [1.0])
    lds = P.LDS(scores, num_bins=30)  # the labels more than a kernel apart
    lds.bind(_config())
    w = lds.sample_weights(torch.tensor([5.0, 7.0, 9.0]))
    assert w[0] < w[1] < w[2]


def _fds_epochs(num_epochs=5, num_bins=8, width=6, batches=3, seed=0):
    """Features and scores for a few epochs of a few batches: bins of one sample, a constant
    feature, an empty bin."""
    generator = np.random.default_rng(seed)
    scores = np.concatenate([generator.uniform(1, 4, 60), generator.uniform(6, 10, 60), [5.3]])  # 5.3: alone in its bin
    epochs = []
    for epoch in range(num_epochs):
        features = generator.normal(size=(len(scores), width)) + scores[:, None] * (1 + 0.1 * epoch)
        features[:, 0] = 2.0  # a constant feature: variance 0 in every bin
        epochs.append(np.array_split(features, batches))
    return scores, np.array_split(scores, batches), epochs


def test_fds_follows_the_authors_schedule_epoch_by_epoch():
    scores, batch_scores, epochs = _fds_epochs()
    fds = P.FDS(torch.from_numpy(scores), num_bins=8, momentum=0.9)
    fds.bind(_config())
    authors = ref.AuthorsFDS(8, 6, ref.gaussian_window(5, 2.0))
    low, high = scores.min(), scores.max()
    for epoch, batches in enumerate(epochs):
        seen, seen_bins = [], []
        for features, batch in zip(batches, batch_scores):
            bins = np.array([ref.bin_of(v, low, high, 8) for v in batch])
            expected = authors.calibrate(features, bins)
            with fds.collecting():  # the authors' end-of-epoch pass: calibrate, and collect what it gives
                got = fds.calibrate(torch.from_numpy(features), torch.from_numpy(batch)).numpy()
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9, err_msg=f"epoch {epoch}")
            seen.append(expected)  # the authors collect the calibrated features
            seen_bins.append(bins)
        authors.end_epoch(np.concatenate(seen), np.concatenate(seen_bins))
        fds.end_epoch()
        np.testing.assert_allclose(fds.running["mean"].numpy(), authors.running_mean, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(fds.running["var"].numpy(), authors.running_var, rtol=1e-9, atol=1e-9)


def test_fds_collects_its_statistics_in_a_pass_after_the_epochs_steps_as_its_authors():
    """``fit`` runs the training loader through the model once more after each epoch, in
    train mode without gradients: the statistics are the head's input of that pass (the
    model as the epoch left it), where they were the training steps' (a model that
    changed during the epoch); the steps themselves collect nothing."""
    torch.manual_seed(0)
    scores = torch.linspace(1, 10, 32, dtype=torch.float64)
    x = torch.randn(32, 6)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 10))
    fds = P.FDS(scores, num_bins=4)
    wrapper = ELTAWrapper(model, "2", tfa=False, flsa_weight=0, peers=[fds])
    labels = torch.nn.functional.one_hot((scores - 1).round().long(), 10).float()  # scores 1..10, rounded
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=8)
    seen = []
    observe = wrapper.observe_features
    wrapper.observe_features = lambda xb, yb: (seen.append(len(xb)), observe(xb, yb))
    fit(wrapper, loader, torch.optim.SGD(wrapper.parameters(), lr=0.1), epochs=1, progress=False)
    assert seen == [8, 8, 8, 8]  # one pass over the loader, after the steps
    with torch.no_grad():
        head_input = model[1](model[0](x)).double()  # the model as the epoch left it (the identity calibrates)
    bins = fds.bins(labels.double() @ torch.arange(1.0, 11.0, dtype=torch.float64))
    for b in range(4):
        np.testing.assert_allclose(fds.running["mean"][b].numpy(), head_input[bins == b].mean(0).numpy(), rtol=1e-5)


def test_fds_is_the_identity_in_its_first_two_epochs():
    scores, batch_scores, epochs = _fds_epochs(num_epochs=3)
    fds = P.FDS(torch.from_numpy(scores), num_bins=8, statistics="steps")
    fds.bind(_config())
    for epoch, batches in enumerate(epochs):
        for features, batch in zip(batches, batch_scores):
            got = fds.calibrate(torch.from_numpy(features), torch.from_numpy(batch))
            assert torch.equal(got, torch.from_numpy(features)) == (epoch < 2), epoch
        fds.end_epoch()


def test_fds_leaves_zero_variance_features_and_one_sample_bins_unchanged():
    scores, batch_scores, epochs = _fds_epochs(num_epochs=4)
    fds = P.FDS(torch.from_numpy(scores), num_bins=8, statistics="steps")
    fds.bind(_config())
    lonely = P.bin_index(torch.tensor([5.3]), scores.min(), scores.max(), 8).item()
    assert (P.bin_index(torch.from_numpy(scores), scores.min(), scores.max(), 8) == lonely).sum() == 1
    for epoch, batches in enumerate(epochs):
        for features, batch in zip(batches, batch_scores):
            got = fds.calibrate(torch.from_numpy(features), torch.from_numpy(batch)).numpy()
            np.testing.assert_array_equal(got[:, 0], features[:, 0])  # the constant feature
            alone = batch == 5.3
            np.testing.assert_array_equal(got[alone], features[alone])  # the bin of one sample
            if epoch >= 2:
                assert not np.allclose(got[~alone][:, 1:], features[~alone][:, 1:])
        fds.end_epoch()


def test_fds_is_the_identity_when_smoothing_changes_nothing():
    features, bins = torch.randn(10, 3, dtype=torch.float64), torch.randint(0, 4, (10,))
    mean, var = torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64) + 0.1
    np.testing.assert_allclose(P.fds_calibrate(features, bins, mean, var, mean, var).numpy(), features.numpy(),
                               atol=1e-12)


@given(scores=scores_1_10, width=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=30, deadline=None)
def test_ranksim_matches_reference(scores, width, seed):
    features = np.random.default_rng(seed).normal(size=(len(scores), width))
    got = P.ranksim_loss(torch.from_numpy(features), torch.from_numpy(scores))
    assert float(got) == pytest.approx(ref.ranksim(features, scores), abs=1e-12)


@given(scores=hnp.arrays(np.float64, st.integers(2, 30), elements=st.floats(1, 10), unique=True))
@settings(max_examples=40, deadline=None)
def test_ranksim_is_zero_when_feature_and_label_rankings_agree(scores):
    # Points on an arc at angles proportional to the labels: the cosine similarity falls
    # with the label distance, so every row ranks the same in both.
    angle = torch.from_numpy(scores) * 0.3
    features = torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    distances = np.abs(scores[:, None] - scores[None, :])
    ties = any(len(set(np.round(row, 9))) < len(row) for row in distances)  # equal distances either side
    if not ties:
        assert float(P.ranksim_loss(features, torch.from_numpy(scores))) == 0.0


def test_ranksim_blackbox_gradient_is_the_interpolated_rank_difference():
    rows = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(5, 7, dtype=torch.float64)
    P._BlackboxRanks.apply(rows, 2.0).backward(grad)
    values = rows.detach().numpy()
    expected = np.stack([-(ref.descending_ranks(values[i]) - ref.descending_ranks(values[i] + 2.0 * grad[i].numpy()))
                         / 2.0 for i in range(5)])
    np.testing.assert_allclose(rows.grad.numpy(), expected, atol=1e-12)


def test_ranksim_keeps_one_row_per_distinct_label_in_label_order():
    scores = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 3.0])
    rows = P.unique_label_rows(scores, torch.Generator().manual_seed(0))
    assert scores[rows].tolist() == [1.0, 2.0, 3.0]  # the authors' order: the sorted labels
    assert torch.equal(P.unique_label_rows(torch.tensor([2.0, 1.0, 3.0])), torch.arange(3))  # no repeats: all


def test_ranksim_draws_each_row_of_a_label_equally_often():
    stats = pytest.importorskip("scipy.stats")
    scores = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 3.0, 3.0, 1.0])
    generator, draws = torch.Generator().manual_seed(0), 4000
    counts = torch.zeros(len(scores))
    for _ in range(draws):
        counts[P.unique_label_rows(scores, generator)] += 1
    for label in (1.0, 3.0):
        rows = (scores == label).nonzero()[:, 0]
        observed = counts[rows].numpy()
        assert observed.sum() == draws
        assert stats.chisquare(observed).pvalue > 1e-4, (label, observed)  # uniform within the label
    assert counts[3] == draws  # the only row of label 2


def test_ranksim_is_the_sum_of_the_per_row_losses_and_its_gradient_is_the_authors():
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(12, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    scores = torch.tensor([1.0, 2, 2, 3, 5, 5, 5, 6, 8, 9, 9, 10], dtype=torch.float64)  # ties in both rankings
    loss = P.ranksim_loss(features, scores, 2.0)
    loss.backward()
    # the authors' form: one blackbox ranking per row, each row's MSE summed
    flat = torch.nn.functional.normalize(features.detach(), dim=1)
    rows = (flat @ flat.T).clone().requires_grad_(True)
    total = 0
    for i in range(12):
        label_ranks = torch.from_numpy(ref.descending_ranks([-abs(scores[i] - s) for s in scores.tolist()]))
        total = total + ((P._BlackboxRanks.apply(rows[i:i + 1], 2.0)[0] - label_ranks) ** 2).mean()
    assert float(loss.detach()) == pytest.approx(float(total.detach()), abs=1e-12)
    assert float(loss.detach()) == pytest.approx(ref.ranksim(features.detach().numpy(), scores.numpy()), abs=1e-12)
    total.backward()
    features2 = features.detach().clone().requires_grad_(True)
    flat2 = torch.nn.functional.normalize(features2, dim=1)
    (flat2 @ flat2.T).backward(rows.grad)
    np.testing.assert_allclose(features.grad.numpy(), features2.grad.numpy(), atol=1e-12)


def test_ranks_break_ties_by_descending_index():
    ranks = P._ranks(torch.tensor([[0.5, 0.9, 0.5, 0.1]], dtype=torch.float64))
    np.testing.assert_allclose(ranks[0].numpy(), [3 / 4, 1 / 4, 2 / 4, 1.0])  # the later 0.5 first


@given(scores=scores_1_10, bandwidth=st.floats(0.05, 5))
@settings(max_examples=40, deadline=None)
def test_cmixup_probabilities_match_reference_and_sum_to_one(scores, bandwidth):
    got = P.cmixup_probabilities(torch.from_numpy(scores), bandwidth).numpy()
    np.testing.assert_allclose(got, ref.cmixup_probabilities(scores, bandwidth), atol=1e-12)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-12)
    # a nearer label is never a less likely partner
    for i in range(len(scores)):
        order = np.argsort(np.abs(scores - scores[i]), kind="stable")
        assert np.all(np.diff(got[i][order]) <= 1e-15)


def test_cmixup_mixes_inputs_and_labels_with_the_same_partner_and_factor():
    cmixup = P.CMixup(bandwidth=1.0)
    cmixup.bind(_config())
    scores = torch.linspace(1, 10, 32, dtype=torch.float64)
    distributions = torch.softmax(torch.randn(32, 10, dtype=torch.float64), 1)
    x = torch.stack([scores, distributions @ torch.arange(1, 11.0, dtype=torch.float64)], 1)
    mixed_x, mixed = cmixup.mix(x, distributions, scores, torch.Generator().manual_seed(3))
    np.testing.assert_allclose(mixed_x[:, 1].numpy(), (mixed @ torch.arange(1, 11.0, dtype=torch.float64)).numpy(),
                               atol=1e-12)
    again = cmixup.mix(x, distributions, scores, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], mixed_x)  # seeded: reproducible


@given(predicted=hnp.arrays(np.float64, st.integers(2, 30), elements=st.floats(0, 10)),
       sigma=st.floats(0.1, 3), seed=st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_bmc_matches_reference(predicted, sigma, seed):
    targets = np.random.default_rng(seed).uniform(0, 10, len(predicted))
    got = P.bmc_loss(torch.from_numpy(predicted), torch.from_numpy(targets), torch.tensor(sigma**2, dtype=torch.float64))
    assert float(got) == pytest.approx(ref.bmc(predicted, targets, sigma), rel=1e-10, abs=1e-12)


def test_bmc_is_mse_up_to_a_constant_in_the_balanced_limit():
    # Labels spread evenly over a range much wider than sigma: the batch's label density is
    # flat, and BMC's gradient is the MSE's for every prediction away from the range's ends.
    targets = torch.arange(0, 100, 0.05, dtype=torch.float64)
    predicted = (targets + torch.randn(targets.shape, dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(0)) * 0.5).requires_grad_(True)
    P.bmc_loss(predicted, targets, torch.tensor(1.0, dtype=torch.float64)).backward()
    bmc_grad = predicted.grad.clone()
    predicted.grad = None
    torch.mean((predicted - targets) ** 2).backward()
    inner = (targets > 10) & (targets < 90)
    np.testing.assert_allclose(bmc_grad[inner].numpy(), predicted.grad[inner].numpy(), rtol=1e-6, atol=1e-12)


# -- through the wrapper ----------------------------------------------------------------


def _config(**options):
    from elta_core.step import ELTAConfig

    return ELTAConfig(**options)


def _model(outputs: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, outputs))


def _batch(n: int = 24):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=generator)
    distributions = torch.softmax(torch.randn(n, 10, generator=generator) * 2, 1)
    return x, distributions, distributions @ torch.arange(1, 11.0)


def test_lds_weights_each_samples_emd():
    x, labels, scores = _batch()
    lds = P.LDS(scores, num_bins=6)
    wrapper = ELTAWrapper(_model(10), "2", tfa=False, flsa_weight=0, peers=[lds])
    out = wrapper(x, labels)
    per_sample = losses.emd(torch.softmax(out.predictions, 1), labels, reduction="none")
    weights = torch.from_numpy(ref.lds_weights(scores.double().numpy(), 6, ref.gaussian_window(5, 2.0), "sqrt_inv"))
    bins = [ref.bin_of(s, float(scores.min()), float(scores.max()), 6) for s in scores.double().tolist()]
    expected = (per_sample.double() * weights[bins]).mean()
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_balanced_mse_replaces_the_task_loss_and_learns_sigma():
    x, _, scores = _batch()
    bmse = P.BalancedMSE()
    wrapper = ELTAWrapper(_model(1), "2", tfa=False, flsa_weight=0, peers=[bmse], bin_values=tuple(range(1, 11)))
    out = wrapper(x, scores)
    expected = ref.bmc(out.predictions.detach().double().reshape(-1).numpy(), scores.double().numpy(), 1.0)
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert any(p is bmse.noise_sigma for p in wrapper.parameters())
    out.loss.backward()
    assert bmse.noise_sigma.grad is not None and float(bmse.noise_sigma.grad) != 0


def test_peers_combine_with_tfa_and_flsa():
    x, labels, scores = _batch()
    wrapper = ELTAWrapper(_model(10), "2", num_pairs=4, flsa_weight=1.0, seed=0,
                          peers=[P.LDS(scores), P.FDS(scores), P.RankSim(), P.CMixup()])
    out = wrapper(x, labels)
    assert out.predictions.shape[0] == 24 + 4 and set(out.peer_losses) == {"ranksim"}
    total = out.task_loss + out.flsa_loss + out.peer_losses["ranksim"]
    assert float(out.loss.detach()) == pytest.approx(float(total.detach()), rel=1e-6)
    out.loss.backward()
    wrapper.eval()
    assert torch.equal(wrapper(x), wrapper.model(x))  # evaluation: the model alone


def test_fds_calibrates_only_in_training_and_its_statistics_survive_a_state_dict():
    x, labels, scores = _batch(64)
    wrapper = ELTAWrapper(_model(10), "2", tfa=False, flsa_weight=0, peers=[P.FDS(scores, num_bins=4)])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=16)
    fit(wrapper, loader, torch.optim.SGD(wrapper.parameters(), lr=0.01), epochs=2, progress=False)
    assert wrapper.peers[0].smoothed is not None  # fit ended the epochs
    plain = wrapper.model(x)
    calibrated = wrapper(x, labels).predictions
    assert not torch.allclose(plain, calibrated)

    fresh = ELTAWrapper(_model(10), "2", tfa=False, flsa_weight=0, peers=[P.FDS(scores, num_bins=4)])
    fresh.load_state_dict(wrapper.state_dict())
    torch.testing.assert_close(fresh(x, labels).predictions, calibrated)


@pytest.mark.parametrize("make,message", [
    (lambda s: dict(peers=[P.LDS(s), P.BalancedMSE()]), "lds and bmse both change the task loss"),
    (lambda s: dict(peers=[P.LDS(s)], task_loss=lambda p, y: p.sum()), "cannot be combined with a task_loss"),
    (lambda s: dict(peers=[P.RankSim(), P.RankSim()]), "ranksim given more than once"),
    (lambda s: dict(peers=["lds"]), "peers: expected plug-ins"),
    (lambda s: dict(peers=[P.LDS(torch.full((5,), 3.0))]), "every training score is 3"),
    (lambda s: dict(peers=[P.LDS(torch.tensor([[1.0, float("nan")]]))]), "lds: train_labels"),
])
def test_bad_peer_combinations_are_named(make, message):
    _, _, scores = _batch()
    with pytest.raises(ValueError, match=message):
        ELTAWrapper(_model(10), "2", **make(scores))


@pytest.mark.parametrize("make,message", [
    (lambda: P.LDS(torch.rand(5), num_bins=1), r"num_bins: expected an int in \[2, 100000\]"),
    (lambda: P.LDS(torch.rand(5), num_bins=10**9), r"num_bins: expected an int in \[2, 100000\]"),
    (lambda: P.FDS(torch.rand(5), num_bins=10**9), r"num_bins: expected an int in \[2, 100000\]"),
    (lambda: P.LDS(torch.rand(5), kernel_size=4), "kernel_size: expected an odd number"),
    (lambda: P.LDS(torch.rand(5), reweight="power"), "reweight: expected one of 'sqrt_inv', 'inverse'"),
    (lambda: P.FDS(torch.rand(5), momentum=1.0), r"momentum: expected a number in \[0, 1\)"),
    (lambda: P.FDS(torch.rand(5), clip=(2, 3)), "clip: expected"),
    (lambda: P.RankSim(weight=float("nan")), "weight: expected a finite number > 0"),
    (lambda: P.CMixup(bandwidth=0), "bandwidth: expected a finite number > 0"),
    (lambda: P.CMixup(at="head"), "at: expected 'input' or 'features'"),
    (lambda: P.BalancedMSE(init_sigma=-1), "init_sigma: expected a finite number > 0"),
])
def test_bad_peer_settings_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("train_labels,options,message", [
    (torch.rand(40), {}, r"lds: train_labels: scores 0\.\d*..0\.\d*, off the model's rating scale 1..10"),
    (torch.softmax(torch.randn(40, 9), 1), {}, "lds: train_labels: distributions over 9 levels, but the model has 10"),
    (torch.rand(40), {"bin_values": tuple(range(1, 11))}, "off the model's rating scale 1..10"),
])
def test_lds_refuses_training_labels_off_the_models_scale(train_labels, options, message):
    x, labels, _ = _batch()
    with pytest.raises(ValueError, match=message):
        wrapper = ELTAWrapper(_model(10), "2", tfa=False, flsa_weight=0, peers=[P.LDS(train_labels)], **options)
        wrapper(x, labels)


def test_lds_on_matching_labels_of_another_scale_is_accepted():
    x, labels, _ = _batch()
    unit = tuple(float(v) for v in np.linspace(0, 1, 10))
    wrapper = ELTAWrapper(_model(10), "2", tfa=False, flsa_weight=0, bin_values=unit, score_scale=1 / 9,
                          peers=[P.LDS(torch.rand(40))])
    assert torch.isfinite(wrapper(x, labels).loss)


def test_cmixup_with_a_tiny_bandwidth_mixes_each_sample_with_itself():
    scores = torch.tensor([1.0, 2.0, 2.0, 7.0], dtype=torch.float64)
    probabilities = P.cmixup_probabilities(scores, 1e-200)
    assert torch.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.numpy(), [[1, 0, 0, 0], [0, .5, .5, 0], [0, .5, .5, 0], [0, 0, 0, 1]])


def test_cmixup_mixing_factors_follow_beta_alpha_alpha_for_small_alpha():
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    tiny = np.array([P._beta(1e-3, generator) for _ in range(3000)])
    assert np.mean(tiny == 0.5) < 0.01  # its Gamma draws underflowed to 0 / 0 before: 47 % were 0.5
    # Beta(1e-3, 1e-3) puts 99.5 % of its mass within 0.01 of 0 or 1, half on each side
    assert np.mean((tiny < 0.01) | (tiny > 0.99)) > 0.98 and abs(np.mean(tiny < 0.5) - 0.5) < 0.05
    for alpha in (0.2, 2.0):
        draws = np.array([P._beta(alpha, generator) for _ in range(3000)])
        assert stats.kstest(draws, stats.beta(alpha, alpha).cdf).pvalue > 1e-4, alpha


@pytest.mark.parametrize("bins", [200, 50])
def test_fds_statistics_of_other_bins_are_refused_by_name(bins):
    x, labels, scores = _batch(64)
    wrapper = ELTAWrapper(_model(10), "2", tfa=False, flsa_weight=0, peers=[P.FDS(scores, num_bins=100)])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, labels), batch_size=16)
    fit(wrapper, loader, torch.optim.SGD(wrapper.parameters(), lr=0.01), epochs=1, progress=False)
    other = ELTAWrapper(_model(10), "2", tfa=False, flsa_weight=0, peers=[P.FDS(scores, num_bins=bins)])
    with pytest.raises(ValueError, match=f"fds: the saved statistics are for bins .*'num_bins': 100.*'num_bins': {bins}"):
        other.load_state_dict(wrapper.state_dict())


def test_cmixup_on_a_non_tensor_input_says_to_mix_features():
    class DictModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(6, 8), nn.Linear(8, 10)

        def forward(self, batch):
            return self.head(self.body(batch["x"]))

    x, labels, _ = _batch()
    wrapper = ELTAWrapper(DictModel(), "head", tfa=False, flsa_weight=0, peers=[P.CMixup()])
    with pytest.raises(ValueError, match="at='features'"):
        wrapper({"x": x}, labels)
    features = ELTAWrapper(DictModel(), "head", tfa=False, flsa_weight=0, peers=[P.CMixup(at="features")], seed=0)
    assert features({"x": x}, labels).loss.requires_grad


def test_a_nan_regulariser_is_named():
    x, labels, _ = _batch()
    ranksim = P.RankSim()
    ranksim.regulariser = lambda *args: torch.tensor(float("nan"))
    wrapper = ELTAWrapper(_model(10), "2", tfa=False, flsa_weight=0, peers=[ranksim])
    with pytest.raises(FloatingPointError, match="the ranksim loss is nan"):
        wrapper(x, labels)


def test_the_cli_knows_every_peer():
    from elta_core.app.config import TrainConfig
    from elta_core.peer_names import PEER_NAMES

    assert PEER_NAMES == tuple(P.PEERS) == tuple(kind.name for kind in P.PEERS.values())
    assert all(name in TrainConfig.__dataclass_fields__["peers"].metadata["help"] for name in PEER_NAMES)


def test_fds_refuses_features_of_another_width():
    scores = torch.linspace(1, 10, 20, dtype=torch.float64)
    fds = P.FDS(scores, num_bins=4, statistics="steps")
    fds.bind(_config())
    fds.calibrate(torch.randn(20, 3, dtype=torch.float64), scores)
    fds.end_epoch()
    with pytest.raises(ValueError, match="fds: the features entering the head changed width, from 3 to 5"):
        fds.calibrate(torch.randn(20, 5, dtype=torch.float64), scores)


def test_a_score_on_a_bin_edge_starts_the_bin_above_it():
    """Range 1..8 in 100 bins of 0.07: 2.75, 4.5 and 6.25 are the edges of bins 25, 50 and
    75 (dividing by the width 0.07 put them in 24, 49 and 74)."""
    from elta_core.adapters.torch.peers import bin_index

    edges = torch.tensor([1.0, 2.75, 4.5, 6.25, 8.0])
    assert bin_index(edges, 1.0, 8.0, 100).tolist() == [0, 25, 50, 75, 99]
    inside = torch.tensor([2.7499, 2.7501])
    assert bin_index(inside, 1.0, 8.0, 100).tolist() == [24, 25]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_peers_regularisers_and_statistics_run_in_float32_under_autocast(dtype):
    """Under autocast RankSim's similarity matrix ran in half precision, whose ties reorder
    its ranks (LDS + RankSim + C-Mixup: 9 % off float32); the peers now compute in float32
    under autocast, as FLSA and EMD do. The head's input here is the batch itself (a
    Flatten), so float32 and autocast give the peers the same features."""
    x, labels, scores = _batch(64)
    x = x * 1e-3 + 1.0  # features close together: half precision ties their similarities
    results = []
    for autocast in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(6, 10))
        wrapper = ELTAWrapper(model, "1", tfa=False, flsa_weight=0, seed=0, peers=[P.LDS(scores), P.RankSim()])
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            out = wrapper(x, labels)
        results.append(out.peer_losses["ranksim"])
    assert results[1].dtype == torch.float32
    assert results[1].item() == results[0].item()


def test_the_cores_label_scores_and_flsa_under_autocast_equal_float32():
    """The distribution's score (a matmul) and FLSA's similarities ran in bf16 under
    autocast: FLSA's label matrix then came from rounded scores."""
    x, labels, _ = _batch(64)
    results = []
    for autocast in (False, True):
        torch.manual_seed(0)
        wrapper = ELTAWrapper(nn.Sequential(nn.Flatten(), nn.Linear(6, 10)), "1", tfa=False, flsa_weight=1.0, seed=0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            results.append(wrapper(x, labels).flsa_loss)
    assert results[1].dtype == torch.float32 and results[1].item() == pytest.approx(results[0].item(), rel=1e-6)
