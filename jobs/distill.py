"""Distil the tag-free students STA, STA+short and STA+long from a pseudo-fixation
dataset written by jobs/label.py.

    python jobs/distill.py --pseudo DST --corpus SRC --out STUDENTS

The dataset's clips are decoded from SRC (the corpus it was labelled from) and encoded
once with the teacher bundle's frozen encoders; the three students train concurrently
(fitted concurrently on Ray Train, Eq. 17 and Eq. 20 losses), a held-out split scored every epoch
against the pseudo-fixations. STUDENTS (a folder or s3:// prefix) is what
jobs/predict.py reads. Rerunning resumes from the last checkpoints.
"""

import json

import _bootstrap

_bootstrap.setup_logging()

from factory.config import ExecutionConfig  # noqa: E402
from factory.jobs.distill import DistillOptions, run_distill  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = _bootstrap.parser(__doc__)
    p.add_argument(
        "--pseudo",
        required=True,
        help="pseudo-fixation dataset from jobs/label.py (local or s3://)",
    )
    p.add_argument(
        "--corpus",
        required=True,
        help="the corpus the dataset was labelled from (videos are decoded from it)",
    )
    p.add_argument("--out", required=True, help="student bundle folder or s3:// prefix")
    p.add_argument(
        "--bundle",
        default=None,
        help="teacher bundle (default: the one recorded in the dataset's run.json)",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs (default: the teacher preset's)"
    )
    p.add_argument(
        "--fusion",
        default="eq21",
        choices=["eq21", "eq23", "max"],
        help="default fusion of the students' maps at prediction",
    )
    p.add_argument(
        "--target",
        default="map",
        help="the dataset's map column to learn from: map (SCAM+, default) or an --ablation "
        "variant such as map_scam_fine",
    )
    p.add_argument(
        "--local", action="store_true", help="in this process with plain PyTorch, no Ray"
    )
    p.add_argument("--workers-per-student", type=int, default=1)
    p.add_argument("--gpus-per-student", type=float, default=0.0)
    _bootstrap.add_trainer_flags(p)
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)",
    )
    a = p.parse_args(argv)
    meta = run_distill(
        _bootstrap.options_from(
            DistillOptions,
            a,
            execution=ExecutionConfig(
                workers_per_net=a.workers_per_student,
                gpus_per_net=a.gpus_per_student,
                trainer_data=a.trainer_data,
                trainers=a.trainers,
            ),
        )
    )
    print(f"\nstudents: {a.out}  ({meta['clips']['clips']} clips, {meta['seconds']} s)")
    for name, hist in meta["history"].items():
        last = hist[-1] if hist else {}
        cc = last.get("pseudo_cc")
        print(
            f"  {name:10s} epochs {len(hist)}  loss {last.get('loss', float('nan')):.4f}  held-out CC vs pseudo-fixations {cc if cc is None else round(cc, 3)}"
        )
    print(json.dumps({"students": a.out}))


if __name__ == "__main__":
    _bootstrap.run(main)
