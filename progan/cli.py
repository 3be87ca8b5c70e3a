"""`progan` command line: sub-commands that only parse arguments and call the package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _add_summary(subparsers):
    parser = subparsers.add_parser(
        "summary", help="layers, output shapes and parameter counts of every stage")
    parser.add_argument("--config", default="celeba64", help="preset name or JSON file")
    parser.add_argument("--resolution", type=int, default=None,
                        help="show stages up to this resolution (default: the config's maximum)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(run=_run_summary)


def _run_summary(args, parser):
    from progan.config import load_config
    from progan.networks import ProGAN, describe

    model_config = load_config(args.config).model
    if args.resolution is not None and args.resolution > model_config.max_resolution:
        model_config = type(model_config)(**{**model_config.__dict__,
                                             "max_resolution": args.resolution})
    summary = describe(ProGAN(model_config), args.resolution)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="progan", description="Progressive Growing of GANs for TensorFlow 2 / Keras 3")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_summary(subparsers)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from progan.config import ConfigError

    try:
        result = args.run(args, parser)
    except ConfigError as error:
        parser.exit(2, f"progan {args.command}: error: {error}\n")
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
