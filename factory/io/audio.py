"""Audio features: the 1 s window centred on each frame and its log spectrogram
(torchaudio; runs on the device that holds the waveform)."""

from __future__ import annotations

import numpy as np
import torch
import torchaudio.transforms as T

from factory.config import SpectrogramConfig


def frame_windows(
    audio: np.ndarray, audio_t0: float, times: np.ndarray, cfg: SpectrogramConfig
) -> np.ndarray:
    """(T, window_samples) float32: the window centred on each frame time, zero-padded
    where it reaches past the decoded buffer (the clip's edges)."""
    n = cfg.window_samples
    starts = np.round((np.asarray(times) - cfg.window_s / 2 - audio_t0) * cfg.sample_rate).astype(
        np.int64
    )
    padded = np.concatenate(
        [np.zeros(n, np.float32), audio.astype(np.float32), np.zeros(n, np.float32)]
    )
    idx = starts[:, None] + n + np.arange(n)[None, :]
    idx = np.clip(idx, 0, len(padded) - 1)
    return padded[idx]


class LogSpectrogram(torch.nn.Module):
    """(B, samples) -> (B, 1, F, L): ``log(|STFT|^2 + eps)`` (or mel), z-scored per window."""

    def __init__(self, cfg: SpectrogramConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if cfg.mel:
            self.transform: torch.nn.Module = T.MelSpectrogram(
                cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, n_mels=cfg.n_mels
            )
        else:
            self.transform = T.Spectrogram(n_fft=cfg.n_fft, hop_length=cfg.hop_length, power=2.0)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        spec = torch.log(self.transform(windows.float()) + self.cfg.log_eps)
        if self.cfg.zscore:
            mean = spec.mean(dim=(-2, -1), keepdim=True)
            std = spec.std(dim=(-2, -1), keepdim=True).clamp_min(1e-5)
            spec = (spec - mean) / std
        return spec[:, None]
