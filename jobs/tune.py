"""Search the C-GCN's m (reasoning steps), n (multigranularity nodes) and the refine
layer's Td / Tr with Ray Tune, against a validation set that has fixations.

    python jobs/tune.py --bundle BUNDLE --val GT [--num-samples N] [--grid]

Each trial refits S+, ST+, SA+ with its settings (reusing the bundle's S, ST, SA, fine
nets, switch and encoders), labels the validation clips with SCAM+ after every epoch
and reports CC (the objective), NSS, AUC-J and SIM; ASHA stops weak trials early. The
best settings and + nets are written into the bundle, where jobs/label.py and
jobs/distill.py pick them up; BUNDLE/tune_results/ holds the table and a plot.
GT: a synthetic corpus folder (videos + ground truth), or --val CORPUS --val-gt GT in
a layout jobs/evaluate.py reads. Without fixations the job refuses to run. Rerunning
the same command resumes an interrupted sweep without rerunning finished trials.
"""

import json

import _bootstrap

_bootstrap.setup_logging()

from factory.jobs.tune import NoFixationsError, TuneOptions, run_tune  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = _bootstrap.parser(__doc__)
    p.add_argument(
        "--bundle", required=True, help="model bundle from jobs/train.py (updated in place)"
    )
    p.add_argument(
        "--val",
        required=True,
        help="validation set: a synthetic corpus, or a corpus whose fixations --val-gt holds",
    )
    p.add_argument("--val-gt", default=None, help="ground truth for --val (STAViS layout)")
    p.add_argument(
        "--corpus",
        default=None,
        help="accepted for the common command line; the bundle's own feature cache is used",
    )
    p.add_argument("--num-samples", type=int, default=8, help="trials of the random search")
    p.add_argument(
        "--grid",
        action="store_true",
        help="the paper's Table 4 and Table 5 grids instead of a random search",
    )
    p.add_argument(
        "--search",
        default="random",
        choices=["random", "grid", "optuna"],
        help="search algorithm (optuna needs the [optuna] extra)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs per trial (ASHA's max; default: the bundle's)",
    )
    p.add_argument(
        "--metric", default="cc", choices=["cc", "nss", "auc_judd", "sim"], help="objective"
    )
    p.add_argument(
        "--storage", default=None, help="sweep storage, local or s3:// (default: BUNDLE/_tune)"
    )
    p.add_argument("--name", default="tune", help="sweep name (the same name resumes it)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--gpus-per-trial", type=float, default=0.0)
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="trials at once (default: what the cluster fits)",
    )
    p.add_argument(
        "--max-val-clips", type=int, default=16, help="validation clips labelled per epoch"
    )
    p.add_argument(
        "--device", default="auto", help="torch device of each trial (auto: cuda if present)"
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)",
    )
    a = p.parse_args(argv)
    opts = _bootstrap.options_from(TuneOptions, a)
    try:
        result = run_tune(opts)
    except NoFixationsError as err:
        raise SystemExit(f"tune: {err}") from None
    print(
        f"\nbest: m={result['best']['m']} n={result['best']['n']} Td={result['best']['td']:.2f} Tr={result['best']['tr']:.2f}  ({json.dumps({k: round(v, 3) for k, v in result['metrics'].items() if v is not None})})"
    )
    print(
        f"{len(result['trials'])} trials in {result['seconds']} s; written into {a.bundle} (bundle.json 'tuned', tune_results/)"
    )


if __name__ == "__main__":
    _bootstrap.run(main)
