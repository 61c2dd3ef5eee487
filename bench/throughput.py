"""Label throughput, measured side by side in one run on one machine (issue 10).

Rows (frames/s counts *target* frames, i.e. labelled frames):

1. encoder floor: the encoder passes SCAM+ cannot avoid per target frame, with the
   configured encoders: one coarse-size pass (image trunk, dilated VGG16, audio) plus the
   fine-stage crop passes. Our fine ST reads t-1, t, t+1 cropped to the target's box, as
   SPEC.md section 3 states, so that is three crop passes per target ("floor"); the
   variant with one crop pass (SPEC.md section 6's 950 frames/s figure) is printed too.
2. the labeler alone (plain PyTorch, decoded clips in memory), and its ratio to the floor;
3. a naive reference in which every net encodes its own inputs, as the paper's per-net
   loaders do (each frame of each window of each net, pool entries included, re-encoded
   per net call); its maps are the labeler's, only the encoder work differs. Ratio 2 / 3;
4. the whole label job under Ray Data (list, decode, label, write Parquet) at the same
   resources, and its ratio to (2);
5. the label job on a simulated cluster (``ray.cluster_utils.Cluster``) with 1 vs 2
   labelling actors, each actor on its own node.

Rows 4-5 need Ray; ``--no-ray`` prints rows 1-3 only (the GPU script, bench/gpu.sh).
Weights are random (throughput does not depend on them). Each figure is min / median /
max over ``--repeats`` timed passes after one warm-up pass.

    python bench/throughput.py                       # CPU, tiny encoders, all rows
    python bench/throughput.py --preset paper --no-ray --device cuda   # GPU rows 1-3
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from factory.config import Preset
from factory.config import preset as get_preset
from factory.io.audio import frame_windows
from factory.io.corpus import read_corpus
from factory.io.decode import DecodedClip, decode_clip
from factory.io.synthetic import SyntheticConfig, generate
from factory.method import equations as eq
from factory.method.bundle import Bundle, build_nets, labeler_nets
from factory.method.encoding import resize_square
from factory.method.inputs import gather_inputs
from factory.method.labeler import Labeler
from factory.method.pool import PoolEntries, PoolSource
from factory.train.prepare import decoded_pool_entries
from models.encoders import Encoders
from models.registry import NETS

log = logging.getLogger("bench")


# ---------------------------------------------------------------- fixtures


def random_bundle(preset: Preset, vocabulary: list[str]) -> Bundle:
    torch.manual_seed(0)
    enc = preset.encoders
    return Bundle(
        preset,
        vocabulary,
        Encoders.from_config(enc),
        build_nets(preset, len(vocabulary), labeler_nets(preset)),
    )


def corpus(root: str, preset: Preset, clips: int, seconds: float) -> tuple[str, list]:
    """A synthetic corpus of real mp4 files (two tags) and its decoded clips."""
    tags = 2
    cfg = SyntheticConfig(
        num_tags=tags,
        clips_per_tag=max(1, clips // tags),
        seconds=seconds,
        fps=round(preset.frames.fps),
        size=preset.frames.height,
        seed=7,
    )
    generate(root, cfg)
    manifest = os.path.join(root, "manifest.csv")
    listing = read_corpus(manifest)
    decoded = [(decode_clip(r, preset.frames, preset.spectrogram), r) for r in listing.records]
    return manifest, decoded


def label_pool(decoded: list[tuple[DecodedClip, object]], preset: Preset) -> PoolSource:
    by_tag: dict[str, list[PoolEntries]] = {}
    for clip, rec in decoded:
        for tag in rec.tags:
            by_tag.setdefault(tag, []).append(
                decoded_pool_entries(clip, preset.windows.pool_groups, preset)
            )
    return PoolSource({t: PoolEntries.concat(p) for t, p in by_tag.items()})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], int], repeats: int, device: torch.device) -> list[float]:
    """frames/s of ``fn`` (which returns the frames it did) over ``repeats`` passes,
    after one warm-up pass."""
    fn()
    sync(device)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        frames = fn()
        sync(device)
        rates.append(frames / (time.perf_counter() - t0))
    return rates


# ---------------------------------------------------------------- rows 1-3


def floor_pass(labeler: Labeler, clips: list[DecodedClip], crops_per_target: int) -> int:
    """The unavoidable encoder work: every frame once at the coarse size (both image
    trunks and the audio trunk), then ``crops_per_target`` crop passes per frame."""
    frames = 0
    enc = labeler.encoder
    fine = (labeler.frames_cfg.fine_size,) * 2
    with torch.inference_mode():
        for clip in clips:
            _feats, images = enc.clip(clip)
            t = images.shape[0]
            boxes = torch.tensor([[0.2, 0.2, 0.8, 0.8]], device=images.device).expand(t, -1)
            idx = torch.arange(t, device=images.device).repeat_interleave(crops_per_target)
            crops = eq.crop_resize(images[idx], boxes.repeat_interleave(crops_per_target, 0), fine)
            enc.images(crops, plus=False, kind="fine")
            frames += t
    return frames


class NaiveLabeler(Labeler):
    """Every net encodes its own inputs (the paper's code): before each net call, the
    encoder work of that net's windows is done again for every frame slot they read."""

    def label(self, clip, tags):  # type: ignore[override]
        self._clip = clip
        self._images = self.encoder.frames(clip.frames)
        return super().label(clip, tags)

    def pool_features(self, tag):  # type: ignore[override]
        self._pool_features.pop(tag, None)  # re-encoded per net call
        return super().pool_features(tag)

    def fine_features(self, frames, boxes):  # type: ignore[override]
        self._boxes = boxes
        return super().fine_features(frames, boxes)

    def run_net(self, name, feats, key, stage="coarse", term=None, pool=None):  # type: ignore[override]
        spec = NETS[name.removesuffix("_fine")].spec
        targets = np.arange(feats["gate"].shape[0])
        inputs, _ = gather_inputs(
            spec, feats, targets, stage=stage, term=term, key=key, settings=self.settings, pool=pool
        )
        t = len(targets)
        image_slots = int(np.prod(inputs["image"].shape[1:-3]))  # frames read per sample
        enc = self.encoder
        with torch.inference_mode():
            if stage == "fine":
                size = (self.frames_cfg.fine_size,) * 2
                idx = torch.arange(t, device=self.device).repeat_interleave(image_slots)
                crops = eq.crop_resize(
                    self._images[idx], self._boxes.repeat_interleave(image_slots, 0), size
                )
                enc.images(crops, plus=False, kind="fine")
            else:
                coarse = resize_square(self._images, self.frames_cfg.coarse_size)
                for _ in range(image_slots):
                    if spec.trunk == "plus":
                        for chunk in coarse.split(self.frame_chunk):
                            with enc.autocast():
                                enc.encoders.plus(chunk)
                            enc.passes["coarse"] += chunk.shape[0]
                    else:
                        enc.images(coarse, plus=False, kind="coarse")
            if spec.audio and self._clip.has_audio:
                audio_slots = inputs["audio"].shape[1] if inputs["audio"].dim() == 3 else 1
                windows = frame_windows(
                    self._clip.audio,
                    self._clip.audio_t0,
                    self._clip.times,
                    self.bundle.preset.spectrogram,
                )
                for _ in range(audio_slots):
                    enc.audio(windows)
        return super().run_net(name, feats, key, stage, term, pool)


def label_pass(labeler: Labeler, decoded: list, batch: int = 4) -> int:
    """Label every clip, ``batch`` clips' frames encoded together (as the label actor
    does with its default --batch-size)."""
    frames = 0
    for start in range(0, len(decoded), batch):
        part = decoded[start : start + batch]
        labeler.prepare([clip for clip, _ in part])
        for clip, rec in part:
            frames += labeler.label(clip, list(rec.tags)).maps.shape[0]
    return frames


# ---------------------------------------------------------------- rows 4-5


def label_job(manifest: str, bundle_dir: str, out: str, actors: int, device: str, **kw):
    """One run of the label job; returns its LabelSummary."""
    from factory.jobs.label import LabelOptions, run_label

    return run_label(
        LabelOptions(
            corpus=manifest, bundle=bundle_dir, out=out, actors=actors, device=device, **kw
        )
    )


def label_job_rate(
    manifest: str, bundle_dir: str, out: str, actors: int, device: str, **kw
) -> tuple[float, float, float]:
    """(the whole job's frames/s, its steady-state frames/s, its start-up seconds). Steady
    state: from the first labelled clip to the last commit; start-up: from the job's
    start to its first committed shard (see factory.pipelines.sink.StreamStats)."""
    summary = label_job(
        manifest, bundle_dir, out, actors, device, preview=False, clips_per_shard=4, **kw
    )
    log.warning(
        "label job: %d frames in %.1f s; start-up %.1f s, steady %.1f frames/s; stages %s",
        summary.frames,
        summary.seconds,
        summary.stream["startup_s"],
        summary.stream["steady_frames_per_s"],
        summary.stream["stage_seconds"],
    )
    st = summary.stream
    return summary.frames / summary.seconds, st["steady_frames_per_s"], st["startup_s"]


def actor_kw(args) -> dict:
    """The label job's actor resources from the bench's flags."""
    return {"actor_cpus": args.actor_cpus, "actor_threads": args.actor_threads}


def ray_rows(args, manifest: str, bundle_dir: str, work: str, cpus: int) -> dict[str, list[float]]:
    """Row 4 on a local Ray node with the machine's CPUs; row 5 on a simulated cluster."""
    import ray
    from ray.cluster_utils import Cluster

    from factory.pipelines.cluster import init_ray

    rows: dict[str, list[float]] = {}
    kw = actor_kw(args)
    init_ray(address="local", num_cpus=cpus)
    label_job_rate(manifest, bundle_dir, os.path.join(work, "warm"), 1, args.device, **kw)
    runs = [
        label_job_rate(manifest, bundle_dir, os.path.join(work, f"job{i}"), 1, args.device, **kw)
        for i in range(args.repeats)
    ]
    rows["ray_job"] = [r[0] for r in runs]
    rows["ray_job_steady"] = [r[1] for r in runs]
    rows["ray_job_startup_s"] = [r[2] for r in runs]
    ray.shutdown()
    for actors in (1, 2):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(2):  # one actor each, plus a CPU for its node's decode and write tasks
            cluster.add_node(num_cpus=max(1, cpus // 2) + 1)
        init_ray(address=cluster.address)
        # the simulated nodes share the machine's cores: without --actor-threads each
        # actor runs as many threads as its node has CPUs for it, not the job's default
        # (the simulated cluster's CPUs shared by the actors: more than the machine has)
        node_kw = {**kw, "actor_threads": args.actor_threads or max(1, cpus // 2)}
        rows[f"actors_{actors}"] = [
            label_job_rate(
                manifest,
                bundle_dir,
                os.path.join(work, f"a{actors}_{i}"),
                actors,
                args.device,
                **node_kw,
            )[1]
            for i in range(args.repeats)
        ]
        ray.shutdown()
        cluster.shutdown()
    return rows


def scale_rows(args, preset: Preset, work: str, cpus: int) -> list[dict]:
    """The label job's cost per clip as the corpus grows (``--scale``): for each size, a
    fresh corpus of 1-second clips (two tags), the whole job timed (listing, pool,
    stream, commit, accounting and manifest), then the same command again (the resume
    listing of a finished dataset), and the shard files' sizes."""
    import ray

    from factory.io import storage
    from factory.pipelines.cluster import init_ray

    init_ray(address="local", num_cpus=cpus)
    out = []
    bundle_dir = None
    for n in args.scale:
        manifest = os.path.join(work, f"scale{n}", "corpus", "manifest.csv")
        t = time.time()
        generate(
            os.path.dirname(manifest),
            SyntheticConfig(
                num_tags=2,
                clips_per_tag=max(1, n // 2),
                seconds=1.0,
                fps=round(preset.frames.fps),
                size=preset.frames.height,
                seed=7,
            ),
        )
        made_s = time.time() - t
        if bundle_dir is None:
            vocab = sorted({t for r in read_corpus(manifest).records for t in r.tags})
            bundle_dir = os.path.join(work, "scale_bundle")
            random_bundle(preset, vocab).save(bundle_dir)
        dest = os.path.join(work, f"scale{n}", "labels")
        kw = {"preview": False, "shard_mb": args.shard_mb, **actor_kw(args)}
        first = label_job(manifest, bundle_dir, dest, args.actors, args.device, **kw)
        again = label_job(manifest, bundle_dir, dest, args.actors, args.device, **kw)
        manifest_json = storage.read_json(os.path.join(dest, "_manifest.json"))
        sizes = [os.path.getsize(os.path.join(dest, sh["file"])) for sh in manifest_json["shards"]]
        row = {
            "clips": first.inputs,
            "frames": first.frames,
            "seconds": first.seconds,
            "seconds_per_clip": first.seconds / first.inputs,
            "phases": first.phases,
            "startup_s": first.stream["startup_s"],  # to the first committed shard
            "first_label_s": first.stream["first_label_s"],
            "steady_frames_per_s": first.stream["steady_frames_per_s"],
            "stage_seconds": first.stream["stage_seconds"],
            "rerun_seconds": again.seconds,
            "shards": len(sizes),
            "shard_mb": {
                "min": min(sizes) / 2**20,
                "median": statistics.median(sizes) / 2**20,
                "max": max(sizes) / 2**20,
                "total": sum(sizes) / 2**20,
                "each": [round(x / 2**20, 3) for x in sizes],
            },
            "corpus_seconds": made_s,
        }
        log.warning("scale %d: %s", n, json.dumps(row))
        out.append(row)
    ray.shutdown()
    return out


# ---------------------------------------------------------------- main


def write_profile(labeler: Labeler, decoded: list, path: str) -> None:
    """The operators of one labeler pass, by self time (what to optimise next)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU]
    if labeler.device.type == "cuda":
        acts.append(ProfilerActivity.CUDA)
    with profile(activities=acts, record_shapes=True) as prof:
        label_pass(labeler, decoded)
        sync(labeler.device)
    key = "self_cuda_time_total" if labeler.device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=key, row_limit=30)
    table += "\n\nby input shape:\n" + prof.key_averages(group_by_input_shape=True).table(
        sort_by=key, row_limit=25, max_name_column_width=40, max_shapes_column_width=120
    )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(table)


def stats(values: list[float]) -> dict[str, float]:
    return {
        "min": min(values),
        "median": statistics.median(values),
        "max": max(values),
        "n": len(values),
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("ray", "av", "pyarrow"):
        with contextlib.suppress(ImportError):
            out[name] = __import__(name).__version__
    return out


def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    desc = f"{os.cpu_count()} x {cpu}"
    if device.type == "cuda":
        desc += f", {torch.cuda.get_device_name(device)}"
    return desc


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="tiny", choices=("tiny", "paper"))
    p.add_argument(
        "--plus-weights",
        default=None,
        choices=("pair", "type"),
        help="the + nets: 8, one per pair (the default), or 3 shared by their terms",
    )
    p.add_argument(
        "--plus-trunk",
        default=None,
        choices=("vgg", "image"),
        help="what the + nets read: the dilated VGG or the image trunk at stride 8",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument(
        "--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32"
    )
    p.add_argument("--clips", type=int, default=4, help="clips per pass (two tags)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of each clip")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--frame-chunk", type=int, default=None, help="encoder batch (frames)")
    p.add_argument("--no-ray", action="store_true", help="rows 1-3 only")
    p.add_argument(
        "--skip-naive", action="store_true", help="skip row 3 (slow with paper encoders)"
    )
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs for rows 4-5")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--profile", default=None, help="write a torch profile of one labeler pass")
    p.add_argument(
        "--scale",
        default=None,
        help="comma-separated corpus sizes (e.g. 10,100,1000): the label job's time per clip "
        "on 1-second clips at each size, instead of rows 1-5",
    )
    p.add_argument("--shard-mb", type=float, default=256.0, help="--scale: the job's --shard-mb")
    p.add_argument("--actors", type=int, default=1, help="--scale: labelling actors")
    p.add_argument(
        "--actor-cpus",
        type=float,
        default=None,
        help="rows 4-5 and --scale: the job's --actor-cpus (default: the job's default)",
    )
    p.add_argument(
        "--actor-threads",
        type=int,
        default=None,
        help="rows 4-5 and --scale: the job's --actor-threads (default: the job's default; "
        "row 5: each actor its simulated node's CPUs less one for decode and write)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(max(1, args.cpus))

    preset = get_preset(args.preset)
    if args.plus_weights:
        preset = dataclasses.replace(preset, plus_weights=args.plus_weights)
    if args.plus_trunk:
        preset = dataclasses.replace(
            preset, encoders=dataclasses.replace(preset.encoders, plus_trunk=args.plus_trunk)
        )
    work = args.work or tempfile.mkdtemp(prefix="pff-bench-")
    if args.scale:
        args.scale = [int(n) for n in args.scale.split(",")]
        return scale_main(args, preset, work)
    manifest, decoded = corpus(os.path.join(work, "corpus"), preset, args.clips, args.seconds)
    clips = [c for c, _ in decoded]
    vocab = sorted({t for _, r in decoded for t in r.tags})
    bundle = random_bundle(preset, vocab)
    pool = label_pool(decoded, preset)
    kw = {"device": args.device, "dtype": args.dtype, "frame_chunk": args.frame_chunk}
    labeler = Labeler(bundle, pool, **kw)
    device = labeler.device
    rows: dict[str, list[float]] = {}
    print(
        f"# {args.preset} encoders on {machine(device)}; {len(clips)} clips, "
        f"{sum(c.frames.shape[0] for c in clips)} target frames per pass",
        flush=True,
    )
    rows["floor"] = timed(lambda: floor_pass(labeler, clips, 3), args.repeats, device)
    rows["floor_1crop"] = timed(lambda: floor_pass(labeler, clips, 1), args.repeats, device)
    rows["labeler"] = timed(lambda: label_pass(labeler, decoded), args.repeats, device)
    labeler.encoder.passes = dict.fromkeys(labeler.encoder.passes, 0)
    label_pass(labeler, decoded)  # one counted pass: encoder passes per target frame
    passes = dict(labeler.encoder.passes)
    if args.profile:
        write_profile(labeler, decoded, args.profile)
    if not args.skip_naive:
        naive = NaiveLabeler(bundle, pool, **kw)
        rows["naive"] = timed(lambda: label_pass(naive, decoded), max(1, args.repeats - 1), device)
    if not args.no_ray:
        bundle_dir = os.path.join(work, "bundle")
        bundle.save(bundle_dir)
        rows.update(ray_rows(args, manifest, bundle_dir, work, args.cpus))

    med = {k: statistics.median(v) for k, v in rows.items()}
    ratios = {"labeler / floor": med["labeler"] / med["floor"]}
    ratios["labeler / floor (1 crop)"] = med["labeler"] / med["floor_1crop"]
    if "naive" in med:
        ratios["labeler / naive"] = med["labeler"] / med["naive"]
    if "ray_job" in med:
        ratios["ray job / labeler"] = med["ray_job"] / med["labeler"]
        ratios["ray job steady state / labeler"] = med["ray_job_steady"] / med["labeler"]
        ratios["2 actors / 1 actor"] = med["actors_2"] / med["actors_1"]
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(device),
        "device": str(device),
        "dtype": str(labeler.encoder.dtype),
        "preset": args.preset,
        "plus_weights": preset.plus_weights,
        "plus_trunk": preset.encoders.plus_trunk,
        "encoders": bundle.preset.encoders.__class__.__name__
        + " "
        + json.dumps(bundle.preset.to_dict()["encoders"], sort_keys=True),
        "coarse_size": preset.frames.coarse_size,
        "fine_size": preset.frames.fine_size,
        "versions": versions(),
        "clips": len(clips),
        "frames_per_pass": sum(c.frames.shape[0] for c in clips),
        "rows": {k: stats(v) for k, v in rows.items()},
        "ratios": ratios,
        "encoder_passes_per_target": {
            k: v / sum(c.frames.shape[0] for c in clips) for k, v in passes.items()
        },
    }
    names = {
        "floor": "1. encoder floor (coarse + 3 crops)",
        "floor_1crop": "1b. encoder floor (coarse + 1 crop)",
        "labeler": "2. labeler alone",
        "naive": "3. naive reference",
        "ray_job": "4. label job under Ray Data (whole run)",
        "ray_job_steady": "4s. label job, steady state",
        "ray_job_startup_s": "4t. label job start-up (seconds, not frames/s)",
        "actors_1": "5a. cluster, 1 actor (steady state)",
        "actors_2": "5b. cluster, 2 actors (steady state)",
    }
    print("| row | frames/s min | median | max | n |\n|---|---|---|---|---|")
    for k, s in result["rows"].items():
        print(f"| {names[k]} | {s['min']:.4g} | {s['median']:.4g} | {s['max']:.4g} | {s['n']} |")
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    print(json.dumps({k: result[k] for k in ("machine", "device", "dtype", "versions")}))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def scale_main(args, preset: Preset, work: str) -> dict:
    rows = scale_rows(args, preset, work, args.cpus)
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(torch.device("cpu")),
        "preset": args.preset,
        "versions": versions(),
        "scale": rows,
    }
    print(
        "| clips | frames | job s | s / clip | first clip labelled s | first shard committed s | "
        "steady frames/s | rerun s | shards | shard MB min / median / max |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    for r in rows:
        mb = r["shard_mb"]
        print(
            f"| {r['clips']} | {r['frames']} | {r['seconds']:.1f} | {r['seconds_per_clip']:.3f} | "
            f"{r['first_label_s']:.1f} | {r['startup_s']:.1f} | {r['steady_frames_per_s']:.1f} | {r['rerun_seconds']:.1f} | "
            f"{r['shards']} | {mb['min']:.2f} / {mb['median']:.2f} / {mb['max']:.2f} |"
        )
    for r in rows:
        print(r["clips"], "clips, phases (s):", json.dumps(r["phases"]))
    if len(rows) >= 2:
        print(
            f"time per clip {rows[-1]['clips']} / {rows[-2]['clips']} clips: "
            f"{rows[-1]['seconds_per_clip'] / rows[-2]['seconds_per_clip']:.3f}"
        )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
