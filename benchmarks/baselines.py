"""Baselines the benchmarks compare against (no pytest import, so that the standalone
GPU script can use them too)."""


def plain_formula(features, scores):
    """The FLSA loss as a user would write it from Eqs. 5-6: normalise, form the B x B
    cosine and label matrices, take the mean squared gap (torch, autograd)."""
    import torch

    zh = torch.nn.functional.normalize(features, dim=1)
    cosine = zh @ zh.T
    label = 1 - (scores[:, None] - scores[None, :]).abs() / (scores.max() - scores.min())
    return ((cosine - label) ** 2).mean()
