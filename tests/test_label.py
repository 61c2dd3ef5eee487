"""The labeler (plain PyTorch) and the label job (Ray Data) on real files: output
schema, readers without this project, accounting with bad inputs, ablation maps, PNG
export, multi-tag clips, and exactly-once after a real kill -9 of the driver."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from label_runs import held_out_manifest, label_cmd, rows_of, run_label_cli

from factory.io.corpus import read_corpus
from factory.io.decode import decode_clip
from factory.io.synthetic import load_ground_truth
from factory.method.bundle import load_bundle
from factory.method.labeler import ABLATION_MAPS, PAIR_MAPS, PLUS_PAIRS, SOURCES, Labeler

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_labeler_alone_plain_pytorch(tiny_bundle, heldout_corpus):
    """The labeler needs no Ray: maps for every frame, in [0, 1], every source reported."""
    root, meta = heldout_corpus
    bundle = load_bundle(tiny_bundle["bundle"])
    listing = read_corpus(os.path.join(root, "manifest.csv"))
    rec = next(r for r in listing.records if len(r.tags) == 1)
    clip = decode_clip(rec, bundle.preset.frames, bundle.preset.spectrogram)
    labeler = Labeler(bundle, None, ablation=True)
    out = labeler.label(clip, list(rec.tags))
    t = len(clip.times)
    assert out.maps.shape == (t, bundle.preset.frames.height, bundle.preset.frames.width)
    assert out.maps.min() >= 0 and out.maps.max() <= 1 and np.isfinite(out.maps).all()
    assert set(out.confidences) == set(SOURCES) and out.boxes.shape == (t, 4)
    assert set(out.ablation) == set(ABLATION_MAPS)
    for name, m in out.ablation.items():
        assert m.shape == out.maps.shape and m.min() >= 0 and m.max() <= 1, name
    # no pool given: every cross-term pair is missing, counted, never silently zero-weighted
    assert out.counters["cross_missing"] == 3 * t
    # each frame encoded once at the coarse size, three crops per frame at the fine size
    assert labeler.encoder_passes["coarse"] == t and labeler.encoder_passes["fine"] == 3 * t


def test_labelling_rules_and_bundles_with_three_shared_plus_nets(
    tiny_bundle, heldout_corpus, tmp_path
):
    """A bundle saved before the 8 pair nets (3 shared + nets, no plus_weights in its
    preset) loads as what it is and labels; the labelling rules of Eq. 2/3/8 (softmax
    confidences, the no-source average) reach the labeler and keep maps in [0, 1]."""
    from factory.method.bundle import Bundle, build_nets

    root, _ = heldout_corpus
    bundle = load_bundle(tiny_bundle["bundle"])
    assert bundle.preset.plus_weights == "pair" and "ST+long" in bundle.nets
    old_preset = bundle.preset.replace(plus_weights="type", plus_init="normal")
    old = Bundle(
        old_preset, bundle.vocabulary, bundle.encoders, build_nets(old_preset, bundle.num_classes)
    )
    old.save(str(tmp_path / "old"))
    meta = json.loads((tmp_path / "old" / "bundle.json").read_text())
    for key in ("plus_weights", "plus_init"):
        del meta["preset"][key]
    (tmp_path / "old" / "bundle.json").write_text(json.dumps(meta))
    loaded = load_bundle(str(tmp_path / "old"))
    assert loaded.preset.plus_weights == "type" and {"S+", "ST+", "SA+"} <= set(loaded.nets)
    rec = next(
        r for r in read_corpus(os.path.join(root, "manifest.csv")).records if len(r.tags) == 1
    )
    clip = decode_clip(rec, bundle.preset.frames, bundle.preset.spectrogram)
    out = Labeler(loaded, None).label(clip, list(rec.tags))
    assert np.isfinite(out.maps).all() and set(out.confidences) == set(SOURCES)
    flat = Labeler(bundle, None, no_source="flat").label(clip, list(rec.tags))
    rules = Labeler(bundle, None, confidence="softmax", no_source="flat").label(
        clip, list(rec.tags)
    )
    assert rules.maps.shape == flat.maps.shape and rules.maps.min() >= 0 and rules.maps.max() <= 1
    # softmax confidences rank like the sigmoid ones: the same + pairs pass Eq. 3 (the
    # fine sources read crops whose boxes the weights of Eq. 2 move)
    for s in SOURCES[3:]:
        assert np.array_equal(flat.confidences[s] > 0, rules.confidences[s] > 0), s
    # frames that no source selects (labelled with a tag the clip does not show, so the
    # nets rank another first): all-zero under "flat", the sources' mean under "average"
    wrong = [next(t for t in bundle.vocabulary if t not in rec.tags)]
    flat = Labeler(bundle, None, no_source="flat").label(clip, wrong)
    rules = Labeler(bundle, None).label(clip, wrong)  # the default: "average"
    none = np.stack([flat.confidences[s] for s in SOURCES]).sum(0) == 0
    assert none.any() and (flat.maps[none] == 0).all()
    assert all(rules.maps[k].max() > 0 for k in np.flatnonzero(none))
    with pytest.raises(ValueError, match="no_source 'skip'"):
        Labeler(bundle, None, no_source="skip")


def test_switch_gate_from_the_audio_tagger(tiny_bundle, heldout_corpus):
    """``switch_gate = "tagger"`` (not the paper's): the switch is on where the bundle's
    audio tagger (its two folds, kept by the train job) ranks the clip's tag first, the
    rule of the switch net's training labels; so on each frame with sound exactly one tag
    of the vocabulary turns it on. A bundle without the tagger is refused, by name."""
    from factory.method.bundle import TAGGER_FOLDS

    root, _ = heldout_corpus
    bundle = load_bundle(tiny_bundle["bundle"])
    assert set(TAGGER_FOLDS) <= set(bundle.nets)
    for rec in read_corpus(os.path.join(root, "manifest.csv")).records:
        clip = decode_clip(rec, bundle.preset.frames, bundle.preset.spectrogram)
        if len(rec.tags) == 1 and clip.has_audio:
            break
    labeler = Labeler(bundle, None, switch_gate="tagger")
    gates = np.stack(
        [labeler.encode_clip(clip, [tag])[0]["gate"].numpy() for tag in bundle.vocabulary]
    )
    assert set(np.unique(gates)) <= {0.0, 1.0} and (gates.sum(0) == 1).all()
    feats, _ = labeler.encode_clip(clip, list(rec.tags))
    with torch.inference_mode():
        logits = sum(bundle.net(n)({"audio": feats["audio"]}) for n in TAGGER_FOLDS)
    top = logits.argmax(1).numpy()
    assert np.array_equal(feats["gate"].numpy(), top == bundle.tag_index(rec.tags[0]))
    out = labeler.label(clip, list(rec.tags))
    assert np.array_equal(out.gate, top == bundle.tag_index(rec.tags[0]))
    # the paper's switch net stays the default
    assert Labeler(bundle, None).switch_gate == "net"
    for name in TAGGER_FOLDS:
        del bundle.nets[name]
    with pytest.raises(ValueError, match=r"holds no audio tagger.*--switch-gate net"):
        Labeler(bundle, None, switch_gate="tagger")


def test_ablation_maps_are_the_paper_variants(tiny_bundle, heldout_corpus, tiny_corpus):
    """CAM' is the mean of the eight + maps; SCAM' is Eq. 8 over the eight pairs alone
    (with their Eq. 3-filtered confidences); AC fine is the mean of the fine CAMs; SCAM+
    is Eq. 8 over the fine sources and the pairs. A cross-term pool is given, so every
    pair has work."""
    import torch

    from factory.method import equations as eq
    from factory.method.pool import PoolSource
    from factory.train.prepare import decoded_pool_entries

    root, meta = heldout_corpus
    bundle = load_bundle(tiny_bundle["bundle"])
    p = bundle.preset
    listing = read_corpus(os.path.join(root, "manifest.csv"))
    rec = next(r for r in listing.records if len(r.tags) == 1 and r.key in _kinds(meta, "normal"))
    pool_recs = [r for r in listing.records if r.tags == rec.tags and r.key != rec.key]
    assert pool_recs, "the held-out world has two clips per tag"
    entries = {
        rec.tags[0]: decoded_pool_entries(
            decode_clip(pool_recs[0], p.frames, p.spectrogram), p.windows.pool_groups, p
        )
    }
    clip = decode_clip(rec, p.frames, p.spectrogram)
    out = Labeler(bundle, PoolSource(entries), ablation=True).label(clip, list(rec.tags))
    assert out.counters["cross_missing"] == 0
    a = {k: torch.from_numpy(v) for k, v in out.ablation.items()}
    pairs = torch.stack([a[k] for k in PAIR_MAPS], 1)  # (T, 8, H, W)
    assert torch.allclose(a["cam_prime"], pairs.mean(1), atol=1e-5)
    # the selected confidences sf(C)[i] of the pairs, as the row stores them
    w = torch.stack(
        [torch.from_numpy(out.confidences[f"{n}{t}"]) for n, t in PLUS_PAIRS], 1
    )  # (T, 8)
    assert torch.allclose(a["scam_prime"], eq.selective_fusion(pairs, w), atol=1e-4)
    fine = torch.stack([a["cam_s_fine"], a["cam_st_fine"], a["cam_sa_fine"]], 1)
    assert torch.allclose(a["ac_fine"], fine.mean(1), atol=1e-5)
    w_fine = torch.stack([torch.from_numpy(out.confidences[s]) for s in ("S", "ST", "SA")], 1)
    assert torch.allclose(a["scam_fine"], eq.selective_fusion(fine, w_fine), atol=1e-4)
    both = torch.cat([fine, pairs], 1)
    scam_plus = eq.selective_fusion(both, torch.cat([w_fine, w], 1))
    assert torch.allclose(torch.from_numpy(out.maps), scam_plus, atol=1e-3)
    # outside the coarse box the fine CAMs are zero (pasted into a zero canvas)
    box = out.boxes[0]
    h, width = out.maps.shape[1:]
    if box[2] - box[0] < 0.9:
        inside_x = (np.arange(width) + 0.5) / width
        outside = (inside_x < box[0] - 0.02) | (inside_x > box[2] + 0.02)
        assert (out.ablation["cam_s_fine"][0][:, outside] == 0).all()


def _kinds(meta, kind):
    return {c["video_id"] for c in meta["clips"] if c["kind"] == kind}


def test_clip_without_audio_uses_the_sources_that_need_none(tiny_bundle, heldout_corpus):
    root, meta = heldout_corpus
    bundle = load_bundle(tiny_bundle["bundle"])
    vid = next(c["video_id"] for c in meta["clips"] if c["kind"] == "no_audio_stream")
    rec = next(r for r in read_corpus(os.path.join(root, "manifest.csv")).records if r.key == vid)
    clip = decode_clip(rec, bundle.preset.frames, bundle.preset.spectrogram)
    out = Labeler(bundle, None).label(clip, list(rec.tags))
    assert not out.has_audio and not out.gate.any()
    for s in ("SA", "SA+long", "SA+cross"):
        assert (out.confidences[s] == 0).all()


def test_multi_tag_clip_both_objects_salient(tiny_bundle, heldout_corpus):
    root, meta = heldout_corpus
    bundle = load_bundle(tiny_bundle["bundle"])
    clip_meta = next(c for c in meta["clips"] if c["kind"] == "multi_tag")
    rec = next(
        r
        for r in read_corpus(os.path.join(root, "manifest.csv")).records
        if r.key == clip_meta["video_id"]
    )
    assert len(rec.tags) == 2
    clip = decode_clip(rec, bundle.preset.frames, bundle.preset.spectrogram)
    out = Labeler(bundle, None).label(clip, list(rec.tags))
    gt = load_ground_truth(root, rec.key)
    # the two objects live on the left and right halves; each half's ground-truth peak
    # must be salient in the combined map
    salient = []
    for k in range(0, len(out.maps), 3):
        g, m = gt["maps"][k], out.maps[k]
        w = g.shape[1] // 2
        for half in (slice(0, w), slice(w, None)):
            y, x = np.unravel_index(g[:, half].argmax(), g[:, half].shape)
            patch = m[:, half][max(0, y - 4) : y + 5, max(0, x - 4) : x + 5]
            salient.append(patch.max() >= 0.3 * m.max())
    assert np.mean(salient) >= 0.8, np.mean(salient)


@pytest.mark.slow(seconds=35)
def test_label_job_end_to_end(tiny_bundle, heldout_corpus, tmp_path, ray_session):
    from factory.jobs.label import LabelOptions, run_label

    manifest = held_out_manifest(heldout_corpus, tmp_path)
    out = str(tmp_path / "pseudo")
    summary = run_label(
        LabelOptions(
            corpus=manifest,
            bundle=tiny_bundle["bundle"],
            out=out,
            ablation=True,
            export_png=str(tmp_path / "png"),
            clips_per_shard=4,
        )
    )
    root, meta = heldout_corpus
    n_good = len(meta["clips"])
    assert summary.inputs == n_good + 6
    assert summary.labelled == n_good and summary.rejected == 6
    assert summary.inputs == summary.labelled + summary.rejected
    rejects = pq.read_table(os.path.join(out, "rejects.parquet")).to_pylist()
    reasons = {r["input"].split("#")[0]: (r["stage"], r["reason"]) for r in rejects}
    assert (
        reasons["bad-truncated"][0] == "decode"
        and "not a readable video container" in reasons["bad-truncated"][1]
    )
    assert "not a readable video container" in reasons["bad-garbage"][1]
    assert "file not found" in reasons["bad-missing"][1]
    assert (
        reasons["bad-unknown-tag"][0] == "listing"
        and "unknown tag" in reasons["bad-unknown-tag"][1]
    )
    assert any("duplicated video_id" in r["reason"] for r in rejects)
    assert "clip is 2.00 s long" in reasons["bad-segment"][1]
    assert all(r["remedy"] for r in rejects)
    run = json.loads(Path(out, "run.json").read_text())
    assert (
        run["summary"]["labelled"] == n_good
        and run["bundle"]["fingerprint"]
        and run["code_version"]
    )
    manifest_json = json.loads(Path(out, "_manifest.json").read_text())
    assert (
        manifest_json["clips"] == n_good
        and sum(s["rows"] for s in manifest_json["shards"]) == summary.frames
    )
    assert os.path.exists(os.path.join(out, "preview.png"))
    # every preview panel says which video and time it shows; rows name the clip and tag
    from factory.evaluation.preview import preview_figure

    fig = preview_figure(out, read_corpus(manifest), load_bundle(tiny_bundle["bundle"]).preset)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    good = {c["video_id"] for c in meta["clips"]}
    assert titles and all(" t = " in t and t.split()[0] in good for t in titles)
    assert any("tag: " in ax.get_ylabel() for ax in fig.axes)
    assert "pseudo-fixation" in fig.axes[-1].get_ylabel()  # the colour scale, labelled
    # PNG export in the usual layout
    first = meta["clips"][0]["video_id"]
    png = os.path.join(tmp_path, "png", first, "maps", "eyeMap_00001.png")
    assert os.path.exists(png)
    # the PNG and the row's source size are the video's own frame size
    import av
    from PIL import Image

    with av.open(os.path.join(root, meta["clips"][0]["video"])) as c:
        own = (c.streams.video[0].height, c.streams.video[0].width)
    assert Image.open(png).size == (own[1], own[0])
    rows = pq.read_table(
        os.path.join(out, "shards"), columns=["video_id", "source_height", "source_width", "height"]
    ).to_pylist()
    row = next(r for r in rows if r["video_id"] == first)
    assert (row["source_height"], row["source_width"]) == own
    # readable without this project: pyarrow and pandas in a bare interpreter
    code = (
        "import sys, numpy as np, pyarrow.parquet as pq, pandas as pd\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('factory', 'models')]\n"
        f"t = pq.read_table({os.path.join(out, 'shards')!r})\n"
        "cols = set(t.column_names)\n"
        "need = {'video_id','frame_index','time_s','tag','height','width','map','box','confidences','shard_id','map_cam_s','map_ac','map_scam_coarse','map_scam_fine'}\n"
        "assert need <= cols, need - cols\n"
        "m = np.array(t['map'][0].as_py(), dtype=np.uint8); assert m.shape == (t['height'][0].as_py(), t['width'][0].as_py())\n"
        "df = pd.read_parquet(" + repr(os.path.join(out, "shards")) + ")\n"
        "assert len(df) == t.num_rows and df['map'].iloc[0] is not None\n"
        "print(t.num_rows)\n"
    )
    res = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd="/"
    )
    assert res.returncode == 0, res.stderr
    assert int(res.stdout) == summary.frames
    # and by Ray Data
    import ray

    assert ray.data.read_parquet(os.path.join(out, "shards")).count() == summary.frames
    # a second run is a no-op that keeps the same rows
    again = run_label(
        LabelOptions(corpus=manifest, bundle=tiny_bundle["bundle"], out=out, ablation=True)
    )
    assert again.new_clips == 0 and again.labelled == n_good and again.frames == summary.frames


@pytest.mark.slow(seconds=140)
def test_exactly_once_after_kill_9_of_the_driver(tiny_bundle, label_reference, tmp_path):
    """A run killed with SIGKILL mid-way and started again ends with the same rows as an
    uninterrupted run (conftest.label_reference, the same manifest and command): none
    lost, none duplicated."""
    manifest = label_reference["manifest"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    out = str(tmp_path / "killed")
    proc = subprocess.Popen(
        label_cmd(manifest, tiny_bundle["bundle"], out),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    shards = os.path.join(out, "shards")
    deadline = time.time() + 600
    while time.time() < deadline and not (
        os.path.isdir(shards)
        and len([f for f in os.listdir(shards) if f.endswith(".parquet")]) >= 2
    ):
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed; make the corpus larger"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    partial = len([f for f in os.listdir(shards) if f.endswith(".parquet")])
    assert not os.path.exists(os.path.join(out, "_manifest.json"))
    again = run_label_cli(manifest, tiny_bundle["bundle"], out, env)
    assert "accounting: inputs" in again.stdout
    ref_keys, ref_maps = label_reference["keys"], label_reference["maps"]
    keys, maps = rows_of(out)
    assert len(keys) == len(set(keys)), "duplicated rows after the restart"
    assert sorted(keys) == sorted(ref_keys), "rows lost or added after the restart"
    assert all(np.abs(maps[k].astype(int) - ref_maps[k].astype(int)).max() <= 1 for k in keys)
    assert (
        sorted(pq.read_table(os.path.join(out, "rejects.parquet"))["input"].to_pylist())
        == label_reference["rejects"]
    )
    assert partial >= 2


def test_store_resolves_overlapping_files(tmp_path):
    """A straggler that committed clips another file also holds: the later file (by
    name) goes, and its clips count as not committed."""
    import pyarrow as pa

    from factory.io.store import ShardStore

    def table(keys):
        return pa.table({"video_id": keys, "shard_id": [""] * len(keys)})

    store = ShardStore(str(tmp_path))
    a = store.write_shard(table(["a", "b"]), ["a", "b"])
    b = store.write_shard(table(["b", "c"]), ["b", "c"])
    committed = store.scan()
    kept, removed = sorted([a, b])[0], sorted([a, b])[1]
    assert committed.removed == [removed] and not os.path.exists(removed) and os.path.exists(kept)
    assert set(committed.shard_clips) == set(pq.read_table(kept)["video_id"].to_pylist())
    (tmp_path / "shards" / "part-x.parquet.tmp-1234").write_bytes(b"half")
    store.scan()
    assert not (tmp_path / "shards" / "part-x.parquet.tmp-1234").exists()


def test_embedded_default_cli_help():
    res = subprocess.run(
        [sys.executable, "jobs/label.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and "embedded default" in res.stdout and "--export-png" in res.stdout
    res = subprocess.run(
        [sys.executable, "jobs/label.py", "--corpus", "x.csv"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and "--bundle" in res.stderr


def test_bundle_loading_says_what_is_missing(tiny_bundle, tmp_path):
    from factory.method.bundle import BundleError

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle["bundle"], broken, ignore=shutil.ignore_patterns("_run"))
    os.remove(broken / "nets" / "ST+long.pt")
    with pytest.raises(BundleError, match=r"files missing: nets/ST\+long\.pt"):
        load_bundle(str(broken))
    with open(broken / "nets" / "S.pt", "ab") as f:
        f.write(b"x")
    meta = json.loads((broken / "bundle.json").read_text())
    meta["nets"].remove("ST+long")
    (broken / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="nets not trained: ST\\+long"):
        load_bundle(str(broken))
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(str(tmp_path))


def test_png_export_at_the_source_size(tmp_path):
    """Maps stay at the working resolution in Parquet; PNGs come out at the video's own
    frame size (here 90 x 160 from 8 x 8 maps, the video's rectangle rows 2-5 of the
    letterbox), so dataset tools that expect eyeMap_%05d.png at the frame's size read
    them as they are."""
    from factory.method.dataset import export_png, labels_table
    from factory.method.labeler import ClipLabels

    t = 2
    maps = np.zeros((t, 8, 8), np.float32)
    maps[:, 3, 6] = 1.0  # the picture's second row of four, right
    labels = ClipLabels(
        key="v",
        tags=["a"],
        times=np.arange(t) / 8.0,
        maps=maps,
        boxes=np.zeros((t, 4), np.float32),
        box_fallback=np.zeros(t, bool),
        confidences={s: np.zeros(t, np.float32) for s in SOURCES},
        gate=np.zeros(t, bool),
        has_audio=False,
        source_size=(90, 160),
    )
    table = labels_table(labels, "v.mp4", ablation=False)
    assert table["height"][0].as_py() == 8 and table["source_width"][0].as_py() == 160
    assert export_png(table, str(tmp_path)) == t
    from PIL import Image

    png = np.asarray(Image.open(tmp_path / "v" / "maps" / "eyeMap_00002.png"))
    assert png.shape == (90, 160)
    y, x = np.unravel_index(png.argmax(), png.shape)
    assert 0.2 < y / 90 < 0.4 and 0.75 < x / 160 < 0.9  # the same place in the frame
