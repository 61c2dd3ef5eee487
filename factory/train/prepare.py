"""Per-clip preparation shared by the train, tune, label and distill jobs (plain
PyTorch / NumPy; the Ray jobs call these inside their stages):

- training features of a clip (the frozen-encoder cache row);
- the audio switch's training labels (the audio tagger's agreement with the tag);
- fine-stage training features (crops at the coarse nets' boxes, by the labeler's code);
- the per-tag pool's entries, from decoded clips (for the labeler) or from features
  (for training).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch

from factory.config import Preset
from factory.io.audio import frame_windows
from factory.io.corpus import ClipRecord
from factory.io.decode import DecodedClip, decode_groups, frame_count
from factory.method import equations as eq
from factory.method.encoding import FrameEncoder
from factory.method.inputs import ClipFeatures
from factory.method.labeler import Labeler
from factory.method.pool import PoolEntries, PoolSketch, group_centres
from factory.train.loop import TrainingClip

FEATURE_KEYS = ("F4", "F5", "plus", "audio")
FINE_KEYS = ("crop_F4", "crop_F5")


def clip_features(encoder: FrameEncoder, clip: DecodedClip) -> ClipFeatures:
    """The cache row of a clip: F4, F5, plus, audio of every frame (on the host)."""
    feats, _ = encoder.clip(clip)
    return {k: v.cpu() for k, v in feats.items()}


def switch_labels(
    tagger_logits: torch.Tensor, tags: Iterable[int], has_audio: bool
) -> torch.Tensor:
    """The switch's label per frame (Sec. 3.3): 1 when the audio classifier's top class is
    one of the clip's tags, else 0; 0 for a clip without audio."""
    if not has_audio:
        return torch.zeros(tagger_logits.shape[0])
    top = tagger_logits.argmax(1)
    return torch.isin(top, torch.as_tensor(list(tags))).float()


def fine_features(labeler: object, clip: DecodedClip, tag: str) -> ClipFeatures:
    """Fine-stage training features: the coarse SCAM of S, ST, SA (with the switch) gives
    each frame's box, t-1, t, t+1 are cropped to it and encoded at the fine size (the
    labeler's own code, so training sees the crops labelling will)."""

    assert isinstance(labeler, Labeler)
    with torch.inference_mode():
        feats, frames = labeler.encode_clip(clip, [tag])
        size = (frames.shape[-2], frames.shape[-1])
        _, _, scam_coarse = labeler.coarse_scam(
            feats, clip.key, clip.has_audio, labeler.bundle.tag_index(tag), size
        )
        boxes, _ = eq.coarse_box(scam_coarse)
        fine = labeler.fine_features(frames, boxes)
    return {
        "crop_F4": fine["crop_F4"].cpu(),
        "crop_F5": fine["crop_F5"].cpu(),
        "audio": feats["audio"].cpu(),
        "boxes": boxes.cpu(),
    }


def decoded_pool_entries(clip: DecodedClip, groups: int, preset: Preset) -> PoolEntries:
    """Raw pool entries of one clip for the labeler: ``frames`` (E, 3, H, W, 3) uint8 of
    each 3-frame group, ``audio`` (E, samples) the centre frame's window, ``has_audio``."""
    t = clip.frames.shape[0]
    centres = group_centres(t, groups)
    idx = np.clip(centres[:, None] + np.array([-1, 0, 1]), 0, t - 1)
    if clip.has_audio:
        assert clip.audio is not None
        audio = frame_windows(clip.audio, clip.audio_t0, clip.times[centres], preset.spectrogram)
    else:
        audio = np.zeros((len(centres), preset.spectrogram.window_samples), np.float32)
    return PoolEntries(
        [clip.key] * len(centres),
        {
            "frames": clip.frames[idx],
            "audio": audio,
            "has_audio": np.full(len(centres), clip.has_audio),
        },
    )


def record_pool_entries(record: ClipRecord, groups: int, preset: Preset) -> PoolEntries:
    """:func:`decoded_pool_entries` of a clip decoded group by group: only its
    ``groups`` 3-frame groups and their sound windows (any length of clip; the same
    entries as from the whole decoded clip)."""
    n = frame_count(record, preset.frames)
    centres = group_centres(n, groups)
    frames, audio, has_audio = decode_groups(record, preset.frames, preset.spectrogram, centres)
    return PoolEntries(
        [record.key] * len(centres),
        {"frames": frames, "audio": audio, "has_audio": np.full(len(centres), has_audio)},
    )


def feature_pool_entries(clip: TrainingClip, groups: int) -> PoolEntries:
    """Pool entries of one training clip from its cached features: ``plus`` (E, 3, C, h, w),
    ``audio`` (E, D), ``gate`` (E,) (the switch labels)."""
    t = int(clip.feats["gate"].shape[0])
    centres = group_centres(t, groups)
    idx = torch.as_tensor(np.clip(centres[:, None] + np.array([-1, 0, 1]), 0, t - 1))
    c = torch.as_tensor(centres)
    return PoolEntries(
        [clip.key] * len(centres),
        {
            "plus": clip.feats["plus"][idx].numpy(),
            "audio": clip.feats["audio"][c].numpy(),
            "gate": clip.feats["gate"][c].numpy(),
        },
    )


def select_pool(
    sketch: PoolSketch, available: Mapping[str, object], k: int
) -> dict[str, list[str]]:
    """Per tag, the first ``k`` candidates of the sketch that are ``available`` (decoded
    without error), in hash order."""
    return {
        tag: [key for key in sketch.candidates(tag) if key in available][:k] for tag in sketch.heaps
    }
