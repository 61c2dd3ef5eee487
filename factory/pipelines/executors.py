"""Where the train and distil jobs' work runs: building a feature cache (decode, an
encoder actor, commit) and fitting nets, on a Ray cluster or in this process.

:class:`RayExecutor` builds a cache with Ray Data (decode tasks, an actor pool of the
caller's cache actor, writer tasks) and fits the nets of a phase concurrently: one
TorchTrainer for the phase whose workers share its nets out, or one TorchTrainer each,
each ``fit()`` called from a thread of the driver (Ray Train's controller is an actor;
``fit()`` only waits on it); :func:`trainer_groups` says which. :class:`LocalExecutor` does the same
in this process with plain PyTorch (a GPU box without Ray, fast tests): the same cache
files, the same per-net training (:func:`factory.train.nets.train_net`, which serves the
classification nets, the encoder pretraining and the students alike) and the same
checkpoint folders, so a run started one way resumes the other way.

Both take an :class:`factory.config.ExecutionConfig` (the train, distil and ablate jobs'
options carry one); :class:`RayExecutor` also the cluster's address.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    DataConfig,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from ray.train.torch import TorchTrainer

from factory.config import ExecutionConfig, Preset
from factory.io import storage
from factory.io.corpus import ClipRecord, Listing
from factory.io.store import read_parquet
from factory.method.encoding import resolve_device
from factory.pipelines.cluster import cluster_cpus, cluster_gpus, init_ray
from factory.pipelines.stages import (
    OK,
    decode_row,
    decoded_through_actors,
    default_actors,
    from_batch,
    row_reject,
    to_batch,
)
from factory.train.feature_cache import (
    batch_rows,
    cache_row,
    cached_keys,
    holdout_keys,
    write_cache,
)
from factory.train.nets import WORKER_CACHE_MB, FitSpec, scored_on_holdout, train_net

log = logging.getLogger(__name__)

CLIPS_PER_READ = 4  # cache rows per Ray Data batch in the trainers
SHUFFLE_CLIPS = 16  # local shuffle buffer of the trainers' data iterators
DATA_TASK_CPUS = 0.05  # read tasks of the trainers' datasets: tiny, so trainers never starve them
DATA_RESERVE_CPUS = 1.0  # kept free for the trainers' Ray Data tasks
KEEP_CHECKPOINTS = 2  # per net, in both executors
# A net whose TorchTrainer failed as a whole (beyond the worker restarts of its
# FailureConfig) is started once more; it resumes from its newest checkpoint.
TRAINER_RESTARTS = 1


# ---------------------------------------------------------------- the feature cache


def write_cache_batch(
    batch: dict[str, np.ndarray], cache_dir: str, vocabulary: list[str], holdout: list[str]
) -> dict[str, np.ndarray]:
    """Ray Data function: commit a batch of cache rows (train and holdout roles in their
    own folders) and the batch's rejects."""
    rows = {"train": [], "holdout": []}
    held_out = set(holdout)
    rejects = []
    for r in from_batch(batch):
        if r["status"] != OK:
            rejects.append(row_reject(r))
            continue
        rec = ClipRecord.from_row(json.loads(r["record"]))
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


@dataclass(frozen=True)
class TrainerSizing:
    """A phase's TorchTrainers on the Ray executor: workers per net, their CPUs and
    GPUs, how many worker failures a trainer survives, and how the workers read the cache
    (``files`` or ``ray_data``)."""

    cpus_per_worker: float
    workers_per_net: int
    gpus_per_net: float
    max_failures: int
    data: str = "ray_data"


def trainer_data(choice: str, files: list[str], workers: int) -> str:
    """How the TorchTrainers of a phase read their feature cache. ``ray_data``: a Ray Data
    dataset per trainer, split evenly over its workers and streamed with prefetching (a
    large cache, several workers). ``files``: the one worker reads the cache's Parquet
    files itself, in a fresh order each epoch. ``auto`` (the default) picks ``files`` for a
    one-worker net whose cache fits the worker's in-memory clip cache (``WORKER_CACHE_MB``:
    read once, then kept), where a Ray Data pipeline, its split coordinator and its read
    tasks cost more than the reading (on 2 CPUs the seven coarse nets' phase took 247 s
    through Ray Data and 117 s reading files, bench/RESULTS.md), else ``ray_data``."""
    if choice != "auto":
        return choice
    if workers > 1:
        return "ray_data"
    total = sum(storage.size(f) for f in files)
    return "files" if total <= WORKER_CACHE_MB * 2**20 else "ray_data"


# ---------------------------------------------------------------- the train loop


def dataset_rows(seed: int) -> tuple[Any, Any]:
    """A Ray Train worker's ``train_rows(epoch)`` and ``val_rows()`` over its shards of
    the trainer's ``train`` and ``val`` datasets."""

    def train_rows(epoch: int) -> Any:
        for batch in ray.train.get_dataset_shard("train").iter_batches(
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

    return train_rows, val_rows


def file_rows(files: dict[str, list[str]], seed: int | None) -> tuple[Any, Any]:
    """``train_rows(epoch)`` (the training files in a fresh order each epoch drawn from
    ``seed``, or in file order with ``seed=None``) and ``val_rows()`` read straight from
    the cache's Parquet files."""

    def train_rows(epoch: int) -> Any:
        n = len(files["train"])
        order = range(n) if seed is None else np.random.default_rng([seed, epoch, 3]).permutation(n)
        for i in order:
            yield from read_parquet(files["train"][i]).to_pylist()

    def val_rows() -> Any:
        for f in files["holdout"]:
            yield from read_parquet(f).to_pylist()

    return train_rows, val_rows


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train loop for one net (every rank runs it): data from its dataset shards or,
    with ``files`` (:func:`trainer_data`), from the cache files; checkpoints through
    ``ray.train.report``; the training itself is
    :func:`factory.train.nets.train_net`."""

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location=device, weights_only=False)
    spec: FitSpec = config["spec"]
    seed = spec.preset.train.seed
    if config["data"] == "files":  # see trainer_data: this one worker reads the files
        train_rows, val_rows = file_rows(config["files"], seed)
    else:
        train_rows, val_rows = dataset_rows(seed)

    def save(state: dict[str, Any] | None, metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as d:
            if state is not None:
                torch.save(state, os.path.join(d, "state.pt"))
            ray.train.report(
                {k: v for k, v in metrics.items() if isinstance(v, int | float | str)},
                checkpoint=Checkpoint.from_directory(d) if state is not None else None,
            )

    has_val = config["val"]
    train_net(
        config["net"],
        spec,
        train_rows,
        val_rows if has_val else None,
        device,
        state,
        save,
        rank,
        ray.train.torch.prepare_model if world > 1 else None,
    )


# ---------------------------------------------------------------- the trainers


def trainer_groups(choice: str, data: str, workers: int) -> str:
    """How a phase's nets map to TorchTrainers: ``phase`` (one trainer for the phase, each
    of its workers fitting whole nets in turn) or ``net`` (one trainer per net). ``auto``
    (the default) picks ``phase`` where every net has one worker that reads the cache
    files itself (``data == "files"``): each TorchTrainer costs a controller actor, its
    worker processes and its polling, which on a small job outweigh the training (seven
    nets of a trivial loop on 2 CPUs: 79 CPU-s as seven trainers, 29 as one trainer of
    seven workers, bench/RESULTS.md). Nets that stream a Ray Data dataset split over
    several workers keep a trainer each."""
    if choice != "auto":
        return choice
    return "phase" if data == "files" and workers == 1 else "net"


def net_files(spec: FitSpec, name: str) -> dict[str, list[str]]:
    """A net's cache files by role: no holdout files for a net not scored on them
    (:func:`factory.train.nets.scored_on_holdout`)."""
    files = {role: spec.cache.get(role, []) for role in ("train", "holdout")}
    if not scored_on_holdout(name):
        files["holdout"] = []
    return files


def torch_trainer(
    loop: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    run_name: str,
    spec: FitSpec,
    sizing: TrainerSizing,
    workers: int,
    gpus_per_worker: float,
    datasets: dict[str, Any] | None = None,
) -> TorchTrainer:
    resources = {"CPU": sizing.cpus_per_worker}
    if gpus_per_worker > 0:
        resources["GPU"] = gpus_per_worker
    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage.ray_storage(spec.checkpoints)[0],
            storage_filesystem=storage.ray_storage(spec.checkpoints)[1],
            failure_config=FailureConfig(max_failures=sizing.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=KEEP_CHECKPOINTS),
        ),
        datasets=datasets or None,
        dataset_config=DataConfig(datasets_to_split=["train"]) if datasets else None,
    )


def fit_net_trainer(name: str, spec: FitSpec, sizing: TrainerSizing) -> None:
    """Build and fit one net's TorchTrainer; blocks until it ends. Run in a thread of
    the driver by :meth:`RayExecutor.fit_nets`, one thread per net fitting at once. (The
    nets were once launched as the trials of a Ray Tune grid: each trial cost two more
    Ray worker processes, a trial actor and its result queue, for a function that only
    waited on the trainer; measured on the 2-core machine, bench/RESULTS.md.)"""

    files = net_files(spec, name)
    datasets = {}
    for split, role in (("train", "train"), ("val", "holdout")):
        if files[role] and sizing.data == "ray_data":
            datasets[split] = ray.data.read_parquet(
                files[role],
                num_cpus=DATA_TASK_CPUS,
                override_num_blocks=max(1, len(files[role])),
            )
    loop_config = {
        "net": name,
        "spec": spec,
        "data": sizing.data,
        "files": files,
        "val": bool(files["holdout"]),
    }
    torch_trainer(
        train_loop,
        loop_config,
        net_dir_name(name),
        spec,
        sizing,
        sizing.workers_per_net,
        sizing.gpus_per_net / sizing.workers_per_net,
        datasets,
    ).fit()


def group_loop(config: dict[str, Any]) -> None:
    """Ray Train loop of a phase's one trainer (``--trainers phase``): worker ``rank`` of
    ``world`` fits the nets ``names[rank::world]`` one after another, each alone on this
    worker (no process group between the nets), reading the cache files itself, in a fresh
    order each epoch, as a one-worker net's trainer does, and checkpointing every epoch to
    the net's own folder (the local executor's layout, not ``ray.train.report``: Ray
    Train's report is a step every worker of the group takes together, and the nets'
    epochs do not line up). A failed worker restarts the group (``max_failures``); every
    net then resumes from its newest checkpoint, and a finished net is not trained again."""

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    spec: FitSpec = config["spec"]
    for name in config["names"][rank::world]:
        files = net_files(spec, name)
        train_rows, val_rows = file_rows(files, spec.preset.train.seed)
        try:
            fit_net_here(name, spec, device, train_rows, val_rows if files["holdout"] else None)
        except Exception as err:  # named, so the phase's error says which net failed
            raise RuntimeError(f"net {name}: {err}") from err


def fit_net_here(
    name: str,
    spec: FitSpec,
    device: torch.device,
    train_rows: Callable[[int], Any],
    val_rows: Callable[[], Any] | None,
) -> None:
    """Fit one net in this process (the local executor, a phase trainer's worker),
    resuming from and checkpointing every epoch to the net's own folder."""
    folder = net_dir(spec.checkpoints, name)
    storage.makedirs(folder)
    train_net(
        name, spec, train_rows, val_rows, device, latest_state(folder), local_checkpointer(folder)
    )


def fit_group_trainer(
    names: tuple[str, ...], phase: str, spec: FitSpec, sizing: TrainerSizing, workers: int
) -> None:
    """Build and fit a phase's one TorchTrainer of ``workers`` workers (see
    :func:`group_loop`); blocks until it ends."""
    torch_trainer(
        group_loop,
        {"names": names, "spec": spec},
        f"phase-{net_dir_name(phase)}",
        spec,
        sizing,
        workers,
        sizing.gpus_per_net,
    ).fit()


def with_restart(fit: Callable[[], None], phase: str, what: str) -> None:
    """``fit()``, started again up to ``TRAINER_RESTARTS`` times when the trainer fails as
    a whole (a rerun resumes from the newest checkpoints)."""
    for attempt in range(TRAINER_RESTARTS + 1):
        try:
            fit()
            return
        except Exception as err:  # a TrainingFailedError, or the controller lost
            if attempt == TRAINER_RESTARTS:
                raise
            log.warning("%s: %s failed (%s); starting its trainer again", phase, what, err)


def in_threads(
    names: tuple[str, ...], limit: int, fn: Callable[[str], None]
) -> dict[str, BaseException]:
    """``fn(name)`` for every name, at most ``limit`` at once, each in a thread of its
    own; returns the names whose call raised, with the error. The threads are daemons:
    a driver interrupted with Ctrl-C exits at once instead of waiting on trainers that
    run for minutes (Ray ends the actors the driver owned; a rerun resumes every net
    from its checkpoint). A thread pool's workers are joined at exit."""
    slots = threading.Semaphore(limit)
    failed: dict[str, BaseException] = {}

    def run(name: str) -> None:
        try:
            fn(name)
        except BaseException as err:  # reported to the caller, not lost in the thread
            failed[name] = err
        finally:
            slots.release()

    threads = []
    for name in names:
        slots.acquire()
        thread = threading.Thread(target=run, args=(name,), name=f"fit-{name}", daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    return failed


def latest_state(run_path: str) -> dict[str, Any] | None:
    """The newest checkpoint state under a net's folder (Ray Train's or the local executor's)."""
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
                io.BytesIO(storage.read_bytes(uri)),
                map_location="cpu",
                weights_only=False,
            )
            if best is None or state["epoch"] > best["epoch"]:
                best = state
    return best


def local_checkpointer(folder: str) -> Any:
    """The local executor's ``save(state, metrics)``: one ``checkpoint_local_<epoch>``
    folder per epoch, the newest ``KEEP_CHECKPOINTS`` kept (Ray Train's layout)."""

    def save(state: dict[str, Any] | None, metrics: dict[str, Any]) -> None:
        if state is None:
            return
        storage.save_torch(
            state, storage.join(folder, f"checkpoint_local_{state['epoch']:05d}", "state.pt")
        )
        local = sorted(d for d in storage.listdir(folder) if "checkpoint_local_" in d)
        for old in local[:-KEEP_CHECKPOINTS]:
            storage.remove(old)

    return save


def net_dir_name(name: str) -> str:
    """A net's (or phase's) name as a folder and Ray Train run name."""
    return name.replace("+", "plus").replace("@", "-").replace(" ", "-")


def net_dir(checkpoints: str, name: str) -> str:
    return storage.join(checkpoints, net_dir_name(name))


def collect_states(
    names: tuple[str, ...], phase: str, checkpoints: str
) -> dict[str, dict[str, Any]]:
    out = {}
    for name in names:
        state = latest_state(net_dir(checkpoints, name))
        if state is None:
            raise RuntimeError(
                f"{phase}: net {name} left no checkpoint under {net_dir(checkpoints, name)}"
            )
        out[name] = state
    return out


class RayExecutor:
    """Each phase on the Ray cluster: caches with Ray Data (decode tasks, an encoder actor
    pool, writer tasks), a phase's nets fitted concurrently by one TorchTrainer for the
    phase or one each (:func:`trainer_groups`)."""

    name = "ray"

    def __init__(self, execution: ExecutionConfig, address: str | None = None) -> None:
        self.execution = execution
        self.ingest: dict[str, str] = {}  # net -> how its trainer read its cache
        self.trainers: dict[str, str] = {}  # net -> "phase" or "net" (trainer_groups)
        init_ray(address)

    def put_pool(self, entries: dict[str, Any]) -> dict[str, Any]:
        return {tag: ray.put(e) for tag, e in entries.items()}

    def build_cache(
        self,
        what: str,
        listing: Listing,
        cache_dir: str,
        preset: Preset,
        vocab: list[str],
        actor: type,
        actor_kwargs: dict[str, Any],
    ) -> dict[str, int]:
        """Cache every clip of ``listing`` not yet cached or rejected: decode tasks, a pool
        of ``actor(**actor_kwargs)`` (decoded clip batch -> cache rows), writer tasks."""

        todo, done, rejected = cache_todo(listing, cache_dir)
        if not todo:
            log.info("%s cache complete (%d clips, %d rejects)", what, done, rejected)
            return {"clips": done, "rejects": rejected}
        gpus = 1.0 if cluster_gpus() >= 1 else 0.0
        ds = decoded_through_actors(
            todo,
            preset.to_json(),
            actor,
            actor_kwargs,
            self.execution.encode_actors or default_actors(gpus),
            gpus,
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
        log.info("%s cache: %d clips in %.1f s (%d rejected)", what, n, time.time() - t0, bad)
        return {"clips": done + n - bad, "rejects": rejected + bad}

    def fit_nets(
        self, names: tuple[str, ...], phase: str, spec: FitSpec
    ) -> dict[str, dict[str, Any]]:
        """Fit ``names`` concurrently, up to ``concurrent`` at once: one TorchTrainer for
        the phase whose workers share the nets out (:func:`trainer_groups`), or one
        TorchTrainer each, each waited on by a thread of this process."""

        opts = self.execution
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
        data = (
            "files"  # --trainers phase: every worker reads the cache files itself
            if opts.trainers == "phase"
            else trainer_data(
                opts.trainer_data,
                spec.cache.get("train", []) + spec.cache.get("holdout", []),
                opts.workers_per_net,
            )
        )
        groups = trainer_groups(opts.trainers, data, opts.workers_per_net)
        self.ingest.update(dict.fromkeys(names, data))
        self.trainers.update(dict.fromkeys(names, groups))
        sizing = TrainerSizing(
            per_worker, opts.workers_per_net, opts.gpus_per_net, opts.max_failures, data
        )
        log.info(
            "%s: fitting %s concurrently (up to %d at once, %.2f CPU per worker, cache via %s, %s)",
            phase,
            ", ".join(names),
            concurrent,
            per_worker,
            data,
            "one trainer for the phase" if groups == "phase" else "one trainer per net",
        )
        if groups == "phase":
            try:
                with_restart(
                    lambda: fit_group_trainer(names, phase, spec, sizing, concurrent),
                    phase,
                    "the phase's trainer",
                )
            except Exception as err:
                raise RuntimeError(f"{phase}: the nets failed to train: {err}") from err
            return collect_states(names, phase, spec.checkpoints)
        failed = in_threads(
            names,
            concurrent,
            lambda name: with_restart(
                lambda: fit_net_trainer(name, spec, sizing), phase, f"net {name}"
            ),
        )
        if failed:
            raise RuntimeError(
                f"{phase}: {len(failed)} net(s) failed to train: "
                + "; ".join(f"{name}: {err}" for name, err in failed.items())
            )
        return collect_states(names, phase, spec.checkpoints)


class LocalExecutor:
    """Each phase in this process, plain PyTorch, no Ray (for a GPU box without Ray, and
    for fast tests): the same cache files, the same per-net training
    (:func:`factory.train.nets.train_net`), the same checkpoint folders, one net
    after another."""

    name = "local"

    def __init__(self, execution: ExecutionConfig) -> None:
        self.execution = execution
        self.ingest: dict[str, str] = {}  # net -> how it read its cache (files, here)
        self.trainers: dict[str, str] = {}  # no trainers here: one net after another

    def put_pool(self, entries: dict[str, Any]) -> dict[str, Any]:
        return entries

    def build_cache(
        self,
        what: str,
        listing: Listing,
        cache_dir: str,
        preset: Preset,
        vocab: list[str],
        actor: type,
        actor_kwargs: dict[str, Any],
    ) -> dict[str, int]:
        todo, done, rejected = cache_todo(listing, cache_dir)
        if not todo:
            return {"clips": done, "rejects": rejected}
        encode = actor(**actor_kwargs)
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
            out = encode(to_batch(rows))
            write_cache_batch(out, **cache_writer_kwargs(cache_dir, vocab, preset, listing.records))
            bad += int((out["status"] != OK).sum())
        log.info("%s cache: %d clips (%d rejected)", what, len(todo), bad)
        return {"clips": done + len(todo) - bad, "rejects": rejected + bad}

    def fit_nets(
        self, names: tuple[str, ...], phase: str, spec: FitSpec
    ) -> dict[str, dict[str, Any]]:
        device = resolve_device("auto")
        for name in names:
            log.info("%s: fitting %s in this process", phase, name)
            self.ingest[name] = "files"
            files = net_files(spec, name)
            train_rows, val_rows = file_rows(files, seed=None)  # file order, every epoch
            fit_net_here(name, spec, device, train_rows, val_rows if files["holdout"] else None)
        return collect_states(names, phase, spec.checkpoints)
