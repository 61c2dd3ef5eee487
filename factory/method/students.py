"""The students of Sec. 5 as plain code (no Ray): which student learns from which
pseudo-ground-truth column (:class:`StudentRun`), their inputs from per-frame features,
the training task (Eq. 17 for STA, Eq. 20 for STA+, every node against its own
fragment's map), the final fusion (Eq. 21; Eq. 23 and the pixelwise max as options),
the predictor of one clip and the student bundle.

The student bundle (``STUDENTS``): ``students.json`` (preset, fusion, vocabulary width,
the teacher bundle's fingerprint), ``encoders.pt``, ``nets/STA.pt``, ``nets/STA+short.pt``,
``nets/STA+long.pt``, ``nets/switch.pt`` (the audio switch, tag-free, reused from the teacher).
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from factory.config import Preset, from_dict
from factory.io import storage
from factory.io.audio import frame_windows
from factory.io.decode import DecodedClip
from factory.io.geometry import content_mask
from factory.method.bundle import build_nets
from factory.method.encoding import FrameEncoder, resize_square
from factory.method.equations import FUSIONS, minmax_normalize
from factory.method.inputs import Span, WindowSettings, graph_nodes
from factory.method.losses import bce_kl, node_sum_loss
from factory.method.metrics import cc
from factory.method.weights import build_encoders
from factory.method.windows import clamp
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
    span: Span | None = None,
) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Inputs of a student for ``targets`` and the frame index whose map each output
    predicts: (B,) for STA, (B, 1 + n) node centres for STA+ (the long term of a chunk:
    its MG nodes from the clip's long-term pool, ``span``)."""
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
            graph_nodes(
                STUDENT_SPEC, key, t_count, int(t), TERM[name], settings, None, epoch, span
            )[0]
            for t in targets
        ]
    )
    pooled = TERM[name] == "long" and span is not None
    rows = centres[:, :1] if pooled else centres  # the long pool's MG nodes: below
    frames = torch.as_tensor(clamp(rows[..., None] + np.array([-1, 0, 1]), t_count), device=dev)
    c = torch.as_tensor(rows, device=dev)
    inputs = {"image": feats["plus"][frames], "audio": feats["audio"][c], "gate": feats["gate"][c]}
    if pooled:
        assert span is not None
        e = torch.as_tensor(np.searchsorted(span.centres, centres[:, 1:]), device=dev)
        for k, v in (
            ("image", span.long["plus"]),
            ("audio", span.long["audio"]),
            ("gate", span.long["gate"]),
        ):
            inputs[k] = torch.cat([inputs[k], v.to(dev)[e]], dim=1)
    return inputs, centres


@dataclass
class StudentTask:
    """A task for :func:`factory.train.loop.fit` (clips carry ``maps`` (T, H, W) in [0, 1])."""

    name: str
    preset: Preset
    target: str = PSEUDO_COLUMN  # the pseudo-fixation column the student learns from
    score_name = "pseudo_cc"  # what :func:`factory.train.loop.evaluate` reports

    @property
    def out_size(self) -> tuple[int, int]:
        """Maps are predicted at the decoded frame size."""
        return (self.preset.frames.height, self.preset.frames.width)

    @property
    def settings(self) -> WindowSettings:
        return WindowSettings.from_preset(self.preset)

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
        so :func:`factory.train.loop.evaluate` reports the mean CC."""

        out = torch.sigmoid(net(inputs, size=self.out_size)).float().cpu()
        pred = out if self.name == "STA" else out[:, 0]
        target = labels if self.name == "STA" else labels[:, 0]
        return float(
            sum(cc(p.numpy(), t.numpy()) for p, t in zip(pred, target.cpu(), strict=True))
        ), len(pred)


def fuse(maps: dict[str, torch.Tensor], fusion: str) -> torch.Tensor:

    if fusion not in FUSIONS:
        raise ValueError(f"unknown fusion {fusion!r}: {', '.join(FUSIONS)}")
    return FUSIONS[fusion](maps["STA"], maps["STA+short"], maps["STA+long"])


class StudentPredictor:
    """Plain PyTorch: the three students and the fusion on a decoded clip."""

    def __init__(
        self, uri: str, device: str = "auto", dtype: str = "auto", fusion: str | None = None
    ) -> None:

        meta, preset, encoders, students, switch = load_students(uri)
        self.meta = meta
        self.preset = preset
        self.fusion = fusion or meta.get("fusion", FUSION_DEFAULT)
        self.encoder = FrameEncoder(encoders, preset, device, dtype)
        self.students = {k: v.to(self.encoder.device).eval() for k, v in students.items()}
        self.switch = switch.to(self.encoder.device).eval()
        self.settings = WindowSettings.from_preset(preset)

    @torch.inference_mode()
    def group_features(
        self, frames: np.ndarray, audio: np.ndarray, has_audio: np.ndarray
    ) -> dict[str, torch.Tensor]:
        """STA+'s inputs of 3-frame groups (a long clip's long-term pool): ``frames`` (E,
        3, H, W, 3) uint8, ``audio`` (E, samples), ``has_audio`` (E,) -> ``plus`` (E, 3,
        C, h, w) at the fine size, ``audio`` (E, D), ``gate`` (E,), as
        :func:`student_features` computes them for a clip's frames."""
        e, _, h, w, _ = frames.shape
        images = resize_square(
            self.encoder.frames(frames.reshape(e * 3, h, w, 3)), self.preset.frames.fine_size
        )
        img = self.encoder.images(images, plus=True, kind="fine")
        sound = torch.from_numpy(np.asarray(has_audio)).to(self.encoder.device).float()
        vectors = self.encoder.audio(audio) * sound[:, None]
        f5 = img["F5"].reshape(e, 3, *img["F5"].shape[1:])[:, 1]
        logits = self.switch({"image": f5[:, None], "audio": vectors})[:, 0]
        return {
            "plus": img["plus"].reshape(e, 3, *img["plus"].shape[1:]),
            "audio": vectors,
            "gate": (logits.float() > 0).float() * sound,
        }

    @torch.inference_mode()
    def predict(
        self, clip: DecodedClip, span: Span | None = None, own: slice = slice(None)
    ) -> dict[str, np.ndarray]:
        """Each student's maps and their fusion for every frame of ``clip`` (a chunk of a
        longer clip: its ``span`` and the rows it ``own``s, the only ones returned)."""
        feats = student_features(self.encoder, self.switch, clip)
        maps = {
            name: student_map(
                name, net, feats, clip.key, self.settings, self.encoder, self.preset, span
            )[own]
            for name, net in self.students.items()
        }

        on_frame = torch.from_numpy(
            content_mask(clip.source_size, tuple(clip.frames.shape[1:3]))
        ).to(self.encoder.device)
        # the letterbox bands are not the video (factory.io.geometry): zero there
        maps = {k: v * on_frame for k, v in maps.items()}
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
    span: Span | None = None,
) -> torch.Tensor:
    """One student's maps (T, H, W) in [0, 1] for every frame of a clip's features (for
    STA+, the target node's read-out); ``span``: the features are a chunk's."""
    t = int(feats["gate"].shape[0])
    size = (preset.frames.height, preset.frames.width)
    targets = np.arange(t)
    outs = []
    for start in range(0, t, encoder.chunk):
        part = targets[start : start + encoder.chunk]
        inputs, _ = student_inputs(name, feats, part, key, settings, span=span)
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
