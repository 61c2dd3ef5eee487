"""Multigranularity window sampling (SPEC.md, "Multigranularity inputs", Sec. 4.2).

For target frame ``t`` of a clip with ``T`` decoded frames and ``n`` multigranularity
nodes (the paper's n = 2):

=====  ==================================  ==========================================
term   single frames (S+, SA+)             3-frame groups (ST+), by centre frame
=====  ==================================  ==========================================
short  t-1, t+1, t-2, t+2, ...             t-3, t+3, t-6, t+6, ... (groups t-4..t-2,
                                           t+2..t+4 for n = 2: all inside t-4..t+4)
long   n random frames of the clip outside n random centres whose group lies outside
       t-4..t+4                            t-4..t+4
cross  n random entries of the tag's pool from other clips (see :mod:`factory.method.pool`)
=====  ==================================  ==========================================

Indices outside ``[0, T)`` are clamped to the clip's ends (a target near an edge repeats
the edge frame, as the ST net's t-1 / t+1 do). Random choices come from a generator
seeded by ``(seed, clip key, t, term, epoch)``, so the same seed gives the same
windows on any number of workers, in any order.
"""

from __future__ import annotations

import hashlib

import numpy as np

from factory.method.postprocess import SMOOTH_FRAMES

TERM_CODES = {"short": 1, "long": 2, "cross": 3, "targets": 4}


def stable_hash(text: str) -> int:
    """A 63-bit hash that is the same in every process (``hash()`` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def window_rng(seed: int, key: str, t: int, term: str, epoch: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, stable_hash(key), t, TERM_CODES[term], epoch])


def clamp(idx: np.ndarray | list[int], num_frames: int) -> np.ndarray:
    return np.clip(np.asarray(idx, dtype=np.int64), 0, num_frames - 1)


def triplet(t: int, num_frames: int) -> np.ndarray:
    """Frames t-1, t, t+1 (the ST net's input), clamped."""
    return clamp([t - 1, t, t + 1], num_frames)


def short_term(t: int, num_frames: int, nodes: int, groups: bool) -> np.ndarray:
    """Centres of the short-term nodes: t-1, t+1, t-2, t+2, ... for single frames;
    t-3, t+3, t-6, t+6, ... for 3-frame groups (so n = 2 covers t-4..t+4)."""
    step = 3 if groups else 1
    offsets = [
        sign * step * (1 + i // 2) for i, sign in zip(range(nodes), [-1, 1] * nodes, strict=False)
    ]
    return clamp([t + o for o in offsets], num_frames)


def long_pool_centres(num_frames: int, size: int) -> np.ndarray:
    """The frames of a clip the long term draws from: every frame of a clip of up to
    ``size`` frames, else ``size`` frames spread evenly over the whole clip (the
    long-term pool of a long clip: its features stay bounded by ``size`` groups
    whatever the clip's length, and every part of the clip can be drawn, as the paper's
    "2 frames of the same clip" asks)."""
    if num_frames <= size:
        return np.arange(num_frames)
    return np.unique(np.round(np.linspace(0, num_frames - 1, size)).astype(np.int64))


def long_term(
    t: int,
    num_frames: int,
    nodes: int,
    groups: bool,
    rng: np.random.Generator,
    short_radius: int = 4,
    centres: np.ndarray | None = None,
) -> tuple[np.ndarray, bool]:
    """``nodes`` random centres of the same clip outside the short-term span (a group's
    three frames all outside t-4..t+4), drawn from ``centres`` (default: every frame; see
    :func:`long_pool_centres`). Returns (centres, fell_back): when the clip is too short
    for that, the farthest frames stand in and ``fell_back`` is True."""
    frames = np.arange(num_frames) if centres is None else np.asarray(centres, dtype=np.int64)
    margin = short_radius + (2 if groups else 1)
    candidates = frames[np.abs(frames - t) >= margin]
    if groups:  # keep whole groups inside the clip
        candidates = (
            candidates[(candidates >= 1) & (candidates <= num_frames - 2)]
            if num_frames >= 3
            else candidates
        )
    if len(candidates) == 0:
        order = np.argsort(-np.abs(frames - t), kind="stable")
        return clamp(frames[order[np.arange(nodes) % len(frames)]], num_frames), True
    replace = len(candidates) < nodes
    return np.sort(rng.choice(candidates, size=nodes, replace=replace)), replace


def halo(nodes: int, short_radius: int = 4) -> int:
    """How many frames on each side a frame's pseudo-fixation depends on within its clip:
    the short-term nodes' 3-frame groups (centres at 3, 6, ... frames, so t-4..t+4 for
    n = 2), at least ``short_radius``, plus the authors' post-processing's 2 frames of
    temporal smoothing on each side. A chunk of a long clip is labelled with this many
    extra frames on each side, so its maps equal those of the whole clip."""
    short = max(short_radius, 3 * ((nodes + 1) // 2) + 1)
    return short + SMOOTH_FRAMES // 2


def target_frames(key: str, num_frames: int, count: int, seed: int, epoch: int) -> np.ndarray:
    """``count`` training targets of a clip for an epoch (all frames if fewer)."""
    if count >= num_frames:
        return np.arange(num_frames)
    return np.sort(
        window_rng(seed, key, 0, "targets", epoch).choice(num_frames, size=count, replace=False)
    )
