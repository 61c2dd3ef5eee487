"""The exactly-once shard store of the label (and predict) job.

Layout under the output root (local or ``s3://``)::

    shards/part-<h>.parquet     labelled frames of a group of whole clips (zstd)
    rejects/part-<h>.parquet    reject records (input, stage, reason, remedy, uri, split)
    _manifest.json              the committed shards, their clips and row counts (end of run)
    run.json                    the run record
    rejects.parquet             all rejects in one table (end of run)

Protocol. A file *is* its commit: it is written atomically (local: temporary name +
rename; S3: the object appears when its upload completes), so a file that exists is
complete. ``<h>`` is a hash of the sorted clip keys inside it, so a retried task
rewrites the same name with the same content. A clip is committed when it is in an
existing shard or rejects file. On start, a run lists what is committed and labels
only the rest; files that overlap (possible only if a killed run's straggler finished
a write after the rerun began) are resolved by keeping, for each clip, the file with
the smallest name and deleting the others whole; clips that leave with them are
labelled again. So a run killed at any moment and started again ends with every clip
exactly once.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from factory.io import storage
from factory.io.rejects import Reject

log = logging.getLogger(__name__)

SHARDS = "shards"
REJECTS = "rejects"
REJECT_SCHEMA = pa.schema(
    [
        ("input", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("remedy", pa.string()),
        ("uri", pa.string()),
        ("split", pa.string()),
    ]
)


def shard_name(keys: Iterable[str]) -> str:
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
    return f"part-{digest}.parquet"


def write_parquet_atomic(uri: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes_atomic(uri, buf.getvalue())


def read_parquet(
    uri: str, columns: Sequence[str] | None = None, filters: list[tuple] | None = None
) -> pa.Table:
    """Read a Parquet file (only the byte ranges of ``columns`` when given; ``filters`` in
    pyarrow's DNF form skip row groups by their statistics and drop non-matching rows)."""
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=list(columns) if columns else None, filters=filters)


def parquet_columns(uri: str) -> list[str]:
    """The column names of a Parquet file (its footer only)."""
    fs, path = storage.filesystem(uri)
    with fs.open(path, "rb") as f:
        return pq.ParquetFile(f).schema_arrow.names


def rejects_table(rejects: Sequence[Reject]) -> pa.Table:
    rows = [r.to_row() for r in rejects]
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA) if rows else REJECT_SCHEMA.empty_table()


@dataclass
class Committed:
    """What the store holds: clip -> file, for shards and rejects."""

    shard_clips: dict[str, str] = field(default_factory=dict)
    reject_clips: dict[str, str] = field(default_factory=dict)
    shard_rows: dict[str, int] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)

    @property
    def keys(self) -> set[str]:
        return set(self.shard_clips) | set(self.reject_clips)


class ShardStore:
    def __init__(self, root: str) -> None:
        self.root = root

    def _files(self, kind: str) -> list[str]:
        return [f for f in storage.listdir(storage.join(self.root, kind)) if f.endswith(".parquet")]

    def scan(self) -> Committed:
        """List committed clips, resolving overlaps (see the module docstring)."""
        storage.remove_stale_temporaries(self.root)
        out = Committed()
        for kind, column, target in (
            (SHARDS, "video_id", out.shard_clips),
            (REJECTS, "input", out.reject_clips),
        ):
            for f in sorted(self._files(kind)):
                try:
                    table = read_parquet(f, [column])
                except Exception as err:  # an unreadable file cannot be a commit
                    log.warning("store: removing unreadable %s (%s)", f, err)
                    storage.remove(f)
                    out.removed.append(f)
                    continue
                clips = set(table[column].to_pylist())
                clash = [c for c in clips if c in out.shard_clips or c in out.reject_clips]
                if clash:
                    log.warning(
                        "store: %s repeats %d committed clip(s) (e.g. %s); removing it",
                        f,
                        len(clash),
                        clash[0],
                    )
                    storage.remove(f)
                    out.removed.append(f)
                    continue
                for c in clips:
                    target[c] = f
                if kind == SHARDS:
                    out.shard_rows[f] = table.num_rows
        return out

    def write_shard(self, table: pa.Table, keys: Sequence[str]) -> str:
        name = shard_name(keys)
        table = table.set_column(
            table.schema.get_field_index("shard_id"),
            "shard_id",
            pa.array([name.removesuffix(".parquet")] * table.num_rows, pa.string()),
        )
        uri = storage.join(self.root, SHARDS, name)
        write_parquet_atomic(uri, table)
        return uri

    def write_rejects(self, rejects: Sequence[Reject]) -> str:
        uri = storage.join(self.root, REJECTS, shard_name(r.input for r in rejects))
        write_parquet_atomic(uri, rejects_table(rejects))
        return uri

    def all_rejects(self) -> pa.Table:
        tables = [read_parquet(f) for f in sorted(self._files(REJECTS))]
        return pa.concat_tables(tables) if tables else REJECT_SCHEMA.empty_table()
