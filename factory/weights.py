"""Build the shared encoders from their configs, loading weights named in the config
from a local or ``s3://`` file (never from a hub).

Without a weights file an encoder is initialised from a fixed seed, so a tiny bundle
is reproducible; its weights are saved in the bundle like any other.
"""

from __future__ import annotations

import logging

import torch

from factory import storage
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
        encoders = Encoders(cfg.image, cfg.plus, cfg.audio)
    loaders = (
        (cfg.image.weights, load_image_trunk_weights, encoders.image, "image trunk"),
        (cfg.plus.weights, load_dilated_vgg_weights, encoders.plus, "dilated VGG16"),
        (cfg.audio.weights, load_audio_encoder_weights, encoders.audio, "audio encoder"),
    )
    for uri, load, module, what in loaders:
        if uri:
            try:
                load(module, storage.load_state_dict(uri))
            except (RuntimeError, KeyError) as err:
                raise ValueError(
                    f"{what} weights {storage.redact(uri)!r} do not fit the configured architecture: {err}. "
                    "Check that the file is a torchvision-format state dict of the configured encoder."
                ) from err
            log.info("loaded %s weights from %s", what, storage.redact(uri))
        else:
            log.info("%s: no weights file configured, seeded random init", what)
    encoders.train(False)
    return encoders
