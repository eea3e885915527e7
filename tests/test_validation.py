"""Every bad input gets a ValueError that names the argument and what was expected."""

import subprocess
import sys

import numpy as np
import pytest

from elta_core import apds, flsa, losses, metrics, tfa

NAN_SCORES = np.array([5.0, np.nan, 4.0])
SCORES = np.array([5.0, 6.0, 4.0])
FEATURES = np.ones((3, 4))
DIST = np.full((3, 10), 0.1)
NEGATIVE_DIST = DIST.copy()
NEGATIVE_DIST[:, 0], NEGATIVE_DIST[:, 1] = -0.1, 0.3  # sums to 1, negative mass
LOGITS = np.zeros((3, 10))

BAD_CALLS = [
    ("scores: expected finite", lambda: tfa.sampling_probs(NAN_SCORES)),
    ("scores: expected finite", lambda: tfa.partner_probs(np.array([1.0, np.inf]))),
    ("tau1: expected a finite number > 0", lambda: tfa.sampling_probs(SCORES, tau1=0)),
    ("tau2: expected a finite number > 0", lambda: tfa.partner_probs(SCORES, tau2=-1)),
    ("eps: expected a finite number > 0", lambda: tfa.sample_pairs(SCORES, 1, eps=0)),
    ("scores: expected scores", lambda: tfa.sampling_probs(np.ones((2, 2, 2)))),
    ("num_pairs: expected at most the batch size 3", lambda: tfa.sample_pairs(SCORES, 4)),
    ("num_pairs: expected a fraction", lambda: tfa.sample_pairs(SCORES, 1.5)),
    ("num_pairs: expected a non-negative int", lambda: tfa.sample_pairs(SCORES, -1)),
    ("seed: expected None, an int", lambda: tfa.sample_pairs(SCORES, 1, seed="x")),
    ("i: expected indices in", lambda: tfa.mix_factor(SCORES, [0, 3], [1, 2])),
    ("j: expected 2 rows to match i", lambda: tfa.mix_factor(SCORES, [0, 1], [1])),
    ("i: expected integer indices", lambda: tfa.mix_factor(SCORES, np.array([0.5]), np.array([1]))),
    ("labels: expected 3 rows to match features", lambda: tfa.mix(FEATURES, SCORES[:2], [0], [1], [0.5])),
    ("lam: expected mixing factors in", lambda: tfa.mix(FEATURES, SCORES, [0], [1], [1.5])),
    ("features: expected finite", lambda: tfa.mix(FEATURES * np.nan, SCORES, [0], [1], [0.5])),
    ("features: expected a floating dtype", lambda: tfa.mix(np.ones((3, 4), dtype=np.uint8), SCORES, [0], [1], [0.5])),
    ("mode: expected 'append' or 'replace'", lambda: tfa.mix(FEATURES, SCORES, [0], [1], [0.5], mode="x")),
    ("features: expected finite", lambda: flsa.alignment_loss(FEATURES * np.inf, SCORES)),
    ("scores: expected 3 rows to match features", lambda: flsa.alignment_loss(FEATURES, SCORES[:2])),
    ("form: expected 'auto', 'direct' or 'gram'", lambda: flsa.alignment_loss(FEATURES, SCORES, form="fast")),
    ("scores: expected score distributions whose rows sum to 1", lambda: flsa.alignment_loss(FEATURES, DIST * 2)),
    ("scores: expected non-negative", lambda: flsa.label_similarity(DIST - 0.2)),
    ("bin_values: expected 10 values", lambda: flsa.alignment_loss(FEATURES, DIST, bin_values=[1, 2, 3])),
    ("features: expected a batch", lambda: flsa.feature_similarity(np.float64(3.0))),
    ("beta: expected a finite number >= 0", lambda: apds.sharpen(LOGITS, -0.5)),
    ("beta: expected a finite number >= 0", lambda: apds.sharpen(LOGITS, float("nan"))),
    ("logits: expected a 2-D array", lambda: apds.sharpen(np.zeros(10), 1.0)),
    ("logits: expected finite", lambda: apds.sharpen(LOGITS + np.nan, 1.0)),
    ("logits: expected at least 2 levels", lambda: apds.sharpen(np.zeros((3, 1)), 1.0)),
    ("bin_values: expected 10 values", lambda: apds.sharpen(LOGITS, 1.0, bin_values=np.arange(9))),
    ("mean_score: expected a finite number", lambda: apds.sharpen(LOGITS, 1.0, mean_score=float("inf"))),
    ("thresholds\\[1\\]: expected a threshold in \\(0, 1\\]", lambda: apds.grid_search(LOGITS, SCORES, thresholds=(0.5, 1.2))),
    ("thresholds\\[0\\]: expected a finite number > 0", lambda: apds.grid_search(LOGITS, SCORES, thresholds=(0,))),
    ("betas\\[0\\]: expected a finite number >= 0", lambda: apds.grid_search(LOGITS, SCORES, betas=(-1,))),
    ("betas: expected at least one value", lambda: apds.grid_search(LOGITS, SCORES, betas=())),
    ("labels: expected 3 rows to match logits", lambda: apds.grid_search(LOGITS, SCORES[:2])),
    ("labels: expected finite", lambda: apds.grid_search(LOGITS, NAN_SCORES)),
    ("min_selected: expected a count", lambda: apds.grid_search(LOGITS, SCORES, min_selected=0)),
    ("pseudo_label: expected 'prediction' or 'sharpened'", lambda: apds.grid_search(LOGITS, SCORES, pseudo_label="x")),
    ("threshold\\[0\\]: expected a threshold in \\(0, 1\\]", lambda: apds.select(LOGITS, 1.0, 2.0)),
    ("pred: expected score distributions whose rows sum to 1", lambda: losses.emd(DIST * 3, DIST)),
    ("target: expected non-negative", lambda: losses.emd(DIST, NEGATIVE_DIST)),
    ("target: expected shape \\(3, 10\\) to match pred", lambda: losses.emd(DIST, DIST[:2])),
    ("r: expected a finite number > 0", lambda: losses.emd(DIST, DIST, r=0)),
    ("form: expected 'sample' or 'batch'", lambda: losses.emd(DIST, DIST, form="x")),
    ("dist: expected a 2-D array", lambda: losses.scores_from_distribution(np.ones(3))),
    ("counts: expected finite", lambda: losses.distribution_from_counts(np.array([[1.0, np.nan]]))),
    ("true: expected 3 rows to match pred", lambda: metrics.plcc(SCORES, SCORES[:2])),
    ("pred: expected finite", lambda: metrics.evaluate(NAN_SCORES, SCORES)),
    ("pred: plcc needs at least 2 samples", lambda: metrics.plcc([1.0], [1.0])),
    ("threshold: expected a finite number", lambda: metrics.accuracy(SCORES, SCORES, threshold=float("nan"))),
    ("scores: elta_core cannot handle inputs of type builtins.str", lambda: tfa.sampling_probs("abc")),
]


@pytest.mark.parametrize("message,call", BAD_CALLS, ids=[m.split(":")[0] + str(k) for k, (m, _) in enumerate(BAD_CALLS)])
def test_bad_input_names_the_argument(message, call):
    with pytest.raises(ValueError, match=message):
        call()


def test_torch_inputs_get_the_same_errors():
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="features: expected finite"):
        flsa.alignment_loss(torch.full((3, 2), float("nan")), torch.ones(3))
    with pytest.raises(ValueError, match="scores: expected a real numeric tensor"):
        tfa.sampling_probs(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="labels: expected 3 rows"):
        apds.grid_search(torch.zeros(3, 10), torch.ones(2))


def test_importing_elta_core_imports_no_framework():
    code = (
        "import sys, elta_core, elta_core.tfa, elta_core.flsa, elta_core.apds, elta_core.metrics\n"
        "import numpy as np\n"
        "elta_core.flsa.alignment_loss(np.ones((3, 2)), np.arange(3.0))\n"
        "loaded = [m for m in ('torch', 'tensorflow', 'jax', 'keras') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_grid_search_refuses_scores_off_the_rating_scale():
    with pytest.raises(ValueError, match=r"labels: expected scores on the rating scale of bin_values \(1..10\)"):
        apds.grid_search(np.zeros((5, 10)), np.array([50.0, 3, 4, 5, 6]), thresholds=[0.2], min_selected=1)
    assert apds.grid_search(np.zeros((5, 10)), np.array([1.0, 3, 4, 5, 10]), thresholds=[0.05], min_selected=1)


def test_torchmetrics_metric_refuses_an_unknown_key():
    pytest.importorskip("torchmetrics")
    from elta_core.adapters.torch.metrics import AestheticsMetrics

    with pytest.raises(ValueError, match="key: expected None or one of plcc, srcc"):
        AestheticsMetrics(key="bogus")
    assert AestheticsMetrics(key="mae_high").key == "mae_high"


def test_a_manifest_whose_settings_were_emptied_is_a_named_error(tmp_path):
    import json

    from elta_core.run_state import RunManifest, StaleStateError

    manifest = RunManifest(tmp_path)
    manifest.check_config({"lr": 1e-4})
    (tmp_path / "stage.pt").write_bytes(b"x")
    manifest.record("checkpoint", tmp_path / "stage.pt", "key")
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["config"] = {}
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(StaleStateError, match="records finished stages but no settings"):
        RunManifest(tmp_path).check_config({"lr": 1e-3})


def test_meta_tensors_give_shapes_for_shape_inference():
    """A meta tensor has a shape and no values: the value checks are skipped (there is
    nothing to check) and every shape-only function returns meta tensors of the right
    shape, gradients included; before, each crashed with "Tensor.item() cannot be called
    on meta tensors"."""
    torch = pytest.importorskip("torch")
    from elta_core.adapters.torch import ELTAWrapper
    from tests.torch_models import TwoLayer, distributions

    features = torch.randn(8, 16, device="meta", requires_grad=True)
    scores, dists = torch.rand(8, device="meta"), torch.rand(8, 10, device="meta")
    for form in ("direct", "gram"):
        assert flsa.alignment_loss(features, scores, form=form).shape == ()
    assert flsa.alignment_loss(features, dists).device.type == "meta"
    assert flsa.feature_similarity(features).shape == (8, 8)
    mixed_features, mixed_labels, _ = tfa.augment(features, dists, num_pairs=4)
    assert mixed_features.shape == (12, 16) and mixed_labels.shape == (12, 10) and mixed_features.is_meta
    assert apds.sharpen(dists, 2.0).shape == (8, 10)
    assert apds.temperatures(dists, 2.0).shape == (8,)
    assert apds.predicted_scores(dists).shape == (8,)
    assert losses.emd(dists, dists).is_meta
    assert losses.distribution_from_counts(dists).shape == (8, 10)
    (flsa.alignment_loss(features, scores) + mixed_features.sum()).backward()
    assert features.grad.shape == (8, 16) and features.grad.is_meta

    wrapper = ELTAWrapper(TwoLayer().to("meta"), "fc", num_pairs=2, seed=0).train()
    out = wrapper(torch.randn(8, 4, device="meta"), distributions(8).to("meta"))
    assert out.loss.is_meta and out.loss.shape == ()


def test_results_that_depend_on_values_refuse_meta_tensors_by_name():
    torch = pytest.importorskip("torch")
    logits = torch.rand(8, 10, device="meta")
    calls = {
        "which samples are selected": lambda: apds.select(logits, 1.0, 0.1),
        "which samples are kept": lambda: apds.keep_most_confident(
            logits, apds.Selection(torch.arange(8), logits), 1.0, 3),
        "the grid search": lambda: apds.grid_search(logits, torch.rand(8, 10)),
        "a metric": lambda: metrics.plcc(torch.rand(8, device="meta"), torch.rand(8)),
    }
    for result, call in calls.items():
        with pytest.raises(ValueError, match=f"on the meta device has shapes but no values, and {result}"):
            call()
    with pytest.raises(ValueError, match="^labels: a tensor on the meta device"):
        apds.grid_search(torch.randn(8, 10), torch.rand(8, 10, device="meta"))


def test_aesthetics_metrics_called_on_a_last_batch_of_two_does_not_stop_training():
    """Lightning's ``self.log('plcc', metric(p, y))`` calls the metric on every batch: a last
    batch of 2 has no value of its own (NaN, said once) and still counts in compute()."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchmetrics")
    from elta_core import metrics as core_metrics
    from elta_core.adapters.torch.metrics import AestheticsMetrics

    metric = AestheticsMetrics(key="plcc")
    pred, true = torch.tensor([3.0, 6.0, 4.5, 8.0, 2.0]), torch.tensor([2.5, 7.0, 5.0, 7.5, 1.5])
    assert torch.isfinite(metric(pred[:3], true[:3]))
    with pytest.warns(UserWarning, match="a batch of 2 sample"):
        assert torch.isnan(metric(pred[3:], true[3:]))
    assert metric.compute().item() == pytest.approx(core_metrics.evaluate(pred, true)["plcc"])
    with pytest.warns(UserWarning):
        everything = AestheticsMetrics()(pred[3:], true[3:])
    assert all(torch.isnan(value) for value in everything.values())
