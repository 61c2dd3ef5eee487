"""Score predicted maps against ground truth, per video and per dataset.

Predictions: this project's Parquet output (a dataset root with ``_manifest.json``, or a
folder of Parquet shards), every ``map*`` column of it (so one ``--ablation`` run scores
single-source CAM, AC, coarse SCAM, fine SCAM and SCAM+ side by side), or a folder of
per-frame PNG maps ``<pred>/<video>/maps/eyeMap_%05d.png`` (numbered from 1).

Ground truth, in either layout:

- the synthetic corpus (``synthetic.json`` + ``ground_truth/<video_id>.npz``);
- the six audio-visual test sets as commonly distributed (STAViS release):
  ``annotations/<DB>/<video>/maps/eyeMap_%05d.jpg`` (continuous map) and
  ``annotations/<DB>/<video>/fixMap_%05d.mat`` (binary fixations, MATLAB field
  ``eyeMap``), frames ``video_frames/<DB>/<video>/img_%05d.jpg``, frame rates from
  ``fold_lists/<DB>_list_test_<k>_fps.txt`` or DIEM's ``DIEM_list_test_fps.txt``
  (``name nframes fps``; each list is a test fold) or ``--gt-fps``;
  ``--gt`` points at the release root (every DB) or names one DB with ``ROOT::DB``.

Protocol (STAViS over the MIT code, which the paper's numbers come from): each
prediction is min-max normalised, blurred (Gaussian, sigma 2, 13x13) at its own
resolution and resized to the ground truth (``blur=False`` skips the blur); CC, SIM and
KLD against the continuous map; NSS, AUC-J and s-AUC against the fixations; s-AUC's
negatives are the fixations of all other frames of the same video; per-frame scores
are averaged per video, then over videos; with fold lists, per STAViS database over each
fold's test videos, then over folds (videos in no fold list are not scored). A
centre-prior baseline is always scored, on the frames the methods were scored on.
A prediction frame is matched to the ground-truth frame nearest in time.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import pyarrow.parquet as pq
from PIL import Image
from scipy.io import loadmat

from factory.evaluation.preview import overlay, panel_figure, save_figure
from factory.io import storage
from factory.io.geometry import to_source
from factory.io.store import parquet_columns, read_parquet
from factory.io.synthetic import load_ground_truth
from factory.method import metrics as M
from factory.method.dataset import maps_from_column
from factory.method.labeler import MAP_NAMES

log = logging.getLogger(__name__)

# map(fn, [args, ...]) -> [fn(*args), ...], in order (for example over Ray tasks)
Mapper = Callable[[Callable[..., Any], list[tuple]], list[Any]]

CENTER_PRIOR = "center prior"
TABLE_METRICS = ("auc_judd", "sim", "auc_shuffled", "cc", "nss", "kld")
TABLE_NAMES = {
    "auc_judd": "AUC-J",
    "sim": "SIM",
    "auc_shuffled": "s-AUC",
    "cc": "CC",
    "nss": "NSS",
    "kld": "KLD",
}
COLUMN_NAMES = MAP_NAMES  # every map column of the label job, in the paper's terms


@dataclass
class VideoTruth:
    video: str
    times: np.ndarray  # (T,)
    maps: np.ndarray  # (T, H, W) float [0, 1]
    fixations: np.ndarray  # (T, H, W) bool
    frames: list[str] = field(default_factory=list)  # image paths, where the layout has them
    database: str = ""  # the STAViS database (AVAD, DIEM, ...); "" for the synthetic world
    folds: tuple[str, ...] = ()  # the fold lists that test this video ("1", "2", ...)


# Table 7 of the paper, STANet+ per database (AUC-J, SIM, s-AUC, CC, NSS; no KLD given).
PAPER_STANET_PLUS = {
    db: dict(zip(("auc_judd", "sim", "auc_shuffled", "cc", "nss"), values, strict=True))
    for db, values in {
        "AVAD": (0.887, 0.361, 0.595, 0.490, 2.318),
        "DIEM": (0.884, 0.436, 0.679, 0.544, 2.042),
        "SumMe": (0.866, 0.323, 0.634, 0.402, 1.761),
        "ETMD": (0.910, 0.328, 0.683, 0.452, 2.297),
        "ETMD_av": (0.910, 0.328, 0.683, 0.452, 2.297),  # the STAViS release's folder name
        "Coutrot_db1": (0.840, 0.315, 0.552, 0.354, 1.429),
        "Coutrot_db2": (0.862, 0.267, 0.612, 0.349, 1.952),
    }.items()
}


# ----------------------------------------------------------------- ground truth


STUDENT_COLUMN_NAMES = {
    "map": "students fused (Eq. 21 by default)",
    "map_sta": "STA",
    "map_sta_plus_short": "STA+ short",
    "map_sta_plus_long": "STA+ long",
}


def _job_of(pred: str) -> str | None:
    """Which job wrote a dataset (its run.json), if it is one of ours."""
    uri = storage.join(pred, "run.json")
    try:
        return storage.read_json(uri).get("job") if storage.exists(uri) else None
    except (OSError, ValueError):
        return None


def is_synthetic(gt: str) -> bool:
    return os.path.exists(os.path.join(gt, "synthetic.json"))


def synthetic_truth(gt: str, videos: set[str] | None = None) -> Iterator[VideoTruth]:
    for path in sorted(glob.glob(os.path.join(gt, "ground_truth", "*.npz"))):
        vid = os.path.basename(path)[:-4]
        if videos is not None and vid not in videos:
            continue
        g = load_ground_truth(gt, vid)
        yield VideoTruth(vid, g["times"], g["maps"], g["fixations"])


def stavis_folds(root: str, db: str) -> tuple[dict[str, float], dict[str, set[str]]]:
    """Frame rates and test folds of a STAViS database from its fold lists
    ``fold_lists/<DB>_list_test_<k>_fps.txt`` (``name nframes fps`` per line) or, as
    DIEM's is distributed, ``<DB>_list_test_fps.txt`` (one fold, named "1")."""
    fps: dict[str, float] = {}
    folds: dict[str, set[str]] = {}
    for path in sorted(glob.glob(os.path.join(root, "fold_lists", f"{db}_list_test*_fps.txt"))):
        m = re.fullmatch(rf"{re.escape(db)}_list_test(?:_(\d+))?_fps\.txt", os.path.basename(path))
        if not m:
            continue
        fold = folds.setdefault(m.group(1) or "1", set())
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    fps[parts[0]] = float(parts[2])
                    fold.add(parts[0])
    return fps, folds


def stavis_truth(
    gt: str, videos: set[str] | None = None, default_fps: float = 30.0
) -> Iterator[VideoTruth]:
    root, _, only_db = gt.partition("::")
    dbs = [only_db] if only_db else sorted(os.listdir(os.path.join(root, "annotations")))
    for db in dbs:
        fps, folds = stavis_folds(root, db)
        for vdir in sorted(glob.glob(os.path.join(root, "annotations", db, "*"))):
            vid = os.path.basename(vdir)
            if videos is not None and vid not in videos and f"{db}/{vid}" not in videos:
                continue
            in_folds = tuple(k for k, members in sorted(folds.items()) if vid in members)
            if folds and not in_folds:
                log.info("evaluate: %s/%s is in no test fold list: not scored", db, vid)
                continue
            map_files = sorted(
                glob.glob(os.path.join(vdir, "maps", "eyeMap_*.jpg"))
                + glob.glob(os.path.join(vdir, "maps", "eyeMap_*.png"))
            )
            maps, fixes, times = [], [], []
            rate = fps.get(vid, default_fps)
            for mf in map_files:
                k = int(re.findall(r"(\d+)", os.path.basename(mf))[-1])
                fix_path = os.path.join(vdir, f"fixMap_{k:05d}.mat")
                cont = np.asarray(Image.open(mf).convert("L"), dtype=np.float32) / 255.0
                fix = (
                    loadmat(fix_path)["eyeMap"].astype(bool)
                    if os.path.exists(fix_path)
                    else np.zeros_like(cont, dtype=bool)
                )
                maps.append(cont)
                fixes.append(fix)
                times.append((k - 1) / rate)
            frames = [
                os.path.join(root, "video_frames", db, vid, f"img_{i + 1:05d}.jpg")
                for i in range(len(map_files))
            ]
            if maps:
                yield VideoTruth(
                    vid,
                    np.asarray(times),
                    np.stack(maps),
                    np.stack(fixes),
                    frames,
                    database=db,
                    folds=in_folds,
                )


def load_truth(gt: str, videos: set[str] | None = None, fps: float = 30.0) -> Iterator[VideoTruth]:
    if is_synthetic(gt):
        yield from synthetic_truth(gt, videos)
    elif os.path.isdir(os.path.join(gt.partition("::")[0], "annotations")):
        yield from stavis_truth(gt, videos, fps)
    else:
        raise ValueError(
            f"ground truth {gt!r}: not a synthetic corpus (synthetic.json) and no annotations/<DB>/<video>/maps folder "
            "(the STAViS layout); see jobs/evaluate.py --help for the accepted layouts"
        )


# ----------------------------------------------------------------- predictions


def prediction_columns(pred: str) -> list[str]:
    if _png_layout(pred):
        return ["map"]

    files = _parquet_files(pred)
    if not files:
        raise ValueError(
            f"predictions {pred!r}: no Parquet shards and no <video>/maps/*.png folders found"
        )

    fs, path = storage.filesystem(files[0])
    with fs.open(path, "rb") as f:
        names = pq.ParquetFile(f).schema_arrow.names
    return [n for n in names if n == "map" or n.startswith("map_")]


def _png_layout(pred: str) -> bool:
    return not storage.is_remote(pred) and bool(glob.glob(os.path.join(pred, "*", "maps", "*.png")))


def _parquet_files(pred: str) -> list[str]:
    if storage.exists(storage.join(pred, "_manifest.json")):
        manifest = storage.read_json(storage.join(pred, "_manifest.json"))
        return [storage.join(pred, s["file"]) for s in manifest["shards"]]
    for folder in (storage.join(pred, "shards"), pred):
        files = [f for f in storage.listdir(folder) if f.endswith(".parquet")]
        if files:
            return files
    return []


def load_predictions(
    pred: str, columns: list[str]
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """column -> video -> (times (N,), maps (N, H, W) float [0, 1])."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {c: {} for c in columns}
    if _png_layout(pred):
        for vdir in sorted(glob.glob(os.path.join(pred, "*"))):
            files = sorted(glob.glob(os.path.join(vdir, "maps", "*.png")))
            if not files:
                continue
            idx = np.array([int(re.findall(r"(\d+)", os.path.basename(f))[-1]) - 1 for f in files])
            maps = np.stack(
                [np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0 for f in files]
            )
            out["map"][os.path.basename(vdir)] = (
                idx.astype(np.float64),
                maps,
            )  # frame numbers, matched by index
        return out

    parts: dict[str, dict[str, list]] = {c: {} for c in columns}
    for f in _parquet_files(pred):
        sized = "source_height" in parquet_columns(f)
        t = read_parquet(
            f,
            ["video_id", "time_s", *columns, *(("source_height", "source_width") if sized else ())],
        )
        vids = np.asarray(t["video_id"].to_pylist())
        times = t["time_s"].to_numpy()
        heights = t["source_height"].to_numpy() if sized else np.zeros(len(vids), int)
        widths = t["source_width"].to_numpy() if sized else np.zeros(len(vids), int)
        for c in columns:
            maps = maps_from_column(t[c])  # working size, or each video's own (--map-size)
            for v in np.unique(vids):
                sel = np.flatnonzero(vids == v)
                # the video's rectangle of the letterboxed map (factory.io.geometry)
                size = (int(heights[sel[0]]), int(widths[sel[0]]))
                video_maps = np.stack([to_source(maps[k], size) for k in sel])
                video_maps = video_maps.astype(np.float32) / 255.0
                parts[c].setdefault(v, []).append((times[sel], video_maps))
    for c in columns:
        for v, chunks in parts[c].items():
            times = np.concatenate([a for a, _ in chunks])
            maps = np.concatenate([b for _, b in chunks])
            order = np.argsort(times)
            out[c][v] = (times[order], maps[order])
    return out


# ----------------------------------------------------------------- scoring


def score_video(
    truth: VideoTruth,
    preds: dict[str, tuple[np.ndarray, np.ndarray]],
    by_index: bool,
    blur: bool,
    seed: int = 0,
) -> dict[str, list[dict[str, float | None]]]:
    """Per-frame scores of every method for one video (plus the centre prior)."""
    out: dict[str, list[dict[str, float | None]]] = {}
    n = len(truth.times)

    def others(j: int) -> np.ndarray | None:
        """s-AUC negatives: fixations of every other frame of the video."""
        return truth.fixations[np.arange(n) != j].any(axis=0) if n > 1 else None

    scored: set[int] = set()  # ground-truth frames some method was scored on
    for method, (ptimes, pmaps) in preds.items():
        rows = []
        for k in range(len(ptimes)):
            j = int(ptimes[k]) if by_index else int(np.argmin(np.abs(truth.times - ptimes[k])))
            if 0 <= j < n:
                scored.add(j)
                pred = M.stavis_preprocess(pmaps[k], truth.maps[j].shape) if blur else pmaps[k]
                rows.append(
                    M.score_frame(pred, truth.maps[j], truth.fixations[j], others(j), seed=seed + j)
                )
        out[method] = rows
    # the centre prior on the frames the methods were scored on (a 12 fps ground truth
    # labelled at 8 fps: 8 of every 12 frames), so the comparison is like for like
    prior = M.center_prior(truth.maps.shape[1:])
    out[CENTER_PRIOR] = [
        M.score_frame(prior, truth.maps[j], truth.fixations[j], others(j), seed=seed + j)
        for j in (sorted(scored) if scored else range(n))
    ]
    return out


def per_database(truths: list[VideoTruth], methods: dict[str, dict]) -> dict[str, dict]:
    """Each STAViS database's scores as the STAViS evaluation reports them: per fold the
    mean over its test videos, then the mean over folds (a database without fold lists
    is one fold of every video). ``methods``: method -> :func:`metrics.aggregate`."""
    out: dict[str, dict] = {}
    for db in sorted({t.database for t in truths if t.database}):
        folds: dict[str, list[str]] = {}
        for t in truths:
            if t.database == db:
                for k in t.folds or ("1",):
                    folds.setdefault(k, []).append(t.video)
        scores = {}
        for method, agg in methods.items():
            per_fold = []
            for videos in folds.values():
                rows = [agg["videos"][v] for v in videos if v in agg["videos"]]
                names = {n for r in rows for n in r}
                per_fold.append({n: float(np.mean([r[n] for r in rows if n in r])) for n in names})
            names = {n for f in per_fold for n in f}
            scores[method] = {
                n: float(np.mean([f[n] for f in per_fold if n in f])) for n in sorted(names)
            }
        out[db] = {
            "folds": sorted(folds),
            "videos": len({v for vs in folds.values() for v in vs}),
            "methods": scores,
            "paper_stanet_plus": PAPER_STANET_PLUS.get(db),
        }
    return out


@dataclass
class EvaluationReport:
    methods: dict[str, dict]  # method -> metrics.aggregate output
    videos: int
    unmatched_videos: list[str]
    databases: dict[str, dict] = field(default_factory=dict)  # see per_database

    def table(self) -> str:
        """A Markdown table in the shape of the paper's Table 7 rows; with STAViS
        ground truth, one more per database (mean over its folds) with the paper's
        STANet+ beside it."""
        head = "| " + " | ".join(TABLE_NAMES[m] for m in TABLE_METRICS)
        lines = ["| method " + head + " | frames |", "|---|" + "---|" * (len(TABLE_METRICS) + 1)]
        for method, agg in self.methods.items():
            vals = [agg["dataset"].get(m) for m in TABLE_METRICS]
            lines.append(f"| {method} | {_cells(vals)} | {sum(agg['frames'].values())} |")
        for db, d in self.databases.items():
            lines += [
                "",
                f"{db}: {d['videos']} videos, mean over {len(d['folds'])} fold(s)",
                "",
                "| method " + head + " |",
                "|---|" + "---|" * len(TABLE_METRICS),
            ]
            for method, sc in d["methods"].items():
                lines.append(f"| {method} | {_cells([sc.get(m) for m in TABLE_METRICS])} |")
            if d["paper_stanet_plus"]:
                paper = [d["paper_stanet_plus"].get(m) for m in TABLE_METRICS]
                lines.append(f"| STANet+ (paper, Table 7) | {_cells(paper)} |")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {
            "videos": self.videos,
            "unmatched_videos": self.unmatched_videos,
            "averaging": "per frame, then per video, then over videos (STAViS / MIT benchmark)",
            "methods": self.methods,
            "databases": self.databases,
        }


def _cells(values: list[float | None]) -> str:
    return " | ".join("-" if v is None else f"{v:.3f}" for v in values)


def evaluate(
    pred: str,
    gt: str,
    columns: list[str] | None = None,
    blur: bool = True,
    fps: float = 30.0,
    mapper: Mapper | None = None,
    parallel_above: int = 32,
) -> EvaluationReport:
    """Score every column of ``pred`` against ``gt``. Videos are scored one after the
    other, or, with a ``mapper`` (such as :func:`factory.pipelines.cluster.ray_map`, which
    runs them as Ray tasks) and more than ``parallel_above`` videos, through the mapper:
    this layer knows nothing of Ray, the job that calls it decides."""
    columns = columns or prediction_columns(pred)
    preds = load_predictions(pred, columns)
    names = dict(COLUMN_NAMES)
    if _job_of(pred) == "predict":
        names.update(STUDENT_COLUMN_NAMES)
    pred_videos = set().union(*(set(v) for v in preds.values()))
    by_index = _png_layout(pred)
    truths = list(load_truth(gt, pred_videos, fps))
    unmatched = sorted(pred_videos - {t.video for t in truths})
    names = {c: names.get(c, c) for c in columns}
    jobs = [
        (t, {names[c]: preds[c][t.video] for c in columns if t.video in preds[c]}) for t in truths
    ]
    if mapper is not None and len(jobs) > parallel_above:
        results = mapper(score_video, [(t, p, by_index, blur) for t, p in jobs])
    else:
        results = []
        for i, (t, p) in enumerate(jobs):
            results.append(score_video(t, p, by_index, blur))
            if (i + 1) % 10 == 0:
                log.info("evaluate: %d/%d videos", i + 1, len(jobs))
    per_method: dict[str, dict[str, list]] = {}
    for (t, _), res in zip(jobs, results, strict=True):
        for method, rows in res.items():
            per_method.setdefault(method, {})[t.video] = rows
    order = [names[c] for c in columns if names[c] in per_method] + [CENTER_PRIOR]
    methods = {m: M.aggregate(per_method[m]) for m in order if m in per_method}
    return EvaluationReport(methods, len(truths), unmatched, per_database(truths, methods))


def write_report(report: EvaluationReport, out: str) -> None:
    storage.makedirs(out)
    storage.write_json(storage.join(out, "report.json"), report.to_json())
    storage.write_bytes_atomic(storage.join(out, "report.md"), (report.table() + "\n").encode())


def figure(
    pred: str, gt: str, out_png: str, clips: int = 3, frames: int = 4, corpus: str | None = None
) -> None:
    """Frames, ground truth and prediction for a few clips: per clip three labelled rows
    (the frame; the ground-truth fixation density over it; the method's map over it),
    one column per time, one colour scale."""

    column = "map"
    preds = load_predictions(pred, [column])[column]
    truths = [t for t in load_truth(gt, set(preds)) if t.video in preds][:clips]
    names = STUDENT_COLUMN_NAMES if _job_of(pred) == "predict" else COLUMN_NAMES
    method = names.get(column, column)
    png = _png_layout(pred)
    rows, labels = [], []
    for t in truths:
        images = _frames_for(t, gt, corpus)
        ptimes, pmaps = preds[t.video]
        frame_row, truth_row, pred_row = [], [], []
        for k in np.linspace(0, len(ptimes) - 1, min(frames, len(ptimes))).round().astype(int):
            # PNG predictions carry frame numbers (matched by index, as when scoring)
            j = (
                min(int(ptimes[k]), len(t.times) - 1)
                if png
                else int(np.argmin(np.abs(t.times - ptimes[k])))
            )
            h, w = t.maps.shape[1:]
            base = (
                images[j]
                if images is not None and j < len(images)
                else np.zeros((h, w, 3), np.uint8)
            )
            base = np.asarray(Image.fromarray(base).resize((w, h)))
            pm = np.clip(M.resize_to(pmaps[k], (h, w)), 0, 1)
            # short panel titles (the row labels name the clip and the method)
            when = f"t = {t.times[j]:.2f} s"
            frame_row.append((base, f"{t.video}  {when}"))
            truth_row.append((overlay(base, t.maps[j]), f"ground truth  {when}"))
            pred_row.append((overlay(base, pm), f"prediction  {when}"))
        rows += [frame_row, truth_row, pred_row]
        labels += [f"{t.video}: frame", "ground truth (fixations)", method]
    if rows:
        save_figure(
            panel_figure(
                rows,
                labels,
                f"{method} against the ground-truth fixations ({pred})",
                "saliency, 0 = none, 1 = the frame's maximum",
            ),
            out_png,
        )


def _frames_for(t: VideoTruth, gt: str, corpus: str | None) -> list[np.ndarray] | None:
    if t.frames and all(os.path.exists(f) for f in t.frames[:1]):
        return [np.asarray(Image.open(f).convert("RGB")) for f in t.frames]
    if is_synthetic(gt):
        path = os.path.join(gt, "videos", f"{t.video}.mp4")
        with av.open(path) as c:
            return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return None


def dump(report: EvaluationReport) -> str:
    return json.dumps(report.to_json(), indent=1)
