"""Benchmark: images/s of create_celeba, the reference tool's single-threaded algorithm vs ours.

Generates N photo-like 178x218 PNGs of each texture -- smooth, and detailed
(strong per-pixel texture: what costs PNG decoding the most) -- runs a plain
re-statement of NVIDIA's dataset_tool.py create_celeba (tests/dataset_fixtures.py)
and progan's writer (default: all cores) on them, checks both datasets are
byte-identical, and prints images/s of each (best of --repeats interleaved runs,
as the machine may be shared), CPU time per image, and the ratio (target >= 3x).

    python tools/bench_dataset.py [--images 2000] [--workers N] [--textures smooth,detailed]
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from dataset_fixtures import make_celeba_like_images, read_records, reference_create_celeba  # noqa: E402

from progan.dataset.sources import celeba_source  # noqa: E402
from progan.dataset.writer import write_dataset  # noqa: E402


def timed(run):
    """(wall seconds, CPU seconds of this process and its children) of run()."""
    before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    start = time.perf_counter()
    run()
    wall = time.perf_counter() - start
    after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))
    return wall, cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3,
                        help="interleaved runs of each; the best is reported (the machine may be shared)")
    parser.add_argument("--textures", default="smooth,detailed")
    args = parser.parse_args()
    for texture in args.textures.split(","):
        bench(texture, args)


def bench(texture, args):
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        pngs = scratch / "img_align_celeba_png"
        print(f"generating {args.images} {texture} 178x218 PNGs ...", flush=True)
        make_celeba_like_images(pngs, args.images, texture=texture)
        size = sum(p.stat().st_size for p in pngs.iterdir()) / args.images
        print(f"  {size / 1e3:.0f} kB per PNG", flush=True)
        runs = {"reference": [], "ours": []}
        for repeat in range(args.repeats):
            runs["reference"].append(timed(lambda: reference_create_celeba(scratch / "reference", pngs)))
            runs["ours"].append(timed(lambda: write_dataset(
                scratch / "ours", celeba_source(pngs, max_images=args.images), workers=args.workers,
                overwrite=True, progress=False)))
            print(f"{texture} run {repeat + 1}: reference {args.images / runs['reference'][-1][0]:.0f} "
                  f"images/s, ours {args.images / runs['ours'][-1][0]:.0f} images/s", flush=True)
        best = {name: min(times) for name, times in runs.items()}
        reference_rate = args.images / best["reference"][0]
        ours_rate = args.images / best["ours"][0]
        print(f"{texture}: reference (single-threaded): {reference_rate:8.0f} images/s, "
              f"{best['reference'][1] / args.images * 1e3:.2f} CPU ms/image")
        print(f"{texture}: progan-dataset (workers={args.workers or 'all cores'}): {ours_rate:8.0f} "
              f"images/s, {best['ours'][1] / args.images * 1e3:.2f} CPU ms/image")
        print(f"{texture}: ratio {ours_rate / reference_rate:.2f}x (best of {args.repeats} each)")

        for log2 in range(2, 8):
            ours = read_records(scratch / "ours" / f"ours-r{log2:02d}.tfrecords")
            reference = read_records(scratch / "reference" / f"reference-r{log2:02d}.tfrecords")
            if ours != reference:
                sys.exit(f"level r{log2:02d}: outputs differ")
        print(f"{texture}: outputs identical at every level", flush=True)


if __name__ == "__main__":
    main()
