"""Put this checkout first on ``sys.path`` so ``python jobs/<job>.py`` (also inside a Ray
job's uploaded working dir) imports the code beside it, installed or not."""

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

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


def parser(doc: str | None) -> argparse.ArgumentParser:
    """Every job's argument parser: its docstring as the help text, and ``--verbose``."""
    p = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--verbose", action="store_true", help="debug logging, and a traceback with any error"
    )
    return p


def run(main: Callable[[], None]) -> None:
    """Run a job's ``main``. A problem with the user's input or set-up (a ``ValueError``,
    a missing file, a permission error) ends the job with one line on stderr, naming the
    input, what is wrong and what to do, and exit code 2; ``--verbose`` shows the
    traceback instead. Anything else is a bug and keeps its traceback."""
    verbose = "--verbose" in sys.argv[1:]
    if verbose:
        logging.getLogger().setLevel(logging.DEBUG)
    try:
        main()
    except (
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as err:
        if verbose:
            raise
        job = os.path.basename(sys.argv[0])
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{job}: error: {message} (--verbose for the traceback)", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (the parser names the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_actor_flags(p: argparse.ArgumentParser, what: str) -> None:
    """``--actors``, ``--actor-cpus`` and ``--actor-threads`` of a job whose model runs in
    Ray Data actors (label, predict)."""
    p.add_argument(
        "--actors",
        type=positive_int,
        default=None,
        help=f"{what} actors (default: one per GPU, else each node's CPUs - 1, summed)",
    )
    p.add_argument(
        "--actor-cpus",
        type=float,
        default=None,
        help=f"CPUs Ray reserves for each {what} actor (decode takes 0.5, each writer 0.25; "
        "default: 1 per GPU actor, on CPU the CPUs decode and write leave, shared by the "
        "actors, at least 1: 1.25 for the one actor of a 2-core machine)",
    )
    p.add_argument(
        "--actor-threads",
        type=positive_int,
        default=None,
        help=f"torch threads per {what} actor (default: on CPU the cluster's cores shared by "
        "the actors, rounded down, at least 1; with --actor-cpus given, those CPUs rounded "
        "up; a GPU actor keeps Ray's setting)",
    )


def add_trainer_flags(p: argparse.ArgumentParser) -> None:
    """``--trainer-data`` and ``--trainers`` of a job that fits nets with TorchTrainers
    (train, distil)."""
    p.add_argument(
        "--trainer-data",
        default="auto",
        choices=["auto", "ray_data", "files"],
        help="how each net's trainer reads its feature cache: ray_data (a Ray Data dataset "
        "split over the net's workers, streamed), files (the net's one worker reads the "
        "Parquet files itself), auto (default: files when one worker's cache fits in its "
        "memory, else ray_data)",
    )
    p.add_argument(
        "--trainers",
        default="auto",
        choices=["auto", "phase", "net"],
        help="TorchTrainers of a phase (the nets fitted at once): phase (one trainer whose "
        "workers fit the nets, each worker its own, checkpointing each net every epoch), net "
        "(one trainer per net), auto (default: phase when each net has one worker reading "
        "the cache files, else net)",
    )


def options_from(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """A job's options dataclass from its parsed flags: every field from the flag of the
    same name (``--batch-size`` -> ``batch_size``), except those ``given`` here (flags
    that are renamed, derived or grouped, such as the execution fields); a field without
    a flag keeps its default."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if hasattr(args, f.name)
    }
    return cls(**{**values, **given})
