"""The students (Sec. 5): distil STA, STA+short and STA+long from a pseudo-fixation
dataset, and predict tag-free maps for any video with the final fusion (Eq. 21).

Distil: Ray Data decodes the dataset's clips from the corpus and encodes each frame
once (the bundle's frozen encoders, both trunks at the fine size as the paper's
students read 356 x 356 frames) next to the clip's pseudo-fixation maps, into a cache;
the three students then train concurrently with the train job's executors
(:mod:`factory.executors`: one TorchTrainer each under a Tune grid, or in-process with
``local``) and its per-net training (:func:`factory.net_training.train_net`).
Losses: Eq. 17 (STA), Eq. 20 (STA+, every node against its own fragment's map). A
held-out split is scored every epoch against the pseudo-fixations (CC).

Predict: Ray Data over actors as in the label job; per clip STA, STA+short and
STA+long maps fused by Eq. 21 (Eq. 23 and the pixelwise max as options), written in the
label job's schema minus the tag columns, exactly once.

The student bundle (``STUDENTS``): ``students.json`` (preset, fusion, vocabulary width,
the teacher bundle's fingerprint), ``encoders.pt``, ``nets/STA.pt``, ``nets/STA+short.pt``,
``nets/STA+long.pt``, ``nets/switch.pt`` (the audio switch, tag-free, reused from the teacher).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from factory import storage
from factory.config import Preset, from_dict
from factory.corpus import ClipRecord, read_corpus
from factory.decode import DecodedClip
from factory.inputs import WindowSettings, graph_nodes
from factory.losses import bce_kl, node_sum_loss
from factory.windows import clamp
from models.config import STUDENT_GRAPH_CHANNELS
from models.registry import STUDENTS, InputSpec, build_student

log = logging.getLogger(__name__)

STUDENT_SPEC = InputSpec("plus", None, 3, True, True, ("short", "long"))
TERM = {"STA+short": "short", "STA+long": "long"}
FUSION_DEFAULT = "eq21"
PSEUDO_COLUMN = "map"  # the pseudo-fixation dataset's SCAM+ column


@dataclass(frozen=True)
class StudentRun:
    """One student to fit: which student, the pseudo-ground-truth column it learns from
    (``map`` = SCAM+, or an ``--ablation`` variant such as ``map_scam_fine``) and, for
    repeated runs, its seed. Its name is what the executors and checkpoints know it by:
    ``STA`` for the plain distil job, ``STA@map_scam_fine@seed1`` in the ablation."""

    student: str
    target: str = PSEUDO_COLUMN
    seed: int | None = None

    @property
    def name(self) -> str:
        if self.target == PSEUDO_COLUMN and self.seed is None:
            return self.student
        return "@".join(
            [self.student, self.target] + ([] if self.seed is None else [f"seed{self.seed}"])
        )

    @classmethod
    def parse(cls, name: str) -> StudentRun | None:
        """The run a name stands for, or None when it names no student."""
        parts = name.split("@")
        if parts[0] not in STUDENTS or len(parts) > 3:
            return None
        target = parts[1] if len(parts) > 1 else PSEUDO_COLUMN
        seed = int(parts[2].removeprefix("seed")) if len(parts) > 2 else None
        return cls(parts[0], target, seed)


def map_key(column: str) -> str:
    """The feature-cache key of a pseudo-fixation column's maps."""
    return "maps" if column == PSEUDO_COLUMN else f"maps@{column}"


# ----------------------------------------------------------------- features


def student_features(
    encoder: Any, switch: torch.nn.Module, clip: DecodedClip
) -> dict[str, torch.Tensor]:
    """Per-frame student inputs: F3, F4, F5 and the dilated VGG16 at the fine size, audio
    vectors, the audio switch's decisions."""
    from factory.audio import frame_windows
    from factory.encoding import resize_square

    p = encoder.preset
    with torch.inference_mode():
        frames = encoder.frames(clip.frames)
        # Both trunks at the fine size, in one pass: STA+ gets the dilated VGG16's maps at
        # fine resolution too (22x22 instead of 16x16 in the tiny preset; fused CC on the
        # synthetic held-out clips 0.727 -> 0.761), and the image trunk runs once, not twice.
        img = encoder.images(resize_square(frames, p.frames.fine_size), plus=True, kind="fine")
        plus = img["plus"]
        t = frames.shape[0]
        if clip.has_audio:
            audio = encoder.audio(
                frame_windows(clip.audio, clip.audio_t0, clip.times, p.spectrogram)
            )
            gate = torch.cat(
                [
                    (switch({"image": f5[:, None], "audio": a})[:, 0] > 0).float()
                    for f5, a in zip(
                        img["F5"].split(encoder.chunk), audio.split(encoder.chunk), strict=True
                    )
                ]
            )
        else:
            audio = torch.zeros(t, encoder.encoders.audio.out_dim, device=frames.device)
            gate = torch.zeros(t, device=frames.device)
    return {
        "F3": img["F3"],
        "F4": img["F4"],
        "F5": img["F5"],
        "plus": plus,
        "audio": audio,
        "gate": gate,
    }


def student_inputs(
    name: str,
    feats: dict[str, torch.Tensor],
    targets: np.ndarray,
    key: str,
    settings: WindowSettings,
    epoch: int = 0,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Inputs of a student for ``targets`` and the frame index whose map each output
    predicts: (B,) for STA, (B, 1 + n) node centres for STA+."""
    t_count = int(feats["gate"].shape[0])
    dev = feats["gate"].device
    if name == "STA":
        tri = torch.as_tensor(
            np.clip(targets[:, None] + np.array([-1, 0, 1]), 0, t_count - 1), device=dev
        )
        t_idx = torch.as_tensor(targets, device=dev)
        return {
            "image": feats["F5"][tri],
            "F4": feats["F4"][t_idx],
            "F3": feats["F3"][t_idx],
            "audio": feats["audio"][t_idx],
            "gate": feats["gate"][t_idx],
        }, targets
    centres = np.stack(
        [
            graph_nodes(STUDENT_SPEC, key, t_count, int(t), TERM[name], settings, None, epoch)[0]
            for t in targets
        ]
    )
    frames = torch.as_tensor(clamp(centres[..., None] + np.array([-1, 0, 1]), t_count), device=dev)
    c = torch.as_tensor(centres, device=dev)
    return {
        "image": feats["plus"][frames],
        "audio": feats["audio"][c],
        "gate": feats["gate"][c],
    }, centres


@dataclass
class StudentTask:
    """A task for :func:`factory.training.fit` (clips carry ``maps`` (T, H, W) in [0, 1])."""

    name: str
    preset: Preset
    target: str = PSEUDO_COLUMN  # the pseudo-fixation column the student learns from
    score_name = "pseudo_cc"  # what :func:`factory.training.evaluate` reports

    @property
    def out_size(self) -> tuple[int, int]:
        """Maps are predicted at the decoded frame size."""
        return (self.preset.frames.height, self.preset.frames.width)

    @property
    def settings(self) -> WindowSettings:
        return WindowSettings(
            self.preset.cgcn.nodes, self.preset.windows.short_radius, self.preset.windows.seed
        )

    def examples(
        self, clip: Any, epoch: int, targets: np.ndarray
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        inputs, idx = student_inputs(self.name, clip.feats, targets, clip.key, self.settings, epoch)
        maps = clip.feats[map_key(self.target)][torch.as_tensor(idx)]
        # the cache keeps maps as uint8 (0..255), as the dataset does
        return [(inputs, maps.float() / 255.0 if maps.dtype == torch.uint8 else maps)]

    def loss(
        self, net: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor:
        out = net(inputs, size=self.out_size)
        labels = labels.to(out.device)
        if self.name == "STA":
            return bce_kl(out, labels)  # Eq. 17
        return node_sum_loss(list(out.unbind(1)), list(labels.unbind(1)))  # Eq. 20

    @torch.no_grad()
    def correct(
        self, net: torch.nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[float, int]:
        """The held-out score of a student: (sum of CC with the pseudo-fixations, frames),
        so :func:`factory.training.evaluate` reports the mean CC."""
        from factory.metrics import cc

        out = torch.sigmoid(net(inputs, size=self.out_size)).float().cpu()
        pred = out if self.name == "STA" else out[:, 0]
        target = labels if self.name == "STA" else labels[:, 0]
        return float(
            sum(cc(p.numpy(), t.numpy()) for p, t in zip(pred, target.cpu(), strict=True))
        ), len(pred)


def fuse(maps: dict[str, torch.Tensor], fusion: str) -> torch.Tensor:
    from factory.equations import FUSIONS

    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}: {', '.join(FUSIONS)}")
    return FUSIONS[fusion](maps["STA"], maps["STA+short"], maps["STA+long"])


class StudentPredictor:
    """Plain PyTorch: the three students and the fusion on a decoded clip."""

    def __init__(
        self, uri: str, device: str = "auto", dtype: str = "auto", fusion: str | None = None
    ) -> None:
        from factory.encoding import FrameEncoder

        meta, preset, encoders, students, switch = load_students(uri)
        self.meta = meta
        self.preset = preset
        self.fusion = fusion or meta.get("fusion", FUSION_DEFAULT)
        self.encoder = FrameEncoder(encoders, preset, device, dtype)
        self.students = {k: v.to(self.encoder.device).eval() for k, v in students.items()}
        self.switch = switch.to(self.encoder.device).eval()
        self.settings = WindowSettings(
            preset.cgcn.nodes, preset.windows.short_radius, preset.windows.seed
        )

    @torch.inference_mode()
    def predict(self, clip: DecodedClip) -> dict[str, np.ndarray]:
        feats = student_features(self.encoder, self.switch, clip)
        maps = {
            name: student_map(name, net, feats, clip.key, self.settings, self.encoder, self.preset)
            for name, net in self.students.items()
        }
        from factory.equations import minmax_normalize

        fused = fuse({k: minmax_normalize(v) for k, v in maps.items()}, self.fusion)
        return {"map": fused.cpu().numpy(), **{k: v.cpu().numpy() for k, v in maps.items()}}


@torch.inference_mode()
def student_map(
    name: str,
    net: torch.nn.Module,
    feats: dict[str, torch.Tensor],
    key: str,
    settings: WindowSettings,
    encoder: Any,
    preset: Preset,
) -> torch.Tensor:
    """One student's maps (T, H, W) in [0, 1] for every frame of a clip's features (for
    STA+, the target node's read-out)."""
    t = int(feats["gate"].shape[0])
    size = (preset.frames.height, preset.frames.width)
    targets = np.arange(t)
    outs = []
    for start in range(0, t, encoder.chunk):
        part = targets[start : start + encoder.chunk]
        inputs, _ = student_inputs(name, feats, part, key, settings)
        with encoder.autocast():
            o = torch.sigmoid(net(inputs, size=size).float())
        outs.append(o if name == "STA" else o[:, 0])
    return torch.cat(outs)


# ----------------------------------------------------------------- bundle


def save_students(
    uri: str,
    preset: Preset,
    encoders: torch.nn.Module,
    students: dict[str, torch.nn.Module],
    switch: torch.nn.Module,
    meta: dict[str, Any],
) -> None:
    hashes = {
        "encoders.pt": storage.save_torch(encoders.state_dict(), storage.join(uri, "encoders.pt"))
    }
    for name, net in {**students, "switch": switch}.items():
        hashes[f"nets/{name}.pt"] = storage.save_torch(
            net.state_dict(), storage.join(uri, "nets", f"{name}.pt")
        )
    storage.write_json(
        storage.join(uri, "students.json"),
        {
            **meta,
            "preset": preset.to_dict(),
            "hashes": hashes,
            "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    )


def load_students(
    uri: str,
) -> tuple[dict[str, Any], Preset, torch.nn.Module, dict[str, torch.nn.Module], torch.nn.Module]:
    from factory.bundle import build_nets
    from factory.weights import build_encoders

    meta_uri = storage.join(uri, "students.json")
    if not storage.exists(meta_uri):
        raise ValueError(
            f"{uri!r} is not a student bundle (students.json missing); make one with jobs/distill.py"
        )
    meta = storage.read_json(meta_uri)
    missing = [f for f in meta["hashes"] if not storage.exists(storage.join(uri, f))]
    if missing:
        raise ValueError(
            f"student bundle {uri!r} is incomplete: {', '.join(missing)} missing; rerun jobs/distill.py"
        )
    preset = from_dict(meta["preset"])
    encoders = build_encoders(preset.encoders)
    encoders.load_state_dict(storage.load_torch(storage.join(uri, "encoders.pt")))
    students = {}
    for name in STUDENTS:
        net = build_student(name, preset.encoders, preset.cgcn, meta["graph_channels"])
        net.load_state_dict(storage.load_torch(storage.join(uri, "nets", f"{name}.pt")))
        students[name] = net
    switch = build_nets(preset, 1, ("switch",))["switch"]
    switch.load_state_dict(storage.load_torch(storage.join(uri, "nets", "switch.pt")))
    return meta, preset, encoders.eval(), students, switch


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
    # execution (the attributes factory.executors reads; "net" = one student)
    workers_per_net: int = 1
    gpus_per_net: float = 0.0
    cpus_per_worker: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    encode_actors: int | None = None


class DistillCacheActor:
    """Decoded clip + its pseudo-fixation maps -> a student cache row: the features once,
    and the maps of each of ``columns`` (uint8; ``map`` = SCAM+, or ``--ablation``
    variants, so one cache serves a student per variant)."""

    def __init__(
        self,
        bundle_uri: str,
        pseudo: str,
        preset_json: str,
        columns: tuple[str, ...] = (PSEUDO_COLUMN,),
    ) -> None:
        from factory.bundle import load_bundle
        from factory.encoding import FrameEncoder

        bundle = load_bundle(bundle_uri, verify=False)
        self.preset = from_dict(json.loads(preset_json))
        self.encoder = FrameEncoder(bundle.encoders, self.preset)
        self.switch = bundle.net("switch").to(self.encoder.device).eval()
        self.index = pseudo_index(pseudo)
        self.columns = tuple(columns)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from factory.feature_cache import encode_blob
        from factory.pipeline import OK, deserialize_clip, from_batch, to_batch

        out = []
        for row in from_batch(batch):
            if row["status"] == OK:
                clip = deserialize_clip(row["key"], row["payload"])
                feats = student_features(self.encoder, self.switch, clip)
                maps = pseudo_maps(self.index[row["key"]], row["key"], clip.times, self.columns)
                for column, m in maps.items():
                    feats[map_key(column)] = torch.from_numpy(m)
                row = {
                    **row,
                    "payload": encode_blob(feats),
                    "info": json.dumps({"has_audio": clip.has_audio, "n_frames": len(clip.times)}),
                }
            out.append(row)
        return to_batch(out)


def pseudo_index(pseudo: str) -> dict[str, str]:
    """video_id -> shard file of a pseudo-fixation dataset (via its manifest)."""
    manifest = storage.read_json(storage.join(pseudo, "_manifest.json"))
    return {
        clip: storage.join(pseudo, s["file"]) for s in manifest["shards"] for clip in s["clips"]
    }


def pseudo_maps(
    shard: str, key: str, times: np.ndarray, columns: tuple[str, ...] = (PSEUDO_COLUMN,)
) -> dict[str, np.ndarray]:
    """A clip's maps (T, H, W) uint8 of each of ``columns`` from its shard, matched to
    ``times``."""
    from factory.dataset import maps_from_column
    from factory.store import read_parquet

    # only this clip's rows: a shard holds many clips, and the cache actor asks per clip
    t = read_parquet(shard, ["video_id", "time_s", *columns], filters=[("video_id", "=", key)])
    ptimes = t["time_s"].to_numpy()
    idx = [int(np.argmin(np.abs(ptimes - x))) for x in times]
    return {c: maps_from_column(t[c])[idx] for c in columns}


def check_columns(pseudo: str, columns: tuple[str, ...]) -> None:
    """Stop before any work when the dataset lacks a map column the students need."""
    from factory.evaluate import prediction_columns

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
    from factory.corpus import Listing

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
    TorchTrainer each under a Tune grid, or in-process): (net per run name, history)."""
    from factory.feature_cache import cache_files

    common = {
        "preset": preset.to_dict(),
        "vocabulary": vocabulary,
        "checkpoints": _abs(storage.join(run_dir, "checkpoints")),
        "tune_dir": _abs(storage.join(run_dir, "tune")),
        "cache": {role: cache_files(storage.join(cache, role)) for role in ("train", "holdout")},
    }
    names = tuple(r.name for r in runs)
    states = executor.fit_nets(names, "students", common)
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
    from factory.bundle import load_bundle
    from factory.executors import LocalExecutor, RayExecutor

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
    executor: Any = LocalExecutor(opts) if opts.local else RayExecutor(opts)
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


# ----------------------------------------------------------------- predict


@dataclass
class PredictOptions:
    videos: str  # a corpus (tags ignored) or a plain folder / glob of videos
    students: str
    out: str
    fusion: str | None = None
    export_png: str | None = None
    overlay_video: str | None = None  # folder for <video>.mp4 overlays
    actors: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    all_maps: bool = False  # also write each student's own map
    address: str | None = None


def video_listing(src: str) -> Any:
    """A corpus, or a plain folder / glob of video files (no tags needed)."""
    from factory.corpus import VIDEO_EXTENSIONS, Listing

    try:
        return read_corpus(src)
    except ValueError:
        pass
    fs, path = storage.filesystem(src)
    paths = sorted(
        fs.glob(path)
        if any(ch in path for ch in "*?[")
        else [p for p in fs.find(path) if p.lower().endswith(VIDEO_EXTENSIONS)]
    )
    prefix = src.split("://", 1)[0] + "://" if storage.is_remote(src) else ""
    if not paths:
        raise ValueError(
            f"{src!r}: no corpus and no video files ({', '.join(VIDEO_EXTENSIONS)}) found"
        )
    return Listing(
        [
            ClipRecord(
                os.path.splitext(os.path.basename(p))[0],
                prefix + p if prefix and not p.startswith(prefix) else p,
                ("",),
            )
            for p in paths
        ],
        [],
        src,
    )


def predictions_table(
    key: str,
    times: np.ndarray,
    maps: dict[str, np.ndarray],
    source: str,
    all_maps: bool,
    source_size: tuple[int, int] = (0, 0),
    audio_stream: int | None = None,
) -> pa.Table:
    from factory.dataset import map_array, map_type, source_columns

    t, h, w = maps["map"].shape
    cols: dict[str, pa.Array] = {
        "video_id": pa.array([key] * t, pa.string()),
        "frame_index": pa.array(np.arange(t, dtype=np.int32)),
        "time_s": pa.array(np.asarray(times, np.float64)),
        "height": pa.array(np.full(t, h, np.int32)),
        "width": pa.array(np.full(t, w, np.int32)),
        **source_columns(source_size, audio_stream, t),
        "map": map_array(maps["map"]),
        "source": pa.array([source] * t, pa.string()),
    }
    fields = [
        ("video_id", pa.string()),
        ("frame_index", pa.int32()),
        ("time_s", pa.float64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("source_height", pa.int32()),
        ("source_width", pa.int32()),
        ("audio_stream", pa.int32()),
        ("map", map_type(h, w)),
        ("source", pa.string()),
    ]
    if all_maps:
        for name in STUDENTS:
            col = "map_" + name.lower().replace("+", "_plus_")
            cols[col] = map_array(maps[name])
            fields.append((col, map_type(h, w)))
    cols["shard_id"] = pa.array([""] * t, pa.string())
    fields.append(("shard_id", pa.string()))
    return pa.table(cols, schema=pa.schema(fields))


class PredictActor:
    def __init__(
        self, students: str, device: str, dtype: str, fusion: str | None, all_maps: bool
    ) -> None:
        self.predictor = StudentPredictor(students, device, dtype, fusion)
        self.all_maps = all_maps

    def process(self, clip: DecodedClip, record: ClipRecord) -> tuple[bytes, dict]:
        from factory.dataset import table_to_bytes

        maps = self.predictor.predict(clip)
        return table_to_bytes(
            predictions_table(
                clip.key,
                clip.times,
                maps,
                storage.redact(record.uri),
                self.all_maps,
                tuple(clip.source_size),
                clip.audio_stream,
            )
        ), {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from factory.pipeline import from_batch, model_row, to_batch

        return to_batch([model_row(r, self.process) for r in from_batch(batch)])


def run_predict(opts: PredictOptions) -> dict[str, Any]:
    from factory.label_job import consume, write_label_batch
    from factory.pipeline import decoded_through_actors, default_actors
    from factory.raycluster import cluster_gpus, init_ray
    from factory.store import ShardStore

    t0 = time.time()
    storage.check_output_root(opts.out, "--out")
    meta, preset, *_ = load_students(opts.students)  # inputs checked before Ray starts
    listing = video_listing(opts.videos)
    if not listing.num_inputs:
        raise ValueError(f"--videos {opts.videos!r}: no videos; see --help")
    init_ray(opts.address)
    store = ShardStore(opts.out)
    storage.makedirs(opts.out)
    committed = store.scan()
    if listing.rejects:
        store.write_rejects([r for r in listing.rejects if r.input not in committed.keys])
    todo = [r for r in listing.records if r.key not in committed.keys]
    frames = 0
    if todo:
        gpus = 1.0 if cluster_gpus() >= 1 else 0.0
        ds = decoded_through_actors(
            todo,
            preset.to_json(),
            PredictActor,
            {
                "students": opts.students,
                "device": opts.device,
                "dtype": opts.dtype,
                "fusion": opts.fusion,
                "all_maps": opts.all_maps,
            },
            opts.actors or default_actors(gpus),
            gpus,
        )
        ds = ds.map_batches(
            write_label_batch, batch_size=8, num_cpus=0.25, fn_kwargs={"root": opts.out}
        )
        frames, _, _ = consume(ds, len(todo))
    committed = store.scan()
    keys = {r.key for r in listing.records} | {j.input for j in listing.rejects}
    predicted = {k for k in committed.shard_clips if k in keys}
    rejected = {k for k in committed.reject_clips if k in keys}
    if keys != predicted | rejected:
        raise RuntimeError(
            f"accounting failed: {len(keys)} inputs != {len(predicted)} predicted + {len(rejected)} rejects; rerun to finish"
        )
    shards = sorted({committed.shard_clips[k] for k in predicted})
    manifest = {
        "shards": [
            {
                "file": storage.join("shards", f.rsplit("/", 1)[-1]),
                "rows": committed.shard_rows.get(f, 0),
                "clips": sorted(c for c, g in committed.shard_clips.items() if g == f),
            }
            for f in shards
        ],
        "clips": len(predicted),
        "rejects": len(rejected),
    }
    storage.write_json(storage.join(opts.out, "_manifest.json"), manifest)
    from factory.store import write_parquet_atomic

    write_parquet_atomic(storage.join(opts.out, "rejects.parquet"), store.all_rejects())
    summary = {
        "inputs": len(keys),
        "predicted": len(predicted),
        "rejected": len(rejected),
        "frames_this_run": frames,
        "seconds": round(time.time() - t0, 1),
        "fusion": opts.fusion or meta.get("fusion"),
    }
    storage.write_json(
        storage.join(opts.out, "run.json"),
        {
            "job": "predict",
            "students": storage.redact(opts.students),
            "arguments": json.loads(storage.redact(json.dumps(dataclasses.asdict(opts)))),
            "summary": summary,
        },
    )
    if opts.export_png:
        from factory.label_job import export_pngs

        export_pngs(opts.out, manifest, opts.export_png)
    if opts.overlay_video:
        write_overlays(opts.out, manifest, listing, preset, opts.overlay_video)
    return summary


def write_overlays(root: str, manifest: dict, listing: Any, preset: Preset, folder: str) -> None:
    """One overlay video per clip (frames with the predicted map blended in)."""
    import av

    from factory.dataset import maps_from_column
    from factory.decode import decode_clip
    from factory.preview import overlay
    from factory.store import read_parquet

    os.makedirs(folder, exist_ok=True)
    records = {r.key: r for r in listing.records}
    for shard in manifest["shards"]:
        t = read_parquet(storage.join(root, shard["file"]), ["video_id", "map"])
        vids = np.asarray(t["video_id"].to_pylist())
        maps = maps_from_column(t["map"]).astype(np.float32) / 255.0
        for key in shard["clips"]:
            clip = decode_clip(records[key], preset.frames, preset.spectrogram, need_audio=False)
            m = maps[vids == key]
            with av.open(os.path.join(folder, f"{key}.mp4"), "w") as c:
                s = c.add_stream("libx264", rate=round(preset.frames.fps))
                s.width, s.height, s.pix_fmt = clip.frames.shape[2], clip.frames.shape[1], "yuv420p"
                for f, sal in zip(clip.frames, m, strict=False):
                    for pkt in s.encode(
                        av.VideoFrame.from_ndarray(
                            overlay(
                                f,
                                F.interpolate(torch.from_numpy(sal)[None, None], size=f.shape[:2])[
                                    0, 0
                                ].numpy(),
                            ),
                            format="rgb24",
                        )
                    ):
                        c.mux(pkt)
                for pkt in s.encode():
                    c.mux(pkt)
