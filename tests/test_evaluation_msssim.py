"""MS-SSIM against a float64 NumPy/SciPy re-statement of the reference implementation."""

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal

from progan.evaluation.msssim import MS_SSIM_WEIGHTS, ms_ssim


def reference_window(size, sigma):
    """MATLAB fspecial('gaussian') on a 2-D grid (half-integer positions for even sizes)."""
    offset = 0.5 if size % 2 == 0 else 0.0
    radius = size // 2
    positions = slice(offset - radius, radius - 2 * offset + 1)
    y, x = np.mgrid[positions, positions]
    assert len(x) == size
    window = np.exp(-(x ** 2 + y ** 2) / (2.0 * sigma ** 2))
    return window / window.sum()


def reference_ssim(a, b):
    """Mean SSIM and contrast-structure per image of two float64 NHWC batches."""
    size = min(11, a.shape[1], a.shape[2])
    window = reference_window(size, size * 1.5 / 11)[None, :, :, None]

    def blur(x):
        return scipy.signal.fftconvolve(x, window, mode="valid")

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    v1, v2 = 2 * cov + c2, var_a + var_b + c2
    luminance = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    ssim = np.mean(luminance * v1 / v2, axis=(1, 2, 3))
    return ssim, np.mean(v1 / v2, axis=(1, 2, 3))


def reference_ms_ssim(images):
    """Mean over consecutive pairs, as NVIDIA's metrics/ms_ssim.py computes it, in float64."""
    a, b = images[0::2].astype(np.float64), images[1::2].astype(np.float64)
    weights = np.array(MS_SSIM_WEIGHTS)
    ssims, css = [], []
    for _ in weights:
        ssim, cs = reference_ssim(a, b)
        ssims.append(ssim)
        css.append(cs)
        a, b = [(x[:, 0::2, 0::2] + x[:, 1::2, 0::2] + x[:, 0::2, 1::2] + x[:, 1::2, 1::2]) / 4
                for x in (a, b)]
    ssims, css = np.clip(ssims, 0, None), np.clip(css, 0, None)
    per_pair = np.prod(css[:-1] ** weights[:-1, None], axis=0) * ssims[-1] ** weights[-1]
    return float(np.mean(per_pair))


def smooth_images(rng, count, resolution):
    """Correlated images (blurred noise around a shared base) so SSIM is far from 0 and 1."""
    base = scipy.ndimage.gaussian_filter(rng.normal(128, 60, (resolution, resolution, 3)),
                                         (2, 2, 0))
    noise = scipy.ndimage.gaussian_filter(rng.normal(0, 60, (count, resolution, resolution, 3)),
                                          (0, 1.5, 1.5, 0))
    return np.clip(base + noise, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("resolution", [16, 64])
def test_ms_ssim_matches_float64_reference(resolution):
    images = smooth_images(np.random.default_rng(resolution), 12, resolution)
    expected = reference_ms_ssim(images)
    assert 0.05 < expected < 0.95
    assert ms_ssim(images, batch_size=4) == pytest.approx(expected, abs=1e-6)


def test_ms_ssim_of_identical_pairs_is_one_and_of_noise_is_low():
    rng = np.random.default_rng(3)
    image = smooth_images(rng, 1, 32)
    assert ms_ssim(np.repeat(image, 4, axis=0)) == pytest.approx(1.0, abs=1e-9)
    noise = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    assert ms_ssim(noise) < 0.1


def test_ms_ssim_rejects_bad_input():
    with pytest.raises(ValueError, match="even number"):
        ms_ssim(np.zeros((3, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 16x16"):
        ms_ssim(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ms_ssim(np.zeros((2, 32, 32, 3), np.float32))
