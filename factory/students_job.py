"""The students (Sec. 5): distil STA, STA+short and STA+long from a pseudo-fixation
dataset, and predict tag-free maps for any video with the final fusion (Eq. 21).

Distil: Ray Data decodes the dataset's clips from the corpus and encodes each frame
once (the bundle's frozen encoders; the image trunk at the fine size as the paper's
students read 356 x 356 frames, the dilated VGG16 at the coarse size) next to the clip's
pseudo-fixation maps, into a cache; the three students then train concurrently, one
TorchTrainer each (the train job's Tune-driver pattern), or in-process with ``local``.
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
from models.registry import STUDENTS, InputSpec, build_student

log = logging.getLogger(__name__)

STUDENT_SPEC = InputSpec("plus", None, 3, True, True, ("short", "long"))
TERM = {"STA+short": "short", "STA+long": "long"}
FUSION_DEFAULT = "eq21"


# ----------------------------------------------------------------- features


def student_features(
    encoder: Any, switch: torch.nn.Module, clip: DecodedClip
) -> dict[str, torch.Tensor]:
    """Per-frame student inputs: F3, F4, F5 at the fine size, the dilated VGG16 at the
    coarse size, audio vectors, the audio switch's decisions."""
    from factory.audio import frame_windows
    from factory.encoding import resize_square

    p = encoder.preset
    with torch.inference_mode():
        frames = encoder.frames(clip.frames)
        img = encoder.images(resize_square(frames, p.frames.fine_size), plus=False, kind="fine")
        plus = encoder.images(
            resize_square(frames, p.frames.coarse_size), plus=True, kind="coarse"
        )["plus"]
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
    out_size: tuple[int, int]

    @property
    def settings(self) -> WindowSettings:
        return WindowSettings(
            self.preset.cgcn.nodes, self.preset.windows.short_radius, self.preset.windows.seed
        )

    def examples(
        self, clip: Any, epoch: int, targets: np.ndarray
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        inputs, idx = student_inputs(self.name, clip.feats, targets, clip.key, self.settings, epoch)
        return [(inputs, clip.feats["maps"][torch.as_tensor(idx)])]

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
        t = int(feats["gate"].shape[0])
        size = (self.preset.frames.height, self.preset.frames.width)
        targets = np.arange(t)
        maps = {}
        for name, net in self.students.items():
            outs = []
            for start in range(0, t, self.encoder.chunk):
                part = targets[start : start + self.encoder.chunk]
                inputs, _ = student_inputs(name, feats, part, clip.key, self.settings)
                with self.encoder.autocast():
                    o = torch.sigmoid(net(inputs, size=size).float())
                outs.append(o if name == "STA" else o[:, 0])
            maps[name] = torch.cat(outs)
        from factory.equations import minmax_normalize

        fused = fuse({k: minmax_normalize(v) for k, v in maps.items()}, self.fusion)
        return {"map": fused.cpu().numpy(), **{k: v.cpu().numpy() for k, v in maps.items()}}


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
        net = build_student(name, preset.encoders, meta["graph_channels"], preset.cgcn)
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
    workers_per_student: int = 1
    gpus_per_student: float = 0.0


class DistillCacheActor:
    """Decoded clip + its pseudo-fixation maps -> a student cache row."""

    def __init__(self, bundle_uri: str, pseudo: str, preset_json: str) -> None:
        from factory.bundle import load_bundle
        from factory.encoding import FrameEncoder

        bundle = load_bundle(bundle_uri, verify=False)
        self.preset = from_dict(json.loads(preset_json))
        self.encoder = FrameEncoder(bundle.encoders, self.preset)
        self.switch = bundle.net("switch").to(self.encoder.device).eval()
        self.index = pseudo_index(pseudo)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from factory.feature_cache import encode_blob
        from factory.pipeline import OK, deserialize_clip, from_batch, to_batch

        out = []
        for row in from_batch(batch):
            if row["status"] == OK:
                clip = deserialize_clip(row["key"], row["payload"])
                feats = student_features(self.encoder, self.switch, clip)
                maps = pseudo_maps(self.index[row["key"]], row["key"], clip.times)
                feats["maps"] = torch.from_numpy(maps.astype(np.float32) / 255.0)
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


def pseudo_maps(shard: str, key: str, times: np.ndarray) -> np.ndarray:
    """A clip's pseudo-fixation maps (T, H, W) uint8 from its shard, matched to ``times``."""
    from factory.dataset import maps_from_column
    from factory.store import read_parquet

    t = read_parquet(shard, ["video_id", "time_s", "map"])
    t = t.filter(pa.compute.equal(t["video_id"], key))
    ptimes = t["time_s"].to_numpy()
    maps = maps_from_column(t["map"])
    idx = [int(np.argmin(np.abs(ptimes - x))) for x in times]
    return maps[idx]


def run_distill(opts: DistillOptions) -> dict[str, Any]:
    from factory.bundle import load_bundle
    from factory.train_job import cache_files

    t0 = time.time()
    run_record = storage.read_json(storage.join(opts.pseudo, "run.json"))
    bundle_uri = opts.bundle or run_record["arguments"]["bundle"]
    bundle = load_bundle(bundle_uri)
    preset = bundle.preset
    if opts.epochs is not None:
        preset = preset.replace(train=dataclasses.replace(preset.train, epochs=opts.epochs))
    labelled = set(pseudo_index(opts.pseudo))
    listing = read_corpus(opts.corpus)
    records = [r for r in listing.records if r.key in labelled]
    if not records:
        raise ValueError(
            f"no clip of {opts.corpus!r} is in the pseudo-fixation dataset {opts.pseudo!r}; pass the corpus it was labelled from"
        )
    run = storage.join(opts.out, "_run")
    cache = storage.join(run, "features")
    executor = _executor(opts)
    stats = executor.build_student_cache(records, cache, preset, bundle_uri, opts.pseudo)
    files = {role: cache_files(storage.join(cache, role)) for role in ("train", "holdout")}
    size = (preset.frames.height, preset.frames.width)
    common = {
        "preset": preset.to_dict(),
        "graph_channels": bundle.num_classes,
        "out_size": list(size),
        "checkpoints": _abs(storage.join(run, "checkpoints")),
        "tune_dir": _abs(storage.join(run, "tune")),
        "cache": files,
    }
    states = executor.fit_students(common)
    students = {}
    for name in STUDENTS:
        net = build_student(name, preset.encoders, bundle.num_classes, preset.cgcn)
        net.load_state_dict(states[name]["net"])
        students[name] = net
    history = {
        n: [
            {k: v for k, v in h.items() if k in ("epoch", "loss", "accuracy")}
            for h in states[n]["history"]
        ]
        for n in STUDENTS
    }
    meta = {
        "format": 1,
        "graph_channels": bundle.num_classes,
        "fusion": opts.fusion,
        "teacher": {"bundle": storage.redact(bundle_uri), "fingerprint": bundle.fingerprint()},
        "pseudo": storage.redact(opts.pseudo),
        "history": history,
        "clips": stats,
        "seconds": round(time.time() - t0, 1),
    }
    save_students(opts.out, preset, bundle.encoders, students, bundle.net("switch"), meta)
    return meta


def _abs(uri: str) -> str:
    return uri if storage.is_remote(uri) else os.path.abspath(uri)


def _executor(opts: DistillOptions) -> Any:
    return LocalStudentExecutor(opts) if opts.local else RayStudentExecutor(opts)


def _student_train(
    config: dict[str, Any],
    train_rows: Any,
    val_rows: Any,
    device: torch.device,
    resume: dict | None,
    save: Any,
    rank: int = 0,
    wrap: Any = None,
) -> None:
    """One student's training (both executors): the train job's loop with StudentTask."""
    from factory.feature_cache import rows_to_clips
    from factory.net_training import ClipSource
    from factory.training import fit

    name = config["net"]
    preset = from_dict(config["preset"])
    torch.manual_seed(preset.train.seed)
    net = build_student(name, preset.encoders, config["graph_channels"], preset.cgcn).to(device)
    optimizer = torch.optim.SGD(
        net.parameters(),
        lr=preset.train.student_lr,
        momentum=preset.train.momentum,
        nesterov=True,
        weight_decay=preset.train.student_weight_decay,
    )
    task = StudentTask(name, preset, tuple(config["out_size"]))
    start, history, started_at = 0, [], time.time()
    if resume:
        net.load_state_dict(resume["net"])
        optimizer.load_state_dict(resume["optimizer"])
        start, history, started_at = resume["epoch"] + 1, resume["history"], resume["started_at"]
    clips = ClipSource(name, train_rows, {}, preset.train.seed)
    val_cache: list = []

    def val_clips() -> list:
        if not val_cache and val_rows is not None:
            val_cache.extend(rows_to_clips(val_rows()))
        return val_cache

    def on_epoch(epoch: int, metrics: dict, _n: Any, _o: Any) -> None:
        metrics = {**metrics, "started_at": started_at, "ended_at": time.time(), "net": name}
        if "accuracy" in metrics:
            metrics["pseudo_cc"] = metrics.pop("accuracy")
            metrics["accuracy"] = metrics["pseudo_cc"]
        history.append(metrics)
        save(
            {
                "net": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "history": history,
                "started_at": started_at,
            }
            if rank == 0
            else None,
            metrics,
        )

    fit(
        wrap(net) if wrap else net,
        task,
        clips,
        val_clips if val_rows is not None else None,
        preset.train.epochs,
        0.0,
        start_epoch=start,
        optimizer=optimizer,
        on_epoch=on_epoch,
    )


def student_train_loop(config: dict[str, Any]) -> None:
    """Ray Train loop of a student (the Ray twin of LocalStudentExecutor.fit_students)."""
    import tempfile

    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    from factory.feature_cache import batch_rows

    ctx = ray.train.get_context()
    device = ray.train.torch.get_device()
    resume = None
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            resume = torch.load(
                os.path.join(d, "state.pt"), map_location=device, weights_only=False
            )
    shard = ray.train.get_dataset_shard("train")

    def train_rows(epoch: int) -> Any:
        for b in shard.iter_batches(
            batch_size=2,
            batch_format="numpy",
            local_shuffle_buffer_size=8,
            local_shuffle_seed=epoch,
        ):
            yield from batch_rows(b)

    def val_rows() -> Any:
        vs = ray.train.get_dataset_shard("val")
        for b in vs.iter_batches(batch_size=2, batch_format="numpy"):
            yield from batch_rows(b)

    def save(state: dict | None, metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as d:
            if state is not None:
                torch.save(state, os.path.join(d, "state.pt"))
            ray.train.report(
                {k: v for k, v in metrics.items() if isinstance(v, int | float | str)},
                checkpoint=Checkpoint.from_directory(d) if state is not None else None,
            )

    has_val = "val" in config.get("datasets", [])
    _student_train(
        config,
        train_rows,
        val_rows if has_val else None,
        device,
        resume,
        save,
        ctx.get_world_rank(),
        ray.train.torch.prepare_model if ctx.get_world_size() > 1 else None,
    )


def student_trial(config: dict[str, Any]) -> None:
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from factory.train_job import DATA_TASK_CPUS

    common, name = config["common"], config["net"]
    datasets = {
        split: ray.data.read_parquet(
            common["cache"][role], ray_remote_args={"num_cpus": DATA_TASK_CPUS}
        )
        for split, role in (("train", "train"), ("val", "holdout"))
        if common["cache"][role]
    }
    resources = {"CPU": common["cpus_per_worker"]}
    if common["gpus"] > 0:
        resources["GPU"] = common["gpus"] / common["workers"]
    TorchTrainer(
        student_train_loop,
        train_loop_config={
            **{k: v for k, v in common.items() if k != "cache"},
            "net": name,
            "datasets": sorted(datasets),
        },
        scaling_config=ScalingConfig(
            num_workers=common["workers"],
            use_gpu=common["gpus"] > 0,
            resources_per_worker=resources,
        ),
        run_config=RunConfig(
            name=name.replace("+", "plus"),
            storage_path=storage.ray_storage(common["checkpoints"])[0],
            storage_filesystem=storage.ray_storage(common["checkpoints"])[1],
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[TuneReportCallback()],
        ),
        datasets=datasets,
        dataset_config=DataConfig(datasets_to_split=["train"]),
    ).fit()


class RayStudentExecutor:
    def __init__(self, opts: DistillOptions) -> None:
        from factory.raycluster import init_ray

        self.opts = opts
        init_ray(opts.address)

    def build_student_cache(
        self, records: list[ClipRecord], cache: str, preset: Preset, bundle_uri: str, pseudo: str
    ) -> dict[str, int]:
        import ray
        from ray.data import ActorPoolStrategy

        from factory.corpus import Listing
        from factory.pipeline import OK, decode_batch
        from factory.raycluster import cluster_cpus, cluster_gpus
        from factory.train_job import cache_todo, cache_writer_kwargs, write_cache_batch

        todo, done, rejected = cache_todo(Listing(records), cache)
        if todo:
            gpus = cluster_gpus()
            rows = [{"key": r.key, "record": json.dumps(r.to_row())} for r in todo]
            ds = ray.data.from_items(rows, override_num_blocks=len(rows))
            ds = ds.map_batches(
                decode_batch,
                batch_size=1,
                num_cpus=0.5,
                fn_kwargs={"preset_json": preset.to_json()},
            )
            ds = ds.map_batches(
                DistillCacheActor,
                batch_size=1,
                compute=ActorPoolStrategy(
                    size=max(1, int(gpus)) if gpus >= 1 else max(1, int(cluster_cpus()) - 1)
                ),
                num_cpus=1.0,
                num_gpus=1.0 if gpus >= 1 else 0.0,
                fn_constructor_kwargs={
                    "bundle_uri": bundle_uri,
                    "pseudo": pseudo,
                    "preset_json": preset.to_json(),
                },
            )
            vocab = sorted({t for r in records for t in r.tags})
            ds = ds.map_batches(
                write_cache_batch,
                batch_size=8,
                num_cpus=0.25,
                fn_kwargs=cache_writer_kwargs(cache, vocab, preset, records),
            )
            bad = sum(row["status"] != OK for row in ds.iter_rows())
            done, rejected = done + len(todo) - bad, rejected + bad
        return {"clips": done, "rejects": rejected}

    def fit_students(self, common: dict[str, Any]) -> dict[str, dict[str, Any]]:
        from ray import tune

        from factory.raycluster import cluster_cpus
        from factory.train_job import DATA_RESERVE_CPUS, TRIAL_DRIVER_CPUS, collect_states

        cpus = cluster_cpus()
        per_worker = max(
            0.05,
            round(
                (max(cpus - DATA_RESERVE_CPUS, 0.3))
                / (len(STUDENTS) * self.opts.workers_per_student)
                - 0.005,
                3,
            ),
        )
        common = {
            **common,
            "cpus_per_worker": per_worker,
            "workers": self.opts.workers_per_student,
            "gpus": self.opts.gpus_per_student,
        }
        log.info(
            "distil: fitting %s concurrently (%.2f CPU per worker)", ", ".join(STUDENTS), per_worker
        )
        tuner = tune.Tuner(
            tune.with_resources(student_trial, {"cpu": TRIAL_DRIVER_CPUS}),
            param_space={"net": tune.grid_search(list(STUDENTS)), "common": common},
            run_config=tune.RunConfig(
                name=f"students-{int(time.time())}",
                storage_path=storage.ray_storage(common["tune_dir"])[0],
                storage_filesystem=storage.ray_storage(common["tune_dir"])[1],
                verbose=0,
            ),
        )
        for r in tuner.fit():
            if r.error:
                raise RuntimeError(f"a student failed to train: {r.error}")
        return collect_states(STUDENTS, "students", common["checkpoints"])


class LocalStudentExecutor:
    def __init__(self, opts: DistillOptions) -> None:
        self.opts = opts

    def build_student_cache(
        self, records: list[ClipRecord], cache: str, preset: Preset, bundle_uri: str, pseudo: str
    ) -> dict[str, int]:
        from factory.corpus import Listing
        from factory.pipeline import OK, decode_row, to_batch
        from factory.train_job import cache_todo, cache_writer_kwargs, write_cache_batch

        todo, done, rejected = cache_todo(Listing(records), cache)
        if not todo:
            return {"clips": done, "rejects": rejected}
        actor = DistillCacheActor(bundle_uri, pseudo, preset.to_json())
        vocab = sorted({t for r in records for t in r.tags})
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
            write_cache_batch(out, **cache_writer_kwargs(cache, vocab, preset, records))
            bad += int((out["status"] != OK).sum())
        return {"clips": done + len(todo) - bad, "rejects": rejected + bad}

    def fit_students(self, common: dict[str, Any]) -> dict[str, dict[str, Any]]:
        from factory.encoding import resolve_device
        from factory.store import read_parquet
        from factory.train_job import _latest_state, collect_states, net_dir

        for name in STUDENTS:
            folder = net_dir(common["checkpoints"], name)

            def rows(epoch: int, role: str = "train") -> Any:
                for f in common["cache"][role]:
                    yield from read_parquet(f).to_pylist()

            def save(state: dict | None, metrics: dict, folder: str = folder) -> None:
                if state is not None:
                    storage.save_torch(
                        state,
                        storage.join(folder, f"checkpoint_local_{state['epoch']:05d}", "state.pt"),
                    )

            val = (lambda: rows(0, "holdout")) if common["cache"]["holdout"] else None
            _student_train(
                {**common, "net": name},
                rows,
                val,
                resolve_device("auto"),
                _latest_state(folder),
                save,
            )
        return collect_states(STUDENTS, "students", common["checkpoints"])


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
    key: str, times: np.ndarray, maps: dict[str, np.ndarray], source: str, all_maps: bool
) -> pa.Table:
    from factory.dataset import map_array, map_type

    t, h, w = maps["map"].shape
    cols: dict[str, pa.Array] = {
        "video_id": pa.array([key] * t, pa.string()),
        "frame_index": pa.array(np.arange(t, dtype=np.int32)),
        "time_s": pa.array(np.asarray(times, np.float64)),
        "height": pa.array(np.full(t, h, np.int32)),
        "width": pa.array(np.full(t, w, np.int32)),
        "map": map_array(maps["map"]),
        "source": pa.array([source] * t, pa.string()),
    }
    fields = [
        ("video_id", pa.string()),
        ("frame_index", pa.int32()),
        ("time_s", pa.float64()),
        ("height", pa.int32()),
        ("width", pa.int32()),
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
            predictions_table(clip.key, clip.times, maps, storage.redact(record.uri), self.all_maps)
        ), {}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from factory.pipeline import from_batch, model_row, to_batch

        return to_batch([model_row(r, self.process) for r in from_batch(batch)])


def run_predict(opts: PredictOptions) -> dict[str, Any]:
    import ray
    from ray.data import ActorPoolStrategy

    from factory.label_job import write_label_batch
    from factory.pipeline import OK, decode_batch
    from factory.raycluster import cluster_cpus, cluster_gpus, init_ray
    from factory.store import ShardStore

    t0 = time.time()
    init_ray(opts.address)
    meta, preset, *_ = load_students(opts.students)
    listing = video_listing(opts.videos)
    store = ShardStore(opts.out)
    storage.makedirs(opts.out)
    committed = store.scan()
    if listing.rejects:
        store.write_rejects([r for r in listing.rejects if r.input not in committed.keys])
    todo = [r for r in listing.records if r.key not in committed.keys]
    frames = 0
    if todo:
        gpus = cluster_gpus()
        actors = opts.actors or (
            max(1, int(gpus)) if gpus >= 1 else max(1, int(cluster_cpus()) - 1)
        )
        rows = [{"key": r.key, "record": json.dumps(r.to_row())} for r in todo]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        ds = ds.map_batches(
            decode_batch, batch_size=1, num_cpus=0.5, fn_kwargs={"preset_json": preset.to_json()}
        )
        ds = ds.map_batches(
            PredictActor,
            batch_size=1,
            compute=ActorPoolStrategy(size=actors),
            num_cpus=1.0,
            num_gpus=1.0 if gpus >= 1 else 0.0,
            fn_constructor_kwargs={
                "students": opts.students,
                "device": opts.device,
                "dtype": opts.dtype,
                "fusion": opts.fusion,
                "all_maps": opts.all_maps,
            },
        )
        ds = ds.map_batches(
            write_label_batch, batch_size=8, num_cpus=0.25, fn_kwargs={"root": opts.out}
        )
        for row in ds.iter_rows():
            if row["status"] == OK:
                frames += int(row["n_frames"])
            else:
                log.warning("reject %s: %s", row["key"], row["reason"])
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
