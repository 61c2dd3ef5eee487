"""Decoding with PyAV: frames at a configured rate inside a clip's segment, fitted into
the working size with their aspect ratio kept (a letterbox, :mod:`factory.io.geometry`),
and the 16 kHz mono sound around them.

- Any container / codec / frame rate / size that FFmpeg reads; the decoder seeks to the
  segment's keyframe instead of decoding a long file from the start.
- Frame ``k`` is the decoded frame nearest to ``start + k / fps``.
- Audio is decoded at its own rate, placed by presentation time (samples before 0 and
  after the stream's end, AAC priming and padding, are dropped), mixed to mono and
  resampled to 16 kHz with torchaudio; the buffer spans half a window before the first
  frame to half a window after the last, zero outside the clip.
- Every problem raises :class:`~factory.io.rejects.ClipError` with a reason and a remedy,
  which the pipeline turns into a reject record.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

import av
import numpy as np
import torch
import torchaudio.functional as AF

from factory.config import FrameConfig, SpectrogramConfig
from factory.io import storage
from factory.io.audio import frame_windows
from factory.io.corpus import ClipRecord, parse_tar_member_uri
from factory.io.geometry import content_box, letterbox
from factory.io.rejects import ClipError

log = logging.getLogger(__name__)

MAX_SIDE = 8192  # larger than any real video; beyond it the file is corrupt or absurd
MIN_SIDE = 16
END_TOLERANCE_S = 1.0  # an end time up to 1 s past the stream's end is clamped, not rejected
AUDIO_SEEK_BACK_S = 0.5  # audio decoding starts this long before the samples it keeps
# A group's sound window is decoded with this much more on each side and cut back, so
# resampling sees the same context as in a whole clip's buffer (no edge effects).
GROUP_AUDIO_MARGIN_S = 0.1


@dataclass
class DecodedClip:
    key: str
    frames: np.ndarray  # (T, H, W, 3) uint8 at the working size
    times: np.ndarray  # (T,) float64 seconds in the file's timeline
    audio: np.ndarray | None  # (S,) float32 mono at spectrogram.sample_rate, or None
    audio_t0: float  # time of audio[0]
    duration_s: float
    source_size: tuple[int, int]  # (H, W) of the file's frames as shown (after rotation)
    audio_stream: int | None = None  # the container stream index the audio came from

    @property
    def has_audio(self) -> bool:
        return self.audio is not None


def open_source(uri: str) -> IO[bytes] | str:
    """A local path as is; an ``s3://`` object as a seekable file; a tar member as its bytes."""
    member = parse_tar_member_uri(uri)
    if member is not None:
        shard, _name, offset, size = member
        fs, path = storage.filesystem(shard)
        with fs.open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise ClipError(
                "decode",
                f"tar member truncated ({len(data)} of {size} bytes)",
                "re-create the shard",
            )
        return io.BytesIO(data)
    if storage.is_remote(uri):
        fs, path = storage.filesystem(uri)
        return fs.open(path, "rb")
    return uri


def frame_times(start_s: float, end_s: float, fps: float) -> np.ndarray:
    n = max(0, math.ceil((end_s - start_s) * fps - 1e-9))
    return start_s + np.arange(n) / fps


def _stream_start(stream: av.stream.Stream) -> float:
    """When a stream's first frame is due, in seconds (0 when the file does not say)."""
    if stream.start_time is None or stream.time_base is None:
        return 0.0
    return float(stream.start_time * stream.time_base)


def _container_duration(container: av.container.InputContainer, stream: av.stream.Stream) -> float:
    """When the video stream ends, in the file's timeline (its start plus its span)."""
    if stream.duration is not None and stream.time_base is not None:
        return max(0.0, _stream_start(stream)) + float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1e6
    return math.inf


def _decode_frames(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    targets: np.ndarray,
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray]:
    if targets[0] > 0.5:
        container.seek(int(max(0.0, targets[0] - 0.5) * 1e6), backward=True, any_frame=False)
    chosen: list[av.VideoFrame] = []
    chosen_t: list[float] = []
    prev, prev_t = None, -math.inf
    k = 0
    period = 1.0 / max(float(stream.average_rate or 25), 1e-3)
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        ft = float(frame.time)
        while k < len(targets) and ft >= targets[k]:
            use_prev = prev is not None and abs(prev_t - targets[k]) < abs(ft - targets[k])
            chosen.append(prev if use_prev else frame)
            chosen_t.append(prev_t if use_prev else ft)
            k += 1
        if k >= len(targets):
            break
        prev, prev_t = frame, ft
    # targets past the last decoded frame: the last frame serves them if it is within a frame period
    while prev is not None and k < len(targets) and targets[k] - prev_t <= period:
        chosen.append(prev)
        chosen_t.append(prev_t)
        k += 1
    if not chosen:
        return np.zeros((0, height, width, 3), np.uint8), np.zeros(0), 0
    turns = quarter_turns(chosen[0])
    # the picture as shown (a quarter turn swaps the sides), fitted into the working
    # size with its aspect kept (factory.io.geometry): decode to the fitted size before the
    # turn, turn, then centre it on the letterbox canvas
    sh, sw = chosen[0].height, chosen[0].width
    shown = (sw, sh) if turns % 2 else (sh, sw)
    _y0, _x0, ch, cw = content_box(shown, (height, width))
    dw, dh = (ch, cw) if turns % 2 else (cw, ch)
    arrays = [
        letterbox(
            np.rot90(f.to_ndarray(format="rgb24", width=dw, height=dh), turns), (height, width)
        )
        for f in chosen
    ]
    return np.ascontiguousarray(np.stack(arrays)), np.asarray(chosen_t), turns


def quarter_turns(frame: av.VideoFrame) -> int:
    """Counterclockwise quarter turns that show a frame as a player does: its display
    matrix's rotation (phone videos store portrait frames as landscape plus a 90 degree
    rotation), rounded to a multiple of 90 degrees."""
    rotation = getattr(frame, "rotation", 0) or 0
    return round(rotation / 90) % 4


def _mono(frame: av.AudioFrame) -> np.ndarray:
    """An audio frame's samples mixed to mono float32 in [-1, 1]."""
    samples = frame.to_ndarray()
    if samples.ndim == 2 and frame.format.is_planar:
        mono = samples.astype(np.float32).mean(axis=0)
    elif samples.ndim == 2:  # packed: (1, n * channels)
        channels = len(frame.layout.channels)
        mono = samples.reshape(-1, channels).astype(np.float32).mean(axis=1)
    else:
        mono = samples.astype(np.float32)
    if np.issubdtype(samples.dtype, np.integer):
        mono = mono / float(np.iinfo(samples.dtype).max)
    return mono


class SoundReader:
    """One audio stream decoded forwards, once, from ``AUDIO_SEEK_BACK_S`` before
    ``start``; :meth:`span` serves the sound over ``[t0, t1]`` for spans asked in
    increasing order (a clip; a long clip's chunks; its long-term pool's windows).

    Decoded sound depends on where decoding started (AAC's noise substitution draws from
    a generator that runs with the decoder: after a seek, frames far from it differed
    by up to 0.04), so every span of a clip comes from one continuous decode that starts
    where the whole clip's would: a chunk hears exactly what the whole clip hears. Only
    the frames a span still needs are kept."""

    def __init__(
        self,
        container: av.container.InputContainer,
        stream: av.audio.stream.AudioStream,
        start: float,
        duration: float,
    ) -> None:
        self.native = int(stream.rate or stream.codec_context.sample_rate)
        self.duration = duration
        # the video pass may have consumed the demuxer: always seek back (to the keyframe
        # before the start); the first frame after a seek lacks its predecessor's overlap
        container.seek(
            int(max(0.0, start - AUDIO_SEEK_BACK_S) * 1e6), backward=True, any_frame=False
        )
        self.frames = container.decode(stream)
        self.kept: list[tuple[int, np.ndarray]] = []  # (first native sample, mono samples)
        self.done = False

    def _pull_until(self, last: int) -> None:
        """Decode until the kept frames reach native sample ``last``."""
        while not self.done and (not self.kept or self.kept[-1][0] + len(self.kept[-1][1]) <= last):
            frame = next(self.frames, None)
            if frame is None:
                self.done = True
            elif frame.time is not None:
                self.kept.append((round(float(frame.time) * self.native), _mono(frame)))

    def span(self, t0: float, t1: float, rate: int) -> tuple[np.ndarray, float]:
        """Mono sound over ``[t0, t1]`` at ``rate`` and the time of its first sample: the
        start is moved back onto the grid both sample rates share (a multiple of
        1 / gcd(native, rate) s), so a sample sits at the same time whatever span is
        asked (off the grid, a half-sample shift changed a 2 kHz tone by 0.26)."""
        native = self.native
        grid = math.gcd(native, int(rate))
        t0 = math.floor(t0 * grid) / grid
        first = round(t0 * native)
        n_native = round((t1 - t0) * native)
        self._pull_until(first + n_native)
        buf = np.zeros(n_native, dtype=np.float32)
        for at, mono in self.kept:
            idx = at + np.arange(len(mono))
            times = idx / native
            valid = (times >= 0) & (times < self.duration)  # AAC priming and end padding
            idx = idx - first
            valid &= (idx >= 0) & (idx < n_native)
            buf[idx[valid]] = mono[valid]
        # later spans start no earlier than this one: frames ending before it are done
        self.kept = [(at, m) for at, m in self.kept if at + len(m) > first]
        if native != rate:
            buf = AF.resample(torch.from_numpy(buf), native, rate).numpy()
        return buf[: round((t1 - t0) * rate)], t0


class ClipTooLong(ClipError):
    """More frames than ``max_frames``: the label and predict jobs take such a clip in
    chunks (:mod:`factory.method.chunks`); the training caches reject it with this reason."""

    def __init__(self, frames: int, fps: float, max_frames: int) -> None:
        super().__init__(
            "decode",
            f"{frames} frames at {fps:g} fps exceed max_frames={max_frames}",
            "label and predict take such clips in chunks; to train on it, split it into "
            "segments (start_s / end_s) or raise frames.max_frames",
        )
        self.frames = frames


@dataclass
class Segment:
    """An opened clip segment: its container and video stream, when it starts and ends,
    and the times of its frames on the sampling grid (``FrameConfig.fps``)."""

    container: av.container.InputContainer
    stream: av.video.stream.VideoStream
    start: float
    end: float
    duration: float
    targets: np.ndarray
    coded_size: tuple[int, int]  # (H, W) as stored, before any rotation


@contextmanager
def open_segment(record: ClipRecord, frames_cfg: FrameConfig) -> Iterator[Segment]:
    """Open a clip and check its segment. Raises :class:`ClipError` for every per-clip
    problem (missing, unreadable, no video, absurd size, empty, a segment outside it)."""
    try:
        source = open_source(record.uri)
    except FileNotFoundError:
        raise ClipError(
            "decode",
            f"file not found: {storage.redact(record.uri)}",
            "check the path or URI in the corpus listing",
        ) from None
    except PermissionError:
        raise ClipError(
            "decode",
            f"permission denied: {storage.redact(record.uri)}",
            "check read access to the file or bucket",
        ) from None
    except ClipError:
        raise
    except OSError as err:
        raise ClipError(
            "decode",
            f"cannot open {storage.redact(record.uri)}: {storage.redact(str(err))}",
            "check the storage endpoint and credentials",
        ) from None
    try:
        try:
            container = av.open(source, mode="r")
        except av.error.FileNotFoundError:
            raise ClipError(
                "decode",
                f"file not found: {storage.redact(record.uri)}",
                "check the path or URI in the corpus listing",
            ) from None
        except (
            av.error.InvalidDataError,
            av.error.FFmpegError,
            UnicodeDecodeError,
            ValueError,
        ) as err:
            raise ClipError(
                "decode",
                f"not a readable video container ({type(err).__name__}: {err})",
                "the file is corrupt, truncated or not a video; re-download or re-encode it",
            ) from None
        with container:
            yield _segment(container, record, frames_cfg)
    finally:
        if hasattr(source, "close"):
            source.close()  # type: ignore[union-attr]


def _segment(
    container: av.container.InputContainer, record: ClipRecord, frames_cfg: FrameConfig
) -> Segment:
    if not container.streams.video:
        raise ClipError(
            "decode",
            "no video stream in the file",
            "this is an audio-only or empty file; remove it from the corpus",
        )
    vstream = container.streams.video[0]
    vstream.thread_type = "AUTO"
    h, w = vstream.codec_context.height, vstream.codec_context.width
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise ClipError(
            "decode",
            f"absurd resolution {w}x{h}",
            f"sides must be within {MIN_SIDE}..{MAX_SIDE} pixels; re-encode the video",
        )
    duration = _container_duration(container, vstream)
    if duration <= 0:
        raise ClipError(
            "decode",
            "zero frames: the video stream is empty",
            "re-encode or re-download the file",
        )
    # a video stream that starts late (its first frame due after 0 s) has no frames
    # before that: the clip starts there instead of repeating frame 0
    start = max(record.start_s or 0.0, _stream_start(vstream))
    end = record.end_s if record.end_s is not None else duration
    if not math.isfinite(end):
        raise ClipError(
            "decode",
            "the file has no duration and the listing gives no end time",
            "give end_s in the corpus listing",
        )
    if start >= duration:
        raise ClipError(
            "decode",
            f"segment starts at {start:g} s but the clip is {duration:.2f} s long",
            "fix start_s / end_s in the corpus listing",
        )
    if end > duration + END_TOLERANCE_S:
        raise ClipError(
            "decode",
            f"segment ends at {end:g} s but the clip is {duration:.2f} s long",
            "fix end_s in the corpus listing",
        )
    end = min(end, duration)
    targets = frame_times(start, end, frames_cfg.fps)
    if len(targets) == 0:
        raise ClipError(
            "decode",
            "zero frames in the segment",
            "the segment is shorter than one frame period; widen it",
        )
    return Segment(container, vstream, start, end, duration, targets, (h, w))


def frame_count(record: ClipRecord, frames_cfg: FrameConfig) -> int:
    """How many frames the clip's segment has at ``frames_cfg.fps`` (no decoding; a
    :class:`ClipError` for a clip that cannot be decoded)."""
    with open_segment(record, frames_cfg) as seg:
        return len(seg.targets)


def decode_clip(
    record: ClipRecord,
    frames_cfg: FrameConfig,
    spec_cfg: SpectrogramConfig,
    need_audio: bool = True,
    frames: tuple[int, int] | None = None,
) -> DecodedClip:
    """Decode a clip's segment, or frames ``[k0, k1)`` of it (``frames``: a chunk of a
    long clip; its times stay the clip's). At most ``frames_cfg.max_frames`` frames are
    decoded at once; the label and predict jobs process longer clips chunk by chunk
    (:mod:`factory.method.chunks`). Raises :class:`ClipError` for every per-clip problem."""
    with open_segment(record, frames_cfg) as seg:
        targets = seg.targets if frames is None else seg.targets[frames[0] : frames[1]]
        if len(targets) > frames_cfg.max_frames:
            raise ClipTooLong(len(targets), frames_cfg.fps, frames_cfg.max_frames)
        if len(targets) == 0:
            raise ClipError("decode", "zero frames in the chunk", "report this")
        h, w = seg.coded_size
        try:
            decoded, times, turns = _decode_frames(
                seg.container, seg.stream, targets, frames_cfg.height, frames_cfg.width
            )
            if turns % 2:
                h, w = w, h  # the source as shown: a portrait phone video is portrait
        except av.error.FFmpegError as err:
            raise ClipError(
                "decode",
                f"video stream is corrupt ({err})",
                "re-encode or re-download the file",
            ) from None
        if len(decoded) == 0:
            raise ClipError(
                "decode",
                "zero frames decoded",
                "the video stream is empty or truncated; re-encode or re-download it",
            )
        if len(decoded) < len(targets):
            log.warning(
                "clip %s: %d of %d frames decoded (stream ends early)",
                record.key,
                len(decoded),
                len(targets),
            )
        audio, used = None, None
        t0 = float(times[0]) - spec_cfg.window_s / 2
        if need_audio and seg.container.streams.audio:
            t1 = float(times[-1]) + spec_cfg.window_s / 2
            audio, t0, used = _first_audio(seg, t0, t1, spec_cfg.sample_rate)
        return DecodedClip(record.key, decoded, times, audio, t0, seg.duration, (h, w), used)


def _first_audio(seg: Segment, t0: float, t1: float, rate: int) -> tuple[np.ndarray, float, int]:
    """The sound over ``[t0, t1]`` from the first audio stream that decodes (several
    tracks: languages, commentary): samples, their start time (see :meth:`SoundReader.span`)
    and that stream's index."""
    reader, index = open_sound(seg, t0, t1, rate)
    buf, start = reader.span(t0, t1, rate)
    return buf, start, index


def open_sound(seg: Segment, t0: float, t1: float, rate: int) -> tuple[SoundReader, int]:
    """A :class:`SoundReader` from ``t0`` on the first audio stream that decodes its
    first span ``[t0, t1]`` (several tracks: languages, commentary), and the stream's
    index."""
    failure = None
    for astream in seg.container.streams.audio:
        try:
            reader = SoundReader(seg.container, astream, t0, seg.duration)
            reader.span(t0, t1, rate)  # a corrupt stream fails here; later spans reuse it
            return reader, astream.index
        except av.error.FFmpegError as err:
            failure = err
    raise ClipError(
        "decode",
        f"audio stream is corrupt ({failure})",
        "re-encode the audio or strip the audio stream",
    )


def decode_groups(
    record: ClipRecord,
    frames_cfg: FrameConfig,
    spec_cfg: SpectrogramConfig,
    centres: np.ndarray,
    need_audio: bool = True,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The 3-frame groups ``c-1, c, c+1`` around ``centres`` (frame indices of the
    segment, clamped to it) and the 1 s sound window of each centre, decoded in one
    forward pass over the video and one over the sound: ``frames`` (E, 3, H, W, 3)
    uint8, ``audio`` (E, samples) float32 (zeros without sound), ``has_audio``. Memory is
    bounded by the groups, not by the clip (the long-term pool of a long clip)."""
    with open_segment(record, frames_cfg) as seg:
        n = len(seg.targets)
        idx = np.clip(np.asarray(centres)[:, None] + np.array([-1, 0, 1]), 0, n - 1)
        wanted = np.unique(np.concatenate([[0], idx.ravel()]))  # frame 0: where sound starts
        decoded, times, _turns = _decode_frames(
            seg.container, seg.stream, seg.targets[wanted], frames_cfg.height, frames_cfg.width
        )
        if len(decoded) < len(wanted):  # a stream that ends early: its last frame stands in
            extra = len(wanted) - len(decoded)
            decoded = np.concatenate([decoded, np.repeat(decoded[-1:], extra, 0)])
            times = np.concatenate([times, np.repeat(times[-1:], extra)])
        frames = decoded[np.searchsorted(wanted, idx)]
        samples = spec_cfg.window_samples
        audio = np.zeros((len(centres), samples), np.float32)
        has_audio = bool(seg.container.streams.audio)
        if has_audio and need_audio:
            # one forward decode from where the whole clip's starts (see SoundReader)
            half, rate = spec_cfg.window_s / 2, spec_cfg.sample_rate
            centre_times = times[np.searchsorted(wanted, idx[:, 1])]
            reader, _ = open_sound(seg, times[0] - half, times[0] + half, rate)
            for e in np.argsort(centre_times, kind="stable"):
                c = float(centre_times[e])
                m = GROUP_AUDIO_MARGIN_S
                buf, start = reader.span(c - half - m, c + half + m, rate)
                audio[e] = frame_windows(buf, start, np.array([c]), spec_cfg)[0]
        return frames, audio, has_audio


@contextmanager
def sound_of(
    record: ClipRecord, frames_cfg: FrameConfig, spec_cfg: SpectrogramConfig, first_frame_s: float
) -> Iterator[tuple[SoundReader, int] | None]:
    """A clip's sound for reading span by span in time order (a long clip's chunks): a
    :class:`SoundReader` that starts where decoding the whole clip would (half a window
    before its first frame, at ``first_frame_s``), and the stream's index; None without
    an audio stream."""
    with open_segment(record, frames_cfg) as seg:
        if not seg.container.streams.audio:
            yield None
            return
        half = spec_cfg.window_s / 2
        yield open_sound(seg, first_frame_s - half, first_frame_s + half, spec_cfg.sample_rate)
