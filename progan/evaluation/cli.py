"""`progan evaluate | generate | interpolate | export`: argument parsing only.

`progan.cli` registers these with ``add_evaluate(subparsers)`` etc.; each parser's
``run(args, parser)`` calls the same function of `progan.api`. Errors of the settings end
the command with one line (``progan <command>: error: ...``) and status 2.
"""

from __future__ import annotations

from pathlib import Path


def _add_snapshot(parser, default="latest"):
    parser.add_argument("--snapshot", default=default,
                        help=f"latest | best | best:METRIC | NAME (as `ls RUN/checkpoints` shows it, "
                             f"e.g. snapshot-000000012000) | KIMG (default {default})")


def _truncation(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive threshold, got {text!r}")
    return value


def _add_truncation(parser):
    parser.add_argument("--truncation", type=_truncation, default=None,
                        help="redraw latent components with |z| above this threshold "
                             "(the truncation trick; e.g. 1.5); default none")


def _add_labels(parser, walk=False):
    more = (" One spec per seed separated by ';' (e.g. --seeds 5,5 --labels='-Smiling;Smiling' "
            "changes only the smile), or one for all." if walk else "")
    parser.add_argument("--labels", default=None, metavar="SPEC",
                        help="conditional runs: labels to force, e.g. Smiling,Eyeglasses,-Male "
                             "(-NAME forces 0; a SPEC that starts with - is written --labels=-Male); the others "
                             "are drawn from the data with the seed."
                             + more + " Default: all drawn with the seed.")
    parser.add_argument("--labels-from", type=int, default=None, metavar="INDEX",
                        help="conditional runs: start from the labels of training image INDEX "
                             "(record order) instead of the seed's draw (default: the seed's draw)")


# -- evaluate ------------------------------------------------------------------------------


def add_evaluate(subparsers):
    parser = subparsers.add_parser(
        "evaluate", help="metrics of a run's snapshots -> metrics.jsonl, metrics.png, best.json")
    parser.add_argument("run_dir", type=Path, help="run directory")
    from progan.evaluation.registry import METRICS

    parser.add_argument("--metrics", default="swd",
                        help=f"comma-separated, the first is the run's primary metric (what "
                             f"--snapshot best means): {', '.join(METRICS)} (default swd)")
    parser.add_argument("--num-images", type=int, default=None,
                        help="generated images per snapshot, and as many reals (default 10000, "
                             "or all real images of a smaller data set; the paper: 16384 for "
                             "SWD, 20000 for MS-SSIM, 50000 for FID)")
    parser.add_argument("--snapshot", default="latest",
                        help="latest | all | best | best:METRIC | NAME (as `ls RUN/checkpoints` shows "
                             "it) | KIMG, or a comma-separated list of those (default latest)")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="real images' split (default test; falls back to train if too small)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the metrics' random sampling (the fakes are seeds 0 .. N-1; default 0)")
    parser.add_argument("--feature-extractor", choices=("inception", "random"),
                        default="inception",
                        help="for fid/kid; random is a seeded random conv net for smoke tests")
    parser.add_argument("--inception-graph", type=Path, default=None,
                        help="the 2015 Inception GraphDef (classify_image_graph_def.pb), as the "
                             "original FID code used (default: none)")
    parser.add_argument("--inception-weights", default=None,
                        help="Keras InceptionV3 weights file, or 'imagenet' to download (default: none)")
    parser.add_argument("--data", type=Path, default=None,
                        help="where the run's data set is now, if it moved (checked against the "
                             "fingerprint in config.json; default: the recorded path)")
    parser.set_defaults(run=run_evaluate)
    return parser


def run_evaluate(args, parser):
    from progan import api

    records = api.evaluate(args.run_dir, args.metrics, args.snapshot, args.num_images,
                           args.split, args.seed, args.feature_extractor,
                           args.inception_weights, args.inception_graph, data=args.data)
    from progan.evaluation.run import PLOT_FILE
    from progan.run import RunDir

    run = RunDir(args.run_dir)
    best = run.read_best()
    print(f"{len(records)} results appended to {run.metrics_file}; plot {run.path / PLOT_FILE}; "
          f"best snapshots {run.best_file} (primary metric: {best['primary']})")


# -- generate ------------------------------------------------------------------------------


def _seeds(text: str) -> list[int]:
    import argparse

    from progan.images import parse_seeds

    try:
        return parse_seeds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_generate(subparsers):
    parser = subparsers.add_parser(
        "generate", help="images from a snapshot's EMA generator: one grid PNG or a folder of PNGs")
    parser.add_argument("run_dir", type=Path, help="run directory")
    parser.add_argument("--seeds", type=_seeds, default="0-63",
                        help="latent seeds, e.g. 0-7,12; image i is seed i, as in the training "
                             "grids (default 0-63)")
    _add_truncation(parser)
    _add_labels(parser)
    _add_snapshot(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="grid.png (one grid image) or a directory (seedNNNN.png per image)")
    parser.set_defaults(run=run_generate)
    return parser


def run_generate(args, parser):
    from progan import api

    api.check_image_out(args.out)
    loaded = api.load_generator(args.run_dir, args.snapshot, log=print)
    images = api.generate(loaded, args.seeds, args.truncation, args.labels, args.labels_from,
                          out=args.out)
    print(f"{len(images)} images of kimg {loaded.images_seen / 1000:g} "
          f"({loaded.stage.resolution}x{loaded.stage.resolution}) -> {args.out}")


# -- interpolate ---------------------------------------------------------------------------


def add_interpolate(subparsers):
    parser = subparsers.add_parser(
        "interpolate", help="a slerp walk through the latents of several seeds, as GIF (or MP4)")
    parser.add_argument("run_dir", type=Path, help="run directory")
    parser.add_argument("--seeds", type=_seeds, default="1,2,3",
                        help="latent seeds to visit in order, e.g. 1,2,3 or 0-4 (default 1,2,3)")
    parser.add_argument("--steps", type=int, default=30, help="frames per pair of seeds (default 30)")
    parser.add_argument("--fps", type=float, default=24.0, help="frames per second (default 24)")
    parser.add_argument("--size", type=int, default=256,
                        help="enlarge small frames (nearest) to at least this many pixels (default 256)")
    _add_truncation(parser)
    _add_labels(parser, walk=True)
    _add_snapshot(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="walk.gif (or walk.mp4 with imageio-ffmpeg installed)")
    parser.set_defaults(run=run_interpolate)
    return parser


def run_interpolate(args, parser):
    from progan import api

    api.check_walk(args.seeds, args.steps, args.fps, args.out)
    loaded = api.load_generator(args.run_dir, args.snapshot, log=print)
    frames = api.interpolate(loaded, args.seeds, args.steps, args.truncation, args.labels,
                             args.labels_from, out=args.out, fps=args.fps, size=args.size)
    print(f"{len(frames)} frames of kimg {loaded.images_seen / 1000:g} -> {args.out}")


# -- export --------------------------------------------------------------------------------


def add_export(subparsers):
    parser = subparsers.add_parser(
        "export", help="the EMA generator as a SavedModel (latents -> uint8 images) and .keras")
    parser.add_argument("run_dir", type=Path, help="run directory")
    _add_snapshot(parser)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.set_defaults(run=run_export)
    return parser


def run_export(args, parser):
    from progan import api

    description = api.export(args.run_dir, args.out, args.snapshot, log=print)
    print(f"kimg {description['kimg']:g} ({description['resolution']}x{description['resolution']}"
          f"{', fading' if description['fading'] else ''}) -> SavedModel {description['saved_model']} "
          f"(serving_default: latents float32 [N, {description['latent_size']}] -> images uint8), "
          f"Keras {description['keras']}")
