"""Job submission for real: a local Ray head node started with ``ray start --head``; the
label job, then distil and predict, submitted with ``ray job submit --working-dir . --
python jobs/<job>.py ...``, their outputs checked; only the processes this test started
are stopped."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from faults import free_port, pids_matching
from label_runs import held_out_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = shutil.which("ray") or os.path.join(os.path.dirname(sys.executable), "ray")


def stop_own_ray(temp_dir: str) -> None:
    """Stop the head node's processes: every process whose command line names this
    test's own Ray temp dir (``ray stop`` would stop every Ray on the machine)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [p for p in pids_matching(temp_dir) if p != os.getpid()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + 15
        while pids and time.time() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.3)
        if not pids:
            return


@pytest.mark.slow(seconds=200)
def test_label_distill_predict_submitted_to_a_ray_head(tiny_bundle, heldout_corpus, tmp_path):
    # A short temp dir of its own: Ray's socket paths must stay under 108 bytes, and the
    # processes started here are found by it.
    temp_dir = tempfile.mkdtemp(prefix="pffray", dir="/tmp")
    port, dashboard = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    manifest = held_out_manifest(heldout_corpus, tmp_path, bad_inputs=False)
    out = str(tmp_path / "out")
    try:
        subprocess.run(
            [
                RAY,
                "start",
                "--head",
                f"--port={port}",
                f"--dashboard-port={dashboard}",
                "--dashboard-host=127.0.0.1",
                "--include-dashboard=true",
                "--num-cpus=2",
                f"--temp-dir={temp_dir}",
                # Ports of its own: the test session's local Ray may already hold the
                # defaults (the dashboard agent's 52365 above all, which runs the job).
                f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}",
                f"--runtime-env-agent-port={free_port()}",
                f"--metrics-export-port={free_port()}",
                f"--ray-client-server-port={free_port()}",
                "--disable-usage-stats",
            ],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=180,
        )

        def submit(*job: str) -> str:
            """``ray job submit --working-dir . -- python <job...>``; its output."""
            res = subprocess.run(
                [
                    RAY,
                    "job",
                    "submit",
                    f"--address=http://127.0.0.1:{dashboard}",
                    "--working-dir",
                    ".",
                    "--",
                    "python",
                    *job,
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            log = res.stdout + res.stderr
            assert res.returncode == 0, log[-4000:]
            assert "succeeded" in log, log[-2000:]
            assert "connected to the Ray cluster" in log  # it ran on the head, not a private Ray
            return log

        log = submit(
            "jobs/label.py",
            "--corpus",
            manifest,
            "--bundle",
            tiny_bundle["bundle"],
            "--out",
            out,
            "--no-preview",
        )
        assert "accounting: inputs" in log
        # the students under the same head: distilled on Ray Train (one TorchTrainer for
        # the three students) from the dataset just written, then tag-free prediction on the videos
        students = str(tmp_path / "students")
        log = submit(
            "jobs/distill.py",
            "--pseudo",
            out,
            "--corpus",
            manifest,
            "--out",
            students,
            "--epochs",
            "1",
        )
        assert "STA+long" in log and "held-out CC vs pseudo-fixations" in log
        preds = str(tmp_path / "preds")
        submit(
            "jobs/predict.py",
            "--videos",
            os.path.join(heldout_corpus[0], "videos"),
            "--students",
            students,
            "--out",
            preds,
        )
    finally:
        stop_own_ray(temp_dir)
    assert not pids_matching(temp_dir), "Ray processes of this test left running"
    run = json.loads(Path(out, "run.json").read_text())
    n_clips = len(heldout_corpus[1]["clips"])
    assert run["summary"]["labelled"] == n_clips and run["summary"]["rejected"] == 0
    table = pq.read_table(os.path.join(out, "shards"), columns=["video_id", "frame_index"])
    assert len(set(table["video_id"].to_pylist())) == n_clips
    assert table.num_rows == run["summary"]["frames"]
    meta = json.loads(Path(students, "students.json").read_text())
    assert {n: len(h) for n, h in meta["history"].items()} == {
        "STA": 1,
        "STA+short": 1,
        "STA+long": 1,
    }
    predicted = pq.read_table(os.path.join(preds, "shards"), columns=["video_id", "map"])
    assert len(set(predicted["video_id"].to_pylist())) == n_clips
