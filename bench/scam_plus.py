"""Issue 14's instrument: which change makes SCAM+ earn its place (raw maps, Table 1 world).

One training world (``TABLE1_WORLD``, seed 0) and one held-out world (2 clips per tag,
seed 1, as ``bench/world_knobs.py``). The base nets (encoders, S, ST, SA, the fine nets,
the switch) are fitted once in this process and shared by every candidate through one
run folder; each candidate refits only the ``+`` nets (their checkpoints are removed
first), with a seed of its own, then labels the held-out clips with ``--ablation`` (the
label job on a local Ray) under each labelling rule and scores every variant's raw map
against the ground truth. Besides CC it records the nets' held-out accuracy, how often
each source is selected (Eq. 3), the frames no source selects and the audio switch's
decisions per kind of clip (another tag's sound or not).

    python bench/scam_plus.py [--candidates pair-identity,type-normal] [--seeds 0,1,2]
                              [--rules sigmoid-flat,softmax-average] [--json FILE]

Candidates (``+`` nets): ``<weights>-<init>[-bal]``, weights ``pair`` (8 nets, the
paper's) or ``type`` (3 shared), init ``identity`` or ``normal`` (see
``factory.config.Preset``); ``-bal`` also refits the audio switch with its classes
balanced (``TrainConfig.switch_balance``).
Rules (labelling): ``<confidence>-<no_source>[-<switch_gate>]`` (see
``factory.config.LabelConfig``; the switch gate defaults to the bundle's, ``net``).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from factory.io.synthetic import TABLE1_WORLD

COLUMNS = (
    "map_cam_s",
    "map_ac",
    "map_scam_coarse",
    "map_cam_s_fine",
    "map_ac_fine",
    "map_scam_fine",
    "map_s_plus_short",
    "map_st_plus_long",
    "map_sa_plus_cross",
    "map_cam_prime",
    "map_scam_prime",
    "map",
)


def worlds(root: str) -> tuple[str, str]:
    from factory.io.synthetic import generate

    train, held = os.path.join(root, "train"), os.path.join(root, "heldout")
    generate(train, TABLE1_WORLD.replace(seed=0))
    generate(held, TABLE1_WORLD.replace(clips_per_tag=2, seed=1, split_fractions=(0.0, 0.0, 1.0)))
    return train, held


def fit(
    root: str,
    train: str,
    candidate: str,
    seed: int,
    sets: dict | None = None,
    refit: tuple[str, ...] = ("plus",),
) -> dict:
    """The bundle of ``candidate`` under root: the nets named in ``refit`` (``plus``: the
    + nets, ``switch``: the audio switch) refitted with ``seed``, the others resumed."""
    from factory.jobs.train import TrainOptions, run_train

    weights, init, *extra = candidate.split("-")
    balance = "bal" in extra  # the audio switch with its classes balanced (refitted)
    run = os.path.join(root, "_run")
    if "plus" in refit:
        for d in glob.glob(os.path.join(run, "checkpoints", "*plus*")):
            shutil.rmtree(d)  # the + nets only: the base nets resume as they are
    marker = os.path.join(run, "switch_balance")
    previous = "False"
    if os.path.exists(marker):
        with open(marker) as f:
            previous = f.read()
    if previous != str(balance) or "switch" in refit:
        # (the fine nets' crops keep the first switch's boxes)
        shutil.rmtree(os.path.join(run, "checkpoints", "switch"), ignore_errors=True)
    os.makedirs(run, exist_ok=True)
    with open(marker, "w") as f:
        f.write(str(balance))
    out = os.path.join(root, "bundles", run_name(candidate, seed, sets))
    t0 = time.time()
    result = run_train(
        TrainOptions(
            corpus=os.path.join(train, "manifest.csv"),
            out=out,
            preset="tiny",
            plus_weights=weights,
            plus_init=init,
            storage_path=run,
            overrides={"seed": seed, "switch_balance": balance, **(sets or {})},
        ),
        local=True,
    )
    return {
        "bundle": out,
        "accuracy": {n: m.get("accuracy") for n, m in result["metrics"]["nets"].items()},
        "fit_s": round(time.time() - t0, 1),
    }


def run_name(candidate: str, seed: int, sets: dict | None) -> str:
    """The folder name of a candidate's bundle and labels: the --set overrides are part of
    it, so runs that differ only in them never resume each other's labels."""
    extra = "".join(f"+{k}={json.dumps(v, separators=(',', ':'))}" for k, v in (sets or {}).items())
    extra = extra.replace("/", "_").replace('"', "")
    return f"{candidate}{extra}@{seed}"


def selection(out: str, held: str) -> dict:
    """How often each source passes Eq. 3, frames with none, and the audio switch per
    kind of held-out clip."""
    import csv

    import numpy as np
    import pyarrow.parquet as pq

    from factory.method.labeler import SOURCES

    with open(os.path.join(held, "manifest.csv")) as f:
        kinds = {r["video_id"]: r["kind"] for r in csv.DictReader(f)}
    files = glob.glob(os.path.join(out, "shards", "**", "*.parquet"), recursive=True)
    conf = {s: [] for s in SOURCES}
    switch: dict[str, list] = {}
    for f in files:
        t = pq.read_table(
            f, columns=["video_id", "confidences", "audio_switch", "has_audio"]
        ).to_pydict()
        for key, c, on, has in zip(
            t["video_id"], t["confidences"], t["audio_switch"], t["has_audio"], strict=True
        ):
            for s in SOURCES:
                conf[s].append(c[s])
            if has:
                kind = "foreign sound" if kinds.get(key) == "mismatched_audio" else "own sound"
                switch.setdefault(kind, []).append(bool(on))
    c = np.array([conf[s] for s in SOURCES])  # (sources, frames)
    return {
        "selected_fraction": {s: round(float((c[k] > 0).mean()), 3) for k, s in enumerate(SOURCES)},
        "mean_selected": {s: round(float(c[k].mean()), 3) for k, s in enumerate(SOURCES)},
        "no_source_fraction": round(float((c.sum(0) == 0).mean()), 3),
        "switch_on": {k: round(float(np.mean(v)), 3) for k, v in switch.items()},
    }


def score(root: str, held: str, bundle: str, rule: str, tag: str) -> dict:
    from factory.evaluation.evaluate import evaluate
    from factory.jobs.label import LabelOptions, run_label
    from factory.method.labeler import MAP_NAMES

    confidence, no_source, *gate = rule.split("-")
    out = os.path.join(root, "labels", f"{tag}@{rule}")
    run_label(
        LabelOptions(
            corpus=os.path.join(held, "manifest.csv"),
            bundle=bundle,
            out=out,
            ablation=True,
            preview=False,
            confidence=confidence,
            no_source=no_source,
            switch_gate=gate[0] if gate else None,
        )
    )
    report = evaluate(out, held)
    return {
        "cc": {
            c: report.methods[MAP_NAMES[c]]["dataset"]["cc"]
            for c in MAP_NAMES
            if MAP_NAMES[c] in report.methods
        },
        "centre_prior_cc": report.methods["center prior"]["dataset"]["cc"],
        **selection(out, held),
    }


def table(results: list[dict]) -> str:
    head = ["candidate", "seed", "rule", "acc S+ (mean)", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        plus = [a for n, a in r["accuracy"].items() if "+" in n and a is not None]
        acc = sum(plus) / len(plus) if plus else float("nan")
        cells = [r["candidate"], str(r["seed"]), r["rule"], f"{acc:.2f}"]
        cells += [f"{r['cc'].get(c, float('nan')):.3f}" for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--candidates", default="pair-identity,type-normal")
    p.add_argument("--seeds", default="0")
    p.add_argument("--rules", default="sigmoid-flat")
    p.add_argument("--root", default=os.path.join("runs", "scam_plus"))
    p.add_argument("--json", default=None, help="write the raw figures here (appended to)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a preset override for every fit of this run (a new --root: the encoders "
        "change), e.g. --set 'encoders.plus.widths=[8,16,32,64,64]'",
    )
    p.add_argument(
        "--refit",
        default="plus",
        help="which nets each candidate refits: plus, switch or plus,switch (the others "
        "resume from the run folder as the previous candidate left them)",
    )
    a = p.parse_args()
    from factory.pipelines.cluster import init_ray

    init_ray()
    sets = {k: json.loads(v) for k, _, v in (x.partition("=") for x in a.set)}
    train, held = worlds(a.root)
    results = []
    if a.json and os.path.exists(a.json):
        with open(a.json) as f:
            results = json.load(f)
    for candidate in a.candidates.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            fitted = fit(a.root, train, candidate, seed, sets, tuple(a.refit.split(",")))
            for rule in a.rules.split(","):
                r = {
                    "candidate": candidate + "".join(f" {k}={v}" for k, v in sets.items()),
                    "seed": seed,
                    "rule": rule,
                    "accuracy": fitted["accuracy"],
                    "fit_s": fitted["fit_s"],
                    **score(a.root, held, fitted["bundle"], rule, run_name(candidate, seed, sets)),
                }
                results.append(r)
                print(json.dumps(r), flush=True)
                if a.json:
                    with open(a.json, "w") as f:
                        json.dump(results, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
