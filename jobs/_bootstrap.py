"""Put this checkout first on ``sys.path`` so ``python jobs/<job>.py`` (also inside a Ray
job's uploaded working dir) imports the code beside it, installed or not."""

import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in (
        "ray",
        "filelock",
        "urllib3",
        "botocore",
        "s3fs",
        "aiobotocore",
        "fsspec",
        "matplotlib",
        "PIL",
    ):
        logging.getLogger(noisy).setLevel(logging.WARNING)
