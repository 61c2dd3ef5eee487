"""Ray Data stages shared by the label and predict jobs: decode (CPU tasks), a model
stage (an actor pool: the model loads once per actor in ``__init__``, batches go
through ``__call__``), and the exactly-once writer (see :mod:`factory.io.store`).

Each row is one clip. Per-clip problems become reject rows that flow through the
remaining stages untouched and are committed like labelled clips; nothing raises out
of a stage for a bad input. The per-row logic is plain functions that tests call
without Ray.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch
from ray.data import ActorPoolStrategy

from factory.config import FrameConfig, SpectrogramConfig, from_dict
from factory.io import storage
from factory.io.corpus import ClipRecord
from factory.io.decode import ClipTooLong, DecodedClip, decode_clip
from factory.io.rejects import ClipError, Reject
from factory.io.store import ShardStore
from factory.pipelines import metrics
from factory.pipelines.cluster import cluster_cpus, cluster_gpus, node_cpus

log = logging.getLogger(__name__)

OK = "ok"
REJECT = "reject"
ROW_COLUMNS = (
    "key",
    "record",
    "status",
    "payload",
    "stage",
    "reason",
    "remedy",
    "n_frames",
    "info",
)


def serialize_clip(clip: DecodedClip) -> bytes:
    buf = io.BytesIO()
    arrays = {
        "frames": clip.frames,
        "times": clip.times,
        "meta": np.array(
            [
                clip.audio_t0,
                clip.duration_s,
                *clip.source_size,
                -1 if clip.audio_stream is None else clip.audio_stream,
            ],
            dtype=np.float64,
        ),
    }
    if clip.audio is not None:
        arrays["audio"] = clip.audio
    np.savez(buf, **arrays)
    return buf.getvalue()


def deserialize_clip(key: str, data: bytes) -> DecodedClip:
    with np.load(io.BytesIO(data)) as z:
        meta = z["meta"]
        return DecodedClip(
            key,
            z["frames"],
            z["times"],
            z["audio"] if "audio" in z.files else None,
            float(meta[0]),
            float(meta[1]),
            (int(meta[2]), int(meta[3])),
            int(meta[4]) if len(meta) > 4 and meta[4] >= 0 else None,
        )


def empty_row(key: str, record: str) -> dict[str, Any]:
    return {
        "key": key,
        "record": record,
        "status": OK,
        "payload": b"",
        "stage": "",
        "reason": "",
        "remedy": "",
        "n_frames": 0,
        "info": "{}",
    }


def reject_row(row: dict[str, Any], err: ClipError) -> dict[str, Any]:
    return {
        **row,
        "status": REJECT,
        "payload": b"",
        "stage": err.stage,
        "reason": err.reason,
        "remedy": err.remedy,
    }


def to_batch(rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    out = {}
    for c in ROW_COLUMNS:
        values = [r[c] for r in rows]
        out[c] = np.array(values, dtype=object) if c in ("payload",) else np.array(values)
    return out


def from_batch(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    n = len(batch["key"])
    return [
        {
            c: (
                batch[c][i].item()
                if hasattr(batch[c][i], "item") and c != "payload"
                else batch[c][i]
            )
            for c in ROW_COLUMNS
            if c in batch
        }
        for i in range(n)
    ]


def decode_row(
    row: dict[str, Any],
    frames_cfg: FrameConfig,
    spec_cfg: SpectrogramConfig,
    need_audio: bool = True,
    chunked: bool = False,
) -> dict[str, Any]:
    """Decode one clip row into a payload, or a reject row. ``chunked``: a clip longer
    than ``max_frames`` passes on undecoded (an empty payload) for the model stage to
    take in chunks (:mod:`factory.method.chunks`), instead of being rejected."""
    record = ClipRecord.from_row(json.loads(row["record"]))
    out = empty_row(row["key"], row["record"])
    t0 = time.perf_counter()
    try:
        clip = decode_clip(record, frames_cfg, spec_cfg, need_audio)
        out.update(
            payload=serialize_clip(clip),
            n_frames=len(clip.times),
            info=json.dumps({"decode_seconds": time.perf_counter() - t0}),
        )
    except ClipTooLong as err:
        if chunked:
            out.update(
                n_frames=err.frames,
                info=json.dumps({"chunked": True, "decode_seconds": time.perf_counter() - t0}),
            )
        else:
            out = reject_row(out, err)
    except ClipError as err:
        out = reject_row(out, err)
    except Exception as err:  # an unforeseen failure is still one clip's reject, not the job's end
        out = reject_row(
            out,
            ClipError(
                "decode",
                f"unexpected {type(err).__name__}: {storage.redact(str(err))}",
                "report this with the file attached",
            ),
        )
    return out


def decode_batch(
    batch: dict[str, np.ndarray],
    preset_json: str,
    need_audio: bool = True,
    chunked: bool = False,
    job: str = "label",
) -> dict[str, np.ndarray]:
    """Ray Data function (CPU tasks): clip rows in, decoded payloads or rejects out
    (counted in the ``decode`` stage's metrics under ``job``)."""

    t0 = time.perf_counter()
    preset = from_dict(json.loads(preset_json))
    rows = [
        decode_row(r, preset.frames, preset.spectrogram, need_audio, chunked)
        for r in from_batch(batch)
    ]
    record_stage(job, "decode", rows, time.perf_counter() - t0)
    return to_batch(rows)


def record_stage(job: str, stage: str, rows: list[dict[str, Any]], seconds: float) -> None:
    """One batch of a stage into the stage metrics (:mod:`factory.pipelines.metrics`)."""
    rejects = sum(r["status"] != OK for r in rows)
    frames = sum(int(r["n_frames"]) for r in rows if r["status"] == OK)
    metrics.record(job, stage, len(rows), frames, rejects, seconds)


DECODE_CPUS = 0.5  # CPUs of a decode task (the first stage of every model job)
WRITE_CPUS = 0.25  # CPUs of a writer task (label, predict)


def default_actors(gpus_per_actor: float) -> int:
    """Actor pool size when none is given: every GPU used (one actor per ``gpus_per_actor``
    GPUs), else on each node all its CPUs but one (decode and write need a CPU), at least
    one a node: counted per node, so that the actors' CPU shares fit the nodes they land
    on (15 on one 16-core node; 2 on two 2-CPU nodes, not 3 that only 2 could hold)."""

    if gpus_per_actor > 0:
        return max(1, int(cluster_gpus() // gpus_per_actor))
    return sum(max(1, int(c) - 1) for c in node_cpus())


def actor_threads(threads: int | None, actor_cpus: float, gpus_per_actor: float) -> int | None:
    """Torch intra-op threads of each model actor: ``threads`` when given, else on CPU the
    actor's CPUs rounded up (a fractional reservation, e.g. the 1.25 CPUs that decode and
    write leave on a 2-core machine, still gets its second core: those stages are busy a
    few percent of the time), else None (a GPU actor keeps Ray's setting)."""
    if threads:
        return threads
    if gpus_per_actor > 0:
        return None
    return max(1, math.ceil(actor_cpus))


@dataclass(frozen=True)
class ActorSizing:
    """How many model actors a job starts, the CPUs Ray reserves for each and their torch
    threads (None: Ray's setting)."""

    actors: int
    cpus: float
    threads: int | None


def size_model_actors(
    actors: int | None,
    actor_cpus: float | None,
    threads: int | None,
    gpus_per_actor: float,
    side_cpus: float,
) -> ActorSizing:
    """The model stage's sizing from the job's flags (None: the default).

    ``actors``: :func:`default_actors`. ``actor_cpus``: given, else 1 for a GPU actor and,
    on CPU, the cluster's CPUs left after the side stages (``side_cpus``: decode and
    write) shared by the actors, at most what one node has beside them, at least 1: on a
    2-core machine the one actor reserves 1.25. ``threads``: given, else for given CPUs
    :func:`actor_threads` (rounded up), else on CPU the cluster's cores shared by the
    actors, rounded down, at most a node's, at least 1 (2 for the one actor of a 2-core
    machine, 1 each for the 15 actors of a 16-core node: decode and write are busy a few
    percent of the time, so they need no core of their own, and a thread per reserved CPU
    rounded up would put 30 threads on 16 cores there)."""
    n = actors or default_actors(gpus_per_actor)
    if actor_cpus is not None:
        return ActorSizing(n, actor_cpus, actor_threads(threads, actor_cpus, gpus_per_actor))
    if gpus_per_actor > 0:
        return ActorSizing(n, 1.0, actor_threads(threads, 1.0, gpus_per_actor))
    # An actor lives on one node and its node must still run decode and write (after a
    # node is lost the restarted actor lands beside them): the share is capped at the
    # biggest node's CPUs less the side stages (a 3.25-CPU actor on a cluster of 2-CPU
    # nodes never started, CI 2026-12-06).
    total, node = cluster_cpus(), max(node_cpus())
    share = min((total - side_cpus) / n, node - side_cpus)
    cores = min(total // n, node)
    return ActorSizing(n, max(1.0, math.floor(share * 100) / 100), threads or max(1, int(cores)))


def set_torch_threads(threads: int | None) -> None:
    """In an actor's ``__init__``: use ``threads`` intra-op threads (None: leave as is).
    Ray starts a CPU actor with ``OMP_NUM_THREADS`` = its whole CPUs, at least 1."""
    if threads:
        torch.set_num_threads(threads)


def decoded_through_actors(
    records: list[ClipRecord],
    preset_json: str,
    actor: type,
    actor_kwargs: dict[str, Any],
    actors: int,
    gpus_per_actor: float,
    batch_size: int = 1,
    actor_cpus: float = 1.0,
    decode_cpus: float = DECODE_CPUS,
    chunked: bool = False,
) -> Any:
    """The first two stages of every job that runs a model over clips (label, predict, the
    train and distil caches): one row per clip, decoded by CPU tasks, then an actor pool
    of ``actor(**actor_kwargs)``. Returns the lazy Ray dataset; the caller adds its writer.
    ``chunked``: clips longer than ``max_frames`` reach the actor undecoded, to be taken
    in chunks there (the label and predict stages), instead of being rejected. The
    stages' metrics are tagged with ``actor.job``."""

    metrics.register()
    rows = [{"key": r.key, "record": json.dumps(r.to_row())} for r in records]
    ds = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
    ds = ds.map_batches(
        decode_batch,
        batch_size=1,
        num_cpus=decode_cpus,
        fn_kwargs={"preset_json": preset_json, "chunked": chunked, "job": actor.job},
    )
    return ds.map_batches(
        actor,
        batch_size=batch_size,
        compute=ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
        num_gpus=gpus_per_actor,
        fn_constructor_kwargs=actor_kwargs,
    )


def model_row(
    row: dict[str, Any],
    process: Callable[[DecodedClip, ClipRecord], tuple[bytes, dict]],
    clip: DecodedClip | None = None,
    stage: str = "label",
) -> dict[str, Any]:
    """Run a model stage on one decoded row: ``process`` returns (payload, info).
    ``clip``: the row's payload already deserialised (None with an empty payload: a long
    clip the stage decodes in chunks itself); ``stage``: what a reject from an
    unforeseen error names."""
    if row["status"] != OK:
        return row
    record = ClipRecord.from_row(json.loads(row["record"]))
    t0 = time.perf_counter()
    try:
        if clip is None and row["payload"]:
            clip = deserialize_clip(row["key"], row["payload"])
        payload, info = process(clip, record)
        info["seconds"] = time.perf_counter() - t0
        info["done_at"] = time.time()  # wall clock: the job's steady state is measured from it
        before = json.loads(row["info"] or "{}")  # the decode stage's (its time)
        return {**row, "payload": payload, "info": json.dumps({**before, **info})}
    except ClipError as err:
        return reject_row(row, err)
    except Exception as err:
        log.error("clip %s failed in the %s stage:\n%s", row["key"], stage, traceback.format_exc())
        return reject_row(
            row,
            ClipError(
                stage,
                f"unexpected {type(err).__name__}: {storage.redact(str(err))}",
                "report this with the clip attached",
            ),
        )


class ModelStage:
    """The base of every Ray Data model stage (label, predict, the train job's caches,
    the distil cache). A subclass loads its model once per actor in ``__init__`` and
    implements :meth:`process` for one clip; the base owns the batch loop, turns each
    row's failure into that row's reject (the other rows of the batch go on), and times
    each clip (``info["seconds"]``) and records the stage's metrics. ``stage`` names the
    stage in those rejects and metrics, ``job`` the job in the metrics."""

    stage = "label"
    job = "label"

    def process(self, clip: DecodedClip | None, record: ClipRecord) -> tuple[bytes, dict]:
        """One decoded clip -> (payload, info): what the writer commits and a JSON-able
        summary. Raise :class:`ClipError` to reject the clip with a reason. ``clip`` is
        None only in a stage built with ``chunked=True``: a clip longer than
        ``max_frames``, to decode in chunks (:mod:`factory.method.chunks`)."""
        raise NotImplementedError

    def prepare(self, clips: list[DecodedClip]) -> None:
        """Work shared by a batch's clips before :meth:`process` runs on each (for
        example one encoder pass over all their frames). Optional."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        rows = from_batch(batch)
        clips: dict[str, DecodedClip] = {}
        for r in rows:
            if r["status"] == OK and r["payload"]:  # (empty: a long clip, taken in chunks)
                with contextlib.suppress(Exception):  # a bad payload is rejected by model_row
                    clips[r["key"]] = deserialize_clip(r["key"], r["payload"])
        if clips:
            try:
                self.prepare(list(clips.values()))
            except Exception as err:  # e.g. out of memory: process clip by clip instead
                log.warning("%s: batch preparation failed (%s); clip by clip", self.stage, err)
        out = [model_row(r, self.process, clips.get(r["key"]), self.stage) for r in rows]
        record_stage(self.job, self.stage, out, time.perf_counter() - t0)
        return to_batch(out)


def row_reject(row: dict[str, Any]) -> Reject:
    """The reject record of a row that a stage rejected (its clip's location redacted)."""
    rec = json.loads(row["record"])
    return Reject(
        row["key"],
        row["stage"],
        row["reason"],
        row["remedy"],
        storage.redact(rec.get("uri", "")),
        rec.get("split"),
    )


def by_bytes(rows: list[dict[str, Any]], max_bytes: int | None) -> list[list[dict[str, Any]]]:
    """Cut a batch's rows, in order, into groups whose payloads hold at most ``max_bytes``
    together (a clip larger than that is a group of its own); None: one group."""
    if not max_bytes:
        return [rows] if rows else []
    groups: list[list[dict[str, Any]]] = []
    size = 0
    for r in rows:
        n = len(r["payload"])
        if groups and size + n <= max_bytes:
            groups[-1].append(r)
            size += n
        else:
            groups.append([r])
            size = n
    return groups


def write_rows(
    rows: list[dict[str, Any]],
    root: str,
    make_table: Callable[[list[dict[str, Any]]], Any],
    max_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Commit a batch: labelled clips into shard files of at most ``max_bytes`` of
    payload each (one file when None), rejects into one rejects file. Returns one summary
    row per clip (key, status, file, n_frames, info, reason); each clip's ``info`` gains
    ``write_seconds``, its share of the batch's write time."""

    t0 = time.perf_counter()
    store = ShardStore(root)
    done = [r for r in rows if r["status"] == OK]
    bad = [r for r in rows if r["status"] != OK]
    summary = []
    for group in by_bytes(done, max_bytes):
        uri = store.write_shard(make_table(group), [r["key"] for r in group])
        summary += [
            {
                "key": r["key"],
                "status": OK,
                "file": uri,
                "n_frames": r["n_frames"],
                "info": r["info"],
                "reason": "",
            }
            for r in group
        ]
    if bad:
        uri = store.write_rejects([row_reject(r) for r in bad])
        summary += [
            {
                "key": r["key"],
                "status": REJECT,
                "file": uri,
                "n_frames": 0,
                "info": "{}",
                "reason": f"{r['stage']}: {r['reason']}",
            }
            for r in bad
        ]
    share = (time.perf_counter() - t0) / max(len(rows), 1)
    for s in summary:
        s["info"] = json.dumps({**json.loads(s["info"] or "{}"), "write_seconds": share})
    return summary
