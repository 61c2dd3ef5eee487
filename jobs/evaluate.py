"""Score predicted saliency maps against ground truth, per video and per dataset.

    python jobs/evaluate.py --pred DST --gt GT --out REPORT

DST: a dataset written by jobs/label.py or jobs/predict.py (every map* column is scored,
so an --ablation run gives the whole ablation table), or a folder of PNG maps
DST/<video>/maps/eyeMap_%05d.png. GT: a synthetic corpus folder, or the six test sets as
distributed with STAViS (annotations/<DB>/<video>/maps/eyeMap_%05d.jpg +
fixMap_%05d.mat; use ROOT::DB for one DB). Writes REPORT/report.json, report.md (the
paper's Table 7 columns) and figure.png; a centre-prior baseline is always scored.
Protocol: STAViS over the MIT metrics (min-max, Gaussian blur sigma 2, resize to the
ground truth; per frame, then per video, then over videos).
"""

import os

import _bootstrap

_bootstrap.setup_logging()

from factory.evaluation.evaluate import evaluate, figure, write_report  # noqa: E402
from factory.pipelines.cluster import ray_map  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = _bootstrap.parser(__doc__)
    p.add_argument(
        "--pred",
        required=True,
        help="predictions: a dataset root, a folder of Parquet shards, or <video>/maps/*.png folders",
    )
    p.add_argument(
        "--gt",
        required=True,
        help="ground truth: a synthetic corpus, or a STAViS-layout root (ROOT or ROOT::DB)",
    )
    p.add_argument("--out", required=True, help="report folder (local or s3://)")
    p.add_argument(
        "--columns",
        default=None,
        help="comma-separated map columns to score (default: every map* column)",
    )
    p.add_argument(
        "--no-blur", action="store_true", help="skip the STAViS Gaussian blur of predictions"
    )
    p.add_argument(
        "--gt-fps",
        type=float,
        default=30.0,
        help="ground-truth frame rate when no fold list gives it",
    )
    p.add_argument(
        "--ray",
        choices=["auto", "yes", "no"],
        default="auto",
        help="score videos as Ray tasks (auto: when there are many)",
    )
    a = p.parse_args(argv)
    columns = a.columns.split(",") if a.columns else None
    report = evaluate(
        a.pred,
        a.gt,
        columns,
        blur=not a.no_blur,
        fps=a.gt_fps,
        mapper=None if a.ray == "no" else ray_map,
        parallel_above=0 if a.ray == "yes" else 32,
    )
    write_report(report, a.out)
    if not a.out.startswith("s3://"):
        figure(a.pred, a.gt, os.path.join(a.out, "figure.png"))
    print(report.table())
    if report.unmatched_videos:
        print(
            f"\n{len(report.unmatched_videos)} predicted video(s) have no ground truth: {report.unmatched_videos[:5]}"
        )
    skipped = {
        m: agg["skipped_frames"] for m, agg in report.methods.items() if agg["skipped_frames"]
    }
    if skipped:
        print(f"frames without fixations, skipped for the location metrics: {skipped}")
    print(f"\nreport: {a.out}/report.json, report.md, figure.png ({report.videos} videos)")


if __name__ == "__main__":
    _bootstrap.run(main)
