"""The tag-free students of Sec. 5: STA (Eq. 15-16) and STA+ (Eq. 18-19).

Inputs are encoder features, as for the classification nets:

- STA: ``image`` (B, 3, C5, h, w) F5 of t-1, t, t+1; ``F4`` and ``F3`` (B, C, h', w') side
  outputs of the target frame; ``audio`` (B, D); ``gate`` (B,) optional.
- STA+: ``image`` (B, 1 + n, 3, C, h, w) dilated-VGG features of each node's 3-frame
  fragment (node 0 the target fragment); ``audio`` (B, 1 + n, D); ``gate`` (B, 1 + n).

Both return map logits; ``torch.sigmoid`` of them is the predicted fixation map.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from models.cgcn import CGCN
from models.classifiers import init_new_layers
from models.config import StudentConfig
from models.fuse import STAFuse

Inputs = Mapping[str, torch.Tensor]


class Refine(nn.Module):
    """``Ref``: refine the input to a fixed channel number (3x3 conv + ReLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


def upsample_to(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """The ``up-arrow`` of Eq. 16 / 19: bilinear resize to ``size``."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def out_after_upsampling(
    out: nn.Conv2d, x: torch.Tensor, size: tuple[int, int] | torch.Size
) -> torch.Tensor:
    """``out(up(x))`` for a 1x1 conv ``out``, computed as ``up(out(x))``: the two are
    equal. A 1x1 conv is the same affine map ``W x + b`` at every pixel; bilinear
    resizing makes each output pixel a weighted sum of input pixels with weights that
    sum to 1, per channel; so resizing commutes with ``W`` and keeps ``b``. The resize
    then moves one channel instead of ``x``'s (32 in the tiny preset): on the 2-core CPU
    the STA+ students' read-out (resize, conv and their backward) took a fifth of an
    epoch's time."""
    assert out.kernel_size == (1, 1), out
    return upsample_to(out(x), size)


class STA(nn.Module):
    """STA (Fig. 12-D): the STA fuse (Eq. 15), then the decoder of Eq. 16:
    ``up(Ref(Ref(F3) (+) up(Ref(Ref(F4) (+) up(Ref(Ref(F5) (+) sta))))))``, and a final
    1x1 conv to one channel (the map logit)."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        c3, c4, c5 = cfg.side_channels
        r = cfg.refine_channels
        self.fuse = STAFuse(
            cfg.image_channels, cfg.audio_dim, cfg.image_channels, cfg.image_channels
        )
        self.side5, self.side4, self.side3 = Refine(c5, r), Refine(c4, r), Refine(c3, r)
        self.merge5 = Refine(r + cfg.image_channels, r)
        self.merge4 = Refine(2 * r, r)
        self.merge3 = Refine(2 * r, r)
        self.out = nn.Conv2d(r, 1, 1)
        init_new_layers(self)

    def forward_features(self, inputs: Inputs) -> torch.Tensor:
        """The fused feature ``sta`` of Eq. 15: (B, C5, h, w)."""
        return self.fuse(inputs["image"], inputs["audio"], inputs.get("gate"))

    def forward(self, inputs: Inputs, size: tuple[int, int] | None = None) -> torch.Tensor:
        sta = self.forward_features(inputs)
        f5 = inputs["image"][:, 1]
        f4, f3 = inputs["F4"], inputs["F3"]
        x = upsample_to(self.merge5(torch.cat([self.side5(f5), sta], dim=1)), f4.shape[-2:])
        x = upsample_to(self.merge4(torch.cat([self.side4(f4), x], dim=1)), f3.shape[-2:])
        x = self.merge3(torch.cat([self.side3(f3), x], dim=1))
        size = size or (2 * f3.shape[-2], 2 * f3.shape[-1])
        return out_after_upsampling(self.out, x, size)[:, 0]  # = out(up(x))


class STAPlus(nn.Module):
    """STA+ (Fig. 12-H): an STA branch (Eq. 15 on each 3-frame fragment, 1x1 to the node
    width) gives the nodes, the C-GCN reasons over target + n fragments (Eq. 18), and a
    read-out per node gives a map (Eq. 19): ``Ref_1( up( Ref_32( h (+) S ) ) )`` with ``S``
    the spatial feature of the node fragment's middle frame."""

    def __init__(self, cfg: StudentConfig) -> None:
        super().__init__()
        c = cfg.image_channels
        self.fuse = STAFuse(c, cfg.audio_dim, c, c)
        self.to_node = nn.Conv2d(c, cfg.graph_channels, 1)
        self.cgcn = CGCN(cfg.graph_channels, cfg.cgcn)
        # Ref_32 of Eq. 19 is Eq. 16's Ref (3x3 conv + ReLU), not a 1x1: with a 1x1 the
        # read-out saw no neighbourhood and STA+ reached a held-out pseudo-CC of ~0.4.
        self.readout_refine = Refine(cfg.graph_channels + c, cfg.refine_channels)
        self.readout_out = nn.Conv2d(cfg.refine_channels, 1, 1)
        init_new_layers(self)

    def forward_graph(self, inputs: Inputs) -> torch.Tensor:
        """Node states after m steps: (B, 1 + n, graph_channels, h, w)."""
        image = inputs["image"]
        b, n = image.shape[:2]
        gate = inputs.get("gate")
        sta = self.fuse(
            image.flatten(0, 1),
            inputs["audio"].flatten(0, 1),
            None if gate is None else gate.flatten(0, 1),
        )
        nodes = F.relu(self.to_node(sta))
        return self.cgcn(nodes.reshape(b, n, *nodes.shape[1:]))

    def forward(self, inputs: Inputs, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Map logits of every node: (B, 1 + n, H, W); node 0 is the target's map."""
        graph = self.forward_graph(inputs)
        b, n = graph.shape[:2]
        spatial = inputs["image"][:, :, 1]  # middle frame of each node's fragment
        x = torch.cat([graph, spatial], dim=2).flatten(0, 1)
        x = self.readout_refine(x)
        x = out_after_upsampling(self.readout_out, x, size or (4 * x.shape[-2], 4 * x.shape[-1]))
        return x[:, 0].reshape(b, n, *x.shape[-2:])
