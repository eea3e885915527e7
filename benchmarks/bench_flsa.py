"""FLSA loss, forward plus backward, on torch CPU: elta_core against the plain formula.

The plain formula is what a user would write from Eqs. 5-6: normalise, form the B x B
cosine and label matrices, take the mean squared gap, backpropagate.
"""

import pytest

torch = pytest.importorskip("torch")

from benchmarks.baselines import plain_formula  # noqa: E402
from benchmarks.memory import clearing_gradient, peak_extra_mib  # noqa: E402
from elta_core import flsa  # noqa: E402

WIDTH = 256
SIZES = [48, 1024, 8192]


def elta_core_loss(features, scores):
    return flsa.alignment_loss(features, scores)


def elta_core_unchecked(features, scores):
    return flsa.alignment_loss(features, scores, validate=False)


IMPLEMENTATIONS = {"plain B x B (torch eager)": plain_formula, "elta_core": elta_core_loss,
                   "elta_core, validate=False": elta_core_unchecked}


def _inputs(size):
    generator = torch.Generator().manual_seed(size)
    features = torch.randn(size, WIDTH, generator=generator, requires_grad=True)
    scores = torch.rand(size, generator=generator) * 9 + 1
    return features, scores


def _step(fn, features, scores):
    features.grad = None
    fn(features, scores).backward()


def prepared_step(name, size):
    """Inputs built, one measured fwd+bwd returned (for ``peak_extra_mib``)."""
    fn, (features, scores) = IMPLEMENTATIONS[name], _inputs(size)
    return clearing_gradient(lambda: _step(fn, features, scores), features)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_flsa_forward_backward(benchmark, size, name):
    fn = IMPLEMENTATIONS[name]
    features, scores = _inputs(size)
    benchmark.group = f"flsa fwd+bwd B={size} D={WIDTH}"
    benchmark.extra_info["peak_extra_mib"] = peak_extra_mib("benchmarks.bench_flsa:prepared_step", name, size)
    rounds = 3 if size >= 8192 else 20
    benchmark.pedantic(_step, args=(fn, features, scores), rounds=rounds, warmup_rounds=1)
