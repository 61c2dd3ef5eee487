"""Where a + net loses the object: CC of its branch's CAM (before the C-GCN) and of its
final CAM (after it) against the ground truth, next to the coarse S net's CAM, on
held-out clips of a synthetic world; and how far the C-GCN's 1x1 convs moved.

    python bench/plus_diagnostic.py BUNDLE HELDOUT_CORPUS
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from factory.io.corpus import read_corpus
from factory.io.decode import decode_clip
from factory.io.synthetic import load_ground_truth
from factory.method import equations as eq
from factory.method import metrics as M
from factory.method.bundle import load_bundle
from factory.method.inputs import gather_inputs
from factory.method.labeler import Labeler
from models.registry import NETS, plus_net

bundle = load_bundle(sys.argv[1])
held = sys.argv[2]
lab = Labeler(bundle, None)
recs = [r for r in read_corpus(held + "/manifest.csv").records if len(r.tags) == 1][:12]
w = bundle.preset.plus_weights
out = {}
torch.set_grad_enabled(False)
for r in recs:
    clip = decode_clip(r, bundle.preset.frames, bundle.preset.spectrogram)
    feats, frames = lab.encode_clip(clip, r.tags)
    g = load_ground_truth(held, r.key)
    i = bundle.tag_index(r.tags[0])
    t = frames.shape[0]
    idx = torch.full((t,), i)
    for n, term in (("S+", "short"), ("S+", "long"), ("ST+", "short")):
        name = plus_net(n, term, w)
        net = bundle.net(name)
        inputs, _ = gather_inputs(
            NETS[n].spec, feats, np.arange(t), term=term, key=r.key, settings=lab.settings
        )
        branch = net.branch_maps(inputs)[:, 0]
        fused = net.forward_features(inputs)
        for kind, maps in (("branch", branch), ("fused", fused)):
            cam = eq.class_activation_map(maps, idx)
            cam = F.interpolate(cam[:, None], size=frames.shape[-2:], mode="bilinear")[:, 0].numpy()
            ccs = [
                M.cc(M.stavis_preprocess(cam[k], g["maps"][k].shape), g["maps"][k])
                for k in range(0, t, 2)
            ]
            out.setdefault((name, term, kind), []).extend(ccs)
        s_maps, _, _ = lab.run_net("S", feats, r.key)
        cam = eq.class_activation_map(s_maps, idx)
        cam = F.interpolate(cam[:, None], size=frames.shape[-2:], mode="bilinear")[:, 0].numpy()
        out.setdefault(("S", "", "coarse"), []).extend(
            [
                M.cc(M.stavis_preprocess(cam[k], g["maps"][k].shape), g["maps"][k])
                for k in range(0, t, 2)
            ]
        )
for k, v in out.items():
    print(k, round(float(np.nanmean(v)), 3), len(v))
for name in bundle.nets:
    if "+" in name:
        net = bundle.net(name)
        print(
            name,
            "affinity |w|",
            [round(float(c.weight.abs().mean()), 3) for c in net.cgcn.affinity_convs],
            "classifier diag",
            round(float(torch.diagonal(net.classifier.layers[-1].weight[..., 0, 0]).mean()), 3),
        )
