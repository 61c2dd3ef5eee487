"""How often the fixation refine layer (Eq. 13-14) can separate a response region, on
held-out clips labelled by a fitted bundle (issue 14's refine-layer candidate).

Eq. 13's mask is 1 where a node's channel mean ``cm`` is below ``Td * max(cm)``. When
``max(cm) <= 0`` (no position of the node responds positively) every position is below
that bound, the mask covers the whole map, and Eq. 14 scales every position by
``(Tr sigma(cm) + 1) / 2``: the layer then suppresses the node uniformly instead of
keeping a high-response region. This counts, per C-GCN reasoning step, the share of node
maps (frame x node) in that case, and, on the others, the share of positions the mask
keeps as high-response. Every C-GCN call of the labeller is counted (all 8 pair nets).

    python bench/refine_diagnostic.py BUNDLE HELDOUT_CORPUS [--clips N]
"""

import argparse
import json
import os
import sys
from collections import defaultdict

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models.cgcn as cgcn_module
from factory.io.corpus import read_corpus
from factory.io.decode import decode_clip
from factory.io.rejects import ClipError
from factory.method.bundle import load_bundle
from factory.method.equations import fixation_refine
from factory.method.labeler import Labeler


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle")
    p.add_argument("heldout", help="a corpus folder with manifest.csv")
    p.add_argument("--clips", type=int, default=None, help="at most this many clips")
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)

    bundle = load_bundle(a.bundle)
    seen: set[tuple[float, float]] = set()  # the (Td, Tr) the labeller used (tuned or preset)
    counts: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    step = {"i": 0}

    def counted_refine(h: torch.Tensor, td_: float, tr_: float) -> torch.Tensor:
        cm = h.mean(dim=-3, keepdim=True)  # (b, n, 1, H, W)
        peak = cm.amax(dim=(-2, -1))  # (b, n, 1)
        dead = peak <= 0
        mask = cm < td_ * cm.amax(dim=(-2, -1), keepdim=True)
        high = (~mask).float().mean(dim=(-2, -1))  # kept share per node map
        seen.add((td_, tr_))
        c = counts[step["i"] % bundle.preset.cgcn.steps]
        c["maps"] += float(dead.numel())
        c["dead"] += float(dead.sum())
        c["high_share_sum"] += float(high[~dead].sum())
        step["i"] += 1
        return fixation_refine(h, td_, tr_)

    cgcn_module.fixation_refine = counted_refine  # the C-GCN's forward reads this name
    lab = Labeler(bundle, None)
    records = read_corpus(os.path.join(a.heldout, "manifest.csv")).records[: a.clips]
    skipped = []
    with torch.inference_mode():
        for r in records:
            try:
                clip = decode_clip(r, bundle.preset.frames, bundle.preset.spectrogram)
            except ClipError as e:  # the demo's held-out corpus has broken clips on purpose
                skipped.append(f"{r.key}: {e}")
                continue
            lab.label(clip, r.tags)
    out = {
        "bundle": a.bundle,
        "clips": len(records) - len(skipped),
        "skipped": skipped,
        "td_tr": sorted(seen),
        "steps": {
            s: {
                "node_maps": int(c["maps"]),
                "no_positive_response": round(c["dead"] / c["maps"], 4),
                "high_share_where_positive": round(
                    c["high_share_sum"] / max(1.0, c["maps"] - c["dead"]), 4
                ),
            }
            for s, c in sorted(counts.items())
        },
    }
    print(json.dumps(out, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
