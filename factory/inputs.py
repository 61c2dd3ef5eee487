"""Build a net's inputs for a set of target frames from per-frame encoder features.

One function serves the labeler and the training loop, for every net in the registry,
so the windows a net is trained on are the windows it labels with.

Per-clip features (``ClipFeatures``, a dict of tensors):

- ``F4``, ``F5``: (T, C, h, w) image trunk side outputs of each frame (coarse stage);
- ``plus``: (T, C, h, w) dilated VGG16 features of each frame;
- ``audio``: (T, D) audio vectors of each frame's 1 s window (zeros without audio);
- ``gate``: (T,) the audio switch's decision (or its training label) per frame;
- ``crop_F4``: (T, C, h, w) and ``crop_F5``: (T, 3, C, h, w): fine-stage features of
  the target's crop and of t-1, t+1 cropped to the target's box (fine stage only).

A tag's pool (:class:`factory.pool.PoolEntries`) holds, per entry (a 3-frame group of
another clip), ``plus`` (E, 3, C, h, w), ``audio`` (E, D) and ``gate`` (E,).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from factory.pool import PoolEntries, cross_term
from factory.windows import long_term, short_term, window_rng
from models.registry import InputSpec

ClipFeatures = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WindowSettings:
    nodes: int = 2  # n
    short_radius: int = 4
    seed: int = 0


def _single(
    spec: InputSpec, feats: ClipFeatures, stage: str, targets: np.ndarray
) -> dict[str, torch.Tensor]:
    """Inputs of S / ST / SA / switch for ``targets`` (no graph)."""
    t_idx = torch.as_tensor(targets, dtype=torch.long, device=feats["gate"].device)
    if stage == "fine":
        if spec.tap == "F4":
            image = feats["crop_F4"][t_idx][:, None]
        else:
            crops = feats["crop_F5"][t_idx]
            image = crops if spec.frames == 3 else crops[:, 1:2]
    else:
        num_frames = feats["gate"].shape[0]
        key = spec.tap if spec.trunk == "image" else "plus"
        if spec.frames == 3:
            idx = np.clip(np.asarray(targets)[:, None] + np.array([-1, 0, 1]), 0, num_frames - 1)
            image = feats[key][torch.as_tensor(idx, device=t_idx.device)]
        else:
            image = feats[key][t_idx][:, None]
    out = {"image": image}
    if spec.audio:
        out["audio"] = feats["audio"][t_idx]
        out["gate"] = feats["gate"][t_idx]
    return out


def graph_nodes(
    spec: InputSpec,
    key: str,
    num_frames: int,
    t: int,
    term: str,
    settings: WindowSettings,
    pool: PoolEntries | None,
    epoch: int = 0,
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Node centres of target ``t`` for a ``+`` net: ``(clip_centres, pool_entries,
    fell_back)``. ``clip_centres`` (1 + n,) are frame indices of the clip (node 0 = t);
    for the cross term the n MG nodes are pool entries instead (``pool_entries``, or
    ``None`` when the pool has no other clip of the tag)."""
    groups = spec.frames == 3
    n = settings.nodes
    if term == "short":
        return np.concatenate([[t], short_term(t, num_frames, n, groups)]), None, False
    if term == "long":
        centres, fell_back = long_term(
            t,
            num_frames,
            n,
            groups,
            window_rng(settings.seed, key, t, "long", epoch),
            settings.short_radius,
        )
        return np.concatenate([[t], centres]), None, fell_back
    if term == "cross":
        entries = cross_term(pool, key, n, window_rng(settings.seed, key, t, "cross", epoch))
        return np.array([t]), entries, entries is None
    raise ValueError(f"unknown term {term!r}")


def _graph(
    spec: InputSpec,
    feats: ClipFeatures,
    targets: np.ndarray,
    term: str,
    key: str,
    settings: WindowSettings,
    pool: PoolEntries | None,
    epoch: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs of S+ / ST+ / SA+ for ``targets`` and one term, and a (B,) validity mask
    (False where the cross term has no pool entry). Indices are worked out in NumPy and
    gathered on the device in one indexing call per array."""
    plus = feats["plus"]
    device = plus.device
    num_frames = plus.shape[0]
    n = settings.nodes
    cross = term == "cross"
    width = 1 if cross else 1 + n
    centres = np.zeros((len(targets), width), dtype=np.int64)
    entries = np.zeros((len(targets), n), dtype=np.int64)
    valid = np.ones(len(targets), dtype=bool)
    for i, t in enumerate(targets):
        c, e, _fell_back = graph_nodes(spec, key, num_frames, int(t), term, settings, pool, epoch)
        centres[i] = c
        if cross:
            if e is None:
                valid[i] = False
            else:
                entries[i] = e
    offsets = np.array([-1, 0, 1]) if spec.frames == 3 else np.array([0])
    frame_idx = torch.as_tensor(
        np.clip(centres[..., None] + offsets, 0, num_frames - 1), device=device
    )
    centre_idx = torch.as_tensor(centres, device=device)
    image = plus[frame_idx]  # (B, width, F, C, h, w)
    audio = feats["audio"][centre_idx]
    gate = feats["gate"][centre_idx]
    if cross:
        if pool is not None and len(pool):
            e = torch.as_tensor(entries, device=device)
            pool_plus = torch.as_tensor(pool.arrays["plus"], device=device, dtype=plus.dtype)
            mg_img = pool_plus[e] if spec.frames == 3 else pool_plus[e][:, :, 1:2]
            mg_audio = torch.as_tensor(pool.arrays["audio"], device=device, dtype=plus.dtype)[e]
            mg_gate = torch.as_tensor(pool.arrays["gate"], device=device, dtype=plus.dtype)[e]
        else:  # no pool at all: placeholders, masked out by ``valid``
            mg_img = image.expand(-1, n, *image.shape[2:])
            mg_audio = audio.expand(-1, n, -1)
            mg_gate = gate.expand(-1, n)
        image = torch.cat([image, mg_img], dim=1)
        audio = torch.cat([audio, mg_audio], dim=1)
        gate = torch.cat([gate, mg_gate], dim=1)
    out = {"image": image}
    if spec.audio:
        out["audio"] = audio
        out["gate"] = gate
    return out, torch.as_tensor(valid, device=device)


def gather_inputs(
    spec: InputSpec,
    feats: ClipFeatures,
    targets: np.ndarray,
    *,
    stage: str = "coarse",
    term: str | None = None,
    key: str = "",
    settings: WindowSettings = WindowSettings(),
    pool: PoolEntries | None = None,
    epoch: int = 0,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A net's inputs for ``targets`` of one clip, and a (B,) mask of valid samples.

    ``stage`` picks coarse (full frames) or fine (crops) features for S / ST / SA;
    ``term`` is required for ``+`` nets.
    """
    if spec.graph:
        if term is None:
            raise ValueError("a + net needs a term (short, long or cross)")
        return _graph(spec, feats, targets, term, key, settings, pool, epoch)
    inputs = _single(spec, feats, stage, targets)
    return inputs, torch.ones(len(targets), dtype=torch.bool, device=feats["gate"].device)
