"""The net registry: name -> constructor and input spec, so one training loop and one
labeler serve every net. Variants are small entries that only set arguments.

>>> sorted(NETS)
['S', 'S+', 'SA', 'SA+', 'ST', 'ST+', 'audio', 'switch']
>>> NETS["ST+"].spec.terms
('short', 'long', 'cross')
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from models.classifiers import AudioTagger, PlusNet, SANet, SNet, STNet, audio_switch
from models.config import (
    STUDENT_GRAPH_CHANNELS,
    CGCNConfig,
    EncodersConfig,
    HeadConfig,
    NetConfig,
    StudentConfig,
)
from models.encoders import Encoders
from models.students import STA, STAPlus

# The multigranularity terms (SPEC.md, "Multigranularity inputs").
TERMS = ("short", "long", "cross")


@dataclass(frozen=True)
class InputSpec:
    """What a net reads.

    ``trunk``: ``image`` (the ResNeXt-style trunk), ``plus`` (the dilated VGG16) or
    ``none``; ``tap``: the image trunk side output (``F4`` or ``F5``); ``frames``: 1 (the
    target) or 3 (t-1, t, t+1); ``audio``: reads the 1 s audio vector; ``graph``: a ``+``
    net (target node + n multigranularity nodes); ``terms``: the terms the labeler
    reads from it; ``label``: ``tag`` (c-way multilabel) or ``switch`` (audio agrees).
    """

    trunk: str
    tap: str | None
    frames: int
    audio: bool
    graph: bool = False
    terms: tuple[str, ...] = ()
    label: str = "tag"


@dataclass(frozen=True)
class NetEntry:
    name: str
    spec: InputSpec
    build: Callable[[NetConfig], nn.Module]
    head_convs: int  # the authors' code's head depth (3x3 conv + ReLU layers before the 1x1)
    description: str


def _plus(branch: Callable[[NetConfig], nn.Module]) -> Callable[[NetConfig], nn.Module]:
    return lambda cfg: PlusNet(branch(cfg), cfg)


NETS: dict[str, NetEntry] = {
    e.name: e
    for e in (
        NetEntry("S", InputSpec("image", "F4", 1, False), SNet, 0, "spatial (Fig. 5-A)"),
        NetEntry(
            "ST", InputSpec("image", "F5", 3, False), STNet, 3, "spatiotemporal, Eq. 6 (Fig. 5-C)"
        ),
        NetEntry(
            "SA", InputSpec("image", "F5", 1, True), SANet, 3, "spatial-audio, Eq. 5 (Fig. 5-B)"
        ),
        NetEntry(
            "S+",
            InputSpec("plus", None, 1, False, True, TERMS),
            _plus(SNet),
            0,
            "S branch + C-GCN (Fig. 5-E)",
        ),
        NetEntry(
            "ST+",
            InputSpec("plus", None, 3, False, True, TERMS),
            _plus(STNet),
            3,
            "ST branch + C-GCN (Fig. 5-G)",
        ),
        NetEntry(
            "SA+",
            InputSpec("plus", None, 1, True, True, ("long", "cross")),
            _plus(SANet),
            3,
            "SA branch + C-GCN (Fig. 5-F)",
        ),
        NetEntry(
            "switch",
            InputSpec("image", "F5", 1, True, label="switch"),
            audio_switch,
            3,
            "audio switch (Sec. 3.3)",
        ),
        NetEntry(
            "audio",
            InputSpec("none", None, 1, True),
            AudioTagger,
            0,
            "audio-only tagger (switch labels)",
        ),
    )
}

# The SCAM sources (Eq. 2) and the SCAM+ multigranularity nets (Eq. 8).
SCAM_NETS = ("S", "ST", "SA")
PLUS_NETS = ("S+", "ST+", "SA+")
# The 8 (type, term) pairs of Eq. 8 (SPEC.md, "Multigranularity inputs"), in the order
# the labeler stacks them: S+ short/long/cross, ST+ short/long/cross, SA+ long/cross.
PLUS_PAIRS = tuple((net, term) for net in PLUS_NETS for term in NETS[net].spec.terms)
# How the pairs map to trained nets. ``pair``: one net per pair, as the paper trains
# them (Sec. 4.1: "8 additional classification nets"), named ``S+short``, ``ST+long``...;
# each sees every target frame with its own term. ``type``: one net per type shared by
# its terms (``S+``, ``ST+``, ``SA+``), each term a third of the targets: the earlier
# default of this project, a deviation kept for comparison and for old bundles.
PLUS_WEIGHTS = ("pair", "type")


def plus_net(net_type: str, term: str, weights: str = "pair") -> str:
    """The trained net that gives pair (``net_type``, ``term``): ``S+short`` or ``S+``.

    >>> plus_net("ST+", "long"), plus_net("ST+", "long", "type")
    ('ST+long', 'ST+')
    """
    if weights not in PLUS_WEIGHTS:
        raise ValueError(f"plus_weights {weights!r}: one of {', '.join(PLUS_WEIGHTS)}")
    return f"{net_type}{term}" if weights == "pair" else net_type


def plus_nets(weights: str = "pair") -> tuple[str, ...]:
    """The ``+`` nets a bundle trains: 8 (``pair``) or 3 (``type``)."""
    return tuple(dict.fromkeys(plus_net(n, t, weights) for n, t in PLUS_PAIRS))


FINE_SUFFIX = "_fine"


@dataclass(frozen=True)
class NetId:
    """A bundle net's name, parsed in one place: ``<base>[<term>][_fine][@<instance>]``.

    >>> NetId.parse("ST+long"), NetId.parse("SA_fine").stage, NetId.parse("audio@fold1").base
    (NetId(base='ST+', term='long', fine=False, instance=None), 'fine', 'audio')
    >>> str(NetId.parse("S+cross@t"))
    'S+cross@t'
    """

    base: str  # the registry entry: S, ST, SA, S+, ST+, SA+, switch, audio, encoders, ...
    term: str | None = None  # a pair net's multigranularity term (ST+long -> long)
    fine: bool = False  # a fine-stage net (S_fine): trained on the coarse box's crops
    instance: str | None = None  # after "@": a fold of the audio taggers (audio@fold1)

    @classmethod
    def parse(cls, name: str) -> NetId:
        head, _, instance = name.partition("@")
        fine = head.endswith(FINE_SUFFIX)
        base, term = split_term(head.removesuffix(FINE_SUFFIX))
        return cls(base, term, fine, instance or None)

    @property
    def stage(self) -> str:
        return "fine" if self.fine else "coarse"

    def __str__(self) -> str:
        name = self.base + (self.term or "") + (FINE_SUFFIX if self.fine else "")
        return name + (f"@{self.instance}" if self.instance else "")


def split_term(name: str) -> tuple[str, str | None]:
    """(registry entry, term) of a net name: ``SA+cross`` -> (``SA+``, ``cross``); a
    name without a term -> (name, None)."""
    for term in TERMS:
        base = name.removesuffix(term)
        if base != name and base in PLUS_NETS:
            return base, term
    return name, None


STUDENTS = ("STA", "STA+short", "STA+long")


def spec_channels(spec: InputSpec, encoders: EncodersConfig) -> int:
    if spec.trunk == "image":
        assert spec.tap is not None
        return encoders.image.channels[spec.tap]
    if spec.trunk == "plus":
        return encoders.plus_channels
    return 0


def net_config(
    name: str,
    num_classes: int,
    encoders: EncodersConfig,
    head_hidden: int = 0,
    cgcn: CGCNConfig | None = None,
    head_convs: int | None = 0,
    plus_init: str = "identity",
    switch_arch: str = "sa",
) -> NetConfig:
    """``head_convs``: 0 = the paper's plain classifier (Sec. 3.3: a 1x1 conv to c, then
    GAP) for every net; ``None`` = the authors' code (three 3x3 convs first, except S).
    ``plus_init``: see :class:`models.classifiers.PlusNet`; ``switch_arch``: see
    :func:`models.classifiers.audio_switch`."""
    entry = NETS[name]
    return NetConfig(
        num_classes=num_classes,
        image_channels=spec_channels(entry.spec, encoders),
        audio_dim=encoders.audio.out_dim,
        head=HeadConfig(
            convs=entry.head_convs if head_convs is None else head_convs, hidden=head_hidden
        ),
        cgcn=cgcn or CGCNConfig(),
        plus_init=plus_init,
        switch_arch=switch_arch,
    )


def build_net(
    name: str,
    num_classes: int,
    encoders: EncodersConfig,
    head_hidden: int = 0,
    cgcn: CGCNConfig | None = None,
    head_convs: int | None = 0,
    plus_init: str = "identity",
    switch_arch: str = "sa",
) -> nn.Module:
    """Construct a registered net (without its encoders)."""
    if name not in NETS:
        raise KeyError(f"unknown net {name!r}; registered: {', '.join(sorted(NETS))}")
    return NETS[name].build(
        net_config(
            name, num_classes, encoders, head_hidden, cgcn, head_convs, plus_init, switch_arch
        )
    )


def student_config(
    name: str,
    encoders: EncodersConfig,
    cgcn: CGCNConfig | None = None,
    graph_channels: int = STUDENT_GRAPH_CHANNELS,
) -> StudentConfig:
    if name == "STA":
        ch = encoders.image.channels
        return StudentConfig(ch["F5"], (ch["F3"], ch["F4"], ch["F5"]), encoders.audio.out_dim)
    return StudentConfig(
        encoders.plus_channels,
        (0, 0, 0),
        encoders.audio.out_dim,
        graph_channels=graph_channels,
        cgcn=cgcn or CGCNConfig(),
    )


def build_student(
    name: str,
    encoders: EncodersConfig,
    cgcn: CGCNConfig | None = None,
    graph_channels: int = STUDENT_GRAPH_CHANNELS,
) -> nn.Module:
    """STA, STA+short or STA+long (the two STA+ nets share an architecture and differ in
    the fragments they are trained on). Tag-free: nothing depends on the vocabulary."""
    if name not in STUDENTS:
        raise KeyError(f"unknown student {name!r}; expected one of {STUDENTS}")
    cfg = student_config(name, encoders, cgcn, graph_channels)
    return STA(cfg) if name == "STA" else STAPlus(cfg)


def encode_for_spec(
    encoders: Encoders, spec: InputSpec, raw: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Run the encoders a net needs on raw inputs and return the net's feature inputs.

    ``raw["frames"]``: (B, [1 + n,] T, 3, H, W) normalised images; ``raw["spectrogram"]``:
    (B, [1 + n,] 1, F, L); ``raw["gate"]`` passes through.
    """
    out: dict[str, torch.Tensor] = {}
    if spec.trunk != "none":
        frames = raw["frames"]
        lead = frames.shape[:-3]
        flat = frames.reshape(-1, *frames.shape[-3:])
        feats = encoders.plus(flat) if spec.trunk == "plus" else encoders.image(flat)[spec.tap]
        out["image"] = feats.reshape(*lead, *feats.shape[1:])
    if spec.audio:
        spec_in = raw["spectrogram"]
        vec = encoders.audio(spec_in.reshape(-1, *spec_in.shape[-3:]))
        out["audio"] = vec.reshape(*spec_in.shape[:-3], vec.shape[-1])
    if "gate" in raw:
        out["gate"] = raw["gate"]
    return out


class EncodedNet(nn.Module):
    """A net with its encoders in front: raw frames / spectrograms in, logits out. Used in
    fine-tune mode (each net then owns trainable encoders) and by the contract tests."""

    def __init__(self, encoders: Encoders, net: nn.Module, spec: InputSpec) -> None:
        super().__init__()
        self.encoders = encoders
        self.net = net
        self.spec = spec

    def forward(self, raw: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.net(encode_for_spec(self.encoders, self.spec, raw))
