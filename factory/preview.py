"""A preview image of a labelled dataset: a few clips' frames with their pseudo-fixation
maps overlaid (written under the output root as ``preview.png``)."""

from __future__ import annotations

import logging

import numpy as np

from factory import storage
from factory.config import Preset
from factory.corpus import Listing

log = logging.getLogger(__name__)

PREVIEW_CLIPS = 4
PREVIEW_FRAMES = 4


def overlay(frame: np.ndarray, saliency: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """RGB uint8 frame + [0, 1] map -> RGB uint8 with a 'jet' heat map blended in."""
    from matplotlib import colormaps

    heat = (colormaps["jet"](saliency)[..., :3] * 255).astype(np.float32)
    weight = alpha * saliency[..., None]
    return np.clip(frame * (1 - weight) + heat * weight, 0, 255).astype(np.uint8)


def write_preview(root: str, listing: Listing, preset: Preset, out_uri: str) -> None:
    import io

    from PIL import Image

    from factory.dataset import maps_from_column
    from factory.decode import decode_clip
    from factory.store import read_parquet

    manifest = storage.read_json(storage.join(root, "_manifest.json"))
    records = {r.key: r for r in listing.records}
    rows = []
    for shard in manifest["shards"]:
        for key in shard["clips"]:
            if key in records and len(rows) < PREVIEW_CLIPS:
                rows.append((key, shard["file"]))
    tiles = []
    for key, file in rows:
        table = read_parquet(storage.join(root, file), ["video_id", "frame_index", "map"])
        table = table.filter(table["video_id"].to_numpy(zero_copy_only=False) == key)
        maps = maps_from_column(table["map"]).astype(np.float32) / 255.0
        clip = decode_clip(records[key], preset.frames, preset.spectrogram, need_audio=False)
        picks = (
            np.linspace(0, min(len(maps), len(clip.frames)) - 1, PREVIEW_FRAMES).round().astype(int)
        )
        tiles.append(np.concatenate([overlay(clip.frames[i], maps[i]) for i in picks], axis=1))
    if not tiles:
        return
    grid = np.concatenate(tiles, axis=0)
    buf = io.BytesIO()
    Image.fromarray(grid).save(buf, format="PNG")
    storage.write_bytes_atomic(out_uri, buf.getvalue())
    log.info("preview: %s", out_uri)
