"""The distil job (Sec. 5): STA, STA+short and STA+long learn from a pseudo-fixation
dataset.

Ray Data decodes the dataset's clips from the corpus and encodes each frame once (the
bundle's frozen encoders, both trunks at the fine size as the paper's students read
356 x 356 frames) next to the clip's pseudo-fixation maps, into a cache; the three
students then train concurrently with the train job's executors
(:mod:`factory.pipelines.executors`: on Ray Train, or in-process with ``local``)
and its per-net training (:func:`factory.train.nets.train_net`), on the
task of :mod:`factory.method.students`. A held-out split is scored every epoch against the
pseudo-fixations (CC).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from factory.config import ExecutionConfig, Preset, from_dict
from factory.evaluation.evaluate import prediction_columns
from factory.io import storage
from factory.io.corpus import ClipRecord, Listing, read_corpus
from factory.io.decode import DecodedClip
from factory.io.geometry import to_working
from factory.io.store import read_parquet
from factory.method.bundle import load_bundle
from factory.method.dataset import maps_from_column
from factory.method.encoding import FrameEncoder
from factory.method.students import (
    FUSION_DEFAULT,
    PSEUDO_COLUMN,
    StudentRun,
    map_key,
    save_students,
    student_features,
)
from factory.pipelines.executors import LocalExecutor, RayExecutor
from factory.pipelines.stages import ModelStage
from factory.train.feature_cache import cache_files, encode_blob
from factory.train.nets import FitSpec
from models.config import STUDENT_GRAPH_CHANNELS
from models.registry import STUDENTS, build_student

log = logging.getLogger(__name__)

# ----------------------------------------------------------------- distil


@dataclass
class DistillOptions:
    pseudo: str
    corpus: str
    out: str
    bundle: str | None = None  # teacher bundle (default: the one the pseudo dataset records)
    epochs: int | None = None
    local: bool = False
    address: str | None = None
    fusion: str = FUSION_DEFAULT
    target: str = PSEUDO_COLUMN  # the dataset's column to learn from (an --ablation variant)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)  # "net" = a student


class DistillCacheActor(ModelStage):
    """Decoded clip + its pseudo-fixation maps -> a student cache row: the features once,
    and the maps of each of ``columns`` (uint8; ``map`` = SCAM+, or ``--ablation``
    variants, so one cache serves a student per variant)."""

    stage = "distil cache"
    job = "distil"

    def __init__(
        self,
        bundle_uri: str,
        pseudo: str,
        preset_json: str,
        columns: tuple[str, ...] = (PSEUDO_COLUMN,),
    ) -> None:

        bundle = load_bundle(bundle_uri, verify=False)
        self.preset = from_dict(json.loads(preset_json))
        self.encoder = FrameEncoder(bundle.encoders, self.preset)
        self.switch = bundle.net("switch").to(self.encoder.device).eval()
        self.index = pseudo_index(pseudo)
        self.columns = tuple(columns)

    def process(self, clip: DecodedClip, record: ClipRecord) -> tuple[bytes, dict]:
        feats = student_features(self.encoder, self.switch, clip)
        maps = pseudo_maps(
            self.index[clip.key], clip.key, clip.times, self.columns, clip.frames.shape[1:3]
        )
        for column, m in maps.items():
            feats[map_key(column)] = torch.from_numpy(m)
        return encode_blob(feats), {"has_audio": clip.has_audio, "n_frames": len(clip.times)}


def pseudo_index(pseudo: str) -> dict[str, str]:
    """video_id -> shard file of a pseudo-fixation dataset (via its manifest)."""
    manifest = storage.read_json(storage.join(pseudo, "_manifest.json"))
    return {
        clip: storage.join(pseudo, s["file"]) for s in manifest["shards"] for clip in s["clips"]
    }


def pseudo_maps(
    shard: str,
    key: str,
    times: np.ndarray,
    columns: tuple[str, ...] = (PSEUDO_COLUMN,),
    size: tuple[int, int] | None = None,
) -> dict[str, np.ndarray]:
    """A clip's maps (T, H, W) uint8 of each of ``columns`` from its shard, matched to
    ``times``; given the working ``size``, maps stored at the video's own size
    (``--map-size source``) are put back into the working letterbox."""

    # only this clip's rows: a shard holds many clips, and the cache actor asks per clip
    t = read_parquet(shard, ["video_id", "time_s", *columns], filters=[("video_id", "=", key)])
    ptimes = t["time_s"].to_numpy()
    idx = [int(np.argmin(np.abs(ptimes - x))) for x in times]
    out = {}
    for c in columns:
        maps = maps_from_column(t[c])
        # a dataset labelled with --map-size source: back into the working letterbox
        out[c] = np.stack([to_working(maps[k], size) for k in idx]) if size else maps[idx]
    return out


def check_columns(pseudo: str, columns: tuple[str, ...]) -> None:
    """Stop before any work when the dataset lacks a map column the students need."""

    have = prediction_columns(pseudo)
    missing = [c for c in columns if c not in have]
    if missing:
        raise ValueError(
            f"pseudo-fixation dataset {pseudo!r} has no column {', '.join(missing)} "
            f"(it has {', '.join(have)}); label it with --ablation for the variants"
        )


def build_student_cache(
    executor: Any,
    records: list[ClipRecord],
    cache: str,
    preset: Preset,
    bundle_uri: str,
    pseudo: str,
    columns: tuple[str, ...] = (PSEUDO_COLUMN,),
) -> dict[str, int]:
    """The students' feature cache: each clip of ``records`` decoded and encoded once
    with the teacher's frozen encoders, beside its maps of each of ``columns``."""

    return executor.build_cache(
        "students",
        Listing(records),
        cache,
        preset,
        sorted({t for r in records for t in r.tags}),  # the cache rows' tag indices
        DistillCacheActor,
        {
            "bundle_uri": bundle_uri,
            "pseudo": pseudo,
            "preset_json": preset.to_json(),
            "columns": tuple(columns),
        },
    )


def fit_students(
    executor: Any,
    runs: list[StudentRun],
    preset: Preset,
    vocabulary: list[str],
    run_dir: str,
    cache: str,
) -> tuple[dict[str, torch.nn.Module], dict[str, list[dict[str, Any]]]]:
    """Fit every run with the train job's executors and per-net training (one
    fitted concurrently on Ray Train, or in-process): (net per run name, history)."""

    spec = FitSpec(
        preset=preset,
        vocabulary=vocabulary,
        checkpoints=_abs(storage.join(run_dir, "checkpoints")),
        cache={role: cache_files(storage.join(cache, role)) for role in ("train", "holdout")},
        run_dir=run_dir,
    )
    names = tuple(r.name for r in runs)
    states = executor.fit_nets(names, "students", spec)
    nets, history = {}, {}
    for run in runs:
        net = build_student(run.student, preset.encoders, preset.cgcn)
        net.load_state_dict(states[run.name]["net"])
        nets[run.name] = net.eval()
        history[run.name] = [
            {k: v for k, v in h.items() if k in ("epoch", "loss", "pseudo_cc")}
            for h in states[run.name]["history"]
        ]
    return nets, history


def run_distill(opts: DistillOptions) -> dict[str, Any]:

    t0 = time.time()
    record_uri = storage.join(opts.pseudo, "run.json")
    if not storage.exists(record_uri):
        raise ValueError(
            f"--pseudo {opts.pseudo!r}: not a pseudo-fixation dataset (no run.json); write one with jobs/label.py"
        )
    run_record = storage.read_json(record_uri)
    bundle_uri = opts.bundle or run_record["arguments"]["bundle"]
    bundle = load_bundle(bundle_uri)
    preset = bundle.preset
    if opts.epochs is not None:
        preset = preset.replace(train=dataclasses.replace(preset.train, epochs=opts.epochs))
    labelled = set(pseudo_index(opts.pseudo))
    check_columns(opts.pseudo, (opts.target,))
    listing = read_corpus(opts.corpus)
    records = [r for r in listing.records if r.key in labelled]
    if not records:
        raise ValueError(
            f"no clip of {opts.corpus!r} is in the pseudo-fixation dataset {opts.pseudo!r}; pass the corpus it was labelled from"
        )
    run = storage.join(opts.out, "_run")
    cache = storage.join(run, "features")
    executor: Any = (
        LocalExecutor(opts.execution) if opts.local else RayExecutor(opts.execution, opts.address)
    )
    stats = build_student_cache(
        executor, records, cache, preset, bundle_uri, opts.pseudo, (opts.target,)
    )
    runs = [StudentRun(name, opts.target) for name in STUDENTS]
    nets, history = fit_students(executor, runs, preset, bundle.vocabulary, run, cache)
    students = {r.student: nets[r.name] for r in runs}
    meta = {
        "format": 1,
        "graph_channels": STUDENT_GRAPH_CHANNELS,
        "fusion": opts.fusion,
        "teacher": {"bundle": storage.redact(bundle_uri), "fingerprint": bundle.fingerprint()},
        "pseudo": storage.redact(opts.pseudo),
        "target": opts.target,
        "history": {r.student: history[r.name] for r in runs},
        "clips": stats,
        "seconds": round(time.time() - t0, 1),
    }
    save_students(opts.out, preset, bundle.encoders, students, bundle.net("switch"), meta)
    return meta


def _abs(uri: str) -> str:
    return uri if storage.is_remote(uri) else os.path.abspath(uri)
