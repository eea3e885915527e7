"""FLSA's extra peak memory, forward plus backward, torch CPU, D = 256, at large batches:
elta_core's Gram form (walked in chunks, written into one gradient buffer) against the
same Gram/prefix-sum algorithm written in torch eager with autograd, which keeps every
(B, D) intermediate for the backward. The B x B formula is out of reach at these sizes
(B = 262,144: 256 GiB).

The floor is about 2 times the feature tensor: the normalised copy and the gradient.
``peak_extra_mib`` and ``times_features`` (the peak over the features' size) are in
each result's ``extra_info``.
"""

import pytest

torch = pytest.importorskip("torch")

from benchmarks.bench_flsa import WIDTH, _inputs, _step  # noqa: E402
from benchmarks.memory import clearing_gradient, peak_extra_mib  # noqa: E402
from elta_core import flsa  # noqa: E402

SIZES = [65_536, 262_144]


def gram_form_eager(features, scores):
    """The Gram form of the FLSA loss (docs/design.md) as plain torch ops under autograd."""
    size = features.shape[0]
    zh = torch.nn.functional.normalize(features, dim=1)
    u = (scores - scores.min()) / (scores.max() - scores.min())
    order = torch.argsort(u, stable=True)
    u_sorted, z_sorted = u[order][:, None], zh[order]
    prefix, weighted = z_sorted.cumsum(0), (u_sorted * z_sorted).cumsum(0)
    spread = 2 * (u_sorted * prefix - weighted) + weighted[-1:] - u_sorted * prefix[-1:]
    sum_cm = (z_sorted * (prefix[-1:] - spread)).sum()
    gram = zh.T @ zh
    gaps = (u_sorted[:, 0] - u_sorted[:, 0].mean())
    ranks = torch.arange(size, dtype=u.dtype)
    sum_m2 = size * size - 4 * (u_sorted[:, 0] * (2 * ranks - (size - 1))).sum() + 2 * size * (gaps * gaps).sum()
    return ((gram * gram).sum() - 2 * sum_cm + sum_m2) / (size * size)


IMPLEMENTATIONS = {"elta_core": lambda f, s: flsa.alignment_loss(f, s, validate=False),
                   "Gram form, torch eager (autograd)": gram_form_eager}


def prepared_step(name, size):
    """Inputs built, one measured fwd+bwd returned (for ``peak_extra_mib``)."""
    torch.set_num_threads(1)
    fn, (features, scores) = IMPLEMENTATIONS[name], _inputs(size)
    return clearing_gradient(lambda: _step(fn, features, scores), features)


def test_the_eager_gram_form_is_the_loss():
    features, scores = _inputs(600)
    expected = flsa.alignment_loss(features.double(), scores.double(), form="direct")
    assert float(gram_form_eager(features.double(), scores.double())) == pytest.approx(float(expected), rel=1e-9)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(IMPLEMENTATIONS))
def test_flsa_peak_memory(benchmark, size, name):
    torch.set_num_threads(1)  # 2 shared cores: see benchmarks/README.md
    fn = IMPLEMENTATIONS[name]
    features, scores = _inputs(size)
    benchmark.group = f"flsa fwd+bwd memory B={size} D={WIDTH}"
    peak = peak_extra_mib("benchmarks.bench_flsa_memory:prepared_step", name, size)
    benchmark.extra_info["peak_extra_mib"] = peak
    benchmark.extra_info["times_features"] = round(peak / (features.numel() * 4 / 2**20), 2)
    benchmark.pedantic(_step, args=(fn, features, scores), rounds=2, warmup_rounds=1)
