"""One training loop for every classification net in the registry (plain PyTorch; the
Ray Train job wraps it, tests call it directly).

A :class:`NetTask` says how one bundle net is trained (which inputs, which labels,
which loss) from the registry's input spec; :func:`fit` runs epochs over clips of
per-frame encoder features (the frozen-encoder mode: features computed once per
frame and shared by every net) or of raw frames (fine-tune mode: the net owns
trainable encoders and encodes each clip as it goes).

Recipe (the paper's): SGD with Nesterov momentum 0.9, weight decay, a learning-rate
group for the encoders and one at ``new_layer_lr_mult`` x for the new layers, the
multilabel soft-margin loss of Eq. 7.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from factory.config import Preset
from factory.method.inputs import ClipFeatures, WindowSettings, gather_inputs
from factory.method.losses import balanced_binary_loss, multilabel_soft_margin
from factory.method.pool import PoolSource
from factory.method.windows import target_frames
from models.registry import NETS, InputSpec, NetId

log = logging.getLogger(__name__)


@dataclass
class TrainingClip:
    """One clip's training material: per-frame features (``ClipFeatures``; ``gate`` holds
    the audio switch's training labels), its tag indices, whether it has audio."""

    key: str
    tags: list[int]
    feats: ClipFeatures
    has_audio: bool
    split: str = "train"

    @property
    def num_frames(self) -> int:
        return int(next(iter(self.feats.values())).shape[0])


@dataclass
class NetTask:
    """How a bundle net (``S``, ``ST_fine``, ``SA+``, ``switch``, ``audio@fold1``...) is trained."""

    name: str
    num_classes: int
    preset: Preset
    pool: PoolSource | None = None
    vocabulary: list[str] = field(default_factory=list)

    @property
    def spec(self) -> InputSpec:
        return NETS[NetId.parse(self.name).base].spec

    @property
    def terms(self) -> tuple[str, ...]:
        """The multigranularity terms this net is trained on: its own term for a pair
        net (``ST+long``), every term of its type for a shared one (``ST+``)."""
        term = NetId.parse(self.name).term
        return (term,) if term else self.spec.terms

    @property
    def stage(self) -> str:
        return NetId.parse(self.name).stage

    @property
    def settings(self) -> WindowSettings:
        return WindowSettings.from_preset(self.preset)

    def examples(
        self, clip: TrainingClip, epoch: int, targets: np.ndarray
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Input batches and labels for ``targets`` of ``clip`` (several for a ``+`` net:
        its terms take turns over the targets). Empty when the net cannot use the clip
        (an audio net and a clip without audio)."""
        spec = self.spec
        if spec.audio and not clip.has_audio:
            return []
        if spec.trunk == "none":  # the audio tagger reads audio vectors only
            inputs = {"audio": clip.feats["audio"][torch.as_tensor(targets)]}
            return [(inputs, self._labels(clip, targets))]
        if not spec.graph:
            inputs, _ = gather_inputs(
                spec, clip.feats, targets, stage=self.stage, key=clip.key, settings=self.settings
            )
            return [(inputs, self._labels(clip, targets))]
        out = []
        terms = self.terms
        for k, term in enumerate(terms):
            chosen = targets[(np.arange(len(targets)) + epoch + k) % len(terms) == 0]
            if len(chosen) == 0:
                continue
            pool = (
                self.pool.get(self.vocabulary[clip.tags[0]])
                if term == "cross" and self.pool is not None and self.vocabulary
                else None
            )
            inputs, valid = gather_inputs(
                spec,
                clip.feats,
                chosen,
                term=term,
                key=clip.key,
                settings=self.settings,
                pool=pool,
                epoch=epoch,
            )
            if not bool(valid.all()):
                keep = valid.cpu().numpy()
                if not keep.any():
                    continue
                inputs = {k2: v[valid] for k2, v in inputs.items()}
                chosen = chosen[keep]
            out.append((inputs, self._labels(clip, chosen)))
        return out

    def _labels(self, clip: TrainingClip, targets: np.ndarray) -> torch.Tensor:
        if self.spec.label == "switch":
            return clip.feats["gate"][torch.as_tensor(targets)].float()[:, None]
        y = torch.zeros(len(targets), self.num_classes)
        y[:, clip.tags] = 1.0
        return y

    def loss(
        self, net: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor:
        labels = labels.to(next(net.parameters()).device)
        inner = getattr(net, "module", net)  # DDP-wrapped or not
        if hasattr(inner, "forward_with_branch"):
            fused, branch = inner.forward_with_branch(inputs)
            return multilabel_soft_margin(
                fused, labels
            ) + self.preset.train.branch_loss_weight * multilabel_soft_margin(branch, labels)
        if self.spec.label == "switch" and self.preset.train.switch_balance:
            return balanced_binary_loss(net(inputs), labels)
        return multilabel_soft_margin(net(inputs), labels)

    @torch.no_grad()
    def correct(
        self, net: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[float, int]:
        logits = net(inputs).float().cpu()
        if self.spec.label == "switch":
            return int(((logits[:, 0] > 0).float() == labels[:, 0]).sum()), len(labels)
        top = logits.argmax(1)
        return int(labels[torch.arange(len(top)), top].sum()), len(labels)


SHUFFLE_BATCHES = 8  # examples are drawn at random from a buffer of this many batches


def collate(
    items: list[tuple[dict[str, torch.Tensor], torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    keys = items[0][0].keys()
    return {k: torch.stack([x[k] for x, _ in items]) for k in keys}, torch.stack(
        [y for _, y in items]
    )


def batches(
    task: NetTask,
    clips: Iterable[TrainingClip],
    epoch: int,
    batch_size: int,
    targets_per_clip: int,
    seed: int,
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """Shuffled batches of examples. Clips arrive in a stream (already in a per-epoch
    random order where the source allows); their examples go into a buffer of
    ``SHUFFLE_BATCHES`` batches per input shape (a + net's terms share shapes), from
    which batches are drawn at random, so a batch mixes clips and tags."""
    rng = np.random.default_rng([seed, epoch, 7])
    buffers: dict[tuple, list] = {}
    for clip in clips:
        targets = target_frames(clip.key, clip.num_frames, targets_per_clip, seed, epoch)
        for inputs, labels in task.examples(clip, epoch, targets):
            shape_key = tuple((k, tuple(v.shape[1:])) for k, v in sorted(inputs.items()))
            buf = buffers.setdefault(shape_key, [])
            buf.extend(
                ({k: v[r] for k, v in inputs.items()}, labels[r]) for r in range(len(labels))
            )
            while len(buf) >= batch_size * SHUFFLE_BATCHES:
                pick = set(rng.choice(len(buf), size=batch_size, replace=False).tolist())
                yield collate([buf[i] for i in sorted(pick)])
                buffers[shape_key] = buf = [x for i, x in enumerate(buf) if i not in pick]
    for buf in buffers.values():
        order = rng.permutation(len(buf))
        for start in range(0, len(buf), batch_size):
            yield collate([buf[i] for i in order[start : start + batch_size]])


def shuffled(clips: list[TrainingClip], seed: int, epoch: int) -> list[TrainingClip]:
    """A per-epoch random order of an in-memory clip list."""
    order = np.random.default_rng([seed, epoch, 11]).permutation(len(clips))
    return [clips[i] for i in order]


def make_optimizer(
    net: nn.Module, lr: float, preset: Preset, weight_decay: float | None = None
) -> torch.optim.Optimizer:
    """SGD + Nesterov; encoder parameters (if trainable) at ``lr``, new layers at
    ``lr * new_layer_lr_mult``."""
    cfg = preset.train
    encoder_params = [
        p for n, p in net.named_parameters() if p.requires_grad and n.startswith("encoders.")
    ]
    new_params = [
        p for n, p in net.named_parameters() if p.requires_grad and not n.startswith("encoders.")
    ]
    groups = [{"params": new_params, "lr": lr * cfg.new_layer_lr_mult}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": lr})
    return torch.optim.SGD(
        groups,
        lr=lr,
        momentum=cfg.momentum,
        nesterov=True,
        weight_decay=cfg.weight_decay if weight_decay is None else weight_decay,
    )


def _to_device(inputs: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in inputs.items()}


def train_epoch(
    net: nn.Module,
    task: NetTask,
    clips: Iterable[TrainingClip],
    optimizer: torch.optim.Optimizer,
    epoch: int,
) -> dict[str, float]:
    cfg = task.preset.train
    device = next(net.parameters()).device
    net.train()
    total, count = 0.0, 0
    for inputs, labels in batches(
        task, clips, epoch, cfg.batch_size, cfg.targets_per_clip, cfg.seed
    ):
        loss = task.loss(net, _to_device(inputs, device), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"net {task.name}: non-finite loss at epoch {epoch}; lower its learning rate"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        optimizer.step()
        total += float(loss.detach()) * len(labels)
        count += len(labels)
    return {"loss": total / max(count, 1), "examples": count}


@torch.no_grad()
def evaluate(net: nn.Module, task: NetTask, clips: Iterable[TrainingClip]) -> dict[str, float]:
    """Held-out accuracy: the top-1 class is one of the clip's tags (the switch: its
    decision equals the label), over ``eval_targets_per_clip`` fixed frames of every
    held-out clip (epoch-0 windows, so every epoch scores the same examples)."""
    device = next(net.parameters()).device
    net.eval()
    right = seen = 0
    cfg = task.preset.train
    for clip in clips:
        targets = target_frames(
            clip.key, clip.num_frames, cfg.eval_targets_per_clip, cfg.seed + 1, 0
        )
        for inputs, labels in task.examples(clip, 0, targets):
            r, s = task.correct(net, _to_device(inputs, device), labels)
            right, seen = right + r, seen + s
    # a task may name its score (the students': held-out CC with the pseudo-fixations)
    score = getattr(task, "score_name", "accuracy")
    return {score: right / seen if seen else math.nan, "eval_examples": seen}


def fit(
    net: nn.Module,
    task: NetTask,
    train_clips: Callable[[int], Iterable[TrainingClip]],
    val_clips: Callable[[], Iterable[TrainingClip]] | None,
    epochs: int,
    lr: float,
    start_epoch: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    on_epoch: Callable[[int, dict[str, float], nn.Module, torch.optim.Optimizer], None]
    | None = None,
) -> list[dict[str, float]]:
    """Train ``net`` for ``epochs`` (resuming at ``start_epoch``); ``on_epoch`` gets each
    epoch's metrics (the Ray Train loop reports and checkpoints there)."""
    optimizer = optimizer or make_optimizer(net, lr, task.preset)
    history = []
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        metrics = train_epoch(net, task, train_clips(epoch), optimizer, epoch)
        if val_clips is not None:
            metrics.update(evaluate(net, task, val_clips()))
        metrics.update({"epoch": epoch, "epoch_s": time.time() - t0})
        history.append(metrics)
        log.info(
            "%s epoch %d: %s",
            task.name,
            epoch,
            {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()},
        )
        if on_epoch is not None:
            on_epoch(epoch, metrics, net, optimizer)
    return history
