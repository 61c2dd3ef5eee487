"""The aspect-preserving rule (factory.io.geometry): frames are fitted into the working size
with their proportions, never stretched; maps go back to the video's own frame."""

from __future__ import annotations

import av
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from factory.config import FrameConfig, SpectrogramConfig
from factory.io.corpus import ClipRecord
from factory.io.decode import decode_clip
from factory.io.geometry import FILL_RGB, content_box, content_mask, to_source
from factory.method.dataset import export_png, map_array


def test_content_box_by_hand():
    assert content_box((272, 640), (128, 128)) == (37, 0, 54, 128)  # 128 x 54.4 -> 54
    assert content_box((640, 272), (128, 128)) == (0, 37, 128, 54)  # portrait: side bands
    assert content_box((90, 160), (360, 640)) == (0, 0, 360, 640)  # same aspect: no band
    assert content_box((100, 100), (48, 64)) == (0, 8, 48, 48)
    assert content_box((0, 0), (48, 64)) == (0, 0, 48, 64)  # unknown source: the canvas
    mask = content_mask((100, 100), (48, 64))
    assert mask.sum() == 48 * 48 and not mask[:, :8].any() and mask[:, 8:56].all()


def test_to_source_crops_the_video_and_resizes():
    m = np.zeros((48, 64), np.uint8)
    m[:, 8:56] = 100  # the video's rectangle of a 100 x 100 source
    m[24, 32] = 255
    out = to_source(m, (100, 100))
    assert out.shape == (100, 100) and out.dtype == np.uint8
    assert out.min() >= 99  # no band left in the picture
    assert np.unravel_index(out.argmax(), out.shape) in {(50, 50), (51, 50), (50, 51), (51, 51)}
    f = to_source(m.astype(np.float32) / 255, (100, 100))
    assert f.dtype == np.float32 and abs(float(f.max()) - out.max() / 255) < 0.05
    assert to_source(m, (0, 0)) is m  # unknown source size: as it is


def test_decoded_frames_keep_their_aspect(tmp_path):
    """A 40 x 160 video (4:1) with a white square in its middle: in a 64 x 64 working frame
    it is a 16 x 64 picture between bands of the fill colour, and the square is still
    square (a stretch would make it 4x taller than wide)."""
    path = str(tmp_path / "wide.mp4")
    h, w = 40, 160
    with av.open(path, "w") as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = w, h, "yuv444p"
        for _ in range(8):
            img = np.zeros((h, w, 3), np.uint8)
            img[10:30, 70:90] = 255  # 20 x 20
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    cfg = FrameConfig(height=64, width=64, fps=8.0, coarse_size=64, fine_size=64, max_frames=64)
    clip = decode_clip(ClipRecord("wide", path, ("t",)), cfg, SpectrogramConfig(), False)
    f = clip.frames[0].astype(int)
    assert clip.source_size == (40, 160)
    assert np.abs(f[:24] - FILL_RGB).max() <= 2 and np.abs(f[40:] - FILL_RGB).max() <= 2
    bright = np.argwhere(f.mean(-1) > 200)
    rows = bright[:, 0].max() - bright[:, 0].min() + 1
    cols = bright[:, 1].max() - bright[:, 1].min() + 1
    assert bright[:, 0].min() >= 24 and bright[:, 0].max() < 40  # inside the picture
    assert abs(rows - cols) <= 2 and 6 <= rows <= 10  # 20 px x 64/160 = 8 px, still square


def test_png_export_is_the_videos_own_frame(tmp_path):
    """A letterboxed map exported as PNG: the video's size, the bands gone, the peak where
    it was in the video."""
    m = np.zeros((1, 48, 64), np.float32)
    m[0, 2:45, :] = 0.2  # the picture of a 100 x 150 video in 48 x 64: rows 2..44
    m[0, 12, 52] = 1.0  # towards its top right corner
    table = pa.table(
        {
            "video_id": ["v"],
            "frame_index": pa.array([0], pa.int32()),
            "map": map_array(m),
            "source_height": pa.array([100], pa.int32()),
            "source_width": pa.array([150], pa.int32()),
        }
    )
    y0, x0, h, w = content_box((100, 150), (48, 64))
    assert (y0, x0, h, w) == (2, 0, 43, 64)
    assert export_png(table, str(tmp_path)) == 1
    png = np.asarray(Image.open(tmp_path / "v" / "maps" / "eyeMap_00001.png"))
    assert png.shape == (100, 150)
    peak = np.unravel_index(png.argmax(), png.shape)
    assert abs(peak[0] - (12 - y0 + 0.5) * 100 / h) <= 3
    assert abs(peak[1] - (52 - x0 + 0.5) * 150 / w) <= 3


def test_map_size_source_rows_are_each_videos_own_frame(tmp_path):
    """``--map-size source``: each clip's maps at its video's size in one shard (clips of
    different sizes side by side), readable without this project, and back into the
    working letterbox for the students."""
    import pyarrow.parquet as pq

    from factory.io.geometry import to_working
    from factory.method.dataset import labels_table, maps_from_column
    from factory.method.labeler import SOURCES, ClipLabels

    def clip(key, size):
        maps = np.zeros((2, 32, 32), np.float32)
        y0, x0, h, w = content_box(size, (32, 32))
        maps[:, y0 + h // 2, x0 + w // 2] = 1.0  # the picture's centre
        return ClipLabels(
            key=key,
            tags=["a"],
            times=np.arange(2) / 8.0,
            maps=maps,
            boxes=np.zeros((2, 4), np.float32),
            box_fallback=np.zeros(2, bool),
            confidences={s: np.zeros(2, np.float32) for s in SOURCES},
            gate=np.zeros(2, bool),
            has_audio=False,
            source_size=size,
        )

    tables = [
        labels_table(clip("wide", (36, 64)), "w.mp4", ablation=False, map_size="source"),
        labels_table(clip("tall", (50, 20)), "t.mp4", ablation=False, map_size="source"),
    ]
    pq.write_table(pa.concat_tables(tables), tmp_path / "s.parquet")
    t = pq.read_table(tmp_path / "s.parquet")
    first = np.array(t["map"][0].as_py(), np.uint8)  # plain nested lists, no project code
    assert first.shape == (36, 64)
    maps = maps_from_column(t["map"])
    assert [m.shape for m in maps] == [(36, 64)] * 2 + [(50, 20)] * 2
    for m, size in ((maps[0], (36, 64)), (maps[2], (50, 20))):
        peak = np.unravel_index(np.argmax(m), m.shape)
        assert abs(peak[0] - size[0] / 2) <= 2 and abs(peak[1] - size[1] / 2) <= 2
        back = to_working(m, (32, 32))
        assert back.shape == (32, 32) and not back[~content_mask(size, (32, 32))].any()
    with pytest.raises(ValueError, match="map size"):
        labels_table(clip("x", (36, 64)), "x.mp4", ablation=False, map_size="big")
