"""Real-world media, each a file written here with PyAV: variable frame rate, rotation
metadata, odd sizes, 5.1 and stereo audio at 44.1 / 48 kHz, several audio streams,
audio shorter or longer than the video, a video stream that starts late, B-frames and a
segment at the very end of a clip. Each decodes correctly or is rejected with its own
reason (the labeler reads only what the decoder returns)."""

from fractions import Fraction

import av
import numpy as np
import pytest

from factory.config import FrameConfig, SpectrogramConfig
from factory.io.corpus import ClipRecord
from factory.io.decode import decode_clip

FRAMES = FrameConfig(height=32, width=32, fps=8.0, coarse_size=32, fine_size=32, max_frames=64)
SPEC = SpectrogramConfig()


def brightness(i: int) -> int:
    return 20 + 10 * i


def write(
    path,
    n=16,
    fps=8,
    size=(48, 64),
    pts=None,
    pix="yuv420p",
    rotation=None,
    options=None,
    audio=(),
    video_start=0.0,
    seconds=None,
):
    """An mp4 whose frame i is uniformly ``brightness(i)`` grey (pts from ``pts`` in ms
    when given: variable frame rate). ``audio``: (rate, layout, seconds, hz) per stream."""
    h, w = size
    c = av.open(str(path), "w")
    v = c.add_stream("libx264", rate=fps)
    v.width, v.height, v.pix_fmt = w, h, pix
    v.options = {"bf": "0", **(options or {})}
    if pts is not None or video_start:
        v.codec_context.time_base = Fraction(1, 1000)
    if rotation is not None:
        v.set_display_rotation(rotation)
    streams = []
    for rate, layout, secs, hz in audio:
        a = c.add_stream("aac", rate=rate, layout=layout)
        streams.append((a, rate, layout, secs, hz))
    for i in range(n):
        img = np.full((h, w, 3), brightness(i), np.uint8)
        img[:, : max(1, w // 6)] = 255  # a bright strip on the left edge
        f = av.VideoFrame.from_ndarray(img, format="rgb24")
        if pts is not None:
            f.pts, f.time_base = pts[i], Fraction(1, 1000)
        elif video_start:
            f.pts, f.time_base = round(video_start * 1000 + i * 1000 / fps), Fraction(1, 1000)
        for p in v.encode(f):
            c.mux(p)
    for p in v.encode():
        c.mux(p)
    for a, rate, layout, secs, hz in streams:
        channels = len(av.AudioLayout(layout).channels)
        t = np.arange(round(secs * rate)) / rate
        tone = (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)
        data = np.tile(tone, (channels, 1))
        step = 1024
        for k in range(0, data.shape[1], step):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data[:, k : k + step]), format="fltp", layout=layout
            )
            frame.sample_rate, frame.pts = rate, k
            for p in a.encode(frame):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    c.close()
    return str(path)


def decode(path, start=None, end=None, need_audio=True):
    return decode_clip(ClipRecord("k", path, ("t",), None, start, end), FRAMES, SPEC, need_audio)


def grey(clip):
    """Each decoded frame's brightness away from the strip -> the source frame index (the
    middle rows: a frame of another aspect ratio lies between letterbox bands)."""
    return [round((float(f[f.shape[0] // 2, -8:].mean()) - 20) / 10) for f in clip.frames]


def test_b_frames_keep_display_order(tmp_path):
    path = write(tmp_path / "b.mp4", options={"bf": "3", "g": "8"})
    with av.open(path) as c:
        pict = {int(f.pict_type) for f in c.decode(video=0)}
    assert 3 in pict  # AV_PICTURE_TYPE_B: the file really has B-frames
    clip = decode(path)
    assert grey(clip) == list(range(16)) and np.all(np.diff(clip.times) > 0)


def test_variable_frame_rate_picks_the_frame_nearest_each_time(tmp_path):
    # frames at 0, 50, 200, 250, 400, ... ms: gaps of 50 and 150 ms
    pts = [k // 2 * 200 + (k % 2) * 50 for k in range(16)]
    path = write(tmp_path / "vfr.mp4", pts=pts)
    clip = decode(path)
    source_t = np.array(pts) / 1000
    for got, t, target in zip(grey(clip), clip.times, np.arange(len(clip.times)) / 8, strict=True):
        nearest = int(np.argmin(np.abs(source_t - target)))
        assert abs(source_t[got] - target) <= abs(source_t[nearest] - target) + 1e-6
        assert abs(t - source_t[got]) < 1e-3  # times are the frames' own


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_rotation_metadata_is_applied(tmp_path, rotation):
    path = write(tmp_path / "rot.mp4", size=(32, 64), rotation=rotation)
    clip = decode(path)
    lum = clip.frames[0].mean(axis=2)
    # the strip on the stored frame's left edge, turned as a player shows it
    # (counterclockwise by the display matrix's angle)
    bands = {"bottom": lum[-4:], "top": lum[:4], "right": lum[:, -4:], "left": lum[:, :4]}
    where, opposite = {90: ("bottom", "top"), -90: ("top", "bottom"), 180: ("right", "left")}[
        rotation
    ]
    assert bands[where].mean() > bands[opposite].mean() + 100, (rotation, lum[::4, ::4])
    assert clip.source_size == ((64, 32) if rotation in (90, -90) else (32, 64))


def test_odd_width_and_height(tmp_path):
    path = write(tmp_path / "odd.mp4", size=(91, 161), pix="yuv444p")
    clip = decode(path)
    assert clip.source_size == (91, 161) and clip.frames.shape[1:] == (32, 32, 3)


@pytest.mark.parametrize(
    "rate,layout", [(48000, "5.1"), (44100, "stereo"), (48000, "stereo"), (44100, "mono")]
)
def test_multichannel_audio_is_downmixed_and_resampled(tmp_path, rate, layout):
    path = write(tmp_path / "a.mp4", audio=[(rate, layout, 2.0, 440.0)])
    clip = decode(path)
    assert clip.has_audio
    a = clip.audio
    inside = a[(np.arange(len(a)) / SPEC.sample_rate + clip.audio_t0 > 0.2)][:8000]
    spectrum = np.abs(np.fft.rfft(inside))
    peak = np.argmax(spectrum) * SPEC.sample_rate / len(inside)
    assert abs(peak - 440) < 10 and 0.3 < np.abs(inside).max() <= 1.0


def test_several_audio_streams_the_first_is_used_and_recorded(tmp_path):
    path = write(
        tmp_path / "two.mp4", audio=[(48000, "stereo", 2.0, 440.0), (44100, "mono", 2.0, 1000.0)]
    )
    clip = decode(path)
    assert clip.audio_stream == 1  # the container's stream index (0 is the video)
    from factory.pipelines.stages import deserialize_clip, serialize_clip

    assert deserialize_clip("k", serialize_clip(clip)).audio_stream == 1  # survives the hand-off
    assert decode(write(tmp_path / "silent.mp4")).audio_stream is None
    inside = clip.audio[SPEC.sample_rate : SPEC.sample_rate + 8000]
    peak = np.argmax(np.abs(np.fft.rfft(inside))) * SPEC.sample_rate / len(inside)
    assert abs(peak - 440) < 10


def test_audio_shorter_or_longer_than_the_video(tmp_path):
    short = decode(write(tmp_path / "short.mp4", audio=[(48000, "mono", 0.8, 440.0)]))
    assert short.has_audio
    t = clip_time = np.arange(len(short.audio)) / SPEC.sample_rate + short.audio_t0
    assert np.abs(short.audio[(t > 0.2) & (t < 0.7)]).max() > 0.3
    assert np.abs(short.audio[t > 1.0]).max() < 1e-3  # silence after the track ends
    long = decode(write(tmp_path / "long.mp4", audio=[(48000, "mono", 4.0, 440.0)]))
    assert len(long.times) == 16  # the video's 2 s, not the audio's 4 s
    span = len(long.audio) / SPEC.sample_rate
    assert abs(span - (long.times[-1] - long.times[0] + SPEC.window_s)) < 0.01
    assert clip_time is t


def test_a_video_stream_that_starts_late(tmp_path):
    path = write(tmp_path / "late.mp4", video_start=1.0, audio=[(48000, "mono", 3.0, 440.0)])
    clip = decode(path)
    # no frame exists before 1 s: the clip starts at its first frame, each time is real
    assert clip.times[0] >= 1.0 - 1e-6 and grey(clip)[0] == 0
    assert len(set(grey(clip))) == len(clip.times)  # no frame repeated to fill the gap


def test_a_segment_at_the_very_end(tmp_path):
    path = write(tmp_path / "end.mp4")
    clip = decode(path, start=1.5, end=2.0)
    assert len(clip.times) == 4 and grey(clip) == [12, 13, 14, 15]
    from factory.io.rejects import ClipError

    with pytest.raises(ClipError, match=r"starts at 2\.5 s but the clip is 2\.00 s long"):
        decode(path, start=2.5, end=3.0)
