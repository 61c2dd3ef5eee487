"""The dataset writer shared by the label and predict jobs: what happens around the Ray
Data stream of decoded clips through a model stage, written once.

- :func:`open_dataset`: before the stream, the output's committed clips (a rerun skips
  them), the listing's rejects recorded, the clips still to do;
- :func:`write_batch`: the stream's last stage (Ray Data tasks), a batch of rows
  committed exactly once (:func:`factory.pipelines.stages.write_rows`);
- :func:`consume`: the driver drains the stream with a progress bar (or progress lines)
  and every reject, and measures start-up, steady state and each stage's busy time;
- :func:`close_dataset`: after it, the accounting (``inputs = committed clips +
  rejects``, or :class:`AccountingError`), ``_manifest.json``, ``rejects.parquet``,
  ``run.json`` and the per-frame PNG export.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from factory.io import storage
from factory.io.corpus import ClipRecord, Listing
from factory.io.store import ShardStore, read_parquet, write_parquet_atomic
from factory.method.dataset import export_png, table_from_bytes
from factory.pipelines.stages import OK, from_batch, record_stage, write_rows

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 10.0


class AccountingError(RuntimeError):
    """The committed clips and rejects do not add up to the inputs."""


@dataclass
class Closed:
    """A finished dataset: its manifest, the committed and rejected input keys, and the
    reject reasons counted (``stage: reason``, the reason cut before its detail)."""

    manifest: dict[str, Any]
    committed: set[str]
    rejected: set[str]
    reasons: dict[str, int]
    inputs: int


def open_dataset(root: str, listing: Listing) -> tuple[ShardStore, list[ClipRecord]]:
    """The output's store and the clips still to do. The listing's own rejects (bad rows,
    missing files) are committed here, once."""
    store = ShardStore(root)
    storage.makedirs(root)
    committed = store.scan()
    if committed.removed:
        log.warning(
            "removed %d overlapping or unreadable file(s) left by an interrupted run",
            len(committed.removed),
        )
    pending = [r for r in listing.rejects if r.input not in committed.keys]
    if pending:
        store.write_rejects(pending)
    return store, [r for r in listing.records if r.key not in committed.keys]


def write_batch(
    batch: dict[str, np.ndarray], root: str, job: str = "label", shard_bytes: int | None = None
) -> dict[str, np.ndarray]:
    """Ray Data function (tasks): commit a batch of model-stage rows (each payload an
    Arrow table of the clip's frames) or rejects, in shard files of at most
    ``shard_bytes`` each; one summary row per clip out."""

    def make_table(rows: list[dict[str, Any]]) -> pa.Table:
        return pa.concat_tables([table_from_bytes(r["payload"]) for r in rows])

    t0 = time.perf_counter()
    rows = from_batch(batch)
    summary = write_rows(rows, root, make_table, shard_bytes)
    record_stage(job, "write", rows, time.perf_counter() - t0)
    return {
        k: np.array([s[k] for s in summary])
        for k in ("key", "status", "file", "n_frames", "info", "reason")
    }


STAGE_SECONDS = {"decode": "decode_seconds", "model": "seconds", "write": "write_seconds"}


@dataclass
class StreamStats:
    """What the driver saw of one decode -> model -> write stream.

    ``startup_s``: from the job's start to its first committed clip (listing, pool, Ray
    Data's start, the actors' model loading, the first shard); ``first_label_s``: to the
    model stage's first finished clip; ``steady_frames_per_s``: the frames the model
    stage finished after that first clip, over the time from it to the last commit (the
    job's rate once started); ``stage_seconds``: the stages' summed busy seconds
    (decode, model, write), comparable with ``seconds`` x their workers."""

    frames: int = 0
    clips: int = 0
    rejects: int = 0
    seconds: float = 0.0
    startup_s: float = 0.0
    first_label_s: float = 0.0
    steady_frames_per_s: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for k in ("seconds", "startup_s", "first_label_s", "steady_frames_per_s"):
            out[k] = round(out[k], 3)
        out["stage_seconds"] = {k: round(v, 3) for k, v in self.stage_seconds.items()}
        return out


def progress_bar(total: int, what: str) -> Any:
    """A console progress bar for interactive runs (tqdm; None when stderr is no TTY:
    logs and job submissions get the periodic progress lines instead)."""
    if not sys.stderr.isatty():
        return None
    return tqdm(total=total, unit="clip", desc=what, dynamic_ncols=True)


def consume(ds: Any, total: int, t_start: float | None = None, what: str = "label") -> StreamStats:
    """Run a decode -> model stage -> write dataset to the end: a progress bar on a TTY,
    else a progress line every ``PROGRESS_EVERY_S``; every reject logged. ``t_start``:
    the job's start (default: now), from which start-up is counted."""
    t0 = last = time.time()
    t_start = t0 if t_start is None else t_start
    stats = StreamStats(stage_seconds=dict.fromkeys(STAGE_SECONDS, 0.0))
    done_at: list[tuple[float, int]] = []  # (when the model stage finished a clip, frames)
    bar = progress_bar(total, what)
    for done, row in enumerate(ds.iter_rows(), start=1):
        if not stats.clips + stats.rejects:
            stats.startup_s = time.time() - t_start
        info = json.loads(row.get("info") or "{}")
        for stage, key in STAGE_SECONDS.items():
            stats.stage_seconds[stage] += float(info.get(key, 0.0))
        if row["status"] == OK:
            stats.clips += 1
            stats.frames += int(row["n_frames"])
            if "done_at" in info:
                done_at.append((float(info["done_at"]), int(row["n_frames"])))
            for k, v in info.items():
                if isinstance(v, int) and not isinstance(v, bool):
                    stats.counters[k] = stats.counters.get(k, 0) + v
        else:
            stats.rejects += 1
            log.warning("reject %s: %s", row["key"], row["reason"])
        if bar is not None:
            bar.update(1)
            bar.set_postfix(frames=stats.frames, rejects=stats.rejects, refresh=False)
        elif time.time() - last > PROGRESS_EVERY_S or done == total:
            el = time.time() - t0
            log.info(
                "progress: %d/%d clips, %d frames, %.1f frames/s, %d rejected",
                done,
                total,
                stats.frames,
                stats.frames / max(el, 1e-9),
                stats.rejects,
            )
            last = time.time()
    if bar is not None:
        bar.close()
    end = time.time()
    stats.seconds = end - t0
    if done_at:
        done_at.sort()
        first = done_at[0][0]
        stats.first_label_s = first - t_start
        later = sum(f for t, f in done_at[1:])
        stats.steady_frames_per_s = later / max(end - first, 1e-9) if later else 0.0
    return stats


def close_dataset(root: str, listing: Listing, store: ShardStore, what: str) -> Closed:
    """Check ``inputs = committed clips + rejects`` (``what``: the word for a committed
    clip in messages, "labelled" / "predicted"), then write the manifest and the rejects
    table. Raises :class:`AccountingError` naming the clips that do not add up."""
    committed = store.scan()
    expected = {r.key for r in listing.records} | {j.input for j in listing.rejects}
    done = {k for k in committed.shard_clips if k in expected}
    rejected = {k for k in committed.reject_clips if k in expected}
    missing = expected - done - rejected
    both = done & rejected
    log.info(
        "accounting: inputs %d = %s clips %d + rejects %d",
        len(expected),
        what,
        len(done),
        len(rejected),
    )
    if missing or both:
        raise AccountingError(
            f"accounting failed for {root}: {len(expected)} inputs != {len(done)} {what} + "
            f"{len(rejected)} rejects (missing: {sorted(missing)[:5]}, in both: "
            f"{sorted(both)[:5]}); rerun the same command to finish"
        )
    files = sorted({committed.shard_clips[k] for k in done})
    manifest = {
        "shards": [
            {
                "file": storage.join("shards", f.rsplit("/", 1)[-1]),
                "rows": committed.shard_rows.get(f, 0),
                "clips": sorted(c for c, g in committed.shard_clips.items() if g == f),
            }
            for f in files
        ],
        "rows": sum(committed.shard_rows.get(f, 0) for f in files),
        "clips": len(done),
        "rejects": len(rejected),
    }
    storage.write_json(storage.join(root, "_manifest.json"), manifest)
    rejects = store.all_rejects()
    write_parquet_atomic(storage.join(root, "rejects.parquet"), rejects)
    reasons: dict[str, int] = {}
    for stage, reason in zip(
        rejects["stage"].to_pylist(), rejects["reason"].to_pylist(), strict=True
    ):
        key = f"{stage}: {reason.split(' (')[0][:60]}"
        reasons[key] = reasons.get(key, 0) + 1
    return Closed(manifest, done, rejected, reasons, len(expected))


def write_run_record(root: str, record: dict[str, Any]) -> None:
    """``run.json``: the job, its arguments (credentials redacted) and its summary."""
    storage.write_json(
        storage.join(root, "run.json"), json.loads(storage.redact(json.dumps(record, default=str)))
    )


def export_pngs(root: str, manifest: dict, out_dir: str) -> int:
    """Every committed map as ``<out_dir>/<video_id>/maps/eyeMap_%05d.png`` at the video's
    own size (see :func:`factory.method.dataset.export_png`); returns the number written."""
    n = 0
    for shard in manifest["shards"]:
        n += export_png(
            read_parquet(
                storage.join(root, shard["file"]),
                ["video_id", "frame_index", "map", "source_height", "source_width"],
            ),
            out_dir,
        )
    return n
