"""The authors' post-processing of the pseudo ground truth (SPEC.md appendix): not an
equation of the paper, an option of the factory, off by default.

The authors' code smoothed each clip's maps over 5 frames and set the values below
3 x the map's mean to 0 before training the students on them. Written here as three
functions (each tested on hand-computed cases) and a registry of named choices that
the label job applies to every map variant it writes (``--postprocess authors``).

Where the appendix is silent we chose, and say so:
- the 5 frames are centred on the frame (t-2 .. t+2); at the ends of a clip the mean is
  over the frames that exist (no padding, so the first frame is not darkened);
- "mean" is the mean of the smoothed frame's own map;
- the result is min-max normalised again (``Z``), so a map keeps the dataset's 0..255
  range; a frame whose every value falls below 3 x its mean (a flat map) becomes all
  zeros, as the rule says.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from factory.method.equations import minmax_normalize

SMOOTH_FRAMES = 5
MEAN_FACTOR = 3.0


def temporal_smooth(maps: torch.Tensor, frames: int = SMOOTH_FRAMES) -> torch.Tensor:
    """The mean of each frame's map with its neighbours, ``frames`` centred frames (an
    odd number), truncated at the clip's ends. ``maps`` (T, H, W) -> (T, H, W)."""
    if frames < 1 or frames % 2 == 0:
        raise ValueError(f"temporal smoothing needs an odd number of frames, got {frames}")
    t = maps.shape[0]
    half = frames // 2
    csum = torch.cat([torch.zeros_like(maps[:1]), maps.cumsum(dim=0)])
    lo = torch.clamp(torch.arange(t, device=maps.device) - half, 0, t)
    hi = torch.clamp(torch.arange(t, device=maps.device) + half + 1, 0, t)
    count = (hi - lo).to(maps.dtype)[:, None, None]
    return (csum[hi] - csum[lo]) / count


def suppress_below_mean(maps: torch.Tensor, factor: float = MEAN_FACTOR) -> torch.Tensor:
    """Values below ``factor`` x the map's mean set to 0 (each map of (..., H, W))."""
    mean = maps.mean(dim=(-2, -1), keepdim=True)
    return torch.where(maps >= factor * mean, maps, torch.zeros_like(maps))


def authors_postprocess(maps: torch.Tensor) -> torch.Tensor:
    """``Z(suppress_below_mean(temporal_smooth(maps)))`` over one clip's maps (T, H, W)."""
    return minmax_normalize(suppress_below_mean(temporal_smooth(maps)))


POSTPROCESS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "none": lambda maps: maps,
    "authors": authors_postprocess,
}
