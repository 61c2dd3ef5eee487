"""Shared fixtures: real video files written with PyAV, broken copies of them, a local
S3-compatible server (moto), and one Ray instance per test session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# The suite oversubscribes the 2 cores (two xdist workers, each with Ray workers and job
# subprocesses beside it, all inheriting this environment): an idle OpenMP thread that
# spins waiting for work burns the core another process needs. PASSIVE makes it sleep.
# Measured on the 2-core Xeon, the tiny bundle's in-process fit beside the --quick
# Table 1 job: both done in 193 s instead of 222, 367 CPU-s instead of 406
# (bench/RESULTS.md). The thread counts, and so the numbers, are unchanged. Set before
# torch is imported (libgomp reads it once).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Tests never touch a real cloud: a fixed dummy identity for the local S3 server.
S3_KEY_ID = "testing-key-id"
S3_SECRET = "testing-secret-value-0123456789"

from label_runs import held_out_manifest, rows_of, run_label_cli  # noqa: E402

from factory.io.synthetic import SyntheticConfig, generate  # noqa: E402

TINY_WORLD = SyntheticConfig(
    num_tags=3, clips_per_tag=2, seconds=2.0, seed=5, multi_tag_clips=1, no_audio_stream=1
)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """A few real synthetic clips (H.264 + AAC) with ground truth."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    meta = generate(str(root), TINY_WORLD)
    return str(root), meta


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3-compatible server on 127.0.0.1, started for real; yields the endpoint.
    Credentials and the endpoint go through the standard AWS environment variables."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    env = {
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield {"endpoint": endpoint, "port": port, "proc": proc, "env": env}
    proc.terminate()
    proc.wait(timeout=10)
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server, request):
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    client = boto3.client("s3", endpoint_url=s3_server["endpoint"])
    client.create_bucket(Bucket=name)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{name}"


def copy_tree_to_s3(local: str, uri: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem()
    fs.put(local.rstrip("/") + "/", uri.removeprefix("s3://").rstrip("/") + "/", recursive=True)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the tests that need it (2 CPUs)."""
    import ray

    from factory.pipelines.cluster import init_ray

    if not ray.is_initialized():
        init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


TRAIN_WORLD = SyntheticConfig(num_tags=3, clips_per_tag=6, seconds=2.0, seed=21)
HELDOUT_WORLD = SyntheticConfig(
    num_tags=3, clips_per_tag=2, seconds=2.0, seed=22, multi_tag_clips=1, no_audio_stream=1
)
TEST_TRAINING = {"epochs": 8, "pretrain_epochs": 10}


def pytest_collection_modifyitems(config, items):
    """Longest first: the suite's pytest-xdist workers take one test at a time
    (``--maxschedchunk 1``), so the long end-to-end tests start at once on both, the
    short ones fill the gaps, and no long test starts last.
    ``@pytest.mark.slow(seconds=N)``: N is the test's measured time on 2 cores."""

    def seconds(item) -> float:
        marker = item.get_closest_marker("slow")
        return marker.kwargs.get("seconds", 60) if marker else 0

    items.sort(key=seconds, reverse=True)  # stable: otherwise in file order


def shared_tmp(tmp_path_factory) -> Path:
    """A temp folder shared by the run's pytest-xdist workers (each worker has a base temp
    dir of its own below it); without xdist the session's own."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """A tiny bundle fitted once per test run, in-process (the local executor: the same
    phases and per-net code as the Ray job; the Ray path has its own tests). The first
    worker to need it fits it under a file lock; the others wait, then load it (a rerun
    of a finished train job is a no-op that returns its metrics)."""
    from filelock import FileLock

    from factory.jobs.train import TrainOptions, run_train

    shared = shared_tmp(tmp_path_factory)
    root = shared / "bundle_world"
    with FileLock(str(shared / "bundle_world.lock")):
        generate(str(root / "train"), TRAIN_WORLD)  # cached: a no-op once written
        opts = TrainOptions(
            corpus=str(root / "train" / "manifest.csv"),
            out=str(root / "bundle"),
            epochs=TEST_TRAINING["epochs"],
            pretrain_epochs=TEST_TRAINING["pretrain_epochs"],
        )
        result = run_train(opts, local=True)
    return {
        "bundle": str(root / "bundle"),
        "corpus": str(root / "train"),
        "metrics": result["metrics"],
    }


@pytest.fixture(scope="session")
def training_labels(tiny_bundle, tmp_path_factory, ray_session):
    """The tiny bundle's training corpus labelled once by the label job with
    ``--ablation`` (SCAM+'s ``map`` and every Table 1 variant's), in-process on the
    session's Ray, shared by the run's pytest-xdist workers (file lock): the students
    test distils from it, and both Table 1 tests start from a copy (their label step
    then finds every clip committed)."""
    from filelock import FileLock

    from factory.jobs.label import LabelOptions, run_label

    shared = shared_tmp(tmp_path_factory)
    out = shared / "training_labels"
    with FileLock(str(shared / "training_labels.lock")):
        if not (out / "_manifest.json").exists():  # written last by a finished run
            run_label(
                LabelOptions(
                    corpus=os.path.join(tiny_bundle["corpus"], "manifest.csv"),
                    bundle=tiny_bundle["bundle"],
                    out=str(out),
                    ablation=True,
                    preview=False,
                )
            )
    return str(out)


@pytest.fixture(scope="session")
def heldout_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    meta = generate(str(root), HELDOUT_WORLD)
    return str(root), meta


@pytest.fixture(scope="session")
def label_reference(tiny_bundle, tmp_path_factory):
    """One uninterrupted run of ``jobs/label.py`` over the held-out corpus with every kind
    of bad input, shared by the run's pytest-xdist workers (the first to need it writes
    it under a file lock): the fault tests and the kill -9 test compare their interrupted
    runs with it; the students test scores its rows as the students' teacher. The
    manifest names files in the shared folder, so both workers can use it."""
    import pyarrow.parquet as pq
    from filelock import FileLock

    shared = shared_tmp(tmp_path_factory) / "label_reference"
    shared.mkdir(exist_ok=True)
    out = shared / "reference"
    manifest = str(shared / "manifest.csv")
    with FileLock(str(shared / "lock")):
        # written once: the other worker's tests may be reading these files (the bad
        # inputs are rewritten in place, and a truncated copy is whole for a moment)
        if not os.path.exists(manifest):  # written last, after the bad inputs
            held = str(shared / "heldout")
            held_out_manifest((held, generate(held, HELDOUT_WORLD)), shared)
        if not (out / "_manifest.json").exists():  # written last by a finished run
            run_label_cli(manifest, tiny_bundle["bundle"], str(out))
    keys, maps = rows_of(str(out))
    rejects = sorted(pq.read_table(str(out / "rejects.parquet"))["input"].to_pylist())
    return {"manifest": manifest, "out": str(out), "keys": keys, "maps": maps, "rejects": rejects}
