"""The labeler: SCAM+ pseudo-fixation maps for a decoded, tagged clip. Plain PyTorch (no
Ray), so it can be tested and profiled alone, on CPU or GPU.

Per clip and tag ``i`` (SPEC.md section 3):

1. encode every frame once: the image trunk (F4, F5) and the dilated VGG16 at the
   coarse size, the audio encoder on each frame's 1 s window, the audio switch;
2. coarse SCAM (Eq. 1-3) from S, ST, SA; the coarse box (2 x mean, tight box);
3. fine stage: t-1, t, t+1 cropped to the target's box at the fine size (the only other
   encoder passes), fine S, ST, SA CAMs pasted back to full-frame coordinates; fine SCAM;
4. the 8 multigranularity pairs from S+, ST+, SA+ with short, long and cross terms;
5. SCAM+ (Eq. 8) over the 3 fine sources and the 8 pairs: the pseudo-fixation map.

Every net reads the features computed in step 1 / 3, so each frame is encoded once at
the coarse size whatever the number of nets and windows that use it (the performance
floor of SPEC.md section 6). A source that cannot run for a frame (no audio stream; no
other clip of the tag in the pool) gets weight 0 in Eq. 8 and is counted.

Multi-tag clips (beyond the paper): one SCAM+ per tag, where Eq. 3's "ranked first"
ignores the clip's other true tags (:func:`for_tag`); the per-tag maps are combined by
the per-pixel maximum (:func:`combine_tags`), so every tagged object stays salient.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from factory.io.decode import DecodedClip
from factory.io.geometry import content_mask
from factory.method import equations as eq
from factory.method.bundle import TAGGER_FOLDS, Bundle
from factory.method.encoding import FrameEncoder, normalize_frames, resize_square
from factory.method.inputs import ClipFeatures, Span, WindowSettings, gather_inputs
from factory.method.pool import PoolEntries, PoolSource
from factory.method.postprocess import POSTPROCESS
from models.registry import NETS, PLUS_PAIRS, NetId, plus_net

log = logging.getLogger(__name__)

SWITCH_GATES = ("net", "tagger")  # see factory.config.LabelConfig.switch_gate
SOURCES = ("S", "ST", "SA", *tuple(f"{net}{term}" for net, term in PLUS_PAIRS))
# The column of each multigranularity pair's own CAM: ("S+", "short") -> "s_plus_short".
PAIR_MAPS = tuple(f"{net[:-1].lower()}_plus_{term}" for net, term in PLUS_PAIRS)
# ``--ablation``'s maps, one per pseudo-ground-truth variant of the paper's Table 1:
# coarse single-source CAMs, AC (Eq. 22) and SCAM (Eq. 2); the same after the fine stage
# (CAMs pasted back into the frame); each of the eight ``+`` pairs alone (upsampled to
# the frame); CAM' (the plain mean of the ``+`` maps) and SCAM' (Eq. 8 over the ``+``
# pairs only). The ``map`` column is SCAM+ itself.
ABLATION_MAPS = (
    "cam_s",
    "cam_st",
    "cam_sa",
    "ac",
    "scam_coarse",
    "cam_s_fine",
    "cam_st_fine",
    "cam_sa_fine",
    "ac_fine",
    "scam_fine",
    *PAIR_MAPS,
    "cam_prime",
    "scam_prime",
)
_TERM = {"short": "short (SC)", "long": "long (LC)", "cross": "cross (CC)"}
# How reports name each map column, in the paper's terms (Table 1).
MAP_NAMES = {
    "map": "SCAM+ (pseudo-fixation)",
    "map_cam_s": "CAM (S, single source)",
    "map_cam_st": "CAM (ST, single source)",
    "map_cam_sa": "CAM (SA, single source)",
    "map_ac": "AC (Eq. 22)",
    "map_scam_coarse": "SCAM (coarse)",
    "map_cam_s_fine": "CAM (S, fine)",
    "map_cam_st_fine": "CAM (ST, fine)",
    "map_cam_sa_fine": "CAM (SA, fine)",
    "map_ac_fine": "AC (fine)",
    "map_scam_fine": "SCAM (fine)",
    **{
        f"map_{col}": f"{net} {_TERM[term]} alone"
        for col, (net, term) in zip(PAIR_MAPS, PLUS_PAIRS, strict=True)
    },
    "map_cam_prime": "CAM' (mean of the + maps)",
    "map_scam_prime": "SCAM' (Eq. 8 over the + pairs)",
}


@dataclass
class ClipLabels:
    key: str
    tags: list[str]
    times: np.ndarray
    maps: np.ndarray  # (T, H, W) float32 in [0, 1]: the pseudo-fixation maps
    boxes: np.ndarray  # (T, 4) normalised coarse boxes (union over tags)
    box_fallback: np.ndarray  # (T,) bool
    confidences: dict[str, np.ndarray]  # source -> (T,) selected confidence sf(C)[i]
    gate: np.ndarray  # (T,) audio switch decisions (False without audio)
    has_audio: bool
    ablation: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (T, H, W)
    counters: dict[str, int] = field(default_factory=dict)
    source_size: tuple[int, int] = (0, 0)  # (H, W) of the video's own frames
    audio_stream: int | None = None  # the file's stream the audio came from (None: no audio)

    def frames(self, rows: slice) -> ClipLabels:
        """The labels of some of the frames (a chunk's own frames)."""
        return dataclasses.replace(
            self,
            times=self.times[rows],
            maps=self.maps[rows],
            boxes=self.boxes[rows],
            box_fallback=self.box_fallback[rows],
            confidences={k: v[rows] for k, v in self.confidences.items()},
            gate=self.gate[rows],
            ablation={k: v[rows] for k, v in self.ablation.items()},
        )

    @staticmethod
    def concat(parts: Sequence[ClipLabels]) -> ClipLabels:
        """One clip's labels from its chunks' (in order); counters summed."""
        first = parts[0]
        counters: dict[str, int] = {}
        for p in parts:
            for k, v in p.counters.items():
                counters[k] = counters.get(k, 0) + v
        return dataclasses.replace(
            first,
            times=np.concatenate([p.times for p in parts]),
            maps=np.concatenate([p.maps for p in parts]),
            boxes=np.concatenate([p.boxes for p in parts]),
            box_fallback=np.concatenate([p.box_fallback for p in parts]),
            confidences={
                k: np.concatenate([p.confidences[k] for p in parts]) for k in first.confidences
            },
            gate=np.concatenate([p.gate for p in parts]),
            ablation={k: np.concatenate([p.ablation[k] for p in parts]) for k in first.ablation},
            counters=counters,
            has_audio=any(p.has_audio for p in parts),
        )


@dataclass
class TagLabels:
    """One tag's share of a clip's labels, between :meth:`Labeler.fuse_tag` and
    :meth:`Labeler.clip_labels`: its SCAM+ (T, H, W), its weight in the multi-tag rule
    (T,), the selected confidences of the 11 sources (T, 11), its coarse boxes and their
    fallbacks, and the ``--ablation`` variants."""

    scam_plus: torch.Tensor
    weight: torch.Tensor
    selected: torch.Tensor
    boxes: torch.Tensor | None = None
    box_fallback: torch.Tensor | None = None
    ablation: dict[str, torch.Tensor] = field(default_factory=dict)


class Labeler:
    """``Labeler(bundle, pool).label(clip, tags)`` -> :class:`ClipLabels`."""

    def __init__(
        self,
        bundle: Bundle,
        pool: PoolSource | None = None,
        device: str = "auto",
        dtype: str = "auto",
        ablation: bool = False,
        channels_last: bool = True,
        frame_chunk: int | None = None,
        postprocess: str = "none",
        confidence: str | None = None,
        no_source: str | None = None,
        switch_gate: str | None = None,
    ) -> None:
        """``confidence`` / ``no_source``: the rules of Eq. 2/3/8, ``switch_gate``: what
        decides the audio switch (see :class:`factory.config.LabelConfig`); None = the
        bundle's preset's."""
        if postprocess not in POSTPROCESS:
            raise ValueError(f"postprocess {postprocess!r}: one of {', '.join(POSTPROCESS)}")
        self.confidence = confidence or bundle.preset.label.confidence
        self.no_source = no_source or bundle.preset.label.no_source
        if self.confidence not in eq.CONFIDENCES:
            raise ValueError(f"confidence {self.confidence!r}: one of {', '.join(eq.CONFIDENCES)}")
        if self.no_source not in eq.NO_SOURCE:
            raise ValueError(f"no_source {self.no_source!r}: one of {', '.join(eq.NO_SOURCE)}")
        self.switch_gate = switch_gate or bundle.preset.label.switch_gate
        if self.switch_gate not in SWITCH_GATES:
            raise ValueError(f"switch_gate {self.switch_gate!r}: one of {', '.join(SWITCH_GATES)}")
        if self.switch_gate == "tagger" and not set(TAGGER_FOLDS) <= set(bundle.nets):
            raise ValueError(
                f"switch_gate 'tagger': bundle {bundle.uri or '(in memory)'} holds no audio "
                "tagger (trained with --audio-tagger, or before the taggers were kept); "
                "retrain it without --audio-tagger, or label with --switch-gate net"
            )
        self.bundle = bundle
        self.pool = pool
        self.ablation = ablation
        self.postprocess = POSTPROCESS[postprocess]
        self.encoder = FrameEncoder(
            bundle.encoders, bundle.preset, device, dtype, channels_last, frame_chunk
        )
        self.device = self.encoder.device
        self.frame_chunk = self.encoder.chunk
        self.settings = WindowSettings.from_preset(bundle.preset)
        self.frames_cfg = bundle.preset.frames
        for net in bundle.nets.values():
            net.to(self.device).eval()
        self._pool_features: dict[str, PoolEntries] = {}
        self._prepared: dict[str, tuple[ClipFeatures, torch.Tensor]] = {}

    @property
    def encoder_passes(self) -> dict[str, int]:
        return self.encoder.passes

    def gate(self, f5: torch.Tensor, audio: torch.Tensor, tag_ids: Sequence[int]) -> torch.Tensor:
        """The audio switch's decision per frame (1 = the sound belongs to the picture):
        ``switch_gate = "net"`` the switch net on the frame's F5 and audio vector (the
        paper); ``"tagger"`` the audio tagger's folds (mean logits) ranking one of
        ``tag_ids`` first (not the paper's; the rule of the switch's training labels,
        :func:`factory.train.prepare.switch_labels`)."""
        out = []
        for img, aud in zip(f5.split(self.frame_chunk), audio.split(self.frame_chunk), strict=True):
            with self.encoder.autocast():
                if self.switch_gate == "tagger":
                    if not tag_ids:
                        raise ValueError("switch_gate 'tagger' needs the tags of the frames")
                    logits = sum(self.bundle.net(n)({"audio": aud}).float() for n in TAGGER_FOLDS)
                    tags = torch.as_tensor(list(tag_ids), device=aud.device)
                    out.append(torch.isin(logits.argmax(1), tags).float())
                else:
                    switch = self.bundle.net("switch")
                    out.append((switch({"image": img[:, None], "audio": aud})[:, 0] > 0).float())
        return torch.cat(out) if out else torch.zeros(0, device=self.device)

    @torch.inference_mode()
    def prepare(self, clips: Sequence[DecodedClip]) -> None:
        """Encode the frames of several clips in shared batches, ahead of labelling them one
        by one with :meth:`label` (the actor's batch; what a clip does not use is dropped
        at the next call)."""
        self._prepared = dict(
            zip([c.key for c in clips], self.encoder.clips(list(clips)), strict=True)
        )

    @torch.inference_mode()
    def encode_clip(
        self, clip: DecodedClip, tags: Sequence[str]
    ) -> tuple[ClipFeatures, torch.Tensor]:
        """Step 1: features of every frame, once, plus the audio switch's decisions (for
        the clip's ``tags``: see :meth:`gate`). Returns (features, normalised full-size
        frames)."""
        prepared = self._prepared.pop(clip.key, None)
        feats, frames = prepared if prepared is not None else self.encoder.clip(clip)
        if clip.has_audio:
            tag_ids = [self.bundle.tag_index(t) for t in tags]
            feats["gate"] = self.gate(feats["F5"], feats["audio"], tag_ids)
        else:
            feats["gate"] = torch.zeros(frames.shape[0], device=self.device)
        return feats, frames

    @torch.inference_mode()
    def pool_features(self, tag: str) -> PoolEntries | None:
        """A tag's pool entries encoded once per labeler (then cached)."""
        if tag in self._pool_features:
            return self._pool_features[tag]
        raw = self.pool.get(tag) if self.pool is not None else None
        if raw is None or len(raw) == 0:
            self._pool_features[tag] = PoolEntries([], {})
            return self._pool_features[tag]
        feats = self.group_features(
            np.array(raw.arrays["frames"]),
            raw.arrays["audio"],
            np.array(raw.arrays["has_audio"]),
            tag_ids=[self.bundle.tag_index(tag)],
        )
        entries = PoolEntries(list(raw.keys), feats)
        self._pool_features[tag] = entries
        return entries

    @torch.inference_mode()
    def group_features(
        self,
        frames: np.ndarray,
        audio: np.ndarray,
        has_audio: np.ndarray,
        tag_ids: Sequence[int] = (),
    ) -> dict[str, torch.Tensor]:
        """What a + net reads of 3-frame groups (a tag's pool, a long clip's long-term
        pool): ``frames`` (E, 3, H, W, 3) uint8 at the working size, ``audio`` (E, samples)
        the centre's window, ``has_audio`` (E,) -> ``plus`` (E, 3, C, h, w), ``audio`` (E,
        D), ``gate`` (E,) (the audio switch on the centre frame, for the tags
        ``tag_ids``: see :meth:`gate`)."""
        groups = torch.from_numpy(frames).to(self.device)
        e = groups.shape[0]
        images = resize_square(normalize_frames(groups.flatten(0, 1)), self.frames_cfg.coarse_size)
        enc = self.encoder.images(images, plus=True, kind="pool")
        plus = enc["plus"].reshape(e, 3, *enc["plus"].shape[1:])
        f5_centre = enc["F5"].reshape(e, 3, *enc["F5"].shape[1:])[:, 1]
        sound = torch.from_numpy(np.asarray(has_audio)).to(self.device).bool()
        vectors = self.encoder.audio(audio) * sound[:, None]
        gate = self.gate(f5_centre, vectors, tag_ids) * sound
        return {"plus": plus, "audio": vectors, "gate": gate}

    # ------------------------------------------------------------------ nets

    def _run(
        self, net_name: str, inputs: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class maps and confidences of a net, in chunks over the batch."""
        net = self.bundle.net(net_name)
        b = next(iter(inputs.values())).shape[0]
        maps, confs = [], []
        for start in range(0, b, self.frame_chunk):
            part = {k: v[start : start + self.frame_chunk] for k, v in inputs.items()}
            with self.encoder.autocast():
                m = net.forward_features(part)
            m = m.float()
            maps.append(m)
            confs.append(eq.class_confidences(net.forward_head(m), self.confidence))
        return torch.cat(maps), torch.cat(confs)

    def _cam(self, maps: torch.Tensor, tag: int, size: tuple[int, int]) -> torch.Tensor:
        idx = torch.full((maps.shape[0],), tag, dtype=torch.long, device=maps.device)
        cam = eq.class_activation_map(maps, idx)
        return F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[
            :, 0
        ].clamp(0, 1)

    # ------------------------------------------------------------------ stages

    @torch.inference_mode()
    def run_net(
        self,
        name: str,
        feats: ClipFeatures,
        key: str,
        stage: str = "coarse",
        term: str | None = None,
        pool: PoolEntries | None = None,
        span: Span | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class maps, confidences, valid mask) of a bundle net over every frame."""
        spec = NETS[NetId.parse(name).base].spec
        targets = np.arange(feats["gate"].shape[0])
        inputs, valid = gather_inputs(
            spec,
            feats,
            targets,
            stage=stage,
            term=term,
            key=key,
            settings=self.settings,
            pool=pool,
            span=span,
        )
        maps, conf = self._run(name, inputs)
        return maps, conf, valid

    @torch.inference_mode()
    def coarse_scam(
        self,
        feats: ClipFeatures,
        key: str,
        has_audio: bool,
        tag: int,
        size: tuple[int, int],
        cache: dict | None = None,
        other_tags: Sequence[int] = (),
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Step 2: the coarse CAMs (T, 3, H, W) of S, ST, SA, their confidences
        (T, 3, c) and the coarse SCAM (T, H, W). ``cache`` keeps the nets' outputs across
        tags; ``other_tags`` are the clip's other tags (see :func:`for_tag`)."""
        cache = {} if cache is None else cache
        t = feats["gate"].shape[0]
        cams, confs = [], []
        for name in ("S", "ST", "SA"):
            if name == "SA" and not has_audio:  # no audio: SA takes no part
                cams.append(torch.zeros(t, *size, device=self.device))
                confs.append(torch.zeros_like(confs[0]))
                continue
            if name not in cache:
                cache[name] = self.run_net(name, feats, key)
            maps, conf, _ = cache[name]
            cams.append(self._cam(maps, tag, size))
            confs.append(conf)
        cams_c, confs_c = torch.stack(cams, 1), for_tag(torch.stack(confs, 1), other_tags)
        idx = torch.full((t,), tag, dtype=torch.long, device=self.device)
        return cams_c, confs_c, eq.scam(cams_c, confs_c, idx, no_source=self.no_source)

    @torch.inference_mode()
    def fine_features(self, frames: torch.Tensor, boxes: torch.Tensor) -> ClipFeatures:
        """Step 3's encoder passes: t-1, t, t+1 cropped to box_t, at the fine size."""
        t = frames.shape[0]
        idx = torch.clamp(
            torch.arange(t, device=frames.device)[:, None]
            + torch.tensor([-1, 0, 1], device=frames.device),
            0,
            t - 1,
        )
        crops = eq.crop_resize(
            frames[idx.flatten()],
            boxes.repeat_interleave(3, dim=0),
            (self.frames_cfg.fine_size,) * 2,
        )
        enc = self.encoder.images(crops, plus=False, kind="fine")
        f4 = enc["F4"].reshape(t, 3, *enc["F4"].shape[1:])[:, 1]
        f5 = enc["F5"].reshape(t, 3, *enc["F5"].shape[1:])
        return {"crop_F4": f4, "crop_F5": f5}

    # ------------------------------------------------------------------ labelling

    @torch.inference_mode()
    def label(
        self,
        clip: DecodedClip,
        tags: Sequence[str],
        span: Span | None = None,
        own: slice = slice(None),
    ) -> ClipLabels:
        """SCAM+ for every frame of ``clip`` and each of its ``tags``, in five steps:
        encode the frames once; per tag, the coarse SCAM and its box (:meth:`coarse_scam`),
        the fine CAMs on the box's crops (:meth:`fine_stage`), the ``+`` CAMs through the
        C-GCN (:meth:`plus_stage`) and their fusion by Eq. 8 (:meth:`fuse_tag`); then the
        tags' maps combined into the clip's rows (:meth:`clip_labels`). A chunk of a longer
        clip (:mod:`factory.method.chunks`) comes with its ``span`` and the rows it
        ``own``s (the others are context on either side); only those are returned and
        counted."""
        if not tags:
            raise ValueError(f"clip {clip.key!r}: no tags to label with")
        feats, frames = self.encode_clip(clip, tags)
        size = (frames.shape[-2], frames.shape[-1])
        counters = {"box_fallbacks": 0, "cross_missing": 0, "frames_without_source": 0}
        coarse_cache: dict = {}
        plus_cache: dict = {}
        per_tag: list[TagLabels] = []
        tag_ids = [self.bundle.tag_index(tag) for tag in tags]
        for tag, i in zip(tags, tag_ids, strict=True):
            others = [j for j in tag_ids if j != i]
            idx = torch.full((frames.shape[0],), i, dtype=torch.long, device=self.device)
            cams_c, _, scam_coarse = self.coarse_scam(
                feats, clip.key, clip.has_audio, i, size, coarse_cache, others
            )
            boxes, fell_back = eq.coarse_box(scam_coarse)
            counters["box_fallbacks"] += int(fell_back[own].sum())
            cams_f, confs_f = self.fine_stage(feats, frames, boxes, clip, idx, size, others)
            cams_p, confs_p = self.plus_stage(
                feats, clip, tag, idx, span, own, counters, plus_cache
            )
            tag_labels = self.fuse_tag(cams_f, confs_f, cams_p, confs_p, idx, others)
            tag_labels.boxes, tag_labels.box_fallback = boxes, fell_back
            counters["frames_without_source"] += int((tag_labels.selected.sum(1) == 0)[own].sum())
            if self.ablation:
                tag_labels.ablation = self.ablation_variants(
                    cams_c,
                    scam_coarse,
                    cams_f,
                    confs_f,
                    cams_p,
                    confs_p,
                    idx,
                    others,
                    clip.has_audio,
                )
            per_tag.append(tag_labels)
        return self.clip_labels(clip, tags, per_tag, feats, size, counters).frames(own)

    def fine_stage(
        self,
        feats: dict[str, torch.Tensor],
        frames: torch.Tensor,
        boxes: torch.Tensor,
        clip: DecodedClip,
        idx: torch.Tensor,
        size: tuple[int, int],
        others: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The fine nets on the coarse box's crops: their CAMs pasted back into the frame
        (T, 3, H, W) and their confidences as Eq. 3 sees them for this tag (T, 3, classes).
        Without audio SA takes no part (a zero map, zero confidence)."""
        fine = {**feats, **self.fine_features(frames, boxes)}
        cams, confs = [], []
        for name in ("S_fine", "ST_fine", "SA_fine"):
            if name == "SA_fine" and not clip.has_audio:
                cams.append(torch.zeros(frames.shape[0], *size, device=self.device))
                confs.append(torch.zeros_like(confs[0]))
                continue
            maps, conf, _ = self.run_net(name, fine, clip.key, stage="fine")
            cams.append(eq.paste_back(eq.class_activation_map(maps, idx), boxes, size))
            confs.append(conf)
        return torch.stack(cams, 1), for_tag(torch.stack(confs, 1), others)

    def plus_stage(
        self,
        feats: dict[str, torch.Tensor],
        clip: DecodedClip,
        tag: str,
        idx: torch.Tensor,
        span: Span | None,
        own: slice,
        counters: dict[str, int],
        plus_cache: dict,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The eight ``+`` pairs' CAMs at their own resolution (T, 8, h, w) and raw
        confidences (T, 8, classes); a cross-term frame without a pool group counts as
        ``cross_missing`` and gets zero confidence. A pair's maps do not depend on the tag
        except through the cross term's pool, so they are cached across the clip's tags."""
        cams, confs = [], []
        for n, term in PLUS_PAIRS:
            if n == "SA+" and not clip.has_audio:
                cams.append(torch.zeros_like(cams[0]))
                confs.append(torch.zeros_like(confs[0]))
                continue
            cache_key = (n, term, tag if term == "cross" else None)
            if cache_key not in plus_cache:
                pool = self.pool_features(tag) if term == "cross" else None
                maps, conf, valid = self.run_net(
                    plus_net(n, term, self.bundle.preset.plus_weights),
                    feats,
                    clip.key,
                    term=term,
                    pool=pool,
                    span=span,
                )
                if term == "cross":
                    counters["cross_missing"] += int((~valid)[own].sum())
                plus_cache[cache_key] = (maps, conf * valid[:, None])
            maps, conf = plus_cache[cache_key]
            cams.append(eq.class_activation_map(maps, idx))
            confs.append(conf)
        return torch.stack(cams, 1), torch.stack(confs, 1)

    def fuse_tag(
        self,
        cams_f: torch.Tensor,
        confs_f: torch.Tensor,
        cams_p: torch.Tensor,
        confs_p: torch.Tensor,
        idx: torch.Tensor,
        others: list[int],
    ) -> TagLabels:
        """Eq. 8 for one tag: SCAM+ over the three fine and eight ``+`` sources, the
        selected confidences (Eq. 3) and the tag's weight in the multi-tag rule."""
        all_confs = torch.cat([confs_f, for_tag(confs_p, others)], dim=1)
        selected = eq.soft_filter(all_confs, idx[:, None].expand(-1, all_confs.shape[1]))
        scam_plus = eq.scam_plus(cams_f, all_confs, idx, low_res=cams_p, no_source=self.no_source)
        weight = eq.no_source_fallback(selected, self.no_source).sum(1)
        return TagLabels(scam_plus, weight, selected)

    def ablation_variants(
        self,
        cams_c: torch.Tensor,
        scam_coarse: torch.Tensor,
        cams_f: torch.Tensor,
        confs_f: torch.Tensor,
        cams_p: torch.Tensor,
        confs_p: torch.Tensor,
        idx: torch.Tensor,
        others: list[int],
        has_audio: bool,
    ) -> dict[str, torch.Tensor]:
        """``--ablation``: every pseudo-ground-truth variant of Table 1 for one tag."""
        size = tuple(scam_coarse.shape[-2:])
        n_src = 3 if has_audio else 2  # SA takes no part without audio
        n_pairs = len(PLUS_PAIRS) if has_audio else len(PLUS_PAIRS) - 2
        cams_up = F.interpolate(cams_p, size=size, mode="bilinear", align_corners=False).clamp(0, 1)
        return {
            "cam_s": cams_c[:, 0],
            "cam_st": cams_c[:, 1],
            "cam_sa": cams_c[:, 2],
            "ac": eq.average_cam(cams_c[:, :n_src]),
            "scam_coarse": scam_coarse,
            "cam_s_fine": cams_f[:, 0],
            "cam_st_fine": cams_f[:, 1],
            "cam_sa_fine": cams_f[:, 2],
            "ac_fine": eq.average_cam(cams_f[:, :n_src]),
            "scam_fine": eq.scam(cams_f, confs_f, idx, no_source=self.no_source),
            **{name: cams_up[:, k] for k, name in enumerate(PAIR_MAPS)},
            "cam_prime": eq.average_cam(cams_up[:, :n_pairs]),
            "scam_prime": eq.scam(cams_up, for_tag(confs_p, others), idx, no_source=self.no_source),
        }

    def clip_labels(
        self,
        clip: DecodedClip,
        tags: Sequence[str],
        per_tag: list[TagLabels],
        feats: dict[str, torch.Tensor],
        size: tuple[int, int],
        counters: dict[str, int],
    ) -> ClipLabels:
        """The tags' maps combined (:func:`combine_tags`), with the clip's boxes (the union
        over tags), confidences (the mean over tags), the audio switch's gate and the
        counters; zero on the letterbox bands."""
        weights = torch.stack([p.weight for p in per_tag], 1)  # (T, tags)
        conf_mean = torch.stack([p.selected for p in per_tag], 0).mean(0)  # (T, 11)
        boxes_u = torch.stack([p.boxes for p in per_tag], 0)
        union = torch.cat([boxes_u[..., :2].amin(0), boxes_u[..., 2:].amax(0)], dim=-1)
        on_frame = torch.from_numpy(content_mask(clip.source_size, size)).to(self.device)
        result = ClipLabels(
            key=clip.key,
            tags=list(tags),
            times=clip.times,
            maps=self._finish(
                combine_tags(torch.stack([p.scam_plus for p in per_tag], 1), weights), on_frame
            ),
            boxes=union.cpu().numpy().astype(np.float32),
            box_fallback=torch.stack([p.box_fallback for p in per_tag], 0).any(0).cpu().numpy(),
            confidences={
                s: conf_mean[:, k].cpu().numpy().astype(np.float32) for k, s in enumerate(SOURCES)
            },
            gate=feats["gate"].bool().cpu().numpy(),
            has_audio=clip.has_audio,
            counters=counters,
            source_size=tuple(clip.source_size),
            audio_stream=clip.audio_stream,
        )
        if self.ablation:
            result.ablation = {
                k: self._finish(
                    combine_tags(torch.stack([p.ablation[k] for p in per_tag], 1), weights),
                    on_frame,
                )
                for k in ABLATION_MAPS
            }
        return result

    def _finish(self, maps: torch.Tensor, on_frame: torch.Tensor) -> np.ndarray:
        """A clip's maps of one variant (T, H, W) as float32: zero on the letterbox bands
        (not part of the video, :mod:`factory.io.geometry`; the equations' maps are kept as
        they are on the video), post-processed if asked."""
        return self.postprocess(maps * on_frame).cpu().numpy().astype(np.float32)


def for_tag(confidences: torch.Tensor, other_tags: Sequence[int]) -> torch.Tensor:
    """Confidences as Eq. 3 sees them for one tag of a multi-tag clip: the clip's other
    tags are set to 0, so a source passes when it ranks this tag first among the classes
    the clip does not hold (the other true tags do not count against it). A single-tag
    clip is unchanged, so Eq. 3 holds exactly as the paper states it."""
    if not other_tags:
        return confidences
    out = confidences.clone()
    out[..., list(other_tags)] = 0.0
    return out


def combine_tags(maps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Multi-tag rule: the per-pixel maximum of the per-tag SCAM+ maps (T, tags, H, W),
    each already in [0, 1]. Every human-given tag's object keeps full salience; a tag
    that no source selects for a frame (its weight, the summed selected confidence, is
    0) gives an all-zero map there and drops out. (A confidence-weighted mean was tried
    first: nets trained on single-tag clips put nearly all confidence on one of two
    present tags, which erased the other object.) One tag: the map itself."""
    if maps.shape[1] == 1:
        return maps[:, 0]
    present = (weights > 0).to(maps.dtype)[..., None, None]
    return (maps * present).amax(dim=1)
