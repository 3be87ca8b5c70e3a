"""How fast a training job stops when preempted, and what its snapshots cost on disk.

    python tools/bench_preemption.py --config demo
    python tools/bench_preemption.py --config celeba64 --resolution 16

Starts `progan train` in a subprocess on the synthetic set (built once in
tfrecords/synthetic), waits until it has trained for ``--train-seconds`` after its first
tick, sends SIGTERM (what a scheduler sends before it kills a job), and prints the seconds
from the signal to the process's exit (which writes a snapshot first), and the sizes of the
full and network snapshots it wrote.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from progan.config import load_config  # noqa: E402
from progan.run import RunDir  # noqa: E402


def folder_bytes(path: Path) -> int:
    return sum(file.stat().st_size for file in path.rglob("*") if file.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo", help="preset or JSON file (default demo)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="train only at this resolution (stable), e.g. 16 (default: the schedule)")
    parser.add_argument("--data", type=Path, default=REPO / "tfrecords" / "synthetic")
    parser.add_argument("--train-seconds", type=float, default=20.0,
                        help="how long to train after the first tick before the signal")
    args = parser.parse_args()

    from progan.dataset.synthetic import ensure_synthetic

    data = ensure_synthetic(args.data, num_images=4096, resolution=32, seed=0)
    config = load_config(args.config)
    overrides = {"training.tick_kimg": 0.1, "training.snapshot_kimg": 1000.0}
    if args.resolution:
        overrides.update({"model.max_resolution": args.resolution,
                          "schedule.start_resolution": args.resolution,
                          "schedule.stable_kimg": 1000.0})
    config = config.replace(**overrides)
    with tempfile.TemporaryDirectory() as scratch:
        config_file = Path(scratch) / "config.json"
        config_file.write_text(config.to_json())
        run = RunDir(Path(scratch) / "run")
        process = subprocess.Popen(
            [sys.executable, "-m", "progan", "train", "--config", str(config_file), "--data",
             str(data), "--out", str(run.path)], cwd=REPO, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        while process.poll() is None and not run.read_stats():
            time.sleep(0.2)
        time.sleep(args.train_seconds)
        signalled = time.time()
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=600)[0]
        seconds = time.time() - signalled
        stats = run.read_stats()
        full = run.snapshots("full")[-1]
        network = run.snapshots("network")[-1]
        result = {
            "config": args.config, "resolution": args.resolution, "exit_code": process.returncode,
            "signal_to_exit_seconds": round(seconds, 2),
            "sec_per_kimg": stats[-1]["sec_per_kimg"], "batch": config.schedule.batch_size,
            "steps_per_call": config.training.steps_per_call,
            "full_snapshot_mb": round(folder_bytes(full.path) / 1e6, 2),
            "network_snapshot_mb": round(folder_bytes(network.path) / 1e6, 2),
            "stopped_cleanly": "stopped at kimg" in output}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
