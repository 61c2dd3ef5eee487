"""Multigranularity windows, the per-tag pool, input gathering, the synthetic world."""

import json
import os

import numpy as np
import pytest
import torch

from factory.io.corpus import ClipRecord
from factory.io.synthetic import SyntheticConfig, generate, load_ground_truth
from factory.method.inputs import WindowSettings, gather_inputs, graph_nodes
from factory.method.pool import PoolEntries, build_sketch, cross_term, group_centres
from factory.method.windows import (
    long_term,
    short_term,
    stable_hash,
    target_frames,
    triplet,
    window_rng,
)
from models.registry import NETS


class TestWindows:
    def test_triplet_clamps_at_edges(self):
        assert triplet(0, 10).tolist() == [0, 0, 1]
        assert triplet(9, 10).tolist() == [8, 9, 9]

    def test_short_term_single_frames_and_groups(self):
        assert short_term(10, 30, 2, groups=False).tolist() == [9, 11]
        # groups of 3 centred at t-3 and t+3 cover t-4..t+4 exactly
        assert short_term(10, 30, 2, groups=True).tolist() == [7, 13]
        assert short_term(10, 30, 4, groups=False).tolist() == [9, 11, 8, 12]

    @pytest.mark.parametrize("groups", [False, True])
    def test_long_term_outside_short_span(self, groups):
        rng = window_rng(0, "clip", 12, "long")
        centres, fell_back = long_term(12, 40, 2, groups, rng)
        margin = 5 if not groups else 6  # whole groups outside t-4..t+4
        assert not fell_back and all(abs(c - 12) >= margin for c in centres)
        if groups:
            assert all(1 <= c <= 38 for c in centres)

    def test_long_term_fallback_on_short_clip(self):
        centres, fell_back = long_term(2, 5, 2, False, window_rng(0, "c", 2, "long"))
        assert fell_back and len(centres) == 2

    def test_seeded_and_order_independent(self):
        """The same seed gives the same windows whatever the order or worker."""
        a = [
            long_term(t, 50, 2, False, window_rng(7, "clip-x", t, "long"))[0].tolist()
            for t in range(50)
        ]
        b = [
            long_term(t, 50, 2, False, window_rng(7, "clip-x", t, "long"))[0].tolist()
            for t in reversed(range(50))
        ][::-1]
        assert a == b
        c = [
            long_term(t, 50, 2, False, window_rng(8, "clip-x", t, "long"))[0].tolist()
            for t in range(50)
        ]
        assert a != c
        assert stable_hash("abc") == stable_hash("abc") != stable_hash("abd")

    def test_training_targets(self):
        t1 = target_frames("k", 30, 8, 0, epoch=1)
        assert len(set(t1.tolist())) == 8 and (t1 == target_frames("k", 30, 8, 0, epoch=1)).all()
        assert not (t1 == target_frames("k", 30, 8, 0, epoch=2)).all()
        assert target_frames("k", 5, 8, 0, 0).tolist() == [0, 1, 2, 3, 4]


def records(n_per_tag, tags=("A", "B")):
    return [
        ClipRecord(f"{t}{i:03d}", f"/x/{t}{i}.mp4", (t,)) for t in tags for i in range(n_per_tag)
    ]


class TestPool:
    def test_bottom_k_is_order_and_partition_independent(self):
        recs = records(50)
        whole = build_sketch(recs, 4, seed=3)
        shuffled = build_sketch(
            [recs[i] for i in np.random.default_rng(0).permutation(len(recs))], 4, seed=3
        )
        # two workers, each seeing half, merged
        merged = build_sketch(recs[::2], 4, 3).merge(build_sketch(recs[1::2], 4, 3))
        for tag in ("A", "B"):
            assert whole.candidates(tag) == shuffled.candidates(tag) == merged.candidates(tag)
            assert len(whole.candidates(tag)) <= 4 + 2  # bounded memory: k plus spares
        assert whole.candidates("A") != build_sketch(recs, 4, seed=4).candidates("A")

    def test_cross_term_excludes_the_target_clip(self):
        pool = PoolEntries(["a", "a", "b", "c"], {"x": np.arange(4)})
        rng = np.random.default_rng(0)
        for _ in range(20):
            picks = cross_term(pool, "a", 2, rng)
            assert picks is not None and all(pool.keys[i] != "a" for i in picks)
        assert cross_term(PoolEntries(["a"], {"x": np.arange(1)}), "a", 2, rng) is None
        assert cross_term(None, "a", 2, rng) is None

    def test_group_centres(self):
        assert group_centres(24, 2).tolist() == [8, 15]
        assert all(1 <= c <= 22 for c in group_centres(24, 5))


class TestGather:
    def feats(self, t=20):
        g = torch.Generator().manual_seed(0)
        return {
            "F4": torch.randn(t, 6, 4, 4, generator=g),
            "F5": torch.randn(t, 8, 4, 4, generator=g),
            "plus": torch.arange(t, dtype=torch.float32)
            .view(t, 1, 1, 1)
            .expand(t, 5, 4, 4)
            .clone(),
            "audio": torch.randn(t, 7, generator=g),
            "gate": torch.ones(t),
        }

    def test_a_pair_net_trains_on_its_own_term_a_shared_net_on_all(self):
        from factory.config import preset
        from factory.train.loop import NetTask, TrainingClip

        f = {**self.feats(), "gate": torch.ones(20)}
        clip = TrainingClip("k", [0], f, has_audio=True)
        targets = np.arange(6, 14)
        p = preset("tiny")
        pair = NetTask("ST+long", 2, p)
        assert pair.terms == ("long",)
        (inputs, labels), *rest = pair.examples(clip, 0, targets)
        assert not rest and len(labels) == len(targets)  # every target, long term
        # long-term groups lie outside the short-term span t-4..t+4 of their target
        centres = inputs["image"][:, 1:, 1, 0, 0, 0]  # the plus feature holds the frame index
        assert ((centres - torch.as_tensor(targets)[:, None]).abs() > 4).all()
        shared = NetTask("ST+", 2, p)
        assert shared.terms == ("short", "long", "cross")
        parts = shared.examples(clip, 0, targets)  # the terms take turns (no pool: no cross)
        assert sum(len(y) for _, y in parts) < len(targets) and len(parts) == 2

    def test_single_frame_nets(self):
        f = self.feats()
        inputs, valid = gather_inputs(NETS["ST"].spec, f, np.array([0, 5]))
        assert inputs["image"].shape == (2, 3, 8, 4, 4) and valid.all()
        assert torch.equal(inputs["image"][1], f["F5"][[4, 5, 6]])
        inputs, _ = gather_inputs(NETS["SA"].spec, f, np.array([3]))
        assert set(inputs) == {"image", "audio", "gate"} and torch.equal(
            inputs["audio"][0], f["audio"][3]
        )

    def test_plus_net_terms(self):
        f = self.feats()
        s = WindowSettings(nodes=2)
        inputs, _ = gather_inputs(
            NETS["ST+"].spec, f, np.array([10]), term="short", key="k", settings=s
        )
        # node frames: target group 9-11, then groups centred at 7 and 13
        assert inputs["image"][0, :, :, 0, 0, 0].tolist() == [[9, 10, 11], [6, 7, 8], [12, 13, 14]]
        pool = PoolEntries(
            ["other", "other"],
            {
                "plus": np.full((2, 3, 5, 4, 4), 100.0, np.float32),
                "audio": np.zeros((2, 7), np.float32),
                "gate": np.ones(2, np.float32),
            },
        )
        inputs, valid = gather_inputs(
            NETS["SA+"].spec, f, np.array([3, 4]), term="cross", key="k", settings=s, pool=pool
        )
        assert valid.all() and inputs["image"].shape == (2, 3, 1, 5, 4, 4)
        assert (inputs["image"][:, 1:] == 100).all() and inputs["image"][0, 0, 0, 0, 0, 0] == 3
        _, valid = gather_inputs(
            NETS["S+"].spec, f, np.array([3]), term="cross", key="other", settings=s, pool=pool
        )
        assert not valid.any()  # the pool holds only the target's own clip
        centres, _, _ = graph_nodes(NETS["S+"].spec, "k", 20, 10, "long", s, None)
        assert centres[0] == 10 and all(abs(c - 10) >= 5 for c in centres[1:])


class TestSyntheticWorld:
    def test_deterministic_and_complete(self, tmp_path):
        cfg = SyntheticConfig(
            num_tags=2, clips_per_tag=2, seconds=1.0, seed=11, no_audio_stream=1, multi_tag_clips=1
        )
        m1 = generate(str(tmp_path / "a"), cfg)
        m2 = generate(str(tmp_path / "b"), cfg)
        assert [c["video_id"] for c in m1["clips"]] == [c["video_id"] for c in m2["clips"]]
        for c in m1["clips"]:
            g1 = load_ground_truth(str(tmp_path / "a"), c["video_id"])
            g2 = load_ground_truth(str(tmp_path / "b"), c["video_id"])
            assert np.array_equal(g1["maps"], g2["maps"]) and np.array_equal(
                g1["fixations"], g2["fixations"]
            )
        kinds = {c["kind"] for c in m1["clips"]}
        assert {"no_audio_stream", "multi_tag"} <= kinds
        multi = next(c for c in m1["clips"] if c["kind"] == "multi_tag")
        assert len(multi["tag"].split("|")) == 2
        with open(tmp_path / "a" / "manifest.csv") as f:
            assert f.readline().startswith("video,tag,video_id,split,start_s,end_s")
        meta = json.loads((tmp_path / "a" / "synthetic.json").read_text())
        assert meta["config"]["seed"] == 11

    def test_ground_truth_sits_on_the_event_object(self, tiny_corpus):
        from factory.config import preset
        from factory.io.corpus import read_corpus
        from factory.io.decode import decode_clip
        from factory.io.synthetic import tag_color

        root, meta = tiny_corpus
        p = preset("tiny")
        clip = next(c for c in meta["clips"] if c["kind"] == "normal")
        rec = next(
            r
            for r in read_corpus(os.path.join(root, "manifest.csv")).records
            if r.key == clip["video_id"]
        )
        frames = decode_clip(rec, p.frames, p.spectrogram).frames
        gt = load_ground_truth(root, clip["video_id"])
        tag = meta["tags"].index(clip["tag"])
        color = tag_color(tag, len(meta["tags"]))
        for k in (0, len(frames) // 2):
            y, x = np.unravel_index(gt["maps"][k].argmax(), gt["maps"][k].shape)
            patch = (
                frames[k, max(0, y - 3) : y + 4, max(0, x - 3) : x + 4].reshape(-1, 3).astype(float)
            )
            # the event object is striped: its colour or its darker stripe
            dist = np.minimum(np.abs(patch - color).sum(1), np.abs(patch - color * 0.45).sum(1))
            assert dist.min() < 60
            assert gt["fixations"][k].sum() > 0


def test_harder_world_knobs_are_in_the_files(tmp_path):
    """Every knob of the Table 1 world shows in the written files: frame sizes and
    rates, audio rates, stereo, no audio stream, shared hues with different shapes,
    occlusion; ground truth at each clip's own size and rate; deterministic, down to
    the files' bytes (a world written twice is one world)."""
    import hashlib

    import av

    from factory.io.synthetic import TABLE1_WORLD, tag_color, tag_shape

    cfg = TABLE1_WORLD.replace(num_tags=4, clips_per_tag=3, seconds=1.0, no_audio=0.3)
    meta = generate(str(tmp_path / "w"), cfg)
    again = generate(str(tmp_path / "w2"), cfg)
    assert meta["clips"] == again["clips"]
    for c in meta["clips"]:
        first, second = (
            (root / c["video"]).read_bytes() for root in (tmp_path / "w", tmp_path / "w2")
        )
        assert hashlib.md5(first).digest() == hashlib.md5(second).digest(), c["video_id"]
    # two tags of one hue differ in shape (palette 4 with 4 tags: one hue each here)
    assert np.allclose(tag_color(0, 8, 4), tag_color(4, 8, 4))
    assert tag_shape(0, 4) != tag_shape(4, 4)
    sizes, rates, layouts = set(), set(), set()
    for c in meta["clips"]:
        g = load_ground_truth(str(tmp_path / "w"), c["video_id"])
        with av.open(str(tmp_path / "w" / c["video"])) as f:
            v = f.streams.video[0]
            assert (v.height, v.width) == (c["height"], c["width"])
            assert g["maps"].shape[1:] == (c["height"], c["width"])
            assert len(g["times"]) == round(cfg.seconds * c["fps"])
            if c["kind"] == "no_audio_stream":
                assert not f.streams.audio
            else:
                a = f.streams.audio[0]
                assert a.rate == c["audio_rate"]
                rates.add(a.rate)
                layouts.add(a.layout.name)
                assert (a.layout.name == "stereo") == c["stereo"]
        sizes.add((c["height"], c["width"]))
        assert c["foreign_objects"] == (0 if c["kind"] == "multi_tag" else cfg.foreign_objects)
    assert len(sizes) >= 3 and rates == {44_100, 48_000} and layouts == {"mono", "stereo"}
    assert any(c["occlusion"] for c in meta["clips"])
    assert any(c["kind"] == "no_audio_stream" for c in meta["clips"])
    assert all(c["camera_motion"] > 0 for c in meta["clips"])


def test_holdout_is_stratified_seeded_and_never_takes_a_whole_tag():
    from factory.train.feature_cache import holdout_keys

    recs = [ClipRecord(f"{t}{i}", f"/x/{t}{i}.mp4", (t,)) for t in "abc" for i in range(5)]
    recs.append(ClipRecord("lonely", "/x/l.mp4", ("d",)))  # a tag with one clip stays in training
    held = holdout_keys(recs, 0.3, seed=0)
    # round(0.3 * 5) = 2 per tag of five clips, none from the single-clip tag
    assert sorted(k[0] for k in held) == ["a", "a", "b", "b", "c", "c"]
    assert holdout_keys(list(reversed(recs)), 0.3, seed=0) == held  # order-independent
    assert holdout_keys(recs, 0.3, seed=1) != held  # the seed chooses
    # a tiny fraction still holds out one clip per tag; a large one never all of them
    assert len(holdout_keys(recs, 0.01, seed=0)) == 3
    assert len(holdout_keys(recs, 0.99, seed=0)) == 12
    assert holdout_keys(recs, 0.0, seed=0) == []
