"""Where SCAM+ gains or loses against SCAM fine: per-frame CC split by what Eq. 3 selected.

Each labelled frame (a label job's output with ``--ablation``) falls in one group by the
selected confidences it records (the ``confidences`` column): a fine source and a ``+``
pair selected, fine sources only, ``+`` pairs only, or none (the no-source rule's
frames). Per group: the frames and the mean per-frame CC of SCAM fine, AC fine, the fine
S net's CAM, SCAM' and SCAM+ against the ground truth (the evaluation's preprocessing).

    python bench/selection_split.py --labels DIR [DIR ...] --gt CORPUS [--json FILE]

For example the held-out labels of ``bench/teacher_fits.py``:
``--labels runs/teacher_fits/ablate-seed{0,1,2}/heldout-labels --gt
runs/teacher_fits/corpus-heldout``. It also prints an offline estimate of a variant
that is not the paper's (:func:`variant_where_only_plus`).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from factory.evaluation.evaluate import load_predictions, load_truth, score_video
from factory.method.labeler import SOURCES

COLUMNS = ("map_scam_fine", "map_ac_fine", "map_cam_s_fine", "map_scam_prime", "map")
FINE = tuple(s for s in SOURCES if "+" not in s)  # the fine S, ST, SA of Eq. 8


def group_of(conf: dict[str, float]) -> str:
    fine = any(conf[n] > 0 for n in FINE)
    plus = any(conf[n] > 0 for n in SOURCES if n not in FINE)
    if fine and plus:
        return "fine and +"
    return "fine only" if fine else "+ only" if plus else "none"


def frame_confidences(labels: str) -> dict[str, list[dict[str, float]]]:
    """Per video, each frame's selected confidences (Eq. 3), in time order."""
    conf: dict[str, list] = {}
    for f in glob.glob(os.path.join(labels, "shards", "**", "*.parquet"), recursive=True):
        t = pq.read_table(f, columns=["video_id", "time_s", "confidences"]).to_pydict()
        for v, tm, c in zip(t["video_id"], t["time_s"], t["confidences"], strict=True):
            conf.setdefault(v, []).append((tm, c))
    return {v: [c for _, c in sorted(rows, key=lambda x: x[0])] for v, rows in conf.items()}


def variant_where_only_plus(scam_plus: np.ndarray, ac_fine: np.ndarray) -> np.ndarray:
    """One frame of an offline variant that is not the paper's: SCAM+ and the fine maps'
    mean (AC fine) added, each scaled to a peak of 1, for a frame where only ``+`` pairs
    are selected (computed on the saved uint8 maps)."""
    both = scam_plus / max(scam_plus.max(), 1e-6) + ac_fine / max(ac_fine.max(), 1e-6)
    return both / max(both.max(), 1e-6)


def split(labels: str, gt: str) -> tuple[dict[str, dict], dict[str, float]]:
    """Per group of frames, the frames and each column's mean per-frame CC; and over all
    frames (per frame -> per video -> mean over videos, as the evaluation averages) SCAM
    fine, SCAM+ and the offline variant (:func:`variant_where_only_plus` on the ``+``-only
    frames, SCAM+ elsewhere). One pass: every map is loaded and scored once."""
    preds = load_predictions(labels, list(COLUMNS))
    conf = frame_confidences(labels)
    groups: dict[str, dict[str, list]] = {}
    per_video: dict[str, list[float]] = {"map_scam_fine": [], "map": [], "variant": []}
    for truth in load_truth(gt, set(preds["map"])):
        maps = {c: preds[c][truth.video] for c in COLUMNS}
        frames = [group_of(c) for c in conf[truth.video]]  # time order, as the maps
        times, scam_plus = maps["map"]
        variant = scam_plus.copy()
        for k, g in enumerate(frames):
            if g == "+ only":
                variant[k] = variant_where_only_plus(scam_plus[k], maps["map_ac_fine"][1][k])
        scores = score_video(truth, {**maps, "variant": (times, variant)}, False, True)
        for k, g in enumerate(frames):
            for col in COLUMNS:
                groups.setdefault(g, {}).setdefault(col, []).append(scores[col][k]["cc"])
        for m in per_video:
            per_video[m].append(float(np.mean([r["cc"] for r in scores[m]])))
    by_group = {
        g: {"frames": len(d["map"]), **{c: round(float(np.mean(v)), 3) for c, v in d.items()}}
        for g, d in sorted(groups.items())
    }
    return by_group, {m: round(float(np.mean(v)), 3) for m, v in per_video.items()}


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--labels", nargs="+", required=True, help="label job outputs (--ablation)")
    p.add_argument("--gt", required=True, help="their ground truth (a synthetic corpus)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    both = {labels: split(labels, a.gt) for labels in a.labels}
    results = {labels: b[0] for labels, b in both.items()}
    offline = {labels: b[1] for labels, b in both.items()}
    print("| labels | frames selected | frames | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---|" + "---|" * len(COLUMNS))
    for labels, groups in results.items():
        for g, r in groups.items():
            cells = " | ".join(f"{r[c]:.3f}" for c in COLUMNS)
            print(f"| {labels} | {g} | {r['frames']} | {cells} |")
    print(
        "\nOffline, not the paper's: SCAM+ with AC fine added on the frames where only + pairs are selected"
    )
    print("| labels | SCAM fine | SCAM+ | variant |\n|---|---|---|---|")
    for labels, r in offline.items():
        print(f"| {labels} | {r['map_scam_fine']:.3f} | {r['map']:.3f} | {r['variant']:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"groups": results, "offline_variant": offline}, f, indent=1)


if __name__ == "__main__":
    main()
