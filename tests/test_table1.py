"""The Table 1 job: label with every variant, a student per variant, scored on held-out
clips; through the real command line on the synthetic world (``--quick``), and on a
validation set in the STAViS layout (a folder of untagged videos plus fixation maps)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from factory.io.synthetic import load_ground_truth
from factory.jobs.ablate import FUSED, PSEUDO, VARIANTS, AblateOptions, run_ablate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow(seconds=230)
def test_ablate_cli_quick_every_variant(tiny_bundle, heldout_corpus, training_labels, tmp_path):
    held_root, _ = heldout_corpus
    out = tmp_path / "ablate"
    # the training corpus already labelled with --ablation by the label job (the same
    # corpus, bundle and options: conftest.training_labels); the job's label step resumes
    # it and finds every clip committed (its own labelling: the label tests)
    shutil.copytree(training_labels, out / "pseudo")
    cmd = [
        sys.executable,
        os.path.join(REPO, "jobs", "ablate.py"),
        "--corpus",
        os.path.join(tiny_bundle["corpus"], "manifest.csv"),
        "--bundle",
        tiny_bundle["bundle"],
        "--val",
        os.path.join(held_root, "manifest.csv"),
        "--val-gt",
        held_root,
        "--out",
        str(out),
        "--quick",
        "--local",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SCAM+ -> STA+ fused (Eq. 21; STANet+)" in proc.stdout
    table = json.loads((out / "table1.json").read_text())
    assert set(table["variants"]) == {*VARIANTS, FUSED}
    for v, row in table["variants"].items():
        assert len(row["students"]) == 1, v  # --quick: one seed
        cc = row["mean_sd"]["cc"][0]
        assert np.isfinite(cc) and -1 <= cc <= 1, (v, cc)
        if v != FUSED:  # the held-out clips are tagged: every raw map is scored too
            assert row["raw"] and 0 < row["raw"]["auc_judd"] <= 1, v
    assert table["variants"]["map_scam_fine"]["paper_line"] == "11"
    assert table["info"]["student_epochs"] == 1
    assert (out / "table1.md").read_text().count("\n") >= len(VARIANTS) + 4


def write_stavis(held_root, meta, root, db="AVAD"):
    """The held-out synthetic clips' ground truth in the STAViS layout: maps/eyeMap_*.png,
    fixMap_*.mat, fold lists with each video's frame rate."""
    from scipy.io import savemat

    os.makedirs(os.path.join(root, "fold_lists"), exist_ok=True)
    lines = []
    for c in meta["clips"]:
        g = load_ground_truth(held_root, c["video_id"])
        ann = os.path.join(root, "annotations", db, c["video_id"])
        os.makedirs(os.path.join(ann, "maps"))
        for k in range(len(g["times"])):
            Image.fromarray((g["maps"][k] * 255).astype(np.uint8)).save(
                os.path.join(ann, "maps", f"eyeMap_{k + 1:05d}.png")
            )
            savemat(os.path.join(ann, f"fixMap_{k + 1:05d}.mat"), {"eyeMap": g["fixations"][k]})
        fps = 1.0 / float(g["times"][1] - g["times"][0])
        lines.append(f"{c['video_id']} {len(g['times'])} {fps:g}")
    with open(os.path.join(root, "fold_lists", f"{db}_list_test_1_fps.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return f"{root}::{db}"


@pytest.mark.slow(seconds=100)
def test_ablate_on_a_stavis_layout_validation_set(
    tiny_bundle, heldout_corpus, training_labels, tmp_path, ray_session
):
    held_root, meta = heldout_corpus
    gt = write_stavis(held_root, meta, str(tmp_path / "stavis"))
    # the training corpus already labelled with --ablation (conftest.training_labels):
    # the job's label step resumes it and finds every clip committed
    shutil.copytree(training_labels, tmp_path / "ablate" / "pseudo")
    table = run_ablate(
        AblateOptions(
            out=str(tmp_path / "ablate"),
            corpus=os.path.join(tiny_bundle["corpus"], "manifest.csv"),
            bundle=tiny_bundle["bundle"],
            val=os.path.join(held_root, "videos"),  # untagged videos: students only
            val_gt=gt,
            seeds=2,
            # 1 epoch, SCAM+ only: the held-out CC is ~0.69 against the centre prior's
            # 0.10 after one epoch (the --quick test's table, 2026-12-07); every variant
            # has its student in the --quick test above
            epochs=1,
            variants=(PSEUDO,),
            # the STA students only (--no-fused): the fused row's students are the
            # --quick test's
            fused=False,
            local=True,
        )
    )
    assert set(table.students) == {PSEUDO}  # no STA+ students, no fused row
    assert set(table.info["history"]) == {f"STA@{PSEUDO}@seed{s}" for s in (0, 1)}
    assert all(len(runs) == 2 for runs in table.students.values())
    assert table.raw == {}  # no tags: no raw maps, and the table says so with "-"
    assert table.info["heldout"]["clips"] == len(meta["clips"])
    # the students learnt something: far above the centre prior on the real protocol
    assert table.summary(PSEUDO)["cc"][0] > table.centre_prior["cc"], table.to_json()
    # two seeds differ in their initialisation, so the two students differ
    a, b = table.students[PSEUDO]
    assert a["cc"] != b["cc"]
