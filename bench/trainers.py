"""The train job on a local Ray with one TorchTrainer per phase against one per net
(``--trainers phase`` / ``--trainers net``), side by side on one machine.

Each mode runs ``jobs/train.py`` in a subprocess of its own (its own local Ray, started
and stopped by the job) on the same synthetic corpus, from an empty output folder; the
figures are its wall time, the CPU time of the whole machine while it ran (busy jiffies
of /proc/stat: the job, its Ray processes and their workers; run it on an otherwise idle
machine), and the job's own phase times from the bundle's metrics.

    python bench/trainers.py                        # 3 tags x 8 clips, 3 shared + nets
    python bench/trainers.py --plus-weights pair    # the paper's 8 + nets
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from factory.io.synthetic import SyntheticConfig, generate  # noqa: E402


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def run_mode(mode: str, corpus: str, out: str, a: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        os.path.join(REPO, "jobs", "train.py"),
        "--corpus",
        corpus,
        "--out",
        out,
        "--epochs",
        str(a.epochs),
        "--pretrain-epochs",
        str(a.pretrain_epochs),
        "--plus-weights",
        a.plus_weights,
        "--trainers",
        mode,
    ]
    cpu0, t0 = busy_seconds(), time.time()
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    wall, cpu = time.time() - t0, busy_seconds() - cpu0
    if res.returncode != 0:
        sys.exit(
            f"trainers bench: the train job with --trainers {mode} failed:\n{res.stderr[-3000:]}"
        )
    with open(os.path.join(out, "bundle.json")) as f:
        metrics = json.load(f)["metrics"]
    return {"wall": wall, "cpu": cpu, "phases": metrics["phases_s"], "nets": len(metrics["nets"])}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clips-per-tag", type=int, default=8)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--pretrain-epochs", type=int, default=15)
    p.add_argument("--plus-weights", choices=["type", "pair"], default="type")
    p.add_argument("--modes", default="net,phase", help="comma-separated, run in this order")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="bench-trainers-")
    generate(
        os.path.join(work, "corpus"),
        SyntheticConfig(num_tags=3, clips_per_tag=a.clips_per_tag, seconds=2.0, seed=31),
    )
    corpus = os.path.join(work, "corpus", "manifest.csv")
    rows = {}
    for mode in a.modes.split(","):
        print(f"train job with --trainers {mode} ...", flush=True)
        rows[mode] = run_mode(mode, corpus, os.path.join(work, f"bundle-{mode}"), a)
    phases = list(next(iter(rows.values()))["phases"])
    print(
        f"\n{3 * a.clips_per_tag} clips, {a.epochs} epochs, pretraining {a.pretrain_epochs}, "
        f"+ nets: {a.plus_weights}; {os.cpu_count()} CPUs\n"
    )
    print(
        "| --trainers | wall s | machine CPU-s | " + " | ".join(f"{ph} s" for ph in phases) + " |"
    )
    print("|---|---|---|" + "---|" * len(phases))
    for mode, r in rows.items():
        cells = " | ".join(f"{r['phases'].get(ph, 0):.1f}" for ph in phases)
        print(f"| {mode} | {r['wall']:.1f} | {r['cpu']:.1f} | {cells} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "cpus": os.cpu_count(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
