"""Fit every classification net the labeler needs, on a Ray cluster, into a model bundle.

    python jobs/train.py --corpus SRC [--split train] --out BUNDLE [--preset tiny|paper]

SRC is an AVE folder, a manifest (.csv/.jsonl/.parquet) or tar shards, local or s3://.
The coarse nets S, ST, SA, the 8 + nets (one per multigranularity pair) and the audio
switch train concurrently (one TorchTrainer for the phase, or one each: --trainers), then the fine-stage S, ST, SA on the
coarse nets' crops. Encoder weights come from files you name (--weights image=PATH,
--weights plus=PATH, --weights audio=PATH: torchvision-format state dicts of
ResNeXt-101 32x8d, VGG16 and an audio ResNet-18, local or s3://); without them the
encoders are fitted to the corpus's tags first. --preset-file overrides any preset
field (JSON or TOML, nested as bundle.json's "preset"). Rerunning
the same command resumes an interrupted run, and returns at once for a finished one.
"""

import json

import _bootstrap

_bootstrap.setup_logging()

from factory.config import ExecutionConfig  # noqa: E402
from factory.jobs.train import TrainOptions, run_train, summary_table  # noqa: E402


def parse(argv: list[str] | None = None) -> tuple[bool, TrainOptions]:
    p = _bootstrap.parser(__doc__)
    p.add_argument(
        "--corpus",
        required=True,
        help="tagged corpus: AVE folder, manifest file or tar shards (local or s3://)",
    )
    p.add_argument("--out", required=True, help="model bundle directory or s3:// prefix")
    p.add_argument("--split", default=None, help="train on this split only (e.g. train)")
    p.add_argument(
        "--preset",
        default="tiny",
        choices=["tiny", "paper"],
        help="tiny: small encoders for CPU; paper: the paper code's encoders (needs weight files)",
    )
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs per net (default: the preset's)"
    )
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=None,
        help="epochs of encoder fitting on the corpus (0 = none; default: the preset's)",
    )
    p.add_argument(
        "--fine-tune",
        action="store_true",
        help="fine-tune the shared encoders on the corpus before fitting the nets",
    )
    p.add_argument(
        "--plus-weights",
        default=None,
        choices=["pair", "type"],
        help="pair: 8 + nets, one per (type, term) pair, as the paper trains them; type: 3 "
        "nets (S+, ST+, SA+) shared by their terms (not the paper's; for comparison)",
    )
    p.add_argument(
        "--plus-init",
        default=None,
        choices=["identity", "normal"],
        help="the + nets' class-map layers (C-GCN affinity convs, classifier): identity "
        "(default) or normal(0, 0.01) as the authors' code",
    )
    p.add_argument("--workers-per-net", type=int, default=1, help="data-parallel workers per net")
    p.add_argument(
        "--gpus-per-net", type=float, default=0.0, help="GPUs per net (split over its workers)"
    )
    p.add_argument(
        "--cpus-per-worker",
        type=float,
        default=None,
        help="CPUs per training worker (default: what lets every net of a phase run at once)",
    )
    p.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        help="nets trained at the same time (default: what the cluster fits)",
    )
    _bootstrap.add_trainer_flags(p)
    p.add_argument(
        "--storage-path", default=None, help="checkpoints and caches (default: <out>/_run)"
    )
    p.add_argument(
        "--audio-tagger",
        default=None,
        help="TorchScript audio classifier (log spectrogram -> logits) to label the audio switch instead of the built-in tagger",
    )
    p.add_argument(
        "--audio-tagger-classes",
        default=None,
        help="JSON mapping the tagger's class indices to corpus tags",
    )
    p.add_argument("--tag-field", default="tag", help="tag field of tar shards' JSON")
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)",
    )
    p.add_argument(
        "--local",
        action="store_true",
        help="run every phase in this process with plain PyTorch, no Ray (e.g. on a GPU box without Ray)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training knob or a dotted preset field, e.g. --set batch_size=16 "
        "--set frames.fine_size=320 (unknown keys are an error listing the valid ones)",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="ENCODER=PATH",
        help="an encoder's weights file (image, plus or audio; local or s3://): "
        "torchvision-format state dicts, recorded in the bundle",
    )
    p.add_argument(
        "--preset-file",
        default=None,
        metavar="FILE",
        help="JSON or TOML overriding any preset field, nested as bundle.json's preset",
    )
    a = p.parse_args(argv)
    overrides = {}
    for item in a.set:
        key, _, value = item.partition("=")
        overrides[key] = (
            json.loads(value)
            if value[:1] in "[{0123456789-" or value in ("true", "false")
            else value
        )
    weights = {}
    for item in a.weights:
        name, sep, path = item.partition("=")
        if not sep or not path:
            p.error(f"--weights {item!r}: expected ENCODER=PATH, e.g. image=resnext101.pth")
        weights[name] = path
    return a.local, _bootstrap.options_from(
        TrainOptions,
        a,
        execution=ExecutionConfig(
            workers_per_net=a.workers_per_net,
            gpus_per_net=a.gpus_per_net,
            cpus_per_worker=a.cpus_per_worker,
            max_concurrent=a.max_concurrent,
            trainer_data=a.trainer_data,
            trainers=a.trainers,
        ),
        overrides=overrides,
        weights=weights,
    )


def main(argv: list[str] | None = None) -> None:
    local, opts = parse(argv)
    result = run_train(opts, local=local)
    print(
        f"\nbundle: {result['bundle']}"
        + (" (already trained; nothing to do)" if result["skipped"] else "")
    )
    print(summary_table(result["metrics"]))


if __name__ == "__main__":
    _bootstrap.run(main)
