"""Issue 14's teacher-fit study: the whole teacher refitted with several seeds on the
README demo's world, each scored as raw maps and through STA students.

For each seed: the demo's tiny bundle fitted in this process with ``TrainConfig.seed``
set (the train job's local executor, the demo's options otherwise), then the Table 1
job (:func:`factory.jobs.ablate.run_ablate`: the 80 training clips labelled with
``--ablation``, 3 STA seeds of 2 epochs per variant, no STA+), scored on the demo's 17
held-out clips; then every raw variant's CC on those clips, the audio switch's on-rate
per kind of clip and the share of frames where no source passes Eq. 3
(``bench/scam_plus.py``'s ``selection``). ``--rules`` labels the held-out clips again
under other labelling rules (``bench/scam_plus.py``'s ``<confidence>-<no_source>[-<gate>]``,
for example ``sigmoid-average-tagger``: the audio switch decided by the audio tagger) and
scores their raw maps the same way (no students). About 15 minutes a seed on 2 CPU
cores; everything lands under ``--root`` and a rerun resumes (a fitted bundle is not
refitted).

    python bench/teacher_fits.py [--seeds 0,1,2] [--rules R1,R2] [--root runs/teacher_fits] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scam_plus import score, selection

from factory.evaluation.evaluate import evaluate
from factory.jobs.ablate import AblateOptions, run_ablate
from factory.jobs.demo import prepare_corpora
from factory.jobs.train import TrainOptions, run_train

STUDENT_VARIANTS = ("map_cam_s", "map_ac", "map_scam_coarse", "map_scam_fine", "map")


def one_fit(paths: dict[str, str], root: str, seed: int, rules: list[str]) -> dict:
    bundle = os.path.join(root, f"bundle-seed{seed}")
    train = run_train(
        TrainOptions(
            corpus=paths["train_manifest"], out=bundle, preset="tiny", overrides={"seed": seed}
        ),
        local=True,
    )
    out = os.path.join(root, f"ablate-seed{seed}")
    table = run_ablate(
        AblateOptions(
            out=out,
            corpus=paths["train_manifest"],
            bundle=bundle,
            val=paths["heldout_manifest"],
            val_gt=paths["heldout_corpus"],
            seeds=3,
            epochs=2,
            variants=STUDENT_VARIANTS,
            local=True,
            fused=False,
        )
    )
    labels = os.path.join(out, "heldout-labels")
    raw = evaluate(labels, paths["heldout_corpus"])
    return {
        "accuracy": {n: m["accuracy"] for n, m in train["metrics"]["nets"].items()},
        "raw_cc": {m: round(v["dataset"]["cc"], 4) for m, v in raw.methods.items()},
        "students_cc": {v: table.summary(v)["cc"] for v in STUDENT_VARIANTS},
        **selection(labels, paths["heldout_corpus"]),
        "rules": {r: score(root, paths["heldout_corpus"], bundle, r, f"seed{seed}") for r in rules},
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", default="0,1,2", help="teacher fit seeds (TrainConfig.seed)")
    p.add_argument("--rules", default="", help="other labelling rules to score (comma-separated)")
    p.add_argument("--root", default=os.path.join("runs", "teacher_fits"))
    p.add_argument("--json", default=None, help="write the figures here")
    a = p.parse_args()
    paths = prepare_corpora(a.root)
    results = {}
    for seed in (int(s) for s in a.seeds.split(",")):
        results[f"seed{seed}"] = one_fit(paths, a.root, seed, [r for r in a.rules.split(",") if r])
        print(json.dumps({f"seed{seed}": results[f"seed{seed}"]}, indent=1), flush=True)
    names = list(next(iter(results.values()))["raw_cc"])
    print("| raw map | " + " | ".join(results) + " | mean |")
    print("|---|" + "---|" * (len(results) + 1))
    for n in names:
        cells = [r["raw_cc"][n] for r in results.values()]
        mean = sum(cells) / len(cells)
        print(f"| {n} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {mean:.3f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
