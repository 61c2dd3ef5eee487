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
from factory.bundle import Bundle, build_nets
from factory.config import Preset, from_dict
from factory.config import preset as get_preset
from factory.corpus import ClipRecord, Listing, read_corpus
from factory.feature_cache import (
    batch_rows,
    cache_files,
    cache_row,
    cached_keys,
    encode_blob,
    holdout_keys,
    read_cache_rows,
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
    batch: dict[str, np.ndarray], cache_dir: str, vocabulary: list[str], holdout: list[str]
) -> dict[str, np.ndarray]:
    """Ray Data function: commit a batch of cache rows (train and holdout roles in their
    own folders) and the batch's rejects."""
    rows = {"train": [], "holdout": []}
    held_out = set(holdout)
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
        role = "holdout" if rec.key in held_out else "train"
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


def cache_todo(listing: Listing, cache_dir: str) -> tuple[list[ClipRecord], int, int]:
    """Clips still to cache (resumable: cached or rejected clips are skipped)."""
    done = set()
    for role in ("train", "holdout"):
        keys, _ = cached_keys(storage.join(cache_dir, role))
        done |= keys
    _, rejected = cached_keys(cache_dir)
    return (
        [r for r in listing.records if r.key not in done and r.key not in rejected],
        len(done),
        len(rejected),
    )


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


def cache_writer_kwargs(
    cache_dir: str, vocabulary: list[str], preset: Preset, records: list[ClipRecord]
) -> dict[str, Any]:
    """Arguments of :func:`write_cache_batch`; the held-out clips are chosen from the whole
    listing (not the clips still to do) so a resumed run holds out the same clips."""
    return {
        "cache_dir": cache_dir,
        "vocabulary": vocabulary,
        "holdout": holdout_keys(records, preset.train.holdout_fraction, preset.train.seed),
    }


# ---------------------------------------------------------------- the train loop


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train loop for one net (every rank runs it): data from the dataset shards,
    checkpoints through ``ray.train.report``; the training itself is
    :func:`factory.net_training.train_net`."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from factory.net_training import train_net

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location=device, weights_only=False)
    seed = from_dict(config["preset"]).train.seed
    train_shard = ray.train.get_dataset_shard("train")

    def train_rows(epoch: int) -> Any:
        for batch in train_shard.iter_batches(
            batch_size=CLIPS_PER_READ,
            batch_format="numpy",
            local_shuffle_buffer_size=SHUFFLE_CLIPS,
            local_shuffle_seed=seed + epoch,
        ):
            yield from batch_rows(batch)

    def val_rows() -> Any:
        shard = ray.train.get_dataset_shard("val")
        for batch in (
            shard.iter_batches(batch_size=CLIPS_PER_READ, batch_format="numpy")
            if shard is not None
            else []
        ):
            yield from batch_rows(batch)

    def save(state: dict[str, Any] | None, metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as d:
            if state is not None:
                torch.save(state, os.path.join(d, "state.pt"))
            ray.train.report(
                {k: v for k, v in metrics.items() if isinstance(v, int | float | str)},
                checkpoint=Checkpoint.from_directory(d) if state is not None else None,
            )

    has_val = "val" in config.get("datasets", [])
    train_net(
        config,
        train_rows,
        val_rows if has_val else None,
        device,
        state,
        save,
        rank,
        ray.train.torch.prepare_model if world > 1 else None,
    )


# ---------------------------------------------------------------- the Tune driver


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
    loop_config = {
        **{k: v for k, v in common.items() if k != "cache"},
        "net": name,
        "datasets": sorted(datasets),
    }
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
            storage_path=storage.ray_storage(common["checkpoints"])[0],
            storage_filesystem=storage.ray_storage(common["checkpoints"])[1],
            failure_config=FailureConfig(max_failures=common["max_failures"]),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    trainer.fit()


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


def net_dir(checkpoints: str, name: str) -> str:
    return storage.join(checkpoints, name.replace("+", "plus").replace("@", "-"))


def collect_states(
    names: tuple[str, ...], phase: str, checkpoints: str
) -> dict[str, dict[str, Any]]:
    out = {}
    for name in names:
        state = _latest_state(net_dir(checkpoints, name))
        if state is None:
            raise RuntimeError(
                f"{phase}: net {name} left no checkpoint under {net_dir(checkpoints, name)}"
            )
        out[name] = state
    return out


class RayExecutor:
    """Each phase on the Ray cluster: caches with Ray Data (decode tasks, an encoder actor
    pool, writer tasks), nets with one TorchTrainer each under a Tune grid."""

    name = "ray"

    def __init__(self, opts: TrainOptions) -> None:
        from factory.raycluster import init_ray

        self.opts = opts
        init_ray(opts.address)

    def put_pool(self, entries: dict[str, Any]) -> dict[str, Any]:
        import ray

        return {tag: ray.put(e) for tag, e in entries.items()}

    def build_cache(
        self,
        mode: str,
        listing: Listing,
        cache_dir: str,
        preset: Preset,
        vocab: list[str],
        run: str,
    ) -> dict[str, int]:
        import ray
        from ray.data import ActorPoolStrategy

        from factory.raycluster import cluster_cpus, cluster_gpus

        todo, done, rejected = cache_todo(listing, cache_dir)
        if not todo:
            log.info("%s cache complete (%d clips, %d rejects)", mode, done, rejected)
            return {"clips": done, "rejects": rejected}
        gpus = cluster_gpus()
        actors = self.opts.encode_actors or (
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
            fn_constructor_kwargs=cache_actor_kwargs(mode, preset, vocab, run, self.opts),
        )
        ds = ds.map_batches(
            write_cache_batch,
            batch_size=8,
            num_cpus=0.25,
            fn_kwargs=cache_writer_kwargs(cache_dir, vocab, preset, listing.records),
        )
        t0 = time.time()
        n = bad = 0
        for row in ds.iter_rows():
            n += 1
            bad += row["status"] != OK
        log.info("%s cache: %d clips in %.1f s (%d rejected)", mode, n, time.time() - t0, bad)
        return {"clips": done + n - bad, "rejects": rejected + bad}

    def fit_nets(
        self, names: tuple[str, ...], phase: str, common: dict[str, Any]
    ) -> dict[str, dict[str, Any]]:
        """Fit ``names`` concurrently (one TorchTrainer each under a Tune grid)."""
        from ray import tune

        from factory.raycluster import cluster_cpus

        opts = self.opts
        # Sizing that cannot deadlock: one CPU stays free for the Ray Data tasks that
        # feed the trainers (on 2 CPUs, trainers that took every CPU starved their own
        # data); the rest is shared by the nets of the phase, so all of them run at once.
        cpus = cluster_cpus()
        trainer_cpus = max(cpus - DATA_RESERVE_CPUS, 0.1 * len(names))
        per_worker = opts.cpus_per_worker or max(
            0.01, round(trainer_cpus / (len(names) * max(opts.workers_per_net, 1)) - 0.005, 3)
        )
        concurrent = opts.max_concurrent or max(
            1, min(len(names), int(trainer_cpus // (per_worker * max(opts.workers_per_net, 1))))
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
                storage_path=storage.ray_storage(common["tune_dir"])[0],
                storage_filesystem=storage.ray_storage(common["tune_dir"])[1],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        )
        for result in tuner.fit():
            if result.error:
                raise RuntimeError(f"{phase}: a net failed to train: {result.error}")
        return collect_states(names, phase, common["checkpoints"])


class LocalExecutor:
    """Each phase in this process, plain PyTorch, no Ray (for a GPU box without Ray, and
    for fast tests): the same cache files, the same per-net training
    (:func:`factory.net_training.train_net`), the same checkpoint folders, one net
    after another."""

    name = "local"

    def __init__(self, opts: TrainOptions) -> None:
        self.opts = opts

    def put_pool(self, entries: dict[str, Any]) -> dict[str, Any]:
        return entries

    def build_cache(
        self,
        mode: str,
        listing: Listing,
        cache_dir: str,
        preset: Preset,
        vocab: list[str],
        run: str,
    ) -> dict[str, int]:
        from factory.pipeline import decode_row, to_batch

        todo, done, rejected = cache_todo(listing, cache_dir)
        if not todo:
            return {"clips": done, "rejects": rejected}
        actor = CacheActor(**cache_actor_kwargs(mode, preset, vocab, run, self.opts))
        bad = 0
        for start in range(0, len(todo), 8):
            rows = [
                decode_row(
                    {"key": r.key, "record": json.dumps(r.to_row())},
                    preset.frames,
                    preset.spectrogram,
                )
                for r in todo[start : start + 8]
            ]
            out = actor(to_batch(rows))
            write_cache_batch(out, **cache_writer_kwargs(cache_dir, vocab, preset, listing.records))
            bad += int((out["status"] != OK).sum())
        log.info("%s cache: %d clips (%d rejected)", mode, len(todo), bad)
        return {"clips": done + len(todo) - bad, "rejects": rejected + bad}

    def fit_nets(
        self, names: tuple[str, ...], phase: str, common: dict[str, Any]
    ) -> dict[str, dict[str, Any]]:
        from factory.encoding import resolve_device
        from factory.net_training import train_net
        from factory.store import read_parquet

        device = resolve_device("auto")
        files = common["cache"]
        for name in names:
            folder = net_dir(common["checkpoints"], name)
            storage.makedirs(folder)

            def train_rows(epoch: int) -> Any:
                for f in files["train"]:
                    yield from read_parquet(f).to_pylist()

            def val_rows() -> Any:
                for f in files["holdout"]:
                    yield from read_parquet(f).to_pylist()

            def save(
                state: dict[str, Any] | None, metrics: dict[str, Any], folder: str = folder
            ) -> None:
                if state is None:
                    return
                storage.save_torch(
                    state,
                    storage.join(folder, f"checkpoint_local_{state['epoch']:05d}", "state.pt"),
                )
                for old in sorted(d for d in storage.listdir(folder) if "checkpoint_local_" in d)[
                    :-2
                ]:
                    storage.remove(old)

            config = {**{k: v for k, v in common.items() if k != "cache"}, "net": name}
            log.info("%s: fitting %s in this process", phase, name)
            train_net(
                config,
                train_rows,
                val_rows if files["holdout"] else None,
                device,
                _latest_state(folder),
                save,
            )
        return collect_states(names, phase, common["checkpoints"])


def make_pool(
    cache_dir: str, records: list[ClipRecord], preset: Preset, extra: dict[str, Any]
) -> dict[str, Any]:
    """Cross-term pool for training: the bottom-k train-role clips per tag (see
    :mod:`factory.pool`), their 3-frame groups' features read from the cache."""
    from factory.pool import PoolEntries, build_sketch
    from factory.prepare import feature_pool_entries

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
    from factory.bundle import load_bundle
    from factory.net_training import load_switch_labels
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
        return {"bundle": opts.out, "skipped": True, "metrics": load_bundle(opts.out).metrics}
    executor: Any = LocalExecutor(opts) if local else RayExecutor(opts)
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

    def timed(phase: str, t: float) -> None:
        phases[phase] = time.time() - t
        log.info("phase %s done in %.0f s", phase, phases[phase])

    # 0. encoders
    if needs_pretraining(preset) and not storage.exists(storage.join(run, "encoders.pt")):
        t = time.time()
        executor.build_cache("raw", listing, storage.join(run, "raw"), preset, vocab, run)
        states = executor.fit_nets(
            ("encoders",), "encoders", {**common, "cache": files(storage.join(run, "raw"))}
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
    cache_stats = executor.build_cache(
        "features", listing, storage.join(run, "features"), preset, vocab, run
    )
    timed("features", t)
    # 2. switch labels
    t = time.time()
    labels_uri = storage.join(run, "switch_labels.parquet")
    if not opts.audio_tagger and not storage.exists(labels_uri):
        states = executor.fit_nets(
            TAGGER_FOLDS, "audio-tagger", {**common, "cache": files(storage.join(run, "features"))}
        )
        taggers = {}
        for name, state in states.items():
            net = build_nets(preset, len(vocab), ("audio",))["audio"]
            net.load_state_dict(state["net"])
            taggers[name] = net.eval()
        write_parquet_atomic(labels_uri, switch_label_table(storage.join(run, "features"), taggers))
    timed("switch_labels", t)
    switch_common = {**common, "switch_labels": None if opts.audio_tagger else labels_uri}
    extra = load_switch_labels(switch_common["switch_labels"])
    # 3. coarse nets
    t = time.time()
    pool = executor.put_pool(
        make_pool(storage.join(run, "features"), listing.records, preset, extra)
    )
    coarse = executor.fit_nets(
        COARSE_NETS,
        "coarse",
        {**switch_common, "pool": pool, "cache": files(storage.join(run, "features"))},
    )
    for name, state in coarse.items():
        storage.save_torch(state["net"], storage.join(run, "nets", f"{name}.pt"))
    timed("coarse_nets", t)
    # 4. fine features, 5. fine nets
    t = time.time()
    executor.build_cache("fine", listing, storage.join(run, "features_fine"), preset, vocab, run)
    timed("fine_features", t)
    t = time.time()
    fine = executor.fit_nets(
        FINE_NETS, "fine", {**switch_common, "cache": files(storage.join(run, "features_fine"))}
    )
    timed("fine_nets", t)
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
