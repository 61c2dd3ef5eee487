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

A tag's pool (:class:`factory.method.pool.PoolEntries`) holds, per entry (a 3-frame group of
another clip), ``plus`` (E, 3, C, h, w), ``audio`` (E, D) and ``gate`` (E,).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from factory.config import Preset
from factory.method.pool import PoolEntries, cross_term
from factory.method.windows import long_pool_centres, long_term, short_term, window_rng
from models.registry import InputSpec

ClipFeatures = dict[str, torch.Tensor]


@dataclass(frozen=True)
class WindowSettings:
    nodes: int = 2  # n
    short_radius: int = 4
    seed: int = 0
    long_pool: int = 128  # see factory.config.WindowConfig

    @staticmethod
    def from_preset(preset: Preset) -> WindowSettings:
        w = preset.windows
        return WindowSettings(preset.cgcn.nodes, w.short_radius, w.seed, w.long_pool)


@dataclass(frozen=True)
class Span:
    """Where a clip's feature rows sit when they are a chunk of a longer clip
    (:mod:`factory.method.chunks`): row 0 is frame ``offset`` of a clip of ``total`` frames, and
    ``long`` is the clip's long-term pool, which a chunk cannot gather from its own rows:
    ``centres`` (E,) the pool's frame indices (:func:`~factory.method.windows.long_pool_centres`)
    and the features of their 3-frame groups, ``plus`` (E, 3, C, h, w), ``audio`` (E, D),
    ``gate`` (E,). Without a span the rows are the whole clip."""

    offset: int
    total: int
    centres: np.ndarray
    long: dict[str, torch.Tensor]


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
    span: Span | None = None,
) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """Node centres of target ``t`` (a row of the clip's features) for a ``+`` net:
    ``(centres, pool_entries, fell_back)``. ``centres`` (1 + n,): node 0 is ``t``; the
    short term's nodes are rows too; the long term's are frames of the whole clip, drawn
    from its long-term pool (:func:`~factory.method.windows.long_pool_centres`; the same as rows
    without a ``span``); for the cross term the n MG nodes are entries of the tag's pool
    instead (``pool_entries``, or ``None`` when it has no other clip of the tag). Random
    draws are seeded by the frame's index in the whole clip, so a chunk of a long clip
    draws what the whole clip would."""
    groups = spec.frames == 3
    n = settings.nodes
    frame = t + (span.offset if span else 0)
    if term == "short":
        return np.concatenate([[t], short_term(t, num_frames, n, groups)]), None, False
    if term == "long":
        total = span.total if span else num_frames
        candidates = span.centres if span else long_pool_centres(num_frames, settings.long_pool)
        centres, fell_back = long_term(
            frame,
            total,
            n,
            groups,
            window_rng(settings.seed, key, frame, "long", epoch),
            settings.short_radius,
            centres=candidates,
        )
        return np.concatenate([[t], centres]), None, fell_back
    if term == "cross":
        entries = cross_term(pool, key, n, window_rng(settings.seed, key, frame, "cross", epoch))
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
    span: Span | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs of S+ / ST+ / SA+ for ``targets`` and one term, and a (B,) validity mask
    (False where the cross term has no pool entry). Indices are worked out in NumPy and
    gathered on the device in one indexing call per array. The MG nodes of the cross
    term come from the tag's pool, those of the long term of a chunk (``span``) from the
    clip's long-term pool; the others from the clip's own rows."""
    plus = feats["plus"]
    device = plus.device
    num_frames = plus.shape[0]
    n = settings.nodes
    cross = term == "cross"
    from_table = cross or (term == "long" and span is not None)
    width = 1 if from_table else 1 + n
    centres = np.zeros((len(targets), width), dtype=np.int64)
    entries = np.zeros((len(targets), n), dtype=np.int64)
    valid = np.ones(len(targets), dtype=bool)
    for i, t in enumerate(targets):
        c, e, _fell_back = graph_nodes(
            spec, key, num_frames, int(t), term, settings, pool, epoch, span
        )
        centres[i] = c[:width]
        if cross:
            if e is None:
                valid[i] = False
            else:
                entries[i] = e
        elif from_table:  # the long term of a chunk: positions in the clip's long pool
            assert span is not None
            entries[i] = np.searchsorted(span.centres, c[1:])
    offsets = np.array([-1, 0, 1]) if spec.frames == 3 else np.array([0])
    frame_idx = torch.as_tensor(
        np.clip(centres[..., None] + offsets, 0, num_frames - 1), device=device
    )
    centre_idx = torch.as_tensor(centres, device=device)
    image = plus[frame_idx]  # (B, width, F, C, h, w)
    audio = feats["audio"][centre_idx]
    gate = feats["gate"][centre_idx]
    if from_table:
        if cross:
            table = pool.arrays if pool is not None and len(pool) else None
        else:
            assert span is not None
            table = span.long
        if table is not None:
            e = torch.as_tensor(entries, device=device)
            mg_plus = torch.as_tensor(table["plus"], device=device, dtype=plus.dtype)[e]
            mg_img = mg_plus if spec.frames == 3 else mg_plus[:, :, 1:2]
            mg_audio = torch.as_tensor(table["audio"], device=device, dtype=plus.dtype)[e]
            mg_gate = torch.as_tensor(table["gate"], device=device, dtype=plus.dtype)[e]
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
    span: Span | None = None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A net's inputs for ``targets`` of one clip, and a (B,) mask of valid samples.

    ``stage`` picks coarse (full frames) or fine (crops) features for S / ST / SA;
    ``term`` is required for ``+`` nets; ``span``: the rows are a chunk of a longer clip.
    """
    if spec.graph:
        if term is None:
            raise ValueError("a + net needs a term (short, long or cross)")
        return _graph(spec, feats, targets, term, key, settings, pool, epoch, span)
    inputs = _single(spec, feats, stage, targets)
    return inputs, torch.ones(len(targets), dtype=torch.bool, device=feats["gate"].device)
