"""Per-stage metrics of the jobs that stream clips through Ray Data (label, predict, the
train and distil caches), exported with Ray's metrics API: the Ray dashboard's metrics
view and any Prometheus that scrapes the nodes' metrics port see them (Ray prefixes
``ray_``; counters end in ``_total`` there).

- ``factory_stage_clips{job, stage}``: clips through a stage (``decode``, ``label``,
  ``predict``, ``cache``, ``write``), rejects included;
- ``factory_stage_frames{job, stage}``: frames through it;
- ``factory_stage_rejects{job, stage}``: clips the stage turned into rejects;
- ``factory_stage_busy_seconds{job, stage}``: seconds the stage's workers spent on
  batches (``rate(busy_seconds) / workers`` is the busy fraction);
- ``factory_stage_busy_fraction{job, stage, worker}``: one worker's busy seconds over
  its lifetime so far (a gauge per actor / task process).

Queue depth per stage is Ray Data's own ``ray_data_operator_queued_blocks{operator}``
(one block per clip here). Outside a Ray worker (the tests that call the per-row
functions directly) recording is a no-op.
"""

from __future__ import annotations

import os
import time

import ray
from ray.util import metrics as ray_metrics

PREFIX = "factory_stage_"
COUNTERS = {
    "clips": "clips through the stage, rejects included",
    "frames": "frames through the stage",
    "rejects": "clips the stage turned into reject records",
    "busy_seconds": "seconds the stage's workers spent working on batches",
}
GAUGES = {"busy_fraction": "a worker's busy seconds over its lifetime so far"}
METRIC_NAMES = tuple(PREFIX + n for n in (*COUNTERS, *GAUGES))

_counters: dict[str, ray_metrics.Counter] = {}
_gauges: dict[str, ray_metrics.Gauge] = {}
_born = time.time()
_busy: dict[tuple[str, str], float] = {}


def _registered() -> bool:
    """Create this process's metric objects once (inside a Ray worker or driver)."""
    if not ray.is_initialized():
        return False
    if not _counters:
        for name, doc in COUNTERS.items():
            _counters[name] = ray_metrics.Counter(PREFIX + name, doc, tag_keys=("job", "stage"))
        for name, doc in GAUGES.items():
            _gauges[name] = ray_metrics.Gauge(
                PREFIX + name, doc, tag_keys=("job", "stage", "worker")
            )
    return True


def register() -> None:
    """Declare the metrics now (the driver calls it at a job's start, so that the names
    exist in the dashboard before the first batch)."""
    _registered()


def record(job: str, stage: str, clips: int, frames: int, rejects: int, seconds: float) -> None:
    """Count one batch of a stage: its clips, frames, rejects and busy seconds."""
    if not _registered():
        return
    tags = {"job": job, "stage": stage}
    for name, value in (
        ("clips", clips),
        ("frames", frames),
        ("rejects", rejects),
        ("busy_seconds", seconds),
    ):
        if value > 0:
            _counters[name].inc(value, tags=tags)
    busy = _busy[job, stage] = _busy.get((job, stage), 0.0) + max(seconds, 0.0)
    life = max(time.time() - _born, 1e-9)
    _gauges["busy_fraction"].set(min(1.0, busy / life), tags={**tags, "worker": str(os.getpid())})
