"""The paper's Table 1 as a job: students trained on each pseudo-ground-truth variant,
scored on held-out clips with fixations (SPEC.md section 4).

1. **label** the training corpus with ``--ablation`` (the label job, Ray Data): every
   variant's map in one dataset (:data:`factory.method.labeler.ABLATION_MAPS` plus SCAM+);
2. **distil** one STA per variant and seed, and STA+short / STA+long on SCAM+ (the
   distil job's cache and executors: one feature cache holds the features once and the
   maps of every variant; the students are fitted by the train job's per-net training,
   on Ray Train, or in this process);
3. **predict** the held-out clips tag-free with each student (STA's map; for SCAM+ also
   Eq. 21 over STA, STA+short and STA+long, the paper's STANet+ line), and label them
   with their tags too when they have tags in the bundle's vocabulary (the raw maps of
   each variant on the same clips);
4. **score** everything against the ground truth (the evaluate job's protocol), mean and
   standard deviation over the seeds, beside the paper's AVAD numbers.

A seed is the students' seed (initialisation; the teacher, its labels and the held-out
clips are the same for every seed), so the spread says how much a student's score
moves with its own randomness, not with the teacher's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from factory.config import ExecutionConfig
from factory.evaluation.evaluate import CENTER_PRIOR, evaluate, load_truth, score_video
from factory.io import storage
from factory.io.corpus import read_corpus
from factory.io.decode import decode_clip
from factory.io.rejects import ClipError
from factory.jobs.demo import ensure_bundle, prepare_corpora
from factory.jobs.distill import build_student_cache, check_columns, fit_students, pseudo_index
from factory.jobs.label import LabelOptions, run_label
from factory.jobs.predict import video_listing
from factory.method import metrics as M
from factory.method.bundle import load_bundle
from factory.method.encoding import FrameEncoder
from factory.method.equations import final_fusion, minmax_normalize
from factory.method.inputs import WindowSettings
from factory.method.labeler import ABLATION_MAPS, MAP_NAMES
from factory.method.students import StudentRun, student_features, student_map
from factory.pipelines.executors import LocalExecutor, RayExecutor

log = logging.getLogger(__name__)

PSEUDO = "map"
VARIANTS = (*(f"map_{n}" for n in ABLATION_MAPS), PSEUDO)  # every column, SCAM+ last
FUSED = "map+fused"  # the SCAM+ students fused by Eq. 21 (STANet+)
TABLE_METRICS = ("auc_judd", "sim", "auc_shuffled", "cc", "nss")
TABLE_NAMES = {"auc_judd": "AUC-J", "sim": "SIM", "auc_shuffled": "s-AUC", "cc": "CC", "nss": "NSS"}

# The paper's Table 1 (AVAD, students), where the extracted text ties a line to one of
# our variants: (line, AUC-J, SIM, s-AUC, CC, NSS). Lines 13-20 (one + term alone) and
# 21-24 (CAM' / SCAM' with and without the FRL) lost their check marks in the PDF's
# text, so only their ranges are given (SPEC.md section 4).
PAPER_LINES: dict[str, tuple[str, tuple[float, ...] | None]] = {
    "map_cam_s": ("1", (0.774, 0.202, 0.545, 0.261, 1.269)),
    "map_cam_sa": ("2", (0.785, 0.223, 0.536, 0.269, 1.292)),
    "map_cam_st": ("3", (0.780, 0.214, 0.542, 0.277, 1.276)),
    "map_ac": ("4", (0.786, 0.219, 0.538, 0.297, 1.312)),
    "map_scam_coarse": ("5", (0.801, 0.256, 0.554, 0.345, 1.364)),
    "map_cam_s_fine": ("6", (0.834, 0.291, 0.574, 0.376, 1.528)),
    "map_cam_sa_fine": ("7", (0.843, 0.289, 0.571, 0.372, 1.581)),
    "map_cam_st_fine": ("8", (0.845, 0.304, 0.564, 0.384, 1.622)),
    "map_scam_fine": ("11", (0.873, 0.334, 0.580, 0.438, 2.018)),
    **{f"map_{n}": ("13-20: CC 0.368-0.382", None) for n in ABLATION_MAPS if "_plus_" in n},
    "map_cam_prime": ("21-24: CC 0.432-0.467", None),
    "map_scam_prime": ("21-24: CC 0.432-0.467 (SCAM' the best)", None),
    PSEUDO: ("-", None),
    FUSED: ("25", (0.887, 0.361, 0.595, 0.490, 2.318)),
}


@dataclass
class AblateOptions:
    out: str
    corpus: str  # tagged corpus: labelled with --ablation, the students learn from it
    bundle: str
    val: str  # held-out clips: a corpus (tags optional) or a folder of videos
    val_gt: str  # their fixations: a synthetic corpus or the STAViS layout (ROOT[::DB])
    seeds: int = 3
    epochs: int | None = None  # students' epochs (default: the bundle preset's)
    variants: tuple[str, ...] = VARIANTS
    postprocess: str = "none"
    gt_fps: float = 30.0
    local: bool = False  # students in this process instead of on Ray
    address: str | None = None
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)  # the students'
    # STA+short / STA+long on SCAM+ and their fusion (the STANet+ row). Off: the STA
    # students only (Table 1's lines 1-24), at a fraction of the cost on a CPU (an STA+
    # epoch of the Table 1 world is ~41 s on 2 cores, an STA epoch ~3.5 s).
    fused: bool = True


@dataclass
class AblationTable:
    """Per variant: the students' scores per seed and the raw map's scores."""

    students: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    raw: dict[str, dict[str, float]] = field(default_factory=dict)
    centre_prior: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def summary(self, variant: str) -> dict[str, tuple[float, float]]:
        runs = self.students.get(variant, [])
        return {
            m: (float(np.mean([r[m] for r in runs])), float(np.std([r[m] for r in runs])))
            for m in TABLE_METRICS
            if runs and all(m in r for r in runs)
        }

    def rows(self) -> list[str]:
        return [v for v in (*VARIANTS, FUSED) if v in self.students or v in self.raw]

    def markdown(self) -> str:
        seeds = max((len(v) for v in self.students.values()), default=0)
        head = " | ".join(TABLE_NAMES[m] for m in TABLE_METRICS)
        dashes = " | ".join("-" for _ in TABLE_METRICS)
        lines = [
            f"Students (mean ± sd over {seeds} seed(s)), raw maps on the same held-out clips, "
            "and the paper's AVAD line (Table 1).",
            "",
            f"| variant | student {head} | raw map {head} | paper line | paper {head} |",
            "|---|" + "---|" * (3 * len(TABLE_METRICS) + 1),
        ]
        for v in self.rows():
            s = self.summary(v)
            st = " | ".join(
                f"{s[m][0]:.3f} ± {s[m][1]:.3f}" if m in s else "-" for m in TABLE_METRICS
            )
            raw = self.raw.get(v, {})
            rw = " | ".join(f"{raw[m]:.3f}" if m in raw else "-" for m in TABLE_METRICS)
            line, paper = PAPER_LINES.get(v, ("-", None))
            pp = " | ".join(f"{x:.3f}" for x in paper) if paper else dashes
            lines.append(f"| {variant_name(v)} | {st} | {rw} | {line} | {pp} |")
        if self.centre_prior:
            cp = " | ".join(f"{self.centre_prior.get(m, float('nan')):.3f}" for m in TABLE_METRICS)
            lines.append(f"| centre prior | {dashes} | {cp} | - | {dashes} |")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "variants": {
                v: {
                    "name": variant_name(v),
                    "students": self.students.get(v, []),
                    "mean_sd": self.summary(v),
                    "raw": self.raw.get(v),
                    "paper_line": PAPER_LINES.get(v, ("-", None))[0],
                    "paper": dict(
                        zip(TABLE_METRICS, PAPER_LINES.get(v, ("-", None))[1] or (), strict=False)
                    ),
                }
                for v in self.rows()
            },
            "centre_prior": self.centre_prior,
            "info": self.info,
        }


def variant_name(v: str) -> str:
    if v == FUSED:
        return "SCAM+ -> STA+ fused (Eq. 21; STANet+)"
    if v == PSEUDO:
        return "SCAM+ (Eq. 8) -> STA"
    return MAP_NAMES.get(v, v)


def check_variants(variants: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(
            f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}"
        )
    return tuple(v for v in VARIANTS if v in variants)  # the table's order


# ----------------------------------------------------------------- the job


def run_ablate(opts: AblateOptions) -> AblationTable:
    t0 = time.time()
    variants = check_variants(tuple(opts.variants))
    bundle = load_bundle(opts.bundle)
    preset = bundle.preset
    if opts.epochs is not None:
        preset = preset.replace(train=dataclasses.replace(preset.train, epochs=opts.epochs))
    table = AblationTable()
    timings: dict[str, float] = {}

    # 1. the training corpus labelled with every variant
    pseudo = storage.join(opts.out, "pseudo")
    t = time.time()
    label = label_variants(opts, opts.corpus, pseudo)
    timings["label"] = time.time() - t
    check_columns(pseudo, variants)

    # 2. one cache, then a student per (variant, seed) and STA+ on SCAM+
    executor: Any = (
        LocalExecutor(opts.execution) if opts.local else RayExecutor(opts.execution, opts.address)
    )
    labelled = set(pseudo_index(pseudo))
    records = [r for r in read_corpus(opts.corpus).records if r.key in labelled]
    run_dir = storage.join(opts.out, "_run")
    cache = storage.join(run_dir, "features")
    t = time.time()
    build_student_cache(executor, records, cache, preset, opts.bundle, pseudo, variants)
    timings["student_cache"] = time.time() - t
    seeds = list(range(opts.seeds))
    runs = [StudentRun("STA", v, s) for s in seeds for v in variants]
    fused = opts.fused and PSEUDO in variants
    if fused:
        runs += [StudentRun(n, PSEUDO, s) for s in seeds for n in ("STA+short", "STA+long")]
    t = time.time()
    nets, history = fit_students(executor, runs, preset, bundle.vocabulary, run_dir, cache)
    timings["students"] = time.time() - t

    # 3-4. held-out clips: the students' maps, tag-free, scored per seed
    t = time.time()
    encoder = FrameEncoder(bundle.encoders, preset)
    nets = {k: n.to(encoder.device) for k, n in nets.items()}
    truths, feats, skipped = heldout_features(opts, bundle, preset, encoder)
    for s in seeds:
        preds = predict_heldout(nets, feats, preset, encoder, s, variants, fused)
        scores = score_methods(truths, preds)
        for method, agg in scores.items():
            if method == M_CENTRE:
                table.centre_prior = agg
            else:
                table.students.setdefault(method, []).append(agg)
    timings["predict_and_score"] = time.time() - t

    # the raw maps of each variant on the same clips (needs their tags)
    t = time.time()
    table.raw = raw_scores(opts, bundle, variants)
    timings["raw_maps"] = time.time() - t
    table.info = {
        "label": {"clips": label.labelled, "frames": label.frames, "rejects": label.rejected},
        "heldout": {"clips": len(truths), "skipped": skipped},
        "seeds": opts.seeds,
        "student_epochs": preset.train.epochs,
        "postprocess": opts.postprocess,
        "history": history,
        "seconds": {k: round(v, 1) for k, v in {**timings, "total": time.time() - t0}.items()},
        "arguments": json.loads(storage.redact(json.dumps(dataclasses.asdict(opts)))),
    }
    storage.write_json(storage.join(opts.out, "table1.json"), table.to_json())
    storage.write_bytes_atomic(
        storage.join(opts.out, "table1.md"), (table.markdown() + "\n").encode()
    )
    return table


M_CENTRE = "centre prior"


def label_variants(opts: AblateOptions, corpus: str, out: str, preview: bool = True) -> Any:
    """The label job with every variant's map (``--ablation``) and the run's post-processing."""

    return run_label(
        LabelOptions(
            corpus=corpus,
            bundle=opts.bundle,
            out=out,
            ablation=True,
            postprocess=opts.postprocess,
            address=opts.address,
            preview=preview,
        )
    )


def heldout_features(
    opts: AblateOptions, bundle: Any, preset: Any, encoder: Any
) -> tuple[list[Any], dict[str, tuple[np.ndarray, dict[str, torch.Tensor]]], list[str]]:
    """The held-out clips' ground truth and student features (the teacher's frozen
    encoders, once per clip). Clips that do not decode, or have no ground truth, are
    listed in ``skipped`` with the reason (never dropped silently)."""

    listing = video_listing(opts.val)
    skipped = [f"{j.input}: {j.reason}" for j in listing.rejects]
    switch = bundle.net("switch").to(encoder.device).eval()
    feats = {}
    for r in listing.records:
        try:
            clip = decode_clip(r, preset.frames, preset.spectrogram)
        except ClipError as err:
            skipped.append(f"{r.key}: {err}")
            continue
        feats[r.key] = (clip.times, student_features(encoder, switch, clip))
    truths = list(load_truth(opts.val_gt, set(feats), opts.gt_fps))
    no_truth = sorted(set(feats) - {t.video for t in truths})
    skipped += [f"{k}: no ground truth under {opts.val_gt}" for k in no_truth]
    for k in no_truth:
        feats.pop(k)
    if not truths:
        raise ValueError(
            f"held-out clips {opts.val!r}: none has ground truth in {opts.val_gt!r} "
            "(video ids must match the ground truth's video folders)"
        )
    for line in skipped:
        log.warning("held-out clip not scored: %s", line)
    return truths, feats, skipped


@torch.inference_mode()
def predict_heldout(
    nets: dict[str, torch.nn.Module],
    feats: dict[str, tuple[np.ndarray, dict[str, torch.Tensor]]],
    preset: Any,
    encoder: Any,
    seed: int,
    variants: tuple[str, ...],
    fused: bool = True,
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """method -> video -> (times, maps): each variant's STA, and (``fused``) the SCAM+
    students fused by Eq. 21."""

    settings = WindowSettings.from_preset(preset)
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for key, (times, f) in feats.items():
        maps = {}
        for v in variants:
            name = StudentRun("STA", v, seed).name
            maps[v] = student_map("STA", nets[name], f, key, settings, encoder, preset)
        if fused and PSEUDO in variants:
            parts = [
                minmax_normalize(maps[PSEUDO]),
                *(
                    minmax_normalize(
                        student_map(
                            n,
                            nets[StudentRun(n, PSEUDO, seed).name],
                            f,
                            key,
                            settings,
                            encoder,
                            preset,
                        )
                    )
                    for n in ("STA+short", "STA+long")
                ),
            ]
            maps[FUSED] = final_fusion(*parts)
        for method, m in maps.items():
            out.setdefault(method, {})[key] = (np.asarray(times), m.cpu().numpy())
    return out


def score_methods(
    truths: list[Any], preds: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
) -> dict[str, dict[str, float]]:
    """The evaluate job's protocol (blur, resize, per frame -> per video -> mean) for
    every method; the centre prior on the same frames."""

    per_method: dict[str, dict[str, list]] = {}
    for truth in truths:
        res = score_video(
            truth, {m: p[truth.video] for m, p in preds.items() if truth.video in p}, False, True
        )
        for method, rows in res.items():
            per_method.setdefault(M_CENTRE if method == CENTER_PRIOR else method, {})[
                truth.video
            ] = rows
    return {m: M.aggregate(v)["dataset"] for m, v in per_method.items()}


def raw_scores(
    opts: AblateOptions, bundle: Any, variants: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """Label the held-out clips with their tags (--ablation) and score every variant's
    raw map; {} when they have no tags the bundle knows (e.g. a folder of videos)."""

    try:
        listing = read_corpus(opts.val).restrict_to(bundle.vocabulary)
    except ValueError as err:
        log.info("raw maps not scored: the held-out clips are not a tagged corpus (%s)", err)
        return {}
    if not listing.records:
        log.info("raw maps not scored: no held-out clip has a tag the bundle knows")
        return {}
    out = storage.join(opts.out, "heldout-labels")
    label_variants(opts, opts.val, out, preview=False)
    report = evaluate(out, opts.val_gt, [v for v in variants], fps=opts.gt_fps)
    names = {MAP_NAMES.get(v, v): v for v in variants}
    return {
        names[m]: {k: agg["dataset"][k] for k in TABLE_METRICS if k in agg["dataset"]}
        for m, agg in report.methods.items()
        if m in names
    }


SYNTHETIC_STUDENT_EPOCHS = 2  # the embedded default's: 3 seeds x 27 students in ~35 min on 2 cores


def synthetic_defaults() -> dict[str, str]:
    """The embedded default: the demo's synthetic world and its tiny bundle (fitted once
    and cached, as ``jobs/label.py`` does): the training corpus is labelled and distilled
    from, the held-out corpus (with ground truth) is predicted and scored."""

    paths = prepare_corpora()
    ensure_bundle(paths)
    heldout = os.path.join(paths["heldout_corpus"], "manifest.csv")
    return {
        "corpus": paths["train_manifest"],
        "bundle": paths["bundle"],
        "val": heldout,
        "val_gt": paths["heldout_corpus"],
    }
