"""The resolution pyramid of one image, as the reference tool computes it."""

import numpy as np


def build_pyramid(image_hwc, num_levels):
    """Levels of an image from full size down by factors of 2, each as uint8 CHW.

    Level 0 is the image itself. Level k+1 is the 2x2 box average of level k's
    *unrounded* float32 values, ``(top-left + top-right + bottom-left +
    bottom-right) * 0.25``; every stored level is rounded once (half to even),
    clipped to [0, 255] and cast to uint8. With uint8 input these float32 sums
    are exact (a level k value is a multiple of 4^-k below 256), so each level is
    the exact mean of its 2^k x 2^k block, rounded half to even.

    Args:
      image_hwc: uint8 array [H, W, C], H and W divisible by 2^(num_levels - 1).
      num_levels: how many levels to return (>= 1).

    Returns:
      list of ``num_levels`` C-contiguous uint8 arrays, shapes [C, H/2^k, W/2^k].
    """
    image_hwc = np.asarray(image_hwc, dtype=np.uint8)
    image_chw = np.empty((image_hwc.shape[2],) + image_hwc.shape[:2], np.uint8)
    for channel in range(image_hwc.shape[2]):  # 4x faster than a transposed copy
        image_chw[channel] = image_hwc[:, :, channel]
    levels = [image_chw]
    values = image_chw.astype(np.float32)
    quarter = np.float32(0.25)
    for _ in range(num_levels - 1):
        values = (values[:, 0::2, 0::2] + values[:, 0::2, 1::2]
                  + values[:, 1::2, 0::2] + values[:, 1::2, 1::2]) * quarter
        levels.append(np.rint(values).astype(np.uint8))  # means of uint8: within [0, 255]
    return levels
