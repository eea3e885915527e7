"""A built-in, long-tailed synthetic aesthetics dataset (NumPy only, deterministic).

Each image has a latent quality ``q`` (a scaled Student-t, so the tails are thin but
present). Four visible mechanisms carry ``q`` plus their own noise:

- sharpness: the image is blended with a blurred copy of itself,
- contrast: the brightness gap between the subject and the background,
- colour harmony: the hue of the subject against the background (complementary is
  harmonious, a quarter turn clashes),
- composition: how close the subject sits to a rule-of-thirds point.

Nuisance content that the score does not depend on confuses the features: the base hue,
the subject's shape and size, distractor blobs and sensor grain. Simulated raters, each
with a personal bias, vote on 1..10 around the visible quality; the vote histogram is the
label. The score histogram has AVA's long-tailed shape (paper Figure 1): most images in
[4, 7), few below 3 or above 7.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elta_core.io import atomic_write_text
from elta_core.optional import require

MECHANISMS = ("sharpness", "contrast", "harmony", "composition")


@dataclass
class SyntheticAesthetics:
    """Images (N, H, W, 3) uint8, vote ``counts`` (N, 10), ``scores`` (N,) on 1..10, the
    latent ``quality`` (N,) and the per-mechanism ``attributes`` (N, 4)."""

    images: np.ndarray
    counts: np.ndarray
    scores: np.ndarray
    quality: np.ndarray
    attributes: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def distributions(self) -> np.ndarray:
        return self.counts / self.counts.sum(axis=1, keepdims=True)

    def subset(self, rows) -> "SyntheticAesthetics":
        return SyntheticAesthetics(
            self.images[rows], self.counts[rows], self.scores[rows], self.quality[rows], self.attributes[rows]
        )


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1], broadcast together; RGB on a new last axis."""
    h = np.mod(h, 1.0) * 6.0
    c = v * s
    x = c * (1 - np.abs(np.mod(h, 2.0) - 1))
    m = v - c
    sector = np.floor(h).astype(int) % 6
    zeros = np.zeros_like(c)
    r = np.choose(sector, [c, x, zeros, zeros, x, c])
    g = np.choose(sector, [x, c, c, x, zeros, zeros])
    b = np.choose(sector, [zeros, zeros, x, c, c, x])
    return np.stack([r + m, g + m, b + m], axis=-1)


def _box_blur(images: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur over axes 1 and 2 with edge padding (cumulative sums)."""
    width = 2 * radius + 1
    for axis in (1, 2):
        pad = [(0, 0)] * images.ndim
        pad[axis] = (radius + 1, radius)
        summed = np.cumsum(np.pad(images, pad, mode="edge"), axis=axis, dtype=np.float32)
        upper = [slice(None)] * images.ndim
        lower = [slice(None)] * images.ndim
        upper[axis], lower[axis] = slice(width, None), slice(0, -width)
        images = (summed[tuple(upper)] - summed[tuple(lower)]) * np.float32(1.0 / width)
    return images


def _render(rng: np.random.Generator, attributes: np.ndarray, size: int) -> np.ndarray:
    count = len(attributes)
    sharp, contrast, harmony, composition = (_sigmoid(1.6 * attributes[:, k]) for k in range(4))
    yy, xx = np.meshgrid(np.arange(size) + 0.5, np.arange(size) + 0.5, indexing="ij")
    yy, xx = yy.astype(np.float32), xx.astype(np.float32)

    # Background: a vertical gradient around a random (nuisance) base hue.
    base_hue = rng.random(count)
    background_value = rng.uniform(0.35, 0.65, count)
    saturation = rng.uniform(0.35, 0.8, count)
    gradient = (yy / size - 0.5)[None] * rng.uniform(-0.25, 0.25, (count, 1, 1))
    value = np.clip(background_value[:, None, None] + gradient, 0, 1)[:, :, :1]  # constant along x
    rows = _hsv_to_rgb(base_hue[:, None, None] + 0 * value, saturation[:, None, None] + 0 * value, value)
    image = np.broadcast_to(rows, (count, size, size, 3)).astype(np.float32)

    # Subject: harmony sets its hue offset (0.25 clashes .. 0.5 complementary), contrast its
    # brightness gap, composition its distance to a rule-of-thirds point.
    hue = base_hue + 0.25 + 0.25 * harmony
    direction = np.where(rng.random(count) < 0.5, -1.0, 1.0)
    subject_value = np.clip(background_value + direction * (0.08 + 0.5 * contrast), 0.02, 0.98)
    thirds = np.array([1 / 3, 2 / 3])
    anchor_y, anchor_x = thirds[rng.integers(0, 2, count)], thirds[rng.integers(0, 2, count)]
    angle = rng.uniform(0, 2 * np.pi, count)
    offset = (1 - composition) * 0.32
    centre_y = np.clip(anchor_y + offset * np.sin(angle), 0.12, 0.88) * size
    centre_x = np.clip(anchor_x + offset * np.cos(angle), 0.12, 0.88) * size
    radius = rng.uniform(0.11, 0.2, count) * size
    dy, dx = yy[None] - centre_y[:, None, None], xx[None] - centre_x[:, None, None]
    is_square = (rng.random(count) < 0.5)[:, None, None]
    distance = np.where(is_square, np.maximum(np.abs(dy), np.abs(dx)), np.hypot(dy, dx))
    subject = (distance <= radius[:, None, None])[..., None]
    subject_rgb = _hsv_to_rgb(hue, np.clip(saturation + 0.15, 0, 1), subject_value)[:, None, None, :].astype(np.float32)
    image = np.where(subject, subject_rgb, image)

    # Nuisance: three small distractor blobs of random colours.
    for _ in range(3):
        by, bx = rng.uniform(0, size, (2, count))
        blob = (np.hypot(yy[None] - by[:, None, None], xx[None] - bx[:, None, None]) <= rng.uniform(0.03, 0.07, count)[:, None, None] * size)
        blob_rgb = _hsv_to_rgb(rng.random(count), rng.uniform(0.2, 0.9, count), rng.uniform(0.2, 0.9, count)).astype(np.float32)
        image = np.where(blob[..., None], blob_rgb[:, None, None, :], image)

    # Sharpness: blend with a blurred copy. Then sensor grain (nuisance).
    blurred = _box_blur(_box_blur(image, max(1, size // 32)), max(1, size // 32))
    weight = sharp[:, None, None, None].astype(np.float32)
    image = weight * image + (1 - weight) * blurred
    grain = rng.uniform(0.0, 0.04, count).astype(np.float32)[:, None, None, None]
    image += rng.standard_normal(image.shape, dtype=np.float32) * grain
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def generate(count: int, size: int = 64, seed: int = 0, *, raters: int = 80, chunk: int = 512) -> SyntheticAesthetics:
    """Generate ``count`` images of ``size`` x ``size`` deterministically from ``seed``.

    The same (count, size, seed, raters) always gives the same bytes.
    """
    if count < 1 or size < 16:
        raise ValueError(f"count, size: expected count >= 1 and size >= 16, got {count} and {size}")
    rng = np.random.default_rng(seed)
    quality = 0.62 * rng.standard_t(5, count)
    attributes = quality[:, None] + rng.normal(0, 0.5, (count, len(MECHANISMS)))
    visible = attributes.mean(axis=1)

    # Raters: a pool with personal biases; each image is rated by `raters` of them.
    pool_bias = rng.normal(0, 0.45, 1000)
    mean_vote = 5.4 + 0.95 * visible
    votes = mean_vote[:, None] + pool_bias[rng.integers(0, 1000, (count, raters))] + rng.normal(0, 1.1, (count, raters))
    votes = np.clip(np.rint(votes), 1, 10).astype(int)
    counts = np.stack([(votes == level).sum(axis=1) for level in range(1, 11)], axis=1)
    scores = (counts / raters) @ np.arange(1, 11.0)

    images = np.empty((count, size, size, 3), dtype=np.uint8)
    render_rng = np.random.default_rng([seed, 1])
    for start in range(0, count, chunk):
        rows = slice(start, min(start + chunk, count))
        images[rows] = _render(render_rng, attributes[rows], size)
    return SyntheticAesthetics(images, counts, scores, quality, attributes)


SPLIT_FILES = ("train.csv", "val.csv", "test.csv")


def export(data: SyntheticAesthetics, folder: str | Path, suffix: str = ".jpg",
           splits: tuple[float, float, float] | None = None, seed: int = 0) -> Path:
    """Write the images to ``folder/images/<id><suffix>`` and the votes to
    ``folder/labels.csv`` in the AVA CSV format; returns the CSV's path (needs Pillow).
    ``splits`` (train, validation, test fractions) also writes ``train.csv``, ``val.csv``
    and ``test.csv``, a seeded random partition of the rows, as the authors' data is laid out."""
    Image = require("PIL.Image", "vision")
    if splits is not None:
        fractions = np.asarray(splits, dtype=float)
        if fractions.shape != (3,) or not (np.isfinite(fractions).all() and (fractions > 0).all()) or \
                abs(fractions.sum() - 1) > 1e-6:  # NaN passes every comparison: checked first
            raise ValueError(f"splits: expected three positive fractions TRAIN,VAL,TEST summing to 1, got {splits}")
        if min(fractions) * len(data.counts) < 2:
            raise ValueError(f"splits: {splits} of {len(data.counts)} images leaves a split with fewer than 2 images")
    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    written = {f"{index}{suffix}" for index in range(len(data.counts))}
    stale = sorted(p.name for p in (folder / "images").iterdir() if p.name not in written)
    if stale:
        raise ValueError(f"out: {folder / 'images'} already holds {len(stale)} file(s) this dataset would not write "
                         f"(e.g. {stale[0]}), which would sit beside its images unlabelled; give a new or empty --out")
    header = "image_id," + ",".join(f"score{k}" for k in range(2, 12)) + ",tag1,tag2,tag3"
    rows = []
    for index, (image, counts) in enumerate(zip(data.images, data.counts)):
        Image.fromarray(image).save(folder / "images" / f"{index}{suffix}", quality=95)
        rows.append(f"{index}," + ",".join(str(int(c)) for c in counts) + ",0,0,0")
    if splits is not None:
        order = np.random.default_rng(seed).permutation(len(rows))
        ends = np.rint(np.cumsum(fractions)[:2] * len(rows)).astype(int)
        for name, part in zip(SPLIT_FILES, np.split(order, ends)):
            atomic_write_text(folder / name, "\n".join([header, *(rows[k] for k in sorted(part))]) + "\n")
    return atomic_write_text(folder / "labels.csv", "\n".join([header, *rows]) + "\n")
