"""Frozen, typed configuration that flows from ``jobs/`` into ``factory/``.

Two presets: ``tiny`` (small encoders and inputs: CPU tests and the embedded demo) and
``paper`` (the paper code's encoders and sizes). Every magic number of the pipeline is
a field here with the reason beside it.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from typing import Any

from factory.io import storage
from models.config import (
    AudioEncoderConfig,
    CGCNConfig,
    DilatedVGGConfig,
    EncodersConfig,
    ImageTrunkConfig,
)


@dataclass(frozen=True)
class SpectrogramConfig:
    """Audio features: 16 kHz mono, a 1 s window centred on each frame, log STFT
    magnitude (linear frequency as the paper's code; ``mel=True`` for mel bands),
    z-scored per window. 512-sample windows with hop 160 give 257 x 101, the input the
    VGGSound ResNet-18 was trained on."""

    sample_rate: int = 16_000
    window_s: float = 1.0
    n_fft: int = 512
    hop_length: int = 160
    mel: bool = False
    n_mels: int = 64
    log_eps: float = 1e-7
    zscore: bool = True

    @property
    def window_samples(self) -> int:
        return round(self.sample_rate * self.window_s)

    @property
    def shape(self) -> tuple[int, int]:
        bins = self.n_mels if self.mel else self.n_fft // 2 + 1
        return bins, self.window_samples // self.hop_length + 1


@dataclass(frozen=True)
class FrameConfig:
    """Frame sampling. Frames are decoded at ``fps`` inside the clip's segment and
    resized to the working size ``height x width`` (the resolution of the output maps);
    the coarse stage reads them at ``coarse_size`` and the fine stage crops them to
    ``fine_size`` (256 and 356 in the paper)."""

    height: int = 360
    width: int = 640
    fps: float = 8.0
    coarse_size: int = 256
    fine_size: int = 356
    max_frames: int = 256  # per clip: bounds a decoded clip's memory (32 s at 8 fps)


@dataclass(frozen=True)
class WindowConfig:
    """Multigranularity windows (SPEC.md table): short term spans t-4..t+4; long-term
    frames lie outside it; ``pool_clips`` clips per tag (the bottom-k by a seeded hash)
    with ``pool_groups`` 3-frame groups each feed the cross term."""

    short_radius: int = 4
    pool_clips: int = 4
    pool_groups: int = 2
    seed: int = 0
    # The long term's frames: every frame of a clip up to this many, else this many
    # spread evenly over the clip (a bounded per-clip pool for long videos; see
    # factory.method.windows.long_pool_centres). 128 covers 16 s at 8 fps: AVE's 10 s clips
    # draw from every frame, as the paper describes.
    long_pool: int = 128


@dataclass(frozen=True)
class TrainConfig:
    """The paper's recipe (SGD, Nesterov momentum 0.9, encoder and new-layer learning-rate
    groups, multilabel soft-margin loss); every knob overridable."""

    epochs: int = 15
    batch_size: int = 8
    targets_per_clip: int = 4  # target frames drawn from each clip per epoch
    momentum: float = 0.9
    weight_decay: float = 5e-4
    new_layer_lr_mult: float = 10.0  # new layers at 10x the encoder's rate
    lr: dict[str, float] = field(
        default_factory=lambda: {
            "S": 1e-4,
            "ST": 1e-4,
            "SA": 1e-4,
            "S+": 1e-3,
            "ST+": 1e-5,
            "SA+": 1e-5,
            "switch": 1e-4,
            "audio": 1e-3,
        }
    )
    student_lr: float = 1e-3
    student_weight_decay: float = 1e-4
    holdout_fraction: float = 0.15  # clips held out (by hash) to report tag accuracy
    fine_tune: bool = False  # False: frozen encoders, features computed once and shared
    seed: int = 0
    # Encoder pretraining on the corpus's tags, for encoders without a weights file (see
    # factory/pretrain.py). AdamW: it is our stand-in for ImageNet / VGGSound weights,
    # not part of the paper's recipe, and learns from scratch far faster than SGD.
    pretrain_epochs: int = 0
    pretrain_lr: float = 3e-3
    eval_targets_per_clip: int = 8  # held-out frames scored per clip each epoch
    grad_clip: float = 0.0  # max gradient norm (0 = off, the paper's recipe)
    branch_loss_weight: float = 0.4  # + nets: weight of the raw branch's loss (authors' recipe)
    # The audio switch's loss with its two classes weighted equally per batch (not the
    # paper's, which is silent on balance; see factory.method.losses.balanced_binary_loss).
    switch_balance: bool = False

    def lr_for(self, net: str) -> float:
        return self.lr.get(net.split("@")[0], self.lr.get(net, 1e-4))


@dataclass(frozen=True)
class LabelConfig:
    """Labeler settings. ``dtype`` ``auto`` = bf16 on GPU, fp32 on CPU."""

    device: str = "auto"
    dtype: str = "auto"
    channels_last: bool = True
    reject_silent: bool = False  # True: a clip without an audio stream is a reject
    multi_tag_rule: str = "confidence"  # per-tag SCAM+ maps weighted by selected confidence
    # C_X of Eq. 2/3/8: "sigmoid" (per class, as the Eq. 7 loss) or "softmax" (over the
    # classes, the authors' code). See factory.method.equations.class_confidences.
    confidence: str = "sigmoid"
    # A frame where no source ranks the tag first (the paper is silent): "average" (the
    # sources' mean, the default) or "flat" (Eq. 2 / 8 as written: (0 + lambda) /
    # (0 + lambda), a constant map that Z makes all-zero). Measured on the Table 1 world
    # (bench/RESULTS.md, "SCAM+"): no source passes on 25-35% of the frames; "flat"
    # scored SCAM coarse / fine / SCAM+ CC 0.290 / 0.393 / 0.426 there, "average" 0.476 /
    # 0.642 / 0.548 (AC 0.476, AC fine 0.653). See factory.method.equations.NO_SOURCE.
    no_source: str = "average"
    # The audio switch's decision while labelling: "net" (the paper: the switch net,
    # Eq. 5's phi, reading picture and sound) or "tagger" (not the paper's: the
    # factory's audio tagger agreeing with the clip's tag, the very rule the switch
    # net's training labels come from, applied where the tag is known; needs a bundle
    # whose tagger folds were kept, i.e. trained without --audio-tagger). The students
    # are tag-free and keep the net. See factory.method.labeler.Labeler.gate.
    switch_gate: str = "net"
    frame_chunk: int = 64  # frames per encoder call (bounds activation memory)


@dataclass(frozen=True)
class ExecutionConfig:
    """How a job's nets run on the cluster (the train, distil and ablate jobs; read by
    :mod:`factory.pipelines.executors`): Ray Train workers per net and the GPUs they share, CPUs
    per worker (None: what fits every net of a phase at once), trials at once (None: as
    many as fit), a net's restarts after a worker failure, and the feature caches'
    encoder actors (None: one per GPU, else the CPUs but one)."""

    workers_per_net: int = 1
    gpus_per_net: float = 0.0
    cpus_per_worker: float | None = None
    max_concurrent: int | None = None
    max_failures: int = 2
    encode_actors: int | None = None
    trainer_data: str = "auto"  # auto | ray_data | files
    # auto | phase | net: one TorchTrainer per phase whose workers fit the phase's nets
    # (each worker its own nets, reading the cache files itself), or one per net. See
    # factory.pipelines.executors.trainer_groups.
    trainers: str = "auto"

    def __post_init__(self) -> None:
        if self.trainer_data not in TRAINER_DATA:
            raise ValueError(
                f"trainer data {self.trainer_data!r}: expected one of {', '.join(TRAINER_DATA)}"
            )
        if self.trainers not in TRAINERS:
            raise ValueError(f"trainers {self.trainers!r}: expected one of {', '.join(TRAINERS)}")
        if self.trainers == "phase" and (
            self.workers_per_net > 1 or self.trainer_data == "ray_data"
        ):
            raise ValueError(
                "--trainers phase: each worker of a phase's trainer fits whole nets and reads "
                "the cache files itself; with several workers per net or --trainer-data "
                "ray_data use --trainers net (or auto)"
            )
        if self.trainer_data == "files" and self.workers_per_net > 1:
            raise ValueError(
                "--trainer-data files: a net's one worker reads its cache files itself; with "
                f"{self.workers_per_net} workers per net use ray_data (or auto), which splits "
                "the cache evenly over the workers"
            )


TRAINER_DATA = ("auto", "ray_data", "files")
TRAINERS = ("auto", "phase", "net")


@dataclass(frozen=True)
class Preset:
    name: str
    encoders: EncodersConfig
    frames: FrameConfig
    spectrogram: SpectrogramConfig
    windows: WindowConfig
    train: TrainConfig
    label: LabelConfig
    cgcn: CGCNConfig
    head_hidden: int  # width of the 3x3 head convs when head_convs allows them (512 in the code)
    # 0: the paper's plain classifier for every net (Sec. 3.3, 1x1 conv + GAP; it also
    # keeps the CAMs of ST / SA as sharp as S's); None: the authors' code (three 3x3 convs).
    head_convs: int | None = 0
    # The + nets: ``pair`` = 8 nets, one per (type, term) pair, as the paper trains them;
    # ``type`` = 3 nets shared by their terms (a deviation, measured in bench/RESULTS.md).
    plus_weights: str = "pair"
    # Initialisation of the two layers of a + net that read class maps (the C-GCN's Eq.
    # 10 affinity 1x1 convs and the classifier after it): ``identity`` (ours) or
    # ``normal`` (normal(0, 0.01), the authors' value for every new layer). See
    # models/classifiers.PlusNet for why.
    plus_init: str = "identity"
    # The audio switch: ``sa`` (the paper, Sec. 3.3: "a binary net with the SA
    # architecture") or ``bilinear`` (the authors' code: pooled image and audio
    # embeddings through a bilinear layer). See models/classifiers.audio_switch.
    switch_arch: str = "sa"

    def __post_init__(self) -> None:
        if self.plus_weights not in ("pair", "type"):
            raise ValueError(f"plus_weights {self.plus_weights!r}: expected 'pair' or 'type'")
        if self.plus_init not in ("identity", "normal"):
            raise ValueError(f"plus_init {self.plus_init!r}: expected 'identity' or 'normal'")
        if self.switch_arch not in ("sa", "bilinear"):
            raise ValueError(f"switch_arch {self.switch_arch!r}: expected 'sa' or 'bilinear'")

    def replace(self, **changes: Any) -> Preset:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1)


def preset(name: str) -> Preset:
    """``tiny`` or ``paper``."""
    if name == "paper":
        return Preset(
            name="paper",
            encoders=EncodersConfig.paper(),
            frames=FrameConfig(),
            spectrogram=SpectrogramConfig(),
            windows=WindowConfig(),
            train=TrainConfig(),
            label=LabelConfig(),
            cgcn=CGCNConfig(),
            head_hidden=512,
        )
    if name == "tiny":
        return Preset(
            name="tiny",
            encoders=EncodersConfig.tiny(),
            frames=FrameConfig(
                height=128, width=128, fps=8.0, coarse_size=128, fine_size=176, max_frames=64
            ),
            # 512-sample windows (the paper's), hop 320: a 257 x 51 spectrogram, cheap on CPU.
            spectrogram=SpectrogramConfig(n_fft=512, hop_length=320),
            windows=WindowConfig(pool_clips=3, pool_groups=2, long_pool=64),
            train=TrainConfig(
                epochs=8,
                batch_size=16,
                targets_per_clip=8,
                lr={
                    "S": 3e-3,
                    "ST": 3e-3,
                    "SA": 3e-3,
                    "S+": 1e-2,
                    "ST+": 1e-2,
                    "SA+": 1e-2,
                    "switch": 3e-3,
                    "audio": 3e-3,
                },
                student_lr=1e-2,
                pretrain_epochs=12,
                grad_clip=1.0,  # the + nets' C-GCN diverged now and then at these rates without it
            ),
            label=LabelConfig(),
            cgcn=CGCNConfig(),
            head_hidden=16,
        )
    raise ValueError(f"unknown preset {name!r}: expected 'tiny' or 'paper'")


def from_dict(d: dict[str, Any]) -> Preset:
    """Rebuild a Preset from :meth:`Preset.to_dict` (as stored in a bundle)."""

    def tuples(x: dict[str, Any]) -> dict[str, Any]:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in x.items()}

    enc = d["encoders"]
    return Preset(
        name=d["name"],
        encoders=EncodersConfig(
            ImageTrunkConfig(**tuples(enc["image"])),
            DilatedVGGConfig(**tuples(enc["plus"])),
            AudioEncoderConfig(**tuples(enc["audio"])),
            plus_trunk=enc.get("plus_trunk", "vgg"),  # bundles from before the option
        ),
        frames=FrameConfig(**d["frames"]),
        spectrogram=SpectrogramConfig(**d["spectrogram"]),
        windows=WindowConfig(**d["windows"]),
        train=TrainConfig(**d["train"]),
        label=LabelConfig(**d["label"]),
        cgcn=CGCNConfig(**d["cgcn"]),
        head_hidden=d["head_hidden"],
        head_convs=d.get("head_convs", 0),
        # Bundles saved before these settings existed were trained with 3 shared + nets
        # initialised normal(0, 0.01): read them as what they are.
        plus_weights=d.get("plus_weights", "type"),
        plus_init=d.get("plus_init", "normal"),
        switch_arch=d.get("switch_arch", "sa"),
    )


ENCODER_NAMES = ("image", "plus", "audio")


def merge_overrides(
    base: dict[str, Any], changes: dict[str, Any], where: str = ""
) -> dict[str, Any]:
    """``base`` (a preset's ``to_dict()`` or part of it) with ``changes`` merged in,
    recursively. A key that is not a field raises ``ValueError`` naming the valid ones.

    >>> merge_overrides({"a": 1, "b": {"c": 2}}, {"b": {"c": 3}})
    {'a': 1, 'b': {'c': 3}}
    """
    out = dict(base)
    for key, value in changes.items():
        if key not in base:
            raise ValueError(
                f"unknown preset field {where + key!r}; valid here: {', '.join(sorted(base))}"
            )
        if isinstance(base[key], dict) and key not in ("lr",):
            if not isinstance(value, dict):
                raise ValueError(f"preset field {where + key!r} is a section: give a mapping")
            out[key] = merge_overrides(base[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def dotted(key: str, value: Any) -> dict[str, Any]:
    """``"frames.fine_size", 200`` -> ``{"frames": {"fine_size": 200}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def read_preset_file(path: str) -> dict[str, Any]:
    """A preset file: JSON or TOML (by extension), any subset of the preset's fields,
    nested as in ``bundle.json``'s ``preset`` (for example ``{"encoders": {"image":
    {"weights": "s3://bucket/resnext101.pth"}}, "train": {"epochs": 10}}``)."""

    if not storage.exists(path):
        raise FileNotFoundError(f"preset file {path!r}: not found")
    text = storage.read_bytes(path).decode()
    try:
        data = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except (ValueError, json.JSONDecodeError) as err:
        raise ValueError(
            f"preset file {path!r}: not valid {'TOML' if path.endswith('.toml') else 'JSON'} ({err})"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"preset file {path!r}: expected a mapping of preset fields")
    return data


def customise(
    p: Preset,
    preset_file: str | None = None,
    weights: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Preset:
    """A preset with a preset file, encoder weight files (``{"image": uri, "plus": uri,
    "audio": uri}``) and ``--set`` overrides applied, in that order. ``overrides`` keys
    are training knobs (``batch_size``), the preset's own fields (``switch_arch``) or
    dotted preset fields (``frames.fine_size``).
    Unknown names raise ``ValueError`` listing the valid ones."""
    d = p.to_dict()
    if preset_file:
        d = merge_overrides(d, read_preset_file(preset_file))
    for name, uri in (weights or {}).items():
        if name not in ENCODER_NAMES:
            raise ValueError(
                f"--weights {name}=...: unknown encoder; one of {', '.join(ENCODER_NAMES)}"
            )
        d = merge_overrides(d, {"encoders": {name: {"weights": uri}}})
    top = {k for k, v in d.items() if not isinstance(v, dict) and k != "name"}
    for key, value in (overrides or {}).items():
        if "." not in key and key not in d["train"] and key not in top:
            valid = sorted(d["train"])
            raise ValueError(
                f"--set {key}: not a training knob; valid: {', '.join(valid)} "
                f"(or a preset field: {', '.join(sorted(top))}, or a dotted one such as "
                "frames.fine_size)"
            )
        path = key if "." in key or key in top else f"train.{key}"
        d = merge_overrides(d, dotted(path, value))
    return from_dict(d)
