"""The train job: fit every classification net the labeler needs, on a Ray cluster.

Phases (each resumable; a rerun of a finished run returns the same bundle):

0. encoders: when the preset's encoders have no weights file (or ``--fine-tune``), the
   shared encoders are fitted to the corpus's tags (:mod:`factory.pretrain`), one
   TorchTrainer reading decoded frames streamed by Ray Data;
1. features: Ray Data decodes every clip (CPU tasks) and encodes every frame once with
   the frozen encoders (an actor pool) into the feature cache (:mod:`factory.feature_cache`);
2. switch labels: the audio tagger (two folds, each labels the clips it did not see, so
   labels are honest) or a user-supplied tagger gives each frame's audio switch label;
3. coarse nets: S, ST, SA, S+, ST+, SA+ and the audio switch, one TorchTrainer each,
   launched together by a Ray Tune driver function with a grid over the net names;
4. fine features: the coarse nets' boxes (the labeler's code) crop t-1, t, t+1, encoded
   at the fine size;
5. fine nets: S, ST, SA on the crops, again in parallel;
6. the bundle: weights, configs, vocabulary, per-net metrics and wall-clock intervals,
   content hashes.

One training loop (:func:`factory.training.fit`) serves every net; each TorchTrainer
checkpoints every epoch to ``<out>/_run/checkpoints/<net>`` and resumes from there (a
killed worker is restarted by ``FailureConfig``; a rerun with the same ``--out``
continues).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from factory import storage
from factory.bundle import Bundle, base_name, build_nets
from factory.config import Preset, from_dict
from factory.config import preset as get_preset
from factory.corpus import ClipRecord, Listing, read_corpus
from factory.feature_cache import (
    batch_rows,
    cache_files,
    cache_row,
    cached_keys,
    encode_blob,
    read_cache_rows,
    role_of,
    rows_to_clips,
    write_cache,
)
from factory.pipeline import OK, decode_batch, deserialize_clip, from_batch
from factory.rejects import ClipError, Reject

log = logging.getLogger(__name__)

COARSE_NETS = ("switch", "S", "ST", "SA", "S+", "ST+", "SA+")
FINE_NETS = ("S_fine", "ST_fine", "SA_fine")
TAGGER_FOLDS = ("audio@fold0", "audio@fold1")
CLIPS_PER_READ = 4  # cache rows per Ray Data batch in the trainers
SHUFFLE_CLIPS = 16  # local shuffle buffer of the trainers' data iterators
DATA_TASK_CPUS = 0.05  # read tasks of the trainers' datasets: tiny, so trainers never starve them
TRIAL_DRIVER_CPUS = 0.001  # a Tune trial here only launches a TorchTrainer and waits
DATA_RESERVE_CPUS = 1.0  # kept free for the trainers' Ray Data tasks
WORKER_CACHE_MB = 512  # a trainer keeps its shard in memory across epochs up to this size


@dataclass
class TrainOptions:
    corpus: str
    out: str
    split: str | None = None
    preset: str = "tiny"
    epochs: int | None = None
    pretrain_epochs: int | None = None
    fine_tune: bool = False
    workers_per_net: int = 1
    gpus_per_net: float = 0.0
    cpus_per_worker: float | None = None  # default: what fits all nets of a phase at once
    max_concurrent: int | None = None
    storage_path: str | None = None  # checkpoints and caches; default <out>/_run
    audio_tagger: str | None = None  # a TorchScript audio classifier (spectrogram -> logits)
    audio_tagger_classes: str | None = None  # JSON: tagger class index -> corpus tag
    tag_field: str = "tag"
    address: str | None = None
    encode_actors: int | None = None
    max_failures: int = 2
    inject_failure: str | None = None  # tests only: "<net>:<epoch>" kills that worker once
    overrides: dict[str, Any] = field(default_factory=dict)


def run_dir(opts: TrainOptions) -> str:
    return opts.storage_path or storage.join(opts.out, "_run")


def build_preset(opts: TrainOptions) -> Preset:
    p = get_preset(opts.preset)
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
    changes.update({k: v for k, v in opts.overrides.items() if hasattr(train, k)})
    return p.replace(train=dataclasses.replace(train, **changes))


def signature(listing: Listing, preset: Preset, opts: TrainOptions) -> str:
    h = hashlib.sha256()
    for r in listing.records:
        h.update(f"{r.key}|{'|'.join(r.tags)}|{r.start_s}|{r.end_s}\n".encode())
    h.update(preset.to_json().encode())
    h.update(f"{opts.audio_tagger}|{opts.audio_tagger_classes}".encode())
    return h.hexdigest()[:20]


def needs_pretraining(preset: Preset) -> bool:
    e = preset.encoders
    no_weights = not (e.image.weights and e.plus.weights and e.audio.weights)
    return preset.train.pretrain_epochs > 0 and (no_weights or preset.train.fine_tune)


# ---------------------------------------------------------------- Ray Data actors


class CacheActor:
    """Decoded clips -> cache rows. ``mode``: ``raw`` (coarse frames + spectrograms, for
    encoder pretraining), ``features`` (frozen-encoder features), ``fine`` (crop features
    at the coarse nets' boxes)."""

    def __init__(
        self,
        mode: str,
        preset_json: str,
        vocabulary: list[str],
        run: str,
        tagger: str | None = None,
        tagger_classes: str | None = None,
    ) -> None:
        from factory.encoding import FrameEncoder
        from factory.weights import build_encoders

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
            from factory.bundle import Bundle
            from factory.labeler import Labeler

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

    def process(self, clip: Any, record: ClipRecord) -> bytes:
        from factory.prepare import clip_features, fine_features

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
        from factory.audio import frame_windows

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

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = from_batch(batch)
        out = []
        for row in rows:
            if row["status"] == OK:
                record = ClipRecord.from_row(json.loads(row["record"]))
                try:
                    clip = deserialize_clip(row["key"], row["payload"])
                    row = {
                        **row,
                        "payload": self.process(clip, record),
                        "info": json.dumps(
                            {"has_audio": clip.has_audio, "n_frames": len(clip.times)}
                        ),
                    }
                except ClipError as err:
                    row = {
                        **row,
                        "status": "reject",
                        "payload": b"",
                        "stage": err.stage,
                        "reason": err.reason,
                        "remedy": err.remedy,
                    }
            out.append(row)
        from factory.pipeline import to_batch

        return to_batch(out)


def _resize_uint8(frames: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

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


def write_cache_batch(
    batch: dict[str, np.ndarray], cache_dir: str, vocabulary: list[str], holdout: float, seed: int
) -> dict[str, np.ndarray]:
    """Ray Data function: commit a batch of cache rows (train and holdout roles in their
    own folders) and the batch's rejects."""
    rows = {"train": [], "holdout": []}
    rejects = []
    for r in from_batch(batch):
        rec = ClipRecord.from_row(json.loads(r["record"]))
        if r["status"] != OK:
            rejects.append(
                Reject(
                    r["key"],
                    r["stage"],
                    r["reason"],
                    r["remedy"],
                    storage.redact(rec.uri),
                    rec.split,
                )
            )
            continue
        info = json.loads(r["info"])
        role = role_of(rec.key, holdout, seed)
        rows[role].append(
            cache_row(
                rec,
                [vocabulary.index(t) for t in rec.tags],
                role,
                info["has_audio"],
                info["n_frames"],
                r["payload"],
            )
        )
    for role, items in rows.items():
        write_cache(items, [], storage.join(cache_dir, role))
    write_cache([], rejects, cache_dir)
    return {"key": batch["key"], "status": batch["status"]}


def build_cache(
    mode: str,
    listing: Listing,
    cache_dir: str,
    preset: Preset,
    vocabulary: list[str],
    run: str,
    opts: TrainOptions,
) -> dict[str, int]:
    """Run one cache pass (resumable: clips already cached or rejected are skipped)."""
    import ray
    from ray.data import ActorPoolStrategy

    from factory.raycluster import cluster_cpus, cluster_gpus

    done = set()
    for role in ("train", "holdout"):
        keys, _ = cached_keys(storage.join(cache_dir, role))
        done |= keys
    _, rejected = cached_keys(cache_dir)
    todo = [r for r in listing.records if r.key not in done and r.key not in rejected]
    if not todo:
        log.info("%s cache complete (%d clips, %d rejects)", mode, len(done), len(rejected))
        return {"clips": len(done), "rejects": len(rejected)}
    gpus = cluster_gpus()
    actors = opts.encode_actors or (
        max(1, int(gpus)) if gpus >= 1 else max(1, int(cluster_cpus()) - 1)
    )
    rows = [{"key": r.key, "record": json.dumps(r.to_row())} for r in todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    ds = ds.map_batches(
        decode_batch, batch_size=1, num_cpus=0.5, fn_kwargs={"preset_json": preset.to_json()}
    )
    ds = ds.map_batches(
        CacheActor,
        batch_size=1,
        compute=ActorPoolStrategy(size=actors),
        num_cpus=1.0,
        num_gpus=1.0 if gpus >= 1 else 0.0,
        fn_constructor_kwargs={
            "mode": mode,
            "preset_json": preset.to_json(),
            "vocabulary": vocabulary,
            "run": run,
            "tagger": opts.audio_tagger if mode == "features" else None,
            "tagger_classes": opts.audio_tagger_classes,
        },
    )
    ds = ds.map_batches(
        write_cache_batch,
        batch_size=8,
        num_cpus=0.25,
        fn_kwargs={
            "cache_dir": cache_dir,
            "vocabulary": vocabulary,
            "holdout": preset.train.holdout_fraction,
            "seed": preset.train.seed,
        },
    )
    t0 = time.time()
    n = bad = 0
    for row in ds.iter_rows():
        n += 1
        bad += row["status"] != OK
    log.info("%s cache: %d clips in %.1f s (%d rejected)", mode, n, time.time() - t0, bad)
    return {"clips": len(done) + n - bad, "rejects": len(rejected) + bad}


# ---------------------------------------------------------------- the train loop


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train loop for one net (every rank runs it)."""
    import signal

    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from factory.pool import PoolSource
    from factory.pretrain import EncoderPretrainNet, PretrainTask
    from factory.training import NetTask, fit, make_optimizer

    name = config["net"]
    preset = from_dict(config["preset"])
    vocab = config["vocabulary"]
    torch.manual_seed(preset.train.seed)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if name == "encoders":
        from factory.weights import build_encoders
        from models.config import EncodersConfig

        e = preset.encoders
        unfrozen = EncodersConfig(
            *(dataclasses.replace(c, frozen=False) for c in (e.image, e.plus, e.audio))
        )
        net = EncoderPretrainNet(build_encoders(unfrozen), len(vocab)).to(device)
        task: Any = PretrainTask(name, len(vocab), preset)
        optimizer = torch.optim.AdamW(
            net.parameters(), lr=preset.train.pretrain_lr, weight_decay=1e-4
        )
        epochs = preset.train.pretrain_epochs
    else:
        net = build_nets(preset, len(vocab), (name.split("@")[0],))[name.split("@")[0]].to(device)
        task = NetTask(name, len(vocab), preset, PoolSource(config.get("pool") or {}), vocab)
        optimizer = make_optimizer(net, preset.train.lr_for(base_name(name)), preset)
        epochs = preset.train.epochs
    start_epoch, history, started_at = 0, [], time.time()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location=device, weights_only=False)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, started_at = state["epoch"] + 1, state["history"], state["started_at"]
        log.info("%s: resuming at epoch %d", name, start_epoch)
    model = ray.train.torch.prepare_model(net) if world > 1 else net
    extra = {}
    if config.get("switch_labels"):
        from factory.store import read_parquet

        t = read_parquet(config["switch_labels"])
        extra = {
            k: {"gate": torch.from_numpy(np.frombuffer(v, dtype=np.uint8).astype(np.float32))}
            for k, v in zip(t["key"].to_pylist(), t["labels"].to_pylist(), strict=True)
        }
    fold = int(name.split("@fold")[1]) if "@fold" in name else None

    def transform(clips: Any) -> Any:
        from factory.encoding import normalize_frames

        for c in clips:
            if (
                fold is not None
                and (int(hashlib.sha256(c.key.encode()).hexdigest(), 16) % 2) == fold
            ):
                continue  # the other fold's clips: this tagger must not see them
            if name == "encoders":
                c.feats = {
                    "frames": normalize_frames(c.feats["frames_u8"]),
                    "spectrogram": c.feats["spectrogram"],
                }
            yield c

    train_shard = ray.train.get_dataset_shard("train")
    # The first epoch streams the shard with Ray Data; while the rows seen fit in
    # WORKER_CACHE_MB they are kept, and later epochs reuse them in a fresh random order
    # (on a small corpus re-running the data pipeline every epoch costs more than the
    # epoch itself). A larger shard is streamed again every epoch.
    kept: list = []
    kept_bytes = [0]
    complete = [False]

    def train_clips(epoch: int) -> Any:
        if complete[0]:
            yield from transform(
                rows_to_clips(shuffled_rows(kept, preset.train.seed, epoch), extra)
            )
            return
        keeping = epoch == start_epoch
        for batch in train_shard.iter_batches(
            batch_size=CLIPS_PER_READ,
            batch_format="numpy",
            local_shuffle_buffer_size=SHUFFLE_CLIPS,
            local_shuffle_seed=preset.train.seed + epoch,
        ):
            rows = batch_rows(batch)
            if keeping:
                kept.extend(rows)
                kept_bytes[0] += sum(len(r["blob"]) for r in rows)
                if kept_bytes[0] > WORKER_CACHE_MB * 2**20:
                    keeping = False
                    kept.clear()
            yield from transform(rows_to_clips(rows, extra))
        complete[0] = keeping

    val_cache: list = []

    def val_clips() -> Any:
        if not val_cache:
            val_shard = ray.train.get_dataset_shard("val")
            if val_shard is not None:
                for batch in val_shard.iter_batches(
                    batch_size=CLIPS_PER_READ, batch_format="numpy"
                ):
                    val_cache.extend(transform(rows_to_clips(batch_rows(batch), extra)))
        return val_cache

    def on_epoch(epoch: int, metrics: dict, _net: Any, _opt: Any) -> None:
        metrics = {**metrics, "started_at": started_at, "ended_at": time.time(), "net": name}
        history.append(metrics)
        with tempfile.TemporaryDirectory() as d:
            if rank == 0:
                torch.save(
                    {
                        "net": net.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                        "history": history,
                        "started_at": started_at,
                    },
                    os.path.join(d, "state.pt"),
                )
            ray.train.report(
                {k: v for k, v in metrics.items() if isinstance(v, int | float | str)},
                checkpoint=Checkpoint.from_directory(d) if rank == 0 else None,
            )
        failure = config.get("inject_failure")
        if (
            failure
            and failure.split(":")[0] == name
            and int(failure.split(":")[1]) == epoch
            and rank == 0
        ):
            marker = config["failure_marker"]
            if not os.path.exists(marker):
                open(marker, "w").close()
                log.warning("%s: injected failure (SIGKILL) after epoch %d", name, epoch)
                os.kill(os.getpid(), signal.SIGKILL)

    has_val = name not in ("switch", "encoders") and not name.startswith("audio@")
    fit(
        model,
        task,
        train_clips,
        val_clips if has_val else None,
        epochs,
        0.0,
        start_epoch=start_epoch,
        optimizer=optimizer,
        on_epoch=on_epoch,
    )


# ---------------------------------------------------------------- the Tune driver


def shuffled_rows(rows: list, seed: int, epoch: int) -> list:
    order = np.random.default_rng([seed, epoch, 5]).permutation(len(rows))
    return [rows[i] for i in order]


def net_trial(config: dict[str, Any]) -> None:
    """Ray Tune trial function: build and fit one net's TorchTrainer."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    name = config["net"]
    common = config["common"]
    files = {role: common["cache"][role] for role in ("train", "holdout")}
    datasets = {}
    for split, role in (("train", "train"), ("val", "holdout")):
        if files[role]:
            datasets[split] = ray.data.read_parquet(
                files[role],
                ray_remote_args={"num_cpus": DATA_TASK_CPUS},
                override_num_blocks=max(1, len(files[role])),
            )
    if name.startswith("audio@"):  # the taggers train on train-role clips only, split by fold
        datasets.pop("val", None)
    loop_config = {**{k: v for k, v in common.items() if k != "cache"}, "net": name}
    resources = {"CPU": common["cpus_per_worker"]}
    if common["gpus_per_net"] > 0:
        resources["GPU"] = common["gpus_per_net"] / common["workers_per_net"]
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=common["workers_per_net"],
            use_gpu=common["gpus_per_net"] > 0,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=name.replace("+", "plus").replace("@", "-"),
            storage_path=common["checkpoints"],
            failure_config=FailureConfig(max_failures=common["max_failures"]),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    trainer.fit()


def fit_nets(
    names: tuple[str, ...], phase: str, common: dict[str, Any], opts: TrainOptions
) -> dict[str, dict[str, Any]]:
    """Fit ``names`` concurrently (one TorchTrainer each under a Tune grid). Returns per
    net its final checkpoint's state and history."""
    from ray import tune

    from factory.raycluster import cluster_cpus

    # Sizing that cannot deadlock: one CPU stays free for the Ray Data tasks that feed
    # the trainers (on 2 CPUs, trainers that took every CPU starved their own data);
    # the rest is shared by the nets of the phase, so all of them run at once.
    cpus = cluster_cpus()
    trainer_cpus = max(cpus - DATA_RESERVE_CPUS, 0.1 * len(names))
    per_worker = opts.cpus_per_worker or max(
        0.01, round(trainer_cpus / (len(names) * opts.workers_per_net) - 0.005, 3)
    )
    concurrent = opts.max_concurrent or max(
        1, min(len(names), int(trainer_cpus // (per_worker * opts.workers_per_net)))
    )
    common = {
        **common,
        "cpus_per_worker": per_worker,
        "workers_per_net": opts.workers_per_net,
        "gpus_per_net": opts.gpus_per_net,
        "max_failures": opts.max_failures,
    }
    log.info(
        "%s: fitting %s concurrently (up to %d at once, %.2f CPU per worker)",
        phase,
        ", ".join(names),
        concurrent,
        per_worker,
    )
    tuner = tune.Tuner(
        tune.with_resources(net_trial, {"cpu": TRIAL_DRIVER_CPUS}),
        param_space={"net": tune.grid_search(list(names)), "common": common},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent),
        run_config=tune.RunConfig(
            name=f"{phase}-{int(time.time())}",
            storage_path=common["tune_dir"],
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    )
    grid = tuner.fit()
    out = {}
    for result in grid:
        if result.error:
            raise RuntimeError(f"{phase}: a net failed to train: {result.error}")
    for name in names:
        ckpt_dir = storage.join(common["checkpoints"], name.replace("+", "plus").replace("@", "-"))
        state = _latest_state(ckpt_dir)
        if state is None:
            raise RuntimeError(f"{phase}: net {name} left no checkpoint under {ckpt_dir}")
        out[name] = state
    return out


def _latest_state(run_path: str) -> dict[str, Any] | None:
    ckpts = [
        d
        for d in storage.listdir(run_path)
        if d.rstrip("/").rsplit("/", 1)[-1].startswith("checkpoint_")
    ]
    best = None
    for d in ckpts:
        uri = storage.join(d, "state.pt")
        if storage.exists(uri):
            state = torch.load(
                __import__("io").BytesIO(storage.read_bytes(uri)),
                map_location="cpu",
                weights_only=False,
            )
            if best is None or state["epoch"] > best["epoch"]:
                best = state
    return best


# ---------------------------------------------------------------- switch labels


def switch_label_table(cache_dir: str, taggers: dict[str, torch.nn.Module]) -> Any:
    """Each clip's frames labelled by the tagger fold that did not train on it (held-out
    clips by fold 0): 1 where its top class is one of the clip's tags."""
    import pyarrow as pa

    from factory.prepare import switch_labels

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


def _pool_refs(
    cache_dir: str, listing: Listing, preset: Preset, extra: dict[str, Any]
) -> dict[str, Any]:
    """Cross-term pool for training: bottom-k train-role clips per tag, from the cache."""
    import ray

    from factory.pool import PoolEntries, build_sketch
    from factory.prepare import feature_pool_entries

    w = preset.windows
    train_keys, _ = cached_keys(storage.join(cache_dir, "train"))
    records = [r for r in listing.records if r.key in train_keys]
    sketch = build_sketch(records, w.pool_clips, w.seed)
    wanted = {k for tag in sketch.heaps for k in sketch.candidates(tag)[: w.pool_clips]}
    clips = {
        c.key: c
        for c in rows_to_clips(read_cache_rows(storage.join(cache_dir, "train"), wanted), extra)
    }
    return {
        tag: ray.put(
            PoolEntries.concat(
                feature_pool_entries(clips[k], w.pool_groups)
                for k in sketch.candidates(tag)[: w.pool_clips]
                if k in clips
            )
        )
        for tag in sketch.heaps
    }


def run_train(opts: TrainOptions) -> dict[str, Any]:
    from factory.bundle import load_bundle
    from factory.raycluster import init_ray
    from factory.store import write_parquet_atomic
    from factory.weights import build_encoders

    t0 = time.time()
    preset = build_preset(opts)
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
        bundle = load_bundle(opts.out)
        return {"bundle": opts.out, "skipped": True, "metrics": bundle.metrics}
    init_ray(opts.address)
    run = run_dir(opts)
    storage.makedirs(run)
    checkpoints = storage.join(run, "checkpoints")
    if not storage.is_remote(checkpoints):
        checkpoints = os.path.abspath(checkpoints)
    tune_dir = (
        storage.join(run, "tune")
        if storage.is_remote(run)
        else os.path.abspath(storage.join(run, "tune"))
    )
    common: dict[str, Any] = {
        "preset": preset.to_dict(),
        "vocabulary": vocab,
        "checkpoints": checkpoints,
        "tune_dir": tune_dir,
        "inject_failure": opts.inject_failure,
        "failure_marker": storage.join(run, ".injected_failure"),
    }
    phases: dict[str, float] = {}

    def files(cache: str) -> dict[str, list[str]]:
        return {role: cache_files(storage.join(cache, role)) for role in ("train", "holdout")}

    # 0. encoders
    if needs_pretraining(preset) and not storage.exists(storage.join(run, "encoders.pt")):
        t = time.time()
        build_cache("raw", listing, storage.join(run, "raw"), preset, vocab, run, opts)
        states = fit_nets(
            ("encoders",), "encoders", {**common, "cache": files(storage.join(run, "raw"))}, opts
        )
        enc_state = {
            k.removeprefix("encoders."): v
            for k, v in states["encoders"]["net"].items()
            if k.startswith("encoders.")
        }
        storage.save_torch(enc_state, storage.join(run, "encoders.pt"))
        phases["encoders"] = time.time() - t
    # 1. features
    t = time.time()
    cache_stats = build_cache(
        "features", listing, storage.join(run, "features"), preset, vocab, run, opts
    )
    phases["features"] = time.time() - t
    # 2. switch labels
    t = time.time()
    labels_uri = storage.join(run, "switch_labels.parquet")
    if not opts.audio_tagger and not storage.exists(labels_uri):
        states = fit_nets(
            TAGGER_FOLDS,
            "audio-tagger",
            {**common, "cache": files(storage.join(run, "features"))},
            opts,
        )
        taggers = {}
        for name, state in states.items():
            net = build_nets(preset, len(vocab), ("audio",))["audio"]
            net.load_state_dict(state["net"])
            taggers[name] = net.eval()
        write_parquet_atomic(labels_uri, switch_label_table(storage.join(run, "features"), taggers))
    phases["switch_labels"] = time.time() - t
    switch_common = {**common, "switch_labels": None if opts.audio_tagger else labels_uri}
    extra = {}
    if not opts.audio_tagger:
        from factory.store import read_parquet

        lt = read_parquet(labels_uri)
        extra = {
            k: {"gate": torch.from_numpy(np.frombuffer(v, dtype=np.uint8).astype(np.float32))}
            for k, v in zip(lt["key"].to_pylist(), lt["labels"].to_pylist(), strict=True)
        }
    # 3. coarse nets
    t = time.time()
    pool = _pool_refs(storage.join(run, "features"), listing, preset, extra)
    coarse = fit_nets(
        COARSE_NETS,
        "coarse",
        {**switch_common, "pool": pool, "cache": files(storage.join(run, "features"))},
        opts,
    )
    for name, state in coarse.items():
        storage.save_torch(state["net"], storage.join(run, "nets", f"{name}.pt"))
    phases["coarse_nets"] = time.time() - t
    # 4. fine features, 5. fine nets
    t = time.time()
    build_cache("fine", listing, storage.join(run, "features_fine"), preset, vocab, run, opts)
    phases["fine_features"] = time.time() - t
    t = time.time()
    fine = fit_nets(
        FINE_NETS,
        "fine",
        {**switch_common, "cache": files(storage.join(run, "features_fine"))},
        opts,
    )
    phases["fine_nets"] = time.time() - t
    # 6. the bundle
    encoders = build_encoders(preset.encoders)
    if storage.exists(storage.join(run, "encoders.pt")):
        encoders.load_state_dict(storage.load_torch(storage.join(run, "encoders.pt")))
    nets = build_nets(preset, len(vocab))
    per_net = {}
    for name, state in {**coarse, **fine}.items():
        nets[name].load_state_dict(state["net"])
        hist = state["history"]
        per_net[name] = {
            "epochs": len(hist),
            "loss": hist[-1].get("loss") if hist else None,
            "accuracy": hist[-1].get("accuracy") if hist else None,
            "started_at": state["started_at"],
            "ended_at": hist[-1].get("ended_at") if hist else None,
            "history": [
                {k: v for k, v in h.items() if k in ("epoch", "loss", "accuracy", "epoch_s")}
                for h in hist
            ],
        }
    metrics = {
        "signature": sig,
        "nets": per_net,
        "clips": cache_stats["clips"],
        "rejects": cache_stats["rejects"],
        "phases_s": {k: round(v, 1) for k, v in phases.items()},
        "seconds": round(time.time() - t0, 1),
        "corpus": storage.redact(opts.corpus),
        "pretrained_encoders": needs_pretraining(preset),
    }
    bundle = Bundle(preset, vocab, encoders, nets, metrics)
    bundle.save(opts.out)
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
