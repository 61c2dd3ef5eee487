"""The tune job: search the C-GCN's reasoning steps ``m``, multigranularity nodes ``n``
and the refine layer's ``Td`` / ``Tr`` with Ray Tune, before the students are distilled.

Each trial refits the + nets (the 8 pair nets) with its settings (the bundle's trained S, ST, SA,
fine nets, switch and encoders are reused, as the paper does), one epoch at a time;
after every epoch it labels a validation set that has fixations with SCAM+ and reports
CC (the objective by default), NSS, AUC-J and SIM. ASHA stops weak trials early. The
best trial's settings and + nets are written into the bundle (``bundle.json`` records
them under ``tuned``), with a results table and a plot beside it, so ``jobs/label.py``
and ``jobs/distill.py`` use them. Without any fixations the job refuses to run.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from factory.evaluation.evaluate import VideoTruth, is_synthetic, load_truth
from factory.io import storage
from factory.io.corpus import ClipRecord, read_corpus
from factory.io.decode import decode_clip
from factory.io.rejects import ClipError
from factory.io.store import read_parquet
from factory.jobs.train import TrainOptions, make_pool, run_dir
from factory.method import metrics as M
from factory.method.bundle import build_nets, load_bundle
from factory.method.encoding import resolve_device
from factory.method.labeler import Labeler
from factory.method.pool import PoolEntries, PoolSource, build_sketch
from factory.pipelines.cluster import cluster_gpus, init_ray
from factory.pipelines.stages import deserialize_clip, serialize_clip
from factory.train.feature_cache import read_cache_rows, rows_to_clips
from factory.train.loop import shuffled, train_epoch
from factory.train.nets import build_trainable, load_switch_labels
from factory.train.prepare import decoded_pool_entries
from models.config import CGCNConfig
from models.registry import PLUS_PAIRS, plus_nets

# The + pairs as the labeler names them in its confidences (S+short ... SA+cross).
PLUS_SOURCES = tuple(f"{net}{term}" for net, term in PLUS_PAIRS)

log = logging.getLogger(__name__)

# The paper's one-factor-at-a-time grids: Table 4 (Td, Tr at m=3, n=2) and Table 5
# (m at n=2, then n at m=3), with Td=0.8 / Tr=0.6 where not varied.
PAPER_TABLE4 = [(0.8, 0.4), (0.8, 0.8), (0.9, 0.6), (0.7, 0.6), (0.8, 0.6)]
PAPER_TABLE5_M = [2, 3, 4, 5]
PAPER_TABLE5_N = [1, 2, 3, 4]
METRICS = ("cc", "nss", "auc_judd", "sim")


def paper_grid() -> list[dict[str, float]]:
    grid = [{"m": 3, "n": 2, "td": td, "tr": tr} for td, tr in PAPER_TABLE4]
    grid += [{"m": m, "n": 2, "td": 0.8, "tr": 0.6} for m in PAPER_TABLE5_M]
    grid += [{"m": 3, "n": n, "td": 0.8, "tr": 0.6} for n in PAPER_TABLE5_N]
    unique = []
    for g in grid:
        if g not in unique:
            unique.append(g)
    return unique


@dataclass
class TuneOptions:
    bundle: str
    val: (
        str  # a synthetic corpus (videos + ground truth), or a corpus whose fixations are in val_gt
    )
    val_gt: str | None = None
    num_samples: int = 8
    grid: bool = False
    search: str = "random"  # random | grid | optuna
    epochs: int | None = None
    metric: str = "cc"
    storage: str | None = None  # default <bundle>/_tune
    name: str = "tune"
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int | None = None
    address: str | None = None
    seed: int = 0
    max_val_clips: int = 16
    device: str = "auto"  # each trial's torch device (auto: CUDA when the trial has a GPU)


class NoFixationsError(ValueError):
    pass


def decodable_clips(records: list, preset: Any, source: str) -> list[tuple[Any, tuple]]:
    """(decoded clip, tags) of each validation record that decodes; a bad or over-long
    clip is skipped with a warning, never fatal; none at all is an error."""

    decoded = []
    for r in records:
        try:
            decoded.append((decode_clip(r, preset.frames, preset.spectrogram), r.tags))
        except ClipError as err:
            log.warning("validation clip %s not used (%s: %s)", r.key, err.stage, err)
    if not decoded:
        raise ValueError(f"validation {source!r}: no clip could be decoded; see the warnings")
    return decoded


def validation_set(val: str, val_gt: str | None, max_clips: int) -> tuple[list, dict[str, Any]]:
    """(records, truth by video) of the validation clips that have fixations."""

    if is_synthetic(val):
        listing, gt = read_corpus(storage.join(val, "manifest.csv")), val
    elif val_gt:
        listing, gt = read_corpus(val), val_gt
    else:
        raise NoFixationsError(
            f"validation set {val!r} has no fixations: give a synthetic corpus (synthetic.json + ground_truth/) "
            "or a corpus plus --val-gt in a layout jobs/evaluate.py reads. The tune job will not optimise a proxy."
        )
    truth = {t.video: t for t in load_truth(gt, {r.key for r in listing.records})}
    records = [r for r in listing.records if r.key in truth][:max_clips]
    if not records:
        raise NoFixationsError(
            f"no clip of {val!r} has ground-truth fixations in {gt!r}; check that video ids match"
        )
    return records, truth


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_trial_inputs(uri: str, payload: dict[str, Any]) -> None:
    """What every trial shares, as plain arrays (no pickles: a resumed sweep reads them
    with any later version of the code, and loading them runs no code): ``pools.npz``
    (the train and validation pools, tag by tag), ``val.npz`` (the decoded validation
    clips, as the pipeline serialises them, and their ground truth) and ``index.json``
    (tags and keys), written last: its presence says the folder is complete."""

    pools: dict[str, np.ndarray] = {}
    index: dict[str, Any] = {}
    for section in ("train_pool", "val_pool"):
        index[section] = sorted(payload[section])
        for i, tag in enumerate(index[section]):
            entries = payload[section][tag]
            pools[f"{section}.{i}.keys"] = np.array(entries.keys, dtype=str)
            for name, array in entries.arrays.items():
                pools[f"{section}.{i}.{name}"] = array
    val: dict[str, np.ndarray] = {}
    index["val_clips"] = []
    for i, (clip, tags) in enumerate(payload["val_clips"]):
        truth = payload["val_truth"][clip.key]
        val[f"clip.{i}"] = np.frombuffer(serialize_clip(clip), dtype=np.uint8)
        val[f"truth.{i}.times"] = truth.times
        val[f"truth.{i}.maps"] = truth.maps
        val[f"truth.{i}.fixations"] = truth.fixations
        index["val_clips"].append([clip.key, list(tags)])
    storage.write_bytes_atomic(storage.join(uri, "pools.npz"), _npz_bytes(pools))
    storage.write_bytes_atomic(storage.join(uri, "val.npz"), _npz_bytes(val))
    storage.write_json(storage.join(uri, "index.json"), index)


def read_trial_inputs(uri: str) -> dict[str, Any]:
    """:func:`write_trial_inputs`'s payload back."""

    index = storage.read_json(storage.join(uri, "index.json"))
    payload: dict[str, Any] = {}
    with np.load(io.BytesIO(storage.read_bytes(storage.join(uri, "pools.npz")))) as z:
        for section in ("train_pool", "val_pool"):
            payload[section] = {}
            for i, tag in enumerate(index[section]):
                prefix = f"{section}.{i}."
                names = [f[len(prefix) :] for f in z.files if f.startswith(prefix)]
                payload[section][tag] = PoolEntries(
                    [str(k) for k in z[prefix + "keys"]],
                    {n: z[prefix + n] for n in names if n != "keys"},
                )
    payload["val_clips"], payload["val_truth"] = [], {}
    with np.load(io.BytesIO(storage.read_bytes(storage.join(uri, "val.npz")))) as z:
        for i, (key, tags) in enumerate(index["val_clips"]):
            payload["val_clips"].append(
                (deserialize_clip(key, z[f"clip.{i}"].tobytes()), tuple(tags))
            )
            payload["val_truth"][key] = VideoTruth(
                key, z[f"truth.{i}.times"], z[f"truth.{i}.maps"], z[f"truth.{i}.fixations"]
            )
    return payload


@dataclass(frozen=True)
class SweepShared:
    """What every trial of the sweep reads (a resumed sweep's trials read it again)."""

    bundle: str  # the bundle whose + nets each trial refits with its m, n, Td, Tr
    train_files: list[str]  # the train job's feature cache (Parquet)
    switch_labels: str | None
    inputs: str  # the folder of write_trial_inputs
    epochs: int
    seed: int
    device: str = "auto"


def score_maps(maps: np.ndarray, times: np.ndarray, truth: Any) -> dict[str, float]:
    rows = []
    for k in range(len(maps)):
        j = int(np.argmin(np.abs(truth.times - times[k])))
        rows.append(
            M.score_frame(
                M.stavis_preprocess(maps[k], truth.maps[j].shape),
                truth.maps[j],
                truth.fixations[j],
                metrics=METRICS,
            )
        )
    return {m: float(np.mean([r[m] for r in rows if r[m] is not None])) for m in METRICS}


def trial(config: dict[str, Any], shared: SweepShared) -> None:
    """Ray Tune function trainable: refit the + nets with this trial's settings, one
    epoch at a time, label and score the validation set after each. ``shared`` comes
    through ``tune.with_parameters``, not the param space: Tune rebuilds the param space
    of a restored sweep's remaining trials, and a dataclass in it came back as a tuple."""

    settings = CGCNConfig(
        steps=int(config["m"]),
        nodes=int(config["n"]),
        td=float(config["td"]),
        tr=float(config["tr"]),
    )
    bundle = load_bundle(shared.bundle, verify=False)
    preset = bundle.preset.replace(
        cgcn=settings, train=dataclasses.replace(bundle.preset.train, seed=shared.seed)
    )
    bundle.preset = preset
    device = resolve_device(shared.device)
    torch.manual_seed(shared.seed)
    inputs = read_trial_inputs(shared.inputs)
    pool = PoolSource(inputs["train_pool"])
    trainables = {
        name: build_trainable(name, preset, bundle.vocabulary, pool, device)
        for name in plus_nets(preset.plus_weights)
    }
    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location=device, weights_only=False)
        for name, (net, _, opt, _) in trainables.items():
            net.load_state_dict(state[name]["net"])
            opt.load_state_dict(state[name]["optimizer"])
        start = state["epoch"] + 1
    extra = load_switch_labels(shared.switch_labels)
    clips = list(
        rows_to_clips((r for f in shared.train_files for r in read_parquet(f).to_pylist()), extra)
    )
    val_clips, truth = inputs["val_clips"], inputs["val_truth"]
    for epoch in range(start, shared.epochs):
        for net, task, opt, _ in trainables.values():
            train_epoch(net, task, shuffled(clips, shared.seed, epoch), opt, epoch)
        for name, (net, *_rest) in trainables.items():
            bundle.nets[name] = net.eval()
        labeler = Labeler(bundle, PoolSource(inputs["val_pool"]), device=str(device))
        per_video, selected = [], []
        for c, tags in val_clips:
            labels = labeler.label(c, list(tags))
            per_video.append(score_maps(labels.maps, c.times, truth[c.key]))
            selected.append(np.stack([labels.confidences[s] > 0 for s in PLUS_SOURCES]))
        metrics = {m: float(np.mean([v[m] for v in per_video])) for m in METRICS}
        # how often Eq. 3 selects each + pair on the validation frames (a flat sweep's cause)
        sel = np.concatenate(selected, axis=1).mean(axis=1) if selected else np.zeros(0)
        metrics.update({f"selected/{s}": float(f) for s, f in zip(PLUS_SOURCES, sel, strict=True)})
        with __import__("tempfile").TemporaryDirectory() as d:
            torch.save(
                {
                    **{
                        n: {"net": t[0].state_dict(), "optimizer": t[2].state_dict()}
                        for n, t in trainables.items()
                    },
                    "epoch": epoch,
                },
                os.path.join(d, "state.pt"),
            )
            tune.report(
                {**metrics, "epoch": epoch + 1}, checkpoint=tune.Checkpoint.from_directory(d)
            )


def _search(opts: TuneOptions) -> tuple[dict[str, Any], Any, int]:
    """(param space, search algorithm, num_samples)."""

    if opts.grid or opts.search == "grid":
        return {"setting": tune.grid_search(paper_grid())}, None, 1
    space = {
        "m": tune.randint(1, 6),
        "n": tune.randint(1, 5),
        "td": tune.uniform(0.6, 0.95),
        "tr": tune.uniform(0.2, 0.9),
    }
    if opts.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as err:
            raise ValueError(
                "--search optuna needs optuna: pip install 'pseudo-fixation-factory[optuna]'"
            ) from err
        return space, OptunaSearch(metric=opts.metric, mode="max", seed=opts.seed), opts.num_samples
    if opts.search != "random":
        raise ValueError(f"unknown --search {opts.search!r}: random, grid or optuna")
    return space, None, opts.num_samples


def grid_trial(config: dict[str, Any], shared: SweepShared) -> None:
    """Grid mode: the setting arrives as one dict (a paper row)."""
    trial({**config, **config["setting"]}, shared)


def run_tune(opts: TuneOptions) -> dict[str, Any]:
    t0 = time.time()
    # the trials run in their own folders: a relative bundle path would not be found there
    opts = dataclasses.replace(opts, bundle=storage.absolute(opts.bundle))
    records, truth = validation_set(opts.val, opts.val_gt, opts.max_val_clips)
    bundle = load_bundle(opts.bundle)  # inputs checked before Ray starts
    init_ray(opts.address)
    preset = bundle.preset
    run = run_dir(TrainOptions(corpus="", out=opts.bundle))
    features = storage.join(run, "features")
    train_files = [
        f for f in storage.listdir(storage.join(features, "train")) if f.endswith(".parquet")
    ]
    if not train_files:
        raise ValueError(
            f"bundle {opts.bundle!r} has no feature cache at {features}: the train job keeps it under <bundle>/_run; rerun jobs/train.py --out {opts.bundle}"
        )
    labels_uri = storage.join(run, "switch_labels.parquet")
    switch_labels = labels_uri if storage.exists(labels_uri) else None
    storage_path = opts.storage or storage.join(opts.bundle, "_tune")
    if not storage.is_remote(storage_path):
        storage_path = os.path.abspath(storage_path)
    experiment = storage.join(storage_path, opts.name)
    inputs_uri = storage.join(storage_path, f"{opts.name}-inputs")
    if not storage.exists(storage.join(inputs_uri, "index.json")):
        # Everything the trials share, in one file (not object refs, so an interrupted
        # sweep resumed by a new driver still finds it).

        w = preset.windows
        cached = [
            ClipRecord(r["key"], "", tuple(bundle.vocabulary[i] for i in json.loads(r["tags"])))
            for r in read_cache_rows(storage.join(features, "train"), columns=["key", "tags"])
        ]
        train_pool = make_pool(features, cached, preset, load_switch_labels(switch_labels))
        decoded = decodable_clips(records, preset, opts.val)
        by_key = {c.key: c for c, _ in decoded}
        records = [r for r in records if r.key in by_key]
        vsketch = build_sketch(records, w.pool_clips, w.seed)
        val_pool = {
            tag: PoolEntries.concat(
                decoded_pool_entries(by_key[k], w.pool_groups, preset)
                for k in vsketch.candidates(tag)[: w.pool_clips]
                if k in by_key
            )
            for tag in vsketch.heaps
        }
        payload = {
            "train_pool": train_pool,
            "val_pool": val_pool,
            "val_clips": decoded,
            "val_truth": {r.key: truth[r.key] for r in records},
        }
        write_trial_inputs(inputs_uri, payload)
    epochs = opts.epochs or preset.train.epochs
    shared = SweepShared(
        bundle=opts.bundle,
        train_files=train_files,
        switch_labels=switch_labels,
        inputs=inputs_uri,
        epochs=epochs,
        seed=opts.seed,
        device=opts.device,
    )
    space, search_alg, samples = _search(opts)
    trainable = grid_trial if "setting" in space else trial
    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial if cluster_gpus() else 0}
    fn = tune.with_resources(tune.with_parameters(trainable, shared=shared), resources)
    scheduler = ASHAScheduler(
        time_attr="epoch",
        metric=opts.metric,
        mode="max",
        max_t=epochs,
        grace_period=1,
        reduction_factor=2,
    )
    if storage.exists(storage.join(experiment, "tuner.pkl")):
        log.info("resuming the sweep at %s (finished trials are kept)", experiment)
        path, fs = storage.ray_storage(experiment)
        tuner = tune.Tuner.restore(
            path, fn, resume_unfinished=True, resume_errored=True, storage_filesystem=fs
        )
    else:
        tuner = tune.Tuner(
            fn,
            param_space=space,
            tune_config=tune.TuneConfig(
                num_samples=samples,
                scheduler=scheduler,
                search_alg=search_alg,
                max_concurrent_trials=opts.max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=opts.name,
                storage_path=storage.ray_storage(storage_path)[0],
                storage_filesystem=storage.ray_storage(storage_path)[1],
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=1),
            ),
        )
    grid = tuner.fit()
    try:
        best = grid.get_best_result(metric=opts.metric, mode="max", scope="all")
    except RuntimeError:  # Ray's "No best trial found": every trial failed
        best = None
    errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error]
    if best is None or best.checkpoint is None:
        first = f": {errors[0]}" if errors else ""
        raise RuntimeError(
            f"no trial of the sweep reported a result ({len(errors)} failed{first}); see {experiment}"
        )
    if errors:  # the best is still chosen among the others; a rerun retries the failed
        log.warning(
            "%d of %d trials failed (first: %s); the best is chosen among the others. "
            "Remedy: rerun the same command to retry them; the errors are under %s",
            len(errors),
            len(grid),
            errors[0],
            experiment,
        )
    rows = []
    for r in grid:
        if r.metrics and "epoch" in r.metrics:
            cfg = r.config.get("setting") or r.config
            rows.append(
                {
                    **{k: cfg[k] for k in ("m", "n", "td", "tr")},
                    **{m: r.metrics.get(m) for m in METRICS},
                    "epochs": r.metrics["epoch"],
                    "selected": {s: r.metrics.get(f"selected/{s}") for s in PLUS_SOURCES},
                }
            )
    flat = flat_objective(rows, opts.metric)
    if flat:
        log.warning("%s", flat)
    cfg = best.config.get("setting") or best.config
    best_cfg = {
        "m": int(cfg["m"]),
        "n": int(cfg["n"]),
        "td": float(cfg["td"]),
        "tr": float(cfg["tr"]),
    }
    write_best(opts, bundle, best_cfg, best, rows, experiment)
    return {
        "best": best_cfg,
        "metrics": {m: best.metrics.get(m) for m in METRICS},
        "trials": rows,
        "flat": flat,
        "failed_trials": len(errors),
        "seconds": round(time.time() - t0, 1),
        "experiment": experiment,
    }


# Trials whose objective spans less than this say the settings changed nothing.
FLAT_OBJECTIVE = 0.01


def flat_objective(rows: list[dict[str, Any]], metric: str) -> str:
    """A warning when the sweep's objective is flat across trials (best - worst below
    ``FLAT_OBJECTIVE``), naming the + pairs that Eq. 3 never selected on the validation
    frames (then the C-GCN's settings cannot reach the pseudo-fixation); else ''.

    """
    scores = [r[metric] for r in rows if r.get(metric) is not None]
    if len(scores) < 2 or max(scores) - min(scores) >= FLAT_OBJECTIVE:
        return ""
    never = [s for s in PLUS_SOURCES if all(not (r.get("selected") or {}).get(s) for r in rows)]
    tail = (
        f"; + pairs never selected by Eq. 3 on the validation frames: {', '.join(never)}"
        if never
        else "; every + pair was selected on some validation frames"
    )
    return (
        f"the sweep's {metric} is flat: {min(scores):.4f} to {max(scores):.4f} over "
        f"{len(scores)} trials (< {FLAT_OBJECTIVE} apart), so m, n, Td, Tr changed nothing "
        f"measurable{tail}"
    )


def write_best(
    opts: TuneOptions,
    bundle: Any,
    best_cfg: dict[str, Any],
    best: Any,
    rows: list[dict[str, Any]],
    experiment: str,
) -> None:
    """Best settings and + nets into the bundle; results table and plot beside it."""

    with best.checkpoint.as_directory() as d:
        state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=False)
    settings = CGCNConfig(
        steps=best_cfg["m"], nodes=best_cfg["n"], td=best_cfg["td"], tr=best_cfg["tr"]
    )
    bundle.preset = bundle.preset.replace(cgcn=settings)
    names = plus_nets(bundle.preset.plus_weights)
    new = build_nets(bundle.preset, bundle.num_classes, names)
    for name in names:
        new[name].load_state_dict(state[name]["net"])
        bundle.nets[name] = new[name]
    bundle.tuned = {
        **best_cfg,
        "metric": opts.metric,
        "score": best.metrics.get(opts.metric),
        "metrics": {m: best.metrics.get(m) for m in METRICS},
        "validation": storage.redact(opts.val),
        "experiment": storage.redact(experiment),
        "trials": len(rows),
    }
    bundle.save(opts.bundle)
    out = storage.join(opts.bundle, "tune_results")
    storage.makedirs(out)
    header = "| m | n | Td | Tr | CC | NSS | AUC-J | SIM | epochs |\n|---|---|---|---|---|---|---|---|---|\n"
    lines = [
        f"| {r['m']} | {r['n']} | {r['td']:.2f} | {r['tr']:.2f} | "
        + " | ".join("-" if r[m] is None else f"{r[m]:.3f}" for m in METRICS)
        + f" | {r['epochs']} |"
        for r in sorted(rows, key=lambda r: -(r[opts.metric] or -1))
    ]
    storage.write_bytes_atomic(
        storage.join(out, "results.md"), (header + "\n".join(lines) + "\n").encode()
    )
    storage.write_json(storage.join(out, "results.json"), {"best": best_cfg, "trials": rows})
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
        for ax, key, label in zip(
            axes,
            ("m", "n", "td", "tr"),
            ("m (reasoning steps)", "n (MG nodes)", "Td", "Tr"),
            strict=True,
        ):
            ax.scatter([r[key] for r in rows], [r[opts.metric] for r in rows], c="tab:blue")
            ax.axvline(best_cfg[key], color="tab:red", lw=1)
            ax.set_xlabel(label)
            ax.set_ylabel(opts.metric.upper())
        fig.suptitle(f"SCAM+ {opts.metric.upper()} on the validation set per trial (red: best)")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        storage.write_bytes_atomic(storage.join(out, "objective.png"), buf.getvalue())
    except Exception as err:  # a plot never fails the sweep
        log.warning("tune plot not written: %s", err)
