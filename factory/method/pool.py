"""The per-tag pool that feeds the cross term (frames of *other* clips with the same tag).

Which clips enter a tag's pool is decided by a **bottom-k sketch**: the ``k`` clips of
the tag with the smallest seeded hash of their key. The sketch is built in one pass
over the clip *listing* (keys and tags only, no decoding), keeps at most ``k`` keys per
tag (bounded memory), and two sketches merge by keeping the k smallest. So the choice
does not depend on how the corpus is split across workers or in which order it
streams, and there is no global shuffle. The driver builds it, decodes only the
selected clips (a few 3-frame groups each), and serves each tag's entries from the
object store, fetched on demand by the labelling actors (the "service").

A tag whose only pool clip is the target's own clip has no cross term for that
target; the labeler counts it and the pair contributes nothing to SCAM+.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from factory.io.corpus import ClipRecord
from factory.method.windows import stable_hash

# Candidates kept beyond k per tag, so a pool clip that fails to decode is replaced by
# the next one in hash order instead of shrinking the pool.
SPARE_CANDIDATES = 2


@dataclass
class PoolSketch:
    """Bottom-k of ``stable_hash(seed:key)`` per tag."""

    k: int
    seed: int = 0
    heaps: dict[str, list[tuple[int, str, str]]] = field(
        default_factory=dict
    )  # tag -> max-heap of (-hash, key, uri)

    def add(self, record: ClipRecord) -> None:
        h = stable_hash(f"{self.seed}:{record.key}")
        for tag in record.tags:
            heap = self.heaps.setdefault(tag, [])
            item = (-h, record.key, record.uri)
            if len(heap) < self.k + SPARE_CANDIDATES:
                heapq.heappush(heap, item)
            elif item > heap[0]:
                heapq.heapreplace(heap, item)

    def merge(self, other: PoolSketch) -> PoolSketch:
        out = PoolSketch(self.k, self.seed)
        for sketch in (self, other):
            for tag, heap in sketch.heaps.items():
                for _neg, key, uri in heap:
                    out.add(ClipRecord(key, uri, (tag,)))
        return out

    def candidates(self, tag: str) -> list[str]:
        """Keys of the tag's candidates, best (smallest hash) first."""
        return [key for _neg, key, _uri in sorted(self.heaps.get(tag, []), reverse=True)]


def build_sketch(records: Iterable[ClipRecord], k: int, seed: int) -> PoolSketch:
    sketch = PoolSketch(k, seed)
    for r in records:
        sketch.add(r)
    return sketch


def group_centres(num_frames: int, groups: int) -> np.ndarray:
    """Evenly spaced centres of ``groups`` 3-frame groups inside a clip."""
    lo, hi = (1, num_frames - 2) if num_frames >= 3 else (0, num_frames - 1)
    return np.unique(np.round(np.linspace(lo, hi, groups + 2)[1:-1]).astype(np.int64))


@dataclass
class PoolEntries:
    """One tag's pool: entry ``e`` is a 3-frame group of clip ``keys[e]``; ``arrays``
    holds per-entry data (frames, audio windows, or encoder features)."""

    keys: list[str]
    arrays: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.keys)

    @staticmethod
    def concat(parts: Iterable[PoolEntries]) -> PoolEntries:
        parts = [p for p in parts if len(p)]
        if not parts:
            return PoolEntries([], {})
        names = parts[0].arrays.keys()
        return PoolEntries(
            [k for p in parts for k in p.keys],
            {n: np.concatenate([p.arrays[n] for p in parts]) for n in names},
        )


def cross_term(
    pool: PoolEntries | None, exclude_key: str, nodes: int, rng: np.random.Generator
) -> np.ndarray | None:
    """``nodes`` entry indices of the pool from clips other than ``exclude_key``
    (with replacement only when there are too few); ``None`` if there is none."""
    if pool is None or len(pool) == 0:
        return None
    candidates = np.flatnonzero(np.asarray(pool.keys) != exclude_key)
    if len(candidates) == 0:
        return None
    return rng.choice(candidates, size=nodes, replace=len(candidates) < nodes)


class PoolSource:
    """Where the labeler or a trainer gets a tag's pool. ``entries`` maps a tag to its
    :class:`PoolEntries` or to a Ray ``ObjectRef`` of them (fetched on first use and
    cached, so an actor only holds the tags it meets)."""

    def __init__(self, entries: Mapping[str, object]) -> None:
        self._entries = dict(entries)
        self._cache: dict[str, PoolEntries] = {}

    def get(self, tag: str) -> PoolEntries | None:
        if tag in self._cache:
            return self._cache[tag]
        value = self._entries.get(tag)
        if value is None:
            return None
        if not isinstance(value, PoolEntries):
            import ray  # only the Ray pipeline passes ObjectRefs

            value = ray.get(value)
        self._cache[tag] = value  # type: ignore[assignment]
        return value  # type: ignore[return-value]

    @property
    def tags(self) -> list[str]:
        return sorted(self._entries)
