"""Corpus readers: AVE layout, manifests, tar shards, splits, vocabulary, listing rejects."""

import io
import json
import os
import tarfile
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory.io.corpus import read_corpus, read_tar_shards

AVE_HEADER = "Category&VideoID&Quality&StartTime&EndTime"


def write_ave(root, rows, splits=None):
    os.makedirs(os.path.join(root, "AVE"), exist_ok=True)
    with open(os.path.join(root, "Annotations.txt"), "w") as f:
        f.write(AVE_HEADER + "\n")
        for r in rows:
            f.write("&".join(map(str, r)) + "\n")
    for name, split_rows in (splits or {}).items():
        with open(os.path.join(root, name), "w") as f:
            f.write(AVE_HEADER + "\n")
            for r in split_rows:
                f.write("&".join(map(str, r)) + "\n")


class TestAVE:
    def test_header_commas_spaces_and_zero_segment(self, tmp_path):
        rows = [
            ("Baby cry, infant cry", "vid001", "good", 0, 10),
            ("Church bell", "vid002", "good", 2, 7),
            ("Race car, auto racing", "vid003", "good", 0, 0),  # the real 0&0 row
        ]
        write_ave(tmp_path, rows, {"trainSet.txt": rows[:1], "testSet.txt": rows[1:2]})
        listing = read_corpus(str(tmp_path))
        keys = {r.key: r for r in listing.records}
        assert set(keys) == {"vid001", "vid002"}
        assert keys["vid001"].tags == ("Baby cry, infant cry",)
        assert keys["vid001"].split == "train" and keys["vid002"].split == "test"
        assert keys["vid002"].start_s == 2 and keys["vid002"].end_s == 7
        assert keys["vid001"].uri.endswith(os.path.join("AVE", "vid001.mp4"))
        [reject] = listing.rejects
        assert (
            reject.input == "vid003"
            and reject.stage == "listing"
            and "empty segment" in reject.reason
        )
        assert listing.num_inputs == 3

    def test_split_filter(self, tmp_path):
        rows = [("Bark", f"v{i}", "good", 0, 10) for i in range(4)]
        write_ave(tmp_path, rows, {"trainSet.txt": rows[:3], "valSet.txt": rows[3:]})
        assert [r.key for r in read_corpus(str(tmp_path), split="val").records] == ["v3"]
        assert len(read_corpus(str(tmp_path), split="train").records) == 3

    def test_unparseable_line_is_a_reject(self, tmp_path):
        write_ave(tmp_path, [("Bark", "v1", "good", 0, 10)])
        with open(os.path.join(tmp_path, "Annotations.txt"), "a") as f:
            f.write("this line is broken\n")
        listing = read_corpus(str(tmp_path))
        assert len(listing.records) == 1
        assert any("unparseable" in r.reason for r in listing.rejects)


class TestManifest:
    ROWS: ClassVar[list[dict]] = [
        {
            "video": "a.mp4",
            "tag": "Flute",
            "video_id": None,
            "split": "train",
            "start_s": 0.0,
            "end_s": 2.0,
        },
        {
            "video": "b.mp4",
            "tag": "Bark|Flute",
            "video_id": "clip-b",
            "split": "val",
            "start_s": None,
            "end_s": None,
        },
        {
            "video": "s3://bucket/c.mp4",
            "tag": "Goat",
            "video_id": None,
            "split": "train",
            "start_s": 1.0,
            "end_s": 3.0,
        },
    ]

    @pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
    def test_formats(self, tmp_path, fmt):
        path = tmp_path / f"m.{fmt}"
        if fmt == "csv":
            with open(path, "w") as f:
                f.write("video,tag,video_id,split,start_s,end_s\n")
                for r in self.ROWS:
                    f.write(
                        ",".join(
                            "" if r.get(k) is None else str(r[k])
                            for k in ("video", "tag", "video_id", "split", "start_s", "end_s")
                        )
                        + "\n"
                    )
        elif fmt == "jsonl":
            with open(path, "w") as f:
                for r in self.ROWS:
                    f.write(json.dumps(r) + "\n")
        else:
            pq.write_table(pa.Table.from_pylist(self.ROWS), path)
        listing = read_corpus(str(path))
        keys = {r.key: r for r in listing.records}
        assert set(keys) == {"a", "clip-b", "c"}
        assert keys["clip-b"].tags == ("Bark", "Flute")
        assert keys["a"].uri == os.path.join(str(tmp_path), "a.mp4")  # relative to the manifest
        assert keys["c"].uri == "s3://bucket/c.mp4"
        assert listing.vocabulary == ["Bark", "Flute", "Goat"]  # sorted, deterministic
        assert [r.key for r in read_corpus(str(path), split="val").records] == ["clip-b"]

    def test_missing_columns_is_a_clear_error(self, tmp_path):
        path = tmp_path / "m.csv"
        path.write_text("path,label\nx.mp4,Bark\n")
        with pytest.raises(ValueError, match="needs 'video' and 'tag'"):
            read_corpus(str(path))

    def test_duplicates_and_unknown_tags_become_rejects(self, tmp_path):
        path = tmp_path / "m.csv"
        path.write_text("video,tag,video_id\na.mp4,Bark,x\nb.mp4,Bark,x\nc.mp4,Unicorn,y\n")
        listing = read_corpus(str(path))
        assert [r.key for r in listing.records] == ["x", "y"]
        [dup] = listing.rejects
        assert "duplicated video_id 'x'" in dup.reason and dup.remedy
        restricted = listing.restrict_to(["Bark"])
        assert [r.key for r in restricted.records] == ["x"]
        unknown = [r for r in restricted.rejects if "unknown tag" in r.reason]
        assert len(unknown) == 1 and unknown[0].input == "y" and "'Unicorn'" in unknown[0].reason
        assert restricted.num_inputs == 3  # every input still accounted for

    def test_split_on_a_corpus_without_splits(self, tmp_path):
        path = tmp_path / "m.csv"
        path.write_text("video,tag\na.mp4,Bark\n")
        with pytest.raises(ValueError, match="no split information"):
            read_corpus(str(path), split="train")

    def test_unknown_source(self, tmp_path):
        with pytest.raises(ValueError, match=r"not a manifest .*AVE folder"):
            read_corpus(str(tmp_path))


def make_shard(path, items, tag_field="tag"):
    with tarfile.open(path, "w") as tar:
        for key, video_bytes, meta in items:
            for name, data in (
                (f"{key}.mp4", video_bytes),
                (
                    f"{key}.json",
                    json.dumps({tag_field: meta}).encode() if meta is not None else None,
                ),
            ):
                if data is None:
                    continue
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


class TestTarShards:
    def test_listing_and_byte_range_decode(self, tmp_path, tiny_corpus):
        from factory.config import preset
        from factory.io.decode import decode_clip

        root, meta = tiny_corpus
        clips = meta["clips"][:3]
        items = [(c["video_id"], Path(root, c["video"]).read_bytes(), c["tag"]) for c in clips]
        items.append(("orphan", b"not a video", None))  # a video without metadata
        make_shard(tmp_path / "shard-000.tar", items[:2])
        make_shard(tmp_path / "shard-001.tar", items[2:])
        listing = read_corpus(str(tmp_path))
        assert sorted(r.key for r in listing.records) == sorted(c["video_id"] for c in clips)
        assert any("without a .json" in r.reason for r in listing.rejects)
        p = preset("tiny")
        rec = listing.records[0]
        clip = decode_clip(rec, p.frames, p.spectrogram)
        assert clip.frames.shape[1:] == (p.frames.height, p.frames.width, 3) and clip.has_audio

    def test_configurable_tag_field_and_glob(self, tmp_path, tiny_corpus):
        root, meta = tiny_corpus
        c = meta["clips"][0]
        make_shard(
            tmp_path / "part-a.tar",
            [(c["video_id"], Path(root, c["video"]).read_bytes(), c["tag"])],
            tag_field="label",
        )
        listing = read_tar_shards(str(tmp_path / "part-*.tar"), tag_field="label")
        assert [r.tags for r in listing.records] == [tuple(c["tag"].split("|"))]


@pytest.mark.s3
def test_manifest_and_video_from_s3(tiny_corpus, s3_bucket):
    """One real s3:// read: manifest and videos on a local S3-compatible server."""
    from conftest import copy_tree_to_s3

    from factory.config import preset
    from factory.io.decode import decode_clip

    root, meta = tiny_corpus
    copy_tree_to_s3(root, f"{s3_bucket}/corpus")
    listing = read_corpus(f"{s3_bucket}/corpus/manifest.csv")
    assert len(listing.records) == len(meta["clips"])
    rec = listing.records[0]
    assert rec.uri.startswith(f"{s3_bucket}/corpus/videos/")
    p = preset("tiny")
    clip = decode_clip(rec, p.frames, p.spectrogram)
    local = decode_clip(
        read_corpus(os.path.join(root, "manifest.csv")).records[0], p.frames, p.spectrogram
    )
    assert (clip.frames == local.frames).all()
