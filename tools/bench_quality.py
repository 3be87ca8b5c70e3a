"""Quality benchmark: SWD of short progressive runs at every fade-in and stable-phase end.

    python tools/bench_quality.py --label baseline
    python tools/bench_quality.py --label no-pn --set model.some_field=false --seeds 3

Trains ``--seeds`` runs of ``--config`` (default: the demo preset, 4x4 -> 16x16, 80 kimg =
the end of the 16x16 fade-in), one after another (a 2-core CPU gains nothing from parallel
runs), through the public CLI in-process (``progan train`` / ``evaluate`` / ``generate``).
The snapshot at every phase end (the demo: every 20 kimg) is scored with SWD (x10^3, average
over the pyramid levels) of the EMA generator against the same ``--num-images`` real images
of the train split, with the same latents and SWD sampling (``--eval-seed``) for every run:

* ``K@R``: the snapshot at kimg K scored at the resolution R it is at; at the start of a
  fade-in (alpha 0, output = the previous resolution nearest-upscaled) also at R/2, i.e.
  the end of the previous stable phase: the fakes are the 2x2 means of the alpha-0 images,
  which are exactly the previous resolution's images.

Writes ``OUT/LABEL.json`` (settings, per-seed values, mean and sd per point, seconds) and
``OUT/LABEL.png`` (mean +- sd per point, one line per seed, the PyTorch peer's figures of
the PyTorch port's for comparison); ``--compare A.json B.json ...`` plots and tabulates saved records
without training. Runs go to ``OUT/runs/LABEL/seedN`` (deleted unless ``--keep-runs``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# pro-gan-pth 3.4 at the demo widths and schedule, same data and SWD: 4 seeds to kimg 60,
# 2 seeds (0 and 4) trained to kimg 140 for the later phase ends.
PEER = {"20@8": (160.4, 2.0), "40@8": (58.0, 6.7), "60@8": (32.6, 2.1), "60@16": (24.9, 1.7),
        "80@16": (30.7, 0.4), "100@32": (29.2, 1.3), "120@32": (37.5, 1.1), "140@32": (23.4, 2.5)}
PEER_LABEL = "pro-gan-pth 3.4 (4 seeds to kimg 60, 2 to 140)"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="baseline", help="name of the record and the plot")
    parser.add_argument("--config", default="demo", help="preset or JSON file (default demo)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=JSON",
                        help="config override, the value parsed as JSON (repeatable), e.g. "
                             "--set model.fused_scale_from=0 --set training.ema_beta=0.0")
    parser.add_argument("--max-resolution", type=int, default=16)
    parser.add_argument("--total-kimg", type=float, default=80.0,
                        help="default 80 = the end of the 16x16 fade-in at the demo schedule")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    parser.add_argument("--seed-list", default=None, help="explicit seeds, e.g. 3,4,5")
    parser.add_argument("--data", type=Path, default=Path("/tmp/quality/synthetic"),
                        help="dataset (created with create_synthetic 4096 images at 32x32 "
                             "seed 0 if missing)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/quality"))
    parser.add_argument("--num-images", type=int, default=4096)
    parser.add_argument("--eval-seed", type=int, default=0,
                        help="SWD sampling (and, with the 0.1 CLI, the latents), the same for every run")
    parser.add_argument("--score-kimg", default=None,
                        help="score only these phase ends, e.g. 140 (default: every one)")
    parser.add_argument("--keep-runs", action="store_true")
    parser.add_argument("--compare", nargs="+", type=Path, default=None,
                        help="only plot/tabulate these saved JSON records")
    return parser.parse_args(argv)


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise SystemExit(f"--set {item}: expected SECTION.KEY=JSON_VALUE")
        try:
            overrides[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key.strip()] = text  # a bare string, e.g. --set loss.name=least_squares
    return overrides


def make_config(args, seed: int, overrides: dict):
    from progan.config import load_config

    base = {"model.max_resolution": args.max_resolution, "schedule.total_kimg": args.total_kimg,
            "training.seed": seed, "training.keep_checkpoints": 1000, "training.metrics": []}
    config = load_config(args.config).replace(**{**base, **overrides})
    # A snapshot at every phase end (the demo: every 20 kimg), and all of them kept.
    phase = min(config.schedule.stable_kimg, config.schedule.fade_kimg or math.inf)
    return config.replace(**{"training.snapshot_kimg": phase})


def scored_kimgs(config) -> list[float]:
    """kimg of every phase end up to the end of the run (the snapshots that are scored)."""
    from progan.schedule import Schedule

    schedule = Schedule.of(config)
    ends = [b for b in schedule.boundaries() if b < schedule.total_images] + [schedule.total_images]
    return [images / 1000 for images in ends]


def ensure_data(path: Path) -> None:
    if (path / "dataset.json").exists():
        return
    from progan.dataset.cli import main as dataset_main

    dataset_main(["create_synthetic", str(path), "--num-images", "4096", "--size", "32",
                  "--seed", "0", "--quiet"])


def _cli(argv: list[str]) -> None:
    from progan.cli import main

    code = main(argv)
    if code:
        raise SystemExit(f"progan {' '.join(argv)}: exit {code}")


def score_run(run: Path, data: Path, args, config) -> dict:
    """{"K@R": swd} for every phase end (see the module docstring)."""
    from progan.dataset.reader import read_images
    from progan.evaluation.sliced_wasserstein import swd
    from progan.schedule import Schedule

    schedule = Schedule.of(config)
    kimgs = scored_kimgs(config)
    if args.score_kimg:
        wanted = {float(k) for k in args.score_kimg.split(",")}
        kimgs = [kimg for kimg in kimgs if kimg in wanted]
    metrics_file = run / "metrics.jsonl"
    if metrics_file.exists():
        metrics_file.unlink()
    _cli(["evaluate", str(run), "--metrics", "swd", "--snapshot",
          ",".join(f"{kimg:g}" for kimg in kimgs), "--num-images", str(args.num_images),
          "--split", "train", "--seed", str(args.eval_seed)])
    values = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        values[f"{record['kimg']:g}@{record['resolution']}"] = record["value"]
    for kimg in kimgs:
        stage = schedule.stage_at(int(round(kimg * 1000)))
        if not (stage.fading and stage.alpha == 0.0):
            continue
        previous = stage.resolution // 2
        with tempfile.TemporaryDirectory(dir=run) as folder:
            # the same fakes as evaluate's: latent seeds 0..N-1
            _cli(["generate", str(run), "--seeds", f"0-{args.num_images - 1}", "--snapshot",
                  f"{kimg:g}", "--out", folder])
            fakes = _read_pngs(Path(folder))
        assert fakes.shape[1] == stage.resolution, fakes.shape
        fakes = fakes.reshape(len(fakes), previous, 2, previous, 2, -1).astype(np.float32)
        fakes = np.rint(fakes.mean(axis=(2, 4))).astype(np.uint8)
        reals = read_images(data, previous, "train", args.num_images)
        values[f"{kimg:g}@{previous}"] = float(swd(reals, fakes, seed=args.eval_seed)["avg"])
    return values


def _read_pngs(folder: Path) -> np.ndarray:
    from PIL import Image

    files = sorted(folder.glob("*.png"))
    return np.stack([np.asarray(Image.open(file).convert("RGB")) for file in files])


def point_order(key: str) -> tuple:
    kimg, _, resolution = key.partition("@")
    return float(kimg), int(resolution)


def summarise(per_seed: dict) -> dict:
    points = sorted({key for values in per_seed.values() for key in values}, key=point_order)
    summary = {}
    for key in points:
        values = [values[key] for values in per_seed.values() if key in values]
        summary[key] = {"mean": float(np.mean(values)),
                        "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                        "n": len(values)}
    return summary


def table(records: list[dict]) -> str:
    points = sorted({key for record in records for key in record["summary"]}, key=point_order)
    lines = ["| label | " + " | ".join(points) + " |", "|---" * (len(points) + 1) + "|"]
    for record in records:
        cells = []
        for key in points:
            if key not in record["summary"]:
                cells.append("")
                continue
            values = "/".join(f"{record['per_seed'][seed][key]:.1f}"
                              for seed in record["per_seed"] if key in record["per_seed"][seed])
            s = record["summary"][key]
            cells.append(f"{values} = **{s['mean']:.1f} ± {s['sd']:.1f}**")
        lines.append(f"| {record['label']} | " + " | ".join(cells) + " |")
    peer = [f"{PEER[key][0]:.1f} ± {PEER[key][1]:.1f}" if key in PEER else "" for key in points]
    lines.append(f"| {PEER_LABEL} | " + " | ".join(peer) + " |")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    resolutions = sorted({point_order(key)[1] for record in records for key in record["summary"]})
    figure, axes = plt.subplots(1, len(resolutions), figsize=(4.2 * len(resolutions), 3.8),
                                squeeze=False)
    for axis, resolution in zip(axes[0], resolutions):
        for index, record in enumerate(records):
            color = f"C{index}"
            keys = [key for key in sorted(record["summary"], key=point_order)
                    if point_order(key)[1] == resolution]
            kimgs = [point_order(key)[0] for key in keys]
            means = [record["summary"][key]["mean"] for key in keys]
            sds = [record["summary"][key]["sd"] for key in keys]
            axis.errorbar(kimgs, means, yerr=sds, color=color, marker="o", capsize=3,
                          label=record["label"])
            for seed, values in record["per_seed"].items():
                axis.plot(kimgs, [values.get(key, math.nan) for key in keys], color=color,
                          alpha=0.3, linewidth=0.8)
        peer = [(point_order(key)[0], *PEER[key]) for key in PEER
                if point_order(key)[1] == resolution]
        if peer:
            kimg, mean, sd = zip(*peer)
            axis.errorbar(kimg, mean, yerr=sd, color="black", marker="s", linestyle="--",
                          capsize=3, label=PEER_LABEL)
        axis.set_title(f"scored at {resolution}x{resolution}")
        axis.set_xlabel("kimg")
        axis.set_ylabel("SWD x1e3 (EMA generator)")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    figure.legend(*axes[0, -1].get_legend_handles_labels(), fontsize="small", loc="upper center",
                  ncol=5, frameon=False)
    figure.tight_layout(rect=(0, 0, 1, 0.86))  # the legend above the panels, clear of the points
    figure.savefig(path, dpi=100)
    plt.close(figure)


def git_state() -> dict:
    import progan

    root = Path(progan.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "progan"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return {"progan": progan.__file__, "commit": commit, "dirty_files": dirty.splitlines()}
    except (OSError, subprocess.CalledProcessError):
        return {"progan": progan.__file__}


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.compare:
        records = [json.loads(path.read_text()) for path in args.compare]
        plot(records, args.out / f"{args.label}.png")
        print(table(records))
        print(f"plot: {args.out / (args.label + '.png')}")
        return 0
    overrides = parse_overrides(args.set)
    seeds = ([int(s) for s in args.seed_list.split(",")] if args.seed_list
             else list(range(args.seeds)))
    make_config(args, seeds[0], overrides)  # a bad --set fails now, not after a run
    ensure_data(args.data)
    started = time.time()
    record = {"label": args.label, "config": args.config, "overrides": overrides,
              "max_resolution": args.max_resolution, "total_kimg": args.total_kimg,
              "seeds": seeds, "num_images": args.num_images, "eval_seed": args.eval_seed,
              "data": str(args.data), "git": git_state(), "per_seed": {}, "seconds": {},
              "argv": sys.argv[1:] if argv is None else list(argv)}
    runs = args.out / "runs" / args.label
    for seed in seeds:
        run = runs / f"seed{seed}"
        if run.exists():
            shutil.rmtree(run)
        config = make_config(args, seed, overrides)
        record["config_dict"] = config.to_dict()
        run.parent.mkdir(parents=True, exist_ok=True)
        config_file = runs / f"seed{seed}.json"
        config_file.write_text(config.to_json())
        seed_start = time.time()
        _cli(["train", "--data", str(args.data), "--out", str(run), "--config", str(config_file)])
        trained = time.time()
        record["per_seed"][str(seed)] = score_run(run, args.data, args, config)
        record["seconds"][str(seed)] = {"train": round(trained - seed_start, 1),
                                        "score": round(time.time() - trained, 1)}
        record["summary"] = summarise(record["per_seed"])
        record["seconds"]["total"] = round(time.time() - started, 1)
        (args.out / f"{args.label}.json").write_text(json.dumps(record, indent=2) + "\n")
        print(f"[{args.label}] seed {seed}: " + ", ".join(
            f"{key} {value:.1f}" for key, value in sorted(record["per_seed"][str(seed)].items(),
                                                         key=lambda item: point_order(item[0]))),
            flush=True)
        if not args.keep_runs:
            shutil.rmtree(run)
        import keras

        keras.backend.clear_session()  # each run builds its networks anew; free the old graphs
    plot([record], args.out / f"{args.label}.png")
    print(table([record]))
    print(f"{args.label}: {record['seconds']['total'] / 60:.1f} min; record "
          f"{args.out / (args.label + '.json')}, plot {args.out / (args.label + '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
