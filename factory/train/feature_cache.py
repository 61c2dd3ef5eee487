"""The training feature cache: one Parquet row per clip with its frames' encoder
features (or raw frames), written by a Ray Data pass and read by every trainer.

In the frozen-encoder mode each frame is encoded once here and the features are
shared by all nets; the trainers stream these rows with Ray Data. Rows are
``key, tags (JSON list of class indices), split, role ("train" | "holdout"),
has_audio, n_frames, blob`` where ``blob`` is an ``np.savez`` of float16 arrays.
Files are written atomically and named by their clips, so an interrupted pass resumes
where it stopped (the same protocol as the label job's store).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from factory.io import storage
from factory.io.corpus import ClipRecord
from factory.io.rejects import Reject
from factory.io.store import ShardStore, read_parquet, shard_name, write_parquet_atomic
from factory.method.windows import stable_hash
from factory.train.loop import TrainingClip

CACHE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("tags", pa.string()),
        ("split", pa.string()),
        ("role", pa.string()),
        ("has_audio", pa.bool_()),
        ("n_frames", pa.int32()),
        ("blob", pa.binary()),
    ]
)


def holdout_keys(records: Iterable[Any], holdout_fraction: float, seed: int) -> list[str]:
    """The clips held out to report tag accuracy, stratified by tag.

    Within each tag (a clip's first tag in sorted order), clips are ordered by a seeded hash
    of their key and the first ``round(fraction * n)`` are held out, at least one when the
    tag has two clips or more and never all of them. Stratifying keeps every tag in the
    held-out set (a plain hash threshold held out two clips of one tag and none of the
    others on a 15-clip corpus, so "accuracy" measured one class). The choice depends only
    on the keys, the tags and the seed: the same on any cluster and on a resumed run.
    """
    if holdout_fraction <= 0:
        return []
    by_tag: dict[str, list[str]] = {}
    for r in records:
        by_tag.setdefault(sorted(r.tags)[0], []).append(r.key)
    chosen: list[str] = []
    for keys in by_tag.values():
        keys.sort(key=lambda k: stable_hash(f"holdout:{seed}:{k}"))
        k = round(holdout_fraction * len(keys))
        k = min(max(k, 1 if len(keys) >= 2 else 0), len(keys) - 1)
        chosen += keys[:k]
    return sorted(chosen)


def encode_blob(arrays: dict[str, torch.Tensor | np.ndarray]) -> bytes:
    buf = io.BytesIO()
    out = {}
    for k, v in arrays.items():
        a = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        out[k] = a.astype(np.float16) if a.dtype.kind == "f" else a
    np.savez(buf, **out)
    return buf.getvalue()


def decode_blob(data: bytes) -> dict[str, torch.Tensor]:
    with np.load(io.BytesIO(data)) as z:
        return {
            k: torch.from_numpy(z[k].astype(np.float32) if z[k].dtype == np.float16 else z[k])
            for k in z.files
        }


def cache_row(
    record: ClipRecord, tags: list[int], role: str, has_audio: bool, n_frames: int, blob: bytes
) -> dict[str, Any]:
    return {
        "key": record.key,
        "tags": json.dumps(tags),
        "split": record.split or "",
        "role": role,
        "has_audio": has_audio,
        "n_frames": n_frames,
        "blob": blob,
    }


def write_cache(rows: list[dict[str, Any]], rejects: list[Reject], cache_dir: str) -> None:
    if rows:
        table = pa.Table.from_pylist(rows, schema=CACHE_SCHEMA)
        write_parquet_atomic(storage.join(cache_dir, shard_name(r["key"] for r in rows)), table)
    if rejects:
        ShardStore(cache_dir).write_rejects(rejects)


def cached_keys(cache_dir: str) -> tuple[set[str], set[str]]:
    """(clips in the cache, clips rejected while building it)."""
    keys: set[str] = set()
    for f in storage.listdir(cache_dir):
        if f.endswith(".parquet"):
            keys.update(read_parquet(f, ["key"])["key"].to_pylist())
    rejected = set(ShardStore(cache_dir).all_rejects()["input"].to_pylist())
    return keys, rejected


def cache_files(cache_dir: str) -> list[str]:
    return [f for f in storage.listdir(cache_dir) if f.endswith(".parquet")]


def rows_to_clips(
    rows: Iterable[dict[str, Any]], extra: dict[str, dict[str, torch.Tensor]] | None = None
) -> Iterator[TrainingClip]:
    """Cache rows -> training clips; ``extra[key]`` adds per-clip tensors (e.g. the
    audio switch labels as ``gate``)."""
    for row in rows:
        key = str(row["key"])
        feats = decode_blob(row["blob"])
        if extra and key in extra:
            feats.update(extra[key])
        if "gate" not in feats:
            feats["gate"] = torch.ones(int(row["n_frames"]))
        yield TrainingClip(
            key,
            json.loads(row["tags"]),
            feats,
            bool(row["has_audio"]),
            str(row.get("role", "train")),
        )


def batch_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(batch["key"])
    return [{k: batch[k][i] for k in batch} for i in range(n)]


def read_cache_rows(
    cache_dir: str, keys: set[str] | None = None, columns: list[str] | None = None
) -> list[dict[str, Any]]:
    """Rows of the cache (only ``keys`` if given), read on the driver (small reads:
    the pool's clips, the held-out clips)."""
    out = []
    for f in cache_files(cache_dir):
        t = read_parquet(f, columns)
        if keys is not None:
            mask = pa.compute.is_in(t["key"], pa.array(sorted(keys)))
            t = t.filter(mask)
        out.extend(t.to_pylist())
    return out
