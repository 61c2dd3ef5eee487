"""Faults survived by the label job, each ending with the exactly-once and accounting
checks: a labelling actor killed, a node of a 3-node cluster removed, and the S3 server
unreachable mid-write. (The driver killed with SIGKILL: tests/test_label.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from faults import MULTINODE_DRIVER, CuttableProxy, kill_all, pids_matching, wait_for_shards
from label_runs import rows_of, run_label_cli, start_label_cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


@pytest.fixture
def reference(label_reference):
    """An uninterrupted run over the held-out corpus with every kind of bad input (one
    for the whole test run: conftest.label_reference)."""
    return label_reference


def assert_same_as_reference(out, reference):
    keys, maps = rows_of(out)
    assert len(keys) == len(set(keys)), "duplicated rows"
    assert sorted(keys) == sorted(reference["keys"]), "rows lost or added"
    assert all(
        np.abs(maps[k].astype(int) - reference["maps"][k].astype(int)).max() <= 1 for k in keys
    )
    assert (
        sorted(pq.read_table(os.path.join(out, "rejects.parquet"))["input"].to_pylist())
        == reference["rejects"]
    )
    manifest = json.loads(Path(out, "_manifest.json").read_text())
    assert manifest["clips"] + manifest["rejects"] == len({k for k, _ in reference["keys"]}) + len(
        reference["rejects"]
    )


@pytest.mark.slow(seconds=55)
def test_labelling_actor_killed_mid_run(tiny_bundle, reference, tmp_path):
    out = str(tmp_path / "out")
    proc = start_label_cli(reference["manifest"], tiny_bundle["bundle"], out, ENV)
    assert wait_for_shards(os.path.join(out, "shards"), 1, proc)
    victims = pids_matching("LabelActor", session=proc.pid)  # this run's, not another test's
    assert victims, "no labelling actor process found"
    kill_all(victims)
    stdout, _ = proc.communicate(timeout=900)
    if proc.returncode != 0:  # the run may fail loudly; the rerun must then finish cleanly
        stdout = run_label_cli(reference["manifest"], tiny_bundle["bundle"], out, ENV).stdout
    assert "accounting: inputs" in stdout
    assert_same_as_reference(out, reference)


@pytest.mark.slow(seconds=70)
def test_node_removed_from_a_three_node_cluster(tiny_bundle, reference, tmp_path):
    out = str(tmp_path / "out")
    res = subprocess.run(
        [
            sys.executable,
            "-c",
            MULTINODE_DRIVER,
            REPO,
            reference["manifest"],
            tiny_bundle["bundle"],
            out,
        ],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    result = json.loads(
        next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))[len("RESULT ") :]
    )
    assert result["removed"], "no node was removed (the run ended first)\n" + res.stdout[-2000:]
    assert result["inputs"] == result["labelled"] + result["rejected"]
    assert_same_as_reference(out, reference)


@pytest.mark.slow(seconds=130)
@pytest.mark.s3
def test_s3_unreachable_mid_write(tiny_bundle, reference, s3_server, s3_bucket, tmp_path):
    import s3fs

    proxy = CuttableProxy(s3_server["port"])
    env = {
        **ENV,
        **s3_server["env"],
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}",
        "AWS_MAX_ATTEMPTS": "3",
    }
    out = f"{s3_bucket}/out"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server["endpoint"])
    bucket = s3_bucket.removeprefix("s3://")
    try:
        proc = start_label_cli(reference["manifest"], tiny_bundle["bundle"], out, env)
        deadline = time.time() + 600
        while time.time() < deadline and not fs.glob(f"{bucket}/out/shards/*.parquet"):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.3)
            fs.invalidate_cache()
        proxy.cut()  # the S3 endpoint is unreachable ...
        time.sleep(5)
        proxy.restore()  # ... and back
        try:
            stdout, _ = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
        if proc.returncode != 0:
            assert "Traceback" in stdout or "error" in stdout.lower()  # it failed loudly
            run_label_cli(reference["manifest"], tiny_bundle["bundle"], out, env)
        local = tmp_path / "copy"
        fs.invalidate_cache()
        fs.get(f"{bucket}/out/", str(local), recursive=True)
        assert_same_as_reference(str(local), reference)
    finally:
        proxy.close()
