"""SWD against an independent float64 NumPy/SciPy statement of the paper's protocol, on the
same images, patch centres and directions."""

import numpy as np
import pytest
import scipy.ndimage

import tensorflow as tf

from progan.evaluation.sliced_wasserstein import (pyramid_resolutions, sample_swd_protocol,
                                   sum_of_sorted_differences, swd, swd_from_sampling)

BINOMIAL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def reference_pyr_down(images):  # images [N, C, H, W] float64, as cv2.pyrDown
    return scipy.ndimage.convolve(images, BINOMIAL[None, None], mode="mirror")[:, :, ::2, ::2]


def reference_pyr_up(images):  # as cv2.pyrUp
    n, c, h, w = images.shape
    upsampled = np.zeros((n, c, 2 * h, 2 * w))
    upsampled[:, :, ::2, ::2] = images
    return scipy.ndimage.convolve(upsampled, 4 * BINOMIAL[None, None], mode="mirror")


def reference_pyramid(images, num_levels):
    levels = [images.transpose(0, 3, 1, 2).astype(np.float64)]
    for _ in range(1, num_levels):
        levels.append(reference_pyr_down(levels[-1]))
        levels[-2] = levels[-2] - reference_pyr_up(levels[-1])
    return levels


def reference_descriptors(level, centres, size):
    """[N * P, size * size * 3] in (row, column, channel) order, normalised per channel."""
    half = size // 2
    rows = centres[:, :, 0]
    columns = centres[:, :, 1]
    patches = np.stack([level[n][:, rows[n, p] - half:rows[n, p] + half + 1,
                                 columns[n, p] - half:columns[n, p] + half + 1]
                        for n in range(len(level)) for p in range(centres.shape[1])])
    patches = patches - patches.mean(axis=(0, 2, 3), keepdims=True)
    patches = patches / patches.std(axis=(0, 2, 3), keepdims=True)
    return patches.transpose(0, 2, 3, 1).reshape(len(patches), -1)


def reference_swd(images_a, images_b, samplings):
    pyramids = [reference_pyramid(images, len(samplings)) for images in (images_a, images_b)]
    result = {}
    for level, sampling in enumerate(samplings):
        a = reference_descriptors(pyramids[0][level], sampling.centres_a, sampling.patch_size)
        b = reference_descriptors(pyramids[1][level], sampling.centres_b, sampling.patch_size)
        directions = sampling.directions.astype(np.float64)
        distances = np.abs(np.sort(a @ directions, axis=0) - np.sort(b @ directions, axis=0))
        result[sampling.resolution] = 1e3 * distances.mean()
    result["avg"] = np.mean(list(result.values()))
    return result


def textured_images(rng, count, resolution, blur):
    """Smooth random images; ``blur`` sets the scale of their texture."""
    noise = rng.normal(0, 40, (count, resolution, resolution, 3))
    smooth = scipy.ndimage.gaussian_filter(noise, (0, blur, blur, 0))
    return np.clip(128 + smooth * 40 / smooth.std(), 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("resolution, expected_levels", [(64, [64, 32, 16]), (16, [16]),
                                                         (8, [8]), (4, [4])])
def test_swd_matches_numpy_reference(resolution, expected_levels):
    rng = np.random.default_rng(resolution)
    reals = textured_images(rng, 24, resolution, 0.7)
    fakes = textured_images(rng, 24, resolution, 2.0)
    samplings = sample_swd_protocol(np.random.default_rng(7), resolution, 24, 24,
                                    patches_per_image=16, num_directions=192)
    result = swd_from_sampling(reals, fakes, samplings, batch_size=10)
    expected = reference_swd(reals, fakes, samplings)
    assert list(result) == expected_levels + ["avg"]
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=2e-4)
        assert value > 1.0  # different contrasts: far from the noise floor
    if resolution == 4:
        assert samplings[0].patch_size == 3
        assert samplings[0].directions.shape == (27, 192)


def test_swd_is_seeded_and_smaller_for_like_sets():
    rng = np.random.default_rng(1)
    reals_a, reals_b = textured_images(rng, 32, 32, 0.7), textured_images(rng, 32, 32, 0.7)
    fakes = textured_images(rng, 32, 32, 3.0)
    options = dict(patches_per_image=64, num_directions=32)
    floor = swd(reals_a, reals_b, seed=3, **options)
    assert floor == swd(reals_a, reals_b, seed=3, **options)
    assert floor != swd(reals_a, reals_b, seed=4, **options)
    distance = swd(reals_a, fakes, seed=3, **options)
    assert distance["avg"] > 2 * floor["avg"]  # the real-vs-real pass is the noise floor


def test_pyramid_resolutions():
    assert pyramid_resolutions(128) == [128, 64, 32, 16]
    assert pyramid_resolutions(8) == [8]


def test_swd_rejects_bad_input():
    good = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match=r"fakes must be uint8 \[N, H, W, 3\]"):
        swd(good, good.astype(np.float32))
    with pytest.raises(ValueError, match="power-of-two"):
        swd(np.zeros((4, 12, 12, 3), np.uint8), np.zeros((4, 12, 12, 3), np.uint8))
    with pytest.raises(ValueError, match="same number of images"):
        swd(good, good[:2])
    with pytest.raises(ValueError, match="differ in size"):
        swd(good, np.zeros((4, 32, 32, 3), np.uint8))


@pytest.mark.parametrize("case", ["like", "shifted", "ties", "constant", "disjoint"])
def test_sum_of_sorted_differences_equals_sorting(case):
    rng = np.random.default_rng(11)
    a, b = {
        "like": (rng.normal(size=(3, 2000)), rng.normal(size=(3, 2000))),
        "shifted": (rng.normal(size=(3, 2000)), rng.normal(0.3, 1.5, size=(3, 2000))),
        "ties": (rng.integers(0, 4, (3, 500)), rng.integers(0, 4, (3, 500))),
        "constant": (np.ones((2, 64)), np.ones((2, 64))),
        "disjoint": (rng.normal(size=(2, 300)), rng.normal(50, 1, size=(2, 300))),
    }[case]
    a, b = a.astype(np.float32), b.astype(np.float32)
    expected = np.abs(np.sort(a, axis=1).astype(np.float64) - np.sort(b, axis=1)).sum()
    got = float(sum_of_sorted_differences(tf.constant(a), tf.constant(b)))
    # positions inside buckets are float32, like the values: about one rounding per value
    assert got == pytest.approx(expected, rel=1e-6, abs=1e-9)
