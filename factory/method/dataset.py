"""The pseudo-fixation dataset's schema: one Arrow row per labelled frame.

Columns (SPEC.md section 5): ``video_id, frame_index, time_s, tag, height, width,
map, box, confidences, shard_id`` plus ``source_height, source_width`` (the video's own
frame size; ``height, width`` are the map's, the working resolution), ``audio_stream``
(which of the file's streams the audio came from: the first that decodes), ``box_fallback,
has_audio, audio_switch, source`` and, with ``--ablation``, one ``map_<variant>`` column per name in
:data:`factory.method.labeler.ABLATION_MAPS` (the paper's Table 1 variants; README lists them).

Maps are ``uint8`` (0-255 = saliency 0-1) stored as a nested fixed-size list
``[height][width]``: plain nested lists to any Parquet reader (pyarrow, pandas, Ray
Data, Hugging Face ``datasets``), no extension type needed. By default they are at the
working resolution (``height, width``), the video letterboxed into it
(:mod:`factory.io.geometry`); with ``map_size="source"`` (``--map-size source``) each map
is the video's own frame, ``source_height x source_width``, in nested lists of that
clip's size (variable-size lists: clips of different sizes share a shard). ``box`` is
``[x0, y0, x1, y1]`` in normalised frame coordinates. ``confidences`` is a struct of
the 11 sources' selected confidences ``sf(C)[tag]`` (Eq. 3; 0 = the source did not
rank the tag first or could not run).

Reading a map without this project::

    import numpy as np, pyarrow.parquet as pq
    t = pq.read_table("out/shards")
    m = np.array(t["map"][0].as_py(), dtype=np.uint8)   # (height, width)
"""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
from PIL import Image

from factory.io.geometry import to_source
from factory.method.labeler import ABLATION_MAPS, SOURCES, ClipLabels

CONFIDENCE_TYPE = pa.struct([(s, pa.float32()) for s in SOURCES])


# Where the maps of a dataset live: the working resolution (letterboxed) or the video's own.
MAP_SIZES = ("working", "source")
# A map at each video's own size: nested lists whose length varies from clip to clip.
SOURCE_MAP_TYPE = pa.list_(pa.list_(pa.uint8()))


def map_type(height: int, width: int, map_size: str = "working") -> pa.DataType:
    if map_size == "source":
        return SOURCE_MAP_TYPE
    return pa.list_(pa.list_(pa.uint8(), width), height)


def schema(
    height: int, width: int, ablation: bool, tagged: bool = True, map_size: str = "working"
) -> pa.Schema:
    fields = [
        ("video_id", pa.string()),
        ("frame_index", pa.int32()),
        ("time_s", pa.float64()),
    ]
    if tagged:
        fields.append(("tag", pa.string()))
    fields += [
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("source_height", pa.int32()),
        ("source_width", pa.int32()),
        ("audio_stream", pa.int32()),
        ("map", map_type(height, width, map_size)),
    ]
    if tagged:
        fields += [
            ("box", pa.list_(pa.float32(), 4)),
            ("box_fallback", pa.bool_()),
            ("confidences", CONFIDENCE_TYPE),
            ("has_audio", pa.bool_()),
            ("audio_switch", pa.bool_()),
        ]
    fields.append(("source", pa.string()))
    if ablation:
        fields += [(f"map_{name}", map_type(height, width, map_size)) for name in ABLATION_MAPS]
    fields.append(("shard_id", pa.string()))
    return pa.schema(fields)


def to_uint8(maps: np.ndarray) -> np.ndarray:
    return np.clip(np.round(maps * 255.0), 0, 255).astype(np.uint8)


def map_array(maps: np.ndarray, source_size: tuple[int, int] | None = None) -> pa.Array:
    """(T, H, W) float in [0, 1] at the working resolution -> a uint8 array of T maps:
    nested fixed-size lists as they are, or, given ``source_size``, each map as the
    video's own frame (:func:`factory.io.geometry.to_source`) in variable-size lists."""
    maps8 = to_uint8(maps)
    if source_size is not None and source_size[0] > 0 and source_size[1] > 0:
        maps8 = np.stack([to_source(m, source_size) for m in maps8])
        t, h, w = maps8.shape
        flat = pa.array(maps8.reshape(-1), type=pa.uint8())
        rows = pa.ListArray.from_arrays(pa.array(np.arange(t * h + 1, dtype=np.int32) * w), flat)
        return pa.ListArray.from_arrays(pa.array(np.arange(t + 1, dtype=np.int32) * h), rows)
    _t, h, w = maps8.shape
    flat = pa.array(maps8.reshape(-1), type=pa.uint8())
    return pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(flat, w), h)


def labels_table(
    labels: ClipLabels, source: str, ablation: bool, map_size: str = "working"
) -> pa.Table:
    """The rows of one labelled clip (``shard_id`` filled in by the writer)."""
    if map_size not in MAP_SIZES:
        raise ValueError(f"map size {map_size!r}: one of {', '.join(MAP_SIZES)}")
    at_source = labels.source_size if map_size == "source" else None
    t, h, w = labels.maps.shape
    cols: dict[str, pa.Array] = {
        "video_id": pa.array([labels.key] * t, pa.string()),
        "frame_index": pa.array(np.arange(t, dtype=np.int32)),
        "time_s": pa.array(np.asarray(labels.times, dtype=np.float64)),
        "tag": pa.array(["|".join(labels.tags)] * t, pa.string()),
        "height": pa.array(np.full(t, h, np.int32)),
        "width": pa.array(np.full(t, w, np.int32)),
        **source_columns(labels.source_size, labels.audio_stream, t),
        "map": map_array(labels.maps, at_source),
        "box": pa.FixedSizeListArray.from_arrays(
            pa.array(labels.boxes.reshape(-1), pa.float32()), 4
        ),
        "box_fallback": pa.array(labels.box_fallback.astype(bool)),
        "confidences": pa.StructArray.from_arrays(
            [pa.array(labels.confidences[s], pa.float32()) for s in SOURCES], names=list(SOURCES)
        ),
        "has_audio": pa.array(np.full(t, labels.has_audio)),
        "audio_switch": pa.array(labels.gate.astype(bool)),
        "source": pa.array([source] * t, pa.string()),
    }
    if ablation:
        for name in ABLATION_MAPS:
            cols[f"map_{name}"] = map_array(labels.ablation[name], at_source)
    cols["shard_id"] = pa.array([""] * t, pa.string())
    return pa.table(cols, schema=schema(h, w, ablation, map_size=map_size))


def source_columns(
    size: tuple[int, int], audio_stream: int | None, rows: int
) -> dict[str, pa.Array]:
    """``source_height``, ``source_width`` and ``audio_stream`` (the file's stream index
    the audio was decoded from, null without audio) for ``rows`` rows of one video."""
    return {
        "source_height": pa.array(np.full(rows, size[0], np.int32)),
        "source_width": pa.array(np.full(rows, size[1], np.int32)),
        "audio_stream": pa.array([audio_stream] * rows, pa.int32()),
    }


def table_to_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def table_from_bytes(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(io.BytesIO(data)).read_all()


def maps_from_column(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A ``map`` column -> (N, H, W) uint8, without Python loops over pixels. Maps at the
    videos' own sizes (``--map-size source``): (N, H, W) when every row has one size
    (one clip), else a length-N object array of (H_i, W_i) arrays."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0, 0), np.uint8)
    if isinstance(arr.type, pa.FixedSizeListType):
        h = arr.type.list_size
        w = arr.type.value_type.list_size
        return arr.flatten().flatten().to_numpy(zero_copy_only=False).reshape(n, h, w)
    heights = np.diff(arr.offsets.to_numpy())
    rows = arr.flatten()
    widths = np.diff(rows.offsets.to_numpy())
    values = rows.flatten().to_numpy(zero_copy_only=False)
    out, at, r = [], 0, 0
    for h in heights:
        w = int(widths[r]) if h else 0
        out.append(values[at : at + h * w].reshape(h, w))
        at, r = at + h * w, r + h
    if len({m.shape for m in out}) == 1:
        return np.stack(out)
    stacked = np.empty(n, dtype=object)
    for i, m in enumerate(out):
        stacked[i] = m
    return stacked


def export_png(table: pa.Table, out_dir: str, column: str = "map") -> int:
    """Per-frame PNG maps in the usual saliency-dataset layout:
    ``<out_dir>/<video_id>/maps/eyeMap_%05d.png`` (frame_index + 1, as the common
    datasets number from 1), each at its video's own frame size (the video's rectangle
    of the working-resolution map, :func:`factory.io.geometry.to_source`; rows without
    ``source_height`` stay at the working size). Returns the number of files written."""

    maps = maps_from_column(table[column])
    vids = table["video_id"].to_pylist()
    idx = table["frame_index"].to_pylist()
    names = table.column_names
    sizes = (
        zip(table["source_height"].to_pylist(), table["source_width"].to_pylist(), strict=True)
        if "source_height" in names
        else [(0, 0)] * len(vids)
    )
    for m, vid, i, (h, w) in zip(maps, vids, idx, sizes, strict=True):
        folder = os.path.join(out_dir, vid, "maps")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(to_source(m, (h, w))).save(os.path.join(folder, f"eyeMap_{i + 1:05d}.png"))
    return len(maps)
