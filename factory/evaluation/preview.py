"""A preview image of a labelled dataset: a few clips' frames with their pseudo-fixation
maps overlaid (written under the output root as ``preview.png``)."""

from __future__ import annotations

import io
import logging
from typing import TYPE_CHECKING

import numpy as np

from factory.config import Preset
from factory.io import storage
from factory.io.corpus import Listing
from factory.io.decode import decode_groups
from factory.io.geometry import to_working
from factory.io.store import read_parquet
from factory.method.dataset import maps_from_column

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

PREVIEW_CLIPS = 4
PREVIEW_FRAMES = 4


def overlay(frame: np.ndarray, saliency: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """RGB uint8 frame + [0, 1] map -> RGB uint8 with a 'jet' heat map blended in."""
    from matplotlib import colormaps

    heat = (colormaps["jet"](saliency)[..., :3] * 255).astype(np.float32)
    weight = alpha * saliency[..., None]
    return np.clip(frame * (1 - weight) + heat * weight, 0, 255).astype(np.uint8)


PANEL_INCHES = 2.6  # each panel's width: a 128-pixel map is shown at ~1.5x
COLOUR_MAP = "jet"


def panel_figure(
    rows: list[list[tuple[np.ndarray, str]]],
    row_labels: list[str],
    title: str,
    scale_label: str,
) -> Figure:
    """A matplotlib figure: one row of labelled panels per entry of ``rows`` (each panel
    an RGB image and its title), the row's label on its left, one colour scale for the
    heat maps (``COLOUR_MAP`` over [0, 1]) on the right. Returns the figure (tests read
    its titles); :func:`save_figure` writes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import cm, colors

    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    h, w = rows[0][0][0].shape[:2]
    fig, axes = plt.subplots(
        n_rows,
        n_cols,
        figsize=(PANEL_INCHES * n_cols + 1.2, PANEL_INCHES * h / w * n_rows + 0.9),
        squeeze=False,
        layout="constrained",
    )
    for r, (panels, label) in enumerate(zip(rows, row_labels, strict=True)):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(panels):
                ax.axis("off")
                continue
            image, panel_title = panels[c]
            ax.imshow(image)
            ax.set_title(panel_title, fontsize=8)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    scale = cm.ScalarMappable(norm=colors.Normalize(0, 1), cmap=COLOUR_MAP)
    fig.colorbar(scale, ax=axes, shrink=0.6, label=scale_label)
    return fig


def save_figure(fig: Figure, out_uri: str) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes_atomic(out_uri, buf.getvalue())


def preview_figure(root: str, listing: Listing, preset: Preset) -> Figure | None:
    """The preview's figure: a few clips (rows) at a few times (columns), each frame with
    its pseudo-fixation map (SCAM+) blended in; None when nothing was labelled."""

    manifest = storage.read_json(storage.join(root, "_manifest.json"))
    records = {r.key: r for r in listing.records}
    picked = []
    for shard in manifest["shards"]:
        for key in shard["clips"]:
            if key in records and len(picked) < PREVIEW_CLIPS:
                picked.append((key, shard["file"]))
    rows, labels = [], []
    for key, file in picked:
        table = read_parquet(
            storage.join(root, file), ["video_id", "frame_index", "time_s", "tag", "map"]
        )
        table = table.filter(table["video_id"].to_numpy(zero_copy_only=False) == key)
        # maps at the video's own size (--map-size source) go back into the letterbox
        size = (preset.frames.height, preset.frames.width)
        maps = [
            to_working(m, size).astype(np.float32) / 255.0 for m in maps_from_column(table["map"])
        ]
        times = table["time_s"].to_numpy()
        n = len(maps)
        picks = np.linspace(0, n - 1, min(PREVIEW_FRAMES, n)).round().astype(int)
        # only the picked frames are decoded (a long clip is never decoded whole)
        index = table["frame_index"].to_numpy()[picks]
        groups, _audio, _ = decode_groups(
            records[key], preset.frames, preset.spectrogram, index, need_audio=False
        )
        rows.append(
            [
                (overlay(groups[k, 1], maps[i]), f"{key}  t = {times[i]:.2f} s")
                for k, i in enumerate(picks)
            ]
        )
        labels.append(f"{key}\ntag: {', '.join(records[key].tags)}")
    if not rows:
        return None
    return panel_figure(
        rows,
        labels,
        "Pseudo-fixation maps (SCAM+, Eq. 8) blended over the labelled frames",
        "pseudo-fixation (SCAM+), 0 = none, 1 = the frame's most salient point",
    )


def write_preview(root: str, listing: Listing, preset: Preset, out_uri: str) -> None:
    fig = preview_figure(root, listing, preset)
    if fig is None:
        return
    save_figure(fig, out_uri)
    log.info("preview: %s", out_uri)
