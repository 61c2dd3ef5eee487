"""Decoding with PyAV: frames at a configured rate inside a clip's segment, fitted into
the working size with their aspect ratio kept (a letterbox, :mod:`factory.geometry`),
and the 16 kHz mono sound around them.

- Any container / codec / frame rate / size that FFmpeg reads; the decoder seeks to the
  segment's keyframe instead of decoding a long file from the start.
- Frame ``k`` is the decoded frame nearest to ``start + k / fps``.
- Audio is decoded at its own rate, placed by presentation time (samples before 0 and
  after the stream's end, AAC priming and padding, are dropped), mixed to mono and
  resampled to 16 kHz with torchaudio; the buffer spans half a window before the first
  frame to half a window after the last, zero outside the clip.
- Every problem raises :class:`~factory.rejects.ClipError` with a reason and a remedy,
  which the pipeline turns into a reject record.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import IO

import av
import numpy as np
import torch
import torchaudio.functional as AF

from factory import storage
from factory.config import FrameConfig, SpectrogramConfig
from factory.corpus import ClipRecord, parse_tar_member_uri
from factory.geometry import content_box, letterbox
from factory.rejects import ClipError

log = logging.getLogger(__name__)

MAX_SIDE = 8192  # larger than any real video; beyond it the file is corrupt or absurd
MIN_SIDE = 16
END_TOLERANCE_S = 1.0  # an end time up to 1 s past the stream's end is clamped, not rejected


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
    # size with its aspect kept (factory.geometry): decode to the fitted size before the
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


def _decode_audio(
    container: av.container.InputContainer,
    stream: av.audio.stream.AudioStream,
    t0: float,
    t1: float,
    duration: float,
    rate: int,
) -> np.ndarray:
    native = stream.rate or stream.codec_context.sample_rate
    n_native = round((t1 - t0) * native)
    buf = np.zeros(n_native, dtype=np.float32)
    # the video pass has consumed the demuxer: always seek back (to the keyframe before t0)
    container.seek(int(max(0.0, t0 - 0.5) * 1e6), backward=True, any_frame=False)
    for frame in container.decode(stream):
        if frame.time is None:
            continue
        ft = float(frame.time)
        if ft > t1:
            break
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
        times = ft + np.arange(len(mono)) / native
        valid = (times >= 0) & (times < duration)  # drop AAC priming and end padding
        idx = np.round((times - t0) * native).astype(np.int64)
        valid &= (idx >= 0) & (idx < n_native)
        buf[idx[valid]] = mono[valid]
    if native != rate:
        buf = AF.resample(torch.from_numpy(buf), native, rate).numpy()
    return buf[: round((t1 - t0) * rate)]


def decode_clip(
    record: ClipRecord,
    frames_cfg: FrameConfig,
    spec_cfg: SpectrogramConfig,
    need_audio: bool = True,
) -> DecodedClip:
    """Decode a clip's segment. Raises :class:`ClipError` for every per-clip problem."""
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
            # a video stream that starts late (its first frame due after 0 s) has no
            # frames before that: the clip starts there instead of repeating frame 0
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
            if len(targets) > frames_cfg.max_frames:
                raise ClipError(
                    "decode",
                    f"{len(targets)} frames at {frames_cfg.fps:g} fps exceed max_frames={frames_cfg.max_frames}",
                    "split the clip into segments (start_s / end_s) or raise --max-frames",
                )
            if len(targets) == 0:
                raise ClipError(
                    "decode",
                    "zero frames in the segment",
                    "the segment is shorter than one frame period; widen it",
                )
            try:
                frames, times, turns = _decode_frames(
                    container, vstream, targets, frames_cfg.height, frames_cfg.width
                )
                if turns % 2:
                    h, w = w, h  # the source as shown: a portrait phone video is portrait
            except av.error.FFmpegError as err:
                raise ClipError(
                    "decode",
                    f"video stream is corrupt ({err})",
                    "re-encode or re-download the file",
                ) from None
            if len(frames) == 0:
                raise ClipError(
                    "decode",
                    "zero frames decoded",
                    "the video stream is empty or truncated; re-encode or re-download it",
                )
            if len(frames) < len(targets):
                log.warning(
                    "clip %s: %d of %d frames decoded (stream ends early)",
                    record.key,
                    len(frames),
                    len(targets),
                )
            audio = None
            t0 = float(times[0]) - spec_cfg.window_s / 2
            used = None
            if need_audio and container.streams.audio:
                t1 = float(times[-1]) + spec_cfg.window_s / 2
                failure = None
                # several audio tracks (languages, commentary): the first that decodes
                for astream in container.streams.audio:
                    try:
                        audio = _decode_audio(
                            container, astream, t0, t1, duration, spec_cfg.sample_rate
                        )
                    except av.error.FFmpegError as err:
                        failure = err
                        continue
                    used = astream.index
                    break
                if used is None:
                    raise ClipError(
                        "decode",
                        f"audio stream is corrupt ({failure})",
                        "re-encode the audio or strip the audio stream",
                    )
            return DecodedClip(record.key, frames, times, audio, t0, duration, (h, w), used)
    finally:
        if hasattr(source, "close"):
            source.close()  # type: ignore[union-attr]
