"""The model bundle: every net the labeler needs, the shared encoders, the configuration,
the category vocabulary, the training metrics and content hashes. Written by
``jobs/train.py`` (and updated by ``jobs/tune.py``), read by label, tune and distill.

Layout (a directory or an ``s3://`` prefix)::

    bundle.json         preset, vocabulary, net list, C-GCN settings, metrics, sha256 of every file
    encoders.pt         the shared encoders' state dict
    nets/<name>.pt      one state dict per net (S, ST, SA, S_fine, ST_fine, SA_fine, S+, ST+, SA+, switch)

Loading checks that the bundle is complete and consistent and says what is missing.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import subprocess
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from factory import REPO_ROOT
from factory.config import Preset, from_dict
from factory.io import storage
from factory.method.weights import build_encoders
from models.config import CGCNConfig
from models.encoders import Encoders
from models.registry import NETS, NetId, build_net, plus_nets

log = logging.getLogger(__name__)

BUNDLE_FORMAT = 1


# The audio tagger's two folds (each labels the switch's training frames of the clips it
# did not see); kept in the bundle when the factory trained them, for the labeler's
# ``switch_gate = "tagger"``.
TAGGER_FOLDS = ("audio@fold0", "audio@fold1")


def labeler_nets(preset: Preset) -> tuple[str, ...]:
    """Every net the labeler reads: coarse and fine S, ST, SA, the ``+`` nets (8, one per
    pair, or 3 shared: ``preset.plus_weights``) and the audio switch."""
    return (
        "S", "ST", "SA", "S_fine", "ST_fine", "SA_fine", *plus_nets(preset.plus_weights), "switch"
    )  # fmt: skip


def base_name(net: str) -> str:
    """Registry entry of a bundle net name (``S_fine`` -> ``S``; ``audio@fold0`` ->
    ``audio``; ``ST+long`` -> ``ST+``)."""
    return NetId.parse(net).base


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=REPO_ROOT,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=REPO_ROOT,
        )
        if out.returncode == 0:
            return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


class BundleError(ValueError):
    pass


@dataclass
class Bundle:
    preset: Preset
    vocabulary: list[str]
    encoders: Encoders
    nets: dict[str, nn.Module]
    metrics: dict[str, Any] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    uri: str = ""
    tuned: dict[str, Any] = field(default_factory=dict)  # settings chosen by jobs/tune.py

    @property
    def num_classes(self) -> int:
        return len(self.vocabulary)

    @property
    def cgcn(self) -> CGCNConfig:
        return self.preset.cgcn

    def net(self, name: str) -> nn.Module:
        if name not in self.nets:
            raise BundleError(
                f"bundle {self.uri or '(in memory)'} has no net {name!r}; it has {sorted(self.nets)}"
            )
        return self.nets[name]

    def tag_index(self, tag: str) -> int:
        return self.vocabulary.index(tag)

    def fingerprint(self) -> str:
        """One hash over every file's hash: identifies the models a dataset came from."""

        return hashlib.sha256(
            "".join(f"{k}={v};" for k, v in sorted(self.hashes.items())).encode()
        ).hexdigest()[:16]

    def save(self, uri: str) -> None:
        storage.makedirs(uri)
        hashes = {
            "encoders.pt": storage.save_torch(
                self.encoders.state_dict(), storage.join(uri, "encoders.pt")
            )
        }
        for name, net in sorted(self.nets.items()):
            hashes[f"nets/{name}.pt"] = storage.save_torch(
                net.state_dict(), storage.join(uri, "nets", f"{name}.pt")
            )
        self.hashes = hashes
        self.uri = uri
        storage.write_json(
            storage.join(uri, "bundle.json"),
            {
                "format": BUNDLE_FORMAT,
                "preset": self.preset.to_dict(),
                "vocabulary": self.vocabulary,
                "nets": sorted(self.nets),
                "metrics": self.metrics,
                "tuned": self.tuned,
                "hashes": hashes,
                "code_version": code_version(),
                "saved_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            },
        )
        log.info("bundle saved to %s (%d nets)", uri, len(self.nets))


def build_nets(
    preset: Preset, num_classes: int, names: tuple[str, ...] | None = None
) -> dict[str, nn.Module]:
    """The named nets (default: every net the labeler reads), untrained."""
    return {
        name: build_net(
            base_name(name),
            num_classes,
            preset.encoders,
            preset.head_hidden,
            preset.cgcn,
            preset.head_convs,
            preset.plus_init,
            preset.switch_arch,
        )
        for name in (labeler_nets(preset) if names is None else names)
    }


def load_bundle(uri: str, required: tuple[str, ...] | None = None, verify: bool = True) -> Bundle:
    """Load and check a bundle. Raises :class:`BundleError` naming what is missing or
    inconsistent."""
    meta_uri = storage.join(uri, "bundle.json")
    if not storage.exists(meta_uri):
        raise BundleError(
            f"{uri!r} is not a model bundle: bundle.json is missing (train one with jobs/train.py)"
        )
    meta = storage.read_json(meta_uri)
    if meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(
            f"bundle {uri!r} has format {meta.get('format')}, this code reads format {BUNDLE_FORMAT}"
        )
    if required is None:
        required = labeler_nets(from_dict(meta["preset"]))
    missing_nets = [n for n in required if n not in meta.get("nets", [])]
    files = ["encoders.pt"] + [f"nets/{n}.pt" for n in meta.get("nets", [])]
    missing_files = [f for f in files if not storage.exists(storage.join(uri, f))]
    if missing_nets or missing_files:
        parts = []
        if missing_nets:
            parts.append(f"nets not trained: {', '.join(missing_nets)}")
        if missing_files:
            parts.append(f"files missing: {', '.join(missing_files)}")
        raise BundleError(
            f"bundle {uri!r} is incomplete ({'; '.join(parts)}); rerun jobs/train.py with the same --out to finish it"
        )
    preset = from_dict(meta["preset"])
    if meta.get("tuned"):
        t = meta["tuned"]
        preset = preset.replace(
            cgcn=CGCNConfig(
                steps=int(t["m"]), nodes=int(t["n"]), td=float(t["td"]), tr=float(t["tr"])
            )
        )
    vocabulary = list(meta["vocabulary"])
    hashes = meta.get("hashes", {})
    if verify:
        for f in files:
            got = storage.sha256_of(storage.join(uri, f))
            if hashes.get(f) != got:
                raise BundleError(
                    f"bundle {uri!r}: {f} does not match its recorded sha256 (the file changed after saving); retrain or restore it"
                )
    encoders = build_encoders(preset.encoders)
    encoders.load_state_dict(storage.load_torch(storage.join(uri, "encoders.pt")))
    nets = build_nets(preset, len(vocabulary), tuple(meta["nets"]))
    for name, net in nets.items():
        try:
            net.load_state_dict(storage.load_torch(storage.join(uri, "nets", f"{name}.pt")))
        except RuntimeError as err:
            raise BundleError(
                f"bundle {uri!r}: net {name} does not match its configuration: {err}"
            ) from None
        net.eval()
    encoders.eval()
    return Bundle(
        preset,
        vocabulary,
        encoders,
        nets,
        meta.get("metrics", {}),
        hashes,
        uri,
        meta.get("tuned", {}),
    )


def to_device(bundle: Bundle, device: torch.device, channels_last: bool) -> Bundle:
    fmt = (
        torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    )
    bundle.encoders.to(device=device, memory_format=fmt)
    for net in bundle.nets.values():
        net.to(device)
    return bundle


def registered(name: str) -> bool:
    return base_name(name) in NETS
