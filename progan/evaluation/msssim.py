"""Multi-scale structural similarity of consecutive generated images (the paper's diversity
measure: low MS-SSIM between random pairs means varied samples).

The protocol of the reference code (NVIDIA's metrics/ms_ssim.py, after Wang et al. 2003):
pairs (0, 1), (2, 3), ... of the image set; 5 scales with weights [0.0448, 0.2856, 0.3001,
0.2363, 0.1333]; at each scale a Gaussian window of 11x11, sigma 1.5, shrunk to
``min(11, height, width)`` with sigma scaled by the same factor (a 64x64 image reaches 4x4 at
the last scale); k1 0.01, k2 0.03 on 0-255 values; the SSIM and contrast-structure maps are
averaged over rows, columns and colour channels; 2x2 average between scales; the per-scale
values are clipped at 0; the score of a pair is prod(cs[s]^w[s], s < 4) * ssim[4]^w[4]; the
result is the mean over pairs.

``tf.image.ssim_multiscale`` cannot reproduce this: its window does not shrink (it rejects
images smaller than the window) and it raises each colour channel's values to the weights
before averaging the channels. So the protocol is written here in TensorFlow (float64).

    ms_ssim(fakes)   # fakes: uint8 [20000, 64, 64, 3] -> e.g. 0.2838
"""

from __future__ import annotations

import numpy as np
import tqdm

from progan.backend import tf

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_taps(size: int, sigma: float) -> np.ndarray:
    """1-D Gaussian taps at ``size`` points centred on 0 (half-integers for even sizes),
    normalised to sum 1; their outer product is MATLAB's fspecial('gaussian')."""
    positions = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-positions ** 2 / (2.0 * sigma ** 2))
    return taps / taps.sum()


def _window_mean(images: tf.Tensor, taps: np.ndarray) -> tf.Tensor:
    """Gaussian-weighted local means of NHWC images over every window inside the image."""
    channels = images.shape[-1]
    size = len(taps)
    taps = tf.constant(taps, images.dtype)
    vertical = tf.tile(tf.reshape(taps, [size, 1, 1, 1]), [1, 1, channels, 1])
    horizontal = tf.tile(tf.reshape(taps, [1, size, 1, 1]), [1, 1, channels, 1])
    blurred = tf.nn.depthwise_conv2d(images, vertical, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(blurred, horizontal, [1, 1, 1, 1], "VALID")


def ssim_and_contrast_structure(images_a: tf.Tensor, images_b: tf.Tensor,
                                max_value: float = 255.0, filter_size: int = 11,
                                filter_sigma: float = 1.5, k1: float = 0.01,
                                k2: float = 0.03) -> tuple[tf.Tensor, tf.Tensor]:
    """Per-pair mean SSIM and mean contrast-structure term of two float NHWC batches.

    The window is ``min(filter_size, height, width)`` wide with sigma scaled likewise.
    Returns two [N] tensors (means over rows, columns and channels).
    """
    size = min(filter_size, images_a.shape[1], images_a.shape[2])
    taps = gaussian_taps(size, size * filter_sigma / filter_size)
    mean_a, mean_b = _window_mean(images_a, taps), _window_mean(images_b, taps)
    variance_a = _window_mean(images_a * images_a, taps) - mean_a * mean_a
    variance_b = _window_mean(images_b * images_b, taps) - mean_b * mean_b
    covariance = _window_mean(images_a * images_b, taps) - mean_a * mean_b
    c1, c2 = (k1 * max_value) ** 2, (k2 * max_value) ** 2
    contrast_structure = (2.0 * covariance + c2) / (variance_a + variance_b + c2)
    luminance = (2.0 * mean_a * mean_b + c1) / (mean_a * mean_a + mean_b * mean_b + c1)
    return (tf.reduce_mean(luminance * contrast_structure, axis=[1, 2, 3]),
            tf.reduce_mean(contrast_structure, axis=[1, 2, 3]))


@tf.function
def ms_ssim_pairs(images_a: tf.Tensor, images_b: tf.Tensor,
                  weights: tuple[float, ...] = MS_SSIM_WEIGHTS) -> tf.Tensor:
    """MS-SSIM of each pair (images_a[i], images_b[i]) of 0-255 NHWC batches: [N] float64."""
    scores = tf.ones(tf.shape(images_a)[:1], tf.float64)
    images_a, images_b = tf.cast(images_a, tf.float64), tf.cast(images_b, tf.float64)
    for weight in weights[:-1]:
        contrast_structure = ssim_and_contrast_structure(images_a, images_b)[1]
        scores *= tf.maximum(contrast_structure, 0.0) ** weight
        images_a = tf.nn.avg_pool2d(images_a, 2, 2, "VALID")
        images_b = tf.nn.avg_pool2d(images_b, 2, 2, "VALID")
    ssim = ssim_and_contrast_structure(images_a, images_b)[0]
    return scores * tf.maximum(ssim, 0.0) ** weights[-1]


def ms_ssim(images: np.ndarray, batch_size: int = 500, progress: bool = False) -> float:
    """Mean MS-SSIM over the consecutive pairs (0, 1), (2, 3), ... of uint8 NHWC images.

    ``images``: uint8 [2 * pairs, H, W, C] with H, W >= 16 (5 scales); the paper uses
    10,000 pairs. ``batch_size`` pairs are scored at once.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"ms_ssim: images must be uint8 [N, H, W, C], got {images.dtype} "
                         f"{list(images.shape)}")
    if len(images) < 2 or len(images) % 2:
        raise ValueError(f"ms_ssim: needs an even number (>= 2) of images to pair, "
                         f"got {len(images)}")
    smallest = 2 ** (len(MS_SSIM_WEIGHTS) - 1)
    if min(images.shape[1:3]) < smallest:
        raise ValueError(f"ms_ssim: images must be at least {smallest}x{smallest} for "
                         f"{len(MS_SSIM_WEIGHTS)} scales, got {images.shape[1]}x{images.shape[2]}")
    total = 0.0
    for start in tqdm.trange(0, len(images), 2 * batch_size, desc="MS-SSIM", unit="batch",
                             disable=not progress):
        batch = tf.constant(images[start:start + 2 * batch_size])
        total += float(tf.reduce_sum(ms_ssim_pairs(batch[0::2], batch[1::2])))
    return total / (len(images) // 2)
