"""Encoders (Eq. 4): the image trunk, the stride-8 dilated VGG16, and the audio encoder.

Built from torchvision's block definitions (restated in :mod:`models.resnet_blocks`),
with module names that mirror torchvision's so its state dicts load as they are. Weights
are never downloaded: a config names a local or ``s3://`` file, read by
:func:`factory.io.storage.load_state_dict` and handed to the ``load_*_weights`` function
of the encoder, the one place that remaps checkpoint keys for that encoder.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from models.config import (
    PLUS_STRIDE,
    AudioEncoderConfig,
    DilatedVGGConfig,
    EncodersConfig,
    ImageTrunkConfig,
)
from models.resnet_blocks import BasicBlock, Bottleneck

# Channel taps of the image trunk, named as the paper names the side outputs (Eq. 16):
# F3 = layer2, F4 = layer3 (the S net's input), F5 = layer4 (ST / SA / STA input).
IMAGE_TAPS = ("F3", "F4", "F5")


def _make_resnet_layer(
    block: type[nn.Module],
    inplanes: int,
    planes: int,
    blocks: int,
    stride: int,
    groups: int,
    base_width: int,
) -> tuple[nn.Sequential, int]:
    """torchvision's ``ResNet._make_layer`` without the class around it."""
    expansion = block.expansion  # type: ignore[attr-defined]
    downsample = None
    if stride != 1 or inplanes != planes * expansion:
        downsample = nn.Sequential(
            nn.Conv2d(inplanes, planes * expansion, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * expansion),
        )
    kwargs = {"groups": groups, "base_width": base_width} if block is Bottleneck else {}
    layers = [block(inplanes, planes, stride, downsample, **kwargs)]
    inplanes = planes * expansion
    for _ in range(1, blocks):
        layers.append(block(inplanes, planes, **kwargs))
    return nn.Sequential(*layers), inplanes


class ImageTrunk(nn.Module):
    """ResNet/ResNeXt trunk returning the side outputs F3, F4, F5 (no pooling, no fc).

    >>> trunk = ImageTrunk(ImageTrunkConfig.tiny())
    >>> {k: tuple(v.shape) for k, v in trunk(torch.zeros(1, 3, 64, 64)).items()}
    {'F3': (1, 64, 8, 8), 'F4': (1, 96, 4, 4), 'F5': (1, 128, 4, 4)}
    """

    def __init__(self, cfg: ImageTrunkConfig) -> None:
        super().__init__()
        if len(cfg.layers) != 4 or len(cfg.widths) != 4 or len(cfg.layer_strides) != 4:
            raise ValueError("ImageTrunkConfig: layers, widths and layer_strides need 4 entries")
        block = {"bottleneck": Bottleneck, "basic": BasicBlock}[cfg.block]
        self.cfg = cfg
        self.conv1 = nn.Conv2d(3, cfg.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = cfg.stem_width
        self.channels: dict[str, int] = {}
        for i, (n, w, s) in enumerate(zip(cfg.layers, cfg.widths, cfg.layer_strides, strict=True)):
            layer, inplanes = _make_resnet_layer(
                block, inplanes, w, n, s, cfg.groups, cfg.width_per_group
            )
            self.add_module(f"layer{i + 1}", layer)
            if i >= 1:
                self.channels[IMAGE_TAPS[i - 1]] = inplanes
        self.strides = {
            "F3": 4 * cfg.layer_strides[0] * cfg.layer_strides[1],
            "F4": 4 * cfg.layer_strides[0] * cfg.layer_strides[1] * cfg.layer_strides[2],
        }
        self.strides["F5"] = self.strides["F4"] * cfg.layer_strides[3]
        init_encoder(self)

    def forward(self, x: torch.Tensor, output_stride: int | None = None) -> dict[str, torch.Tensor]:
        """Side outputs F3, F4, F5. ``output_stride`` (e.g. 8): a layer whose stride would
        take the maps below 1/output_stride of the input runs with stride 1 and dilated
        3x3 convs instead, as do the layers after it (torchvision's
        ``replace_stride_with_dilation``, DeepLab's atrous trunk): finer maps of the same
        weights."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        stride, dilation, outs = 4, 1, []
        for layer, step in zip(
            (self.layer1, self.layer2, self.layer3, self.layer4),
            self.cfg.layer_strides,
            strict=True,
        ):
            if dilation == 1 and (output_stride is None or stride * step <= output_stride):
                x, stride = layer(x), stride * step
            else:
                x = _dilated_layer(layer, x, dilation, dilation * step)
                dilation *= step
            outs.append(x)
        return {"F3": outs[1], "F4": outs[2], "F5": outs[3]}


def _dilated_block(block: nn.Module, x: torch.Tensor, dilation: int) -> torch.Tensor:
    """A torchvision ``Bottleneck`` / ``BasicBlock`` at stride 1 with its 3x3 convs dilated
    by ``dilation``: the block ``_make_layer(dilate=True)`` would build, on these weights."""

    def conv3x3(conv: nn.Conv2d, inp: torch.Tensor) -> torch.Tensor:
        return F.conv2d(inp, conv.weight, conv.bias, 1, dilation, dilation, conv.groups)

    if isinstance(block, Bottleneck):
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.relu(block.bn2(conv3x3(block.conv2, out)))
        out = block.bn3(block.conv3(out))
    else:
        out = block.relu(block.bn1(conv3x3(block.conv1, x)))
        out = block.bn2(conv3x3(block.conv2, out))
    identity = x
    if block.downsample is not None:
        conv, bn = block.downsample[0], block.downsample[1]
        identity = bn(F.conv2d(x, conv.weight, conv.bias))
    return block.relu(out + identity)


def _dilated_layer(layer: nn.Sequential, x: torch.Tensor, first: int, rest: int) -> torch.Tensor:
    """A ResNet layer at stride 1: the first block dilated by ``first`` (the dilation
    before this layer), the others by ``rest`` (it times the stride replaced), as
    torchvision builds them."""
    for k, block in enumerate(layer):
        x = _dilated_block(block, x, first if k == 0 else rest)
    return x


def init_encoder(module: nn.Module) -> None:
    """torchvision's initialisation (Kaiming normal, fan-out, for convs; BatchNorm to
    identity), so a randomly initialised encoder keeps unit-scale activations. Loaded
    weights replace it."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def load_image_trunk_weights(trunk: ImageTrunk, state: Mapping[str, torch.Tensor]) -> None:
    """Load a torchvision ``ResNet``/``ResNeXt`` state dict (drops ``fc.*``; strips a
    ``module.`` prefix left by DataParallel)."""
    remapped = {k.removeprefix("module."): v for k, v in state.items()}
    remapped = {k: v for k, v in remapped.items() if not k.startswith("fc.")}
    trunk.load_state_dict(remapped, strict=True)


def vgg_layer_plan(cfg: DilatedVGGConfig) -> list[tuple[str, int, int]]:
    """The ``features`` indices of torchvision's VGG for this config, with the dilated
    changes: list of (kind, in/out or pool size, dilation). Index i of the list is the
    torchvision ``features.i`` module, so state dict keys line up."""
    plan: list[tuple[str, int, int]] = []
    in_ch = 3
    for stage, (width, convs) in enumerate(zip(cfg.widths, cfg.convs_per_stage, strict=True)):
        dilation = 2 if stage == 4 else 1
        for _ in range(convs):
            plan.append(("conv", in_ch, dilation))
            plan.append(("relu", width, 0))
            in_ch = width
        plan.append(("pool" if stage < 3 else "pool_s1" if stage == 3 else "drop", 0, 0))
    return plan


class DilatedVGG(nn.Module):
    """Stride-8 dilated VGG16 ``features`` (S+ / ST+ / SA+ / STA+ encoder).

    >>> vgg = DilatedVGG(DilatedVGGConfig.tiny())
    >>> tuple(vgg(torch.zeros(1, 3, 64, 64)).shape)
    (1, 32, 8, 8)
    """

    def __init__(self, cfg: DilatedVGGConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        widths = iter(
            w for w, n in zip(cfg.widths, cfg.convs_per_stage, strict=True) for _ in range(n)
        )
        for kind, in_ch, dilation in vgg_layer_plan(cfg):
            if kind == "conv":
                layers.append(
                    nn.Conv2d(in_ch, next(widths), 3, padding=dilation, dilation=dilation)
                )
            elif kind == "relu":
                layers.append(nn.ReLU(inplace=True))
            elif kind == "pool":
                layers.append(nn.MaxPool2d(2, 2))
            elif kind == "pool_s1":
                layers.append(nn.MaxPool2d(3, stride=1, padding=1))
            # "drop": torchvision's pool5 index is left out (the last entry, so no gap)
        self.features = nn.Sequential(*layers)
        self.channels = cfg.widths[-1]
        self.stride = 8
        init_encoder(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def load_dilated_vgg_weights(vgg: DilatedVGG, state: Mapping[str, torch.Tensor]) -> None:
    """Load a torchvision ``VGG`` state dict: ``features.*`` keep their indices (the
    dilated convs have the same shapes), ``classifier.*`` is dropped."""
    remapped = {k.removeprefix("module."): v for k, v in state.items()}
    remapped = {k: v for k, v in remapped.items() if k.startswith("features.")}
    vgg.load_state_dict(remapped, strict=True)


class NetVLAD(nn.Module):
    """NetVLAD pooling (Arandjelovic et al.): soft-assign local descriptors to K
    clusters, sum residuals, intra-normalise, L2-normalise; output K * D.

    The L2-normalised descriptor is multiplied by ``sqrt(K * D)`` so its elements have
    unit RMS: a fixed scale (no information changes) that keeps the default
    initialisation and learning rates of the layers reading it meaningful."""

    def __init__(self, clusters: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, clusters, 1, bias=True)
        self.centroids = nn.Parameter(torch.randn(clusters, dim) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _d = x.shape[:2]
        x = F.normalize(x, dim=1)
        assign = F.softmax(self.conv(x).flatten(2), dim=1)  # B, K, L
        feats = x.flatten(2)  # B, D, L
        vlad = (
            torch.einsum("bkl,bdl->bkd", assign, feats)
            - assign.sum(-1, keepdim=True) * self.centroids
        )
        vlad = F.normalize(vlad, dim=2)
        return F.normalize(vlad.reshape(b, -1), dim=1) * (vlad.shape[1] * vlad.shape[2]) ** 0.5


class AudioEncoder(nn.Module):
    """ResNet-18 over a 1-channel log spectrogram, NetVLAD head (VGGSound-style).

    >>> enc = AudioEncoder(AudioEncoderConfig.tiny())
    >>> tuple(enc(torch.zeros(2, 1, 65, 51)).shape)
    (2, 128)
    """

    def __init__(self, cfg: AudioEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.conv1 = nn.Conv2d(1, cfg.stem_width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(cfg.stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = cfg.stem_width
        for i, (n, w) in enumerate(zip(cfg.layers, cfg.widths, strict=True)):
            layer, inplanes = _make_resnet_layer(
                BasicBlock, inplanes, w, n, 1 if i == 0 else 2, 1, 64
            )
            self.add_module(f"layer{i + 1}", layer)
        init_encoder(self)
        self.netvlad = NetVLAD(cfg.vlad_clusters, inplanes)
        self.out_dim = cfg.out_dim

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(spec))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.netvlad(x)


def load_audio_encoder_weights(enc: AudioEncoder, state: Mapping[str, torch.Tensor]) -> None:
    """Load a VGGSound-style checkpoint: accepts torchvision ResNet-18 keys, the
    ``audnet.`` / ``module.`` prefixes of the VGGSound release, and drops ``fc.*``."""
    remapped = {}
    for key, value in state.items():
        k = key.removeprefix("module.").removeprefix("audnet.")
        if k.startswith("fc."):
            continue
        remapped[k] = value
    enc.load_state_dict(remapped, strict=True)


class AtrousImageTap(nn.Module):
    """The image trunk run at output stride 8 (:meth:`ImageTrunk.forward`), read at F4:
    the + nets' features when ``EncodersConfig.plus_trunk == "image"``. It holds the
    trunk without registering it (no second copy of its weights in a state dict; moving
    or freezing the encoders moves and freezes the trunk once)."""

    def __init__(self, trunk: ImageTrunk) -> None:
        super().__init__()
        self._trunk = [trunk]
        self.channels = trunk.channels["F4"]
        self.stride = PLUS_STRIDE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._trunk[0](x, output_stride=PLUS_STRIDE)["F4"]


class Encoders(nn.Module):
    """The three shared encoders. In frozen mode (the default for scale) their features
    are computed once per frame and shared by every net and every window. ``plus`` is
    the dilated VGG16 or, with ``plus_trunk="image"``, the image trunk at stride 8."""

    def __init__(
        self,
        image: ImageTrunkConfig,
        plus: DilatedVGGConfig,
        audio: AudioEncoderConfig,
        plus_trunk: str = "vgg",
    ) -> None:
        super().__init__()
        self.image = ImageTrunk(image)
        self.plus = DilatedVGG(plus) if plus_trunk == "vgg" else AtrousImageTap(self.image)
        self.audio = AudioEncoder(audio)
        self.frozen = {"image": image.frozen, "plus": plus.frozen, "audio": audio.frozen}
        for name in ("image", "plus", "audio"):
            if self.frozen[name]:
                getattr(self, name).requires_grad_(False)

    @staticmethod
    def from_config(cfg: EncodersConfig) -> Encoders:
        return Encoders(cfg.image, cfg.plus, cfg.audio, cfg.plus_trunk)

    def train(self, mode: bool = True) -> Encoders:
        # Frozen encoders stay in eval mode (BatchNorm statistics are not updated).
        super().train(mode)
        for name, frozen in self.frozen.items():
            if frozen:
                getattr(self, name).eval()
        return self
