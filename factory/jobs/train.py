"""The train job: fit every classification net the labeler needs, on a Ray cluster.

Phases (each resumable; a rerun of a finished run returns the same bundle):

0. encoders: when the preset's encoders have no weights file (or ``--fine-tune``), the
   shared encoders are fitted to the corpus's tags (:mod:`factory.train.pretrain`), one
   TorchTrainer reading decoded frames streamed by Ray Data;
1. features: Ray Data decodes every clip (CPU tasks) and encodes every frame once with
   the frozen encoders (an actor pool) into the feature cache (:mod:`factory.train.feature_cache`);
2. switch labels: the audio tagger (two folds, each labels the clips it did not see, so
   labels are honest) or a user-supplied tagger gives each frame's audio switch label;
3. coarse nets: S, ST, SA, the 8 + nets (S+short ... SA+cross) and the audio switch,
   fitted concurrently (one TorchTrainer for the phase, or one each: ``--trainers``);
4. fine features: the coarse nets' boxes (the labeler's code) crop t-1, t, t+1, encoded
   at the fine size;
5. fine nets: S, ST, SA on the crops, again in parallel;
6. the bundle: weights, configs, vocabulary, per-net metrics and wall-clock intervals,
   content hashes.

One training loop (:func:`factory.train.loop.fit`) serves every net; each net
checkpoints every epoch to ``<out>/_run/checkpoints/<net>`` and resumes from there (a
killed worker is restarted by ``FailureConfig``, with its phase's trainer when the phase
has one; a rerun with the same ``--out`` continues).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from factory.config import ExecutionConfig, Preset, customise, from_dict
from factory.config import preset as get_preset
from factory.io import storage
from factory.io.audio import frame_windows
from factory.io.corpus import ClipRecord, Listing, read_corpus
from factory.io.store import write_parquet_atomic
from factory.method.bundle import TAGGER_FOLDS, Bundle, build_nets, load_bundle
from factory.method.encoding import FrameEncoder
from factory.method.labeler import Labeler
from factory.method.pool import PoolEntries, build_sketch
from factory.method.weights import build_encoders, check_weights
from factory.pipelines.executors import LocalExecutor, RayExecutor
from factory.pipelines.stages import ModelStage
from factory.train.feature_cache import (
    cache_files,
    cached_keys,
    encode_blob,
    read_cache_rows,
    rows_to_clips,
)
from factory.train.nets import FitSpec, import_callable, load_switch_labels
from factory.train.prepare import clip_features, feature_pool_entries, fine_features, switch_labels
from models.registry import plus_nets

log = logging.getLogger(__name__)


def coarse_nets(preset: Preset) -> tuple[str, ...]:
    """Phase 3's nets: the audio switch, S, ST, SA and the + nets (8 or 3, see
    ``Preset.plus_weights``)."""
    return ("switch", "S", "ST", "SA", *plus_nets(preset.plus_weights))


FINE_NETS = ("S_fine", "ST_fine", "SA_fine")


@dataclass
class TrainOptions:
    corpus: str
    out: str
    split: str | None = None
    preset: str = "tiny"
    epochs: int | None = None
    pretrain_epochs: int | None = None
    fine_tune: bool = False
    plus_weights: str | None = None  # see Preset.plus_weights; None: the preset's ("pair")
    plus_init: str | None = None  # see Preset.plus_init; None: the preset's ("identity")
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    storage_path: str | None = None  # checkpoints and caches; default <out>/_run
    audio_tagger: str | None = None  # a TorchScript audio classifier (spectrogram -> logits)
    audio_tagger_classes: str | None = None  # JSON: tagger class index -> corpus tag
    tag_field: str = "tag"
    address: str | None = None
    # "module:function" called as function(net, epoch, run_dir) on rank 0 after each
    # epoch's checkpoint is saved (the fault tests kill a worker there; tests/faults.py)
    epoch_hook: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # --set: knob or dotted field
    preset_file: str | None = None  # JSON / TOML overriding any preset field
    weights: dict[str, str] = field(default_factory=dict)  # encoder -> weights file


def run_dir(opts: TrainOptions) -> str:
    return opts.storage_path or storage.join(opts.out, "_run")


def build_preset(opts: TrainOptions) -> Preset:
    """The preset named by ``opts.preset`` with the preset file, the weight files and the
    ``--set`` overrides applied (:func:`factory.config.customise`), then the explicit
    flags (``--epochs``, ``--fine-tune``, ``--plus-weights``...), which win."""
    p = customise(get_preset(opts.preset), opts.preset_file, opts.weights, opts.overrides)
    train = p.train
    changes: dict[str, Any] = {}
    if opts.epochs is not None:
        changes["epochs"] = opts.epochs
    if opts.pretrain_epochs is not None:
        changes["pretrain_epochs"] = opts.pretrain_epochs
    if opts.fine_tune:
        changes["fine_tune"] = True
        if not changes.get("pretrain_epochs", train.pretrain_epochs):
            changes["pretrain_epochs"] = max(train.epochs // 3, 1)
    return p.replace(
        train=dataclasses.replace(train, **changes),
        plus_weights=opts.plus_weights or p.plus_weights,
        plus_init=opts.plus_init or p.plus_init,
    )


def signature(listing: Listing, preset: Preset, opts: TrainOptions) -> str:
    h = hashlib.sha256()
    for r in listing.records:
        h.update(f"{r.key}|{'|'.join(r.tags)}|{r.start_s}|{r.end_s}\n".encode())
    h.update(preset.to_json().encode())
    h.update(f"{opts.audio_tagger}|{opts.audio_tagger_classes}".encode())
    return h.hexdigest()[:20]


def needs_pretraining(preset: Preset) -> bool:
    e = preset.encoders
    plus_weights = e.plus.weights or e.plus_trunk == "image"  # the image trunk's, then
    no_weights = not (e.image.weights and plus_weights and e.audio.weights)
    return preset.train.pretrain_epochs > 0 and (no_weights or preset.train.fine_tune)


# ---------------------------------------------------------------- Ray Data actors


class CacheActor(ModelStage):
    """Decoded clips -> cache rows. ``mode``: ``raw`` (coarse frames + spectrograms, for
    encoder pretraining), ``features`` (frozen-encoder features), ``fine`` (crop features
    at the coarse nets' boxes)."""

    stage = "train cache"
    job = "train"

    def __init__(
        self,
        mode: str,
        preset_json: str,
        vocabulary: list[str],
        run: str,
        tagger: str | None = None,
        tagger_classes: str | None = None,
    ) -> None:
        self.mode = mode
        self.preset = from_dict(json.loads(preset_json))
        self.vocabulary = vocabulary
        encoders = build_encoders(self.preset.encoders)
        enc_uri = storage.join(run, "encoders.pt")
        if storage.exists(enc_uri):
            encoders.load_state_dict(storage.load_torch(enc_uri))
        self.encoder = FrameEncoder(encoders, self.preset)
        self.labeler = None
        if mode == "fine":
            nets = build_nets(self.preset, len(vocabulary), ("S", "ST", "SA", "switch"))
            for name, net in nets.items():
                net.load_state_dict(storage.load_torch(storage.join(run, "nets", f"{name}.pt")))
            self.labeler = Labeler(Bundle(self.preset, vocabulary, encoders, nets))
        self.tagger = None
        if tagger:
            self.tagger = torch.jit.load(
                _local_copy(tagger) if storage.is_remote(tagger) else tagger,
                map_location=self.encoder.device,
            )
            mapping = storage.read_json(tagger_classes) if tagger_classes else {}
            self.tagger_classes = {int(k): v for k, v in mapping.items()}

    def process(self, clip: Any, record: ClipRecord) -> tuple[bytes, dict]:
        return self._blob(clip, record), {"has_audio": clip.has_audio, "n_frames": len(clip.times)}

    def _blob(self, clip: Any, record: ClipRecord) -> bytes:
        if self.mode == "raw":
            frames_u8 = torch.from_numpy(
                np.ascontiguousarray(_resize_uint8(clip.frames, self.preset.frames.coarse_size))
            )
            return encode_blob({"frames_u8": frames_u8, "spectrogram": self._spectrograms(clip)})
        if self.mode == "features":
            feats = clip_features(self.encoder, clip)
            if self.tagger is not None:
                feats["gate"] = self._user_switch_labels(clip, record)
            return encode_blob(feats)
        assert self.labeler is not None
        return encode_blob(fine_features(self.labeler, clip, record.tags[0]))

    def _spectrograms(self, clip: Any) -> torch.Tensor:
        cfg = self.preset.spectrogram
        if clip.has_audio:
            w = frame_windows(clip.audio, clip.audio_t0, clip.times, cfg)
        else:
            w = np.zeros((len(clip.times), cfg.window_samples), np.float32)
        with torch.inference_mode():
            return self.encoder.spectrogram(torch.from_numpy(w).to(self.encoder.device)).cpu()

    def _user_switch_labels(self, clip: Any, record: ClipRecord) -> torch.Tensor:
        if not clip.has_audio:
            return torch.zeros(len(clip.times))
        with torch.inference_mode():
            logits = self.tagger(self._spectrograms(clip).to(self.encoder.device)).cpu()
        top = logits.argmax(1).tolist()
        return torch.tensor([float(self.tagger_classes.get(c) in record.tags) for c in top])


def _resize_uint8(frames: np.ndarray, size: int) -> np.ndarray:
    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack(
        [
            np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR))
            for f in frames
        ]
    )


def _local_copy(uri: str) -> str:
    path = os.path.join(tempfile.mkdtemp(), os.path.basename(uri))
    with open(path, "wb") as f:
        f.write(storage.read_bytes(uri))
    return path


def cache_actor_kwargs(
    mode: str, preset: Preset, vocabulary: list[str], run: str, opts: TrainOptions
) -> dict[str, Any]:
    return {
        "mode": mode,
        "preset_json": preset.to_json(),
        "vocabulary": vocabulary,
        "run": run,
        "tagger": opts.audio_tagger if mode == "features" else None,
        "tagger_classes": opts.audio_tagger_classes,
    }


# ---------------------------------------------------------------- switch labels


def switch_label_table(cache_dir: str, taggers: dict[str, torch.nn.Module]) -> Any:
    """Each clip's frames labelled by the tagger fold that did not train on it (held-out
    clips by fold 0): 1 where its top class is one of the clip's tags."""

    keys, labels = [], []
    for role in ("train", "holdout"):
        for row in read_cache_rows(storage.join(cache_dir, role)):
            clip = next(rows_to_clips([row]))
            fold = (
                int(hashlib.sha256(clip.key.encode()).hexdigest(), 16) % 2 if role == "train" else 0
            )
            with torch.no_grad():
                logits = taggers[f"audio@fold{fold}"]({"audio": clip.feats["audio"]})
            keys.append(clip.key)
            labels.append(
                switch_labels(logits, clip.tags, clip.has_audio).numpy().astype(np.uint8).tobytes()
            )
    return pa.table({"key": pa.array(keys, pa.string()), "labels": pa.array(labels, pa.binary())})


# ---------------------------------------------------------------- the job


def make_pool(
    cache_dir: str, records: list[ClipRecord], preset: Preset, extra: dict[str, Any]
) -> dict[str, Any]:
    """Cross-term pool for training: the bottom-k train-role clips per tag (see
    :mod:`factory.method.pool`), their 3-frame groups' features read from the cache."""

    w = preset.windows
    train_keys, _ = cached_keys(storage.join(cache_dir, "train"))
    sketch = build_sketch([r for r in records if r.key in train_keys], w.pool_clips, w.seed)
    wanted = {k for tag in sketch.heaps for k in sketch.candidates(tag)[: w.pool_clips]}
    clips = {
        c.key: c
        for c in rows_to_clips(read_cache_rows(storage.join(cache_dir, "train"), wanted), extra)
    }
    return {
        tag: PoolEntries.concat(
            feature_pool_entries(clips[k], w.pool_groups)
            for k in sketch.candidates(tag)[: w.pool_clips]
            if k in clips
        )
        for tag in sketch.heaps
    }


def run_train(opts: TrainOptions, local: bool = False) -> dict[str, Any]:
    """Run (or resume) the train job; ``local=True`` runs every phase in this process
    without Ray (:class:`LocalExecutor`)."""

    t0 = time.time()
    if opts.epoch_hook:
        import_callable(opts.epoch_hook)  # a wrong name fails here, not in a worker
    preset = build_preset(opts)
    storage.check_output_root(opts.out, "--out")
    check_weights(preset.encoders)
    listing = read_corpus(opts.corpus, opts.split, opts.tag_field)
    if not listing.records:
        raise ValueError(
            f"corpus {opts.corpus!r} has no usable clips (split {opts.split!r}); {len(listing.rejects)} rows were rejected while listing"
        )
    vocab = listing.vocabulary
    if len(vocab) < 2:
        raise ValueError(
            f"corpus {opts.corpus!r} has {len(vocab)} tag(s); classification needs at least 2"
        )
    sig = signature(listing, preset, opts)
    meta_uri = storage.join(opts.out, "bundle.json")
    if (
        storage.exists(meta_uri)
        and storage.read_json(meta_uri).get("metrics", {}).get("signature") == sig
    ):
        log.info(
            "bundle %s is already trained for this corpus and configuration: nothing to do",
            opts.out,
        )
        return {"bundle": opts.out, "skipped": True, "metrics": load_bundle(opts.out).metrics}
    executor: Any = (
        LocalExecutor(opts.execution) if local else RayExecutor(opts.execution, opts.address)
    )
    run = run_dir(opts)
    storage.makedirs(run)
    checkpoints = storage.join(run, "checkpoints")
    if not storage.is_remote(checkpoints):
        checkpoints = os.path.abspath(checkpoints)
    spec = FitSpec(
        preset=preset,
        vocabulary=vocab,
        checkpoints=checkpoints,
        run_dir=run,
        epoch_hook=opts.epoch_hook,
    )
    phases: dict[str, float] = {}

    def files(cache: str) -> dict[str, list[str]]:
        return {role: cache_files(storage.join(cache, role)) for role in ("train", "holdout")}

    def cache(mode: str, folder: str) -> dict[str, int]:
        return executor.build_cache(
            mode,
            listing,
            storage.join(run, folder),
            preset,
            vocab,
            CacheActor,
            cache_actor_kwargs(mode, preset, vocab, run, opts),
        )

    def timed(phase: str, t: float) -> None:
        phases[phase] = time.time() - t
        log.info("phase %s done in %.0f s", phase, phases[phase])

    # 0. encoders
    if needs_pretraining(preset) and not storage.exists(storage.join(run, "encoders.pt")):
        t = time.time()
        cache("raw", "raw")
        states = executor.fit_nets(
            ("encoders",), "encoders", replace(spec, cache=files(storage.join(run, "raw")))
        )
        enc_state = {
            k.removeprefix("encoders."): v
            for k, v in states["encoders"]["net"].items()
            if k.startswith("encoders.")
        }
        storage.save_torch(enc_state, storage.join(run, "encoders.pt"))
        timed("encoders", t)
    # 1. features
    t = time.time()
    cache_stats = cache("features", "features")
    timed("features", t)
    # 2. switch labels
    t = time.time()
    labels_uri = storage.join(run, "switch_labels.parquet")
    if not opts.audio_tagger and not storage.exists(labels_uri):
        states = executor.fit_nets(
            TAGGER_FOLDS, "audio-tagger", replace(spec, cache=files(storage.join(run, "features")))
        )
        taggers = {}
        for name, state in states.items():
            net = build_nets(preset, len(vocab), ("audio",))["audio"]
            net.load_state_dict(state["net"])
            taggers[name] = net.eval()
            # kept for the bundle: the labeler's ``switch_gate = "tagger"`` reads them
            storage.save_torch(state["net"], storage.join(run, "nets", f"{name}.pt"))
        write_parquet_atomic(labels_uri, switch_label_table(storage.join(run, "features"), taggers))
    timed("switch_labels", t)
    spec = replace(spec, switch_labels=None if opts.audio_tagger else labels_uri)
    extra = load_switch_labels(spec.switch_labels)
    # 3. coarse nets
    t = time.time()
    pool = executor.put_pool(
        make_pool(storage.join(run, "features"), listing.records, preset, extra)
    )
    coarse = executor.fit_nets(
        coarse_nets(preset),
        "coarse",
        replace(spec, pool=pool, cache=files(storage.join(run, "features"))),
    )
    for name, state in coarse.items():
        storage.save_torch(state["net"], storage.join(run, "nets", f"{name}.pt"))
    timed("coarse_nets", t)
    # 4. fine features, 5. fine nets
    t = time.time()
    cache("fine", "features_fine")
    timed("fine_features", t)
    t = time.time()
    fine = executor.fit_nets(
        FINE_NETS, "fine", replace(spec, cache=files(storage.join(run, "features_fine")))
    )
    timed("fine_nets", t)
    # 6. the bundle
    encoders = build_encoders(preset.encoders)
    if storage.exists(storage.join(run, "encoders.pt")):
        encoders.load_state_dict(storage.load_torch(storage.join(run, "encoders.pt")))
    nets = build_nets(preset, len(vocab))
    # the audio tagger's folds, when the factory trained them (not with --audio-tagger)
    for name in TAGGER_FOLDS:
        uri = storage.join(run, "nets", f"{name}.pt")
        if storage.exists(uri):
            nets[name] = build_nets(preset, len(vocab), (name,))[name]
            nets[name].load_state_dict(storage.load_torch(uri))
    per_net = {}
    for name, state in {**coarse, **fine}.items():
        nets[name].load_state_dict(state["net"])
        hist = state["history"]
        per_net[name] = {
            "epochs": len(hist),
            "loss": hist[-1].get("loss") if hist else None,
            "accuracy": hist[-1].get("accuracy") if hist else None,
            "started_at": state["started_at"],
            "ingest": executor.ingest.get(name),  # how its trainer read the cache
            "trainer": executor.trainers.get(name),  # the phase's trainer, or its own
            "ended_at": hist[-1].get("ended_at") if hist else None,
            "history": [
                {k: v for k, v in h.items() if k in ("epoch", "loss", "accuracy", "epoch_s")}
                for h in hist
            ],
        }
    metrics = {
        "signature": sig,
        "executor": executor.name,
        "nets": per_net,
        "clips": cache_stats["clips"],
        "rejects": cache_stats["rejects"],
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "seconds": round(time.time() - t0, 1),
        "corpus": storage.redact(opts.corpus),
        "pretrained_encoders": needs_pretraining(preset),
    }
    Bundle(preset, vocab, encoders, nets, metrics).save(opts.out)
    return {"bundle": opts.out, "skipped": False, "metrics": metrics}


def summary_table(metrics: dict[str, Any]) -> str:
    lines = [
        "| net | epochs | loss | held-out accuracy | wall-clock (s) |",
        "|---|---|---|---|---|",
    ]
    t0 = min((m["started_at"] for m in metrics["nets"].values()), default=0)
    for name, m in sorted(metrics["nets"].items()):
        acc = (
            "-"
            if m["accuracy"] is None or m["accuracy"] != m["accuracy"]
            else f"{m['accuracy']:.3f}"
        )
        span = f"{m['started_at'] - t0:.0f} - {(m['ended_at'] or 0) - t0:.0f}"
        lines.append(f"| {name} | {m['epochs']} | {m['loss']:.4f} | {acc} | {span} |")
    return "\n".join(lines)
