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

The noise floor of the metric is the same function on two disjoint sets of real images of
the same size as the fake set: ``swd(reals_a, reals_b)``.

    distances = swd(reals, fakes, seed=0)   # {64: 4.1, 32: 2.9, 16: 5.0, "avg": 4.0}
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
import tqdm

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


def _binomial_blur(images: tf.Tensor, gain: float) -> tf.Tensor:
    """5x5 binomial blur of NHWC float images with mirror borders, times ``gain``.

    The 2-D filter is separable, so two 1-D passes; mirror padding ("REFLECT": the edge
    pixel is not repeated) is OpenCV's BORDER_REFLECT_101 and scipy.ndimage's "mirror".
    """
    channels = images.shape[-1]
    taps = tf.constant(BINOMIAL_TAPS * np.float32(np.sqrt(gain)))
    vertical = tf.tile(tf.reshape(taps, [5, 1, 1, 1]), [1, 1, channels, 1])
    horizontal = tf.tile(tf.reshape(taps, [1, 5, 1, 1]), [1, 1, channels, 1])
    padded = tf.pad(images, [[0, 0], [2, 2], [2, 2], [0, 0]], mode="REFLECT")
    blurred = tf.nn.depthwise_conv2d(padded, vertical, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], "VALID")


def pyr_down(images: tf.Tensor) -> tf.Tensor:
    """OpenCV pyrDown of NHWC float images: blur, keep every second row and column."""
    return _binomial_blur(images, 1.0)[:, ::2, ::2, :]


def pyr_up(images: tf.Tensor) -> tf.Tensor:
    """OpenCV pyrUp of NHWC float images: zeros between the pixels, blur with gain 4."""
    shape, channels = tf.shape(images), images.shape[-1]
    rows = tf.reshape(tf.stack([images, tf.zeros_like(images)], axis=3),
                      [shape[0], shape[1], 2 * shape[2], channels])
    upsampled = tf.reshape(tf.stack([rows, tf.zeros_like(rows)], axis=2),
                           [shape[0], 2 * shape[1], 2 * shape[2], channels])
    return _binomial_blur(upsampled, 4.0)


def laplacian_level(images: tf.Tensor, level: int, num_levels: int) -> tf.Tensor:
    """Level ``level`` of the ``num_levels``-level Laplacian pyramid of NHWC float images.

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
    """Neighbourhoods of one pyramid level of a uint8 NHWC batch.

    ``centres``: int [B, P, 2]; returns float32 [B * P, patch_size**2 * 3], each row laid
    out (row, column, channel).
    """
    pyramid_level = laplacian_level(tf.cast(images, tf.float32), level, num_levels)
    shape = tf.shape(pyramid_level)
    height, width, channels = shape[1], shape[2], shape[3]
    offsets = tf.range(patch_size, dtype=tf.int32) - patch_size // 2
    centres = tf.cast(centres, tf.int32)
    rows = centres[:, :, 0, None, None] + offsets[:, None]            # [B, P, k, 1]
    columns = centres[:, :, 1, None, None] + offsets[None, :]         # [B, P, 1, k]
    image_index = tf.range(tf.shape(centres)[0])[:, None, None, None]
    flat_index = (image_index * height + rows) * width + columns      # [B, P, k, k]
    pixels = tf.gather(tf.reshape(pyramid_level, [-1, channels]), flat_index)
    return tf.reshape(pixels, [-1, patch_size * patch_size * channels])


def level_descriptors(images: np.ndarray, centres: np.ndarray, level: int, num_levels: int,
                      patch_size: int, batch_size: int = 256) -> np.ndarray:
    """Normalised descriptors of one pyramid level of a uint8 NHWC image set.

    ``centres``: int [num_images, patches_per_image, 2]. Returns float32
    [num_images * patches_per_image, patch_size**2 * 3], normalised per colour channel to
    zero mean / unit standard deviation with the statistics of this set. Batches of
    ``batch_size`` images bound the memory of the pyramid.
    """
    patches_per_image = centres.shape[1]
    descriptors = np.empty((len(images) * patches_per_image, patch_size * patch_size * 3),
                           np.float32)
    for start in range(0, len(images), batch_size):
        stop = min(start + batch_size, len(images))
        descriptors[start * patches_per_image:stop * patches_per_image] = _batch_descriptors(
            tf.constant(images[start:stop]), tf.constant(centres[start:stop]),
            level, num_levels, patch_size).numpy()
    per_channel = descriptors.reshape(len(descriptors), -1, 3)
    mean = per_channel.mean(axis=(0, 1), dtype=np.float64)
    std = per_channel.std(axis=(0, 1), dtype=np.float64)
    per_channel -= mean.astype(np.float32)
    per_channel /= np.where(std > 0, std, 1.0).astype(np.float32)  # a flat channel stays 0
    return descriptors


def sum_of_sorted_differences(projections_a: tf.Tensor, projections_b: tf.Tensor) -> tf.Tensor:
    """Sum over rows and i of |a_(i) - b_(i)|, a and b the sorted rows of two float [R, M]
    tensors (a float64 scalar).

    The same number as sorting both rows, computed without a full sort (TensorFlow's CPU
    sort is slower than NumPy's, and sorting dominates SWD): the sum is the integral of
    |count_A(<= t) - count_B(<= t)| dt. The value range of a row is cut into M/16
    equal buckets. Where the count difference keeps one sign across a bucket (almost everywhere)
    its integral over the bucket follows from the bucket's element counts and sums; only
    the elements of the few buckets where it changes sign are sorted.
    """
    rows, size = tf.shape(projections_a)[0], tf.shape(projections_a)[1]
    a, b = tf.cast(projections_a, tf.float64), tf.cast(projections_b, tf.float64)
    buckets = tf.maximum(size // 16, 1)  # small enough to count fast, rarely a sign change
    low = tf.minimum(tf.reduce_min(a, axis=1), tf.reduce_min(b, axis=1))[:, None]
    high = tf.maximum(tf.reduce_max(a, axis=1), tf.reduce_max(b, axis=1))[:, None]
    width = tf.where(high > low, (high - low) / tf.cast(buckets, tf.float64), tf.ones_like(low))
    row_offset = tf.range(rows)[:, None] * buckets

    def bucket_of(values):  # position inside the row's range in buckets, and bucket index
        position = (values - low) / width
        bucket = tf.clip_by_value(tf.cast(tf.floor(position), tf.int32), 0, buckets - 1)
        return position, bucket + row_offset

    position_a, bucket_a = bucket_of(a)
    position_b, bucket_b = bucket_of(b)
    segments = rows * buckets
    count_a = tf.math.bincount(tf.reshape(bucket_a, [-1]), minlength=segments,
                               maxlength=segments, dtype=tf.float64)
    count_b = tf.math.bincount(tf.reshape(bucket_b, [-1]), minlength=segments,
                               maxlength=segments, dtype=tf.float64)
    # sums of (bucket end - position) in bucket widths, per bucket
    gap_a = tf.math.unsorted_segment_sum(
        tf.reshape(tf.cast(bucket_a - row_offset + 1, tf.float64) - position_a, [-1]),
        tf.reshape(bucket_a, [-1]), segments)
    gap_b = tf.math.unsorted_segment_sum(
        tf.reshape(tf.cast(bucket_b - row_offset + 1, tf.float64) - position_b, [-1]),
        tf.reshape(bucket_b, [-1]), segments)
    per_row = tf.reshape(count_a - count_b, [rows, buckets])
    before = tf.reshape(tf.cumsum(per_row, axis=1, exclusive=True), [-1])  # difference at start
    sign_changes = (before - count_b < 0) & (before + count_a > 0)
    clean_integral = tf.abs(before + gap_a - gap_b)
    clean_integral = tf.where(sign_changes, tf.zeros_like(clean_integral), clean_integral)
    total = tf.reduce_sum(clean_integral * tf.repeat(tf.reshape(width, [-1]), buckets))

    # buckets with a sign change: sort their elements (key: bucket, then position in it)
    def changing(bucket, position, step):
        keep = tf.gather(sign_changes, bucket)
        bucket = tf.boolean_mask(bucket, keep)
        fraction = tf.boolean_mask(position, keep) - tf.cast(bucket % buckets, tf.float64)
        return bucket, fraction, tf.fill(tf.shape(bucket), tf.constant(step, tf.float64))

    parts = [changing(bucket_a, position_a, 1.0), changing(bucket_b, position_b, -1.0)]
    bucket, fraction, steps = (tf.concat(part, axis=0) for part in zip(*parts))
    fraction = tf.clip_by_value(fraction, 0.0, 1.0)
    order = tf.argsort(tf.cast(bucket, tf.float64) + fraction * 0.5)
    bucket, fraction, steps = (tf.gather(x, order) for x in (bucket, fraction, steps))
    first = tf.not_equal(bucket, tf.concat([[-1], bucket[:-1]], axis=0))
    last = tf.not_equal(bucket, tf.concat([bucket[1:], [-1]], axis=0))
    running = tf.cumsum(steps)
    start_of_bucket = tf.gather(tf.boolean_mask(running - steps, first),
                                tf.math.cumsum(tf.cast(first, tf.int32)) - 1)
    after = tf.gather(before, bucket) + running - start_of_bucket
    following = tf.where(last, tf.ones_like(fraction), tf.concat([fraction[1:], [1.0]], axis=0))
    bucket_width = tf.gather(tf.reshape(width, [-1]), bucket // buckets)
    inside = tf.abs(after) * (following - fraction)
    leading = tf.where(first, tf.abs(tf.gather(before, bucket)) * fraction,
                       tf.zeros_like(fraction))
    return total + tf.reduce_sum((inside + leading) * bucket_width)


@tf.function(reduce_retracing=True)
def _projected_distance_sum(descriptors_a: tf.Tensor, descriptors_b: tf.Tensor,
                            directions: tf.Tensor) -> tf.Tensor:
    """Sum over directions of the mean |sorted projection of A - sorted projection of B|."""
    projections_a = tf.transpose(tf.matmul(descriptors_a, directions))
    projections_b = tf.transpose(tf.matmul(descriptors_b, directions))
    return sum_of_sorted_differences(projections_a, projections_b) / tf.cast(
        tf.shape(projections_a)[1], tf.float64)


def sliced_wasserstein(descriptors_a: np.ndarray, descriptors_b: np.ndarray,
                       directions: np.ndarray, directions_per_chunk: int = 32) -> float:
    """Mean over ``directions`` of the 1-D Wasserstein distance between the projections.

    ``descriptors_a``, ``descriptors_b``: float32 [M, D] with the same M; ``directions``:
    float32 [D, num_directions]. Chunks of ``directions_per_chunk`` bound the memory to
    about ``4 * M * directions_per_chunk * 4`` bytes.
    """
    if descriptors_a.shape != descriptors_b.shape:
        raise ValueError(f"sliced_wasserstein: descriptor sets differ in shape, "
                         f"{descriptors_a.shape} vs {descriptors_b.shape}")
    a, b = tf.constant(descriptors_a), tf.constant(descriptors_b)
    total = 0.0
    for start in range(0, directions.shape[1], directions_per_chunk):
        chunk = tf.constant(directions[:, start:start + directions_per_chunk])
        total += float(_projected_distance_sum(a, b, chunk))
    return total / directions.shape[1]


def _check_images(images: np.ndarray, name: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"swd: {name} must be uint8 [N, H, W, 3], got {images.dtype} "
                         f"{list(images.shape)}")
    resolution = images.shape[1]
    if images.shape[2] != resolution or resolution < 4 or resolution & (resolution - 1):
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
