"""Corpus readers: the AVE layout, generic manifests (CSV / JSONL / Parquet), and
WebDataset-style tar shards, local or ``s3://`` (fsspec).

Every reader yields :class:`ClipRecord` rows and listing-stage rejects (a row that can
never be labelled: an empty segment, a duplicated ``video_id``, a tag outside the
vocabulary). The category vocabulary comes from the corpus, sorted, so it is the same
on every machine; a bundle stores it and the label job imposes it.
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from factory.io import storage
from factory.io.rejects import Reject

log = logging.getLogger(__name__)

TAG_SEPARATOR = "|"
AVE_ANNOTATIONS = "Annotations.txt"
AVE_SPLIT_FILES = {"train": "trainSet.txt", "val": "valSet.txt", "test": "testSet.txt"}
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
TAR_MEMBER_SEP = "::"


@dataclass(frozen=True)
class ClipRecord:
    """One input clip. ``key`` is its unique id in outputs (the ``video_id``)."""

    key: str
    uri: str  # path, s3:// URI, or "<shard.tar>::<member>@<offset>:<size>"
    tags: tuple[str, ...]
    split: str | None = None
    start_s: float | None = None
    end_s: float | None = None
    source: str = ""  # where the row came from, for error messages

    def to_row(self) -> dict:
        return {
            "key": self.key,
            "uri": self.uri,
            "tags": list(self.tags),
            "split": self.split,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "source": self.source,
        }

    @staticmethod
    def from_row(row: dict) -> ClipRecord:
        def opt(v: object) -> float | None:
            return None if v is None or (isinstance(v, float) and v != v) else float(v)  # type: ignore[arg-type]

        return ClipRecord(
            str(row["key"]),
            str(row["uri"]),
            tuple(row["tags"]),
            row.get("split") or None,
            opt(row.get("start_s")),
            opt(row.get("end_s")),
            str(row.get("source", "")),
        )


@dataclass
class Listing:
    """The clips of a corpus, the rows rejected while listing, the vocabulary."""

    records: list[ClipRecord]
    rejects: list[Reject] = field(default_factory=list)
    source: str = ""

    @property
    def vocabulary(self) -> list[str]:
        return sorted({t for r in self.records for t in r.tags})

    @property
    def num_inputs(self) -> int:
        return len(self.records) + len(self.rejects)

    def restrict_to(self, vocabulary: Sequence[str]) -> Listing:
        """Move clips with a tag outside ``vocabulary`` to the rejects."""
        known = set(vocabulary)
        keep, rejects = [], list(self.rejects)
        for r in self.records:
            unknown = [t for t in r.tags if t not in known]
            if unknown:
                rejects.append(
                    Reject(
                        r.key,
                        "listing",
                        f"unknown tag {', '.join(map(repr, unknown))} (not in the model bundle's vocabulary)",
                        "train a bundle on a corpus that has this tag, or correct the tag",
                        r.uri,
                        r.split,
                    )
                )
            else:
                keep.append(r)
        return Listing(keep, rejects, self.source)

    def filter_split(self, split: str | None) -> Listing:
        if split is None:
            return self
        with_split = [r for r in self.records if r.split is not None]
        if not with_split:
            raise ValueError(
                f"corpus {self.source!r} has no split information; drop --split {split} or add a 'split' column"
            )
        rejects = [j for j in self.rejects if j.split in (None, split)]
        return Listing([r for r in self.records if r.split == split], rejects, self.source)

    def sorted(self) -> Listing:
        return Listing(sorted(self.records, key=lambda r: r.key), list(self.rejects), self.source)


def _dedupe(records: Iterable[ClipRecord]) -> tuple[list[ClipRecord], list[Reject]]:
    seen: dict[str, ClipRecord] = {}
    out, rejects = [], []
    for r in records:
        if r.key in seen:
            rejects.append(
                Reject(
                    r.key + f"#{r.source}",
                    "listing",
                    f"duplicated video_id {r.key!r} (first at {seen[r.key].source})",
                    "give every row a unique video_id",
                    r.uri,
                    r.split,
                )
            )
            continue
        seen[r.key] = r
        out.append(r)
    return out, rejects


def _segment_reject(r: ClipRecord) -> Reject | None:
    if r.start_s is not None and r.start_s < 0:
        return Reject(
            r.key,
            "listing",
            f"start_s {r.start_s} is negative",
            "use a start time >= 0",
            r.uri,
            r.split,
        )
    if r.start_s is not None and r.end_s is not None and r.end_s <= r.start_s:
        return Reject(
            r.key,
            "listing",
            f"empty segment [{r.start_s:g}, {r.end_s:g}] s",
            "give an end time after the start time",
            r.uri,
            r.split,
        )
    if not r.tags:
        return Reject(
            r.key, "listing", "no tag", "every clip needs at least one category tag", r.uri, r.split
        )
    return None


def _finish(records: list[ClipRecord], rejects: list[Reject], source: str) -> Listing:
    keep = []
    for r in records:
        bad = _segment_reject(r)
        if bad is None:
            keep.append(r)
        else:
            rejects.append(bad)
    keep, dupes = _dedupe(keep)
    return Listing(keep, rejects + dupes, source)


# --------------------------------------------------------------------------- AVE


def _parse_ave_line(line: str) -> tuple[str, str, str, float, float] | None:
    """``Category&VideoID&Quality&StartTime&EndTime``; categories contain spaces and
    commas but not '&', so split from the right."""
    parts = line.rstrip("\r\n").rsplit("&", 4)
    if len(parts) != 5:
        return None
    category, vid, quality, start, end = parts
    try:
        return category.strip(), vid.strip(), quality.strip(), float(start), float(end)
    except ValueError:
        return None  # the header line ("Category&VideoID&Quality&StartTime&EndTime")


def read_ave(root: str) -> Listing:
    """An AVE folder: ``Annotations.txt`` (header line, then rows), videos named by ID
    under ``AVE/`` (the release's layout) or next to the annotations, and the split files
    ``trainSet.txt`` / ``valSet.txt`` / ``testSet.txt`` when present."""
    ann_uri = storage.join(root, AVE_ANNOTATIONS)
    lines = storage.read_bytes(ann_uri).decode("utf-8-sig").splitlines()
    splits: dict[str, str] = {}
    for split, name in AVE_SPLIT_FILES.items():
        uri = storage.join(root, name)
        if storage.exists(uri):
            for line in storage.read_bytes(uri).decode("utf-8-sig").splitlines():
                row = _parse_ave_line(line)
                if row:
                    splits[row[1]] = split
    video_dir = storage.join(root, "AVE") if storage.exists(storage.join(root, "AVE")) else root
    records, rejects = [], []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = _parse_ave_line(line)
        if row is None:
            if lineno > 1:
                rejects.append(
                    Reject(
                        f"{AVE_ANNOTATIONS}:{lineno}",
                        "listing",
                        f"unparseable annotation line {line!r}",
                        "expected Category&VideoID&Quality&StartTime&EndTime",
                    )
                )
            continue
        category, vid, _quality, start, end = row
        records.append(
            ClipRecord(
                vid,
                storage.join(video_dir, f"{vid}.mp4"),
                (category,),
                splits.get(vid),
                start,
                end,
                f"{AVE_ANNOTATIONS}:{lineno}",
            )
        )
    return _finish(records, rejects, root)


# --------------------------------------------------------------------- manifests


def _read_table(uri: str) -> pa.Table:
    data = storage.read_bytes(uri)
    try:
        return _parse_table(uri, data)
    except pa.ArrowInvalid as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(
            f"manifest {uri!r}: not readable ({first}); fix the file (CSV: one header row, quoted fields closed)"
        ) from err


def _parse_table(uri: str, data: bytes) -> pa.Table:
    lower = uri.lower()
    if lower.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data))
    if lower.endswith(".csv"):
        opts = pacsv.ConvertOptions(
            column_types={
                "video_id": pa.string(),
                "tag": pa.string(),
                "video": pa.string(),
                "split": pa.string(),
            }
        )
        return pacsv.read_csv(io.BytesIO(data), convert_options=opts)
    if lower.endswith((".jsonl", ".json")):
        return pajson.read_json(io.BytesIO(data))
    raise ValueError(f"manifest {uri!r}: unknown format (expected .csv, .jsonl or .parquet)")


def read_manifest(uri: str) -> Listing:
    """A table with ``video`` (path or URI; relative paths are relative to the manifest)
    and ``tag`` (several separated by ``|``), optional ``video_id``, ``split``,
    ``start_s``, ``end_s``."""
    table = _read_table(uri)
    missing = {"video", "tag"} - set(table.column_names)
    if missing:
        raise ValueError(
            f"manifest {uri!r} lacks column(s) {sorted(missing)}; it needs 'video' and 'tag'"
        )
    base = storage.parent(uri)
    records, rejects = [], []
    for i, row in enumerate(table.to_pylist(), start=2 if uri.lower().endswith(".csv") else 1):
        video = row.get("video")
        if not video:
            rejects.append(
                Reject(
                    f"{os.path.basename(uri)}:{i}",
                    "listing",
                    "empty 'video' field",
                    "give a path or URI",
                )
            )
            continue
        video = str(video)
        if "://" not in video and not os.path.isabs(video):
            video = storage.join(base, video)
        vid = str(row.get("video_id") or posixpath.splitext(posixpath.basename(video))[0])
        tags = tuple(t.strip() for t in str(row.get("tag") or "").split(TAG_SEPARATOR) if t.strip())
        records.append(
            ClipRecord(
                vid,
                video,
                tags,
                row.get("split") or None,
                _opt_float(row.get("start_s")),
                _opt_float(row.get("end_s")),
                f"{os.path.basename(uri)}:{i}",
            )
        )
    return _finish(records, rejects, uri)


def _opt_float(v: object) -> float | None:
    if v is None or v == "":
        return None
    f = float(v)  # type: ignore[arg-type]
    return None if f != f else f


# -------------------------------------------------------------------- tar shards


def tar_member_uri(shard: str, member: str, offset: int, size: int) -> str:
    return f"{shard}{TAR_MEMBER_SEP}{member}@{offset}:{size}"


def parse_tar_member_uri(uri: str) -> tuple[str, str, int, int] | None:
    if TAR_MEMBER_SEP not in uri:
        return None
    shard, rest = uri.rsplit(TAR_MEMBER_SEP, 1)
    member, span = rest.rsplit("@", 1)
    offset, size = span.split(":")
    return shard, member, int(offset), int(size)


def list_tar_shards(src: str) -> list[str]:
    fs, path = storage.filesystem(src)
    if any(ch in path for ch in "*?["):
        paths = sorted(fs.glob(path))
    elif fs.isdir(path):
        paths = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".tar"))
    else:
        paths = [path] if path.endswith(".tar") and fs.isfile(path) else []
    prefix = src.split("://", 1)[0] + "://" if storage.is_remote(src) else ""
    return [prefix + p if prefix and not p.startswith(prefix) else p for p in paths]


def read_tar_shards(src: str, tag_field: str = "tag") -> Listing:
    """WebDataset-style shards: ``KEY.mp4`` beside ``KEY.json`` whose ``tag_field`` holds
    the tag (a string, ``|``-separated, or a list); optional ``split``, ``start_s``,
    ``end_s``, ``video_id`` fields. Headers are read in a stream; a video is later read
    by its byte range, so listing never loads a video."""
    records, rejects = [], []
    for shard in list_tar_shards(src):
        fs, path = storage.filesystem(shard)
        videos: dict[str, tuple[str, int, int]] = {}
        metas: dict[str, dict] = {}
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = os.path.splitext(member.name)
                if ext.lower() in VIDEO_EXTENSIONS:
                    videos[key] = (member.name, member.offset_data, member.size)
                elif ext.lower() == ".json":
                    raw = tar.extractfile(member)
                    try:
                        metas[key] = json.loads(raw.read().decode()) if raw else {}
                    except (json.JSONDecodeError, UnicodeDecodeError) as err:
                        rejects.append(
                            Reject(
                                f"{os.path.basename(path)}::{member.name}",
                                "listing",
                                f"unreadable JSON: {err}",
                                "fix the shard's metadata file",
                            )
                        )
        for key in sorted(set(videos) | set(metas)):
            ref = f"{os.path.basename(path)}::{key}"
            if key not in videos:
                rejects.append(
                    Reject(
                        ref,
                        "listing",
                        "metadata without a video member",
                        f"add {key}.mp4 to the shard",
                    )
                )
                continue
            meta = metas.get(key)
            if meta is None:
                rejects.append(
                    Reject(
                        ref,
                        "listing",
                        "video without a .json metadata member",
                        f"add {key}.json with a {tag_field!r} field",
                    )
                )
                continue
            tag_value = meta.get(tag_field)
            tags = (
                tuple(tag_value)
                if isinstance(tag_value, list)
                else tuple(
                    t.strip() for t in str(tag_value or "").split(TAG_SEPARATOR) if t.strip()
                )
            )
            member, offset, size = videos[key]
            records.append(
                ClipRecord(
                    str(meta.get("video_id") or posixpath.basename(key)),
                    tar_member_uri(shard, member, offset, size),
                    tags,
                    meta.get("split"),
                    _opt_float(meta.get("start_s")),
                    _opt_float(meta.get("end_s")),
                    ref,
                )
            )
    return _finish(records, rejects, src)


# ------------------------------------------------------------------------ detect


def read_corpus(src: str, split: str | None = None, tag_field: str = "tag") -> Listing:
    """Read any supported corpus: an AVE folder, a manifest file, or tar shards (a
    folder, a glob, or one ``.tar``). ``split`` keeps only that split."""
    lower = src.lower().rstrip("/")
    if not any(ch in src for ch in "*?[") and not storage.exists(src):
        raise ValueError(f"corpus {src!r}: not found; check the path (local or s3://)")
    if lower.endswith((".csv", ".jsonl", ".json", ".parquet")):
        listing = read_manifest(src)
    elif lower.endswith(".tar") or any(ch in src for ch in "*?["):
        listing = read_tar_shards(src, tag_field)
    elif storage.exists(storage.join(src, AVE_ANNOTATIONS)):
        listing = read_ave(src)
    elif list_tar_shards(src):
        listing = read_tar_shards(src, tag_field)
    else:
        raise ValueError(
            f"corpus {src!r}: not a manifest (.csv/.jsonl/.parquet), AVE folder (with {AVE_ANNOTATIONS}) or tar shard(s); see --help"
        )
    listing = listing.filter_split(split)
    log.info(
        "corpus %s: %d clips, %d rejected while listing, %d tags",
        src,
        len(listing.records),
        len(listing.rejects),
        len(listing.vocabulary),
    )
    return listing.sorted()
