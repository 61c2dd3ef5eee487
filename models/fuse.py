"""Fuse modules of Sec. 3.3 and Sec. 5.1: SA fuse (Eq. 5), ST fuse (Eq. 6), STA fuse
(Eq. 15), and the audio lift (the ``DeConv`` of Eq. 5).

The audio switch ``phi`` is applied by the caller as a per-sample 0/1 ``gate``
(``phi(a) = a * gate``); the switch net itself is a classification net (see
``models.classifiers.AudioSwitch``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Width of the audio embedding before the deconvolutions (the authors' code projects
# the 8192-d VGGSound vector to 128 first).
AUDIO_LIFT_WIDTH = 128


def apply_audio_switch(audio: torch.Tensor, gate: torch.Tensor | None) -> torch.Tensor:
    """``phi(a)``: the audio vector where the switch says the sound belongs to the
    picture, zeros elsewhere. ``gate`` is (B,) in {0, 1}; ``None`` means always on."""
    if gate is None:
        return audio
    return audio * gate.to(audio.dtype).view(-1, *([1] * (audio.dim() - 1)))


class AudioLift(nn.Module):
    """``DeConv`` of Eq. 5: lift a (B, D) audio vector to a (B, C, h, w) map with a
    projection and two transposed convolutions (1 -> 4 -> 8), then resize to (h, w)."""

    def __init__(self, audio_dim: int, out_channels: int) -> None:
        super().__init__()
        self.project = nn.Linear(audio_dim, AUDIO_LIFT_WIDTH)
        self.deconv1 = nn.ConvTranspose2d(AUDIO_LIFT_WIDTH, AUDIO_LIFT_WIDTH, 4)
        self.deconv2 = nn.ConvTranspose2d(AUDIO_LIFT_WIDTH, out_channels, 4, stride=2, padding=1)

    def forward(self, audio: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = F.relu(self.project(audio))[:, :, None, None]
        x = self.deconv2(F.relu(self.deconv1(x)))
        if tuple(x.shape[-2:]) != tuple(size):
            if x.is_cuda:  # the NCHW bilinear kernel took 8 ms here on an H100, NHWC 0.2 ms
                x = x.contiguous(memory_format=torch.channels_last)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class TemporalConv(nn.Module):
    """``v`` of Eq. 6: 3D convolution over the stacked features of frames t-1, t, t+1
    (Conv3d (3,1,1) over time, then two Conv3d (1,3,3)), as in the authors' code."""

    def __init__(self, channels: int, mid_channels: int) -> None:
        super().__init__()
        self.time = nn.Conv3d(channels, mid_channels, (3, 1, 1))
        self.space1 = nn.Conv3d(mid_channels, mid_channels, (1, 3, 3), padding=(0, 1, 1))
        self.space2 = nn.Conv3d(mid_channels, channels, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """``frames``: (B, 3, C, h, w) features of t-1, t, t+1 -> v: (B, C, h, w)."""
        if frames.shape[1] != 3:
            raise ValueError(f"TemporalConv expects 3 frames (t-1, t, t+1), got {frames.shape[1]}")
        x = frames.transpose(1, 2)  # B, C, T, h, w
        x = F.relu(self.time(x))
        x = F.relu(self.space1(x))
        return self.space2(x).squeeze(2)


class SAFuse(nn.Module):
    """Eq. 5: ``sa = ReLU( sigma(DeConv(phi(a))) * s + s ) (+) s`` (output 2C channels)."""

    def __init__(self, channels: int, audio_dim: int) -> None:
        super().__init__()
        self.lift = AudioLift(audio_dim, channels)

    def forward(
        self, s: torch.Tensor, audio: torch.Tensor, gate: torch.Tensor | None
    ) -> torch.Tensor:
        attention = torch.sigmoid(self.lift(apply_audio_switch(audio, gate), s.shape[-2:]))
        return torch.cat([F.relu(attention * s + s), s], dim=1)


class STFuse(nn.Module):
    """Eq. 6: ``st = ReLU( sigma(v) * s + s ) (+) s``, ``v`` from :class:`TemporalConv`,
    ``s`` the middle frame's features (output 2C channels)."""

    def __init__(self, channels: int, mid_channels: int) -> None:
        super().__init__()
        self.temporal = TemporalConv(channels, mid_channels)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        s = frames[:, 1]
        v = self.temporal(frames)
        return torch.cat([F.relu(torch.sigmoid(v) * s + s), s], dim=1)


class STAFuse(nn.Module):
    """Eq. 15: ``sta = ReLU( Conv1x1( (sigma(phi(a)) * s + s) (+) (sigma(v) * s + s) ) )``.

    ``phi(a)`` is lifted to the map size as in Eq. 5 before the sigmoid."""

    def __init__(self, channels: int, audio_dim: int, mid_channels: int, out_channels: int) -> None:
        super().__init__()
        self.lift = AudioLift(audio_dim, channels)
        self.temporal = TemporalConv(channels, mid_channels)
        self.mix = nn.Conv2d(2 * channels, out_channels, 1)

    def forward(
        self, frames: torch.Tensor, audio: torch.Tensor, gate: torch.Tensor | None
    ) -> torch.Tensor:
        s = frames[:, 1]
        audio_att = torch.sigmoid(self.lift(apply_audio_switch(audio, gate), s.shape[-2:]))
        temporal_att = torch.sigmoid(self.temporal(frames))
        return F.relu(self.mix(torch.cat([audio_att * s + s, temporal_att * s + s], dim=1)))
