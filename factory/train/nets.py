"""Training one bundle net from feature-cache rows: what every executor runs per net.

The Ray executor calls :func:`train_net` inside a TorchTrainer's workers (data from
``ray.train.get_dataset_shard``, checkpoints through ``ray.train.report``); the local
executor calls it in-process (data read from the cache files, checkpoints written to
the same folder layout). Net, task, optimizer, resume, switch labels, the taggers'
fold split and the per-epoch checkpoint are decided here once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from factory.config import Preset
from factory.io.store import read_parquet
from factory.method.bundle import base_name, build_nets
from factory.method.encoding import normalize_frames
from factory.method.pool import PoolSource
from factory.method.students import StudentRun, StudentTask
from factory.method.weights import build_encoders
from factory.train.feature_cache import rows_to_clips
from factory.train.loop import NetTask, TrainingClip, fit, make_optimizer
from factory.train.pretrain import EncoderPretrainNet, PretrainTask
from models.config import EncodersConfig
from models.registry import NetId, build_student

log = logging.getLogger(__name__)

WORKER_CACHE_MB = 512  # a trainer keeps its shard in memory across epochs up to this size

RowStream = Callable[[int], Iterable[dict[str, Any]]]


def fold_of(key: str) -> int:
    """The audio tagger's fold of a clip (two folds, by a stable hash)."""
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 2


def scored_on_holdout(name: str) -> bool:
    """Whether net ``name`` reads the held-out cache rows and reports an accuracy on them.
    The audio switch and the encoders' pretraining have no held-out score, and the audio
    tagger's folds train on train-role clips only (their labels for the switch come from
    clips each fold did not see), so none of them is given the holdout rows."""
    return name not in ("switch", "encoders") and NetId.parse(name).base != "audio"


def load_switch_labels(uri: str | None) -> dict[str, dict[str, torch.Tensor]]:
    if not uri:
        return {}

    t = read_parquet(uri)
    return {
        k: {"gate": torch.from_numpy(np.frombuffer(v, dtype=np.uint8).astype(np.float32))}
        for k, v in zip(t["key"].to_pylist(), t["labels"].to_pylist(), strict=True)
    }


def build_trainable(
    name: str, preset: Preset, vocab: list[str], pool: PoolSource, device: torch.device
) -> tuple[torch.nn.Module, Any, torch.optim.Optimizer, int]:
    """(net, task, optimizer, epochs) of a bundle net, of ``encoders`` (pretraining) or of
    a student (``STA``, ``STA+short``, ``STA+long``)."""

    run = StudentRun.parse(name)
    if run is not None:
        if run.seed is not None:  # repeated runs (the ablation): their own initialisation
            torch.manual_seed(run.seed)
        net = build_student(run.student, preset.encoders, preset.cgcn).to(device)
        optimizer = torch.optim.SGD(
            net.parameters(),
            lr=preset.train.student_lr,
            momentum=preset.train.momentum,
            nesterov=True,
            weight_decay=preset.train.student_weight_decay,
        )
        return net, StudentTask(run.student, preset, run.target), optimizer, preset.train.epochs

    if name == "encoders":
        e = preset.encoders
        unfrozen = EncodersConfig(
            *(dataclasses.replace(c, frozen=False) for c in (e.image, e.plus, e.audio)),
            plus_trunk=e.plus_trunk,
        )
        net = EncoderPretrainNet(build_encoders(unfrozen), len(vocab)).to(device)
        optimizer = torch.optim.AdamW(
            net.parameters(), lr=preset.train.pretrain_lr, weight_decay=1e-4
        )
        return net, PretrainTask(name, len(vocab), preset), optimizer, preset.train.pretrain_epochs
    base = name.split("@")[0]
    net = build_nets(preset, len(vocab), (base,))[base].to(device)
    optimizer = make_optimizer(net, preset.train.lr_for(base_name(name)), preset)
    return net, NetTask(name, len(vocab), preset, pool, vocab), optimizer, preset.train.epochs


class ClipSource:
    """Training clips from a row stream: the first epoch streams; while the rows seen fit
    in ``WORKER_CACHE_MB`` they are kept, and later epochs reuse them in a fresh random
    order (on a small corpus re-running a data pipeline each epoch costs more than the
    epoch). A larger shard is streamed again every epoch."""

    def __init__(
        self, name: str, stream: RowStream, extra: dict[str, dict[str, torch.Tensor]], seed: int
    ) -> None:
        self.name = name
        self.stream = stream
        self.extra = extra
        self.seed = seed
        self.kept: list[dict[str, Any]] = []
        self.complete = False
        self.fold = int(name.split("@fold")[1]) if "@fold" in name else None

    def transform(self, clips: Iterable[TrainingClip]) -> Iterator[TrainingClip]:
        for c in clips:
            if self.fold is not None and fold_of(c.key) == self.fold:
                continue  # the other fold's clips: this tagger must not see them
            if self.name == "encoders":
                c.feats = {
                    "frames": normalize_frames(c.feats["frames_u8"]),
                    "spectrogram": c.feats["spectrogram"],
                }
            yield c

    def __call__(self, epoch: int) -> Iterator[TrainingClip]:
        if self.complete:
            order = np.random.default_rng([self.seed, epoch, 5]).permutation(len(self.kept))
            yield from self.transform(rows_to_clips((self.kept[i] for i in order), self.extra))
            return
        keeping, size = True, 0
        for row in self.stream(epoch):
            if keeping:
                self.kept.append(row)
                size += len(row["blob"])
                if size > WORKER_CACHE_MB * 2**20:
                    keeping = False
                    self.kept.clear()
            yield from self.transform(rows_to_clips([row], self.extra))
        self.complete = keeping


def import_callable(spec: str) -> Callable[..., Any]:
    """``"package.module:function"`` -> that function (a hook named in the options)."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"hook {spec!r}: write it as module:function")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"hook {spec!r}: cannot import it ({err}); check the name") from None


@dataclass(frozen=True)
class FitSpec:
    """What the nets of one fitting phase share, from the job through an executor to
    :func:`train_net` (on a Ray Train worker or in this process)."""

    preset: Preset
    vocabulary: list[str]
    checkpoints: str  # the nets' checkpoint folders live below it (absolute or s3://)
    cache: dict[str, list[str]] = field(default_factory=dict)  # role -> Parquet cache files
    pool: dict[str, Any] = field(default_factory=dict)  # tag -> PoolEntries or an ObjectRef
    switch_labels: str | None = None  # the audio switch's labels (Parquet), if made
    run_dir: str = ""  # the job's run folder, handed to the epoch hook
    # "module:function" called as function(net, epoch, run_dir) on rank 0 after each
    # epoch's checkpoint (see TrainOptions.epoch_hook)
    epoch_hook: str | None = None


def train_net(
    name: str,
    spec: FitSpec,
    train_rows: RowStream,
    val_rows: Callable[[], Iterable[dict[str, Any]]] | None,
    device: torch.device,
    resume_state: dict[str, Any] | None,
    save: Callable[[dict[str, Any] | None, dict[str, Any]], None],
    rank: int = 0,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> None:
    """Fit one net; ``save(state_or_None, metrics)`` is called every epoch on every rank
    (state only on rank 0) and must persist a checkpoint of it."""
    preset = spec.preset
    torch.manual_seed(preset.train.seed)
    net, task, optimizer, epochs = build_trainable(
        name, preset, spec.vocabulary, PoolSource(spec.pool), device
    )
    start_epoch, history, started_at = 0, [], time.time()
    if resume_state:
        net.load_state_dict(resume_state["net"])
        optimizer.load_state_dict(resume_state["optimizer"])
        start_epoch, history, started_at = (
            resume_state["epoch"] + 1,
            resume_state["history"],
            resume_state["started_at"],
        )
        log.info("%s: resuming at epoch %d", name, start_epoch)
    model = wrap(net) if wrap else net
    hook = import_callable(spec.epoch_hook) if spec.epoch_hook else None
    extra = load_switch_labels(spec.switch_labels)
    clips = ClipSource(name, train_rows, extra, preset.train.seed)
    val_cache: list[TrainingClip] = []

    def val_clips() -> list[TrainingClip]:
        if not val_cache and val_rows is not None:
            val_cache.extend(clips.transform(rows_to_clips(val_rows(), extra)))
        return val_cache

    def on_epoch(epoch: int, metrics: dict, _net: Any, _opt: Any) -> None:
        metrics = {**metrics, "started_at": started_at, "ended_at": time.time(), "net": name}
        history.append(metrics)
        state = (
            {
                "net": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "history": history,
                "started_at": started_at,
            }
            if rank == 0
            else None
        )
        save(state, metrics)
        if hook is not None and rank == 0:
            hook(name, epoch, spec.run_dir)

    has_val = val_rows is not None and scored_on_holdout(name)
    fit(
        model,
        task,
        clips,
        val_clips if has_val else None,
        epochs,
        0.0,
        start_epoch=start_epoch,
        optimizer=optimizer,
        on_epoch=on_epoch,
    )
