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


@pytest.mark.parametrize("size,sigma", [(1, 1.0), (5, 2.0), (9, 0.7)])
def test_gaussian_window_matches_reference(size, sigma):
    np.testing.assert_allclose(P.gaussian_window(size, sigma).numpy(), ref.gaussian_window(size, sigma), rtol=1e-12)


@pytest.mark.parametrize("edges", ["constant", "reflect"])
@given(values=hnp.arrays(np.float64, st.integers(3, 30), elements=st.floats(-5, 5)))
@settings(max_examples=30, deadline=None)
def test_smooth_bins_matches_reference(edges, values):
    window = ref.gaussian_window(5, 2.0)
    got = P.smooth_bins(torch.from_numpy(values), torch.from_numpy(window), edges).numpy()
    np.testing.assert_allclose(got, ref.smooth_bins(values, window, edges), atol=1e-12)


@given(scores=scores_1_10, num_bins=st.integers(2, 30), power=st.sampled_from([0.5, 1.0]))
@settings(max_examples=40, deadline=None)
def test_lds_weights_match_reference_and_average_one_over_the_training_set(scores, num_bins, power):
    window = P.gaussian_window(5, 2.0)
    scores_t = torch.from_numpy(scores)
    weights = P.lds_weights(scores_t, scores.min(), scores.max(), num_bins, window, power)
    np.testing.assert_allclose(weights.numpy(), ref.lds_weights(scores, num_bins, window.numpy(), power), rtol=1e-10)
    per_sample = weights[P.bin_index(scores_t, scores.min(), scores.max(), num_bins)]
    assert float(per_sample.mean()) == pytest.approx(1.0, rel=1e-10)


def test_lds_weights_rarer_labels_more():
    scores = torch.tensor([5.0] * 50 + [7.0] * 10 + [9.0] * 2 + [1.0])
    lds = P.LDS(scores, num_bins=10)
    lds.bind(_config())
    w = lds.sample_weights(torch.tensor([5.0, 7.0, 9.0]))
    assert w[0] < w[1] < w[2]


def test_fds_statistics_and_calibration_match_reference():
    generator = np.random.default_rng(0)
    scores = generator.uniform(1, 10, 200)
    features = generator.normal(size=(200, 6)) + scores[:, None]
    fds = P.FDS(torch.from_numpy(scores), num_bins=8, momentum=0.9)
    fds.bind(_config())
    features_t, scores_t = torch.from_numpy(features), torch.from_numpy(scores)
    assert torch.equal(fds.calibrate(features_t, scores_t), features_t)  # no statistics yet: unchanged
    fds.end_epoch()
    bins = np.array([ref.bin_of(s, scores.min(), scores.max(), 8) for s in scores])
    mean = np.stack([features[bins == b].mean(0) for b in range(8)])
    var = np.stack([features[bins == b].var(0) for b in range(8)])
    np.testing.assert_allclose(fds.running["mean"].numpy(), mean, rtol=1e-10)
    np.testing.assert_allclose(fds.running["var"].numpy(), var, rtol=1e-9)
    window = ref.gaussian_window(5, 2.0)
    smoothed_mean = np.stack([ref.smooth_bins(mean[:, d], window, "reflect") for d in range(6)], 1)
    smoothed_var = np.stack([ref.smooth_bins(var[:, d], window, "reflect") for d in range(6)], 1)
    expected = (features - mean[bins]) * np.sqrt(np.clip(smoothed_var[bins] / var[bins], 0.1, 10)) + smoothed_mean[bins]
    np.testing.assert_allclose(fds.calibrate(features_t, scores_t).numpy(), expected, rtol=1e-9)

    # every training forward is observed: the second epoch saw `features` (just above) and
    # `features + 1`, mean + 0.5, and folds in with momentum 0.9
    fds.calibrate(torch.from_numpy(features + 1.0), scores_t)
    fds.end_epoch()
    np.testing.assert_allclose(fds.running["mean"].numpy(), 0.9 * mean + 0.1 * (mean + 0.5), rtol=1e-10)


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


def test_ranksim_keeps_one_row_per_distinct_label():
    scores = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 3.0])
    rows = P.unique_label_rows(scores, torch.Generator().manual_seed(0))
    assert sorted(scores[rows].tolist()) == [1.0, 2.0, 3.0] and torch.equal(rows, rows.sort().values)


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
    weights = torch.from_numpy(ref.lds_weights(scores.double().numpy(), 6, ref.gaussian_window(5, 2.0), 0.5))
    bins = [ref.bin_of(s, float(scores.min()), float(scores.max()), 6) for s in scores.double().tolist()]
    expected = (per_sample.double() * weights[bins]).mean()
    assert float(out.loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def test_balanced_mse_replaces_the_task_loss_and_learns_sigma():
    x, _, scores = _batch()
    bmse = P.BalancedMSE()
    wrapper = ELTAWrapper(_model(1), "2", tfa=False, flsa_weight=0, peers=[bmse], bin_values=tuple(range(1, 11)))
    out = wrapper(x, scores)
    expected = ref.bmc(out.predictions.detach().double().reshape(-1).numpy(), scores.double().numpy(), 1.0)
    assert float(out.loss) == pytest.approx(expected, rel=1e-5)
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
    assert float(out.loss) == pytest.approx(float(total), rel=1e-6)
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
    (lambda: P.LDS(torch.rand(5), num_bins=1), "num_bins: expected an int >= 2"),
    (lambda: P.LDS(torch.rand(5), kernel_size=4), "kernel_size: expected an odd number"),
    (lambda: P.LDS(torch.rand(5), power=0), "power: expected a finite number > 0"),
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
    from elta_core.app.cli import PEER_NAMES

    assert PEER_NAMES == tuple(P.PEERS)


def test_fds_refuses_features_of_another_width():
    scores = torch.linspace(1, 10, 20, dtype=torch.float64)
    fds = P.FDS(scores, num_bins=4)
    fds.bind(_config())
    fds.calibrate(torch.randn(20, 3, dtype=torch.float64), scores)
    fds.end_epoch()
    with pytest.raises(ValueError, match="fds: the features entering the head changed width, from 3 to 5"):
        fds.calibrate(torch.randn(20, 5, dtype=torch.float64), scores)
