"""The pseudo-fixation factory, in layers (each imports only its own layer or lower ones;
ARCHITECTURE.md draws them, tests/test_layers.py checks them):

- ``factory.jobs``: one module per job (label, train, tune, distill, predict, ablate, demo);
- ``factory.pipelines``: the Ray layer (cluster, Ray Data stages, actors, sink, executors);
- ``factory.train`` and ``factory.evaluation``: fitting the nets; scoring and previewing maps;
- ``factory.method`` (with ``models``): the paper's equations, labeler, students, metrics;
- ``factory.io`` and ``factory.config``: storage, corpora, decoding, stores; presets.
"""

import os

# The checkout this package sits in (Ray workers get it on their PYTHONPATH; the bundle
# records its git commit).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
