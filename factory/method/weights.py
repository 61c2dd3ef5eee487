"""Build the shared encoders from their configs, loading weights named in the config
from a local or ``s3://`` file (never from a hub).

Without a weights file an encoder is initialised from a fixed seed, so a tiny bundle
is reproducible; its weights are saved in the bundle like any other.
"""

from __future__ import annotations

import logging

import torch

from factory.io import storage
from models.config import EncodersConfig
from models.encoders import (
    Encoders,
    load_audio_encoder_weights,
    load_dilated_vgg_weights,
    load_image_trunk_weights,
)

log = logging.getLogger(__name__)

ENCODER_INIT_SEED = 1234


def build_encoders(cfg: EncodersConfig, seed: int = ENCODER_INIT_SEED) -> Encoders:
    """Encoders with weights from ``cfg.*.weights`` where given, else seeded init."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoders = Encoders.from_config(cfg)
    loaders = (
        (cfg.image.weights, load_image_trunk_weights, encoders.image, "image trunk"),
        *(
            ((cfg.plus.weights, load_dilated_vgg_weights, encoders.plus, "dilated VGG16"),)
            if cfg.plus_trunk == "vgg"
            else ()
        ),
        (cfg.audio.weights, load_audio_encoder_weights, encoders.audio, "audio encoder"),
    )
    for uri, load, module, what in loaders:
        if uri:
            try:
                load(module, storage.load_state_dict(uri))
            except (RuntimeError, KeyError) as err:
                first = next(
                    (ln.strip() for ln in str(err).splitlines()[1:] if ln.strip()), str(err)
                )
                raise ValueError(
                    f"{what} weights {storage.redact(uri)!r} do not fit the configured architecture "
                    f"({first[:300]}); give a torchvision-format state dict of the configured encoder"
                ) from err
            log.info("loaded %s weights from %s", what, storage.redact(uri))
        else:
            log.info("%s: no weights file configured, seeded random init", what)
    encoders.train(False)
    return encoders


def check_weights(cfg: EncodersConfig) -> None:
    """Before any cluster starts: every configured weights file exists and fits its
    encoder (a ``ValueError`` / ``FileNotFoundError`` naming the file otherwise). Builds
    the encoders once when a file is configured; does nothing without one."""
    if cfg.plus_trunk == "image" and cfg.plus.weights:
        raise ValueError(
            f"plus encoder weights {storage.redact(cfg.plus.weights)!r}: the preset's + nets "
            "read the image trunk (encoders.plus_trunk = image), not a VGG16; drop --weights "
            "plus=... or set encoders.plus_trunk=vgg"
        )
    named = {
        "image": cfg.image.weights,
        "plus": cfg.plus.weights,
        "audio": cfg.audio.weights,
    }
    for name, uri in named.items():
        if uri and not storage.exists(uri):
            raise FileNotFoundError(
                f"{name} encoder weights {storage.redact(uri)!r}: not found (give an existing "
                "file with --weights {name}=PATH, local or s3://)".replace("{name}", name)
            )
    if any(named.values()):
        build_encoders(cfg)
