"""The predict job (Sec. 5): tag-free maps for any video from a student bundle.

Ray Data over actors as in the label job; per clip STA, STA+short and STA+long maps
fused by Eq. 21 (Eq. 23 and the pixelwise max as options), written in the label job's
schema minus the tag columns, exactly once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import pyarrow as pa

from factory.config import Preset
from factory.evaluation.preview import overlay
from factory.io import storage
from factory.io.corpus import VIDEO_EXTENSIONS, ClipRecord, Listing, read_corpus
from factory.io.decode import DecodedClip, decode_clip
from factory.io.geometry import to_source
from factory.io.store import read_parquet
from factory.method.chunks import predict_in_chunks
from factory.method.dataset import (
    map_array,
    map_type,
    maps_from_column,
    source_columns,
    table_to_bytes,
)
from factory.method.students import (
    StudentPredictor,
    load_students,
)
from factory.pipelines.cluster import cluster_gpus, init_ray
from factory.pipelines.sink import (
    close_dataset,
    consume,
    export_pngs,
    open_dataset,
    write_batch,
    write_run_record,
)
from factory.pipelines.stages import (
    DECODE_CPUS,
    WRITE_CPUS,
    ModelStage,
    decoded_through_actors,
    set_torch_threads,
    size_model_actors,
)
from models.registry import STUDENTS

log = logging.getLogger(__name__)


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
    actor_cpus: float | None = None  # None: as the label job's (stages.size_model_actors)
    actor_threads: int | None = None  # None: as the label job's
    device: str = "auto"
    dtype: str = "auto"
    all_maps: bool = False  # also write each student's own map
    map_size: str = "working"  # "source": maps at each video's own size (as the label job's)
    address: str | None = None


def video_listing(src: str) -> Any:
    """A corpus, or a plain folder / glob of video files (no tags needed)."""

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
    map_size: str = "working",
) -> pa.Table:
    """The rows of one predicted clip; ``map_size`` as the label job's (the maps at the
    working resolution, or at ``source_size``)."""
    t, h, w = maps["map"].shape
    at_source = source_size if map_size == "source" else None
    cols: dict[str, pa.Array] = {
        "video_id": pa.array([key] * t, pa.string()),
        "frame_index": pa.array(np.arange(t, dtype=np.int32)),
        "time_s": pa.array(np.asarray(times, np.float64)),
        "height": pa.array(np.full(t, h, np.int32)),
        "width": pa.array(np.full(t, w, np.int32)),
        **source_columns(source_size, audio_stream, t),
        "map": map_array(maps["map"], at_source),
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
        ("map", map_type(h, w, map_size)),
        ("source", pa.string()),
    ]
    if all_maps:
        for name in STUDENTS:
            col = "map_" + name.lower().replace("+", "_plus_")
            cols[col] = map_array(maps[name], at_source)
            fields.append((col, map_type(h, w, map_size)))
    cols["shard_id"] = pa.array([""] * t, pa.string())
    fields.append(("shard_id", pa.string()))
    return pa.table(cols, schema=pa.schema(fields))


class PredictActor(ModelStage):
    """Ray Data actor: loads the student bundle once, predicts tag-free maps per clip."""

    stage = "predict"
    job = "predict"

    def __init__(
        self,
        students: str,
        device: str,
        dtype: str,
        fusion: str | None,
        all_maps: bool,
        map_size: str = "working",
        threads: int | None = None,
    ) -> None:
        set_torch_threads(threads)
        self.predictor = StudentPredictor(students, device, dtype, fusion)
        self.all_maps = all_maps
        self.map_size = map_size

    def process(self, clip: DecodedClip | None, record: ClipRecord) -> tuple[bytes, dict]:
        if clip is not None:
            maps, times = self.predictor.predict(clip), clip.times
        else:  # longer than max_frames: chunk by chunk (factory.method.chunks)
            maps, clip, times = predict_in_chunks(self.predictor, record)
        return table_to_bytes(
            predictions_table(
                record.key,
                times,
                maps,
                storage.redact(record.uri),
                self.all_maps,
                tuple(clip.source_size),
                clip.audio_stream,
                self.map_size,
            )
        ), {}


def run_predict(opts: PredictOptions) -> dict[str, Any]:

    t0 = time.time()
    storage.check_output_root(opts.out, "--out")
    meta, preset, *_ = load_students(opts.students)  # inputs checked before Ray starts
    listing = video_listing(opts.videos)
    if not listing.num_inputs:
        raise ValueError(f"--videos {opts.videos!r}: no videos; see --help")
    init_ray(opts.address)
    store, todo = open_dataset(opts.out, listing)
    frames = 0
    if todo:
        gpus = 1.0 if cluster_gpus() >= 1 else 0.0
        sizing = size_model_actors(
            opts.actors,
            opts.actor_cpus,
            opts.actor_threads,
            gpus,
            side_cpus=DECODE_CPUS + WRITE_CPUS,
        )
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
                "map_size": opts.map_size,
                "threads": sizing.threads,
            },
            sizing.actors,
            gpus,
            actor_cpus=sizing.cpus,
            decode_cpus=DECODE_CPUS,
            chunked=True,
        )
        ds = ds.map_batches(
            write_batch,
            batch_size=8,
            num_cpus=WRITE_CPUS,
            fn_kwargs={"root": opts.out, "job": "predict"},
        )
        stream = consume(ds, len(todo), t0, "predict")
        frames = stream.frames
    closed = close_dataset(opts.out, listing, store, "predicted")
    summary = {
        "inputs": closed.inputs,
        "predicted": len(closed.committed),
        "rejected": len(closed.rejected),
        "frames_this_run": frames,
        "seconds": round(time.time() - t0, 1),
        "fusion": opts.fusion or meta.get("fusion"),
    }
    write_run_record(
        opts.out,
        {
            "job": "predict",
            "students": opts.students,
            "arguments": dataclasses.asdict(opts),
            "summary": summary,
        },
    )
    if opts.export_png:
        export_pngs(opts.out, closed.manifest, opts.export_png)
    if opts.overlay_video:
        write_overlays(opts.out, closed.manifest, listing, preset, opts.overlay_video)
    return summary


def write_overlays(root: str, manifest: dict, listing: Any, preset: Preset, folder: str) -> None:
    """One overlay video per clip at the video's own frame size (rounded to even sides,
    as H.264 needs): its frames decoded at that size, the predicted map's video
    rectangle (:func:`factory.io.geometry.to_source`) blended in."""

    os.makedirs(folder, exist_ok=True)
    records = {r.key: r for r in listing.records}
    for shard in manifest["shards"]:
        t = read_parquet(
            storage.join(root, shard["file"]), ["video_id", "map", "source_height", "source_width"]
        )
        vids = np.asarray(t["video_id"].to_pylist())
        maps = maps_from_column(t["map"])  # working size, or each video's own
        heights, widths = t["source_height"].to_numpy(), t["source_width"].to_numpy()
        for key in shard["clips"]:
            rows = np.flatnonzero(vids == key)
            size = (int(heights[rows[0]]) // 2 * 2, int(widths[rows[0]]) // 2 * 2)
            frames_cfg = dataclasses.replace(preset.frames, height=size[0], width=size[1])
            step = frames_cfg.max_frames  # a long clip: a chunk of frames at a time
            with av.open(os.path.join(folder, f"{key}.mp4"), "w") as c:
                s = c.add_stream("libx264", rate=round(preset.frames.fps))
                s.width, s.height, s.pix_fmt = size[1], size[0], "yuv420p"
                for start in range(0, len(rows), step):
                    part = (start, min(len(rows), start + step))
                    clip = decode_clip(
                        records[key], frames_cfg, preset.spectrogram, need_audio=False, frames=part
                    )
                    for f, k in zip(clip.frames, rows[part[0] : part[1]], strict=False):
                        heat = to_source(maps[k], size).astype(np.float32) / 255.0
                        for pkt in s.encode(av.VideoFrame.from_ndarray(overlay(f, heat), "rgb24")):
                            c.mux(pkt)
                for pkt in s.encode():
                    c.mux(pkt)
