"""Where a video's frame sits at the working resolution: the aspect-preserving rule.

Decoding resizes each frame to *fit* the working size (``FrameConfig.height x width``)
with its aspect ratio kept, centred, the rest of the canvas filled with the ImageNet
mean colour (a letterbox: zero after normalisation, so the bands carry no evidence).
Nothing is stretched: a 640 x 272 video in the tiny preset's 128 x 128 is a 128 x 54
picture between two bands. The maps at the working resolution carry the same geometry:
the video's frame is the rectangle :func:`content_box` of its source size, the maps are
zero outside it, and :func:`to_source` crops it and resizes it to the video's own size
(PNG export, overlays, evaluation against fixations at the video's size).

The nets then resize the working frame to their square input (256 x 256 in the paper,
which resizes every frame so: the method's own choice, applied to the whole letterboxed
canvas, so the picture keeps its proportions there too).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# The letterbox bands: the ImageNet mean colour, which normalisation maps to zero.
FILL_RGB = (124, 116, 104)


def content_box(
    source_hw: tuple[int, int], working_hw: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``(y0, x0, h, w)`` in working pixels of a ``source_hw`` frame fitted into
    ``working_hw`` with its aspect ratio kept and centred. An unknown source size (0)
    fills the whole canvas (rows written before this rule).

    >>> content_box((272, 640), (128, 128))
    (37, 0, 54, 128)
    >>> content_box((360, 640), (360, 640))
    (0, 0, 360, 640)
    """
    hs, ws = source_hw
    big_h, big_w = working_hw
    if hs <= 0 or ws <= 0:
        return 0, 0, big_h, big_w
    scale = min(big_h / hs, big_w / ws)
    h = min(big_h, max(1, round(hs * scale)))
    w = min(big_w, max(1, round(ws * scale)))
    return (big_h - h) // 2, (big_w - w) // 2, h, w


def letterbox(picture: np.ndarray, working_hw: tuple[int, int]) -> np.ndarray:
    """A frame already resized to its content size (h, w, 3) uint8, centred on a
    ``working_hw`` canvas of :data:`FILL_RGB`."""
    h, w = picture.shape[:2]
    big_h, big_w = working_hw
    if (h, w) == (big_h, big_w):
        return picture
    canvas = np.empty((big_h, big_w, 3), np.uint8)
    canvas[:] = FILL_RGB
    y0, x0 = (big_h - h) // 2, (big_w - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = picture
    return canvas


def content_mask(source_hw: tuple[int, int], working_hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: True on the video's frame, False on the bands."""
    y0, x0, h, w = content_box(source_hw, working_hw)
    mask = np.zeros(working_hw, bool)
    mask[y0 : y0 + h, x0 : x0 + w] = True
    return mask


def to_working(saliency: np.ndarray, working_hw: tuple[int, int]) -> np.ndarray:
    """The inverse of :func:`to_source`: a map at the video's own size (h, w) resized into
    its content box of ``working_hw``, zero on the bands. A map already at the working
    size is returned as it is."""
    if saliency.shape[:2] == tuple(working_hw):
        return saliency
    y0, x0, h, w = content_box(saliency.shape[:2], working_hw)
    out = np.zeros(working_hw, saliency.dtype)
    if saliency.dtype == np.uint8:
        small = np.asarray(Image.fromarray(saliency).resize((w, h), Image.Resampling.BILINEAR))
    else:
        image = Image.fromarray(saliency.astype(np.float32), mode="F")
        small = np.asarray(image.resize((w, h), Image.Resampling.BILINEAR)).astype(saliency.dtype)
    out[y0 : y0 + h, x0 : x0 + w] = small
    return out


def to_source(saliency: np.ndarray, source_hw: tuple[int, int]) -> np.ndarray:
    """A map at the working resolution (H, W), uint8 or float, as the video's own frame:
    its content box cropped and resized bilinearly to ``source_hw`` (unknown source size:
    the map as it is). Same dtype as given."""
    hs, ws = source_hw
    if hs <= 0 or ws <= 0:
        return saliency
    y0, x0, h, w = content_box(source_hw, saliency.shape[:2])
    crop = saliency[y0 : y0 + h, x0 : x0 + w]
    if crop.shape == (hs, ws):
        return crop
    if crop.dtype == np.uint8:
        return np.asarray(Image.fromarray(crop).resize((ws, hs), Image.Resampling.BILINEAR))
    image = Image.fromarray(crop.astype(np.float32), mode="F")
    return np.asarray(image.resize((ws, hs), Image.Resampling.BILINEAR)).astype(saliency.dtype)
