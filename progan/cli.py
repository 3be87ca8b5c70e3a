"""`progan` command line: sub-commands that only parse arguments and call the package.

(Over 300 lines: the training sub-commands share the override flags defined here.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_summary(subparsers):
    parser = subparsers.add_parser(
        "summary", help="layers, output shapes and parameter counts of every stage")
    parser.add_argument("--config", default="celeba64",
                        help="preset name or JSON file (default celeba64)")
    parser.add_argument("--max-resolution", type=int, default=None,
                        help="show stages up to this resolution (default: the config's maximum)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(run=_run_summary)


def _run_summary(args, parser):
    from progan.config import load_config
    from progan.networks import ProGAN, describe

    model_config = load_config(args.config).model
    if args.max_resolution is not None and args.max_resolution > model_config.max_resolution:
        model_config = type(model_config)(**{**model_config.__dict__,
                                             "max_resolution": args.max_resolution})
    summary = describe(ProGAN(model_config), args.max_resolution)
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    for stage in summary["stages"]:
        phase = "fading" if stage["fading"] else "stable"
        print(f"\n{stage['network']} {stage['resolution']}x{stage['resolution']} {phase}")
        for layer in stage["layers"]:
            print(f"  {layer['name']:<28} {layer['class']:<22} "
                  f"{str(tuple(layer['output_shape'])):<22} {layer['parameters']:>12,}")
        print(f"  {'stage trainable parameters':<74} {stage['trainable_parameters']:>12,}")
    counts = summary["parameters"]
    print(f"\nTrainable parameters of the whole networks up to "
          f"{summary['resolution']}x{summary['resolution']} (every toRGB/fromRGB included):")
    print(f"  generator     {counts['generator']:>12,}")
    print(f"  discriminator {counts['discriminator']:>12,}")


DEFAULT_DATA = Path("tfrecords/synthetic")
DEFAULT_RUN = Path("runs/demo")
DEMO_DATA = {"num_images": 4096, "resolution": 32, "seed": 0}

# flag -> (dotted setting, type)
OVERRIDES = {
    "--max-resolution": ("model.max_resolution", int),
    "--latent-size": ("model.latent_size", int),
    "--fmap-base": ("model.fmap_base", int),
    "--fmap-max": ("model.fmap_max", int),
    "--fused-scale-from": ("model.fused_scale_from", int),
    "--fade-kimg": ("schedule.fade_kimg", float),
    "--stable-kimg": ("schedule.stable_kimg", float),
    "--total-kimg": ("schedule.total_kimg", float),
    "--batch": ("schedule.batch_size", int),
    "--loss": ("loss.name", str),
    "--augment-p": ("loss.augment_p", float),
    "--augment-target": ("loss.augment_target", float),
    "--freeze-d": ("optimizer.freeze_d", int),
    "--seed": ("training.seed", int),
    "--tick-kimg": ("training.tick_kimg", float),
    "--snapshot-kimg": ("training.snapshot_kimg", float),
    "--keep-checkpoints": ("training.keep_checkpoints", int),
    "--strategy": ("training.strategy", str),
    "--mixed-precision": ("training.mixed_precision", str),
    "--steps-per-call": ("training.steps_per_call", int),
    "--metrics-kimg": ("training.metrics_kimg", float),
    "--metrics-num-images": ("training.metrics_num_images", int),
}
CHOICES = {"--loss": "LOSSES", "--strategy": "STRATEGIES", "--mixed-precision": "PRECISIONS"}


def _add_overrides(parser, default_help: str):
    from progan import config as settings

    parser.add_argument("--config", default=None,
                        help=f"preset ({', '.join(settings.PRESETS)}) or JSON file "
                             f"(`progan config --dump NAME` prints one); default: {default_help}")
    group = parser.add_argument_group("overrides of the config (default: the config's value)")
    for flag, (setting, kind) in OVERRIDES.items():
        choices = getattr(settings, CHOICES[flag]) if flag in CHOICES else None
        group.add_argument(flag, type=kind, default=None, choices=choices, help=f"sets {setting}")
    group.add_argument("--lr", type=float, default=None, help="sets schedule.g_lr and d_lr: the learning rate of both networks")
    group.add_argument("--mirror", action=argparse.BooleanOptionalAction, default=None,
                       help="left-right mirror augmentation")
    group.add_argument("--xla", action=argparse.BooleanOptionalAction, default=None,
                       help="jit-compile the train steps with XLA")
    group.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                       help="deterministic ops (bitwise-exact resume on the CPU)")
    _add_augment(group)
    group.add_argument("--metrics", default=None,
                       help="sets training.metrics: evaluated during training, e.g. swd or "
                            "swd,msssim (the first is the run's primary metric)")


def _add_augment(group):
    from progan.config import AUGMENT_OPS

    group.add_argument("--augment", default=None, metavar="OPS",
                       help="sets loss.augment: differentiable augmentation of every image the "
                            f"discriminator sees, comma-separated from {','.join(AUGMENT_OPS)} "
                            "('' turns it off); with --augment-p P (default 1) or an adaptive "
                            "p with --augment-target, e.g. 0.6")


def _augment_overrides(args) -> dict:
    """The dotted settings of --augment (a comma-separated list)."""
    if args.augment is None:
        return {}
    return {"loss.augment": [op for op in args.augment.split(",") if op]}


def config_from_args(args, default: str):
    """The preset or file named by --config (else ``default``) with every override applied."""
    from progan.config import load_config

    config = load_config(args.config or default)
    overrides = {setting: getattr(args, flag[2:].replace("-", "_"))
                 for flag, (setting, _) in OVERRIDES.items()
                 if getattr(args, flag[2:].replace("-", "_")) is not None}
    if args.lr is not None:
        overrides.update({"schedule.g_lr": args.lr, "schedule.d_lr": args.lr,
                          "schedule.lr_by_resolution": {}})
    for name in ("mirror", "xla", "deterministic"):
        if getattr(args, name) is not None:
            overrides[f"training.{name}"] = getattr(args, name)
    if args.metrics is not None:
        overrides["training.metrics"] = [m for m in args.metrics.split(",") if m]
    overrides.update(_augment_overrides(args))
    return config.replace(**overrides) if overrides else config


def _add_train(subparsers):
    parser = subparsers.add_parser(
        "train", help="train progressively (no --data: the built-in synthetic demo)")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"prepared dataset directory (default: build {DEFAULT_DATA} once)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"run directory (default {DEFAULT_RUN} for the demo; required with --data)")
    parser.add_argument("--conditional", action="store_true",
                        help="condition both networks on the data set's labels (e.g. CelebA's 40 "
                             "attributes; sets model.label_size and label_kind from the data)")
    _add_overrides(parser, "demo without --data, celeba64 (the thesis) with --data")
    parser.set_defaults(run=_run_train)


def _run_train(args, parser):
    from progan.training import trainer

    config = config_from_args(args, "demo" if args.data is None else "celeba64")
    data, out = args.data, args.out
    if data is None:
        from progan.dataset.synthetic import ensure_synthetic
        from progan.training.schedule import Schedule

        total_kimg = Schedule(config.schedule, config.model.max_resolution).total_kimg

        print(f"progan train: no --data given, so this runs the built-in demo: the synthetic "
              f"face set ({DEMO_DATA['num_images']} images, built once into {DEFAULT_DATA}) and "
              f"the '{args.config or 'demo'}' preset, 4x4 -> {config.model.max_resolution}x"
              f"{config.model.max_resolution} ({total_kimg:g} kimg); "
              f"the demo preset takes about 8 minutes on a 2-core CPU.", flush=True)
        data = ensure_synthetic(DEFAULT_DATA, **DEMO_DATA)
        out = out or DEFAULT_RUN
    elif out is None:
        parser.error("--out is required with --data")
    if args.conditional:
        config = trainer.conditional_config(config, data)
    result = trainer.train(config, data, out)
    _print_result(result, out)


def _print_result(result, out):
    if not result.get("stopped"):
        print(f"run directory: {out} (fakes*.png, curves.png, log.txt, checkpoints/)")


def _add_resume(subparsers):
    parser = subparsers.add_parser(
        "resume", help="continue a run from its newest readable snapshot")
    parser.add_argument("run_dir", type=Path, help="run directory")
    parser.add_argument("--data", type=Path, default=None,
                        help="where the run's data set is now, if it moved (checked against the "
                             "fingerprint in config.json; default: the recorded path)")
    parser.add_argument("--allow-different-data", action="store_true",
                        help="continue on a --data set whose fingerprint differs from the run's")
    parser.set_defaults(run=_run_resume)


def _run_resume(args, parser):
    from progan.training import trainer

    result = trainer.resume(args.run_dir, args.data, args.allow_different_data)
    _print_result(result, args.run_dir)


def _add_finetune(subparsers):
    parser = subparsers.add_parser(
        "finetune", help="continue from a snapshot at a reduced learning rate, in a new run")
    parser.add_argument("run_dir", type=Path, help="the source run directory")
    parser.add_argument("--snapshot", default="latest",
                        help="latest | best (by the run's primary metric) | best:METRIC | KIMG "
                             "(default latest); a full snapshot (training state)")
    parser.add_argument("--lr-scale", type=float, default=0.8,
                        help="factor on the learning rates (default 0.8, the thesis: 0.0008 / 0.001)")
    parser.add_argument("--kimg", type=float, required=True,
                        help="how many kimg to train from the snapshot on (the new run ends at "
                             "the snapshot's kimg + this)")
    parser.add_argument("--out", type=Path, required=True, help="new run directory")
    parser.add_argument("--reset-optimizer", action="store_true",
                        help="start with fresh Adam states instead of the snapshot's")
    parser.add_argument("--data", type=Path, default=None,
                        help="fine-tune on another prepared data set with the same channels and "
                             "the levels from the snapshot's resolution on (default: the run's)")
    group = parser.add_argument_group("settings of the new run (default: the source run's)")
    for flag in FINETUNE_OVERRIDES:
        group.add_argument(flag, type=OVERRIDES[flag][1], default=None,
                           help=f"sets {OVERRIDES[flag][0]}")
    _add_augment(group)
    parser.set_defaults(run=_run_finetune)


FINETUNE_OVERRIDES = ("--augment-p", "--augment-target", "--freeze-d")


def _run_finetune(args, parser):
    from progan.training import trainer

    overrides = {OVERRIDES[flag][0]: getattr(args, flag[2:].replace("-", "_"))
                 for flag in FINETUNE_OVERRIDES
                 if getattr(args, flag[2:].replace("-", "_")) is not None}
    overrides.update(_augment_overrides(args))
    result = trainer.finetune(args.run_dir, args.out, args.snapshot, args.lr_scale, args.kimg,
                              args.reset_optimizer, data=args.data, overrides=overrides or None)
    _print_result(result, args.out)


def _add_bench(subparsers):
    parser = subparsers.add_parser(
        "bench", help="images/s of a full training iteration per stage, FLOPs, fraction of peak")
    _add_overrides(parser, "demo")
    parser.add_argument("--resolutions", default="4,8,16,32",
                        help="comma-separated, e.g. 4,8,16 (default 4,8,16,32)")
    parser.add_argument("--phases", choices=("fading", "stable", "both"), default="fading",
                        help="which stages to time (default fading)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing per stage (default 10)")
    parser.add_argument("--data", type=Path, default=None, help="dataset (default: synthetic)")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")
    parser.set_defaults(run=_run_bench)


def _run_bench(args, parser):
    from progan.training.bench import bench, parse_resolutions

    try:
        resolutions = parse_resolutions(args.max_resolutions)
    except ValueError as error:
        parser.error(str(error))
    phases = {"fading": (True,), "stable": (False,), "both": (True, False)}[args.phases]
    config = config_from_args(args, "demo")
    result = bench(config, resolutions, args.data, args.seconds, phases,
                   log=(lambda line: None) if args.json else print)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"matmul peak (float32, chained 2048^3 products): {result['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; "
              "FLOPs per image = 4 F_G + 14 F_D (gradient penalty's double backward = "
              "2 x (D forward + D input-gradient))")


def _add_config(subparsers):
    parser = subparsers.add_parser("config", help="print a preset (or a config file) as JSON")
    parser.add_argument("--dump", required=True, metavar="PRESET|FILE",
                        help="celeba64, paper, demo or a JSON file; the output is what "
                             "--config FILE.json accepts")
    parser.set_defaults(run=_run_config)


def _run_config(args, parser):
    from progan.config import load_config

    print(load_config(args.dump).to_json())


def build_parser() -> argparse.ArgumentParser:
    from progan import __version__

    parser = argparse.ArgumentParser(
        prog="progan", description="Progressive Growing of GANs for TensorFlow 2 / Keras 3")
    parser.add_argument("--version", action="version", version=f"progan {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    from progan.evaluation import cli as evaluation_cli

    for add in (_add_train, _add_resume, _add_finetune, evaluation_cli.add_evaluate,
                evaluation_cli.add_generate, evaluation_cli.add_interpolate,
                evaluation_cli.add_export, _add_bench, _add_summary, _add_config):
        add(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import progan.backend  # noqa: F401  every command computes: TensorFlow, checked and quiet
    from progan.errors import ProganError

    try:
        result = args.run(args, parser)
    except ProganError as error:
        parser.exit(2, f"progan {args.command}: error: {error}\n")
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
