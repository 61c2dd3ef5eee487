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
cross  n random entries of the tag's pool from other clips (see :mod:`factory.pool`)
=====  ==================================  ==========================================

Indices outside ``[0, T)`` are clamped to the clip's ends (a target near an edge repeats
the edge frame, as the ST net's t-1 / t+1 do). Random choices come from a generator
seeded by ``(seed, clip key, t, term, epoch)``, so the same seed gives the same
windows on any number of workers, in any order.
"""

from __future__ import annotations

import hashlib

import numpy as np

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


def long_term(
    t: int,
    num_frames: int,
    nodes: int,
    groups: bool,
    rng: np.random.Generator,
    short_radius: int = 4,
) -> tuple[np.ndarray, bool]:
    """``nodes`` random centres of the same clip outside the short-term span (a group's
    three frames all outside t-4..t+4). Returns (centres, fell_back): when the clip is
    too short for that, the farthest frames stand in and ``fell_back`` is True."""
    margin = short_radius + (2 if groups else 1)
    candidates = np.flatnonzero(np.abs(np.arange(num_frames) - t) >= margin)
    if groups:  # keep whole groups inside the clip
        candidates = (
            candidates[(candidates >= 1) & (candidates <= num_frames - 2)]
            if num_frames >= 3
            else candidates
        )
    if len(candidates) == 0:
        order = np.argsort(-np.abs(np.arange(num_frames) - t), kind="stable")
        return clamp(order[np.arange(nodes) % num_frames], num_frames), True
    replace = len(candidates) < nodes
    return np.sort(rng.choice(candidates, size=nodes, replace=replace)), replace


def target_frames(key: str, num_frames: int, count: int, seed: int, epoch: int) -> np.ndarray:
    """``count`` training targets of a clip for an epoch (all frames if fewer)."""
    if count >= num_frames:
        return np.arange(num_frames)
    return np.sort(
        window_rng(seed, key, 0, "targets", epoch).choice(num_frames, size=count, replace=False)
    )
