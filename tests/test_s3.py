"""Object storage for real: a local S3-compatible server (moto) serves the corpus; the
bundle, its checkpoints and the pseudo-fixation shards go to s3:// and are read back.
Credentials come from the standard AWS environment and never show up in logs, run
records, errors or outputs."""

import io
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import s3fs
from conftest import S3_KEY_ID, S3_SECRET, copy_tree_to_s3

from factory.io.synthetic import SyntheticConfig, generate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLD = SyntheticConfig(num_tags=2, clips_per_tag=3, seconds=1.5, seed=41)


def run(cmd, env, timeout=1500):
    res = subprocess.run(
        [sys.executable, *cmd], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    return res


@pytest.mark.slow(seconds=80)
@pytest.mark.s3
def test_end_to_end_on_s3_and_no_secret_leaks(tmp_path, s3_server, s3_bucket):
    generate(str(tmp_path / "corpus"), WORLD)
    copy_tree_to_s3(str(tmp_path / "corpus"), f"{s3_bucket}/corpus")
    env = {**os.environ, **s3_server["env"], "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    logs = []
    # train: corpus from s3, checkpoints, caches and the bundle to s3 (in-process executor:
    # the Ray executor's checkpoints use the same storage layer, tested on local disk)
    res = run(
        [
            "jobs/train.py",
            "--corpus",
            f"{s3_bucket}/corpus/manifest.csv",
            "--out",
            f"{s3_bucket}/bundle",
            "--epochs",
            "2",
            "--pretrain-epochs",
            "2",
            "--local",
        ],
        env,
    )
    logs.append(res.stdout + res.stderr)
    assert res.returncode == 0, res.stderr[-3000:]
    fs = s3fs.S3FileSystem()
    bucket = s3_bucket.removeprefix("s3://")
    assert fs.exists(f"{bucket}/bundle/bundle.json") and fs.exists(
        f"{bucket}/bundle/nets/SA+long.pt"
    )
    assert fs.glob(f"{bucket}/bundle/_run/checkpoints/S/checkpoint_local_*/state.pt")
    # label: corpus and bundle from s3, shards to s3 (Ray Data)
    res = run(
        [
            "jobs/label.py",
            "--corpus",
            f"{s3_bucket}/corpus/manifest.csv",
            "--bundle",
            f"{s3_bucket}/bundle",
            "--out",
            f"{s3_bucket}/pseudo",
        ],
        env,
    )
    logs.append(res.stdout + res.stderr)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "accounting: inputs 6 = labelled clips 6 + rejects 0" in res.stdout
    shards = fs.glob(f"{bucket}/pseudo/shards/*.parquet")
    assert shards
    rows = sum(pq.read_table(io.BytesIO(fs.cat(s))).num_rows for s in shards)
    assert rows == 6 * 12  # 6 clips of 1.5 s at 8 fps
    # the secret appears nowhere: logs, run records, bundle, rejects, shards
    everything = "".join(logs)
    for path in fs.find(bucket):
        data = fs.cat(path)
        assert S3_SECRET.encode() not in data, path
        assert S3_KEY_ID.encode() not in data, path
    assert S3_SECRET not in everything and S3_KEY_ID not in everything


def test_redaction():
    from factory.io.storage import redact

    os.environ["AWS_SECRET_ACCESS_KEY"] = S3_SECRET
    try:
        text = f"error talking to s3 with key {S3_SECRET} and aws_secret_access_key={S3_SECRET} token: abcd AKIAABCDEFGHIJKLMNOP"
        out = redact(text)
        assert S3_SECRET not in out and "AKIAABCDEFGHIJKLMNOP" not in out and "***" in out
    finally:
        os.environ.pop("AWS_SECRET_ACCESS_KEY", None)


def test_s3_output_without_credentials_is_one_line_before_ray(
    tmp_path, s3_server, s3_bucket, monkeypatch
):
    """An s3:// --out that cannot be written (no credentials here) stops the job at once
    with one line that says what to set, not a traceback after the work is done."""
    from test_cli_errors import assert_one_line_error

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=s3_server["endpoint"],
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "jobs", "label.py"),
            "--corpus",
            str(tmp_path / "c.csv"),
            "--bundle",
            str(tmp_path / "b"),
            "--out",
            f"{s3_bucket}/pseudo",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    line = assert_one_line_error(proc, f"--out '{s3_bucket}/pseudo'", "cannot write there")
    assert "AWS_ACCESS_KEY_ID" in line and "Credentials" in line
    # with the credentials the same prefix is writable and the probe leaves nothing behind
    from factory.io.storage import check_output_root

    for key, value in s3_server["env"].items():  # (an earlier test may have changed them)
        monkeypatch.setenv(key, value)
    s3fs.S3FileSystem.clear_instance_cache()
    check_output_root(f"{s3_bucket}/pseudo", "--out")
    assert not s3fs.S3FileSystem().ls(s3_bucket.removeprefix("s3://"))
