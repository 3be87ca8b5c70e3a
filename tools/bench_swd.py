"""Time progan's TensorFlow SWD against a straightforward NumPy implementation of the same
protocol on the same images, patch centres and directions.

    python tools/bench_swd.py --images 2048 --resolution 64

Prints seconds for each (the best of ``--repeats`` alternating runs: the CPU may be shared),
the speed ratio (target >= 5x) and the largest difference of the per-level values.
"""

import argparse
import time

import numpy as np
import scipy.ndimage

from progan.evaluation.sliced_wasserstein import sample_swd_protocol, swd_from_sampling

BINOMIAL = np.float32(np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0)


def numpy_swd(images_a, images_b, samplings, batch_size=256):
    """The protocol as the reference code writes it: NCHW float32 pyramids through
    scipy.ndimage.convolve, fancy-indexed neighbourhoods, np.sort per 128 directions."""

    def pyr_down(x):
        return scipy.ndimage.convolve(x, BINOMIAL[None, None], mode="mirror")[:, :, ::2, ::2]

    def pyr_up(x):
        up = np.zeros(x.shape[:2] + (2 * x.shape[2], 2 * x.shape[3]), np.float32)
        up[:, :, ::2, ::2] = x
        return scipy.ndimage.convolve(up, 4 * BINOMIAL[None, None], mode="mirror")

    def descriptors(images, centres_per_level):
        per_level = [[] for _ in samplings]
        for start in range(0, len(images), batch_size):
            pyramid = [np.float32(images[start:start + batch_size].transpose(0, 3, 1, 2))]
            for _ in samplings[1:]:
                pyramid.append(pyr_down(pyramid[-1]))
                pyramid[-2] -= pyr_up(pyramid[-1])
            for level, (sampling, centres) in enumerate(zip(samplings, centres_per_level)):
                half = sampling.patch_size // 2
                offsets = np.arange(-half, half + 1)
                centres = centres[start:start + batch_size].reshape(-1, 2)
                image = np.repeat(np.arange(len(pyramid[level])), centres_per_level[0].shape[1])
                rows = centres[:, 0, None, None, None] + offsets[None, :, None, None]
                columns = centres[:, 1, None, None, None] + offsets[None, None, :, None]
                channels = np.arange(3)[None, None, None, :]
                per_level[level].append(
                    pyramid[level][image[:, None, None, None], channels, rows, columns]
                    .reshape(len(centres), -1))
        normalised = []
        for parts in per_level:
            desc = np.concatenate(parts).reshape(-1, parts[0].shape[1] // 3, 3)
            desc -= desc.mean(axis=(0, 1), dtype=np.float64).astype(np.float32)
            desc /= desc.std(axis=(0, 1), dtype=np.float64).astype(np.float32)
            normalised.append(desc.reshape(len(desc), -1))
        return normalised

    a = descriptors(images_a, [s.centres_a for s in samplings])
    b = descriptors(images_b, [s.centres_b for s in samplings])
    result = {}
    for level, sampling in enumerate(samplings):
        repeats = []
        for start in range(0, sampling.directions.shape[1], 128):
            directions = sampling.directions[:, start:start + 128]
            projections_a = np.sort(a[level] @ directions, axis=0)
            projections_b = np.sort(b[level] @ directions, axis=0)
            repeats.append(np.mean(np.abs(projections_a - projections_b)))
        result[sampling.resolution] = 1e3 * np.mean(repeats)
    result["avg"] = np.mean(list(result.values()))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    shape = (args.images, args.resolution, args.resolution, 3)
    noise = rng.normal(0, 1, shape).astype(np.float32)
    reals = np.clip(128 + 40 * scipy.ndimage.uniform_filter(noise, (0, 3, 3, 0)) * 3, 0, 255)
    fakes = np.clip(128 + 40 * scipy.ndimage.uniform_filter(noise[::-1], (0, 5, 5, 0)) * 5, 0, 255)
    reals, fakes = reals.astype(np.uint8), fakes.astype(np.uint8)
    samplings = sample_swd_protocol(rng, args.resolution, args.images, args.images)

    swd_from_sampling(reals[:64], fakes[:64], sample_swd_protocol(rng, args.resolution, 64, 64))
    ours_seconds = numpy_seconds = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = swd_from_sampling(reals, fakes, samplings)
        ours_seconds = min(ours_seconds, time.perf_counter() - start)
        start = time.perf_counter()
        reference = numpy_swd(reals, fakes, samplings)
        numpy_seconds = min(numpy_seconds, time.perf_counter() - start)
    difference = max(abs(ours[key] - reference[key]) for key in reference)
    print(f"images {args.images} x {args.resolution}x{args.resolution}, levels "
          f"{[key for key in ours if key != 'avg']}")
    print(f"progan (TensorFlow) {ours_seconds:.1f} s  {ours}")
    print(f"NumPy               {numpy_seconds:.1f} s  {reference}")
    print(f"speed ratio {numpy_seconds / ours_seconds:.2f}x (target >= 5x), "
          f"largest difference {difference:.2e}")


if __name__ == "__main__":
    main()
