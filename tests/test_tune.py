"""The tune job: a small sweep on 2 CPUs writes the best settings into the bundle and
the labeler uses them; an interrupted sweep resumes without rerunning finished trials;
no fixations, no sweep."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from factory.jobs.tune import (
    NoFixationsError,
    TuneOptions,
    decodable_clips,
    paper_grid,
    run_tune,
    validation_set,
)
from factory.method.bundle import load_bundle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_paper_grid_reproduces_tables_4_and_5():
    grid = paper_grid()
    assert {"m": 3, "n": 2, "td": 0.8, "tr": 0.6} in grid
    assert {(g["td"], g["tr"]) for g in grid if g["m"] == 3 and g["n"] == 2} == {
        (0.8, 0.4),
        (0.8, 0.8),
        (0.9, 0.6),
        (0.7, 0.6),
        (0.8, 0.6),
    }
    assert {g["m"] for g in grid if g["n"] == 2 and g["td"] == 0.8 and g["tr"] == 0.6} == {
        2,
        3,
        4,
        5,
    }
    assert {g["n"] for g in grid if g["m"] == 3 and g["td"] == 0.8 and g["tr"] == 0.6} == {
        1,
        2,
        3,
        4,
    }
    assert len(grid) == len({json.dumps(g, sort_keys=True) for g in grid})


def test_refuses_without_fixations(tmp_path, tiny_corpus):
    root, _ = tiny_corpus
    with pytest.raises(NoFixationsError, match="will not optimise a proxy"):
        validation_set(os.path.join(root, "manifest.csv"), None, 4)
    res = subprocess.run(
        [
            sys.executable,
            "jobs/tune.py",
            "--bundle",
            str(tmp_path),
            "--val",
            os.path.join(root, "manifest.csv"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and "no fixations" in res.stderr


def test_undecodable_validation_clips_are_skipped_not_fatal(heldout_corpus, tmp_path):
    from factory.config import preset
    from factory.io.corpus import ClipRecord, read_corpus

    root, _ = heldout_corpus
    good = read_corpus(os.path.join(root, "manifest.csv")).records[0]
    (tmp_path / "garbage.mp4").write_bytes(os.urandom(20_000))
    bad = [
        ClipRecord("garbage", str(tmp_path / "garbage.mp4"), good.tags),
        ClipRecord("missing", str(tmp_path / "missing.mp4"), good.tags),
    ]
    tiny = preset("tiny")
    decoded = decodable_clips([bad[0], good, bad[1]], tiny, "val")
    assert [c.key for c, _ in decoded] == [good.key]
    with pytest.raises(ValueError, match="no clip could be decoded"):
        decodable_clips(bad, tiny, "val")


def copy_bundle(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_tune", "tune_results"))
    return str(dst)


@pytest.mark.slow(seconds=40)
def test_small_sweep_writes_best_settings_used_by_the_labeler(
    tiny_bundle, heldout_corpus, tmp_path, ray_session, monkeypatch
):
    from factory.io.corpus import read_corpus
    from factory.io.decode import decode_clip
    from factory.method.labeler import Labeler

    bundle_uri = copy_bundle(tiny_bundle["bundle"], tmp_path / "bundle")
    root, _ = heldout_corpus
    # the bundle named relative to the working folder, as a user types it: Tune runs each
    # trial in a folder of its own, where a relative path was not found (2026-12-04)
    monkeypatch.chdir(tmp_path)
    result = run_tune(
        TuneOptions(bundle="bundle", val=root, num_samples=2, epochs=1, max_val_clips=2, seed=3)
    )
    assert len(result["trials"]) == 2 and result["metrics"]["cc"] is not None
    best = result["best"]
    bundle = load_bundle(bundle_uri)
    assert (bundle.cgcn.steps, bundle.cgcn.nodes) == (best["m"], best["n"])
    assert bundle.cgcn.td == pytest.approx(best["td"]) and bundle.tuned["metric"] == "cc"
    assert len(bundle.net("S+short").cgcn.affinity_convs) == best["m"]
    assert os.path.exists(os.path.join(bundle_uri, "tune_results", "results.md"))
    assert os.path.exists(os.path.join(bundle_uri, "tune_results", "objective.png"))
    rec = next(
        r for r in read_corpus(os.path.join(root, "manifest.csv")).records if len(r.tags) == 1
    )
    labeler = Labeler(bundle, None)
    assert labeler.settings.nodes == best["n"]  # the windows follow the tuned n
    out = labeler.label(
        decode_clip(rec, bundle.preset.frames, bundle.preset.spectrogram), list(rec.tags)
    )
    assert out.maps.max() <= 1


def finished_trials(experiment):
    done = {}
    for d in os.listdir(experiment):
        result = os.path.join(experiment, d, "result.json")
        if os.path.exists(result):
            with open(result) as f:
                lines = [json.loads(x) for x in f if x.strip()]
            if (lines and lines[-1].get("done")) or any(x.get("epoch") == 1 for x in lines):
                done[d] = len(lines)
    return done


@pytest.mark.slow(seconds=100)
def test_interrupted_sweep_resumes_without_rerunning_finished_trials(
    tiny_bundle, heldout_corpus, tmp_path
):
    bundle_uri = copy_bundle(tiny_bundle["bundle"], tmp_path / "bundle")
    root, _ = heldout_corpus
    cmd = [
        sys.executable,
        "jobs/tune.py",
        "--bundle",
        bundle_uri,
        "--val",
        root,
        "--num-samples",
        "2",
        "--epochs",
        "1",
        "--max-val-clips",
        "1",
        "--max-concurrent",
        "1",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    experiment = os.path.join(bundle_uri, "_tune", "tune")
    deadline = time.time() + 900
    while time.time() < deadline and not (
        os.path.isdir(experiment) and len(finished_trials(experiment)) >= 1
    ):
        time.sleep(1)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = finished_trials(experiment)
    assert len(before) == 1  # one trial at a time: the kill came before the second ended
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr[-3000:]
    after = finished_trials(experiment)
    assert len(after) == 2
    for trial, lines in before.items():
        assert after[trial] == lines, f"finished trial {trial} was run again"
    assert load_bundle(bundle_uri).tuned["trials"] == 2


def test_a_flat_sweep_is_named_with_the_pairs_never_selected():
    from factory.jobs.tune import PLUS_SOURCES, flat_objective

    sel = {s: 0.0 for s in PLUS_SOURCES}
    rows = [
        {"cc": 0.515, "selected": {**sel, "S+short": 0.2}},
        {"cc": 0.515 + 1e-11, "selected": sel},
        {"cc": 0.512, "selected": sel},
    ]
    warning = flat_objective(rows, "cc")
    assert "flat: 0.5120 to 0.5150 over 3 trials" in warning
    assert "never selected by Eq. 3 on the validation frames: S+long, S+cross," in warning
    assert "S+short" not in warning.split("never selected")[1]
    assert flat_objective([*rows, {"cc": 0.53, "selected": sel}], "cc") == ""  # 0.018 apart
    assert flat_objective(rows[:1], "cc") == ""  # one trial says nothing about flatness
