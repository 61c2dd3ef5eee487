"""The label job run as a user runs it (``jobs/label.py`` in a subprocess), the inputs it
is run on (the held-out corpus with one of every kind of bad input) and its rows read
back: shared by the label, fault, submit and students tests and the label reference
run (conftest.label_reference)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def truncated_copy(src: str, dst: str, fraction: float = 0.3) -> str:
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.truncate(int(os.path.getsize(src) * fraction))
    return dst


def held_out_manifest(heldout, tmp_path, bad_inputs=True):
    """The held-out corpus plus one of every kind of bad input, as a manifest."""
    root, meta = heldout
    with open(os.path.join(root, "manifest.csv")) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["video"] = os.path.join(root, r["video"])
    if bad_inputs:
        src = rows[0]["video"]
        bad = tmp_path / "bad"
        bad.mkdir(exist_ok=True)
        truncated_copy(src, str(bad / "truncated.mp4"))
        (bad / "garbage.mp4").write_bytes(os.urandom(20_000))
        tag = rows[0]["tag"]
        rows += [
            {**rows[0], "video": str(bad / "truncated.mp4"), "video_id": "bad-truncated"},
            {**rows[0], "video": str(bad / "garbage.mp4"), "video_id": "bad-garbage"},
            {**rows[0], "video": str(bad / "missing.mp4"), "video_id": "bad-missing"},
            {**rows[0], "video": src, "video_id": "bad-unknown-tag", "tag": "Unicorn"},
            {**rows[0], "video": src, "video_id": rows[1]["video_id"], "tag": tag},  # duplicated id
            {**rows[0], "video": src, "video_id": "bad-segment", "start_s": "5", "end_s": "9"},
        ]
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return str(path)


def label_cmd(manifest, bundle, out):
    return [
        sys.executable,
        "jobs/label.py",
        "--corpus",
        manifest,
        "--bundle",
        bundle,
        "--out",
        out,
        "--clips-per-shard",
        "1",
        "--no-preview",
    ]


def run_label_cli(manifest, bundle, out, env=None):
    """jobs/label.py in a subprocess, as a user runs it; returns the CompletedProcess
    after checking it succeeded."""
    env = env or {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    res = subprocess.run(
        label_cmd(manifest, bundle, out),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def start_label_cli(manifest, bundle, out, env=None):
    """jobs/label.py started in its own session (to be killed mid-run); output piped."""
    return subprocess.Popen(
        label_cmd(manifest, bundle, out),
        cwd=REPO,
        env=env or {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def rows_of(out):
    t = pq.read_table(os.path.join(out, "shards"), columns=["video_id", "frame_index", "map"])
    keys = list(zip(t["video_id"].to_pylist(), t["frame_index"].to_pylist(), strict=True))
    maps = {k: np.array(m, dtype=np.uint8) for k, m in zip(keys, t["map"].to_pylist(), strict=True)}
    return keys, maps
