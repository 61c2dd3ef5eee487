"""Helpers for the fault tests: a TCP proxy that can be cut, finding Ray processes, and
a driver script that labels on a simulated multi-node cluster and removes a node."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

PROXY = r"""
import asyncio, sys
listen, target = int(sys.argv[1]), int(sys.argv[2])
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data); await w.drain()
    except Exception:
        pass
    finally:
        w.close()
async def handle(r, w):
    try:
        tr, tw = await asyncio.open_connection("127.0.0.1", target)
    except OSError:
        w.close(); return
    await asyncio.gather(pipe(r, tw), pipe(tr, w))
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen, reuse_address=True)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CuttableProxy:
    """A TCP forwarder in its own process: ``cut()`` makes the endpoint unreachable
    (connections refused), ``restore()`` brings it back; the server behind it keeps its data."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target = target_port
        self.proc: subprocess.Popen | None = None
        self.restore()

    def restore(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PROXY, str(self.port), str(self.target)]
        )
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)

    def cut(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.cut()


def pids_matching(text: str, session: int | None = None) -> list[int]:
    """PIDs of processes whose command line contains ``text`` (Ray sets process titles
    such as ``ray::MapWorker(MapBatches(LabelActor))``); with ``session``, only those of
    that session: a job started with ``start_new_session=True`` and the local Ray it
    starts (its workers keep the driver's session). Without it the match is machine-wide
    and takes other tests' processes too (the multi-node driver's script names
    LabelActor: a kill by name alone once killed it, CI 2026-12-07)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            if session is not None:
                with open(f"/proc/{pid}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[3]) != session:
                        continue
        except OSError:
            continue
        if text in cmd:
            out.append(int(pid))
    return out


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_for_shards(
    folder: str, n: int, proc: subprocess.Popen | None = None, timeout: float = 600
) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (
            os.path.isdir(folder)
            and len([f for f in os.listdir(folder) if f.endswith(".parquet")]) >= n
        ):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


MULTINODE_DRIVER = r"""
import json, os, sys, threading, time
sys.path.insert(0, sys.argv[1]); sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
corpus, bundle, out = sys.argv[2:5]
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
# two CPUs a worker: the node that survives must hold the restarted labelling actor and
# still decode (with one CPU each, the actor took the survivor's only CPU and decoding
# waited forever); logical CPUs, the two physical cores are shared either way
workers = [cluster.add_node(num_cpus=2) for _ in range(2)]
from factory.pipelines.cluster import init_ray
init_ray(address=cluster.address)
import ray
from factory.jobs.label import LabelOptions, run_label
from faults import pids_matching
removed = {}
def raylet_pid(node):
    return node.all_processes["raylet"][0].process.pid
def parent_pid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None
def remover():
    # The node goes as soon as the labelling actor has run for a second or the first shard
    # is committed, whichever comes first: after the slow start-up a small corpus is
    # labelled in seconds. The actor's node is found from the process table (a worker is a
    # child of its node's raylet), not the state API, which did not answer before the run
    # ended (CI, 2026-12-04); with no actor process found, the first worker goes.
    shards, victim, seen, deadline = os.path.join(out, "shards"), None, None, time.time() + 900
    by_raylet = {raylet_pid(w): w for w in workers}
    while time.time() < deadline:
        for pid in pids_matching("LabelActor"):
            node = by_raylet.get(parent_pid(pid))
            if node is not None:
                victim, seen = node, seen or time.time()
        shard = os.path.isdir(shards) and any(f.endswith(".parquet") for f in os.listdir(shards))
        if shard or (seen is not None and time.time() - seen > 1.0):
            break
        time.sleep(0.1)
    else:
        return
    victim = victim or workers[0]
    print(f"removing node {victim.node_id} (labelling actor found: {seen is not None})", flush=True)
    cluster.remove_node(victim)
    removed["node"] = victim.node_id
threading.Thread(target=remover, daemon=True).start()
summary = run_label(LabelOptions(corpus=corpus, bundle=bundle, out=out, clips_per_shard=1, preview=False, actors=1))
print("RESULT " + json.dumps({"removed": removed.get("node"), "labelled": summary.labelled, "rejected": summary.rejected, "inputs": summary.inputs}), flush=True)
ray.shutdown()
cluster.shutdown()
"""


def kill_worker_once(net: str, epoch: int, run_dir: str, victim: str, after_epoch: int) -> None:
    """SIGKILL this training worker when ``victim`` has checkpointed ``after_epoch``, once
    per run (a marker file in the run folder says it happened)."""
    marker = os.path.join(run_dir, ".injected_failure")
    if net == victim and epoch == after_epoch and not os.path.exists(marker):
        open(marker, "w").close()
        print(f"{net}: injected failure (SIGKILL of this worker) after epoch {epoch}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)


def kill_s_after_epoch_1(net: str, epoch: int, run_dir: str) -> None:
    """The train job's ``epoch_hook`` in tests/test_train_ray.py."""
    kill_worker_once(net, epoch, run_dir, "S", 1)
