"""Losses: multilabel soft margin (Eq. 7), BCE + KL (Eq. 17), and the 3-node sum (Eq. 20).

Pure tensor functions, batched, device-agnostic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# Epsilon of the KL term (the MIT benchmark's KLD uses 2.2204e-16 = eps of float64; in
# float32 training that underflows, so a float32-safe value is used).
KL_EPS = 1e-7


def multilabel_soft_margin(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 7: ``-1/c sum_i [ y_i log sigma(x_i) + (1 - y_i) log(1 - sigma(x_i)) ]``,
    averaged over the batch. ``logits`` (B, c), ``targets`` (B, c) in {0, 1}."""
    per_class = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits))
    return per_class.mean(dim=-1).mean()


def balanced_binary_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 7 for one binary output (the audio switch) with the two classes weighted
    equally in each batch: the mean loss over the positives and the mean over the
    negatives, averaged (a batch with one class only is its plain mean). Without it a
    switch trained where 80% of the frames have their own sound learns "always on".
    ``logits``, ``targets`` (B, 1)."""
    per = -(targets * F.logsigmoid(logits) + (1 - targets) * F.logsigmoid(-logits))
    pos = targets > 0.5
    parts = [per[m].mean() for m in (pos, ~pos) if bool(m.any())]
    return torch.stack(parts).mean()


def saliency_kl(pred: torch.Tensor, target: torch.Tensor, eps: float = KL_EPS) -> torch.Tensor:
    """``KL(target || pred)`` with both maps made to sum to 1 over (H, W); mean over the
    batch. ``pred`` and ``target`` are non-negative (B, H, W)."""
    p = pred / (pred.sum(dim=(-2, -1), keepdim=True) + eps)
    q = target / (target.sum(dim=(-2, -1), keepdim=True) + eps)
    return (q * torch.log(eps + q / (p + eps))).sum(dim=(-2, -1)).mean()


def bce_kl(pred_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 17: ``L_BCE(pred, pGT) + L_KL(pred, pGT)`` for a predicted map given as logits
    (B, H, W) and a pseudo-fixation map (B, H, W) in [0, 1]. The target is resized to
    the prediction's size if they differ."""
    if target.shape[-2:] != pred_logits.shape[-2:]:
        target = F.interpolate(
            target[:, None], size=pred_logits.shape[-2:], mode="bilinear", align_corners=False
        )[:, 0]
    bce = F.binary_cross_entropy_with_logits(pred_logits, target)
    return bce + saliency_kl(torch.sigmoid(pred_logits), target)


def node_sum_loss(
    node_logits: Sequence[torch.Tensor], node_targets: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Eq. 20: the sum of Eq. 17 over the C-GCN's nodes (target + MG nodes), each
    against its own pseudo-fixation map."""
    if len(node_logits) != len(node_targets):
        raise ValueError(
            f"Eq. 20 needs one target per node: {len(node_logits)} nodes, {len(node_targets)} targets"
        )
    return torch.stack([bce_kl(p, t) for p, t in zip(node_logits, node_targets, strict=True)]).sum()
