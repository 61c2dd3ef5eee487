"""Long videos in bounded memory: a clip longer than ``FrameConfig.max_frames`` frames is
labelled (and predicted) chunk by chunk.

A chunk decodes at most ``max_frames`` frames: the frames it *owns* plus a halo on each
side (:func:`factory.method.windows.halo`: what the ST nets' neighbours, the short-term
windows and the authors' temporal smoothing reach), so its own frames get the maps the
whole clip would give them. The long term draws from the whole clip, through the
clip's long-term pool (:func:`factory.method.windows.long_pool_centres`: at most
``WindowConfig.long_pool`` 3-frame groups spread over the clip), decoded and encoded
once per clip before the chunks; the cross term comes from the tag's pool as always.
Random draws are seeded by a frame's index in the whole clip, so chunking changes
nothing but the memory: a clip's peak memory is that of one chunk, the long-term pool
and the clip's uint8 output maps, whatever its length.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from factory.config import Preset
from factory.io.corpus import ClipRecord
from factory.io.decode import DecodedClip, decode_clip, decode_groups, frame_count, sound_of
from factory.method.inputs import Span
from factory.method.labeler import ClipLabels, Labeler
from factory.method.students import StudentPredictor
from factory.method.windows import halo, long_pool_centres

GroupEncoder = Callable[[np.ndarray, np.ndarray, np.ndarray], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Chunk:
    """Frames ``own`` (start, end) of a clip, decoded as ``window`` (start, end) with
    the halo on each side."""

    own: tuple[int, int]
    window: tuple[int, int]

    @property
    def rows(self) -> slice:
        """The own frames among the window's rows."""
        return slice(self.own[0] - self.window[0], self.own[1] - self.window[0])


def plan(num_frames: int, length: int, margin: int) -> list[Chunk]:
    """Chunks of at most ``length`` decoded frames covering ``num_frames``: one chunk
    when the clip fits, else each owning ``length - 2 * margin`` frames.

    >>> [(c.own, c.window) for c in plan(20, 10, 2)]
    [((0, 6), (0, 8)), ((6, 12), (4, 14)), ((12, 18), (10, 20)), ((18, 20), (16, 20))]
    """
    if num_frames <= length:
        return [Chunk((0, num_frames), (0, num_frames))]
    step = length - 2 * margin
    if step < 1:
        raise ValueError(
            f"max_frames={length} leaves no frame to label between halos of {margin} frames; "
            f"raise max_frames above {2 * margin}"
        )
    return [
        Chunk(
            (a, min(num_frames, a + step)),
            (max(0, a - margin), min(num_frames, a + step + margin)),
        )
        for a in range(0, num_frames, step)
    ]


@dataclass
class LongClip:
    """A clip too long to decode at once: its record, frame count and long-term pool."""

    record: ClipRecord
    num_frames: int
    span_centres: np.ndarray
    long: dict[str, torch.Tensor]

    def span(self, chunk: Chunk) -> Span:
        return Span(chunk.window[0], self.num_frames, self.span_centres, self.long)


def open_long_clip(
    record: ClipRecord, preset: Preset, num_frames: int, encode_groups: GroupEncoder
) -> LongClip:
    """Decode and encode a long clip's long-term pool (``encode_groups``: the model's
    features of 3-frame groups, as :meth:`factory.method.labeler.Labeler.group_features`)."""
    centres = long_pool_centres(num_frames, preset.windows.long_pool)
    frames, audio, has_audio = decode_groups(record, preset.frames, preset.spectrogram, centres)
    sound = np.full(len(centres), has_audio)
    return LongClip(record, num_frames, centres, encode_groups(frames, audio, sound))


def chunks_of(
    record: ClipRecord, preset: Preset, encode_groups: GroupEncoder
) -> Iterator[tuple[DecodedClip, Span | None, slice]]:
    """A clip as (decoded frames, span, own rows) pieces, decoded one at a time: the whole
    clip in one piece when it fits in ``max_frames`` (no span), else its chunks."""
    n = frame_count(record, preset.frames)
    if n <= preset.frames.max_frames:
        yield decode_clip(record, preset.frames, preset.spectrogram), None, slice(None)
        return
    long = open_long_clip(record, preset, n, encode_groups)
    margin = halo(preset.cgcn.nodes, preset.windows.short_radius)
    chunks = plan(n, preset.frames.max_frames, margin)
    spec = preset.spectrogram
    first = decode_clip(record, preset.frames, spec, need_audio=False, frames=chunks[0].window)
    # the sound: one forward decode over the chunks, as the whole clip's (SoundReader)
    with sound_of(record, preset.frames, spec, float(first.times[0])) as sound:
        for k, chunk in enumerate(chunks):
            clip = (
                first
                if k == 0
                else decode_clip(record, preset.frames, spec, need_audio=False, frames=chunk.window)
            )
            if sound is not None:
                reader, clip.audio_stream = sound
                half = spec.window_s / 2
                clip.audio, clip.audio_t0 = reader.span(
                    float(clip.times[0]) - half, float(clip.times[-1]) + half, spec.sample_rate
                )
            yield clip, long.span(chunk), chunk.rows


def label_in_chunks(labeler: Labeler, record: ClipRecord, tags: list[str]) -> ClipLabels:
    """SCAM+ for a clip of any length (one piece when it fits in ``max_frames``)."""
    # a long clip's long-term pool is its own frames: their switch decided for its tags
    tag_ids = [labeler.bundle.tag_index(t) for t in tags]
    groups = functools.partial(labeler.group_features, tag_ids=tag_ids)
    parts = [
        labeler.label(clip, tags, span, own)
        for clip, span, own in chunks_of(record, labeler.bundle.preset, groups)
    ]
    return parts[0] if len(parts) == 1 else ClipLabels.concat(parts)


def predict_in_chunks(
    predictor: StudentPredictor, record: ClipRecord
) -> tuple[dict[str, np.ndarray], DecodedClip, np.ndarray]:
    """The students' maps for a clip of any length: (maps, the last piece's clip for its
    metadata, every frame's time)."""
    parts, times, clip = [], [], None
    for clip, span, own in chunks_of(record, predictor.preset, predictor.group_features):
        parts.append(predictor.predict(clip, span, own))
        times.append(clip.times[own])
    assert clip is not None
    maps = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return maps, clip, np.concatenate(times)
