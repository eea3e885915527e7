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
    """Rank the true scores; the bottom k, middle n - 2k and top k ranks are the segments.
    A tied group of true scores shares its ranks: each member counts in a segment with
    the fraction of the group's ranks that fall in it."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    n = len(true)
    k = max(1, int(round(0.2 * n)))
    bounds = [(0, k), (k, n - k), (n - k, n)]
    totals, weights = [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]
    for i in range(n):
        below = int(np.sum(true < true[i]))  # the group's first rank
        size = int(np.sum(true == true[i]))
        for s, (lo, hi) in enumerate(bounds):
            share = max(0, min(below + size, hi) - max(below, lo)) / size
            totals[s] += share * abs(pred[i] - true[i])
            weights[s] += share
    return tuple(t / w for t, w in zip(totals, weights))


# -- the peers (elta_core.adapters.torch.peers), written out from their papers ----------------


def gaussian_window(size, sigma):
    """DIR's kernel: an impulse of ``size`` taps blurred by a Gaussian truncated at 4 sigma,
    the signal mirrored about its ends ("d c b a | a b c d | d c b a"), summing to 1."""
    radius = int(4.0 * sigma + 0.5)
    taps = [np.exp(-0.5 * (k / sigma) ** 2) for k in range(-radius, radius + 1)]
    total = sum(taps)

    def mirrored(position):
        while position < 0 or position >= size:
            position = -position - 1 if position < 0 else 2 * size - 1 - position
        return position

    window = np.zeros(size)
    for i in range(size):
        for k in range(-radius, radius + 1):
            if mirrored(i + k) == size // 2:
                window[i] += taps[k + radius] / total
    return window / window.sum()


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


def lds_weights(train_scores, num_bins, window, reweight="sqrt_inv"):
    """DIR's LDS: counts per bin, square-rooted (or clipped to [5, 1000]), smoothed with zeros
    beyond the ends, inverted, scaled to average 1 over the training samples."""
    low, high = min(train_scores), max(train_scores)
    counts = np.zeros(num_bins)
    for s in train_scores:
        counts[bin_of(s, low, high, num_bins)] += 1
    if reweight == "sqrt_inv":
        density = smooth_bins(np.sqrt(counts), window)
    else:  # their int array of clipped counts: SciPy's convolution truncates to int; their window peaks at 1
        density = np.trunc(smooth_bins(np.clip(counts, 5, 1000), window / window.max()))
    density[density == 0] = density[density > 0].min()
    weights = 1.0 / density
    per_sample = np.array([weights[bin_of(s, low, high, num_bins)] for s in train_scores])
    return weights * len(per_sample) / per_sample.sum()


def descending_ranks(row):
    row = np.asarray(row, np.float64)
    order = sorted(range(len(row)), key=lambda j: (-row[j], -j))  # of equal values, the later first
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
        total += np.mean((descending_ranks(label_row) - descending_ranks(sz[i])) ** 2)  # summed over rows
    return total


class AuthorsFDS:
    """FDS as the DIR code runs it, epoch by epoch, written out per bin: running statistics
    start at mean 0 and variance 1; at the end of epoch e the 'last epoch' statistics are,
    from e = 1 on, the running ones themselves (the same buffers, so later updates show
    through) and their smoothed copy taken now; then the running statistics take the
    epoch's per-bin mean and unbiased variance (momentum from e = 1 on). Epoch e >= 1
    calibrates with the 'last epoch' statistics; epoch 0 does not calibrate."""

    def __init__(self, num_bins, width, window, momentum=0.9, clip=(0.1, 10.0)):
        self.running_mean, self.running_var = np.zeros((num_bins, width)), np.ones((num_bins, width))
        self.last_mean, self.last_var = np.zeros((num_bins, width)), np.ones((num_bins, width))
        self.smooth_mean, self.smooth_var = np.zeros((num_bins, width)), np.ones((num_bins, width))
        self.aliased, self.epoch, self.window, self.momentum, self.clip = False, 0, window, momentum, clip

    def _last(self):
        return (self.running_mean, self.running_var) if self.aliased else (self.last_mean, self.last_var)

    def calibrate(self, features, bins):
        out = np.array(features, np.float64)
        if self.epoch < 1:
            return out
        m1, v1 = self._last()
        for b in set(bins.tolist()):
            rows = bins == b
            if v1[b].sum() < 1e-10:
                continue
            for d in range(out.shape[1]):
                if v1[b, d] != 0:
                    ratio = np.clip(self.smooth_var[b, d] / v1[b, d], *self.clip)
                    out[rows, d] = (out[rows, d] - m1[b, d]) * np.sqrt(ratio) + self.smooth_mean[b, d]
        return out

    def end_epoch(self, features, bins):
        features = np.asarray(features, np.float64)
        if self.epoch >= 1:
            self.aliased = True
            self.smooth_mean = np.stack([smooth_bins(self.running_mean[:, d], self.window, "reflect")
                                         for d in range(features.shape[1])], 1)
            self.smooth_var = np.stack([smooth_bins(self.running_var[:, d], self.window, "reflect")
                                        for d in range(features.shape[1])], 1)
        factor = 0.0 if self.epoch == 0 else self.momentum
        for b in set(bins.tolist()):
            rows = features[bins == b]
            mean, var = rows.mean(0), rows.var(0, ddof=1 if len(rows) > 1 else 0)
            self.running_mean[b] = (1 - factor) * mean + factor * self.running_mean[b]
            self.running_var[b] = (1 - factor) * var + factor * self.running_var[b]
        self.epoch += 1


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
