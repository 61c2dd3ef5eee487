"""Peak memory of labelling and predicting a long clip against a short one (issue 15).

Writes two synthetic clips of the same world, ``--short`` and ``--long`` seconds, and for
each runs, in a fresh process, the labeler (``factory.method.chunks.label_in_chunks``: the
label job's per-clip work, decoding included) and the students' predictor
(``predict_in_chunks``), recording the process's peak resident memory (``ru_maxrss``)
and the time. A clip longer than ``max_frames`` is taken in chunks, so the long clip's
peak should stay close to the short one's.

    python bench/long_video.py --bundle runs/demo/bundle [--short 30 --long 180] [--json FILE]

Without ``--students`` the predictor runs students with their initial weights (memory
and time do not depend on the weights).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_one(kind: str, bundle: str, corpus: str, students: str) -> dict:
    """In this (fresh) process: label or predict the corpus's one clip, report peak RSS."""
    import torch

    from factory.io.corpus import read_corpus
    from factory.method.bundle import load_bundle
    from factory.method.chunks import label_in_chunks, predict_in_chunks
    from factory.method.labeler import Labeler
    from factory.method.students import StudentPredictor

    torch.set_num_threads(2)
    rec = read_corpus(os.path.join(corpus, "manifest.csv")).records[0]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if kind == "label":
        labels = label_in_chunks(Labeler(load_bundle(bundle)), rec, list(rec.tags))
        frames = labels.maps.shape[0]
    else:
        _maps, _clip, times = predict_in_chunks(StudentPredictor(students), rec)
        frames = len(times)
    return {
        "kind": kind,
        "frames": int(frames),
        "seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(base / 1024, 1),
    }


def make_students(bundle_uri: str, out: str) -> str:
    import torch

    from factory.method.bundle import load_bundle
    from factory.method.students import save_students
    from models.config import STUDENT_GRAPH_CHANNELS
    from models.registry import STUDENTS, build_student

    bundle = load_bundle(bundle_uri)
    torch.manual_seed(0)
    students = {n: build_student(n, bundle.preset.encoders, bundle.cgcn) for n in STUDENTS}
    save_students(
        out,
        bundle.preset,
        bundle.encoders,
        students,
        bundle.net("switch"),
        {"graph_channels": STUDENT_GRAPH_CHANNELS},
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bundle", default=os.path.join("runs", "demo", "bundle"))
    p.add_argument("--students", default=None, help="a student bundle (default: initial weights)")
    p.add_argument("--short", type=float, default=30.0, help="seconds of the short clip")
    p.add_argument("--long", type=float, default=180.0, help="seconds of the long clip")
    p.add_argument("--json", default=None)
    p.add_argument(
        "--child", nargs=3, metavar=("KIND", "CORPUS", "STUDENTS"), help=argparse.SUPPRESS
    )
    a = p.parse_args()
    if a.child:
        print(json.dumps(run_one(a.child[0], a.bundle, a.child[1], a.child[2])))
        return
    from factory.io.synthetic import TABLE1_WORLD, generate
    from factory.method.bundle import load_bundle

    preset = load_bundle(a.bundle).preset
    work = tempfile.mkdtemp(prefix="long_video_")
    students = a.students or make_students(a.bundle, os.path.join(work, "students"))
    rows = []
    for seconds in (a.short, a.long):
        corpus = os.path.join(work, f"clip_{seconds:g}s")
        world = TABLE1_WORLD.replace(
            num_tags=1, clips_per_tag=1, seconds=seconds, seed=3, frame_sizes=((128, 128),)
        )
        generate(corpus, world.replace(split_fractions=(0.0, 0.0, 1.0)))
        for kind in ("label", "predict"):
            out = subprocess.run(
                [sys.executable, __file__, "--bundle", a.bundle, "--child", kind, corpus, students],
                capture_output=True,
                text=True,
                check=True,
            )
            row = {"clip_s": seconds, **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "max_frames": preset.frames.max_frames,
        "long_pool": preset.windows.long_pool,
        "rows": rows,
    }
    print("| clip | job | frames | peak RSS (MB) | seconds |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clip_s']:g} s | {r['kind']} | {r['frames']} | {r['peak_rss_mb']} | {r['seconds']} |"
        )
    for kind in ("label", "predict"):
        short, long = (r["peak_rss_mb"] for r in rows if r["kind"] == kind)
        print(f"{kind}: long / short peak = {long / short:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
