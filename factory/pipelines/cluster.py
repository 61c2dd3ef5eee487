"""Connecting to Ray: the one place that decides between a running cluster and a local one.

- Under ``ray job submit`` (or with ``RAY_ADDRESS`` / ``--address``) the job connects to
  that cluster with a bare ``ray.init()``; the job's working dir carries the code.
- Otherwise a local Ray is started for this process (``address="local"``, so it never
  attaches to another cluster on the machine by accident), with this checkout on the
  workers' ``PYTHONPATH``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import ray
from ray.data import DataContext

from factory import REPO_ROOT

log = logging.getLogger(__name__)

# A local Ray keeps an idle task worker for a minute (Ray's default: 1 s once more
# workers than CPUs exist). The jobs' stages run fractional-CPU tasks (decode 0.5,
# write 0.25) beside the model actors, so more workers than CPUs come and go all the
# time; killed after 1 s, each is started again (a Python process importing torch:
# seconds of CPU on a core the actor could use). Measured on the 2-core machine, label
# job of 32 x 4 s clips (bench/RESULTS.md): start-up 21.5 -> 14.0 s. Set as the
# raylet's environment (RAY_<name>, read by Ray's config at start; the same
# `ray.init(_system_config=...)` left it unchanged in Ray 2.60, measured): a cluster
# started with `ray start` takes it from the same variable. A value already set wins.
# Ray Train's controller polls its workers every 2 s, and a worker's report (one per
# epoch, with its checkpoint) waits for that poll (a result queue of one): an epoch
# shorter than 2 s took 2 s. Polled every 0.5 s, the train job's encoder pretraining on
# the 2-core machine (15 epochs of 0.6 s) took 42 s instead of 61 (bench/RESULTS.md).
# A local Ray is one machine, whose node is never drained: Ray Train's preemption
# watcher (one more actor process per TorchTrainer, polling the node drains every 5 s)
# has nothing to watch there; on a cluster it stays on.
LOCAL_RAYLET_ENV = {
    "RAY_idle_worker_killing_time_threshold_ms": "60000",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}


def init_ray(
    address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> bool:
    """Start or connect to Ray; returns True if this call started a local instance."""

    if ray.is_initialized():
        return False
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH", "")) if p)
    }
    if os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS"):
        env["RAY_DATA_DISABLE_PROGRESS_BARS"] = os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"]
    started = False
    connect = address != "local" and bool(address or os.environ.get("RAY_ADDRESS"))
    if connect:  # "local": a fresh local Ray, started below, never a running one
        ray.init(address=address, log_to_driver=True)
        log.info("connected to the Ray cluster at %s", address or os.environ.get("RAY_ADDRESS"))
    else:
        for name, value in LOCAL_RAYLET_ENV.items():  # inherited by the raylet ray.init starts
            os.environ.setdefault(name, value)
        ray.init(
            address="local",
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=True,  # Ray Train's controller queries the state API
            runtime_env={"env_vars": env},
            log_to_driver=True,
            configure_logging=False,
        )
        started = True
        log.info("started a local Ray with %s CPUs", ray.cluster_resources().get("CPU"))
    # The jobs print their own progress (clips, frames/s, rejects); Ray Data's periodic
    # operator tables stay off unless asked for (RAY_DATA_PROGRESS=1).
    ctx = DataContext.get_current()
    if not os.environ.get("RAY_DATA_PROGRESS"):
        ctx.enable_progress_bars = False
        ctx.enable_operator_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        # and Ray Data's own warning that the bars are off (it asks to turn them on)
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    return started


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1))


def node_cpus() -> list[float]:
    """The CPUs of each live node (an actor's reservation must fit one of them)."""
    alive = [float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")]
    return [c for c in alive if c > 0] or [cluster_cpus()]


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def ray_map(fn: Callable[..., Any], calls: list[tuple]) -> list[Any]:
    """``[fn(*args) for args in calls]`` as one-CPU Ray tasks on the cluster (started or
    joined as :func:`init_ray` decides), results in the order of ``calls``."""

    init_ray()
    remote = ray.remote(num_cpus=1)(fn)
    return ray.get([remote.remote(*args) for args in calls])
