"""The Keras adapter and the core on Keras tensors, for the backend in KERAS_BACKEND.

Each backend runs in its own process (``tests/test_keras.py`` starts them), since Keras
picks its backend once per process.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import ops  # noqa: E402

from elta_core import apds, flsa, losses, tfa  # noqa: E402
from elta_core.adapters.keras import ELTAModel, pseudo_label, split_at  # noqa: E402
from tests import reference, step_cases  # noqa: E402

BACKEND = keras.backend.backend()
assert BACKEND == os.environ.get("KERAS_BACKEND", BACKEND)
FLOAT32 = dict(rtol=2e-4, atol=2e-5)


def tensor(values) -> object:
    return ops.convert_to_tensor(np.asarray(values, dtype=np.float32))


def array(x) -> np.ndarray:
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def gradient(fn, x):
    """d fn / d x through the backend's own autodiff."""
    if BACKEND == "jax":
        import jax

        return array(jax.grad(fn)(x))
    if BACKEND == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(x)
            value = fn(x)
        return array(tape.gradient(value, x))
    import torch

    leaf = x.detach().clone().requires_grad_(True)
    fn(leaf).backward()
    return array(leaf.grad)


def finite_difference(fn, x: np.ndarray, step: float = 1e-6) -> np.ndarray:
    out = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        out[index] = (fn(up) - fn(down)) / (2 * step)
    return out


# -- the core on Keras tensors ------------------------------------------------------

@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    return rng.normal(size=(12, 7)), rng.uniform(1, 10, 12)


def test_tfa_probabilities_equal_reference(batch):
    _, s = batch
    s = np.float32(s).astype(np.float64)
    np.testing.assert_allclose(array(tfa.sampling_probs(tensor(s))), reference.sampling_probs(s, 0.2), **FLOAT32)
    np.testing.assert_allclose(array(tfa.partner_probs(tensor(s))), reference.partner_probs(s, 4.0, 1e-2), **FLOAT32)
    i, j = np.array([0, 3, 5]), np.array([1, 2, 11])
    np.testing.assert_allclose(array(tfa.mix_factor(tensor(s), ops.convert_to_tensor(i), ops.convert_to_tensor(j))),
                               reference.mix_factor(s, i, j, 0.2), **FLOAT32)


def test_int_seed_draws_the_numpy_pairs(batch):
    _, s = batch
    drawn = tfa.sample_pairs(tensor(s), 4, seed=7)
    expected = tfa.sample_pairs(np.float32(s), 4, seed=7)
    np.testing.assert_array_equal(array(drawn.i), expected.i)
    np.testing.assert_array_equal(array(drawn.j), expected.j)
    np.testing.assert_allclose(array(drawn.lam), expected.lam, **FLOAT32)


def test_seed_generator_reproduces_pairs(batch):
    _, s = batch
    first = [array(tfa.sample_pairs(tensor(s), 3, seed=keras.random.SeedGenerator(5)).i) for _ in range(2)]
    np.testing.assert_array_equal(first[0], first[1])


@pytest.mark.parametrize("method", ["direct", "gram"])
def test_flsa_loss_and_gradient_equal_reference(batch, method):
    z, s = batch
    z = np.float32(z).astype(np.float64)
    s = np.float32(s).astype(np.float64)
    scores = tensor(s)
    loss = flsa.alignment_loss(tensor(z), scores, form=method)
    assert float(array(loss)) == pytest.approx(reference.alignment_loss(z, s), rel=1e-5)
    grad = gradient(lambda x: flsa.alignment_loss(x, scores, form=method, validate=False), tensor(z))
    expected = finite_difference(lambda x: reference.alignment_loss(x, s), z)
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-6)


def test_flsa_degenerate_batches_are_zero(batch):
    z, _ = batch
    assert float(array(flsa.alignment_loss(tensor(z), tensor(np.full(12, 5.0))))) == 0.0
    assert float(array(flsa.alignment_loss(tensor(z[:1]), tensor([3.0])))) == 0.0


def test_apds_equal_reference():
    rng = np.random.default_rng(1)
    logits = np.float32(rng.normal(size=(40, 10)) * 2).astype(np.float64)
    labels = rng.uniform(1, 10, 40)
    np.testing.assert_allclose(array(apds.sharpen(tensor(logits), 1.2)), reference.sharpen(logits, 1.2), **FLOAT32)
    result = apds.grid_search(tensor(logits), tensor(labels), thresholds=[0.2, 0.3, 0.5], min_selected=1)
    expected = apds.grid_search(logits, labels, thresholds=[0.2, 0.3, 0.5], min_selected=1)
    for cell, ref in zip(result.table, expected.table):
        assert abs(cell.num_selected - ref.num_selected) <= 1
    chosen = apds.select(tensor(logits), 1.2, 0.3)
    np.testing.assert_array_equal(array(chosen.indices), apds.select(logits, 1.2, 0.3).indices)


def test_losses_equal_reference():
    rng = np.random.default_rng(2)
    pred, target = rng.dirichlet(np.ones(10), 6), rng.dirichlet(np.ones(10), 6)
    pred, target = np.float32(pred).astype(np.float64), np.float32(target).astype(np.float64)
    assert float(array(losses.emd(tensor(pred), tensor(target), validate=False))) == pytest.approx(
        np.mean([reference.emd(p[None], t[None]) for p, t in zip(pred, target)]), rel=1e-5)
    assert float(array(losses.task_loss(tensor(pred), tensor(target), "probs", validate=False))) == pytest.approx(
        float(losses.task_loss(pred, target, "probs")), rel=1e-5)


# -- models ------------------------------------------------------------------------------

def nima_model() -> keras.Model:
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(24, activation="relu", name="fc1")(inputs)
    hidden = keras.layers.Dropout(0.1, name="drop")(hidden)
    outputs = keras.layers.Dense(10, activation="softmax", name="scores")(hidden)
    return keras.Model(inputs, outputs, name="nima")


def data(rows: int, width: int | tuple = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    shape = (rows,) + (width if isinstance(width, tuple) else (width,))
    return rng.random(shape, dtype=np.float32), rng.dirichlet(np.ones(10) * 0.7, rows).astype(np.float32)


def test_mobilenet_v3_small_fits_and_predicts_like_the_model():
    # minimalistic (no squeeze-excite, no hard-swish): a quarter fewer layers for XLA to compile, which
    # was most of this test's 73 s on JAX
    base = keras.applications.MobileNetV3Small(weights=None, input_shape=(64, 64, 3), classes=10,
                                               include_preprocessing=False, minimalistic=True)
    model = ELTAModel(base, "logits", num_pairs=3, seed=1)
    assert model.output_kind(ops.ones((1, 10))) == "probs"
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x, y = data(8, (64, 64, 3))
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # one step: compiling is the cost
    assert np.isfinite(history.history["loss"]).all()
    np.testing.assert_array_equal(model.predict(x[:4], verbose=0), base.predict(x[:4], verbose=0))
    np.testing.assert_array_equal(array(model(x[:4])), array(base(x[:4], training=False)))


def test_nima_model_fits_with_all_modules_and_metrics():
    base = nima_model()
    model = ELTAModel(base, "scores", num_pairs=0.25, flsa_weight=0.5, seed=0)
    model.compile(optimizer="adam", metrics=["mae"])
    x, y = data(50)
    before = base.get_weights()
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and "mae" in history.history
    assert any(not np.array_equal(a, b) for a, b in zip(before, base.get_weights()))
    np.testing.assert_array_equal(model.predict(x, verbose=0), base.predict(x, verbose=0))
    evaluation = model.evaluate(x, y, verbose=0, return_dict=True)
    assert np.isfinite(evaluation["loss"])


def test_same_seed_same_training():
    histories = []
    for _ in range(2):
        keras.utils.set_random_seed(4)
        model = ELTAModel(nima_model(), "scores", num_pairs=4, seed=9)
        model.compile(optimizer="sgd")
        x, y = data(32)
        histories.append(model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False).history["loss"])
    assert histories[0] == pytest.approx(histories[1], rel=1e-6)


def test_modules_switch_off_and_scalar_head():
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(8, activation="relu", name="fc1")(inputs)
    score = keras.layers.Dense(1, name="score")(hidden)
    base = keras.Model(inputs, score)
    x, y = data(24)
    scores = (y @ np.arange(1, 11, dtype=np.float32)).astype(np.float32)
    for options in (dict(tfa=False), dict(flsa_weight=0.0), dict()):
        model = ELTAModel(base, "score", seed=0, **options)
        model.compile(optimizer="sgd")
        assert np.isfinite(model.fit(x, scores, batch_size=8, epochs=1, verbose=0).history["loss"]).all()
    assert model.output_kind(ops.ones((1, 1))) == "score"


def test_sequential_and_backbone_head_models():
    sequential = keras.Sequential([keras.Input((16,)), keras.layers.Dense(8, name="a"),
                                   keras.layers.Dense(10, activation="softmax", name="b")])
    backbone, head = split_at(sequential, "b")
    x, y = data(20)
    np.testing.assert_allclose(array(head(backbone(x))), array(sequential(x)), rtol=1e-6)
    model = ELTAModel(backbone=backbone, head_model=head, output="probs", seed=0)
    model.compile(optimizer="sgd")
    model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    np.testing.assert_allclose(model.predict(x, verbose=0), sequential.predict(x, verbose=0), rtol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    model = ELTAModel(nima_model(), "scores", num_pairs=2, seed=3)
    model.compile(optimizer="adam")
    x, y = data(20)
    model.fit(x, y, batch_size=10, epochs=1, verbose=0)
    path = tmp_path / "elta.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ELTAModel) and loaded.num_pairs == 2 and loaded.head_name == "scores"
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    loaded.fit(x, y, batch_size=10, epochs=1, verbose=0)  # trains again after loading


def test_self_training_round(tmp_path):
    model = ELTAModel(nima_model(), "scores", seed=0)
    model.compile(optimizer="adam")
    x, y = data(60)
    model.fit(x, y, batch_size=20, epochs=1, verbose=0)
    pool, _ = data(40, seed=1)
    result = pseudo_label(model, (x, y), pool, thresholds=[0.1, 0.15, 0.2], min_selected=1, max_selected=30,
                          verbose=0)
    assert 0 < len(result.indices) <= 30 and result.num_selected >= len(result.indices)
    assert result.labels.shape == (len(result.indices), 10)
    np.testing.assert_allclose(result.labels.sum(axis=1), 1.0, atol=1e-5)
    round2 = result.round2(x, y, pool, batch_size=16)
    assert sum(len(batch[0]) for batch in (round2[k] for k in range(len(round2)))) == 60 + len(result.indices)
    assert np.isfinite(model.fit(round2, epochs=1, verbose=0).history["loss"]).all()
    separate = result.round2(x, y, pool, batch_size=20, mode="separate")
    (x_l, x_u), (y_l, y_u) = separate[0]
    assert len(x_l) == 20 and len(x_u) == min(20, len(result.indices))
    history = model.fit(separate, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all() and np.isfinite(history["task_loss"]).all()
    with pytest.raises(ValueError, match="round2: expected 'concat' or 'separate'"):
        result.round2(x, y, pool, mode="mixed")


# -- bad input -------------------------------------------------------------------------

def test_bad_inputs():
    base = nima_model()
    with pytest.raises(ValueError, match=r"head: .* has no layer 'score' \(nearest names: scores"):
        ELTAModel(base, "score")
    with pytest.raises(ValueError, match="head: expected the name"):
        ELTAModel(base)
    with pytest.raises(ValueError, match="model: expected a keras.Model"):
        ELTAModel(object(), "scores")
    with pytest.raises(ValueError, match="num_pairs"):
        ELTAModel(base, "scores", num_pairs=-1)
    with pytest.raises(ValueError, match="output"):
        ELTAModel(base, "scores", output="softmax")
    with pytest.raises(ValueError, match="flsa_weight"):
        ELTAModel(base, "scores", flsa_weight=-1.0)
    model = ELTAModel(base, "scores", seed=0)
    model.compile(optimizer="sgd")
    x, y = data(16)
    with pytest.raises(ValueError, match="y: expected distributions over the model's 10 outputs, got 9 levels"):
        model.fit(x, y[:, :9] / y[:, :9].sum(1, keepdims=True), batch_size=8, epochs=1, verbose=0)
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(x, y, sample_weight=np.ones(16), batch_size=8, epochs=1, verbose=0)


def test_subclassed_model_needs_backbone_and_head():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.body = keras.layers.Dense(8, name="body")
            self.top = keras.layers.Dense(10, name="top")

        def call(self, x):
            return self.top(self.body(x))

    net = Net()
    net(np.zeros((1, 16), np.float32))
    with pytest.raises(ValueError, match="backbone= and head_model="):
        ELTAModel(net, "top")


def test_apds_on_a_scalar_head_is_refused():
    inputs = keras.Input((16,))
    base = keras.Model(inputs, keras.layers.Dense(1, name="score")(keras.layers.Dense(4, name="fc")(inputs)))
    x, y = data(20)
    with pytest.raises(ValueError, match="model: APDS needs a distribution head"):
        pseudo_label(base, (x, y), x, verbose=0)


def test_mixed_bfloat16_policy_trains():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        inputs = keras.Input((16,))
        hidden = keras.layers.Dense(24, activation="relu", name="fc1")(inputs)
        outputs = keras.layers.Dense(10, activation="softmax", name="scores", dtype="float32")(hidden)
        model = ELTAModel(keras.Model(inputs, outputs), "scores", num_pairs=3, seed=0)
        model.compile(optimizer="adam")
        x, y = data(40)
        assert np.isfinite(model.fit(x, y, batch_size=16, epochs=1, verbose=0).history["loss"]).all()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_training_call_returns_the_model_output_and_losses_are_metrics():
    base = nima_model()
    model = ELTAModel(base, "scores", num_pairs=2, flsa_weight=0.5, seed=0)
    model.compile(optimizer="adam")
    x, y = data(32)
    out = model(x[:4], training=True)
    assert not isinstance(out, (tuple, list)) and tuple(out.shape) == (4, 10)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    assert {"loss", "task_loss", "flsa_loss"} <= set(history)
    assert history["flsa_loss"][0] > 0


@pytest.mark.parametrize("case", step_cases.BAD_LABELS, ids=[c[0] for c in step_cases.BAD_LABELS])
def test_shared_bad_labels_are_refused(case):
    _, make_labels, message = case
    model = ELTAModel(nima_model(), "scores", seed=0)
    model.compile(optimizer="sgd")
    x, _ = data(16)
    with pytest.raises(ValueError, match=message):
        model.fit(x, make_labels(step_cases.distributions(16)), batch_size=8, epochs=1, verbose=0)


@pytest.mark.parametrize("case", step_cases.GOOD_LABELS, ids=[c[0] for c in step_cases.GOOD_LABELS])
def test_shared_good_labels_train(case):
    _, make_labels = case
    model = ELTAModel(nima_model(), "scores", num_pairs=2, seed=0)
    model.compile(optimizer="sgd")
    x, _ = data(16)
    history = model.fit(x, make_labels(step_cases.distributions(16)), batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all()


def test_non_finite_loss_stops_fit_with_a_named_error():
    base = nima_model()
    kernel = base.get_layer("scores").kernel
    kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))  # (TF's oneDNN ReLU maps a NaN input to 0)
    model = ELTAModel(base, "scores", seed=0)
    model.compile(optimizer="sgd")
    x, y = data(16)
    with pytest.raises(FloatingPointError, match="loss is nan"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)



@pytest.mark.parametrize("case", step_cases.BAD_LABELS[:3], ids=[c[0] for c in step_cases.BAD_LABELS[:3]])
def test_bad_labels_from_a_dataset_are_refused_in_the_traced_step(case):
    """Labels that arrive through a PyDataset are not seen by fit's host check."""
    _, make_labels, _ = case

    class Batches(keras.utils.PyDataset):
        def __init__(self, x, y):
            super().__init__()
            self.x, self.y = x, y

        def __len__(self):
            return 2

        def __getitem__(self, index):
            return self.x[index * 8:(index + 1) * 8], self.y[index * 8:(index + 1) * 8]

    model = ELTAModel(nima_model(), "scores", seed=0)
    model.compile(optimizer="sgd")
    x, _ = data(16)
    with pytest.raises(ValueError, match="y: the labels of batch [01] are not valid"):
        model.fit(Batches(x, make_labels(step_cases.distributions(16))), epochs=1, verbose=0)
    fresh = ELTAModel(nima_model(), "scores", seed=0)  # the invalid batch already updated the first one
    fresh.compile(optimizer="sgd")
    good = fresh.fit(Batches(x, step_cases.distributions(16)), epochs=1, verbose=0).history
    assert good["invalid_label_batches"] == [0.0]


def test_an_invalid_batch_in_the_middle_of_a_tf_data_epoch_changes_no_weight():
    """Batch 1 of 3 has a NaN label: its update is skipped in the traced step and fit stops
    after it, so the weights equal those of a run that trained batch 0 alone (before, the
    NaN update was applied and every weight was NaN when fit stopped)."""
    tf = pytest.importorskip("tensorflow")
    x, _ = data(24)
    y = step_cases.distributions(24).astype("float32")
    bad = y.copy()
    bad[10, 3] = np.nan

    def trained(labels, batches):
        keras.utils.set_random_seed(0)
        model = ELTAModel(nima_model(), "scores", seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(8).take(batches)
        try:
            model.fit(dataset, epochs=1, verbose=0)
        except ValueError as error:
            assert "the labels of batch 1 are not valid, so its update was skipped" in str(error)
        else:
            assert batches == 1, "the NaN batch was not refused"
        return [np.asarray(ops.convert_to_numpy(w)) for w in model.trainable_weights]

    stopped, first_batch_only = trained(bad, 3), trained(y, 1)
    for a, b in zip(stopped, first_batch_only):
        assert np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_settings_read_as_attributes():
    model = ELTAModel(nima_model(), "scores", tfa=False, output="probs")
    assert model.tfa is False and model.num_pairs == 1 and model.flsa_weight == 1.0
    assert model.elta_config.output == "probs"


def test_auto_head_is_the_last_layer_with_weights():
    assert ELTAModel(nima_model(), "auto").head_name == "scores"
    base = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=10,
                                               include_preprocessing=False)
    assert ELTAModel(base, "auto").head_name == "logits"


def _trained_weights(x, y):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(8, activation="relu", name="fc")(inputs)
    model = ELTAModel(keras.Model(inputs, keras.layers.Dense(10, name="scores")(hidden)), head="scores",
                      num_pairs=4, flsa_weight=1.0, seed=0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
    return [np.asarray(ops.convert_to_numpy(w)) for w in model.weights]


def test_data_parallel_on_jax_equals_one_device_and_is_refused_elsewhere(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 16)).astype("float32"), rng.dirichlet(np.ones(10), 64).astype("float32")
    if BACKEND != "jax":
        monkeypatch.setattr(keras.distribution, "distribution", lambda: object())
        with pytest.raises(ValueError, match=f"DataParallel on the JAX backend only; this process runs '{BACKEND}'"):
            _trained_weights(x, y)
        return
    import jax

    assert len(jax.devices()) == 2, "tests/test_keras.py starts the JAX process with 2 host devices"
    one_device = _trained_weights(x, y)
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    try:
        two_devices = _trained_weights(x, y)  # TFA and FLSA see the global batch of 16, split over 2 devices
        mesh = keras.distribution.DeviceMesh((2,), ["batch"], jax.devices())
        layout = keras.distribution.LayoutMap(mesh)
        keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch"))
        with pytest.raises(ValueError, match="supports DataParallel, not ModelParallel"):
            _trained_weights(x, y)
    finally:
        keras.distribution.set_distribution(None)
    for a, b in zip(one_device, two_devices):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_data_parallel_names_a_batch_the_devices_do_not_divide():
    """JAX's raw IndivisibleError before; now what to change, checked before training for
    arrays and named when a dataset's batch does not divide."""
    if BACKEND != "jax":
        pytest.skip("DataParallel runs on the JAX backend")
    import jax
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x, y = rng.random((29, 16)).astype("float32"), rng.dirichlet(np.ones(10), 29).astype("float32")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    try:
        inputs = keras.Input((16,))
        model = ELTAModel(keras.Model(inputs, keras.layers.Dense(10, name="scores")(inputs)), head="scores", seed=0)
        model.compile(optimizer="sgd")
        advice = "give a batch_size that is a multiple of 2 and drop or pad the last batch"
        with pytest.raises(ValueError, match=f"over 2 devices, and batch_size is 15, .*{advice}"):
            model.fit(x, y, batch_size=15, epochs=1, verbose=0)
        with pytest.raises(ValueError, match=r"the last batch is 5 \(29 samples in batches of 8\)"):
            model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        with pytest.raises(ValueError, match=r"a batch has shape \(5, 16\), which 2 does not divide"):
            model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), epochs=1, verbose=0)
        model.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True), epochs=1, verbose=0)
    finally:
        keras.distribution.set_distribution(None)


def test_score_mae_is_the_error_of_the_predicted_score():
    """Keras's "mae" on a distribution head averaged the error of the 10 probabilities."""
    from elta_core.adapters.keras import ScoreMAE

    generator = np.random.default_rng(4)
    logits = generator.normal(size=(12, 10)).astype("float32")
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = generator.dirichlet(np.ones(10), 12).astype("float32")
    levels = np.arange(1, 11)
    expected = np.mean(np.abs(probs @ levels - labels @ levels))
    for output, predictions in (("logits", logits), ("probs", probs), ("auto", probs), ("auto", logits)):
        metric = ScoreMAE(output=output)
        metric.update_state(tensor(labels), tensor(predictions))
        assert float(array(metric.result())) == pytest.approx(expected, rel=1e-5), output
    scores = ScoreMAE()
    scores.update_state(tensor(probs @ levels), tensor((probs @ levels)[:, None]))  # a score head, exact
    assert float(array(scores.result())) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="output: expected 'auto', 'logits', 'probs' or 'score'"):
        ScoreMAE(output="distribution")


def test_the_progress_bar_leaves_out_counters_that_say_nothing(capsys):
    model = ELTAModel(nima_model(), "scores", seed=0)
    model.compile(optimizer="sgd")
    x, y = data(32)
    history = model.fit(x, y, batch_size=16, epochs=1, verbose=2, validation_data=(x, y)).history
    printed = capsys.readouterr().out
    assert "loss" in printed and "invalid_label_batches" not in printed and "val_flsa_loss" not in printed
    assert history["invalid_label_batches"] == [0.0]  # the history keeps every value
