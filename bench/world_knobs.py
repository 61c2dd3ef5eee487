"""How each knob of the synthetic world changes the ablation table (issue 13).

For each setting (the Table 1 world, the world with one knob turned off, the harder
setting, the easy world of the unit tests): generate a training and a held-out world
from it, fit the tiny bundle in this process as the demo does, label the held-out clips
with ``--ablation`` (the label job on a local Ray) and score every variant's raw map
against the ground truth. Prints one Markdown table (held-out accuracy of the nets, CC
of each map) and writes the raw figures as JSON.

    python bench/world_knobs.py [--settings table1,no-palette,...] [--seeds 0,1,2]
                                [--json bench/results/world_knobs.json]

Each setting costs a bundle fit per seed (8-9 minutes on 2 cores at the Table 1 size with
the 8 pair ``+`` nets; 4-5 with the earlier 3 shared ones). ``--seeds``: the fit's seed
(``TrainConfig.seed``: encoder pretraining, the nets' initialisation and their sampling);
the worlds stay the same (training world seed 0, held-out world seed 1), so the rows of
one setting differ by the fit alone, and a mean row follows them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from factory.io.synthetic import HARD_WORLD, TABLE1_WORLD, SyntheticConfig

T1 = TABLE1_WORLD
SETTINGS: dict[str, SyntheticConfig] = {
    "table1": T1,
    "no-shared-hues": T1.replace(palette=0),
    "no-shade-size-jitter": T1.replace(shade_jitter=0.0, size_jitter=0.0),
    "no-foreign-objects": T1.replace(foreign_objects=0),
    "no-decoys": T1.replace(decoys=0.0),
    "no-occlusion": T1.replace(occlusion=0.0),
    "no-camera-motion": T1.replace(camera_motion=0.0),
    "no-foreign-sound": T1.replace(mismatched_audio=0.0),
    "one-container": T1.replace(frame_sizes=(), fps_choices=(), audio_rates=(), stereo=0.0),
    "hard": HARD_WORLD,
    "easy-4-tags": SyntheticConfig(num_tags=4, clips_per_tag=10, seconds=2.0),
}
COLUMNS = (
    "map_cam_s",
    "map_ac",
    "map_scam_coarse",
    "map_scam_fine",
    "map_cam_prime",
    "map_scam_prime",
    "map",
)


def run_setting(name: str, cfg: SyntheticConfig, root: str, seed: int = 0) -> dict:
    from factory.evaluation.evaluate import evaluate
    from factory.io.synthetic import generate
    from factory.jobs.label import LabelOptions, run_label
    from factory.jobs.train import TrainOptions, run_train
    from factory.method.labeler import MAP_NAMES

    t0 = time.time()
    base = os.path.join(root, name if not seed else f"{name}-seed{seed}")
    train = os.path.join(base, "train")
    held = os.path.join(base, "heldout")
    generate(train, cfg.replace(seed=0))
    generate(held, cfg.replace(clips_per_tag=2, seed=1, split_fractions=(0.0, 0.0, 1.0)))
    bundle = os.path.join(base, "bundle")
    result = run_train(
        TrainOptions(
            corpus=os.path.join(train, "manifest.csv"),
            out=bundle,
            preset="tiny",
            overrides={"seed": seed} if seed else {},
        ),
        local=True,
    )
    accuracy = {
        n: m["accuracy"]
        for n, m in result["metrics"]["nets"].items()
        if m.get("accuracy") is not None
    }
    out = os.path.join(base, "labels")
    run_label(
        LabelOptions(
            corpus=os.path.join(held, "manifest.csv"),
            bundle=bundle,
            out=out,
            ablation=True,
            preview=False,
        )
    )
    from scam_plus import selection  # bench/ is on the path when this script runs

    report = evaluate(out, held)
    cc = {
        c: report.methods[MAP_NAMES[c]]["dataset"]["cc"]
        for c in MAP_NAMES
        if MAP_NAMES[c] in report.methods
    }
    return {
        "accuracy": accuracy,
        "cc": cc,
        "centre_prior_cc": report.methods["center prior"]["dataset"]["cc"],
        # Eq. 3's selections, Eq. 8's weights (mean selected confidence per source), the
        # frames no source selects and the audio switch per kind of clip
        "selection": selection(out, held),
        "seconds": round(time.time() - t0, 1),
    }


def plus_accuracy(accuracy: dict[str, float]) -> str:
    """The range of the ``+`` nets' held-out accuracy ("-" when none was recorded)."""
    plus = [a for n, a in accuracy.items() if "+" in n]
    return f"{min(plus):.2f}-{max(plus):.2f}" if plus else "-"


def table(results: dict[str, dict]) -> str:
    head = ["setting", *(f"acc {n}" for n in ("S", "ST", "SA", "S_fine")), "acc +", *COLUMNS]
    lines = ["| " + " | ".join([*head, "prior"]) + " |", "|" + "---|" * (len(head) + 1)]
    for name, r in results.items():
        acc = [r["accuracy"].get(n) for n in ("S", "ST", "SA", "S_fine")]
        cells = [f"{a:.2f}" if isinstance(a, float) else "-" for a in acc]
        cells.append(plus_accuracy(r["accuracy"]))
        cells += [f"{r['cc'].get(c, float('nan')):.3f}" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['centre_prior_cc']:.3f} |")
    return "\n".join(lines)


def mean_row(rows: list[dict]) -> dict:
    """The mean over a setting's seeds of every accuracy and CC."""

    def mean(key: str) -> dict[str, float]:
        names = set.intersection(*(set(r[key]) for r in rows))
        return {n: sum(r[key][n] for r in rows) / len(rows) for n in sorted(names)}

    return {
        "accuracy": mean("accuracy"),
        "cc": mean("cc"),
        "centre_prior_cc": sum(r["centre_prior_cc"] for r in rows) / len(rows),
        "seconds": sum(r["seconds"] for r in rows),
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated settings")
    p.add_argument("--seeds", default="0", help="comma-separated fit seeds (TrainConfig.seed)")
    p.add_argument("--root", default=os.path.join("runs", "world_knobs"))
    p.add_argument("--json", default=None, help="write the raw figures here")
    a = p.parse_args()
    from factory.pipelines.cluster import init_ray

    init_ray()
    seeds = [int(x) for x in a.seeds.split(",")]
    results = {}
    for name in a.settings.split(","):
        rows = []
        for seed in seeds:
            key = name if len(seeds) == 1 else f"{name} seed {seed}"
            rows.append(run_setting(name, SETTINGS[name], a.root, seed))
            results[key] = rows[-1]
            print(f"{key}: {json.dumps(results[key])}", flush=True)
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(results, f, indent=1)
        if len(seeds) > 1:
            results[f"{name} mean"] = mean_row(rows)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    print(table(results))


if __name__ == "__main__":
    main()
