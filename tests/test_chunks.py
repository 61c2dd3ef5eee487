"""Long videos in bounded memory (factory.method.chunks): a clip longer than max_frames is
labelled and predicted chunk by chunk, and its maps equal the whole clip's."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from factory.io.corpus import read_corpus
from factory.io.decode import ClipTooLong, decode_clip, frame_count
from factory.io.synthetic import SyntheticConfig, generate
from factory.method.bundle import load_bundle
from factory.method.chunks import label_in_chunks, plan, predict_in_chunks
from factory.method.inputs import WindowSettings
from factory.method.labeler import Labeler
from factory.method.pool import PoolSource
from factory.method.windows import halo, long_pool_centres, long_term, window_rng
from factory.train.prepare import decoded_pool_entries

# Clips of 5 s (40 frames at 8 fps) of the tiny bundle's three tags.
LONG_WORLD = SyntheticConfig(num_tags=3, clips_per_tag=2, seconds=5.0, seed=41)


def test_plan_by_hand():
    assert [(c.own, c.window) for c in plan(20, 10, 2)] == [
        ((0, 6), (0, 8)),
        ((6, 12), (4, 14)),
        ((12, 18), (10, 20)),
        ((18, 20), (16, 20)),
    ]
    assert [(c.own, c.window) for c in plan(10, 10, 2)] == [((0, 10), (0, 10))]
    chunks = plan(100, 30, 6)
    assert all(c.window[1] - c.window[0] <= 30 for c in chunks)  # bounded
    own = np.concatenate([np.arange(*c.own) for c in chunks])
    assert (own == np.arange(100)).all()  # every frame owned once, in order
    assert chunks[3].rows == slice(6, 24)
    with pytest.raises(ValueError, match="max_frames"):
        plan(100, 12, 6)
    assert halo(2) == 4 + 2 and halo(4) == 7 + 2  # short-term groups + 2 smoothing frames


def test_long_term_draws_from_the_long_pool():
    assert (long_pool_centres(10, 64) == np.arange(10)).all()  # short clip: every frame
    pool = long_pool_centres(1000, 8)
    assert len(pool) == 8 and pool[0] == 0 and pool[-1] == 999  # spread over the clip
    rng = window_rng(0, "k", 500, "long")
    centres, fell_back = long_term(500, 1000, 2, False, rng, centres=pool)
    assert not fell_back and set(centres) <= set(pool)
    assert all(abs(c - 500) >= 5 for c in centres)  # outside the short-term span
    # every frame as the pool: the draw of the whole clip, unchanged
    a = long_term(12, 40, 2, True, window_rng(3, "k", 12, "long"))[0]
    b = long_term(12, 40, 2, True, window_rng(3, "k", 12, "long"), centres=np.arange(40))[0]
    assert (a == b).all()


@pytest.fixture(scope="module")
def long_corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("long"))
    generate(root, LONG_WORLD)
    return root, read_corpus(os.path.join(root, "manifest.csv"))


def _preset(bundle_preset, max_frames, long_pool=12):
    return bundle_preset.replace(
        frames=dataclasses.replace(bundle_preset.frames, max_frames=max_frames),
        windows=dataclasses.replace(bundle_preset.windows, long_pool=long_pool),
    )


def test_pool_groups_decoded_alone_equal_those_of_the_whole_clip(long_corpus):
    """The cross-term pool decodes only a clip's groups (any length of clip): frames and
    sound windows equal those cut from the whole decoded clip (one forward decode of the
    sound from the same start, factory.io.decode.SoundReader)."""
    from factory.config import preset
    from factory.train.prepare import record_pool_entries

    _root, listing = long_corpus
    p = preset("tiny")
    for rec in listing.records[:2]:
        alone = record_pool_entries(rec, 3, p)
        whole = decoded_pool_entries(decode_clip(rec, p.frames, p.spectrogram), 3, p)
        assert alone.keys == whole.keys
        assert (alone.arrays["frames"] == whole.arrays["frames"]).all()
        assert np.abs(alone.arrays["audio"] - whole.arrays["audio"]).max() < 1e-6
        assert (alone.arrays["has_audio"] == whole.arrays["has_audio"]).all()


def test_decode_rejects_more_than_max_frames_with_its_own_reason(long_corpus, tiny_bundle):
    _root, listing = long_corpus
    rec = listing.records[0]
    p = _preset(load_bundle(tiny_bundle["bundle"]).preset, 18)
    assert frame_count(rec, p.frames) == 40
    with pytest.raises(ClipTooLong, match="exceed max_frames=18") as err:
        decode_clip(rec, p.frames, p.spectrogram)
    assert err.value.frames == 40 and "chunks" in err.value.remedy
    part = decode_clip(rec, p.frames, p.spectrogram, frames=(10, 25))
    whole = decode_clip(rec, _preset(p, 64).frames, p.spectrogram)
    assert (part.frames == whole.frames[10:25]).all() and np.allclose(
        part.times, whole.times[10:25]
    )


def test_labels_in_chunks_equal_the_whole_clip(long_corpus, tiny_bundle):
    """A 40-frame clip labelled in chunks of 18 decoded frames (7 chunks, halo 6) gets the
    maps the whole clip gets, every Table 1 variant, with the cross-term and the long-term
    pools in play (their draws are seeded by the frame's place in the whole clip)."""
    _root, listing = long_corpus
    bundle = load_bundle(tiny_bundle["bundle"])
    rec = next(r for r in listing.records if len(r.tags) == 1)
    other = next(r for r in listing.records if r.tags == rec.tags and r.key != rec.key)
    p = bundle.preset
    entries = {
        rec.tags[0]: decoded_pool_entries(
            decode_clip(other, p.frames, p.spectrogram), p.windows.pool_groups, p
        )
    }

    def labels(max_frames):
        b = dataclasses.replace(bundle, preset=_preset(p, max_frames))
        return label_in_chunks(Labeler(b, PoolSource(entries), ablation=True), rec, list(rec.tags))

    whole, chunked = labels(64), labels(18)
    assert chunked.maps.shape == whole.maps.shape == (40, *whole.maps.shape[1:])
    assert np.allclose(chunked.times, whole.times)
    assert np.abs(chunked.maps - whole.maps).max() < 1e-4
    for name, m in whole.ablation.items():
        assert np.abs(chunked.ablation[name] - m).max() < 1e-4, name
    for s, c in whole.confidences.items():
        assert np.abs(chunked.confidences[s] - c).max() < 1e-4, s
    assert (chunked.boxes == whole.boxes).all()
    assert chunked.counters == whole.counters


def test_students_predict_in_chunks_as_on_the_whole_clip(long_corpus, tiny_bundle, tmp_path):
    """The students' maps (STA, STA+ short / long, fused) of a clip taken in chunks equal
    those of the whole clip (students with their initial weights: the equality is the
    windowing's, not the training's)."""
    import torch

    from factory.method.students import StudentPredictor, save_students
    from models.config import STUDENT_GRAPH_CHANNELS
    from models.registry import STUDENTS, build_student

    _root, listing = long_corpus
    bundle = load_bundle(tiny_bundle["bundle"])
    torch.manual_seed(0)
    students = {n: build_student(n, bundle.preset.encoders, bundle.cgcn) for n in STUDENTS}
    save_students(
        str(tmp_path / "students"),
        bundle.preset,
        bundle.encoders,
        students,
        bundle.net("switch"),
        {"graph_channels": STUDENT_GRAPH_CHANNELS},
    )
    rec = listing.records[0]

    def maps(max_frames):
        predictor = StudentPredictor(str(tmp_path / "students"))
        predictor.preset = _preset(predictor.preset, max_frames)
        predictor.settings = WindowSettings.from_preset(predictor.preset)
        out, _clip, times = predict_in_chunks(predictor, rec)
        return out, times

    (whole, t_whole), (chunked, t_chunked) = maps(64), maps(18)
    assert np.allclose(t_whole, t_chunked) and len(t_whole) == 40
    for name in whole:
        assert whole[name].shape == chunked[name].shape
        assert np.abs(whole[name] - chunked[name]).max() < 1e-4, name


@pytest.mark.slow(seconds=110)
def test_long_clips_through_the_label_and_predict_jobs(tiny_bundle, tmp_path, ray_session):
    """Clips of 72 frames with the tiny preset's max_frames=64 go through the real label
    and predict jobs (Ray Data) in chunks, not rejected: every frame has its row, and
    the rows are the maps of the whole clip (labelled here with room for all of it)."""
    import pyarrow.parquet as pq
    import torch

    from factory.jobs.label import LabelOptions, run_label
    from factory.jobs.predict import PredictOptions, run_predict
    from factory.method.dataset import maps_from_column
    from factory.method.students import StudentPredictor, save_students
    from models.config import STUDENT_GRAPH_CHANNELS
    from models.registry import STUDENTS, build_student

    root = str(tmp_path / "long9")
    generate(root, SyntheticConfig(num_tags=3, clips_per_tag=1, seconds=9.0, seed=43))
    listing = read_corpus(os.path.join(root, "manifest.csv"))
    bundle = load_bundle(tiny_bundle["bundle"])
    assert bundle.preset.frames.max_frames == 64
    rec = listing.records[0]
    assert frame_count(rec, bundle.preset.frames) == 72
    out = str(tmp_path / "pseudo")
    summary = run_label(
        LabelOptions(
            corpus=os.path.join(root, "manifest.csv"), bundle=tiny_bundle["bundle"], out=out
        )
    )
    assert summary.labelled == 3 and summary.rejected == 0 and summary.frames == 3 * 72
    t = pq.read_table(os.path.join(out, "shards")).to_pandas()
    rows = t[t.video_id == rec.key].sort_values("frame_index")
    assert rows.frame_index.tolist() == list(range(72))
    roomy = dataclasses.replace(bundle, preset=_preset(bundle.preset, 128, 64))
    whole = label_in_chunks(Labeler(roomy), rec, list(rec.tags))  # one piece: no chunks
    job = maps_from_column(pq.read_table(os.path.join(out, "shards"))["map"])[rows.index.to_numpy()]
    assert np.abs(job.astype(np.float32) / 255 - whole.maps).max() <= 1 / 255 + 1e-6

    torch.manual_seed(0)
    students = {n: build_student(n, bundle.preset.encoders, bundle.cgcn) for n in STUDENTS}
    save_students(
        str(tmp_path / "students"),
        bundle.preset,
        bundle.encoders,
        students,
        bundle.net("switch"),
        {"graph_channels": STUDENT_GRAPH_CHANNELS},
    )
    preds = str(tmp_path / "preds")
    s = run_predict(
        PredictOptions(
            videos=os.path.join(root, "videos"), students=str(tmp_path / "students"), out=preds
        )
    )
    assert s["predicted"] == 3 and s["rejected"] == 0
    p = pq.read_table(os.path.join(preds, "shards")).to_pandas()
    prow = p[p.video_id == rec.key].sort_values("frame_index")
    assert prow.frame_index.tolist() == list(range(72))
    predictor = StudentPredictor(str(tmp_path / "students"))
    predictor.preset = _preset(predictor.preset, 128, 64)
    predictor.settings = WindowSettings.from_preset(predictor.preset)
    ref, _clip, _times = predict_in_chunks(predictor, rec)
    got = maps_from_column(pq.read_table(os.path.join(preds, "shards"))["map"])[
        prow.index.to_numpy()
    ]
    assert np.abs(got.astype(np.float32) / 255 - ref["map"]).max() <= 1 / 255 + 1e-6
