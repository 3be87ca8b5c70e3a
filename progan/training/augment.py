"""Differentiable augmentation of everything the discriminator sees (DiffAugment, Zhao et
al. 2020), with a strength p that may adapt to the discriminator's over-fitting (StyleGAN2-ADA).

    params = draw(seed, images_seen, stream, global_batch)    # [global batch, PARAMS] uniforms
    images = augment(images, params, ("translation", "color"), p)

Ops, each applied per sample with probability p (NHWC float images in [-1, 1]):
  translation  an integer shift of up to 1/8 of the image size per axis, zero padding
  cutout       a zeroed square of half the image size centred at a random pixel
  color        brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5)
All are pure TensorFlow and differentiable in the images (translation and cutout are linear,
color is piecewise smooth), so the generator's gradients flow through them. A sample whose
gate is off keeps its values bitwise (``tf.where``); p = 0 is the exact identity.

The random numbers are stateless, a pure function of (seed, images seen, stream): stream
k uses the key (seed + 1_000_003 k, images seen), which no stream of `progan.training.step`
uses, so turning augmentation on changes no other random number. The step draws them for
the global batch and takes each replica's slice, as it does for the latents.
"""

from __future__ import annotations

from progan.backend import tf
from progan.config import AUGMENT_OPS as OPS
# Columns of the uniform numbers each op reads: (gate, parameters...).
COLUMNS = {"translation": (0, 3), "cutout": (3, 6), "color": (6, 10)}
PARAMS = 10
# The step's augmentation streams: the reals, the fakes of the D step, the fakes of the G step.
REALS, D_FAKES, G_FAKES = 1, 2, 3


def draw(seed: int, images_seen, stream: int, batch: int):
    """``[batch, PARAMS]`` uniform numbers in [0, 1) keyed by (seed, images seen, stream)."""
    key = tf.stack([tf.constant(seed + 1_000_003 * stream, tf.int64),
                    tf.cast(images_seen, tf.int64)])
    return tf.random.stateless_uniform([batch, PARAMS], key)


def augment(images, params, ops, p):
    """``images`` with each op of ``ops`` applied to the samples whose gate (< p) is on."""
    for name in ops:
        first, stop = COLUMNS[name]
        columns = tf.cast(params[:, first:stop], images.dtype)
        gate = tf.reshape(params[:, first] < tf.cast(p, params.dtype), [-1, 1, 1, 1])
        images = tf.where(gate, APPLY[name](images, columns[:, 1:]), images)
    return images


def _shift(images, shift, axis: int, pad: int):
    """Move each sample ``shift[i]`` pixels along ``axis`` (1 rows, 2 columns), zero fill."""
    size = tf.shape(images)[axis]
    padding = [[0, 0], [0, 0], [0, 0], [0, 0]]
    padding[axis] = [pad, pad]
    padded = tf.pad(images, padding)
    index = tf.range(size)[None, :] + pad - shift[:, None]
    return tf.gather(padded, index, axis=axis, batch_dims=1)


def translation(images, uniforms, ratio: float = 0.125):
    """Shift by an integer in [-s, s] per axis, s = round(size / 8) (DiffAugment)."""
    height, width = images.shape[1], images.shape[2]
    pads = [int(height * ratio + 0.5), int(width * ratio + 0.5)]
    for axis, (pad, column) in enumerate(zip(pads, (0, 1)), start=1):
        if pad == 0:
            continue
        shift = tf.cast(tf.floor(uniforms[:, column] * (2 * pad + 1)), tf.int32) - pad
        images = _shift(images, tf.clip_by_value(shift, -pad, pad), axis, pad)
    return images


def cutout(images, uniforms, ratio: float = 0.5):
    """Zero a square of ``ratio`` x the size centred at a uniform pixel (may reach the edge)."""
    height, width = images.shape[1], images.shape[2]
    size_y, size_x = int(height * ratio + 0.5), int(width * ratio + 0.5)
    centre_y = tf.minimum(tf.cast(tf.floor(uniforms[:, 0] * height), tf.int32), height - 1)
    centre_x = tf.minimum(tf.cast(tf.floor(uniforms[:, 1] * width), tf.int32), width - 1)
    rows = tf.range(height)[None, :] - (centre_y[:, None] - size_y // 2)
    cols = tf.range(width)[None, :] - (centre_x[:, None] - size_x // 2)
    inside_y = tf.logical_and(rows >= 0, rows < size_y)[:, :, None]
    inside_x = tf.logical_and(cols >= 0, cols < size_x)[:, None, :]
    keep = tf.cast(tf.logical_not(tf.logical_and(inside_y, inside_x)), images.dtype)
    return images * keep[:, :, :, None]


def color(images, uniforms):
    """Brightness, saturation and contrast as DiffAugment's ``rand_*`` functions."""
    factors = tf.reshape(uniforms, [-1, 1, 1, 1, 3])
    images = images + (factors[..., 0] - 0.5)
    mean = tf.reduce_mean(images, axis=3, keepdims=True)
    images = (images - mean) * (factors[..., 1] * 2.0) + mean
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return (images - mean) * (factors[..., 2] + 0.5) + mean


APPLY = {"translation": translation, "cutout": cutout, "color": color}


def adapt(p, sign_sum, count, target: float, step: float):
    """StyleGAN2-ADA's update: p + sign(r_t - target) * step, clipped to [0, 1], where
    r_t = sign_sum / count = E[sign(D(real))]. Returns (new p, r_t)."""
    r_t = sign_sum / tf.maximum(count, 1.0)
    return tf.clip_by_value(p + tf.sign(r_t - target) * step, 0.0, 1.0), r_t
