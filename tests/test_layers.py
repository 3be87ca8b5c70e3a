import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from progan.layers import (Bias, Downscale2D, EqualizedConv2D, EqualizedDense, FadeIn,
                           MinibatchStddev, PixelNorm, Upscale2D)


def conv2d_same_reference(x, kernel):
    """float64 NHWC 'same' convolution (cross-correlation), zero padding."""
    k = kernel.shape[0]
    pad = (k - 1) // 2
    padded = np.pad(x, [(0, 0), (pad, k - 1 - pad), (pad, k - 1 - pad), (0, 0)])
    n, h, w, _ = x.shape
    out = np.zeros((n, h, w, kernel.shape[3]))
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("nhwc,cf->nhwf", padded[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
    return out


def upscale_reference(x):
    return x.repeat(2, axis=1).repeat(2, axis=2)


def downscale_reference(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def test_equalized_dense_matches_numpy():
    rng = np.random.default_rng(0)
    layer = EqualizedDense(5, gain=1.7, lr_multiplier=0.5)
    x = rng.normal(size=(3, 7)).astype(np.float32)
    layer(x)
    kernel, bias = rng.normal(size=(7, 5)), rng.normal(size=5)
    layer.set_weights([kernel, bias])
    expected = x.astype(np.float64) @ (kernel * 1.7 / math.sqrt(7) * 0.5) + bias * 0.5
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-5)


def test_equalized_weights_are_standard_normal_and_biases_zero():
    keras.utils.set_random_seed(1)
    layer = EqualizedConv2D(64, 3)
    layer.build((None, 8, 8, 64))
    kernel = layer.kernel.numpy()
    assert abs(kernel.std() - 1.0) < 0.02 and abs(kernel.mean()) < 0.02
    assert not layer.bias.numpy().any()
    slow = EqualizedDense(256, lr_multiplier=0.01)
    slow.build((None, 256))
    assert abs(slow.kernel.numpy().std() - 100.0) < 2.0


@pytest.mark.parametrize("resample", [None, "up", "down"])
def test_equalized_conv_matches_numpy(resample):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 8, 8, 4))
    layer = EqualizedConv2D(6, 3, resample=resample)
    layer(x.astype(np.float32))
    kernel, bias = rng.normal(size=(3, 3, 4, 6)), rng.normal(size=6)
    layer.set_weights([kernel, bias])
    scaled = kernel * math.sqrt(2) / math.sqrt(3 * 3 * 4)
    inputs = upscale_reference(x) if resample == "up" else x
    expected = conv2d_same_reference(inputs, scaled)
    if resample == "down":
        expected = downscale_reference(expected)
    expected += bias
    np.testing.assert_allclose(layer(x.astype(np.float32)).numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("resample", ["up", "down"])
def test_fused_resampling_equals_unfused(resample):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 8, 8, 5)).astype(np.float32)
    plain = EqualizedConv2D(7, 3, resample=resample)
    fused = EqualizedConv2D(7, 3, resample=resample, fused=True)
    plain(x)
    fused(x)
    weights = [rng.normal(size=(3, 3, 5, 7)), rng.normal(size=7)]
    plain.set_weights(weights)
    fused.set_weights(weights)
    out_plain, out_fused = plain(x).numpy(), fused(x).numpy()
    assert out_fused.shape == out_plain.shape == ((2, 16, 16, 7) if resample == "up" else (2, 4, 4, 7))
    np.testing.assert_allclose(out_fused, out_plain, rtol=1e-5, atol=1e-5)


def test_pixel_norm_matches_numpy():
    x = np.random.default_rng(3).normal(size=(2, 3, 3, 8))
    expected = x / np.sqrt((x ** 2).mean(axis=-1, keepdims=True) + 1e-8)
    np.testing.assert_allclose(PixelNorm()(x.astype(np.float32)).numpy(), expected, rtol=1e-5)


def minibatch_stddev_reference(x, group_size):
    n = x.shape[0]
    group = min(group_size, n)
    groups = n // group
    extra = np.zeros(x.shape[:3] + (1,))
    for g in range(groups):
        members = x[g::groups]  # the reference reshape [G, M, ...]: sample i is in group i mod M
        std = np.sqrt(members.var(axis=0) + 1e-8).mean()
        extra[g::groups] = std
    return np.concatenate([x, extra], axis=-1)


@pytest.mark.parametrize("batch", [8, 2, 12])
def test_minibatch_stddev_matches_numpy(batch):
    x = np.random.default_rng(4).normal(size=(batch, 4, 4, 3))
    out = MinibatchStddev(4)(x.astype(np.float32)).numpy()
    np.testing.assert_allclose(out, minibatch_stddev_reference(x, 4), rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_rejects_indivisible_batch_and_runs_in_float32():
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the group size 4"):
        MinibatchStddev(4)(np.zeros((6, 4, 4, 2), np.float32))
    x = np.random.default_rng(5).normal(size=(4, 4, 4, 2))
    out = MinibatchStddev(4, dtype="mixed_bfloat16")(tf.constant(x, tf.float32))
    assert out.dtype == tf.bfloat16
    expected = minibatch_stddev_reference(x.astype(np.float32).astype(tf.bfloat16.as_numpy_dtype)
                                          .astype(np.float64), 4)
    np.testing.assert_allclose(out.numpy().astype(np.float64)[..., -1], expected[..., -1], rtol=1e-2)


def test_resampling_and_fade_in():
    x = np.random.default_rng(6).normal(size=(2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(Upscale2D()(x).numpy(), upscale_reference(x))
    np.testing.assert_allclose(Downscale2D()(x).numpy(), downscale_reference(x.astype(np.float64)),
                               rtol=1e-6)
    fade = FadeIn()
    old, new = x, -2 * x
    fade.alpha.assign(0.25)
    np.testing.assert_allclose(fade([old, new]).numpy(), old + (new - old) * 0.25, rtol=1e-6)
    for alpha, expected in ((0.0, old), (1.0, new)):
        fade.alpha.assign(alpha)
        np.testing.assert_array_equal(fade([old, new]).numpy(), expected)
    assert not fade.trainable_weights


@pytest.mark.parametrize("layer, shape", [
    (EqualizedDense(4, gain=0.5, use_bias=False, lr_multiplier=0.1), (2, 3)),
    (EqualizedConv2D(4, 3, gain=1.0, resample="down", fused=True), (2, 8, 8, 3)),
    (EqualizedConv2D(4, 1, lr_multiplier=2.0), (2, 4, 4, 3)),
    (Bias(), (2, 4, 4, 3)),
    (PixelNorm(epsilon=1e-4), (2, 4, 4, 3)),
    (MinibatchStddev(2), (4, 4, 4, 3)),
    (Upscale2D(4), (2, 2, 2, 3)),
    (Downscale2D(2), (2, 4, 4, 3)),
])
def test_layers_round_trip_through_config(layer, shape):
    x = np.random.default_rng(7).normal(size=shape).astype(np.float32)
    expected = layer(x).numpy()
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(clone) is type(layer) and clone.get_config() == layer.get_config()
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x).numpy(), expected, rtol=1e-6)
