"""The synthetic tagged corpus: real video files (H.264 + AAC) with per-frame fixation
ground truth that no real tagged corpus has. It is the embedded default of the label
job and the benchmark of the method.

The world, chosen so that each part of the method has something to do:

- each tag has an *event object* with its own colour, stripe texture, shape and motion,
  and its own sound (a tone with its own pitch and rhythm);
- *distractors* occur in every tag: static grey blocks, a drifting pale object, and a
  small object repeated at several places in the clip (the redundancy that the
  long-term and cross-term information of SCAM+ should suppress);
- some clips carry the sound of another tag (the audio switch's case), some have a
  static event object (no temporal cue), some are silent (a quiet noise track), and
  optionally some have no audio stream at all or two tags with two event objects;
- some clips hold a *decoy*: a motionless, silent copy of the event object. Observers
  look at the moving, sounding one; a single spatial source cannot tell them apart,
  the temporal source can (the case multi-source fusion is for);
- ground truth: observers look at the event object(s): per frame a continuous map (a
  Gaussian on each event object) and fixation points sampled from it.

Layout written under ``root``::

    videos/<video_id>.mp4
    ground_truth/<video_id>.npz   times (T,), maps (T, H, W) uint8, fixations (T, P, 2) int (y, x)
    manifest.csv                  video, tag, video_id, split, start_s, end_s, kind
    synthetic.json                the config and every clip's properties

Deterministic from the seed.
"""

from __future__ import annotations

import colorsys
import csv
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass

import av
import numpy as np

log = logging.getLogger(__name__)

TAG_NAMES = (
    "Church bell",
    "Race car, auto racing",
    "Flute",
    "Bark",
    "Helicopter",
    "Violin, fiddle",
    "Toilet flush",
    "Goat",
    "Banjo",
    "Clock",
    "Train horn",
    "Shofar",
)
SHAPES = ("circle", "square", "triangle", "diamond")
FIXATIONS_PER_FRAME = 8
GT_SIGMA_OF_RADIUS = 0.6  # the fixation density's spread, as a fraction of the object radius


@dataclass(frozen=True)
class SyntheticConfig:
    num_tags: int = 4
    clips_per_tag: int = 8
    seconds: float = 3.0
    fps: int = 8
    size: int = 128
    seed: int = 0
    audio_rate: int = 22_050  # written rate; decoding resamples to 16 kHz
    mismatched_audio: float = 0.15  # fraction of clips with another tag's sound
    static_event: float = 0.15  # fraction with a motionless event object
    silent: float = 0.1  # fraction with a near-silent track
    decoys: float = 0.35  # fraction with a silent, motionless copy of the event object
    no_audio_stream: int = 0  # clips written without any audio stream
    multi_tag_clips: int = 0  # extra clips with two tags and two event objects
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train / val / test
    codec: str = "libx264"

    def __post_init__(self) -> None:
        if not 1 <= self.num_tags <= len(TAG_NAMES):
            raise ValueError(f"num_tags must be 1..{len(TAG_NAMES)}")


@dataclass(frozen=True)
class EventObject:
    tag: int
    radius: float
    start: tuple[float, float]  # (y, x)
    velocity: tuple[float, float]
    static: bool


def tag_color(tag: int, num_tags: int) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(tag / num_tags, 0.85, 0.95)
    return np.array([r, g, b]) * 255


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(60, 120, 3)
    grad = rng.uniform(-25, 25, 3)
    yy, xx = np.mgrid[0:size, 0:size] / size
    direction = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(direction) * yy + np.sin(direction) * xx
    img = base[None, None] + grad[None, None] * ramp[..., None]
    noise = rng.normal(0, 4, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
    return img + noise


def _shape_mask(
    shape: str, yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, r: float
) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return (np.abs(dy) <= r * 0.85) & (np.abs(dx) <= r * 0.85)
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r * 1.15
    # triangle pointing up
    return (dy <= r * 0.8) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)


def _event_position(obj: EventObject, frame: int, size: int) -> tuple[float, float]:
    if obj.static:
        return obj.start
    motion = obj.tag % 3
    t = frame
    if motion == 0:  # bounce horizontally, drift vertically
        y = obj.start[0] + 0.3 * obj.velocity[0] * t
        x = obj.start[1] + obj.velocity[1] * t
    elif motion == 1:  # orbit
        radius = size * 0.18
        y = obj.start[0] + radius * math.sin(0.35 * t + obj.velocity[0])
        x = obj.start[1] + radius * math.cos(0.35 * t + obj.velocity[0])
    else:  # zigzag vertically
        y = obj.start[0] + obj.velocity[0] * t
        x = obj.start[1] + size * 0.1 * math.sin(0.9 * t)
    lo, hi = obj.radius + 1, size - obj.radius - 1
    return _reflect(y, lo, hi), _reflect(x, lo, hi)


def _reflect(v: float, lo: float, hi: float) -> float:
    span = hi - lo
    u = (v - lo) % (2 * span)
    return lo + (u if u <= span else 2 * span - u)


def _draw_event(
    img: np.ndarray,
    obj: EventObject,
    cy: float,
    cx: float,
    num_tags: int,
    yy: np.ndarray,
    xx: np.ndarray,
) -> None:
    mask = _shape_mask(SHAPES[obj.tag % len(SHAPES)], yy, xx, cy, cx, obj.radius)
    angle = obj.tag * np.pi / num_tags
    period = 5 + 2 * (obj.tag % 3)
    stripes = (
        np.cos(2 * np.pi * ((yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)) / period) > 0
    )
    color = tag_color(obj.tag, num_tags)
    dark = color * 0.45
    img[mask] = np.where(stripes[mask][:, None], color, dark)


def _tone(tag: int, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    f0 = 260.0 * 2 ** (tag * 5 / 12)  # a fourth apart per tag
    rhythm = 2.0 + 1.5 * (tag % 4)
    envelope = 0.55 + 0.45 * np.sign(np.sin(2 * np.pi * rhythm * t + rng.uniform(0, np.pi)))
    wave = (
        np.sin(2 * np.pi * f0 * t)
        + 0.4 * np.sin(2 * np.pi * 2 * f0 * t)
        + 0.2 * np.sin(2 * np.pi * 3 * f0 * t)
    )
    return 0.25 * envelope * wave


def _write_video(
    path: str, frames: list[np.ndarray], audio: np.ndarray | None, cfg: SyntheticConfig
) -> None:
    with av.open(path, "w") as container:
        vstream = container.add_stream(cfg.codec, rate=cfg.fps)
        vstream.width = vstream.height = cfg.size
        vstream.pix_fmt = "yuv420p"
        if cfg.codec == "libx264":
            vstream.options = {"crf": "16", "preset": "veryfast", "g": str(2 * cfg.fps)}
        astream = None
        if audio is not None:
            astream = container.add_stream("aac", rate=cfg.audio_rate)
            astream.layout = "mono"
        for img in frames:
            for packet in vstream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        if astream is not None and audio is not None:
            chunk = 1024
            for i in range(0, len(audio), chunk):
                part = audio[i : i + chunk].astype(np.float32)[None, :]
                frame = av.AudioFrame.from_ndarray(part, format="fltp", layout="mono")
                frame.sample_rate = cfg.audio_rate
                frame.pts = i
                for packet in astream.encode(frame):
                    container.mux(packet)
            for packet in astream.encode():
                container.mux(packet)


def _gt_frame(
    centers: list[tuple[float, float, float]], size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    cont = np.zeros((size, size))
    points = []
    per_object = max(1, FIXATIONS_PER_FRAME // len(centers))
    for cy, cx, r in centers:
        sigma = GT_SIGMA_OF_RADIUS * r
        cont = np.maximum(cont, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)))
        pts = rng.normal([cy, cx], sigma * 0.8, (per_object, 2))
        points.append(np.clip(np.floor(pts), 0, size - 1))
    fix = np.concatenate(points)[:FIXATIONS_PER_FRAME].astype(np.int16)
    if len(fix) < FIXATIONS_PER_FRAME:  # pad by repeating (the fixation *map* is what is scored)
        fix = np.concatenate([fix, fix[: FIXATIONS_PER_FRAME - len(fix)]])
    return (cont * 255).round().astype(np.uint8), fix


def _split_of(
    index: int, n: int, fractions: tuple[float, float, float], rng: np.random.Generator
) -> str:
    u = rng.random()
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def generate(root: str, cfg: SyntheticConfig = SyntheticConfig()) -> dict:
    """Write the corpus under ``root`` (skips work if an identical corpus is there).
    Returns the description stored in ``synthetic.json``."""
    meta_path = os.path.join(root, "synthetic.json")
    wanted = dataclasses.asdict(cfg)
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
        if meta.get("config") == json.loads(json.dumps(wanted)):
            return meta
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    os.makedirs(os.path.join(root, "ground_truth"), exist_ok=True)
    n_frames = round(cfg.seconds * cfg.fps)
    size = cfg.size
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    clips = []
    plan: list[tuple[int, ...]] = [
        (tag,) for tag in range(cfg.num_tags) for _ in range(cfg.clips_per_tag)
    ]
    for i in range(cfg.multi_tag_clips):
        a = i % cfg.num_tags
        plan.append((a, (a + 1 + i // cfg.num_tags) % cfg.num_tags))
    for index, tags in enumerate(plan):
        crng = np.random.default_rng([cfg.seed, index])
        kind = "normal"
        u = crng.random()
        multi = len(tags) > 1
        if not multi and u < cfg.mismatched_audio and cfg.num_tags > 1:
            kind = "mismatched_audio"
        elif not multi and u < cfg.mismatched_audio + cfg.static_event:
            kind = "static_event"
        elif not multi and u < cfg.mismatched_audio + cfg.static_event + cfg.silent:
            kind = "silent"
        if (
            index >= len(plan) - cfg.multi_tag_clips - cfg.no_audio_stream
            and index < len(plan) - cfg.multi_tag_clips
        ):
            kind = "no_audio_stream"
        if multi:
            kind = "multi_tag"
        video_id = f"syn{cfg.seed:03d}_{index:04d}"
        radius = size * crng.uniform(0.10, 0.13)
        objects = []
        for j, tag in enumerate(tags):
            start = (
                crng.uniform(radius + 2, size - radius - 2),
                crng.uniform(radius + 2, size - radius - 2),
            )
            if multi:  # keep the two objects on different halves
                start = (start[0], (0.27 + 0.46 * j) * size)
            speed = size / 40
            objects.append(
                EventObject(
                    tag,
                    radius,
                    start,
                    (crng.uniform(-1, 1) * speed, crng.choice([-1, 1]) * speed),
                    kind == "static_event",
                )
            )
        background = _background(crng, size)
        grey_blocks = [
            (
                crng.uniform(12, size - 12),
                crng.uniform(12, size - 12),
                crng.uniform(6, 10),
                crng.uniform(140, 200),
            )
            for _ in range(2)
        ]
        drifter = (
            crng.uniform(20, size - 20),
            crng.uniform(20, size - 20),
            crng.uniform(-1, 1) * size / 60,
            crng.uniform(-1, 1) * size / 60,
        )
        repeated_color = np.array([210, 190, 150]) + crng.uniform(-20, 20, 3)
        decoy = None
        if kind in ("normal", "mismatched_audio", "silent") and crng.random() < cfg.decoys:
            # opposite the event object's start, inside the frame
            dy, dx = size - objects[0].start[0], size - objects[0].start[1]
            decoy = (
                float(np.clip(dy, radius + 2, size - radius - 2)),
                float(np.clip(dx, radius + 2, size - radius - 2)),
            )
        repeated_at = [(crng.uniform(10, size - 10), crng.uniform(10, size - 10)) for _ in range(3)]
        frames, maps, fixations = [], [], []
        for f in range(n_frames):
            img = background.copy()
            for by, bx, half, grey in grey_blocks:  # static distractors
                img[int(by - half) : int(by + half), int(bx - half) : int(bx + half)] = grey
            dy = _reflect(drifter[0] + drifter[2] * f, 8, size - 8)
            dx = _reflect(drifter[1] + drifter[3] * f, 8, size - 8)
            img[_shape_mask("circle", yy, xx, dy, dx, size * 0.07)] = (
                225,
                225,
                225,
            )  # drifting distractor
            for ry, rx in repeated_at:  # the same small object at several places
                img[_shape_mask("square", yy, xx, ry, rx, size * 0.05)] = repeated_color
            if decoy is not None:
                _draw_event(
                    img,
                    EventObject(objects[0].tag, radius, decoy, (0.0, 0.0), True),
                    decoy[0],
                    decoy[1],
                    cfg.num_tags,
                    yy,
                    xx,
                )
            centers = []
            for obj in objects:
                cy, cx = _event_position(obj, f, size)
                _draw_event(img, obj, cy, cx, cfg.num_tags, yy, xx)
                centers.append((cy, cx, obj.radius))
            frames.append(np.clip(img, 0, 255).astype(np.uint8))
            gmap, gfix = _gt_frame(centers, size, crng)
            maps.append(gmap)
            fixations.append(gfix)
        audio = None
        if kind != "no_audio_stream":
            noise = crng.normal(0, 0.003, round(cfg.seconds * cfg.audio_rate))
            if kind == "silent":
                audio = noise
            elif kind == "mismatched_audio":
                other = (tags[0] + 1 + int(crng.integers(cfg.num_tags - 1))) % cfg.num_tags
                audio = _tone(other, cfg.seconds, cfg.audio_rate, crng) + noise
            else:
                audio = (
                    sum(_tone(t, cfg.seconds, cfg.audio_rate, crng) for t in tags) / len(tags)
                    + noise
                )
        rel = f"videos/{video_id}.mp4"
        _write_video(os.path.join(root, rel), frames, audio, cfg)
        times = np.arange(n_frames) / cfg.fps
        np.savez_compressed(
            os.path.join(root, "ground_truth", f"{video_id}.npz"),
            times=times,
            maps=np.stack(maps),
            fixations=np.stack(fixations),
        )
        clips.append(
            {
                "video": rel,
                "tag": "|".join(TAG_NAMES[t] for t in tags),
                "video_id": video_id,
                "split": _split_of(index, len(plan), cfg.split_fractions, crng),
                "start_s": 0.0,
                "end_s": float(cfg.seconds),
                "kind": kind,
                "decoy": decoy is not None,
            }
        )
    with open(os.path.join(root, "manifest.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(clips[0]))
        writer.writeheader()
        writer.writerows(clips)
    meta = {
        "config": json.loads(json.dumps(wanted)),
        "tags": list(TAG_NAMES[: cfg.num_tags]),
        "clips": clips,
    }
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=1)
    log.info("synthetic corpus: %d clips, %d tags under %s", len(clips), cfg.num_tags, root)
    return meta


def load_ground_truth(root: str, video_id: str) -> dict[str, np.ndarray]:
    """``times``, ``maps`` (T, H, W) float in [0, 1], ``fixations`` (T, H, W) bool."""
    with np.load(os.path.join(root, "ground_truth", f"{video_id}.npz")) as z:
        maps = z["maps"].astype(np.float32) / 255.0
        pts = z["fixations"]
        fix = np.zeros(maps.shape, dtype=bool)
        for t in range(maps.shape[0]):
            fix[t, pts[t, :, 0], pts[t, :, 1]] = True
        return {"times": z["times"], "maps": maps, "fixations": fix}
