"""Saliency metrics with the semantics of the MIT saliency benchmark code (``AUC_Judd.m``,
``AUC_shuffled.m``, ``NSS.m``, ``CC.m``, ``similarity.m``, ``KLdiv.m``), so numbers are
comparable to the paper's tables.

Conventions
-----------
- ``pred`` and ``gt_map`` are float (H, W) arrays; ``fixations`` is a boolean (H, W) map
  of fixated pixels (``True`` = fixated). Argument order is always (prediction, ground
  truth, [other ground truth]).
- The prediction is resized (bilinear) to the ground truth's size first, as the
  benchmark does.
- Standard deviations use ``ddof=1`` (MATLAB's ``std``); ``KLD_EPS`` is MATLAB's ``eps``.
- A frame with no fixations has no location-based score: ``auc_judd``, ``auc_shuffled``
  and ``nss`` return ``None`` for it and :func:`aggregate` counts and skips it (never
  scores it as 0).
- A constant prediction carries no ranking: AUC 0.5, NSS 0, CC 0 (not NaN); for SIM and
  KLD it is the uniform distribution.
- Averaging (:func:`aggregate`): per frame, then the mean over a video's frames, then
  the mean over videos, as the benchmark's video-saliency use (STAViS) does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from PIL import Image

KLD_EPS = 2.2204e-16  # MATLAB eps, as in KLdiv.m
AUC_JITTER = 1e-7  # AUC_Judd.m: rand/10000000 added to break ties
SAUC_SPLITS = 100  # AUC_shuffled.m defaults
SAUC_STEP = 0.1
STAVIS_BLUR_SIGMA = 2.0  # STAViS evaluation: Gaussian blur of the prediction, 13x13, sigma 2
STAVIS_BLUR_SIZE = 13

LOCATION_METRICS = ("auc_judd", "auc_shuffled", "nss")
DISTRIBUTION_METRICS = ("cc", "sim", "kld")
ALL_METRICS = ("auc_judd", "sim", "auc_shuffled", "cc", "nss", "kld")


def resize_to(pred: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to ``shape`` (H, W)."""
    pred = np.asarray(pred, dtype=np.float32)
    if pred.shape == tuple(shape):
        return pred
    img = Image.fromarray(pred, mode="F").resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _is_constant(x: np.ndarray) -> bool:
    return float(x.max() - x.min()) <= 0.0


def _minmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    span = x.max() - x.min()
    return (x - x.min()) / span if span > 0 else np.zeros_like(x)


def _prepare(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(
            f"metrics take (H, W) maps, got prediction {pred.shape} and ground truth {gt.shape}"
        )
    return resize_to(pred, gt.shape).astype(np.float64)


def auc_judd(pred: np.ndarray, fixations: np.ndarray, seed: int = 0) -> float | None:
    """AUC-Judd: thresholds at the saliency values of the fixated pixels; true positives
    are fixations above threshold, false positives all other pixels above it. A tiny
    seeded jitter breaks ties, then min-max. ``None`` if there are no fixations."""
    fix = np.asarray(fixations, dtype=bool)
    if not fix.any():
        return None
    s = _prepare(pred, fix)
    if _is_constant(s):
        return 0.5
    s = s + np.random.default_rng(seed).random(s.shape) * AUC_JITTER
    s = _minmax(s).ravel()
    sth = np.sort(s[fix.ravel()])[::-1]
    n_fix, n_pix = sth.size, s.size
    s_sorted = np.sort(s)
    above = n_pix - np.searchsorted(s_sorted, sth, side="left")  # sum(S >= thresh)
    i = np.arange(1, n_fix + 1)
    tp = np.concatenate([[0.0], i / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above - i) / max(n_pix - n_fix, 1), [1.0]])
    return float(np.trapezoid(tp, fp))


def auc_shuffled(
    pred: np.ndarray,
    fixations: np.ndarray,
    other_fixations: np.ndarray,
    seed: int = 0,
    splits: int = SAUC_SPLITS,
    step: float = SAUC_STEP,
) -> float | None:
    """Shuffled AUC: negatives are saliency values at fixation locations of *other*
    frames (``other_fixations``, boolean (H, W); the caller passes the union of the
    fixations of all other frames of the same video, as the STAViS evaluation does, so
    the centre bias of the video's own fixations is discounted). ``splits`` random
    draws of as many negatives as there are fixations, thresholds every ``step``;
    deterministic given ``seed``. ``None`` if there are no fixations or no negatives."""
    fix = np.asarray(fixations, dtype=bool)
    other = np.asarray(other_fixations, dtype=bool)
    if not fix.any() or not other.any():
        return None
    s = _minmax(_prepare(pred, fix)).ravel()
    sth = s[fix.ravel()]
    neg_idx = np.flatnonzero(other.ravel())
    n_neg = min(sth.size, neg_idx.size)
    rng = np.random.default_rng(seed)
    # one row of negatives per split, drawn exactly as AUC_shuffled.m's loop does
    negatives = np.stack([s[rng.permutation(neg_idx)[:n_neg]] for _ in range(splits)])
    # each split's thresholds are top..0 in steps of ``step`` (top: the split's largest
    # value), i.e. a prefix of one grid; a split scores its own prefix only
    top = np.maximum(sth.max(), negatives.max(axis=1))
    used = np.ceil((top + 1e-12) / step).astype(int)  # np.arange's length rule
    grid = np.arange(int(used.max())) * step
    tp_at = (sth[:, None] >= grid[None, :]).mean(axis=0)  # (thresholds,)
    fp_at = (negatives[:, :, None] >= grid[None, None, :]).mean(axis=1)  # (splits, thresholds)
    # the curve from the highest threshold down: thresholds a split does not use are
    # (0, 0) points before its first one, which add no area
    mask = np.arange(grid.size)[None, :] < used[:, None]
    tp = np.where(mask, tp_at[None, :], 0.0)[:, ::-1]
    fp = np.where(mask, fp_at, 0.0)[:, ::-1]
    zeros, ones = np.zeros((splits, 1)), np.ones((splits, 1))
    tp = np.concatenate([zeros, tp, ones], axis=1)
    fp = np.concatenate([zeros, fp, ones], axis=1)
    aucs = np.trapezoid(tp, fp, axis=1)
    return float(np.mean(aucs))


def nss(pred: np.ndarray, fixations: np.ndarray) -> float | None:
    """NSS: the z-scored prediction averaged over fixated pixels. ``None`` without
    fixations; 0 for a constant prediction."""
    fix = np.asarray(fixations, dtype=bool)
    if not fix.any():
        return None
    s = _prepare(pred, fix)
    if _is_constant(s):
        return 0.0
    z = (s - s.mean()) / s.std(ddof=1)
    return float(z[fix].mean())


def cc(pred: np.ndarray, gt_map: np.ndarray) -> float:
    """CC: Pearson's linear correlation of the prediction and the continuous map; 0 if
    either is constant."""
    gt = np.asarray(gt_map, dtype=np.float64)
    s = _prepare(pred, gt)
    if _is_constant(s) or _is_constant(gt):
        return 0.0
    a = (s - s.mean()) / s.std(ddof=1)
    b = (gt - gt.mean()) / gt.std(ddof=1)
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _as_distribution(x: np.ndarray) -> np.ndarray:
    """Min-max, then sum to 1 (a constant map becomes the uniform distribution)."""
    x = _minmax(x)
    total = x.sum()
    return x / total if total > 0 else np.full_like(x, 1.0 / x.size)


def sim(pred: np.ndarray, gt_map: np.ndarray) -> float:
    """SIM: the sum of pixelwise minima of the two maps, each min-max normalised and then
    made to sum to 1 (1 for identical distributions, 0 for disjoint ones)."""
    gt = np.asarray(gt_map, dtype=np.float64)
    return float(np.minimum(_as_distribution(_prepare(pred, gt)), _as_distribution(gt)).sum())


def kld(pred: np.ndarray, gt_map: np.ndarray) -> float:
    """KLD: ``sum gt * log(eps + gt / (pred + eps))`` with both maps made to sum to 1 and
    MATLAB's ``eps`` (``KLdiv.m``): the ground truth against the prediction; lower is
    better. A constant prediction is the uniform distribution."""
    gt = np.asarray(gt_map, dtype=np.float64)
    s = _prepare(pred, gt)
    p = s / s.sum() if s.sum() > 0 and not _is_constant(s) else np.full_like(s, 1.0 / s.size)
    q = gt / gt.sum() if gt.sum() > 0 else np.full_like(gt, 1.0 / gt.size)
    return float((q * np.log(KLD_EPS + q / (p + KLD_EPS))).sum())


def gaussian_kernel(size: int = STAVIS_BLUR_SIZE, sigma: float = STAVIS_BLUR_SIGMA) -> np.ndarray:
    """1-D factor of MATLAB's ``fspecial('gaussian', [size size], sigma)``."""
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def stavis_preprocess(pred: np.ndarray, gt_shape: tuple[int, int] | None = None) -> np.ndarray:
    """How the paper's numbers were computed (STAViS evaluation over the MIT code): the
    prediction is min-max normalised, blurred with a 13x13 Gaussian (sigma 2, symmetric
    border) at its own resolution, then resized to the ground truth."""
    x = _minmax(np.asarray(pred, dtype=np.float64))
    k = gaussian_kernel()
    r = k.size // 2
    padded = np.pad(x, r, mode="symmetric")
    rows = sum(k[i] * padded[:, i : i + x.shape[1]] for i in range(k.size))
    blurred = sum(k[i] * rows[i : i + x.shape[0], :] for i in range(k.size))
    out = blurred.astype(np.float32)
    return resize_to(out, gt_shape) if gt_shape is not None else out


def score_frame(
    pred: np.ndarray,
    gt_map: np.ndarray | None,
    fixations: np.ndarray | None,
    other_fixations: np.ndarray | None = None,
    seed: int = 0,
    metrics: Iterable[str] = ALL_METRICS,
) -> dict[str, float | None]:
    """All requested metrics of one frame (``None`` where not defined for it)."""
    out: dict[str, float | None] = {}
    for name in metrics:
        if name in DISTRIBUTION_METRICS:
            out[name] = (
                None if gt_map is None else {"cc": cc, "sim": sim, "kld": kld}[name](pred, gt_map)
            )
        elif fixations is None:
            out[name] = None
        elif name == "auc_judd":
            out[name] = auc_judd(pred, fixations, seed=seed)
        elif name == "nss":
            out[name] = nss(pred, fixations)
        elif name == "auc_shuffled":
            out[name] = (
                None
                if other_fixations is None
                else auc_shuffled(pred, fixations, other_fixations, seed=seed)
            )
        else:
            raise KeyError(f"unknown metric {name!r}; known: {', '.join(ALL_METRICS)}")
    return out


def aggregate(frame_scores: Mapping[str, list[dict[str, float | None]]]) -> dict[str, dict]:
    """Per-frame scores grouped by video -> ``{"videos": {video: {metric: mean}},
    "dataset": {metric: mean over videos}, "skipped_frames": {metric: count}}``.

    A ``None`` score (e.g. no fixations in the frame) is skipped and counted, never
    averaged in as 0. A video whose frames all lack a metric has no value for it and is
    left out of that metric's dataset mean.
    """
    videos: dict[str, dict[str, float]] = {}
    skipped: dict[str, int] = {}
    frames: dict[str, int] = {}
    for video, rows in frame_scores.items():
        per_metric: dict[str, list[float]] = {}
        for row in rows:
            for name, value in row.items():
                if value is None:
                    skipped[name] = skipped.get(name, 0) + 1
                else:
                    per_metric.setdefault(name, []).append(value)
        videos[video] = {name: float(np.mean(vals)) for name, vals in per_metric.items()}
        frames[video] = len(rows)
    names = sorted({n for v in videos.values() for n in v})
    dataset = {n: float(np.mean([v[n] for v in videos.values() if n in v])) for n in names}
    return {
        "videos": videos,
        "dataset": dataset,
        "skipped_frames": skipped,
        "frames": frames,
        "averaging": "per frame, then mean over each video's frames, then mean over videos",
    }


def center_prior(shape: tuple[int, int], sigma_fraction: float = 0.25) -> np.ndarray:
    """The centre-prior baseline: a Gaussian at the frame centre with standard deviation
    ``sigma_fraction`` of each side."""
    h, w = shape
    y = (np.arange(h) + 0.5 - h / 2) / (sigma_fraction * h)
    x = (np.arange(w) + 0.5 - w / 2) / (sigma_fraction * w)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)
