"""Frame and audio encoding on a device: the only place encoders run. The labeler, the
training feature pass and the students all call :class:`FrameEncoder`, so device,
dtype (bf16 autocast on GPU), channels-last and chunking are decided once."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from factory.config import Preset
from factory.io.audio import LogSpectrogram, frame_windows
from factory.io.decode import DecodedClip
from models.encoders import Encoders

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    names = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, bf16, fp16 or fp32")
    return names[dtype]


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (T, 3, H, W), ImageNet-normalised in one fused op."""
    mean = torch.tensor(IMAGENET_MEAN, device=frames.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=frames.device).view(1, 3, 1, 1) * 255
    return (frames.permute(0, 3, 1, 2).float() - mean) / std


def resize_square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Frames (N, 3, H, W) to (N, 3, size, size). Shrinking is a box filter (area
    averaging: anti-aliased, one cheap kernel; antialiased bilinear cost an H100 3 ms a
    clip, a fifth of the labeler's GPU time); growing is bilinear."""
    if x.shape[-2:] == (size, size):
        return x
    if x.shape[-2] >= size and x.shape[-1] >= size:
        return F.adaptive_avg_pool2d(x, size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class FrameEncoder:
    """Runs the shared encoders over frames and audio windows; counts the passes."""

    def __init__(
        self,
        encoders: Encoders,
        preset: Preset,
        device: str = "auto",
        dtype: str = "auto",
        channels_last: bool = True,
        chunk: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.channels_last = channels_last and self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input sizes: pick the fastest kernels
        self.chunk = chunk or preset.label.frame_chunk
        self.preset = preset
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.encoders = encoders.to(device=self.device, memory_format=fmt).eval()
        self.spectrogram = LogSpectrogram(preset.spectrogram).to(self.device)
        self.passes = {"coarse": 0, "fine": 0, "audio": 0, "pool": 0}

    @contextmanager
    def autocast(self) -> Iterator[None]:
        if self.dtype != torch.float32:
            with torch.autocast(self.device.type, dtype=self.dtype):
                yield
        else:
            yield

    def frames(self, frames: np.ndarray) -> torch.Tensor:
        """uint8 (T, H, W, 3) on the host -> normalised (T, 3, H, W) on the device."""
        return normalize_frames(torch.from_numpy(frames).to(self.device, non_blocking=True))

    @torch.inference_mode()
    def images(self, images: torch.Tensor, plus: bool, kind: str) -> dict[str, torch.Tensor]:
        """Image trunk (F3, F4, F5) and, if ``plus``, the dilated VGG16 over (N, 3, S, S)."""
        outs: dict[str, list[torch.Tensor]] = {}
        for chunk in images.split(self.chunk):
            if self.channels_last:
                chunk = chunk.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                feats = dict(self.encoders.image(chunk))
                if plus:
                    feats["plus"] = self.encoders.plus(chunk)
            for k, v in feats.items():
                outs.setdefault(k, []).append(v.float())
            self.passes[kind] += chunk.shape[0]
        return {k: torch.cat(v) for k, v in outs.items()}

    @torch.inference_mode()
    def audio(self, windows: np.ndarray) -> torch.Tensor:
        """(N, samples) windows -> (N, D) audio vectors."""
        # writable and contiguous (Ray hands read-only arrays; torch warns on those)
        w = torch.from_numpy(np.require(windows, requirements=["C", "W"])).to(self.device)
        vecs = []
        for chunk in w.split(self.chunk):
            spec = self.spectrogram(chunk)
            with self.autocast():
                vecs.append(self.encoders.audio(spec).float())
            self.passes["audio"] += chunk.shape[0]
        if not vecs:
            return torch.zeros(0, self.encoders.audio.out_dim, device=self.device)
        return torch.cat(vecs)

    @torch.inference_mode()
    def clip(
        self, clip: DecodedClip, keep: tuple[str, ...] = ("F4", "F5", "plus")
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Features of every frame of a clip at the coarse size, once; returns
        (features, the normalised frames at working size). ``audio`` is zeros and
        ``has_audio`` False when the clip has no audio stream."""
        return self.clips([clip], keep)[0]

    @torch.inference_mode()
    def clips(
        self, clips: list[DecodedClip], keep: tuple[str, ...] = ("F4", "F5", "plus")
    ) -> list[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """:meth:`clip` for several clips, their frames and audio windows encoded in shared
        batches (fuller GPU batches than clip by clip); one (features, frames) per clip."""
        if len({c.frames.shape[1:] for c in clips}) > 1:  # different working sizes
            return [self.clips([c], keep)[0] for c in clips]
        frames = self.frames(np.concatenate([c.frames for c in clips]))
        coarse = resize_square(frames, self.preset.frames.coarse_size)
        feats = {
            k: v
            for k, v in self.images(coarse, plus="plus" in keep, kind="coarse").items()
            if k in keep
        }
        windows = [
            frame_windows(c.audio, c.audio_t0, c.times, self.preset.spectrogram)
            for c in clips
            if c.audio is not None
        ]
        vectors = self.audio(np.concatenate(windows)) if windows else None
        out, start, audio_start = [], 0, 0
        for c in clips:
            t = c.frames.shape[0]
            clip_feats = {k: v[start : start + t] for k, v in feats.items()}
            if c.audio is not None and vectors is not None:
                clip_feats["audio"] = vectors[audio_start : audio_start + t]
                audio_start += t
            else:
                clip_feats["audio"] = torch.zeros(
                    t, self.encoders.audio.out_dim, device=self.device
                )
            out.append((clip_feats, frames[start : start + t]))
            start += t
        return out
