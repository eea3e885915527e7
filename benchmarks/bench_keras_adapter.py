"""One Keras training step (``train_on_batch``) of a NIMA-style model (a 1024-wide
feature layer, 10-level softmax head), B = 48, CPU, on the backend in KERAS_BACKEND:
``ELTAModel`` with TFA (4 pairs) and FLSA on, against the same model compiled with
Keras's own loss (the EMD written in ``keras.ops``). Run once per backend:

    KERAS_BACKEND=jax python -m pytest benchmarks/bench_keras_adapter.py --benchmark-enable
"""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from elta_core.adapters.keras import ELTAModel  # noqa: E402

BATCH, INPUT, WIDTH = 48, 512, 1024


def _emd(y_true, y_pred):
    ops = keras.ops
    gap = ops.cumsum(y_pred, axis=1) - ops.cumsum(y_true, axis=1)
    return ops.mean(ops.sqrt(ops.mean(gap * gap, axis=1)))


def _setup(wrapped: bool):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((INPUT,))
    features = keras.layers.Dense(WIDTH, activation="relu", name="features")(inputs)
    features = keras.layers.Dense(WIDTH, activation="relu", name="features2")(features)
    outputs = keras.layers.Dense(10, activation="softmax", name="scores")(features)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    x = rng.random((BATCH, INPUT), dtype=np.float32)
    y = rng.dirichlet(np.ones(10), BATCH).astype(np.float32)
    if wrapped:
        model = ELTAModel(model, "scores", num_pairs=4, flsa_weight=1.0, seed=0)
        model.compile(optimizer="sgd")
    else:
        model.compile(optimizer="sgd", loss=_emd)
    model.train_on_batch(x, y)  # traces / compiles
    return lambda: model.train_on_batch(x, y)


@pytest.mark.parametrize("name", ["plain model (baseline)", "ELTAModel, TFA + FLSA"])
def test_keras_training_step_overhead(benchmark, name):
    step = _setup(wrapped=name.startswith("ELTA"))
    benchmark.group = f"Keras ({keras.backend.backend()}) train_on_batch, MLP {INPUT}-{WIDTH}-{WIDTH}-10, B={BATCH}, CPU"
    benchmark.pedantic(step, rounds=30, warmup_rounds=3)
