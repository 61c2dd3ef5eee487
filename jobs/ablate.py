"""The paper's Table 1: a student trained on each pseudo-ground-truth variant, scored on
held-out clips with fixations, beside each variant's raw map and the paper's AVAD line.

    python jobs/ablate.py                                   # the synthetic world (embedded default)
    python jobs/ablate.py --corpus SRC --bundle BUNDLE --val VAL --val-gt ROOT --out DIR [--seeds 3]

Steps: label SRC with --ablation (Ray Data), distil one STA per variant and seed and
STA+short / STA+long on SCAM+ (one feature cache; fitted on Ray Train,
or --local in this process), predict VAL tag-free with each student, score against
the fixations in ROOT (a synthetic corpus, or the STAViS layout ROOT[::DB] with AVAD's
annotations), and, where VAL is a corpus with tags, label and score its raw maps too.
Writes DIR/table1.md and DIR/table1.json and prints the table.

With no arguments it uses the demo's synthetic world and its cached tiny bundle
(runs/demo, fitted once as jobs/label.py does), students in this process, 3 seeds of
2 student epochs each (about 35 minutes on 2 CPU cores), output under runs/ablate.
--quick: 1 seed and 1 student epoch (a smoke run, about 9 minutes there).
Variants (--variants, comma-separated; default all): map_cam_s, map_cam_st, map_cam_sa,
map_ac, map_scam_coarse, map_cam_s_fine, map_cam_st_fine, map_cam_sa_fine, map_ac_fine,
map_scam_fine, map_s_plus_short, map_s_plus_long, map_s_plus_cross, map_st_plus_short,
map_st_plus_long, map_st_plus_cross, map_sa_plus_long, map_sa_plus_cross, map_cam_prime,
map_scam_prime, map (SCAM+).
"""

import os

import _bootstrap

_bootstrap.setup_logging()

from factory.jobs.ablate import (  # noqa: E402
    SYNTHETIC_STUDENT_EPOCHS,
    VARIANTS,
    AblateOptions,
    check_variants,
    run_ablate,
    synthetic_defaults,
)
from factory.pipelines.cluster import REPO_ROOT  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = _bootstrap.parser(__doc__)
    p.add_argument("--corpus", help="tagged corpus to label and distil from")
    p.add_argument("--bundle", help="teacher bundle from jobs/train.py")
    p.add_argument("--val", help="held-out clips: a corpus (tags optional) or a folder of videos")
    p.add_argument(
        "--val-gt",
        help="their fixations: a synthetic corpus, or the STAViS layout ROOT (or ROOT::AVAD)",
    )
    p.add_argument("--out", default=None, help="output folder (default runs/ablate)")
    p.add_argument(
        "--seeds", type=_bootstrap.positive_int, default=3, help="student seeds (default 3)"
    )
    p.add_argument("--epochs", type=_bootstrap.positive_int, default=None, help="students' epochs")
    p.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help="comma-separated map columns to distil from (default: all)",
    )
    p.add_argument("--postprocess", default="none", choices=["none", "authors"])
    p.add_argument("--gt-fps", type=float, default=30.0, help="frame rate of the STAViS maps")
    p.add_argument("--quick", action="store_true", help="1 seed, 1 student epoch")
    p.add_argument(
        "--no-fused",
        dest="fused",
        action="store_false",
        help="STA students only: no STA+ short / long on SCAM+ and no fused (STANet+) row "
        "(most of the students' time on a CPU)",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="students in this process")
    where.add_argument(
        "--on-ray", action="store_true", help="students on Ray (default with --corpus)"
    )
    p.add_argument("--address", default=None, help="Ray cluster address")
    a = p.parse_args(argv)
    given = [a.corpus, a.bundle, a.val, a.val_gt]
    if any(given) and not all(given):
        p.error("give --corpus, --bundle, --val and --val-gt together, or none (synthetic world)")
    try:
        variants = check_variants(tuple(v.strip() for v in a.variants.split(",") if v.strip()))
    except ValueError as err:
        p.error(str(err))
    out = a.out or os.path.join(REPO_ROOT, "runs", "ablate")
    epochs = a.epochs
    if all(given):
        paths = {"corpus": a.corpus, "bundle": a.bundle, "val": a.val, "val_gt": a.val_gt}
        local = a.local
    else:
        paths = synthetic_defaults()
        local = not a.on_ray
        epochs = epochs or SYNTHETIC_STUDENT_EPOCHS
    opts = _bootstrap.options_from(
        AblateOptions,
        a,
        out=out,
        corpus=paths["corpus"],
        bundle=paths["bundle"],
        val=paths["val"],
        val_gt=paths["val_gt"],
        seeds=1 if a.quick else a.seeds,
        epochs=1 if a.quick else epochs,
        variants=variants,
        local=local,
    )
    table = run_ablate(opts)
    print()
    print(table.markdown())
    print(f"\ntable: {os.path.join(out, 'table1.md')} (+ table1.json)")
    print(f"seconds: {table.info['seconds']}")


if __name__ == "__main__":
    _bootstrap.run(main)
