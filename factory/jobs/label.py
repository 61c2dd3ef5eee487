"""The label job: tagged video in, a sharded pseudo-fixation dataset out (Ray Data).

Stages: clip listing (driver) -> decode (CPU tasks) -> SCAM+ labelling (an actor pool:
one actor per GPU, or CPU actors) -> exactly-once writer (tasks). Memory stays bounded
whatever the corpus size: Ray Data streams clips with backpressure, a clip is the unit
from decode to write, and the driver holds only the listing and one summary row per
clip. A run killed at any moment and started again with the same arguments labels
only what is not committed (see :mod:`factory.io.store`); at the end it checks
``inputs = labelled clips + rejects`` and fails loudly on a mismatch.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import ray

from factory.config import Preset, from_dict
from factory.evaluation.preview import write_preview
from factory.io import storage
from factory.io.corpus import ClipRecord, Listing, read_corpus
from factory.io.decode import DecodedClip
from factory.io.rejects import ClipError
from factory.io.store import ShardStore, read_parquet
from factory.method.bundle import Bundle, code_version, load_bundle
from factory.method.chunks import label_in_chunks
from factory.method.dataset import labels_table, table_to_bytes
from factory.method.labeler import ABLATION_MAPS, Labeler
from factory.method.pool import PoolEntries, PoolSource, build_sketch
from factory.pipelines.cluster import cluster_cpus, cluster_gpus, init_ray
from factory.pipelines.sink import (
    StreamStats,
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
from factory.train.prepare import record_pool_entries

log = logging.getLogger(__name__)

# Shards sized for a data lake: at most this many MB of maps per file. 256 MB of Arrow
# bytes: at the paper preset (360x640 uint8 maps, 8 fps) 14 clips of 10 s; the Parquet
# file is smaller by its compression (bench/RESULTS.md, "Scale").
SHARD_MB = 256.0
MAX_CLIPS_PER_SHARD = 1024  # a kill loses at most one unwritten shard of work
TYPICAL_CLIP_S = 10.0  # AVE's clips; only sizes the writer's batches


def shard_clips(preset: Preset, shard_mb: float, ablation: bool) -> int:
    """Clips per writer batch when ``--clips-per-shard`` is not given: as many clips of
    ``TYPICAL_CLIP_S`` as fit in ``shard_mb`` at the preset's map size (the writer still
    cuts a batch at ``shard_mb`` of actual bytes), between 1 and ``MAX_CLIPS_PER_SHARD``."""
    f = preset.frames
    maps = 1 + (len(ABLATION_MAPS) if ablation else 0)  # --ablation: a map per variant too
    clip_bytes = f.height * f.width * maps * f.fps * TYPICAL_CLIP_S
    return int(min(MAX_CLIPS_PER_SHARD, max(1, shard_mb * 2**20 // clip_bytes)))


@dataclass
class LabelOptions:
    corpus: str
    bundle: str
    out: str
    split: str | None = None
    ablation: bool = False
    postprocess: str = "none"  # "authors": 5-frame smoothing, < 3 x mean -> 0 (every map)
    confidence: str | None = None  # Eq. 2/3/8's C_X, "sigmoid" / "softmax"; None: the bundle's
    no_source: str | None = None  # frames no source selects, "flat" / "average"; None: the bundle's
    switch_gate: str | None = None  # the audio switch, "net" / "tagger"; None: the bundle's
    export_png: str | None = None
    actors: int | None = None  # label actors; default: one per GPU, else CPUs - 1
    batch_size: int = 4  # clips per labelling call (their frames are encoded together)
    # a shard file holds at most shard_mb of maps (Arrow bytes, before Parquet's
    # compression) and at most clips_per_shard clips (None: shard_clips())
    shard_mb: float = SHARD_MB
    clips_per_shard: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    reject_silent: bool = False
    tag_field: str = "tag"
    address: str | None = None
    decode_cpus: float = DECODE_CPUS
    # CPUs Ray reserves per label actor; None: 1 on GPU, on CPU the CPUs decode and write
    # leave, shared by the actors (stages.size_model_actors)
    actor_cpus: float | None = None
    # torch threads per label actor; None: on CPU the cores shared by the actors, or the
    # given --actor-cpus rounded up (stages.size_model_actors)
    actor_threads: int | None = None
    gpus_per_actor: float | None = None  # default: 1 when the cluster has GPUs
    preview: bool = True
    # where the Parquet maps live: "working" (the working resolution, the video
    # letterboxed into it) or "source" (each video's own frame size); see factory.method.dataset
    map_size: str = "working"


@dataclass
class LabelSummary:
    out: str
    inputs: int
    labelled: int
    rejected: int
    frames: int
    new_clips: int
    seconds: float
    frames_per_s: float
    reject_reasons: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    # this run's stream: start-up, steady state, per-stage busy seconds (StreamStats)
    stream: dict[str, Any] = field(default_factory=dict)
    # seconds of the job's phases: listing, ray_init, resume_scan, pool, stream, close
    phases: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- the actor


class LabelActor(ModelStage):
    """Ray Data actor: loads the bundle once, labels decoded clips (a batch's frames go
    through the encoders together, :meth:`prepare`)."""

    stage = "label"

    def __init__(
        self,
        bundle_uri: str,
        pool: dict[str, Any],
        device: str,
        dtype: str,
        ablation: bool,
        reject_silent: bool,
        postprocess: str = "none",
        confidence: str | None = None,
        no_source: str | None = None,
        map_size: str = "working",
        switch_gate: str | None = None,
        threads: int | None = None,
    ) -> None:
        set_torch_threads(threads)
        bundle = load_bundle(bundle_uri, verify=False)
        self.labeler = Labeler(
            bundle,
            PoolSource(pool),
            device=device,
            dtype=dtype,
            ablation=ablation,
            postprocess=postprocess,
            confidence=confidence,
            no_source=no_source,
            switch_gate=switch_gate,
        )
        self.ablation = ablation
        self.reject_silent = reject_silent
        self.map_size = map_size

    def process(self, clip: DecodedClip | None, record: ClipRecord) -> tuple[bytes, dict]:
        tags = list(record.tags)
        if clip is not None:
            self.check_audio(clip.has_audio)
            labels = self.labeler.label(clip, tags)
        else:  # longer than max_frames: chunk by chunk (factory.method.chunks)
            labels = label_in_chunks(self.labeler, record, tags)
            self.check_audio(labels.has_audio)
        table = labels_table(labels, storage.redact(record.uri), self.ablation, self.map_size)
        return table_to_bytes(table), {**labels.counters, "has_audio": labels.has_audio}

    def check_audio(self, has_audio: bool) -> None:
        if not has_audio and self.reject_silent:
            raise ClipError(
                "label",
                "no audio stream",
                "the run asks to reject clips without audio (--reject-silent); drop the flag to label it with S, ST, S+ and ST+",
            )

    def prepare(self, clips: list[DecodedClip]) -> None:
        self.labeler.prepare(clips)  # fuller encoder batches (on a GPU above all)


# ---------------------------------------------------------------- the pool


def _decode_pool_clip(record_json: str, preset_json: str) -> PoolEntries | None:
    """A pool clip's groups (only they are decoded: a clip of any length), or None."""

    preset = from_dict(json.loads(preset_json))
    try:
        record = ClipRecord.from_row(json.loads(record_json))
        return record_pool_entries(record, preset.windows.pool_groups, preset)
    except ClipError:
        return None


def _assemble_pool(pool_clips: int, *decoded: PoolEntries | None) -> PoolEntries:
    """A tag's pool: the first ``pool_clips`` of its candidates that decoded, in the
    sketch's order (Ray resolves ``decoded``'s refs before this runs)."""
    return PoolEntries.concat([d for d in decoded if d is not None][:pool_clips])


def build_label_pool(records: list[ClipRecord], preset: Preset) -> dict[str, Any]:
    """The cross-term pool: bottom-k clips per tag (see :mod:`factory.method.pool`), decoded by
    Ray tasks, each tag's entries assembled by a task into the object store once. Returns
    tag -> ObjectRef at once: the decoding overlaps the label actors' start, and an actor
    waits for a tag's pool only when it first labels that tag (``PoolSource``)."""

    w = preset.windows
    sketch = build_sketch(records, w.pool_clips, w.seed)
    by_key = {r.key: r for r in records}
    wanted = sorted({k for tag in sketch.heaps for k in sketch.candidates(tag)})
    decode = ray.remote(num_cpus=0.5)(_decode_pool_clip)
    assemble = ray.remote(num_cpus=0.25)(_assemble_pool)
    preset_json = preset.to_json()
    refs = {k: decode.remote(json.dumps(by_key[k].to_row()), preset_json) for k in wanted}
    pool = {
        tag: assemble.remote(w.pool_clips, *(refs[k] for k in sketch.candidates(tag)))
        for tag in sketch.heaps
    }
    log.info("cross-term pool: %d tags, %d candidate clips decoding", len(pool), len(refs))
    return pool


# ---------------------------------------------------------------- the job


def run_label(opts: LabelOptions) -> LabelSummary:
    t_start = time.time()
    # the inputs are checked before Ray starts (seconds on a laptop, minutes on a cluster)
    storage.check_output_root(opts.out, "--out")
    listing = read_corpus(opts.corpus, opts.split, opts.tag_field)
    if listing.num_inputs == 0:
        split = f" in split {opts.split!r}" if opts.split else ""
        raise ValueError(
            f"corpus {opts.corpus!r}: no clips{split}; check the corpus (and --split) or see --help"
        )
    bundle = load_bundle(opts.bundle)
    listing = listing.restrict_to(bundle.vocabulary)
    phases = {"listing": time.time() - t_start}  # listing, bundle: before Ray
    init_ray(opts.address)
    phases["ray_init"] = time.time() - t_start - phases["listing"]
    t = time.time()
    store, todo = open_dataset(opts.out, listing)  # the resume listing of committed files
    phases["resume_scan"] = time.time() - t
    log.info(
        "label: %d inputs (%d clips, %d rejected at listing); %d already committed, %d to label",
        listing.num_inputs,
        len(listing.records),
        len(listing.rejects),
        len(listing.records) - len(todo),
        len(todo),
    )

    stream = StreamStats()
    if todo:
        gpus = cluster_gpus()
        gpus_per_actor = (
            opts.gpus_per_actor if opts.gpus_per_actor is not None else (1.0 if gpus >= 1 else 0.0)
        )
        sizing = size_model_actors(
            opts.actors,
            opts.actor_cpus,
            opts.actor_threads,
            gpus_per_actor,
            side_cpus=opts.decode_cpus + WRITE_CPUS,
        )
        needed = sizing.actors * sizing.cpus + opts.decode_cpus + WRITE_CPUS
        if needed > cluster_cpus():  # an autoscaling cluster may still grow: warn, go on
            log.warning(
                "label stage: %d actor(s) x %.2g CPU + decode %.2g + write %.2g = %.2g CPUs, but "
                "the cluster has %.0f now: decoding waits until CPUs are added. Remedy: fewer "
                "--actors, a smaller --actor-cpus, or more CPUs",
                sizing.actors,
                sizing.cpus,
                opts.decode_cpus,
                WRITE_CPUS,
                needed,
                cluster_cpus(),
            )
        t = time.time()
        pool = build_label_pool(listing.records, bundle.preset)
        phases["pool"] = time.time() - t
        ds = decoded_through_actors(
            todo,
            bundle.preset.to_json(),
            LabelActor,
            {
                "bundle_uri": opts.bundle,
                "pool": pool,
                "device": opts.device,
                "dtype": opts.dtype,
                "ablation": opts.ablation,
                "reject_silent": opts.reject_silent,
                "postprocess": opts.postprocess,
                "confidence": opts.confidence,
                "no_source": opts.no_source,
                "switch_gate": opts.switch_gate,
                "map_size": opts.map_size,
                "threads": sizing.threads,
            },
            sizing.actors,
            gpus_per_actor,
            batch_size=opts.batch_size,
            actor_cpus=sizing.cpus,
            decode_cpus=opts.decode_cpus,
            chunked=True,
        )
        per_shard = opts.clips_per_shard or shard_clips(bundle.preset, opts.shard_mb, opts.ablation)
        ds = ds.map_batches(
            write_batch,
            batch_size=per_shard,
            num_cpus=WRITE_CPUS,
            fn_kwargs={"root": opts.out, "job": "label", "shard_bytes": int(opts.shard_mb * 2**20)},
        )
        log.info(
            "labelling %d clips with %d actor(s) (%s CPU, %s GPU, %s torch threads each), up to "
            "%d clips / %.0f MB per shard",
            len(todo),
            sizing.actors,
            sizing.cpus,
            gpus_per_actor,
            sizing.threads or "default",
            per_shard,
            opts.shard_mb,
        )
        t = time.time()
        stream = consume(ds, len(todo), t_start, "label")
        phases["stream"] = time.time() - t

    return finish(opts, listing, store, bundle, stream, len(todo), t_start, phases)


def finish(
    opts: LabelOptions,
    listing: Listing,
    store: ShardStore,
    bundle: Bundle,
    stream: StreamStats,
    new_clips: int,
    t_start: float,
    phases: dict[str, float],
) -> LabelSummary:
    """Accounting, manifest, rejects table, run record, preview, PNG export."""
    t = time.time()
    closed = close_dataset(opts.out, listing, store, "labelled")
    phases["close"] = time.time() - t  # the accounting's scan, manifest, rejects table
    manifest, labelled = closed.manifest, closed.committed
    seconds = time.time() - t_start
    summary = LabelSummary(
        out=opts.out,
        inputs=closed.inputs,
        labelled=len(labelled),
        rejected=len(closed.rejected),
        frames=manifest["rows"],
        new_clips=new_clips,
        seconds=round(seconds, 2),
        frames_per_s=round(stream.frames / stream.seconds, 2) if stream.seconds > 0 else 0.0,
        reject_reasons=closed.reasons,
        counters=stream.counters,
        stream=stream.to_dict(),
        phases={k: round(v, 3) for k, v in phases.items()},
    )

    run_record = {
        "job": "label",
        "arguments": dataclasses.asdict(opts),
        "code_version": code_version(),
        "bundle": {
            "uri": opts.bundle,
            "fingerprint": bundle.fingerprint(),
            "hashes": bundle.hashes,
            "cgcn": dataclasses.asdict(bundle.cgcn),
        },
        "vocabulary": bundle.vocabulary,
        "summary": summary.to_dict(),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_run_record(opts.out, run_record)
    if opts.preview and labelled:
        try:
            write_preview(opts.out, listing, bundle.preset, storage.join(opts.out, "preview.png"))
        except Exception as err:  # a preview is a convenience; it never fails the run
            log.warning("preview not written: %s", err)
    if opts.export_png:
        n = export_pngs(opts.out, manifest, opts.export_png)
        log.info("exported %d PNG maps under %s", n, opts.export_png)
    return summary


def read_dataset(root: str, columns: list[str] | None = None) -> pa.Table:
    """All committed rows of a dataset written by this job (via its manifest)."""

    manifest = storage.read_json(storage.join(root, "_manifest.json"))
    tables = [read_parquet(storage.join(root, s["file"]), columns) for s in manifest["shards"]]
    return pa.concat_tables(tables) if tables else pa.table({})
