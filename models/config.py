"""Typed, frozen configs for every module in ``models``.

Each config has a ``paper`` form (the sizes the paper's code uses) and a ``tiny`` form
(a few thousand parameters, for CPU tests and the embedded demo). Modules are built
from these configs only; nothing here reads files or knows about data.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# New layers are initialised normal(0, 0.01) as in the authors' code.
NEW_LAYER_INIT_STD = 0.01


@dataclass(frozen=True)
class ImageTrunkConfig:
    """A ResNet/ResNeXt-style image trunk (torchvision ``Bottleneck``/``BasicBlock``).

    The default is ResNeXt-101 32x8d, the encoder of the paper code's S / ST / SA / STA
    nets. Module names mirror torchvision's ``ResNet`` so its state dicts load as they
    are. ``layer_strides`` lets the tiny variant keep usable CAM resolution at small
    inputs.
    """

    block: str = "bottleneck"  # "bottleneck" | "basic"
    layers: tuple[int, ...] = (3, 4, 23, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    layer_strides: tuple[int, ...] = (1, 2, 2, 2)
    groups: int = 32
    width_per_group: int = 8
    stem_width: int = 64
    weights: str | None = None  # local path or s3:// URI of a torchvision-format state dict
    frozen: bool = True

    @property
    def channels(self) -> dict[str, int]:
        """Channels of the side outputs F3 (layer2), F4 (layer3), F5 (layer4)."""
        expansion = 4 if self.block == "bottleneck" else 1
        return {
            "F3": self.widths[1] * expansion,
            "F4": self.widths[2] * expansion,
            "F5": self.widths[3] * expansion,
        }

    @staticmethod
    def paper() -> ImageTrunkConfig:
        return ImageTrunkConfig()

    @staticmethod
    def tiny() -> ImageTrunkConfig:
        # stride 4 stem, then 1,2,2,1: F3 at stride 8, F4 and F5 at stride 16.
        return ImageTrunkConfig(
            block="bottleneck",
            layers=(1, 1, 1, 1),
            widths=(8, 16, 24, 32),
            layer_strides=(1, 2, 2, 1),
            groups=4,
            width_per_group=16,  # grouped width = planes, so every group has channels
            stem_width=16,
        )


@dataclass(frozen=True)
class DilatedVGGConfig:
    """VGG16 with stride 8: pools 1-3 kept, pool4 a 3x3 stride-1 pool, conv5 dilated by 2,
    no pool5 (the paper code's S+ / ST+ / SA+ / STA+ encoder; 32x32 maps at 256 input)."""

    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    convs_per_stage: tuple[int, ...] = (2, 2, 3, 3, 3)
    weights: str | None = None
    frozen: bool = True

    @property
    def channels(self) -> int:
        return self.widths[-1]

    @staticmethod
    def paper() -> DilatedVGGConfig:
        return DilatedVGGConfig()

    @staticmethod
    def tiny() -> DilatedVGGConfig:
        return DilatedVGGConfig(widths=(8, 16, 24, 32, 32), convs_per_stage=(1, 1, 1, 1, 1))


@dataclass(frozen=True)
class AudioEncoderConfig:
    """ResNet-18-style trunk over a 1-channel log spectrogram with a NetVLAD head
    (16 clusters x 512 = 8192-d, L2-normalised), as the VGGSound model the paper uses."""

    layers: tuple[int, ...] = (2, 2, 2, 2)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem_width: int = 64
    vlad_clusters: int = 16
    weights: str | None = None
    frozen: bool = True

    @property
    def out_dim(self) -> int:
        return self.vlad_clusters * self.widths[-1]

    @staticmethod
    def paper() -> AudioEncoderConfig:
        return AudioEncoderConfig()

    @staticmethod
    def tiny() -> AudioEncoderConfig:
        return AudioEncoderConfig(
            layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), stem_width=8, vlad_clusters=4
        )


# Where the + nets' (and STA+'s) stride-8 features come from (``EncodersConfig.plus_trunk``).
PLUS_TRUNKS = ("vgg", "image")
# The stride of the + nets' maps (32 x 32 at 256 input, as the paper's C-GCN nodes).
PLUS_STRIDE = 8


@dataclass(frozen=True)
class EncodersConfig:
    """The shared encoders. ``plus_trunk``: ``vgg`` (the authors' stride-8 dilated VGG16,
    ``plus``) or ``image`` (the image trunk itself run at stride 8, its layers past
    stride 8 dilated with the same weights, read at F4: the + nets then stand on the
    backbone of the S / ST / SA nets, as the paper's Sec. 4.3 describes them, "directly
    adopted partial of the SCAM's classification nets as their backbones"; ``plus`` is
    unused). The tiny preset uses ``image``: without ImageNet weights its VGG is fitted
    from scratch and does not learn (see bench/RESULTS.md, "SCAM+")."""

    image: ImageTrunkConfig = field(default_factory=ImageTrunkConfig)
    plus: DilatedVGGConfig = field(default_factory=DilatedVGGConfig)
    audio: AudioEncoderConfig = field(default_factory=AudioEncoderConfig)
    plus_trunk: str = "vgg"

    def __post_init__(self) -> None:
        if self.plus_trunk not in PLUS_TRUNKS:
            raise ValueError(f"plus_trunk {self.plus_trunk!r}: one of {', '.join(PLUS_TRUNKS)}")

    @property
    def plus_channels(self) -> int:
        """Channels of the + nets' features."""
        return self.image.channels["F4"] if self.plus_trunk == "image" else self.plus.channels

    @staticmethod
    def paper() -> EncodersConfig:
        return EncodersConfig(
            ImageTrunkConfig.paper(), DilatedVGGConfig.paper(), AudioEncoderConfig.paper()
        )

    @staticmethod
    def tiny() -> EncodersConfig:
        return EncodersConfig(
            ImageTrunkConfig.tiny(),
            DilatedVGGConfig.tiny(),
            AudioEncoderConfig.tiny(),
            plus_trunk="image",
        )


@dataclass(frozen=True)
class CGCNConfig:
    """C-GCN settings (Sec. 4.3): ``steps`` = m reasoning steps, ``nodes`` = n
    multigranularity nodes, ``td`` / ``tr`` = the refine layer's threshold and rate.
    Defaults are the paper's best (m=3, n=2, Td=0.8, Tr=0.6)."""

    steps: int = 3
    nodes: int = 2
    td: float = 0.8
    tr: float = 0.6

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 8:
            raise ValueError(f"C-GCN steps m={self.steps}: expected 1..8")
        if not 1 <= self.nodes <= 8:
            raise ValueError(f"C-GCN nodes n={self.nodes}: expected 1..8")
        if not 0.0 < self.td <= 1.0 or not 0.0 <= self.tr <= 1.0:
            raise ValueError(
                f"refine layer Td={self.td}, Tr={self.tr}: expected Td in (0,1], Tr in [0,1]"
            )


@dataclass(frozen=True)
class HeadConfig:
    """Classification head: ``convs`` 3x3 conv + ReLU layers of ``hidden`` channels, then
    the 1x1 conv to c (the classifier of Sec. 3.3); the paper code uses 0 convs for S and
    3 for the others. ``hidden=0`` means the input width."""

    convs: int = 3
    hidden: int = 0


@dataclass(frozen=True)
class NetConfig:
    """What a classification net needs besides its encoder: classes, widths, C-GCN."""

    num_classes: int
    image_channels: int  # channels of the spatial feature the net reads
    audio_dim: int = 0
    head: HeadConfig = field(default_factory=HeadConfig)
    cgcn: CGCNConfig = field(default_factory=CGCNConfig)
    fuse_channels: int = 0  # width of fuse-module intermediates; 0 = image_channels
    plus_init: str = "identity"  # a + net's class-map layers: "identity" or "normal" (0.01)
    # The audio switch's architecture: "sa" (the paper: "a binary net with the SA
    # architecture") or "bilinear" (the authors' code; see models.classifiers).
    switch_arch: str = "sa"


# STA+'s node width c (Eq. 18). The paper's is 28, AVE's class count; the students are
# tag-free, so it stays 28 on any corpus. Tying it to the corpus's class count instead
# starved STA+ on small vocabularies: with 3 tags STA+ short / long reached held-out CC
# 0.54 / 0.59 against the synthetic ground truth, with 28 they reach 0.78 / 0.71 (the
# read-out of Eq. 19 sees only c graph channels beside the spatial feature).
STUDENT_GRAPH_CHANNELS = 28


@dataclass(frozen=True)
class StudentConfig:
    """STA / STA+ (Sec. 5): decoder refine width 32 as in Eq. 16 / Eq. 19."""

    image_channels: int  # channels of the deepest spatial feature s (F5)
    side_channels: tuple[int, int, int]  # channels of F3, F4, F5
    audio_dim: int
    refine_channels: int = 32
    graph_channels: int = STUDENT_GRAPH_CHANNELS  # node width of STA+'s C-GCN (c in Eq. 18)
    cgcn: CGCNConfig = field(default_factory=CGCNConfig)
