"""Classification nets of Fig. 5: S, ST, SA (A-C), the audio switch, S+, ST+, SA+ (E-G),
and the audio-only tagger that labels the switch's training data.

Every net reads encoder *features* (so frozen encoders run once per frame and are
shared), passed as a mapping:

- ``image``: (B, T, C, h, w) features of the frames the net reads (T = 1, or 3 for
  t-1, t, t+1); a ``+`` net takes (B, 1 + n, T, C, h, w), node 0 the target;
- ``audio``: (B, D) audio vectors (``(B, 1 + n, D)`` for SA+);
- ``gate``: (B,) audio switch decisions in {0, 1} (``(B, 1 + n)`` for SA+), optional.

``forward_features`` returns the class maps before pooling (B, c, h, w): the CAM of
Eq. 1 is read from them without reaching into the net; ``forward_head`` is the GAP
classifier of Sec. 3.3.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from models.cgcn import CGCN, init_class_map_conv
from models.config import NEW_LAYER_INIT_STD, HeadConfig, NetConfig
from models.fuse import SAFuse, STFuse

Inputs = Mapping[str, torch.Tensor]


def init_new_layers(module: nn.Module) -> None:
    """Layers added on top of an encoder: Kaiming-normal (fan-in) weights for the layers
    that feed a nonlinearity, normal(0, 0.01) for each 1x1 classifier (the authors'
    value), zero biases. The authors use 0.01 everywhere; at their widths (thousands of
    input channels) that is about unit gain, at the tiny widths it would vanish, so the
    fan-in rule keeps the same behaviour at every size."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, ClassMapHead):
            nn.init.normal_(m.layers[-1].weight, std=NEW_LAYER_INIT_STD)


class ClassMapHead(nn.Module):
    """``convs`` x (3x3 conv + ReLU), then the 1x1 conv to c: the class maps."""

    def __init__(self, in_channels: int, num_classes: int, cfg: HeadConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        hidden = cfg.hidden or in_channels
        for _ in range(cfg.convs):
            layers += [nn.Conv2d(width, hidden, 3, padding=1), nn.ReLU(inplace=True)]
            width = hidden
        layers.append(nn.Conv2d(width, num_classes, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ClassificationNet(nn.Module):
    """Base: subclasses implement ``forward_features`` (features -> class maps)."""

    num_classes: int

    def forward_features(self, inputs: Inputs) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, class_maps: torch.Tensor) -> torch.Tensor:
        """GAP over the class maps: (B, c, h, w) -> logits (B, c)."""
        return class_maps.mean(dim=(-2, -1))

    def forward(self, inputs: Inputs) -> torch.Tensor:
        return self.forward_head(self.forward_features(inputs))


class SNet(ClassificationNet):
    """S (Fig. 5-A): the target frame's spatial feature straight into the classifier."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        self.head = ClassMapHead(cfg.image_channels, cfg.num_classes, cfg.head)
        init_new_layers(self)

    def forward_features(self, inputs: Inputs) -> torch.Tensor:
        image = inputs["image"]
        return self.head(image[:, image.shape[1] // 2])


class STNet(ClassificationNet):
    """ST (Fig. 5-C): ST fuse (Eq. 6) over t-1, t, t+1, then the classifier."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        mid = cfg.fuse_channels or cfg.image_channels
        self.fuse = STFuse(cfg.image_channels, mid)
        self.head = ClassMapHead(2 * cfg.image_channels, cfg.num_classes, cfg.head)
        init_new_layers(self)

    def forward_features(self, inputs: Inputs) -> torch.Tensor:
        return self.head(self.fuse(inputs["image"]))


class SANet(ClassificationNet):
    """SA (Fig. 5-B): SA fuse (Eq. 5) of the target frame and its 1 s of audio, gated by
    the audio switch, then the classifier."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        if cfg.audio_dim <= 0:
            raise ValueError("SANet needs audio_dim > 0")
        self.num_classes = cfg.num_classes
        self.fuse = SAFuse(cfg.image_channels, cfg.audio_dim)
        self.head = ClassMapHead(2 * cfg.image_channels, cfg.num_classes, cfg.head)
        init_new_layers(self)

    def forward_features(self, inputs: Inputs) -> torch.Tensor:
        image = inputs["image"]
        return self.head(
            self.fuse(image[:, image.shape[1] // 2], inputs["audio"], inputs.get("gate"))
        )


class AudioSwitch(SANet):
    """The audio switch (Sec. 3.3): a binary net with the SA architecture (no gate of its
    own) whose single logit says whether the sound belongs to the picture; ``phi(a) = a``
    when the logit is > 0, else zeros."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__(dataclasses.replace(cfg, num_classes=1))

    def forward_features(self, inputs: Inputs) -> torch.Tensor:
        image = inputs["image"]
        return self.head(self.fuse(image[:, image.shape[1] // 2], inputs["audio"], None))

    @torch.no_grad()
    def decide(self, inputs: Inputs) -> torch.Tensor:
        """(B,) float gate in {0, 1}."""
        return (self.forward(inputs)[:, 0] > 0).float()


# Width of the bilinear switch's image and audio embeddings (the authors' code: 128).
SWITCH_EMBED = 128


class BilinearAudioSwitch(ClassificationNet):
    """The audio switch as the authors' code builds it (SPEC.md, "code notes"): the image
    feature pooled and projected to 128, the audio vector projected to 128, a bilinear
    layer ``Bilinear(128, 128, 128)`` over the pair, then one logit (the code's 2-way
    output as the binary Eq. 7 loss reads it: "on" when the logit is > 0). It compares
    picture and sound directly, where the SA architecture (``AudioSwitch``) has to read
    agreement out of an audio-gated image map. An option (``Preset.switch_arch``)."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        if cfg.audio_dim <= 0:
            raise ValueError("the audio switch needs audio_dim > 0")
        self.num_classes = 1
        self.image_embed = nn.Linear(cfg.image_channels, SWITCH_EMBED)
        self.audio_embed = nn.Linear(cfg.audio_dim, SWITCH_EMBED)
        self.bilinear = nn.Bilinear(SWITCH_EMBED, SWITCH_EMBED, SWITCH_EMBED)
        self.out = nn.Linear(SWITCH_EMBED, 1)
        init_new_layers(self)

    def forward_features(self, inputs: Inputs) -> torch.Tensor:
        """(B, 1, 1, 1): the logit as a 1x1 class map, so GAP (``forward_head``) is it."""
        image = inputs["image"]
        pooled = image[:, image.shape[1] // 2].mean(dim=(-2, -1))
        joint = self.bilinear(
            F.relu(self.image_embed(pooled)), F.relu(self.audio_embed(inputs["audio"]))
        )
        return self.out(F.relu(joint))[:, :, None, None]

    @torch.no_grad()
    def decide(self, inputs: Inputs) -> torch.Tensor:
        """(B,) float gate in {0, 1}."""
        return (self.forward(inputs)[:, 0] > 0).float()


def audio_switch(cfg: NetConfig) -> ClassificationNet:
    """The switch ``cfg.switch_arch`` names: ``sa`` (the paper) or ``bilinear``."""
    if cfg.switch_arch == "sa":
        return AudioSwitch(cfg)
    if cfg.switch_arch == "bilinear":
        return BilinearAudioSwitch(cfg)
    raise ValueError(f"switch_arch {cfg.switch_arch!r}: expected 'sa' or 'bilinear'")


class AudioTagger(nn.Module):
    """Audio-only classifier (audio vector -> c logits). Its agreement with the tag is the
    audio switch's training label, so no outside audio classifier is needed."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        hidden = max(32, min(512, cfg.audio_dim // 4))
        self.mlp = nn.Sequential(
            nn.Linear(cfg.audio_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, cfg.num_classes),
        )

    def forward(self, inputs: Inputs) -> torch.Tensor:
        return self.mlp(inputs["audio"])


class PlusNet(ClassificationNet):
    """S+ / ST+ / SA+ (Fig. 5 E-G): a branch net (S, ST or SA, shared weights) maps the
    target and each of the n multigranularity inputs to class maps (the nodes), the
    C-GCN reasons over them, and the final target node goes to the classifier (Sec.
    4.3.1: "the final status h^m_TA will be fed into a classifier"; the classifier of
    Sec. 3.3 is a 1x1 conv to c, then GAP). The CAM is read from that classifier's maps.
    The classifier matters: the C-GCN's sigmoid gates shrink negative class evidence
    towards 0, so without it no class could get a clearly negative logit.

    Initialisation (``cfg.plus_init``; the paper is silent, the authors' code draws every
    new layer from normal(0, 0.01)). The classifier and the C-GCN's affinity convs are
    c x c 1x1 convs over class maps. ``identity`` (the default) starts both as a
    pass-through: the + net starts as its branch's class maps after the C-GCN, and
    Eq. 10 as their spatial affinity. ``normal`` is the authors' value; at c = 8 tags it
    made both layers ~100x smaller than the maps they read: the fused logits' gradient
    reached the branch scaled by ~0.01, Eq. 9's softmax over near-zero keys stayed
    uniform, so every message was a per-channel constant that Eq. 1's Z removes (seen on
    the Table 1 world: the affinity weights stayed at mean |w| 0.016-0.029 after
    training and S+ gave the same class maps, to 3e-5, for its short and long nodes)."""

    def __init__(self, branch: ClassificationNet, cfg: NetConfig) -> None:
        super().__init__()
        self.num_classes = cfg.num_classes
        self.branch = branch
        self.cgcn = CGCN(cfg.num_classes, cfg.cgcn, init=cfg.plus_init)
        self.classifier = ClassMapHead(cfg.num_classes, cfg.num_classes, HeadConfig(convs=0))
        init_class_map_conv(self.classifier.layers[-1], cfg.plus_init)

    def branch_maps(self, inputs: Inputs) -> torch.Tensor:
        """The branch's class maps of every node before reasoning: (B, 1 + n, c, h, w)."""
        image = inputs["image"]
        b, n = image.shape[:2]
        flat = {"image": image.flatten(0, 1)}
        for key in ("audio", "gate"):
            if inputs.get(key) is not None:
                flat[key] = inputs[key].flatten(0, 1)
        maps = self.branch.forward_features(flat)
        return maps.reshape(b, n, *maps.shape[1:])

    def forward_graph(self, inputs: Inputs) -> torch.Tensor:
        """All node states after m steps: (B, 1 + n, c, h, w), node 0 = target."""
        return self.cgcn(self.branch_maps(inputs))

    def forward_features(self, inputs: Inputs) -> torch.Tensor:
        return self.classifier(self.forward_graph(inputs)[:, 0])

    def forward_with_branch(self, inputs: Inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(fused logits, the target branch's own logits): the training loss weighs the
        raw branch too (0.4 in the authors' recipe), which keeps the branch's class maps
        tied to the evidence the C-GCN then reasons over."""
        nodes = self.branch_maps(inputs)
        fused = self.forward_head(self.classifier(self.cgcn(nodes)[:, 0]))
        return fused, self.forward_head(nodes[:, 0])
