"""Float64 oracle: each equation written out plainly, independent of elta_core's code."""

from __future__ import annotations

import numpy as np


def sampling_probs(s, tau1):
    s = np.asarray(s, np.float64)
    logits = np.abs(s.mean() - s) / tau1
    e = np.exp(logits - logits.max())
    return e / e.sum()


def partner_probs(s, tau2, eps):
    s = np.asarray(s, np.float64)
    size = s.size
    out = np.zeros((size, size))
    for i in range(size):
        logits = np.array([tau2 / (abs(s[i] - s[j]) + eps) if j != i else -np.inf for j in range(size)])
        if size > 1:
            e = np.exp(logits - logits.max())
            out[i] = e / e.sum()
    return out


def mix_factor(s, i, j, tau1):
    p = sampling_probs(s, tau1)
    return p[i] / (p[i] + p[j])


def feature_similarity(z):
    z = np.asarray(z, np.float64).reshape(len(z), -1)
    norms = np.linalg.norm(z, axis=1)
    c = np.zeros((len(z), len(z)))
    for a in range(len(z)):
        for b in range(len(z)):
            if norms[a] > 0 and norms[b] > 0:
                c[a, b] = z[a] @ z[b] / (norms[a] * norms[b])
    return c


def label_similarity(s):
    s = np.asarray(s, np.float64)
    spread = s.max() - s.min()
    if spread == 0:
        return np.ones((s.size, s.size))
    return 1 - np.abs(s[:, None] - s[None, :]) / spread


def alignment_loss(z, s):
    if len(z) < 2 or np.ptp(s) == 0:
        return 0.0
    return float(np.mean((feature_similarity(z) - label_similarity(s)) ** 2))


def softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sharpen(logits, beta, bin_values=None, mean_score=None):
    logits = np.asarray(logits, np.float64)
    values = np.arange(1, logits.shape[1] + 1.0) if bin_values is None else np.asarray(bin_values, np.float64)
    s_hat = softmax(logits) @ values
    s_bar = s_hat.mean() if mean_score is None else mean_score
    tau = np.exp(-beta * np.abs(s_hat - s_bar))
    return softmax(logits / tau[:, None])


def grid_search_brute_force(logits, true_scores, betas, thresholds, min_selected, pseudo_label="prediction"):
    """One full sharpen + select per cell; returns (beta, t, mae, count) of the best and the table."""
    values = np.arange(1, logits.shape[1] + 1.0)
    table = []
    for beta in betas:
        for t in thresholds:
            sharp = sharpen(logits, beta)
            keep = sharp.max(axis=1) >= t
            labels = softmax(logits) if pseudo_label == "prediction" else sharp
            err = np.abs(labels[keep] @ values - true_scores[keep])
            table.append((beta, t, err.mean() if keep.any() else None, int(keep.sum())))
    eligible = [row for row in table if row[3] >= min_selected]
    lowest = min(row[2] for row in eligible)
    tied = [row for row in eligible if row[2] <= lowest * (1 + 1e-9) + 1e-12]
    best = max(tied, key=lambda row: row[3])
    return best, table


def emd(pred, target, r=2):
    cdf_gap = np.abs(np.cumsum(pred, axis=1) - np.cumsum(target, axis=1))
    return float(np.mean(np.mean(cdf_gap**r, axis=1) ** (1 / r)))


def segment_mae(pred, true):
    order = np.lexsort((pred, true))
    err = np.abs(np.asarray(pred) - np.asarray(true))[order]
    n = len(err)
    k = max(1, int(round(0.2 * n)))
    return err[:k].mean(), err[k : n - k].mean(), err[n - k :].mean()


# -- the peers (elta_core.adapters.torch.peers), written out from their papers ----------------


def gaussian_window(size, sigma):
    d = np.arange(size) - size // 2
    w = np.exp(-(d**2) / (2.0 * sigma**2))
    return w / w.sum()


def smooth_bins(values, window, edges="constant"):
    values = np.asarray(values, np.float64)
    k, half = len(values), len(window) // 2
    out = np.zeros_like(values)
    for b in range(k):
        for d in range(-half, half + 1):
            src = b + d
            if edges == "reflect":
                src = -src if src < 0 else (2 * (k - 1) - src if src >= k else src)
            if 0 <= src < k:
                out[b] += window[d + half] * values[src]
    return out


def bin_of(score, low, high, num_bins):
    return int(min(max(np.floor((score - low) / ((high - low) / num_bins)), 0), num_bins - 1))


def lds_weights(train_scores, num_bins, window, power):
    low, high = min(train_scores), max(train_scores)
    counts = np.zeros(num_bins)
    for s in train_scores:
        counts[bin_of(s, low, high, num_bins)] += 1
    density = smooth_bins(counts, window)
    density[density == 0] = density[density > 0].min()
    weights = density**-power
    per_sample = np.array([weights[bin_of(s, low, high, num_bins)] for s in train_scores])
    return weights * len(per_sample) / per_sample.sum()


def descending_ranks(row):
    row = np.asarray(row, np.float64)
    order = sorted(range(len(row)), key=lambda j: (-row[j], j))
    ranks = np.empty(len(row))
    for position, j in enumerate(order):
        ranks[j] = (position + 1) / len(row)
    return ranks


def ranksim(features, scores):
    z = np.asarray(features, np.float64).reshape(len(features), -1)
    s = np.asarray(scores, np.float64)
    sz = feature_similarity(z)
    total = 0.0
    for i in range(len(s)):
        label_row = np.array([-abs(s[i] - s[j]) for j in range(len(s))])
        total += np.sum((descending_ranks(label_row) - descending_ranks(sz[i])) ** 2)
    return total / len(s) ** 2


def cmixup_probabilities(scores, bandwidth):
    s = np.asarray(scores, np.float64)
    p = np.array([[np.exp(-((s[i] - s[j]) ** 2) / (2 * bandwidth**2)) for j in range(len(s))] for i in range(len(s))])
    return p / p.sum(axis=1, keepdims=True)


def bmc(predicted, targets, sigma):
    p, y = np.asarray(predicted, np.float64), np.asarray(targets, np.float64)
    var = sigma**2
    total = 0.0
    for i in range(len(p)):
        logits = np.array([-((p[i] - y[j]) ** 2) / (2 * var) for j in range(len(y))])
        top = logits.max()
        total += -(logits[i] - top - np.log(np.exp(logits - top).sum()))
    return total / len(p) * 2 * var
