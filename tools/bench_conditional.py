"""Attribute agreement of a short conditional run on the synthetic faces with attributes.

    python tools/bench_conditional.py [--kimg 100] [--out /tmp/conditional]

Builds the synthetic set with its extended attributes (Dark_Hair, Pale_Skin, Eyeglasses,
Smiling; 4,096 faces at 32x32, the last 512 held out), trains the demo preset with
``--conditional`` from 4x4 to 16x16 for ``--kimg`` kimg, evaluates every snapshot with
``--metrics attributes,swd`` and prints, per snapshot, the agreement of each attribute, the
mean, the chance level (a generator that ignores its labels) and the accuracy of the
classifier that judges it on held-out real faces. The commands are the public CLI's, so the
log shows what a user would type. About 10 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def run(*args) -> None:
    print("$", " ".join(map(str, args)), flush=True)
    subprocess.run([sys.executable, "-m", *map(str, args)], check=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kimg", type=float, default=100.0,
                        help="training length (default 100: the end of the 16x16 fade-in + 20)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/conditional"),
                        help="where the data set and the run go (default /tmp/conditional)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    args = parser.parse_args(argv)
    data, run_dir = args.out / "faces-attributes", args.out / f"run-seed{args.seed}"
    if not (data / "dataset.json").exists():
        run("progan.dataset.cli", "create_synthetic", data, "--num-images", 4096, "--size", 32,
            "--attributes", "extended", "--train-count", 3584)
    run("progan", "train", "--data", data, "--out", run_dir, "--config", "demo", "--conditional",
        "--max-resolution", 16, "--total-kimg", args.kimg, "--seed", args.seed)
    run("progan", "evaluate", run_dir, "--metrics", "attributes,swd", "--snapshot", "all",
        "--num-images", 512)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in records if r["metric"] == "attributes"]
    names = list(rows[0]["values"])
    print("\n| kimg | res | " + " | ".join(names) + " | mean | chance | classifier |")
    print("|---" * (len(names) + 5) + "|")
    for r in rows:
        print(f"| {r['kimg']:g} | {r['resolution']} | "
              + " | ".join(f"{r['values'][n]:.2f}" for n in names)
              + f" | **{r['value']:.3f}** | {r['chance']:.3f} | {r['classifier_accuracy']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
