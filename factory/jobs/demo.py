"""The embedded default of ``jobs/label.py``: the whole factory on a synthetic world.

With no arguments the label job: generates a synthetic tagged corpus to train on and a
held-out one to label (with one deliberately broken file, to show a reject being
accounted for), fits a tiny bundle if none is cached, labels the held-out corpus with
``--ablation``, and scores every intermediate map against the synthetic ground truth
next to the centre prior. Everything lands under ``runs/demo/`` and is reused by the
next run.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from dataclasses import dataclass

from factory import REPO_ROOT
from factory.evaluation.evaluate import EvaluationReport, evaluate, figure, write_report
from factory.io.synthetic import TABLE1_WORLD, generate
from factory.jobs.label import LabelOptions, LabelSummary, run_label
from factory.jobs.train import TrainOptions, run_train, summary_table
from factory.pipelines.cluster import init_ray, ray_map

log = logging.getLogger(__name__)

DEMO_ROOT = os.path.join(REPO_ROOT, "runs", "demo")
# The Table 1 world (factory.io.synthetic.TABLE1_WORLD): 8 tags sharing 4 hues, look-alikes,
# other tags' objects, occlusion, camera motion, foreign and missing sound tracks.
TRAIN_WORLD = TABLE1_WORLD.replace(seed=0)
HELDOUT_WORLD = TABLE1_WORLD.replace(
    clips_per_tag=2,
    seed=1,
    multi_tag_clips=1,
    no_audio_stream=1,
    split_fractions=(0.0, 0.0, 1.0),
)
BROKEN_CLIP = "demo_broken"


def demo_paths(root: str = DEMO_ROOT) -> dict[str, str]:
    return {
        "train_corpus": os.path.join(root, "corpus-train"),
        "heldout_corpus": os.path.join(root, "corpus-heldout"),
        "bundle": os.path.join(root, "bundle"),
        "out": os.path.join(root, "pseudo-fixations"),
        "report": os.path.join(root, "evaluation"),
    }


def prepare_corpora(root: str = DEMO_ROOT) -> dict[str, str]:
    """Generate the two synthetic corpora (cached), add a truncated copy of one held-out
    video to the held-out manifest as a bad input, and return the paths."""
    paths = demo_paths(root)
    generate(paths["train_corpus"], TRAIN_WORLD)
    meta = generate(paths["heldout_corpus"], HELDOUT_WORLD)
    manifest = os.path.join(paths["heldout_corpus"], "manifest.csv")
    broken = os.path.join(paths["heldout_corpus"], "videos", f"{BROKEN_CLIP}.mp4")
    if not os.path.exists(broken):
        src = os.path.join(paths["heldout_corpus"], meta["clips"][0]["video"])
        shutil.copyfile(src, broken)
        with open(broken, "r+b") as f:
            f.truncate(os.path.getsize(src) // 3)  # a download cut short: no moov atom
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    if not any(r["video_id"] == BROKEN_CLIP for r in rows):
        rows.append(
            {
                **rows[0],
                "video": f"videos/{BROKEN_CLIP}.mp4",
                "video_id": BROKEN_CLIP,
                "kind": "truncated",
            }
        )
        with open(manifest, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    paths["train_manifest"] = os.path.join(paths["train_corpus"], "manifest.csv")
    paths["heldout_manifest"] = manifest
    return paths


def ensure_bundle(paths: dict[str, str], on_ray: bool = False) -> None:
    """Fit the tiny bundle once (cached). By default in this process (the train job's
    local executor: the same phases and per-net code without Ray): on a 2-core laptop the
    start-up of Ray and its TorchTrainers costs more than the training itself. ``on_ray``
    runs the Ray Train version, as ``jobs/train.py`` does."""
    if os.path.exists(os.path.join(paths["bundle"], "bundle.json")):
        log.info("demo: using the cached tiny bundle at %s", paths["bundle"])
        return
    how = "on Ray Train" if on_ray else "in this process (--train-on-ray for Ray Train)"
    log.info(
        "demo: fitting a tiny bundle on the synthetic training corpus %s; cached for the next run",
        how,
    )
    opts = TrainOptions(corpus=paths["train_manifest"], out=paths["bundle"], preset="tiny")
    result = run_train(opts, local=not on_ray)
    print(summary_table(result["metrics"]))


@dataclass(frozen=True)
class DemoResult:
    paths: dict[str, str]
    summary: LabelSummary
    report: EvaluationReport


def run_demo(
    address: str | None = None, train_on_ray: bool = False, export_png: str | None = None
) -> DemoResult:
    """The whole embedded default: corpora, bundle, the label job with ``--ablation`` on
    the held-out corpus, and its report against the synthetic ground truth."""
    paths = prepare_corpora()
    init_ray(address)
    ensure_bundle(paths, on_ray=train_on_ray)
    opts = LabelOptions(
        corpus=paths["heldout_manifest"],
        bundle=paths["bundle"],
        out=paths["out"],
        ablation=True,
        export_png=export_png,
        address=address,
    )
    summary = run_label(opts)
    report = evaluate(paths["out"], paths["heldout_corpus"], mapper=ray_map)
    write_report(report, paths["report"])
    figure(paths["out"], paths["heldout_corpus"], os.path.join(paths["report"], "figure.png"))
    return DemoResult(paths, summary, report)
