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


def pids_matching(text: str) -> list[int]:
    """PIDs of processes whose command line contains ``text`` (Ray sets process titles
    such as ``ray::MapWorker(MapBatches(LabelActor))``)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
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
workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
from factory.raycluster import init_ray
init_ray(address=cluster.address)
import ray
from factory.label_job import LabelOptions, run_label
from faults import wait_for_shards
removed = {}
def remover():
    if not wait_for_shards(os.path.join(out, "shards"), 1):
        return
    # the labelling actor's node if the state API answers (it may not while another Ray
    # instance runs on this machine, as the test session's own does); else the first worker:
    # a node is removed mid-run either way, never silently skipped by a dead thread
    try:
        from ray.util.state import list_actors
        nodes = {a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=1000, timeout=10) if "LabelActor" in (a.class_name or "")}
    except Exception as err:
        print(f"state API unavailable ({err}); removing the first worker node", flush=True)
        nodes = set()
    victim = next((w for w in workers if w.node_id in nodes), workers[0])
    cluster.remove_node(victim)
    removed["node"] = victim.node_id
threading.Thread(target=remover, daemon=True).start()
summary = run_label(LabelOptions(corpus=corpus, bundle=bundle, out=out, clips_per_shard=1, preview=False, actors=1))
print("RESULT " + json.dumps({"removed": removed.get("node"), "labelled": summary.labelled, "rejected": summary.rejected, "inputs": summary.inputs}), flush=True)
ray.shutdown()
cluster.shutdown()
"""
