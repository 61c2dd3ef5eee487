"""Label tagged video with SCAM+ pseudo-fixation maps: the factory's main job.

    python jobs/label.py [--corpus SRC] [--bundle BUNDLE] [--out DST] [--split S] [--ablation] [--export-png DIR]
    ray job submit --working-dir . -- python jobs/label.py --corpus SRC --bundle BUNDLE --out DST

With no arguments it runs the embedded default: a synthetic tagged world is generated,
a tiny bundle is fitted (once, then cached), a held-out synthetic corpus is labelled and
the maps are scored against its ground truth next to the centre prior (all under
runs/demo/).

SRC is an AVE folder, a manifest (.csv/.jsonl/.parquet) or tar shards, local or s3://;
BUNDLE comes from jobs/train.py (with the settings of jobs/tune.py when it ran); DST is
a folder or s3:// prefix: Parquet shards, _manifest.json, rejects.parquet, run.json and
preview.png. Rerunning the same command after an interruption finishes the dataset
without losing or duplicating a clip.
"""

import argparse
import json
import os

import _bootstrap

_bootstrap.setup_logging()

from factory.io import storage  # noqa: E402
from factory.jobs.demo import run_demo  # noqa: E402
from factory.jobs.label import SHARD_MB, LabelOptions, run_label  # noqa: E402


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, LabelOptions | None]:
    p = _bootstrap.parser(__doc__)
    p.add_argument(
        "--corpus", help="tagged corpus to label (AVE folder, manifest, tar shards; local or s3://)"
    )
    p.add_argument("--bundle", help="model bundle from jobs/train.py (local or s3://)")
    p.add_argument("--out", help="output dataset root (local or s3://)")
    p.add_argument("--split", default=None, help="label only this split of the corpus")
    p.add_argument(
        "--ablation",
        action="store_true",
        help="also write every pseudo-ground-truth variant of the paper's Table 1 as map_* columns "
        "(coarse and fine single-source CAMs, AC, SCAM, each of the 8 + pairs, CAM', SCAM'; see README)",
    )
    p.add_argument(
        "--postprocess",
        default="none",
        choices=["none", "authors"],
        help="authors: the authors' code's post-processing of every map (mean over 5 frames, "
        "values below 3 x mean set to 0); off by default, as in the paper",
    )
    p.add_argument(
        "--confidence",
        default=None,
        choices=["sigmoid", "softmax"],
        help="how Eq. 2/3/8 read a net's class confidences: per-class sigmoid (the Eq. 7 "
        "loss's) or softmax over the classes (the authors' code's); default: the bundle's",
    )
    p.add_argument(
        "--no-source",
        default=None,
        choices=["flat", "average"],
        help="a frame where no source ranks the tag first: flat (Eq. 2/8 as written, an "
        "all-zero map) or average (the sources' mean); default: the bundle's",
    )
    p.add_argument(
        "--switch-gate",
        default=None,
        choices=["net", "tagger"],
        help="what decides the audio switch: net (the paper's switch net) or tagger (not "
        "the paper's: the bundle's audio tagger agreeing with the clip's tag); default: "
        "the bundle's",
    )
    p.add_argument(
        "--map-size",
        default="working",
        choices=["working", "source"],
        help="where the Parquet maps live: working (the working resolution, the video "
        "letterboxed into it with its aspect kept; see README) or source (each video's own "
        "frame size)",
    )
    p.add_argument(
        "--export-png",
        default=None,
        metavar="DIR",
        help="also write per-frame PNG maps as DIR/<video>/maps/eyeMap_%%05d.png",
    )
    _bootstrap.add_actor_flags(p, "labelling")
    p.add_argument(
        "--batch-size",
        type=_bootstrap.positive_int,
        default=4,
        help="clips per labelling call; their frames go through the encoders together",
    )
    p.add_argument(
        "--clips-per-shard",
        type=_bootstrap.positive_int,
        default=None,
        help="at most this many clips per output Parquet shard (default: as many 10 s clips as fit in --shard-mb at the preset's map size, at most 1024)",
    )
    p.add_argument(
        "--shard-mb",
        type=float,
        default=SHARD_MB,
        help="at most this many MB of maps per shard file (Arrow bytes; the Parquet file is "
        "smaller by its compression); default %(default)s",
    )
    p.add_argument(
        "--device", default="auto", help="torch device of the actors (auto: cuda if present)"
    )
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bf16", "fp16", "fp32"],
        help="compute dtype (auto: bf16 on GPU, fp32 on CPU)",
    )
    p.add_argument(
        "--reject-silent",
        action="store_true",
        help="reject clips without an audio stream instead of labelling them with S, ST, S+ and ST+",
    )
    p.add_argument("--tag-field", default="tag", help="tag field of tar shards' JSON")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)",
    )
    p.add_argument("--no-preview", action="store_true", help="skip preview.png")
    p.add_argument(
        "--train-on-ray",
        action="store_true",
        help="embedded default only: fit its tiny bundle with Ray Train instead of in this process",
    )
    a = p.parse_args(argv)
    if a.corpus is None and a.bundle is None and a.out is None:
        return a, None
    missing = [name for name in ("corpus", "bundle", "out") if getattr(a, name) is None]
    if missing:
        p.error(
            f"give --corpus, --bundle and --out together (missing: {', '.join('--' + m for m in missing)}), or none of them for the embedded default"
        )
    return a, _bootstrap.options_from(LabelOptions, a, preview=not a.no_preview)


def print_summary(summary) -> None:  # noqa: ANN001
    print(
        f"\ndataset:  {summary.out}  ({summary.labelled} clips, {summary.frames} frames labelled; {summary.rejected} rejected)"
    )
    print(
        f"accounting: inputs {summary.inputs} = labelled clips {summary.labelled} + rejects {summary.rejected}"
    )
    for reason, n in summary.reject_reasons.items():
        print(f"  reject x{n}: {reason}")
    if summary.new_clips:
        st = summary.stream
        print(
            f"throughput: {summary.frames_per_s} frames/s this run ({summary.new_clips} clips new), {summary.seconds} s total; "
            f"first clip labelled after {st['first_label_s']:.1f} s (start-up), then {st['steady_frames_per_s']:.1f} frames/s"
        )
    else:  # a rerun of a finished dataset
        print(
            f"nothing new: every input was already committed by an earlier run ({summary.seconds} s)"
        )
    preview = storage.exists(storage.join(summary.out, "preview.png"))  # not with --no-preview
    print(
        f"files:    {os.path.join(summary.out, 'run.json')}, rejects.parquet, _manifest.json"
        + (", preview.png" if preview else "")
    )


def main(argv: list[str] | None = None) -> None:
    args, opts = parse(argv)
    if opts is not None:
        print_summary(run_label(opts))
        return

    demo = run_demo(args.address, args.train_on_ray, args.export_png)
    paths, report = demo.paths, demo.report
    print_summary(demo.summary)
    print(
        "\nPseudo-fixations vs the synthetic ground truth (held-out clips, per frame -> per video -> mean):"
    )
    print(report.table())
    print(
        f"\npreview: {os.path.join(paths['out'], 'preview.png')}\nreport:  {os.path.join(paths['report'], 'report.md')} (+ report.json, figure.png)"
    )
    print(json.dumps({"dataset": paths["out"], "bundle": paths["bundle"]}))


if __name__ == "__main__":
    _bootstrap.run(main)
