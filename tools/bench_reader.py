"""Benchmark: images/s that progan.dataset.reader.load delivers (float32 batches, mirror on).

1. In memory: writes N random 64x64 images (levels 64..4) and times ``load`` at 64x64
   and 16x16 (targets on a 2-core machine: >= 15,000 img/s at 64x64, >= 40,000 at 16x16).
2. Streaming: writes one 64x64 level of --stream-gb GB (several times the 1 GB target),
   then, in a fresh process (so its peak resident memory is the reader's own), times
   ``load`` with a memory budget below the level's size and prints img/s and peak RSS
   (targets: >= 10,000 img/s, RSS < 1 GB). The level is read through the page cache.

The two modes are measured interleaved (in-memory, streaming, in-memory, ...) so a
shared machine's load affects both alike.

    python tools/bench_reader.py [--images 50000] [--seconds 5] [--stream-gb 3]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from progan.dataset.format import FORMAT_NAME, FORMAT_VERSION, serialize_example  # noqa: E402
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


def write_big_level(path, gigabytes, resolution=64, distinct=1024):
    """A data set with one level of ~``gigabytes`` GB (``distinct`` random images repeated)."""
    import tensorflow as tf

    path.mkdir(parents=True)
    rng = np.random.default_rng(0)
    records = [serialize_example(rng.integers(0, 256, (3, resolution, resolution), np.uint8))
               for _ in range(distinct)]
    count = int(gigabytes * 1e9 // (len(records[0]) + 16))
    file = path / f"{path.name}-r{resolution.bit_length() - 1:02d}.tfrecords"
    with tf.io.TFRecordWriter(str(file)) as writer:
        for index in range(count):
            writer.write(records[index % distinct])
    manifest = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "name": path.name,
                "source": {"kind": "random"}, "crop": None, "resolution": resolution, "channels": 3,
                "image_count": count, "train_count": count, "test_count": 0, "skipped": [],
                "skipped_count": 0, "order": "generated",
                "levels": [{"file": file.name, "resolution": resolution, "records": count,
                            "bytes": file.stat().st_size, "sha256": ""}]}
    (path / "dataset.json").write_text(json.dumps(manifest))
    return count, file.stat().st_size


def measure(path, resolution, batch_size, seconds, budget=None):
    start = time.perf_counter()
    iterator = iter(load(path, resolution, "all", batch_size=batch_size, mirror=True, seed=0,
                         memory_budget=budget))
    next(iterator)
    ready = time.perf_counter() - start
    for _ in range(20):  # warm-up
        next(iterator)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(iterator)
        count += batch.shape[0]
    return count / (time.perf_counter() - start), ready


def peak_rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def stream_child(path, seconds):
    """Run in a fresh process: streaming rate at 64x64 and peak RSS, as JSON on stdout."""
    rates = {}
    for batch_size in (32, 128):
        rates[batch_size], _ = measure(path, 64, batch_size, seconds, budget="64M")
    print(json.dumps({"rates": rates, "peak_rss": peak_rss()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--stream-gb", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stream-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stream_child:
        return stream_child(args.stream_child, args.seconds)
    with tempfile.TemporaryDirectory() as scratch:
        small, big = Path(scratch) / "random", Path(scratch) / "big"
        print(f"writing {args.images} random 64x64 images ...", flush=True)
        write_dataset(small, RandomImages(args.images, 64), progress=False)
        print(f"writing a {args.stream_gb:g} GB 64x64 level ...", flush=True)
        count, size = write_big_level(big, args.stream_gb)
        print(f"  {count:,} records, {size / 1e9:.2f} GB", flush=True)
        for round_ in range(args.rounds):
            for resolution, batch_size in ((64, 32), (64, 128), (16, 128), (16, 512)):
                rate, ready = measure(small, resolution, batch_size, args.seconds)
                print(f"round {round_ + 1} in memory  {resolution:>3}x{resolution:<3} batch "
                      f"{batch_size:>3}: {rate:9.0f} images/s (first batch after {ready:.1f} s)",
                      flush=True)
            child = subprocess.run([sys.executable, __file__, "--stream-child", str(big),
                                    "--seconds", str(args.seconds)],
                                   capture_output=True, text=True, check=True,
                                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            result = json.loads(child.stdout.strip().splitlines()[-1])
            for batch_size, rate in result["rates"].items():
                print(f"round {round_ + 1} streaming   64x64   batch {int(batch_size):>3}: {rate:9.0f} "
                      f"images/s (level {size / 1e9:.1f} GB, budget 64 MB)", flush=True)
            print(f"round {round_ + 1} streaming peak resident memory: "
                  f"{result['peak_rss'] / 2**20:.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
