"""`progan` command line: sub-commands that only parse arguments and call `progan.api`
(the Python functions of the same names and defaults)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from progan import api


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


BOOLEAN_FLAGS = ("xla", "deterministic", "mirror")
FLOAT_FLAGS = ("fade_kimg", "stable_kimg", "total_kimg", "augment_p", "augment_target",
               "tick_kimg", "snapshot_kimg", "metrics_kimg")
TEXT_FLAGS = ("loss", "strategy", "mixed_precision", "augment", "metrics")
CHOICES = {"loss": "LOSSES", "strategy": "STRATEGIES", "mixed_precision": "PRECISIONS"}
# Settings a benchmark of training iterations can use (the others only matter over a run).
BENCH_FLAGS = ("latent_size", "fmap_base", "fmap_max", "fused_scale_from", "batch", "loss",
               "augment", "augment_p", "strategy", "mixed_precision", "xla", "deterministic",
               "steps_per_call")
FINETUNE_FLAGS = ("augment", "augment_p", "augment_target", "freeze_d")


def _flag_help(name: str, setting: str) -> str:
    from progan.config import describe_setting

    return describe_setting(setting)


def _add_overrides(parser, default_help: str, names=None, config: bool = True):
    """The override flags of ``names`` (default: every one of `progan.api.SETTINGS`)."""
    from progan import api, config as settings

    if config:
        parser.add_argument("--config", default=None,
                            help=f"preset ({', '.join(settings.PRESETS)}) or JSON file "
                                 f"(`progan config --dump NAME` prints one; a run's config.json "
                                 f"is one too); default: {default_help}")
    group = parser.add_argument_group("overrides of the config (default: the config's value; "
                                      "docs/settings.md says what each means)")
    for name in names or api.SETTINGS:
        flag, setting = "--" + name.replace("_", "-"), api.SETTINGS[name]
        if name in BOOLEAN_FLAGS:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=_flag_help(name, setting))
            continue
        kind = float if name in FLOAT_FLAGS else str if name in TEXT_FLAGS else int
        choices = getattr(settings, CHOICES[name]) if name in CHOICES else None
        metavar = "A,B" if name in api.LIST_SETTINGS else None
        group.add_argument(flag, type=kind, default=None, choices=choices, metavar=metavar,
                           help=_flag_help(name, setting))
    if names is None:
        group.add_argument("--lr", type=float, default=None,
                           help="sets optimizer.g_lr and optimizer.d_lr (the learning rate of "
                                "both networks) and clears optimizer.lr_by_resolution")


def _overrides(args, names=None) -> dict:
    """The keyword overrides that were given on the command line."""
    from progan import api

    given = {name: getattr(args, name) for name in (names or api.SETTINGS)
             if getattr(args, name, None) is not None}
    if getattr(args, "lr", None) is not None:
        given["lr"] = args.lr
    return given


def _add_train(subparsers):
    parser = subparsers.add_parser(
        "train", help="train progressively (no --data: the built-in synthetic demo)")
    parser.add_argument("--data", type=Path, default=None,
                        help=f"prepared dataset directory (default: build {api.DEFAULT_DATA} once)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"run directory (default {api.DEFAULT_RUN} for the demo; required with --data)")
    parser.add_argument("--conditional", action="store_true",
                        help="condition both networks on the data set's labels (e.g. CelebA's 40 "
                             "attributes; sets model.label_size and label_kind from the data)")
    _add_gpus(parser)
    _add_overrides(parser, "demo without --data, celeba64 (the thesis) with --data")
    parser.set_defaults(run=_run_train)


def _add_gpus(parser):
    parser.add_argument("--gpus", type=int, default=None,
                        help="train on the first N visible GPUs (of each worker; default: all)")


def _run_train(args, parser):
    from progan import api

    out = args.out
    if args.data is not None and out is None:
        parser.error("--out is required with --data")
    result = api.train(args.data, out, args.config, args.conditional, gpus=args.gpus,
                       **_overrides(args))
    _print_result(result, out or api.DEFAULT_RUN)


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
    parser.add_argument("--total-kimg", type=float, default=None,
                        help="train the run to this many kimg (e.g. to extend a finished run); "
                             "recorded in its config.json (default: the run's own)")
    parser.add_argument("--max-resolution", type=int, default=None,
                        help="grow the run on to this resolution (its new blocks fade in after "
                             "the last stage; the data set needs the new levels); recorded in "
                             "its config.json (default: the run's own)")
    _add_gpus(parser)
    parser.add_argument("--restart", action="store_true",
                        help="start a run that has no readable full snapshot (all damaged) again "
                             "from kimg 0, moving its earlier ticks, images and network snapshots "
                             "into a restart-* folder (default: refuse)")
    parser.set_defaults(run=_run_resume)


def _run_resume(args, parser):
    from progan import api

    result = api.resume(args.run_dir, args.data, args.allow_different_data, args.total_kimg,
                        args.gpus, args.restart, args.max_resolution)
    _print_result(result, args.run_dir)


def _add_finetune(subparsers):
    parser = subparsers.add_parser(
        "finetune", help="continue from a snapshot at a reduced learning rate, in a new run")
    parser.add_argument("run_dir", type=Path, help="the source run directory")
    parser.add_argument("--snapshot", default="latest",
                        help="latest | best (by the run's primary metric) | best:METRIC | NAME (as "
                             "`ls RUN/checkpoints` shows it, e.g. snapshot-000000012000) | KIMG "
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
    _add_overrides(parser, "", FINETUNE_FLAGS, config=False)
    _add_gpus(parser)
    parser.set_defaults(run=_run_finetune)


def _run_finetune(args, parser):
    from progan import api

    result = api.finetune(args.run_dir, args.out, args.kimg, args.snapshot, args.lr_scale,
                          args.reset_optimizer, args.data, args.gpus,
                          **_overrides(args, FINETUNE_FLAGS))
    _print_result(result, args.out)


def _add_bench(subparsers):
    parser = subparsers.add_parser(
        "bench", help="images/s of a full training iteration per stage, FLOPs, fraction of peak")
    _add_overrides(parser, "demo", BENCH_FLAGS)
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
        resolutions = parse_resolutions(args.resolutions)
    except ValueError as error:
        parser.error(str(error))
    phases = {"fading": (True,), "stable": (False,), "both": (True, False)}[args.phases]
    from progan import api

    config = api.make_config(args.config, "demo", **_overrides(args, BENCH_FLAGS))
    result = bench(config, resolutions, args.data, args.seconds, phases,
                   log=(lambda line: None) if args.json else print)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        peaks = ", ".join(f"{p / 1e9:.1f}" for p in result["matmul_peaks_flops"])
        print(f"matmul peak (float32, chained 2048^3 products, before/after the stages: {peaks}): "
              f"{result['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; "
              "FLOPs per image = 4 F_G + 14 F_D (gradient penalty's double backward = "
              "2 x (D forward + D input-gradient))")


def _add_plan(subparsers):
    parser = subparsers.add_parser(
        "plan", help="a run on paper: images, FLOPs, snapshot sizes, disk and projected hours "
                     "per stage")
    parser.add_argument("--config", default="celeba64",
                        help="preset name or JSON file (default celeba64)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs sharing the run (default 1)")
    parser.add_argument("--utilisation", type=float, default=None,
                        help="fraction of the GPUs' peak FLOP/s reached (default 0.3; "
                             "`progan bench` measures it)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.set_defaults(run=_run_plan)


def _run_plan(args, parser):
    import dataclasses

    from progan.config import load_config
    from progan.training.plan import UTILISATION, format_plan, make_plan

    utilisation = UTILISATION if args.utilisation is None else args.utilisation
    if args.gpus < 1 or not 0 < utilisation <= 1:
        parser.error("--gpus: expected a positive number; --utilisation: a fraction in (0, 1]")
    plan = make_plan(load_config(args.config), args.gpus, utilisation)
    if args.json:
        print(json.dumps({**dataclasses.asdict(plan), "kimg": plan.kimg, "flops": plan.flops,
                          "disk_bytes": plan.disk_bytes}, indent=2))
    else:
        print("\n".join(format_plan(plan)))


def _add_config(subparsers):
    parser = subparsers.add_parser(
        "config", help="print a preset (or a config file) as JSON, or the settings reference")
    choice = parser.add_mutually_exclusive_group(required=True)
    choice.add_argument("--dump", metavar="PRESET|FILE",
                        help="celeba64, paper, demo or a JSON file (a run's config.json too); "
                             "the output is what --config FILE.json accepts; no default: give "
                             "--dump or --reference")
    choice.add_argument("--reference", action="store_true",
                        help="every setting with its meaning, default and preset values "
                             "(Markdown; what docs/settings.md holds)")
    parser.set_defaults(run=_run_config)


def _run_config(args, parser):
    from progan.config import load_config, settings_reference

    print(settings_reference() if args.reference else load_config(args.dump).to_json())


def build_parser() -> argparse.ArgumentParser:
    from progan import __version__

    parser = argparse.ArgumentParser(
        prog="progan", description="Progressive Growing of GANs for TensorFlow 2 / Keras 3")
    parser.add_argument("--version", action="version", version=f"progan {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    from progan.evaluation import cli as evaluation_cli

    for add in (_add_train, _add_resume, _add_finetune, evaluation_cli.add_evaluate,
                evaluation_cli.add_generate, evaluation_cli.add_interpolate,
                evaluation_cli.add_export, _add_bench, _add_plan, _add_summary, _add_config):
        add(subparsers)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``parser.parse_args``, but an unknown flag is answered with the closest real one of
    its sub-command (``--totl-kimg`` -> did you mean --total-kimg?)."""
    import difflib

    args, unknown = parser.parse_known_args(argv)
    if not unknown:
        return args
    subparsers = next(action for action in parser._actions
                      if isinstance(action, argparse._SubParsersAction))
    command = subparsers.choices[args.command]
    options = [option for action in command._actions for option in action.option_strings]
    flag = next((word.split("=")[0] for word in unknown if word.startswith("-")), unknown[0])
    close = difflib.get_close_matches(flag, options, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f"; see {parser.prog} {args.command} --help"
    command.exit(2, f"{command.prog}: error: unrecognized argument {flag}{hint}\n")


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    import progan.backend  # noqa: F401  every command computes: TensorFlow, checked and quiet
    from progan.errors import Fault, ProganError

    try:
        result = args.run(args, parser)
    except ProganError as error:
        parser.exit(1 if isinstance(error, Fault) else 2, f"progan {args.command}: error: {error}\n")
    except KeyboardInterrupt:  # what is written is complete: every file is written atomically
        parser.exit(130, f"progan {args.command}: interrupted; what it finished is kept\n")
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
