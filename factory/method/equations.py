"""The method's equations as pure tensor functions: one function per equation, named for
what it computes, the equation number in its docstring (SPEC.md section 3).

Conventions: maps are (..., H, W) tensors; a batch of B maps is (B, H, W); several
sources of one frame are stacked on dim 1 as (B, K, H, W). Boxes are (B, 4) tensors of
``(x0, y0, x1, y1)`` in normalised frame coordinates (0 = left/top edge, 1 = right/
bottom edge), so one box serves every resolution. No I/O, no Ray, no globals;
everything is batched and runs on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Below this range a map is treated as constant: Z maps it to zeros instead of dividing
# by ~0 (a flat map carries no saliency).
NORMALIZE_EPS = 1e-8
# lambda of Eq. 2 / Eq. 8: keeps the ratio defined when every source is filtered out
# (the authors' code uses 1e-4).
SCAM_LAMBDA = 1e-4
# Coarse box (Sec. 3.2): foreground where the coarse SCAM exceeds 2 x its mean.
COARSE_BOX_THRESHOLD = 2.0
# A box narrower or shorter than this fraction of the frame is degenerate (a speck of
# foreground, not a region of interest); the full frame is used instead.
MIN_BOX_FRACTION = 0.05


def minmax_normalize(x: torch.Tensor) -> torch.Tensor:
    """``Z(x)``: min-max normalisation of each map (last two dims) to [0, 1].

    A constant map (range below ``NORMALIZE_EPS``) becomes all zeros, never NaN.

    >>> minmax_normalize(torch.tensor([[1.0, 3.0], [2.0, 5.0]]))
    tensor([[0.0000, 0.5000],
            [0.2500, 1.0000]])
    """
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(
        span > NORMALIZE_EPS, (x - lo) / span.clamp_min(NORMALIZE_EPS), torch.zeros_like(x)
    )


def class_activation_map(class_maps: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
    """Eq. 1, CAM: ``Z(ReLU(sum_k w_ik f_k))`` for class ``i`` of each sample.

    ``class_maps`` (B, c, h, w) are the 1x1-conv outputs before GAP, so channel ``i`` is
    ``sum_k w_ik f_k``; ``class_index`` (B,) picks the tag. Negative evidence is not
    saliency, hence the ReLU before Z (as the authors' code does).
    """
    picked = class_maps[torch.arange(class_maps.shape[0], device=class_maps.device), class_index]
    return minmax_normalize(F.relu(picked))


CONFIDENCES = ("sigmoid", "softmax")


def class_confidences(logits: torch.Tensor, kind: str = "sigmoid") -> torch.Tensor:
    """``C_X`` from the pooled logits (..., c). ``sigmoid``: per class, as the Eq. 7 loss
    reads them (the default); ``softmax``: over the classes, as the authors' code reads
    them. Both rank the classes alike, so Eq. 3's choice of sources is the same; only
    the weights of Eq. 2 / 8 differ (a softmax cannot saturate every class at once).

    >>> class_confidences(torch.tensor([0.0, 0.0]), "softmax")
    tensor([0.5000, 0.5000])
    """
    if kind == "softmax":
        return torch.softmax(logits, dim=-1)
    if kind != "sigmoid":
        raise ValueError(f"confidences {kind!r}: one of {', '.join(CONFIDENCES)}")
    return torch.sigmoid(logits)


def soft_filter(confidences: torch.Tensor, class_index: torch.Tensor) -> torch.Tensor:
    """Eq. 3: ``sf(C)[i] = C[i] if i = argmax_u C[u] else 0``.

    ``confidences`` (..., c), ``class_index`` (...,) -> (...,). A source whose net does
    not rank the tag first contributes nothing.
    """
    conf_i = confidences.gather(-1, class_index.unsqueeze(-1)).squeeze(-1)
    ranked_first = confidences.argmax(dim=-1) == class_index
    return torch.where(ranked_first, conf_i, torch.zeros_like(conf_i))


# What Eq. 2 / 8 give on a frame where no source ranks the tag first (the paper is
# silent). ``flat``: the equation as written, (0 + lambda) / (0 + lambda) = 1 everywhere,
# which Z turns into an all-zero map; ``average``: the plain mean of the sources there
# (AC over them; zero maps of sources that could not run change nothing after Z).
NO_SOURCE = ("flat", "average")


def no_source_fallback(weights: torch.Tensor, rule: str = "flat") -> torch.Tensor:
    """Soft-filtered weights (B, K) with the ``NO_SOURCE`` rule applied: under
    ``average`` a row of zeros becomes a row of ones.

    >>> no_source_fallback(torch.tensor([[0.0, 0.0], [0.0, 0.7]]), "average")
    tensor([[1.0000, 1.0000],
            [0.0000, 0.7000]])
    """
    if rule not in NO_SOURCE:
        raise ValueError(f"no-source rule {rule!r}: one of {', '.join(NO_SOURCE)}")
    if rule == "flat":
        return weights
    none = (weights.sum(dim=-1, keepdim=True) == 0).expand_as(weights)
    return torch.where(none, torch.ones_like(weights), weights)


def selective_fusion(
    cams: torch.Tensor, weights: torch.Tensor, lam: float = SCAM_LAMBDA, no_source: str = "flat"
) -> torch.Tensor:
    """The fusion shared by Eq. 2 and Eq. 8:
    ``Z( (sum_k w_k * Phi_k + lambda) / (sum_k w_k + lambda) )``.

    ``cams`` (B, K, H, W), ``weights`` (B, K) (already soft-filtered) -> (B, H, W).
    Per pixel it is the weight-averaged CAM; with every weight 0 the map is constant
    and Z makes it all zeros (``no_source="flat"``), or the sources' mean (``average``).
    """
    weights = no_source_fallback(weights, no_source)
    w = weights.to(cams.dtype)[..., None, None]
    fused = ((w * cams).sum(dim=1) + lam) / (w.sum(dim=1) + lam)
    return minmax_normalize(fused)


def scam(
    cams: torch.Tensor,
    confidences: torch.Tensor,
    class_index: torch.Tensor,
    lam: float = SCAM_LAMBDA,
    no_source: str = "flat",
) -> torch.Tensor:
    """Eq. 2, SCAM over the sources S, ST, SA.

    ``cams`` (B, K, H, W) the sources' CAMs for the tag, ``confidences`` (B, K, c) their
    class confidences, ``class_index`` (B,) the tag -> (B, H, W). ``no_source``: see
    :data:`NO_SOURCE`.
    """
    weights = soft_filter(confidences, class_index[:, None].expand(-1, cams.shape[1]))
    return selective_fusion(cams, weights, lam, no_source)


def scam_plus(
    cams: torch.Tensor,
    confidences: torch.Tensor,
    class_index: torch.Tensor,
    lam: float = SCAM_LAMBDA,
    low_res: torch.Tensor | None = None,
    no_source: str = "flat",
) -> torch.Tensor:
    """Eq. 8, SCAM+: the same selective fusion over the 3 fine-stage SCAM sources and the
    8 multigranularity (confidence, CAM) pairs, all in full-frame coordinates at one
    resolution. The result is the pseudo-fixation map.

    ``low_res`` (B, K2, h, w), optional: the last K2 sources' CAMs before their bilinear
    upsampling to ``cams``' size (``confidences`` then covers K1 + K2 sources). Bilinear
    upsampling is linear with convex weights, so ``sum_k w_k up(Phi_k) = up(sum_k w_k
    Phi_k)``: one upsample replaces K2 (the labeler's largest GPU cost before this).
    """
    if low_res is None:
        return scam(cams, confidences, class_index, lam, no_source)
    k1 = cams.shape[1]
    weights = soft_filter(confidences, class_index[:, None].expand(-1, confidences.shape[1]))
    w = no_source_fallback(weights, no_source).to(cams.dtype)[..., None, None]
    low = (w[:, k1:] * low_res.to(cams.dtype)).sum(dim=1, keepdim=True)
    up = F.interpolate(low, size=cams.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    fused = ((w[:, :k1] * cams).sum(dim=1) + up + lam) / (w.sum(dim=1) + lam)
    return minmax_normalize(fused)


def average_cam(cams: torch.Tensor) -> torch.Tensor:
    """Eq. 22, AC baseline: ``(Phi_S + Phi_SA + Phi_ST) / 3`` (the plain mean of the
    sources, no selection). ``cams`` (B, K, H, W) -> (B, H, W)."""
    return cams.mean(dim=1)


def coarse_box(
    saliency: torch.Tensor,
    threshold: float = COARSE_BOX_THRESHOLD,
    min_fraction: float = MIN_BOX_FRACTION,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Coarse location (Sec. 3.2): binarise at ``threshold x mean`` and take the tight
    bounding box of the foreground.

    ``saliency`` (B, H, W) -> ``boxes`` (B, 4) normalised ``(x0, y0, x1, y1)`` and
    ``fell_back`` (B,) bool: where the foreground is empty or the box is degenerate
    (narrower or shorter than ``min_fraction`` of the frame) the box is the full frame.
    """
    b, h, w = saliency.shape
    fg = saliency > threshold * saliency.mean(dim=(-2, -1), keepdim=True)
    rows = fg.any(dim=2)  # B, H
    cols = fg.any(dim=1)  # B, W
    ar_h = torch.arange(h, device=saliency.device)
    ar_w = torch.arange(w, device=saliency.device)
    big = torch.iinfo(torch.long).max
    y0 = torch.where(rows, ar_h, big).amin(dim=1)
    y1 = torch.where(rows, ar_h, -1).amax(dim=1) + 1
    x0 = torch.where(cols, ar_w, big).amin(dim=1)
    x1 = torch.where(cols, ar_w, -1).amax(dim=1) + 1
    boxes = torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], dim=1).to(saliency.dtype)
    empty = ~rows.any(dim=1)
    degenerate = ((boxes[:, 2] - boxes[:, 0]) < min_fraction) | (
        (boxes[:, 3] - boxes[:, 1]) < min_fraction
    )
    fell_back = empty | degenerate
    full = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=saliency.dtype, device=saliency.device)
    boxes = torch.where(fell_back[:, None], full.expand(b, 4), boxes)
    return boxes, fell_back


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop each image to its box and resize to ``size`` (bilinear; area-averaged where
    the box is larger than the output). ``images`` (B, C, H, W) float, ``boxes`` (B, 4)
    normalised -> (B, C, size[0], size[1]). Uses ``roi_align`` so it runs batched on the
    device holding the frames."""
    # Imported here, not at the top: torchvision's import (every model family, its ops,
    # torch._dynamo) costs ~1 s of CPU per process, and most processes that import this
    # module (trainers, Tune trials, decode and cache tasks) never crop.
    from torchvision.ops import roi_align

    b, _, h, w = images.shape
    scale = torch.tensor([w, h, w, h], dtype=images.dtype, device=images.device)
    rois = torch.cat(
        [
            torch.arange(b, device=images.device, dtype=images.dtype)[:, None],
            boxes.to(images.dtype) * scale,
        ],
        dim=1,
    )
    return roi_align(
        images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=0, aligned=True
    )


def paste_back(cams: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Paste fine-stage CAMs (computed on crops) back into full-frame coordinates:
    each CAM is resized to its box and placed in a zero canvas of ``size``.

    ``cams`` (B, h, w), ``boxes`` (B, 4) normalised -> (B, H, W), zeros outside the box.
    """
    b = cams.shape[0]
    out_h, out_w = size
    ys = (torch.arange(out_h, device=cams.device, dtype=cams.dtype) + 0.5) / out_h
    xs = (torch.arange(out_w, device=cams.device, dtype=cams.dtype) + 0.5) / out_w
    x0, y0, x1, y1 = (boxes[:, i].to(cams.dtype)[:, None] for i in range(4))
    u = (xs[None] - x0) / (x1 - x0).clamp_min(NORMALIZE_EPS)  # B, W in box coordinates
    v = (ys[None] - y0) / (y1 - y0).clamp_min(NORMALIZE_EPS)  # B, H
    grid = torch.stack(
        [
            (2 * u - 1)[:, None, :].expand(b, out_h, out_w),
            (2 * v - 1)[:, :, None].expand(b, out_h, out_w),
        ],
        dim=-1,
    )
    sampled = F.grid_sample(
        cams[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[:, 0]
    inside = ((u >= 0) & (u <= 1))[:, None, :] & ((v >= 0) & (v <= 1))[:, :, None]
    return torch.where(inside, sampled, torch.zeros_like(sampled))


def fixation_refine(h: torch.Tensor, td: float, tr: float) -> torch.Tensor:
    """Eq. 13-14, the fixation refine layer, applied to node states (..., c, H, W).

    ``cm`` = channel mean of ``h``; ``mask`` = 1 where ``cm < Td * max(cm)`` (the
    low-response region, Eq. 13's ``[max(cm) Td - cm]_+`` binarised);
    ``h' = ( h * (Tr sigma(cm) mask + sigma(cm) (1 - mask)) + h ) / 2`` (Eq. 14).
    """
    cm = h.mean(dim=-3, keepdim=True)
    mask = (cm < td * cm.amax(dim=(-2, -1), keepdim=True)).to(h.dtype)
    sig = torch.sigmoid(cm)
    return (h * (tr * sig * mask + sig * (1 - mask)) + h) / 2


def final_fusion(
    pf_sta: torch.Tensor, pf_short: torch.Tensor, pf_long: torch.Tensor
) -> torch.Tensor:
    """Eq. 21, the students' final map:
    ``1/2 Z( Z(PF_sta) Z(PF_short) Z(PF_long) ) + 1/2 Z( PF_sta + PF_short + PF_long )``."""
    z = minmax_normalize
    return 0.5 * z(z(pf_sta) * z(pf_short) * z(pf_long)) + 0.5 * z(pf_sta + pf_short + pf_long)


def aggregated_fusion(
    pf_sta: torch.Tensor, pf_short: torch.Tensor, pf_long: torch.Tensor
) -> torch.Tensor:
    """Eq. 23, ``PF_agg`` (ablation): the product of the two halves of Eq. 21,
    ``1/2 Z( Z(PF_sta) Z(PF_short) Z(PF_long) ) x 1/2 Z( PF_sta + PF_short + PF_long )``."""
    z = minmax_normalize
    return (0.5 * z(z(pf_sta) * z(pf_short) * z(pf_long))) * (0.5 * z(pf_sta + pf_short + pf_long))


def max_fusion(pf_sta: torch.Tensor, pf_short: torch.Tensor, pf_long: torch.Tensor) -> torch.Tensor:
    """The pixelwise maximum of the three normalised maps (what the authors' MATLAB
    does instead of Eq. 21; an option, not the default)."""
    z = minmax_normalize
    return torch.maximum(torch.maximum(z(pf_sta), z(pf_short)), z(pf_long))


FUSIONS = {"eq21": final_fusion, "eq23": aggregated_fusion, "max": max_fusion}
