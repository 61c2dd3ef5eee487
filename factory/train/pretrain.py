"""Encoder pretraining on the tagged corpus, for encoders that come without weights.

The paper's encoders are off-the-shelf (ImageNet VGG16 / ResNeXt, the VGGSound audio
net). Nothing is downloaded here, so when a preset names no weights file (the tiny
preset), the train job first fits the three encoders to the corpus's tags (a GAP +
linear classifier per encoder, Eq. 7 loss, random resized crops and colour jitter so
that crops and zooms of the fine stage look familiar), then freezes them; every net is
trained on top of these frozen, shared encoders. With weights files configured this
step is skipped (``--pretrain-epochs 0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from factory.config import Preset
from factory.method.losses import multilabel_soft_margin
from factory.train.loop import TrainingClip
from models.encoders import DilatedVGG, Encoders

COLOUR_JITTER = 0.3  # the authors' augmentation strength
MIN_CROP_SCALE = 0.35  # random resized crops down to 35% of the side (the fine stage zooms)


class EncoderPretrainNet(nn.Module):
    """The three encoders with a GAP + linear tag classifier each."""

    def __init__(self, encoders: Encoders, num_classes: int) -> None:
        super().__init__()
        self.encoders = encoders
        self.image_head = nn.Linear(encoders.image.channels["F5"], num_classes)
        self.mid_head = nn.Linear(encoders.image.channels["F4"], num_classes)
        # the dilated VGG16 learns from its own head; an image trunk read at stride 8
        # (``plus_trunk = image``) is the image trunk, fitted through the heads above
        self.plus_head = (
            nn.Linear(encoders.plus.channels, num_classes)
            if isinstance(encoders.plus, DilatedVGG)
            else None
        )
        self.audio_head = nn.Linear(encoders.audio.out_dim, num_classes)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        f = self.encoders.image(inputs["frames"])
        out = {
            "image": self.image_head(f["F5"].mean(dim=(-2, -1))),
            "mid": self.mid_head(f["F4"].mean(dim=(-2, -1))),
        }
        if self.plus_head is not None:
            plus = self.encoders.plus(inputs["frames"])
            out["plus"] = self.plus_head(plus.mean(dim=(-2, -1)))
        # audio is classified against the clip's tag too (mismatched sound is label noise)
        out["audio"] = self.audio_head(self.encoders.audio(inputs["spectrogram"]))
        return out


def augment(frames: torch.Tensor, rng: np.random.Generator, out_size: int) -> torch.Tensor:
    """Random resized crop + colour jitter of normalised (N, 3, H, W) frames."""
    n, _, h, w = frames.shape
    out = []
    for i in range(n):
        scale = rng.uniform(MIN_CROP_SCALE, 1.0)
        ch, cw = max(8, int(h * scale)), max(8, int(w * scale))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = frames[i : i + 1, :, y0 : y0 + ch, x0 : x0 + cw]
        crop = F.interpolate(crop, size=(out_size, out_size), mode="bilinear", align_corners=False)
        gain = torch.tensor(
            rng.uniform(1 - COLOUR_JITTER, 1 + COLOUR_JITTER, 3), dtype=crop.dtype
        ).view(1, 3, 1, 1)
        bias = torch.tensor(rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, 3), dtype=crop.dtype).view(
            1, 3, 1, 1
        )
        out.append(crop * gain + bias)
    return torch.cat(out)


@dataclass
class PretrainTask:
    """A task for :func:`factory.train.loop.fit`: clips carry raw ``frames`` (T, 3, S, S)
    normalised at the coarse size and ``spectrogram`` (T, 1, F, L)."""

    name: str
    num_classes: int
    preset: Preset

    def examples(
        self, clip: TrainingClip, epoch: int, targets: np.ndarray
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        rng = np.random.default_rng(
            [self.preset.train.seed, epoch, int(targets.sum()), len(clip.key)]
        )
        frames = clip.feats["frames"][torch.as_tensor(targets)]
        inputs = {"frames": augment(frames, rng, self.preset.frames.coarse_size)}
        inputs["spectrogram"] = clip.feats["spectrogram"][torch.as_tensor(targets)]
        inputs["audio_valid"] = torch.full((len(targets),), float(clip.has_audio))
        y = torch.zeros(len(targets), self.num_classes)
        y[:, clip.tags] = 1.0
        return [(inputs, y)]

    def loss(
        self, net: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> torch.Tensor:
        out = net(inputs)
        labels = labels.to(out["image"].device)
        total = sum(
            multilabel_soft_margin(out[head], labels)
            for head in ("image", "mid", "plus")
            if head in out
        )
        valid = inputs["audio_valid"].bool()
        if valid.any():
            total = total + multilabel_soft_margin(out["audio"][valid], labels[valid])
        return total

    @torch.no_grad()
    def correct(
        self, net: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> tuple[int, int]:
        logits = net(inputs)["image"].cpu()
        top = logits.argmax(1)
        return int(labels[torch.arange(len(top)), top].sum()), len(labels)
