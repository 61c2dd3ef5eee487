"""Decoding real files (PyAV): frame sampling, seeking, audio windows, and every bad
input becoming a reject with a reason (files made for real: truncated, garbage,
audio-only, absurd size)."""

import os
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from label_runs import truncated_copy

from factory.config import FrameConfig, SpectrogramConfig, preset
from factory.io.audio import LogSpectrogram, frame_windows
from factory.io.corpus import ClipRecord
from factory.io.decode import decode_clip, frame_times
from factory.pipelines.stages import decode_row, deserialize_clip, serialize_clip

P = preset("tiny")


def write_video(
    path,
    seconds,
    fps,
    size=(96, 64),
    codec="libx264",
    audio_rate=None,
    tone_hz=440.0,
    pix="yuv420p",
):
    """Frames whose red channel encodes the frame index (x 8), optional sine audio."""
    w, h = size
    n = round(seconds * fps)
    with av.open(path, "w") as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, pix
        as_ = None
        if audio_rate:
            as_ = c.add_stream("aac", rate=audio_rate)
            as_.layout = "stereo"
        for i in range(n):
            img = np.zeros((h, w, 3), np.uint8)
            img[..., 0] = (i * 8) % 256
            img[..., 1] = 128
            for pkt in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        if as_ is not None:
            t = np.arange(round(seconds * audio_rate)) / audio_rate
            wave = (0.5 * np.sin(2 * np.pi * tone_hz * t)).astype(np.float32)
            for i in range(0, len(wave), 1024):
                part = np.stack([wave[i : i + 1024]] * 2)
                fr = av.AudioFrame.from_ndarray(part, format="fltp", layout="stereo")
                fr.sample_rate = audio_rate
                fr.pts = i
                for pkt in as_.encode(fr):
                    c.mux(pkt)
            for pkt in as_.encode():
                c.mux(pkt)
    return path


def rec(path, start=None, end=None, key="clip"):
    return ClipRecord(key, str(path), ("Bark",), None, start, end)


FRAMES = FrameConfig(height=48, width=64, fps=5.0, coarse_size=64, fine_size=80, max_frames=200)


class TestFrames:
    def test_rate_size_and_timestamps(self, tmp_path):
        path = write_video(str(tmp_path / "v.mp4"), 4.0, 25)
        clip = decode_clip(rec(path), FRAMES, P.spectrogram)
        assert clip.frames.shape == (20, 48, 64, 3)
        assert np.allclose(clip.times, np.arange(20) / 5.0, atol=1 / 25)
        # frame k at 5 fps is source frame 5k of the 25 fps file: red = 8 * 5k
        red = clip.frames[:, 24, 32, 0].astype(int)
        assert np.all(np.abs(red - (np.arange(20) * 40) % 256) <= 6)

    def test_segment_seeks_inside_a_long_file(self, tmp_path):
        path = write_video(str(tmp_path / "long.mp4"), 20.0, 10)
        clip = decode_clip(rec(path, 15.0, 17.0), FRAMES, P.spectrogram)
        assert len(clip.frames) == 10 and abs(clip.times[0] - 15.0) < 0.11
        red = clip.frames[0, 24, 32, 0]
        assert abs(int(red) - (150 * 8) % 256) <= 6

    @pytest.mark.parametrize(
        "codec,fps,size", [("mpeg4", 12, (80, 60)), ("libx264", Fraction(30000, 1001), (100, 50))]
    )
    def test_other_codecs_rates_and_sizes(self, tmp_path, codec, fps, size):
        path = write_video(str(tmp_path / "v.mp4"), 2.0, fps, size=size, codec=codec)
        clip = decode_clip(rec(path), FRAMES, P.spectrogram)
        assert clip.frames.shape == (len(frame_times(0.0, clip.duration_s, 5.0)), 48, 64, 3)
        assert clip.source_size == (size[1], size[0]) and abs(clip.duration_s - 2.0) < 0.01

    def test_frame_times(self):
        assert np.allclose(frame_times(1.0, 2.0, 4.0), [1.0, 1.25, 1.5, 1.75])
        assert len(frame_times(0.0, 0.1, 4.0)) == 1

    def test_serialisation_roundtrip(self, tmp_path):
        path = write_video(str(tmp_path / "v.mp4"), 1.0, 10, audio_rate=22050)
        clip = decode_clip(rec(path), FRAMES, P.spectrogram)
        back = deserialize_clip(clip.key, serialize_clip(clip))
        assert (
            (back.frames == clip.frames).all()
            and np.allclose(back.audio, clip.audio)
            and back.audio_t0 == clip.audio_t0
        )


class TestAudio:
    def test_16k_mono_centred_windows_zero_padded_and_padding_trimmed(self, tmp_path):
        path = write_video(str(tmp_path / "v.mp4"), 2.0, 10, audio_rate=44100, tone_hz=1000.0)
        cfg = SpectrogramConfig()
        clip = decode_clip(rec(path), FRAMES, cfg)
        assert clip.has_audio and clip.audio.dtype == np.float32
        # buffer spans [t0 - 0.5 s, t_last + 0.5 s] at 16 kHz
        assert clip.audio_t0 == pytest.approx(-0.5)
        assert len(clip.audio) == pytest.approx((clip.times[-1] + 1.0) * 16000, abs=2)
        sr = cfg.sample_rate
        before = clip.audio[: int(0.49 * sr)]
        after_end = clip.audio[
            int((2.0 + 0.5 + 0.01) * sr) :
        ]  # past the 2 s stream: AAC padding dropped
        assert np.abs(before).max() == 0 and (after_end.size == 0 or np.abs(after_end).max() == 0)
        middle = clip.audio[int(1.0 * sr) : int(1.5 * sr)]
        spectrum = np.abs(np.fft.rfft(middle))
        assert np.fft.rfftfreq(len(middle), 1 / sr)[spectrum.argmax()] == pytest.approx(1000, abs=5)
        windows = frame_windows(clip.audio, clip.audio_t0, clip.times, cfg)
        assert windows.shape == (len(clip.times), 16000)
        # the first frame's window starts half a second before the clip: zeros there
        assert (
            np.abs(windows[0, : int(0.45 * sr)]).max() == 0
            and np.abs(windows[0, int(0.55 * sr) :]).max() > 0.1
        )
        spec = LogSpectrogram(cfg)(torch.from_numpy(windows))
        assert spec.shape == (len(clip.times), 1, 257, 101) and torch.isfinite(spec).all()

    def test_mel_option(self):
        cfg = SpectrogramConfig(mel=True, n_mels=40)
        out = LogSpectrogram(cfg)(torch.randn(2, 16000))
        assert out.shape == (2, 1, 40, 101) and cfg.shape == (40, 101)

    def test_no_audio_stream(self, tmp_path):
        path = write_video(str(tmp_path / "silent.mp4"), 1.0, 10)
        clip = decode_clip(rec(path), FRAMES, P.spectrogram)
        assert not clip.has_audio and clip.audio is None


def reject_of(record, frames=FRAMES):
    import json

    row = decode_row(
        {"key": record.key, "record": json.dumps(record.to_row())}, frames, P.spectrogram
    )
    assert row["status"] == "reject", row
    return row


class TestBadInput:
    def test_missing_file(self, tmp_path):
        row = reject_of(rec(tmp_path / "nope.mp4"))
        assert row["stage"] == "decode" and "file not found" in row["reason"] and row["remedy"]

    def test_truncated_container(self, tmp_path):
        src = write_video(str(tmp_path / "v.mp4"), 2.0, 10, audio_rate=22050)
        row = reject_of(rec(truncated_copy(src, str(tmp_path / "cut.mp4"))))
        assert "not a readable video container" in row["reason"] and "truncated" in row["remedy"]

    def test_garbage_bytes_with_a_video_extension(self, tmp_path):
        path = tmp_path / "garbage.mp4"
        path.write_bytes(
            np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
        )
        assert "not a readable video container" in reject_of(rec(path))["reason"]

    def test_no_video_stream(self, tmp_path):
        path = str(tmp_path / "audio_only.m4a")
        with av.open(path, "w") as c:
            s = c.add_stream("aac", rate=16000)
            s.layout = "mono"
            for i in range(0, 16000, 1024):
                fr = av.AudioFrame.from_ndarray(
                    np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
                )
                fr.sample_rate, fr.pts = 16000, i
                for pkt in s.encode(fr):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
        assert "no video stream" in reject_of(rec(path))["reason"]

    def test_segment_outside_the_clip(self, tmp_path):
        path = write_video(str(tmp_path / "v.mp4"), 2.0, 10)
        assert "clip is 2.00 s long" in reject_of(rec(path, 5.0, 8.0))["reason"]
        assert "segment ends at 9" in reject_of(rec(path, 0.0, 9.0))["reason"]

    def test_zero_frames(self, tmp_path):
        """A video track that ends long before the audio: no frame in the segment."""
        path = str(tmp_path / "short_video.mkv")
        with av.open(path, "w") as c:
            vs = c.add_stream("libx264", rate=10)
            vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
            s = c.add_stream("aac", rate=16000)
            s.layout = "mono"
            for _ in range(10):  # 1 s of video
                for pkt in vs.encode(
                    av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
                ):
                    c.mux(pkt)
            for pkt in vs.encode():
                c.mux(pkt)
            for i in range(0, 16000 * 5, 1024):  # 5 s of audio
                fr = av.AudioFrame.from_ndarray(
                    np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
                )
                fr.sample_rate, fr.pts = 16000, i
                for pkt in s.encode(fr):
                    c.mux(pkt)
            for pkt in s.encode():
                c.mux(pkt)
        row = reject_of(rec(path, 3.0, 4.0))
        assert "zero frames" in row["reason"] and row["remedy"]

    def test_absurd_resolution(self, tmp_path):
        path = write_video(str(tmp_path / "tiny.mp4"), 1.0, 10, size=(8, 8), codec="mpeg4")
        assert "absurd resolution 8x8" in reject_of(rec(path))["reason"]

    def test_too_long_for_max_frames(self, tmp_path):
        path = write_video(str(tmp_path / "v.mp4"), 3.0, 10)
        frames = FrameConfig(
            height=48, width=64, fps=10.0, coarse_size=64, fine_size=80, max_frames=12
        )
        row = reject_of(rec(path), frames)
        assert "exceed max_frames=12" in row["reason"] and "start_s / end_s" in row["remedy"]

    def test_every_reject_names_input_stage_reason(self, tmp_path):
        row = reject_of(rec(tmp_path / "nope.mp4", key="my-clip"))
        assert row["key"] == "my-clip" and row["stage"] and row["reason"]
        assert os.fspath(tmp_path) in row["reason"]
