"""The model stages' base (factory.pipelines.stages.ModelStage) without Ray: one clip's failure
is that clip's reject, named after the stage; the other clips of the batch go on; a
failed batch preparation falls back to clip by clip."""

import json

import numpy as np

from factory.io.corpus import ClipRecord
from factory.io.decode import DecodedClip
from factory.io.rejects import ClipError
from factory.pipelines.stages import (
    OK,
    REJECT,
    ActorSizing,
    ModelStage,
    actor_threads,
    empty_row,
    from_batch,
    serialize_clip,
    size_model_actors,
    to_batch,
)


def decoded_row(key: str, frames: int) -> dict:
    clip = DecodedClip(
        key,
        np.zeros((frames, 8, 8, 3), np.uint8),
        np.arange(frames) / 8.0,
        None,
        0.0,
        frames / 8.0,
        (8, 8),
    )
    record = ClipRecord(key=key, uri=f"{key}.mp4", tags=("dog",))
    row = empty_row(key, json.dumps(record.to_row()))
    return {**row, "payload": serialize_clip(clip), "n_frames": frames}


class CountFrames(ModelStage):
    stage = "count"

    def __init__(self, fail_prepare: bool = False) -> None:
        self.prepared: list[str] = []
        self.fail_prepare = fail_prepare

    def prepare(self, clips: list[DecodedClip]) -> None:
        if self.fail_prepare:
            raise MemoryError("out of memory")
        self.prepared = [c.key for c in clips]

    def process(self, clip: DecodedClip, record: ClipRecord) -> tuple[bytes, dict]:
        if clip.key == "bad":
            raise ClipError("count", "two heads", "drop the clip")
        if clip.key == "broken":
            raise ZeroDivisionError("division by zero")
        return str(len(clip.times)).encode(), {"frames": len(clip.times)}


def test_rows_fail_alone_and_name_the_stage():
    stage = CountFrames()
    rows = [decoded_row(k, n) for k, n in (("a", 3), ("bad", 2), ("broken", 4), ("b", 5))]
    rows.append({**empty_row("gone", rows[0]["record"]), "status": REJECT, "reason": "decode"})
    out = {r["key"]: r for r in from_batch(stage(to_batch(rows)))}
    assert stage.prepared == ["a", "bad", "broken", "b"]  # the batch, before any clip
    assert out["a"]["status"] == OK and out["a"]["payload"] == b"3"
    assert out["b"]["payload"] == b"5"
    assert json.loads(out["a"]["info"])["frames"] == 3
    assert json.loads(out["a"]["info"])["seconds"] >= 0
    assert (out["bad"]["status"], out["bad"]["stage"], out["bad"]["reason"]) == (
        REJECT,
        "count",
        "two heads",
    )
    assert out["broken"]["status"] == REJECT and out["broken"]["stage"] == "count"
    assert "ZeroDivisionError" in out["broken"]["reason"]
    assert out["gone"]["reason"] == "decode"  # an earlier reject passes untouched


def test_a_failed_preparation_falls_back_to_clip_by_clip():
    out = from_batch(CountFrames(fail_prepare=True)(to_batch([decoded_row("a", 3)])))
    assert out[0]["status"] == OK and out[0]["payload"] == b"3"


def test_a_corrupt_payload_is_that_rows_reject():
    rows = [decoded_row("a", 3), {**decoded_row("b", 2), "payload": b"not an npz"}]
    out = {r["key"]: r for r in from_batch(CountFrames()(to_batch(rows)))}
    assert out["a"]["status"] == OK
    assert out["b"]["status"] == REJECT and out["b"]["stage"] == "count"


def test_shards_are_cut_by_bytes(tmp_path):
    from factory.pipelines.stages import by_bytes, write_rows

    rows = [{"key": k, "payload": b"x" * n} for k, n in (("a", 4), ("b", 4), ("c", 9), ("d", 1))]
    assert [[r["key"] for r in g] for g in by_bytes(rows, 8)] == [["a", "b"], ["c"], ["d"]]
    assert [[r["key"] for r in g] for g in by_bytes(rows, None)] == [["a", "b", "c", "d"]]
    assert by_bytes([], 8) == []

    # through the writer: each group one committed shard, every clip in exactly one
    import pyarrow as pa

    from factory.io.store import ShardStore

    def make_table(group):
        return pa.table(
            {
                "video_id": [r["key"] for r in group],
                "shard_id": [""] * len(group),
            }
        )

    done = [{**decoded_row(k, 2), "payload": b"x" * n} for k, n in (("a", 4), ("b", 4), ("c", 9))]
    summary = write_rows(done, str(tmp_path), make_table, max_bytes=8)
    files = {s["key"]: s["file"] for s in summary}
    assert files["a"] == files["b"] != files["c"]
    assert all(json.loads(s["info"])["write_seconds"] >= 0 for s in summary)
    committed = ShardStore(str(tmp_path)).scan()
    assert set(committed.shard_clips) == {"a", "b", "c"} and len(committed.shard_rows) == 2


def test_actor_threads_follow_the_actors_cpus():
    assert actor_threads(None, 1.0, 0.0) == 1  # Ray's own setting
    # 2 cores: decode 0.5 + write 0.25 leave 1.25 CPUs: the one actor gets both cores
    assert actor_threads(None, 1.25, 0.0) == 2
    assert actor_threads(None, 0.5, 0.0) == 1
    assert actor_threads(3, 1.0, 0.0) == 3  # given: as given
    assert actor_threads(None, 1.0, 1.0) is None  # a GPU actor keeps Ray's


def test_model_actors_share_the_cluster_by_default(monkeypatch):
    from factory.pipelines import stages

    side = stages.DECODE_CPUS + stages.WRITE_CPUS  # 0.75
    monkeypatch.setattr(stages, "cluster_cpus", lambda: 2.0)
    monkeypatch.setattr(stages, "node_cpus", lambda: [2.0])
    # a 2-core machine: one actor reserves what decode and write leave, runs on both cores
    assert size_model_actors(None, None, None, 0.0, side) == ActorSizing(1, 1.25, 2)
    # flags given win; given CPUs keep their own thread rule (rounded up)
    assert size_model_actors(None, 1.0, None, 0.0, side) == ActorSizing(1, 1.0, 1)
    assert size_model_actors(2, None, 3, 0.0, side) == ActorSizing(2, 1.0, 3)  # at least 1 CPU
    monkeypatch.setattr(stages, "cluster_cpus", lambda: 16.0)
    monkeypatch.setattr(stages, "node_cpus", lambda: [16.0])
    # a 16-core node: 15 actors of one thread each (not 2: 30 threads on 16 cores)
    assert size_model_actors(None, None, None, 0.0, side) == ActorSizing(15, 1.01, 1)
    assert size_model_actors(4, None, None, 0.0, side) == ActorSizing(4, 3.81, 4)
    # two 2-CPU nodes: the actor fits one node beside decode and write (not 3.25 CPUs)
    monkeypatch.setattr(stages, "cluster_cpus", lambda: 4.0)
    monkeypatch.setattr(stages, "node_cpus", lambda: [2.0, 2.0])
    assert size_model_actors(1, None, None, 0.0, side) == ActorSizing(1, 1.25, 2)
    # by default one actor a node, each fitting its node (3 actors of 1.08: only 2 fit)
    assert size_model_actors(None, None, None, 0.0, side) == ActorSizing(2, 1.25, 2)
    # a GPU actor: 1 CPU, Ray's threads
    monkeypatch.setattr(stages, "cluster_gpus", lambda: 2.0)
    assert size_model_actors(None, None, None, 1.0, side) == ActorSizing(2, 1.0, None)


def test_stage_metrics_are_registered_with_ray(ray_session):
    """A model stage's batch inside a Ray worker records the per-stage metrics, and their
    names reach the node's Prometheus endpoint (what the dashboard and Prometheus read)."""
    import sys
    import time
    import urllib.request

    import ray
    from ray import cloudpickle

    from factory.pipelines.metrics import METRIC_NAMES

    # this test module is not importable by the workers: ship its classes by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])

    class CountFramesInAWorker(CountFrames):
        # a stage name of its own: the tests that call CountFrames in this process (the
        # session's Ray driver) record "count" metrics of their own on the same endpoint
        stage = "count_in_a_worker"

    @ray.remote(num_cpus=0.5)
    def one_batch() -> list:
        batch = to_batch([decoded_row("a", 3), decoded_row("bad", 2)])
        return from_batch(CountFramesInAWorker()(batch))

    out = ray.get(one_batch.remote())
    assert [r["status"] for r in out] == [OK, REJECT]
    port = ray._private.worker.global_worker.node.metrics_export_port
    text = ""
    deadline = time.time() + 90  # the metrics agent reports every few seconds
    while time.time() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        if all(name in text for name in METRIC_NAMES) and 'stage="count_in_a_worker"' in text:
            break
        time.sleep(2)
    missing = [name for name in METRIC_NAMES if name not in text]
    assert not missing, missing
    clips = [
        ln
        for ln in text.splitlines()
        if ln.startswith("ray_factory_stage_clips") and 'stage="count_in_a_worker"' in ln
    ]
    assert clips and float(clips[0].rsplit(" ", 1)[1]) == 2.0, clips
