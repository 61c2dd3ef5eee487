"""Layer 3, the Ray layer: connecting to a cluster, the Ray Data stages and model actors,
the exactly-once shard sink, and the executors that run per-net fits on Ray Train (or in
this process)."""
