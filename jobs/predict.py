"""Predict saliency maps for videos without any tag, with the distilled students.

    python jobs/predict.py --videos SRC --students STUDENTS --out DST [--fusion eq21|eq23|max]

SRC: any corpus (tags are ignored) or a plain folder / glob of videos, local or s3://.
Ray Data streams the clips through student actors; per clip STA, STA+short and
STA+long maps are fused by Eq. 21 (default) and written in the label job's Parquet
schema without the tag columns, exactly once (rerun to resume). Options: per-frame PNG
maps (--export-png DIR) and an overlay video per clip (--overlay-video DIR).
"""

import _bootstrap

_bootstrap.setup_logging()

from factory.jobs.predict import PredictOptions, run_predict  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    p = _bootstrap.parser(__doc__)
    p.add_argument(
        "--videos", required=True, help="a corpus or a folder / glob of videos (local or s3://)"
    )
    p.add_argument("--students", required=True, help="student bundle from jobs/distill.py")
    p.add_argument("--out", required=True, help="output dataset root (local or s3://)")
    p.add_argument(
        "--fusion",
        default=None,
        choices=["eq21", "eq23", "max"],
        help="fusion of the three maps (default: the student bundle's, Eq. 21)",
    )
    p.add_argument(
        "--all-maps",
        action="store_true",
        help="also write each student's own map (map_sta, map_sta_plus_short, map_sta_plus_long)",
    )
    p.add_argument(
        "--map-size",
        default="working",
        choices=["working", "source"],
        help="where the Parquet maps live: working (the working resolution, the video "
        "letterboxed into it with its aspect kept; see README) or source (each video's own "
        "frame size)",
    )
    p.add_argument(
        "--export-png",
        default=None,
        metavar="DIR",
        help="per-frame PNG maps as DIR/<video>/maps/eyeMap_%%05d.png",
    )
    p.add_argument(
        "--overlay-video",
        default=None,
        metavar="DIR",
        help="an overlay video per clip as DIR/<video>.mp4",
    )
    _bootstrap.add_actor_flags(p, "prediction")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)",
    )
    a = p.parse_args(argv)
    s = run_predict(_bootstrap.options_from(PredictOptions, a))
    print(
        f"\npredictions: {a.out}  ({s['predicted']} clips, {s['rejected']} rejected; inputs {s['inputs']} = {s['predicted']} + {s['rejected']}; fusion {s['fusion']})"
    )


if __name__ == "__main__":
    _bootstrap.run(main)
