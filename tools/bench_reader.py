"""Benchmark: images/s that progan.dataset.reader.load delivers (float32 batches, mirror on).

Writes a dataset of N random 64x64 images (levels 64..4) to a temporary
directory, then times ``load`` at 64x64 and 16x16 over a number of batches after
a warm-up, and prints images/s (targets: >= 15,000 at 64x64, >= 40,000 at 16x16).

    python tools/bench_reader.py [--images 50000] [--seconds 5]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from progan.dataset.reader import load  # noqa: E402
from progan.dataset.sources import ImageSource  # noqa: E402
from progan.dataset.writer import write_dataset  # noqa: E402


class RandomImages(ImageSource):
    """Uniform random RGB images (their content does not matter for reading speed)."""

    kind = "random"

    def __init__(self, count, resolution):
        self.count, self.resolution = count, resolution
        self.description = {"kind": self.kind, "count": count, "resolution": resolution}

    def items(self):
        return iter(range(self.count))

    def load(self, item):
        rng = np.random.default_rng(item)
        return f"random[{item}]", rng.integers(0, 256, (self.resolution, self.resolution, 3), np.uint8)


def measure(path, resolution, batch_size, seconds):
    start = time.perf_counter()
    iterator = iter(load(path, resolution, "all", batch_size=batch_size, mirror=True, seed=0))
    next(iterator)
    ready = time.perf_counter() - start
    for _ in range(20):  # warm-up
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(iterator)
        count += batch.shape[0]
    rate = count / (time.perf_counter() - start)
    print(f"{resolution:>3}x{resolution:<3} batch {batch_size:>3}: {rate:9.0f} images/s "
          f"(first batch after {ready:.1f} s: parse + cache in memory)", flush=True)
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "random"
        print(f"writing {args.images} random 64x64 images ...", flush=True)
        write_dataset(path, RandomImages(args.images, 64), progress=False)
        for resolution, batch_size in ((64, 32), (64, 128), (16, 128), (16, 512)):
            measure(path, resolution, batch_size, args.seconds)


if __name__ == "__main__":
    main()
