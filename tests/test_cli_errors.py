"""Wrong invocations through the real command line: each ends with one line that names
the input and what to do, exit code 2, no traceback, and before any Ray starts."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_job(job, *args, cwd):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "jobs", f"{job}.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def assert_one_line_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if " error: " in line]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for w in words:
        assert w in lines[0], lines[0]
    # the arguments were checked before a Ray instance was started
    assert "Ray" not in proc.stderr.replace(lines[0], ""), proc.stderr[-2000:]
    return lines[0]


@pytest.fixture
def label_args(tmp_path):
    return ["--bundle", str(tmp_path / "no-bundle"), "--out", str(tmp_path / "out")]


def test_missing_corpus_file(tmp_path, label_args):
    proc = run_job("label", "--corpus", str(tmp_path / "nope.csv"), *label_args, cwd=tmp_path)
    assert_one_line_error(proc, "nope.csv", "not found", "check the path")


def test_csv_with_an_unterminated_quote(tmp_path, label_args):
    bad = tmp_path / "bad.csv"
    bad.write_text('video,tag\n"a.mp4,Bark\nb.mp4,Goat\n')
    proc = run_job("label", "--corpus", str(bad), *label_args, cwd=tmp_path)
    assert_one_line_error(proc, "bad.csv", "not readable", "fix the file")


def test_a_text_file_that_is_not_a_corpus(tmp_path, label_args):
    txt = tmp_path / "x.txt"
    txt.write_text("hello\n")
    proc = run_job("label", "--corpus", str(txt), *label_args, cwd=tmp_path)
    assert_one_line_error(proc, "x.txt", "not a manifest", "see --help")


def test_out_is_an_existing_file(tmp_path):
    corpus = tmp_path / "c.csv"
    corpus.write_text("video,tag\na.mp4,Bark\n")
    out = tmp_path / "taken"
    out.write_text("x")
    proc = run_job(
        "label", "--corpus", str(corpus), "--bundle", "b", "--out", str(out), cwd=tmp_path
    )
    assert_one_line_error(proc, "--out", "taken", "existing file")


def test_a_corpus_with_no_clips(tmp_path, label_args):
    empty = tmp_path / "empty.csv"
    empty.write_text("video,tag\n")
    proc = run_job("label", "--corpus", str(empty), *label_args, cwd=tmp_path)
    assert_one_line_error(proc, "empty.csv", "no clips")
    train_only = tmp_path / "train-only.csv"
    train_only.write_text("video,tag,split\na.mp4,Bark,train\n")
    proc = run_job(
        "label", "--corpus", str(train_only), "--split", "test", *label_args, cwd=tmp_path
    )
    assert_one_line_error(proc, "no clips in split 'test'")


def test_missing_bundle(tmp_path, label_args):
    corpus = tmp_path / "c.csv"
    corpus.write_text("video,tag\na.mp4,Bark\n")
    proc = run_job("label", "--corpus", str(corpus), *label_args, cwd=tmp_path)
    assert_one_line_error(proc, "no-bundle", "bundle.json is missing", "jobs/train.py")


def test_numbers_are_range_checked_by_the_parser(tmp_path, label_args):
    proc = run_job("label", "--corpus", "c.csv", *label_args, "--batch-size", "0", cwd=tmp_path)
    assert proc.returncode == 2 and "--batch-size" in proc.stderr
    assert "must be at least 1" in proc.stderr and "Traceback" not in proc.stderr


def test_verbose_shows_the_traceback(tmp_path, label_args):
    proc = run_job(
        "label", "--corpus", str(tmp_path / "nope.csv"), *label_args, "--verbose", cwd=tmp_path
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_other_jobs_share_the_one_line_errors(tmp_path):
    proc = run_job(
        "distill",
        "--pseudo",
        str(tmp_path / "no-dataset"),
        "--corpus",
        "c.csv",
        "--out",
        str(tmp_path / "s"),
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "no-dataset", "not a pseudo-fixation dataset", "jobs/label.py")
    proc = run_job(
        "predict",
        "--videos",
        str(tmp_path),
        "--students",
        str(tmp_path / "no-students"),
        "--out",
        str(tmp_path / "p"),
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "no-students", "not a student bundle", "jobs/distill.py")
    proc = run_job("ablate", "--variants", "map_nonsense", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown variant" in proc.stderr


@pytest.fixture
def train_args(tiny_corpus, tmp_path):
    return ["--corpus", os.path.join(tiny_corpus[0], "manifest.csv"), "--out", str(tmp_path / "b")]


def test_train_rejects_unknown_knobs_and_missing_weights(tmp_path, train_args):
    proc = run_job("train", *train_args, "--set", "batchsize=3", cwd=tmp_path)
    assert_one_line_error(proc, "--set batchsize", "not a training knob", "batch_size")
    proc = run_job("train", *train_args, "--set", "frames.fine=3", cwd=tmp_path)
    assert_one_line_error(proc, "'frames.fine'", "fine_size")
    proc = run_job("train", *train_args, "--weights", "image=/nowhere/resnext.pth", cwd=tmp_path)
    assert_one_line_error(proc, "image encoder weights", "/nowhere/resnext.pth", "not found")
    proc = run_job("train", *train_args, "--weights", "ears=x.pt", cwd=tmp_path)
    assert_one_line_error(proc, "--weights ears", "image, plus, audio")
    bad = tmp_path / "preset.json"
    bad.write_text('{"train": {"epochs": 2}, "frames": {"fps": 4}, "colour": 1}')
    proc = run_job("train", *train_args, "--preset-file", str(bad), cwd=tmp_path)
    assert_one_line_error(proc, "unknown preset field 'colour'", "frames")


def test_paper_preset_with_torchvision_state_dicts(tmp_path, train_args):
    """The user's own weights for the paper's encoders, saved from torchvision's own
    model definitions (random init, nothing downloaded), reach the encoders through
    --weights and a preset file; an audio file of the wrong architecture stops the job
    with one line naming it, before any Ray starts."""
    import torch
    import torchvision

    from factory.config import customise, preset
    from factory.method.weights import check_weights
    from models.config import AudioEncoderConfig
    from models.encoders import AudioEncoder

    paths = {
        "image": tmp_path / "resnext101_32x8d.pth",
        "plus": tmp_path / "vgg16.pth",
        "audio": tmp_path / "audio_resnet18_netvlad.pth",
    }
    torch.save(torchvision.models.resnext101_32x8d().state_dict(), paths["image"])
    torch.save(torchvision.models.vgg16().state_dict(), paths["plus"])
    torch.save(AudioEncoder(AudioEncoderConfig()).state_dict(), paths["audio"])
    p = customise(preset("paper"), weights={k: str(v) for k, v in paths.items()})
    check_weights(p.encoders)  # every file loads into the paper-sized encoders
    assert p.to_dict()["encoders"]["plus"]["weights"] == str(
        paths["plus"]
    )  # what bundle.json keeps
    wrong = tmp_path / "resnet18_3ch.pth"
    torch.save(torchvision.models.resnet18().state_dict(), wrong)  # no NetVLAD, RGB stem
    (tmp_path / "weights.toml").write_text(
        f'[encoders.image]\nweights = "{paths["image"]}"\n[encoders.plus]\nweights = "{paths["plus"]}"\n'
    )
    proc = run_job(
        "train",
        *train_args,
        "--preset",
        "paper",
        "--preset-file",
        str(tmp_path / "weights.toml"),
        "--weights",
        f"audio={wrong}",
        "--epochs",
        "0",
        cwd=tmp_path,
    )
    assert_one_line_error(proc, "audio encoder weights", "resnet18_3ch.pth", "do not fit")
