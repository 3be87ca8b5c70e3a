"""progan.dataset.pyramid against float64 NumPy references."""

import numpy as np
import pytest

from progan.dataset.pyramid import build_pyramid


def block_mean_reference(image_hwc, factor):
    """Exact float64 mean of each factor x factor block, rounded half to even, as uint8 CHW."""
    height, width, channels = image_hwc.shape
    blocks = image_hwc.astype(np.float64).reshape(
        height // factor, factor, width // factor, factor, channels)
    return np.rint(blocks.mean(axis=(1, 3))).clip(0, 255).astype(np.uint8).transpose(2, 0, 1)


@pytest.mark.parametrize("size,channels", [(128, 3), (32, 3), (16, 1)])
def test_levels_are_rounded_exact_block_means(size, channels):
    rng = np.random.default_rng(size)
    image = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    num_levels = int(np.log2(size)) - 1
    levels = build_pyramid(image, num_levels)
    assert len(levels) == num_levels
    for k, level in enumerate(levels):
        assert level.dtype == np.uint8 and level.flags.c_contiguous
        assert level.shape == (channels, size >> k, size >> k)
        np.testing.assert_array_equal(level, block_mean_reference(image, 1 << k))


def test_each_level_comes_from_unrounded_values_of_the_previous():
    # 2x2 means (0.5, 0.5, 0.5, 2.5) round to (0, 0, 0, 2), whose mean 0.5 would round to 0;
    # the unrounded chain averages to 1.0 -> 1.
    image = np.array([[0, 1, 0, 1],
                      [0, 1, 0, 1],
                      [0, 1, 2, 3],
                      [0, 1, 2, 3]], np.uint8)[..., None]
    level_2x2, level_1x1 = build_pyramid(image, 3)[1:]
    np.testing.assert_array_equal(level_2x2[0], [[0, 0], [0, 2]])  # 0.5 -> 0, 2.5 -> 2 (half to even)
    assert level_1x1[0, 0, 0] == 1


def test_half_values_round_to_even():
    means = np.array([0.5, 1.5, 2.5, 3.5, 254.5])
    image = np.zeros((2, 2 * len(means), 1), np.uint8)
    for index, mean in enumerate(means):  # two pixels floor(mean), two ceil(mean)
        image[0, 2 * index:2 * index + 2] = int(np.floor(mean))
        image[1, 2 * index:2 * index + 2] = int(np.ceil(mean))
    level = build_pyramid(image, 2)[1]
    np.testing.assert_array_equal(level[0, 0], [0, 2, 2, 4, 254])


def test_writer_records_are_tensorflow_examples_byte_for_byte():
    from progan.dataset.format import serialize_example
    from progan.dataset.pool import fast_example

    rng = np.random.default_rng(5)
    for shape in [(3, 4, 4), (3, 128, 128), (1, 8, 8), (3, 2, 2)]:
        for _ in range(3):
            image = rng.integers(0, 256, shape, dtype=np.uint8)
            assert fast_example(image) == serialize_example(image), shape
