"""Sliced Wasserstein distance between Laplacian-pyramid patches (Karras et al. 2018, sec. 5).


The protocol of the paper and its reference code:

* each image (raw 0-255 values) is split into a Laplacian pyramid from its full resolution
  down to 16x16; the 5x5 binomial filter [1,4,6,4,1] x [1,4,6,4,1] / 256 blurs with mirror
  borders (OpenCV's pyrDown/pyrUp, scipy.ndimage mode "mirror"); the 16x16 level is the
  low-pass residual. Images smaller than 16x16 (the 4x4 and 8x8 training stages) have a
  single level, the image itself;
* 128 random 7x7x3 neighbourhoods per image and level, centres drawn so the patch stays
  inside (at 4x4 the largest neighbourhood that fits, 3x3, is used);
* each descriptor set (one level of one image set) is normalised per colour channel to zero
  mean and unit standard deviation with its own statistics;
* 512 random unit directions (the reference draws 4 repeats of 128; the mean over repeats
  of a mean over 128 directions is the mean over all 512); the projections of both sets
  are sorted and compared by mean absolute difference;
* the distance is reported x10^3 per level and averaged over levels.

Computed in TensorFlow without changing the numbers: the pyramid filters as small matrix
products, all neighbourhoods of a batch by one gather, and the comparison of sorted
projections in linear time for almost all values (``sum_of_sorted_differences``), on two
threads.

The noise floor of the metric is the same function on two disjoint sets of real images of
the same size as the fake set: ``swd(reals_a, reals_b)``.

    distances = swd(reals, fakes, seed=0)   # {64: 4.1, 32: 2.9, 16: 5.0, "avg": 4.0}
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

import numpy as np
import tqdm

from progan.backend import tf
from progan.resolution import is_power_of_two

BINOMIAL_TAPS = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0
LOWEST_RESOLUTION = 16


def pyramid_resolutions(resolution: int, lowest: int = LOWEST_RESOLUTION) -> list[int]:
    """Resolutions of the Laplacian levels of a ``resolution`` image, highest first.

    ``[resolution, resolution/2, ..., lowest]``; a single level when ``resolution <= lowest``.
    """
    resolutions = [resolution]
    while resolutions[-1] > lowest:
        resolutions.append(resolutions[-1] // 2)
    return resolutions


def neighbourhood_size(resolution: int, patch_size: int = 7) -> int:
    """Side of the neighbourhoods taken at ``resolution``: ``patch_size``, or the largest
    odd size that fits inside a smaller image (3 at 4x4)."""
    largest_odd = resolution if resolution % 2 else resolution - 1
    return min(patch_size, largest_odd)


def _blur_matrix(size: int) -> np.ndarray:
    """float64 [size, size]: the 1-D binomial blur of ``size`` samples with mirror borders.

    Mirror ("reflect 101": the edge sample is not repeated) is OpenCV's default border and
    scipy.ndimage's "mirror" mode.
    """
    matrix = np.zeros((size, size))
    for row in range(size):
        for shift, tap in zip(range(-2, 3), BINOMIAL_TAPS):
            column = abs(row + shift)
            matrix[row, min(column, 2 * (size - 1) - column)] += tap
    return matrix


def _separable(images: tf.Tensor, matrix: np.ndarray) -> tf.Tensor:
    """``matrix @ image @ matrix^T`` for every channel of NCHW float32 images: the 2-D
    filter of a separable 1-D linear operator, as two small matrix products (much faster on
    a CPU than a depthwise convolution)."""
    operator = tf.constant(matrix, tf.float32)
    return tf.matmul(tf.matmul(operator, images), operator, transpose_b=True)


def pyr_down(images: tf.Tensor) -> tf.Tensor:
    """OpenCV pyrDown of NCHW float32 images: blur, keep every second row and column."""
    return _separable(images, _blur_matrix(images.shape[-1])[::2])


def pyr_up(images: tf.Tensor) -> tf.Tensor:
    """OpenCV pyrUp of NCHW float32 images: zeros between the samples, blur with gain 4
    (2 per axis, so the operator is twice the blur's even columns)."""
    return _separable(images, 2.0 * _blur_matrix(2 * images.shape[-1])[:, ::2])


def laplacian_level(images: tf.Tensor, level: int, num_levels: int) -> tf.Tensor:
    """Level ``level`` of the ``num_levels``-level Laplacian pyramid of NCHW float32 images.

    Level 0 has the input's resolution; the last level is the low-pass residual.
    """
    gaussian = images
    for _ in range(level):
        gaussian = pyr_down(gaussian)
    if level == num_levels - 1:
        return gaussian
    return gaussian - pyr_up(pyr_down(gaussian))


@dataclasses.dataclass(frozen=True)
class LevelSampling:
    """The random choices of one pyramid level: patch centres of both image sets and the
    projection directions.

    ``centres_a``/``centres_b``: int [num_images, patches_per_image, 2] (row, column);
    ``directions``: float32 [patch_size * patch_size * 3, num_directions], unit columns, in
    the descriptor layout (row, column, channel).
    """

    resolution: int
    patch_size: int
    centres_a: np.ndarray
    centres_b: np.ndarray
    directions: np.ndarray


def sample_patch_centres(rng: np.random.Generator, num_images: int, resolution: int,
                         patches_per_image: int, patch_size: int) -> np.ndarray:
    """Uniform (row, column) centres of ``patch_size`` neighbourhoods inside a
    ``resolution`` image: int [num_images, patches_per_image, 2]."""
    half = patch_size // 2
    return rng.integers(half, resolution - half, size=(num_images, patches_per_image, 2))


def sample_directions(rng: np.random.Generator, descriptor_size: int,
                      num_directions: int) -> np.ndarray:
    """Random unit directions, float32 [descriptor_size, num_directions]."""
    directions = rng.standard_normal((descriptor_size, num_directions))
    directions /= np.sqrt(np.sum(np.square(directions), axis=0, keepdims=True))
    return directions.astype(np.float32)


def sample_swd_protocol(rng: np.random.Generator, resolution: int, num_images_a: int,
                        num_images_b: int, patches_per_image: int = 128,
                        num_directions: int = 512, patch_size: int = 7) -> list[LevelSampling]:
    """All random choices of one SWD evaluation, one ``LevelSampling`` per pyramid level."""
    samplings = []
    for level_resolution in pyramid_resolutions(resolution):
        size = neighbourhood_size(level_resolution, patch_size)
        samplings.append(LevelSampling(
            resolution=level_resolution,
            patch_size=size,
            centres_a=sample_patch_centres(rng, num_images_a, level_resolution,
                                           patches_per_image, size),
            centres_b=sample_patch_centres(rng, num_images_b, level_resolution,
                                           patches_per_image, size),
            directions=sample_directions(rng, size * size * 3, num_directions)))
    return samplings


@tf.function(reduce_retracing=True)
def _batch_descriptors(images: tf.Tensor, centres: tf.Tensor, level: int, num_levels: int,
                       patch_size: int) -> tf.Tensor:
    """Neighbourhoods of one pyramid level of a uint8 NHWC batch, one per column.

    ``centres``: int [B, P, 2]; returns float32 [patch_size**2 * 3, B * P], each column
    laid out (row, column, channel).
    """
    pyramid_level = laplacian_level(tf.transpose(tf.cast(images, tf.float32), [0, 3, 1, 2]),
                                    level, num_levels)
    shape = tf.shape(pyramid_level)
    channels, height, width = shape[1], shape[2], shape[3]
    offsets = tf.range(patch_size, dtype=tf.int32) - patch_size // 2
    centres = tf.cast(centres, tf.int32)
    # index tensor [k, k, C, B, P]: the gather lands the descriptor components on rows
    rows = offsets[:, None, None, None, None] + centres[None, None, None, :, :, 0]
    columns = offsets[None, :, None, None, None] + centres[None, None, None, :, :, 1]
    channel = tf.range(channels)[None, None, :, None, None]
    image = tf.range(tf.shape(centres)[0])[None, None, None, :, None]
    flat_index = ((image * channels + channel) * height + rows) * width + columns
    pixels = tf.gather(tf.reshape(pyramid_level, [-1]), flat_index)
    return tf.reshape(pixels, [patch_size * patch_size * 3, -1])


def level_descriptors(images: np.ndarray, centres: np.ndarray, level: int, num_levels: int,
                      patch_size: int, batch_size: int = 256) -> tf.Tensor:
    """Normalised descriptors of one pyramid level of a uint8 NHWC image set, one per column.

    ``centres``: int [num_images, patches_per_image, 2]. Returns float32
    [patch_size**2 * 3, num_images * patches_per_image] (rows in (row, column, channel)
    order), normalised per colour channel to zero mean / unit standard deviation with the
    statistics of this set. Batches of ``batch_size`` images bound the memory of the pyramid.
    """
    descriptors = tf.concat([
        _batch_descriptors(tf.constant(images[start:start + batch_size]),
                           tf.constant(centres[start:start + batch_size]),
                           level, num_levels, patch_size)
        for start in range(0, len(images), batch_size)], axis=1)
    return _normalise_per_channel(descriptors)


@tf.function(reduce_retracing=True)
def _normalise_per_channel(descriptors: tf.Tensor) -> tf.Tensor:
    """float32 [k*k*3, M] descriptors minus the mean, over the standard deviation, of their
    colour channel (rows ``c``, ``c + 3``, ...); a flat channel stays 0."""
    wide = tf.cast(descriptors, tf.float64)
    mean = tf.reduce_mean(tf.reshape(tf.reduce_mean(wide, axis=1), [-1, 3]), axis=0)
    squares = tf.reduce_mean(tf.reshape(tf.reduce_mean(tf.square(wide), axis=1), [-1, 3]), axis=0)
    std = tf.sqrt(tf.maximum(squares - tf.square(mean), 0.0))
    std = tf.where(std > 0, std, tf.ones_like(std))
    rows = tf.shape(descriptors)[0]
    mean = tf.cast(tf.tile(mean, [rows // 3])[:, None], tf.float32)
    std = tf.cast(tf.tile(std, [rows // 3])[:, None], tf.float32)
    return (descriptors - mean) / std


BUCKET_FILL = 4  # mean values of the two rows per bucket in sum_of_sorted_differences


@tf.function(jit_compile=True)
def _bucket_counts(a: tf.Tensor, b: tf.Tensor, buckets: int) -> tuple:
    """Histograms of the rows of two float32 [R, M] tensors over ``buckets`` equal buckets
    of each row's joint range.

    Returns the count difference (a minus b) at each bucket's start and its change over the
    bucket, the sign it keeps over the bucket (+1/-1, 0 where it may change sign) [R,
    buckets], and each row's range start and buckets per unit value [R, 1].
    """
    rows = tf.shape(a)[0]
    low = tf.minimum(tf.reduce_min(a, axis=1), tf.reduce_min(b, axis=1))[:, None]
    high = tf.maximum(tf.reduce_max(a, axis=1), tf.reduce_max(b, axis=1))[:, None]
    scale = tf.where(high > low, buckets / (high - low), tf.ones_like(low))

    def count(values):
        bucket, _ = _bucket_of(values, low, scale, buckets)
        counts = tf.tensor_scatter_nd_add(tf.zeros([rows * buckets]),
                                          tf.reshape(bucket, [-1, 1]), tf.ones([tf.size(values)]))
        return tf.reshape(counts, [rows, buckets])

    count_a, count_b = count(a), count(b)
    difference = count_a - count_b
    start = tf.cumsum(difference, axis=1, exclusive=True)
    # inside the bucket the difference stays within [start - count_b, start + count_a]
    sign = tf.where(start - count_b >= 0, 1.0, tf.where(start + count_a <= 0, -1.0, 0.0))
    return start, difference, sign, low, scale


def _bucket_of(values: tf.Tensor, low: tf.Tensor, scale: tf.Tensor, buckets: int) -> tuple:
    """Row-major bucket index (row * buckets + bucket) and position in bucket widths from
    the row's start of [R, M] values."""
    position = (values - low) * scale
    bucket = tf.clip_by_value(tf.cast(tf.floor(position), tf.int32), 0, buckets - 1)
    return bucket + tf.range(tf.shape(values)[0])[:, None] * buckets, position


@tf.function(jit_compile=True)
def _one_signed_buckets(a: tf.Tensor, b: tf.Tensor, sign: tf.Tensor, low: tf.Tensor,
                        scale: tf.Tensor) -> tuple:
    """The part of sum_of_sorted_differences of the buckets where the count difference
    keeps its sign (``sign`` [R, buckets] is +1/-1 there, 0 elsewhere).

    Returns, per row, the sum over their values of sign * (+1 for a, -1 for b) * (bucket end
    - position) in bucket widths (float64 [R]), and the positions of the values of a and b
    in the other buckets, -1 for the rest (float32 [R, M] each).
    """
    buckets = sign.shape[1]
    flat_sign = tf.reshape(sign, [-1])

    def part(values):
        bucket, position = _bucket_of(values, low, scale, buckets)
        value_sign = tf.gather(flat_sign, bucket)
        end = tf.cast(bucket % buckets + 1, tf.float32)
        total = tf.reduce_sum(tf.cast(value_sign * (end - position), tf.float64), axis=1)
        return total, tf.where(value_sign == 0, position, -tf.ones_like(position))

    total_a, position_a = part(a)
    total_b, position_b = part(b)
    return total_a - total_b, position_a, position_b


def _sign_changing_buckets(position_a: np.ndarray, position_b: np.ndarray, start: np.ndarray,
                           difference: np.ndarray, sign: np.ndarray,
                           scale: np.ndarray) -> float:
    """The part of sum_of_sorted_differences of the buckets where the count difference may
    change sign: their values (positions >= 0 in ``position_a``/``position_b`` float32 [R, M])
    are sorted by bucket and position, the exact integral of |count difference| follows from
    the running count. ``start`` and ``difference`` [R, buckets]: count difference at each
    bucket's start and its change over the bucket.

    NumPy: these values are a few percent of all, and NumPy sorts packed int64 keys several
    times faster than TensorFlow's argsort.
    """
    buckets = start.shape[1]
    parts = []
    for positions, is_b in ((position_a, 0), (position_b, 1)):
        index = np.flatnonzero(positions >= 0)
        position = positions.reshape(-1)[index]
        local = np.minimum(np.floor(position), buckets - 1)
        fraction = np.minimum(position - local, np.float32(1.0))  # exact: integer part removed
        bucket = (index // positions.shape[1]) * buckets + local.astype(np.int64)
        # key: bucket, then position inside it (non-negative float32 bits sort as integers),
        # then which set (the order of equal positions does not change the integral)
        parts.append((bucket << 33) | (fraction.view(np.uint32).astype(np.int64) << 1) | is_b)
    keys = np.sort(np.concatenate(parts))
    bucket = keys >> 33
    fraction = ((keys >> 1) & 0xFFFFFFFF).astype(np.uint32).view(np.float32).astype(np.float64)
    step = 1.0 - 2.0 * (keys & 1)
    # running count difference: the bucket's start plus the steps taken inside it. The
    # cumulative sum of steps runs over all these buckets, so subtract what the changing
    # buckets before this one contributed (their count differences).
    changing = np.flatnonzero(sign.reshape(-1) == 0)
    changing_difference = difference.reshape(-1)[changing].astype(np.float64)
    changing_before = np.cumsum(changing_difference) - changing_difference
    in_changing = np.searchsorted(changing, bucket)
    after = (start.reshape(-1)[bucket] - changing_before[in_changing]) + np.cumsum(step)
    first = np.ones(len(keys), bool)
    first[1:] = bucket[1:] != bucket[:-1]
    last = np.ones(len(keys), bool)
    last[:-1] = first[1:]
    previous = np.where(first, 0.0, np.concatenate([[0.0], fraction[:-1]]))
    integral = np.abs(after - step) * (fraction - previous) + np.where(
        last, np.abs(after) * (1.0 - fraction), 0.0)
    width = 1.0 / scale[:, 0].astype(np.float64)
    return float(np.sum(integral * width[bucket // buckets]))


def sum_of_sorted_differences(projections_a: tf.Tensor, projections_b: tf.Tensor) -> float:
    """Sum over rows and i of |a_(i) - b_(i)|, a and b the sorted rows of two float32 [R, M]
    tensors.

    The same number as sorting both rows, in linear time for almost all values (sorting
    dominated SWD): the sum is the integral over t of |count_a(<= t) - count_b(<= t)|. Each
    row's range is cut into M / BUCKET_FILL equal buckets and both rows are counted per
    bucket. Where the count difference keeps one sign across a bucket (almost everywhere)
    its integral over the bucket follows from the bucket's count difference at the start
    and the positions of its values; only the values of the few buckets where the sign may
    change are sorted.
    """
    a = tf.convert_to_tensor(projections_a, tf.float32)
    b = tf.convert_to_tensor(projections_b, tf.float32)
    buckets = max(int(a.shape[1]) // BUCKET_FILL, 1)
    start, difference, sign, low, scale = _bucket_counts(a, b, buckets)
    values_part, position_a, position_b = _one_signed_buckets(a, b, sign, low, scale)
    start, difference, sign, scale = (x.numpy() for x in (start, difference, sign, scale))
    one_signed = np.sum((np.sum(sign * start, axis=1, dtype=np.float64) + values_part.numpy())
                        / scale[:, 0].astype(np.float64))
    return float(one_signed) + _sign_changing_buckets(position_a.numpy(), position_b.numpy(),
                                                      start, difference, sign, scale)


def _directions_per_chunk(num_descriptors: int) -> int:
    """Directions projected at once: 128 (the reference's repeat), fewer for large sets so
    a chunk of projections stays about 128 MB."""
    return int(np.clip(2 ** 25 // num_descriptors, 8, 128))


def sliced_wasserstein(descriptors_a: tf.Tensor, descriptors_b: tf.Tensor,
                       directions: np.ndarray) -> float:
    """Mean over ``directions`` of the 1-D Wasserstein distance between the projections.

    ``descriptors_a``, ``descriptors_b``: float32 [D, M], one descriptor per column, the
    same M; ``directions``: float32 [D, num_directions]. Chunks of directions run on two
    threads (TensorFlow releases the GIL), one per core of a small machine.
    """
    if descriptors_a.shape != descriptors_b.shape:
        raise ValueError(f"sliced_wasserstein: descriptor sets differ in shape, "
                         f"{descriptors_a.shape} vs {descriptors_b.shape}")
    size = int(descriptors_a.shape[1])
    step = _directions_per_chunk(size)

    def chunk_sum(start):
        chunk = tf.constant(directions[:, start:start + step])
        return sum_of_sorted_differences(tf.matmul(chunk, descriptors_a, transpose_a=True),
                                         tf.matmul(chunk, descriptors_b, transpose_a=True))

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        total = sum(pool.map(chunk_sum, range(0, directions.shape[1], step)))
    return total / (size * directions.shape[1])


def _check_images(images: np.ndarray, name: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"swd: {name} must be uint8 [N, H, W, 3], got {images.dtype} "
                         f"{list(images.shape)}")
    resolution = images.shape[1]
    if images.shape[2] != resolution or resolution < 4 or not is_power_of_two(resolution):
        raise ValueError(f"swd: {name} must be square with a power-of-two side >= 4, "
                         f"got {images.shape[1]}x{images.shape[2]}")


def swd_from_sampling(images_a: np.ndarray, images_b: np.ndarray,
                      samplings: list[LevelSampling], batch_size: int = 256,
                      progress: bool = False) -> dict:
    """SWD x10^3 per level between two uint8 NHWC image sets with given random choices.

    Returns ``{resolution: distance, ..., "avg": mean over levels}`` (int keys, highest
    resolution first).
    """
    for images, name in ((images_a, "reals"), (images_b, "fakes")):
        _check_images(images, name)
    if images_a.shape[1:] != images_b.shape[1:]:
        raise ValueError(f"swd: reals and fakes differ in size, {list(images_a.shape[1:])} "
                         f"vs {list(images_b.shape[1:])}")
    if len(images_a) * samplings[0].centres_a.shape[1] != len(images_b) * \
            samplings[0].centres_b.shape[1]:
        raise ValueError(f"swd: reals and fakes need the same number of images, got "
                         f"{len(images_a)} and {len(images_b)}")
    distances = {}
    for level, sampling in enumerate(tqdm.tqdm(samplings, desc="SWD levels", unit="level",
                                               disable=not progress)):
        descriptors = [level_descriptors(images, centres, level, len(samplings),
                                         sampling.patch_size, batch_size)
                       for images, centres in ((images_a, sampling.centres_a),
                                               (images_b, sampling.centres_b))]
        distances[sampling.resolution] = 1e3 * sliced_wasserstein(*descriptors,
                                                                  sampling.directions)
    distances["avg"] = float(np.mean(list(distances.values())))
    return distances


def swd(reals: np.ndarray, fakes: np.ndarray, seed: int | None = None,
        patches_per_image: int = 128, num_directions: int = 512, patch_size: int = 7,
        batch_size: int = 256, progress: bool = False) -> dict:
    """Sliced Wasserstein distance x10^3 between two uint8 NHWC image sets, per pyramid level.

    ``reals``, ``fakes``: uint8 [N, R, R, 3], the same N (the paper: 16,384), R a power of
    two >= 4. ``seed`` fixes the patches and directions. Returns
    ``{R: d, R/2: d, ..., 16: d, "avg": mean}``; a single level below 16x16. For the noise
    floor call it on two disjoint real sets of the same size.
    """
    _check_images(reals, "reals")
    samplings = sample_swd_protocol(np.random.default_rng(seed), reals.shape[1], len(reals),
                                    len(fakes), patches_per_image, num_directions, patch_size)
    return swd_from_sampling(reals, fakes, samplings, batch_size, progress)
