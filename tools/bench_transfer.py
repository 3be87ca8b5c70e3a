"""Transfer benchmark: fine-tune a trained model on a small data set of another look, with and
without differentiable augmentation, against training from scratch on the same budget.

    python tools/bench_transfer.py --source runs/demo            # a trained demo run
    python tools/bench_transfer.py --source runs/demo --kimg 20 --train-images 300 --seeds 3

The new domain (written as PNG files and built with ``progan-dataset create_from_images``,
the path a user takes): synthetic faces of other identities (seed 1), every one wearing
glasses and smiling, with the colour channels rotated (R, G, B) -> (B, R, G): green skin.
``--train-images`` of them form the train split, ``--held-out`` more the test split, which
only the scoring sees.

Variants (each ``--kimg`` images shown, ``--seeds`` training seeds, 32x32):

* ``transfer``: ``progan finetune SOURCE --data NEW`` at ``--lr-scale`` (no augmentation)
* ``transfer+diffaugment``: the same with ``--augment translation,cutout,color`` at p = 1
* ``transfer+ada``: the same with adaptive p (``--augment-target 0.6``; p may move from 0
  to 1 in half the budget: ``loss.augment_speed_kimg`` = kimg / 2)
* ``scratch``: ``progan train --data NEW`` with the demo preset, its schedule compressed to
  the same budget (stable = fade = kimg / 7: 4x4 -> 32x32)
* ``scratch+diffaugment``: the same, augmented as ``transfer+diffaugment``

Every ``--snapshot-kimg`` the EMA generator is scored with SWD (x10^3, average over the
pyramid levels) against the held-out images (``progan evaluate --split test``), with the same
latents and SWD sampling for every run. Writes ``OUT/transfer.json`` (settings, per-seed
curves, the augmentation p per tick), ``OUT/transfer.png`` (mean +- sd per variant) and
``OUT/domain.png`` (source reals next to the new domain's).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from bench_quality import _cli, _read_pngs, git_state  # noqa: E402

OPS = "translation,cutout,color"
VARIANTS = ("transfer", "transfer+diffaugment", "transfer+ada", "scratch", "scratch+diffaugment")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True,
                        help="a trained run (the demo: progan train --out runs/demo)")
    parser.add_argument("--snapshot", default="latest", help="the source snapshot (default latest)")
    parser.add_argument("--out", type=Path, default=Path("transfer-bench"))
    parser.add_argument("--kimg", type=float, default=20.0, help="budget of every variant")
    parser.add_argument("--snapshot-kimg", type=float, default=2.0, help="scoring interval")
    parser.add_argument("--lr-scale", type=float, default=1.0)
    parser.add_argument("--train-images", type=int, default=300)
    parser.add_argument("--held-out", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--eval-seed", type=int, default=0)
    parser.add_argument("--keep-runs", action="store_true")
    parser.add_argument("--plot-only", action="store_true", help="re-plot OUT/transfer.json")
    return parser.parse_args(argv)


def new_domain_image(index: int, resolution: int) -> np.ndarray:
    """Face ``index`` of the new domain: seed-1 identities, glasses and a smile, channels rotated."""
    from progan.dataset.synthetic import DrawnFeatures, draw_face

    rng = np.random.default_rng([1, index, 1])
    features = DrawnFeatures(eyeglasses=True, smiling=True, frame=rng.uniform(0, 0.25, 3),
                             tint=float(rng.uniform(0.15, 0.9)))
    image = draw_face(np.random.default_rng([1, index]), resolution, features)
    return image[..., [2, 0, 1]]


def build_domain(out: Path, args) -> Path:
    """PNG files of the new domain, and the data set built from them; returns the data set."""
    from PIL import Image

    data = out / "domain"
    total = args.train_images + args.held_out
    if (data / "dataset.json").exists():
        manifest = json.loads((data / "dataset.json").read_text())
        if manifest.get("train_count") == args.train_images and manifest.get("num_images") == total:
            return data
    pngs = out / "domain-png"
    shutil.rmtree(pngs, ignore_errors=True)
    pngs.mkdir(parents=True)
    for index in range(total):
        Image.fromarray(new_domain_image(index, 32)).save(pngs / f"{index:05d}.png")
    from progan.dataset.cli import main as dataset_main

    code = dataset_main(["create_from_images", str(data), str(pngs), "--size", "32",
                         "--train-count", str(args.train_images), "--overwrite", "--quiet"])
    if code:
        raise SystemExit(f"progan-dataset create_from_images: exit {code}")
    return data


def run_variant(variant: str, seed: int, data: Path, run: Path, args) -> None:
    from progan.config import load_config
    from progan.training.trainer import finetune, train

    augment = {}
    if variant.endswith("+diffaugment"):
        augment = {"loss.augment": OPS.split(","), "loss.augment_p": 1.0}
    elif variant.endswith("+ada"):
        # p may cross [0, 1] in half the budget (the default, 100 kimg, suits long runs)
        augment = {"loss.augment": OPS.split(","), "loss.augment_target": 0.6,
                   "loss.augment_speed_kimg": args.kimg / 2}
    keep = {"training.snapshot_kimg": args.snapshot_kimg, "training.tick_kimg": args.snapshot_kimg / 2,
            "training.keep_checkpoints": 1000,
            "training.metrics": [], "training.seed": seed}
    if variant.startswith("transfer"):
        finetune(args.source, run, snapshot=args.snapshot, lr_scale=args.lr_scale, kimg=args.kimg,
                 data=data, overrides={**keep, **augment})
    else:
        phase = args.kimg / 7
        config = load_config("demo").replace(**{
            **keep, **augment, "model.max_resolution": 32, "schedule.stable_kimg": phase,
            "schedule.fade_kimg": phase, "schedule.total_kimg": args.kimg})
        train(config, data, run)


def score(run: Path, args) -> dict:
    """{kimg since the start of this run: SWD} for every snapshot at 32x32."""
    metrics = run / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    _cli(["evaluate", str(run), "--metrics", "swd", "--snapshot", "all", "--split", "test",
          "--num-images", str(args.held_out), "--seed", str(args.eval_seed)])
    origin = json.loads((run / "config.json").read_text()).get("origin") or {}
    start = origin.get("kimg", 0.0)
    values = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if record["resolution"] == 32:
            values[f"{record['kimg'] - start:g}"] = record["value"]
    return values


def augment_p(run: Path) -> list:
    """(kimg, p) of every tick that logged an augmentation strength."""
    points = []
    for line in (run / "stats.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "augment_p" in record:
            points.append((record["kimg"], record["augment_p"]))
    return points


def summarise(per_seed: dict) -> dict:
    keys = sorted({key for values in per_seed.values() for key in values}, key=float)
    summary = {}
    for key in keys:
        values = [values[key] for values in per_seed.values() if key in values]
        summary[key] = {"mean": float(np.mean(values)), "n": len(values),
                        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    return summary


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for index, (variant, result) in enumerate(record["variants"].items()):
        keys = sorted(result["summary"], key=float)
        kimg = [float(key) for key in keys]
        mean = np.array([result["summary"][key]["mean"] for key in keys])
        sd = np.array([result["summary"][key]["sd"] for key in keys])
        axis.plot(kimg, mean, marker="o", markersize=3, color=f"C{index}",
                  label=f"{variant} (final {mean[-1]:.1f} ± {sd[-1]:.1f})")
        axis.fill_between(kimg, mean - sd, mean + sd, color=f"C{index}", alpha=0.2)
    axis.set_xlabel("kimg on the new data set")
    axis.set_ylabel("SWD x1e3 to the held-out images")
    axis.set_yscale("log")
    axis.set_title(f"{record['train_images']} training images, "
                   f"{len(record['seeds'])} seeds (mean ± sd)", fontsize="medium")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def domain_figure(source_data: Path, data: Path, path: Path) -> None:
    from PIL import Image

    from progan.dataset.reader import read_images

    rows = [read_images(source_data, 32, "train", 8), read_images(data, 32, "train", 8)]
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(path)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    record_path = args.out / "transfer.json"
    if args.plot_only:
        plot(json.loads(record_path.read_text()), args.out / "transfer.png")
        return 0
    data = build_domain(args.out, args)
    source_config = json.loads((args.source / "config.json").read_text())
    domain_figure(Path(source_config["data"]["path"]), data, args.out / "domain.png")
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.update({"argv": sys.argv[1:], "source": str(args.source.resolve()),
                   "snapshot": args.snapshot, "kimg": args.kimg, "lr_scale": args.lr_scale,
                   "train_images": args.train_images, "held_out": args.held_out,
                   "seeds": list(range(args.seeds)), "eval_seed": args.eval_seed,
                   "git": git_state()})
    record.setdefault("variants", {})
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"--variants {variant}: expected some of {', '.join(VARIANTS)}")
        result = {"per_seed": {}, "augment_p": {}, "seconds": {}}
        for seed in range(args.seeds):
            run = args.out / "runs" / variant / f"seed{seed}"
            shutil.rmtree(run, ignore_errors=True)
            start = time.perf_counter()
            run_variant(variant, seed, data, run, args)
            result["per_seed"][str(seed)] = score(run, args)
            result["augment_p"][str(seed)] = augment_p(run)
            result["seconds"][str(seed)] = round(time.perf_counter() - start, 1)
            final = result["per_seed"][str(seed)]
            print(f"{variant} seed {seed}: final SWD {final[max(final, key=float)]:.1f} "
                  f"({result['seconds'][str(seed)]:.0f} s)", flush=True)
            if not args.keep_runs:
                shutil.rmtree(run)
        result["summary"] = summarise(result["per_seed"])
        record["variants"][variant] = result
        record_path.write_text(json.dumps(record, indent=1))
        plot(record, args.out / "transfer.png")
    for variant, result in record["variants"].items():
        last = max(result["summary"], key=float)
        s = result["summary"][last]
        best = min(result["summary"].values(), key=lambda v: v["mean"])
        print(f"{variant:22s} kimg {last:>5s}: SWD {s['mean']:6.1f} ± {s['sd']:4.1f}   "
              f"(best point {best['mean']:.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
