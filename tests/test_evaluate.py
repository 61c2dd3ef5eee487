"""The evaluate job on both ground-truth layouts and all prediction formats."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from factory.evaluation.evaluate import CENTER_PRIOR, evaluate, write_report
from factory.io.synthetic import load_ground_truth
from factory.method import metrics as M

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def png_predictions(folder, videos):
    """videos: {video: (T, H, W) float maps} -> <folder>/<video>/maps/eyeMap_%05d.png"""
    for vid, maps in videos.items():
        os.makedirs(os.path.join(folder, vid, "maps"), exist_ok=True)
        for k, m in enumerate(maps):
            Image.fromarray((np.clip(m, 0, 1) * 255).astype(np.uint8)).save(
                os.path.join(folder, vid, "maps", f"eyeMap_{k + 1:05d}.png")
            )


def test_synthetic_ground_truth_with_png_predictions(tiny_corpus, tmp_path):
    root, meta = tiny_corpus
    vids = [c["video_id"] for c in meta["clips"][:2]]
    truth = {v: load_ground_truth(root, v)["maps"] for v in vids}
    png_predictions(str(tmp_path / "perfect"), truth)
    report = evaluate(str(tmp_path / "perfect"), root)
    pred = report.methods["SCAM+ (pseudo-fixation)"]["dataset"]
    prior = report.methods[CENTER_PRIOR]["dataset"]
    assert pred["cc"] > 0.95 and pred["nss"] > prior["nss"] + 1.5 and pred["auc_judd"] > 0.95
    assert report.videos == 2 and "per video" in report.to_json()["averaging"]
    table = report.table()
    assert (
        "| method | AUC-J | SIM | s-AUC | CC | NSS | KLD | frames |" in table
        and CENTER_PRIOR in table
    )


def make_stavis_layout(root, db="AVAD", videos=("v1", "v2"), frames=3, size=(24, 32)):
    from scipy.io import savemat

    rng = np.random.default_rng(0)
    h, w = size
    os.makedirs(os.path.join(root, "fold_lists"), exist_ok=True)
    with open(os.path.join(root, "fold_lists", f"{db}_list_test_1_fps.txt"), "w") as f:
        for v in videos:
            f.write(f"{v} {frames} 25\n")
    truth = {}
    for v in videos:
        ann = os.path.join(root, "annotations", db, v)
        os.makedirs(os.path.join(ann, "maps"), exist_ok=True)
        os.makedirs(os.path.join(root, "video_frames", db, v), exist_ok=True)
        maps = []
        for k in range(1, frames + 1):
            cy, cx = rng.integers(5, h - 5), rng.integers(5, w - 5)
            yy, xx = np.mgrid[0:h, 0:w]
            m = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 18.0)
            Image.fromarray((m * 255).astype(np.uint8)).save(
                os.path.join(ann, "maps", f"eyeMap_{k:05d}.jpg"), quality=98
            )
            fix = np.zeros((h, w), np.uint8)
            fix[cy, cx] = fix[cy + 1, cx] = 1
            savemat(os.path.join(ann, f"fixMap_{k:05d}.mat"), {"eyeMap": fix})
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                os.path.join(root, "video_frames", db, v, f"img_{k:05d}.jpg")
            )
            maps.append(m)
        truth[v] = np.stack(maps)
    return truth


def test_stavis_layout(tmp_path):
    truth = make_stavis_layout(str(tmp_path / "gt"))
    png_predictions(str(tmp_path / "pred"), truth)
    report = evaluate(str(tmp_path / "pred"), str(tmp_path / "gt"), blur=False)
    pred = report.methods["SCAM+ (pseudo-fixation)"]
    assert pred["dataset"]["cc"] > 0.99 and set(pred["videos"]) == {"v1", "v2"}
    assert sum(pred["frames"].values()) == 6
    one_db = evaluate(str(tmp_path / "pred"), str(tmp_path / "gt") + "::AVAD", blur=False)
    assert one_db.videos == 2


def test_parquet_predictions_and_the_cli(tiny_corpus, tmp_path):
    """A dataset in this project's schema (maps = the ground truth) through the CLI."""
    import pyarrow as pa

    from factory.io import storage
    from factory.io.store import ShardStore
    from factory.method.dataset import labels_table
    from factory.method.labeler import ABLATION_MAPS, SOURCES, ClipLabels

    root, meta = tiny_corpus
    store = ShardStore(str(tmp_path / "ds"))
    tables = []
    for c in meta["clips"][:2]:
        g = load_ground_truth(root, c["video_id"])
        t = len(g["times"])
        lab = ClipLabels(
            c["video_id"],
            c["tag"].split("|"),
            g["times"],
            g["maps"],
            np.tile([0, 0, 1, 1], (t, 1)).astype(np.float32),
            np.zeros(t, bool),
            {s: np.zeros(t, np.float32) for s in SOURCES},
            np.ones(t, bool),
            True,
            {k: np.zeros_like(g["maps"]) for k in ABLATION_MAPS},
        )
        tables.append(labels_table(lab, "x", ablation=True))
    uri = store.write_shard(pa.concat_tables(tables), [c["video_id"] for c in meta["clips"][:2]])
    storage.write_json(
        str(tmp_path / "ds" / "_manifest.json"),
        {"shards": [{"file": "shards/" + os.path.basename(uri), "rows": 1, "clips": []}]},
    )
    out = subprocess.run(
        [
            sys.executable,
            "jobs/evaluate.py",
            "--pred",
            str(tmp_path / "ds"),
            "--gt",
            root,
            "--out",
            str(tmp_path / "rep"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert rep["methods"]["SCAM+ (pseudo-fixation)"]["dataset"]["cc"] > 0.95
    assert (
        rep["methods"]["CAM (S, single source)"]["dataset"]["cc"] == 0.0
    )  # all-zero maps: constant, not NaN
    assert (tmp_path / "rep" / "report.md").exists() and (tmp_path / "rep" / "figure.png").exists()
    assert "SCAM (fine)" in out.stdout


def test_frames_without_fixations_are_skipped_and_counted(tmp_path):
    truth = make_stavis_layout(str(tmp_path / "gt"), videos=("v1",), frames=2)
    from scipy.io import savemat

    savemat(
        str(tmp_path / "gt" / "annotations" / "AVAD" / "v1" / "fixMap_00002.mat"),
        {"eyeMap": np.zeros((24, 32), np.uint8)},
    )
    png_predictions(str(tmp_path / "pred"), truth)
    report = evaluate(str(tmp_path / "pred"), str(tmp_path / "gt"), blur=False)
    agg = report.methods["SCAM+ (pseudo-fixation)"]
    assert agg["skipped_frames"]["nss"] == 1 and agg["skipped_frames"]["auc_judd"] == 1
    write_report(report, str(tmp_path / "rep"))
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["videos"] == 1


def test_unknown_ground_truth_layout(tmp_path):
    with pytest.raises(ValueError, match="accepted layouts"):
        list(
            __import__("factory.evaluation.evaluate", fromlist=["load_truth"]).load_truth(
                str(tmp_path)
            )
        )


def test_center_prior_is_scored_like_a_method(tiny_corpus):
    root, meta = tiny_corpus
    g = load_ground_truth(root, meta["clips"][0]["video_id"])
    s = M.score_frame(M.center_prior(g["maps"].shape[1:]), g["maps"][0], g["fixations"][0])
    assert all(v is not None for k, v in s.items() if k != "auc_shuffled")


def test_figure_panels_are_labelled(tmp_path):
    """Every panel of the evaluation figure names its row (frame, ground truth, method),
    the video and the time; one labelled colour scale."""
    from factory.evaluation.evaluate import figure
    from factory.evaluation.preview import panel_figure

    frame = np.zeros((8, 8, 3), np.uint8)
    fig = panel_figure(
        [[(frame, "v1  t = 0.00 s")], [(frame, "ground truth, v1  t = 0.00 s")]],
        ["v1: frame", "ground truth (fixations)"],
        "title",
        "saliency",
    )
    assert [ax.get_title() for ax in fig.axes[:2]] == [
        "v1  t = 0.00 s",
        "ground truth, v1  t = 0.00 s",
    ]
    assert fig.axes[0].get_ylabel() == "v1: frame" and fig.axes[-1].get_ylabel() == "saliency"
    make_stavis_layout(str(tmp_path / "gt"), videos=("v1",), frames=3)
    pred = tmp_path / "pred" / "v1" / "maps"
    pred.mkdir(parents=True)
    from PIL import Image

    for k in range(3):
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(pred / f"eyeMap_{k + 1:05d}.png")
    figure(str(tmp_path / "pred"), str(tmp_path / "gt"), str(tmp_path / "figure.png"))
    assert Image.open(tmp_path / "figure.png").size[0] > 400  # readable, not a thumbnail strip


def _parquet_like_pngs(root, truth, times_of):
    """Per-frame PNG predictions equal to the ground truth at the given frame numbers."""
    for v, maps in truth.items():
        d = os.path.join(root, v, "maps")
        os.makedirs(d, exist_ok=True)
        for k in times_of(len(maps)):
            Image.fromarray((maps[k] * 255).astype(np.uint8)).save(
                os.path.join(d, f"eyeMap_{k + 1:05d}.png")
            )


def test_stavis_folds_diem_naming_and_the_centre_prior_on_the_same_frames(tmp_path):
    from factory.evaluation.evaluate import evaluate, stavis_folds

    gt = str(tmp_path / "gt")
    truth = make_stavis_layout(gt, db="DIEM", videos=("a", "b", "c", "d"), frames=6)
    os.remove(os.path.join(gt, "fold_lists", "DIEM_list_test_1_fps.txt"))
    # DIEM's list as distributed: no fold number; video d is in no list
    with open(os.path.join(gt, "fold_lists", "DIEM_list_test_fps.txt"), "w") as f:
        f.write("a 6 12\nb 6 12\nc 6 12\n")
    fps, folds = stavis_folds(gt, "DIEM")
    assert fps == {"a": 12.0, "b": 12.0, "c": 12.0} and folds == {"1": {"a", "b", "c"}}
    _parquet_like_pngs(str(tmp_path / "pred"), truth, lambda n: range(0, n, 2))  # every 2nd
    rep = evaluate(str(tmp_path / "pred"), gt)
    assert rep.videos == 3 and "d" not in rep.methods["SCAM+ (pseudo-fixation)"]["videos"]
    # the prior is scored on the 3 frames of each video the predictions cover, not all 6
    assert rep.methods["center prior"]["frames"] == {"a": 3, "b": 3, "c": 3}
    assert rep.databases["DIEM"]["folds"] == ["1"]
    assert rep.databases["DIEM"]["paper_stanet_plus"]["cc"] == 0.544
    assert "STANet+ (paper, Table 7)" in rep.table() and "DIEM: 3 videos" in rep.table()


def test_stavis_scores_are_the_mean_over_folds(tmp_path):
    from factory.evaluation.evaluate import evaluate

    gt = str(tmp_path / "gt")
    truth = make_stavis_layout(gt, db="AVAD", videos=("a", "b", "c"), frames=3)
    with open(os.path.join(gt, "fold_lists", "AVAD_list_test_1_fps.txt"), "w") as f:
        f.write("a 3 25\n")
    with open(os.path.join(gt, "fold_lists", "AVAD_list_test_2_fps.txt"), "w") as f:
        f.write("b 3 25\nc 3 25\n")
    pred = str(tmp_path / "pred")
    _parquet_like_pngs(pred, truth, lambda n: range(n))
    # video a's prediction is flat: its CC is 0, b's and c's are ~1
    for k in range(3):
        Image.fromarray(np.full((24, 32), 128, np.uint8)).save(
            os.path.join(pred, "a", "maps", f"eyeMap_{k + 1:05d}.png")
        )
    rep = evaluate(pred, gt)
    cc = rep.methods["SCAM+ (pseudo-fixation)"]["videos"]
    per_fold = (cc["a"]["cc"] + (cc["b"]["cc"] + cc["c"]["cc"]) / 2) / 2
    per_video = (cc["a"]["cc"] + cc["b"]["cc"] + cc["c"]["cc"]) / 3
    got = rep.databases["AVAD"]["methods"]["SCAM+ (pseudo-fixation)"]["cc"]
    assert abs(got - per_fold) < 1e-9 and abs(per_fold - per_video) > 0.05
    assert rep.databases["AVAD"]["folds"] == ["1", "2"]
