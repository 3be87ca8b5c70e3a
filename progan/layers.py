"""Keras 3 layers of Progressive GAN (TensorFlow backend).


Equalised learning rate: weights are drawn from N(0, 1) and multiplied at run time by
``gain / sqrt(fan_in)`` (times an optional learning-rate multiplier), so every weight learns
at the same speed under Adam. Layers compute in their dtype policy's compute dtype and keep
float32 variables, so ``mixed_bfloat16``/``mixed_float16`` work unchanged.
"""

from __future__ import annotations

import math

from progan.backend import keras, tf


SQRT2 = math.sqrt(2.0)


def _he_scale(fan_in: int, gain: float, lr_multiplier: float,
              equalized: bool = True) -> tuple[float, float]:
    """(initial std, run-time coefficient) of a weight: equalised (N(0, 1) scaled at run time)
    or, with ``equalized=False``, plain He initialisation (the stored weight is the weight)."""
    if not equalized:
        return gain / math.sqrt(fan_in) / lr_multiplier, lr_multiplier
    return 1.0 / lr_multiplier, gain / math.sqrt(fan_in) * lr_multiplier


@keras.saving.register_keras_serializable(package="progan")
class EqualizedDense(keras.layers.Layer):
    """Fully connected layer with an equalised learning rate.

    Computes ``x @ (w * gain / sqrt(fan_in) * lr_multiplier) + b * lr_multiplier`` with
    ``w ~ N(0, 1/lr_multiplier^2)`` and ``b = 0`` initially.

    Args:
        units: output features.
        gain: He gain (sqrt(2) for leaky ReLU, 1 for a linear output).
        use_bias: add a separate zero-initialised bias.
        lr_multiplier: scales the effective learning rate of this layer.
        equalized: False stores the weights as applied (He initialisation), for spectral
            normalisation, which bounds the stored kernel.
    Shapes: ``[N, ..., fan_in] -> [N, ..., units]``.
    """

    def __init__(self, units, gain=SQRT2, use_bias=True, lr_multiplier=1.0, equalized=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.units = int(units)
        self.gain = float(gain)
        self.use_bias = bool(use_bias)
        self.lr_multiplier = float(lr_multiplier)
        self.equalized = bool(equalized)

    def build(self, input_shape):
        fan_in = int(input_shape[-1])
        init_std, self.weight_scale = _he_scale(fan_in, self.gain, self.lr_multiplier,
                                                self.equalized)
        self.kernel = self.add_weight(
            name="kernel", shape=(fan_in, self.units),
            initializer=keras.initializers.RandomNormal(stddev=init_std))
        self.bias = self.add_weight(name="bias", shape=(self.units,), initializer="zeros") \
            if self.use_bias else None

    def call(self, inputs):
        kernel = tf.cast(self.kernel * self.weight_scale, self.compute_dtype)
        outputs = tf.matmul(inputs, kernel) if inputs.shape.rank == 2 else \
            tf.tensordot(inputs, kernel, axes=1)
        if self.use_bias:
            outputs += tf.cast(self.bias * self.lr_multiplier, self.compute_dtype)
        return outputs

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "gain": self.gain,
                "use_bias": self.use_bias, "lr_multiplier": self.lr_multiplier,
                "equalized": self.equalized}


def _fused_kernel(kernel):
    """3x3 kernel -> 4x4 kernel that sums the 4 shifts (the reference's fused resampling)."""
    kernel = tf.pad(kernel, [[1, 1], [1, 1], [0, 0], [0, 0]])
    return tf.add_n([kernel[1:, 1:], kernel[:-1, 1:], kernel[1:, :-1], kernel[:-1, :-1]])


@keras.saving.register_keras_serializable(package="progan")
class EqualizedConv2D(keras.layers.Layer):
    """2-D convolution (NHWC, 'same' padding) with an equalised learning rate.

    Optionally resamples by 2 around the convolution:
      ``resample='up'``:   nearest-neighbour upscale x2, then the convolution;
      ``resample='down'``: the convolution, then 2x2 average pooling.
    With ``fused=True`` the pair is computed as one stride-2 (transposed) convolution with
    the 3x3 kernel padded to 4x4 and summed over its 4 shifts, as the reference code does;
    the result equals the unfused form up to float rounding and costs ~4x less arithmetic
    for ``'up'``.

    Args:
        filters: output channels.
        kernel_size: square kernel size.
        gain, use_bias, lr_multiplier: as in `EqualizedDense`.
        resample: None, 'up' or 'down'.
        fused: use the fused strided form (needs kernel_size 3 and a resample).
        equalized: as in `EqualizedDense`.
    Shapes: ``[N, H, W, C] -> [N, H', W', filters]`` with H' = 2H, H or H/2.
    """

    def __init__(self, filters, kernel_size=3, gain=SQRT2, use_bias=True, lr_multiplier=1.0,
                 resample=None, fused=False, equalized=True, **kwargs):
        super().__init__(**kwargs)
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample: expected None, 'up' or 'down', got {resample!r}")
        if fused and (resample is None or kernel_size != 3):
            raise ValueError("fused: needs resample='up'/'down' and kernel_size=3")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.gain = float(gain)
        self.use_bias = bool(use_bias)
        self.lr_multiplier = float(lr_multiplier)
        self.resample = resample
        self.fused = bool(fused)
        self.equalized = bool(equalized)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        init_std, self.weight_scale = _he_scale(
            self.kernel_size * self.kernel_size * channels, self.gain, self.lr_multiplier,
            self.equalized)
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, self.kernel_size, channels, self.filters),
            initializer=keras.initializers.RandomNormal(stddev=init_std))
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") \
            if self.use_bias else None

    def call(self, inputs):
        kernel = tf.cast(self.kernel * self.weight_scale, self.compute_dtype)
        if self.fused and self.resample == "up":
            # conv2d_transpose correlates with the spatially flipped kernel; flip it back so
            # the fused form equals upscale-then-convolve with the same weights.
            kernel = tf.transpose(_fused_kernel(kernel[::-1, ::-1]), [0, 1, 3, 2])
            shape = tf.shape(inputs)
            output_shape = tf.stack([shape[0], shape[1] * 2, shape[2] * 2, self.filters])
            outputs = tf.nn.conv2d_transpose(inputs, kernel, output_shape, strides=2, padding="SAME")
        elif self.fused:
            outputs = tf.nn.conv2d(inputs, _fused_kernel(kernel) * 0.25, strides=2, padding="SAME")
        else:
            if self.resample == "up":
                inputs = upscale2d(inputs)
            outputs = tf.nn.conv2d(inputs, kernel, strides=1, padding="SAME")
            if self.resample == "down":
                outputs = downscale2d(outputs)
        if self.use_bias:
            outputs += tf.cast(self.bias * self.lr_multiplier, self.compute_dtype)
        return outputs

    def compute_output_shape(self, input_shape):
        factor = {"up": 2.0, "down": 0.5, None: 1.0}[self.resample]
        height, width = (None if size is None else int(size * factor) for size in input_shape[1:3])
        return (input_shape[0], height, width, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "gain": self.gain, "use_bias": self.use_bias, "lr_multiplier": self.lr_multiplier,
                "resample": self.resample, "fused": self.fused, "equalized": self.equalized}


@keras.saving.register_keras_serializable(package="progan")
class Bias(keras.layers.Layer):
    """Adds a zero-initialised per-channel bias (last axis). Shapes: unchanged."""

    def __init__(self, lr_multiplier=1.0, **kwargs):
        super().__init__(**kwargs)
        self.lr_multiplier = float(lr_multiplier)

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=(int(input_shape[-1]),), initializer="zeros")

    def call(self, inputs):
        return inputs + tf.cast(self.bias * self.lr_multiplier, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "lr_multiplier": self.lr_multiplier}


@keras.saving.register_keras_serializable(package="progan")
class PixelNorm(keras.layers.Layer):
    """Pixelwise feature normalisation: ``x / sqrt(mean_c(x^2) + epsilon)``.

    The mean of squares is taken in float32 whatever the compute dtype.
    Shapes: unchanged; the mean runs over the last (channel) axis.
    """

    def __init__(self, epsilon=1e-8, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)

    def call(self, inputs):
        mean_square = tf.reduce_mean(tf.square(tf.cast(inputs, tf.float32)), axis=-1, keepdims=True)
        return inputs * tf.cast(tf.math.rsqrt(mean_square + self.epsilon), inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package="progan")
class MinibatchStddev(keras.layers.Layer):
    """Appends one feature map: the average standard deviation over minibatch groups.

    The batch is split into groups of ``min(group_size, N)`` consecutive-stride samples as in
    the reference code (sample i belongs to group i mod (N / G)); within each group the biased
    variance of every feature is taken, ``sqrt(var + 1e-8)`` averaged over H, W, C gives one
    number per group, tiled over that group's samples as an extra channel. Computed in float32
    even under mixed precision.

    Shapes: ``[N, H, W, C] -> [N, H, W, C + 1]``. N must be divisible by the group size.
    """

    def __init__(self, group_size=4, **kwargs):
        super().__init__(**kwargs)
        self.group_size = int(group_size)

    def call(self, inputs):
        static_batch = inputs.shape[0]
        if static_batch is not None:
            group = min(self.group_size, static_batch)
            if static_batch % group:
                raise ValueError(f"MinibatchStddev: batch size {static_batch} is not divisible "
                                 f"by the group size {group}; use a multiple of {group}")
        else:
            batch = tf.shape(inputs)[0]
            group = tf.minimum(self.group_size, batch)
            tf.debugging.assert_equal(
                batch % group, 0,
                message=f"MinibatchStddev: the batch size must be divisible by the group size "
                        f"min({self.group_size}, batch)")
        height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
        x = tf.cast(inputs, tf.float32)
        grouped = tf.reshape(x, [group, -1, height, width, channels])
        variance = tf.reduce_mean(tf.square(grouped - tf.reduce_mean(grouped, axis=0)), axis=0)
        stddev = tf.reduce_mean(tf.sqrt(variance + 1e-8), axis=[1, 2, 3])
        feature = tf.tile(tf.reshape(stddev, [-1, 1, 1, 1]), [group, height, width, 1])
        return tf.concat([inputs, tf.cast(feature, inputs.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], input_shape[-1] + 1)

    def get_config(self):
        return {**super().get_config(), "group_size": self.group_size}


def upscale2d(images, factor=2):
    """Nearest-neighbour upscaling of NHWC tensors by an integer factor."""
    if factor == 1:
        return images
    return tf.repeat(tf.repeat(images, factor, axis=1), factor, axis=2)


def downscale2d(images, factor=2):
    """Box (average) downscaling of NHWC tensors by an integer factor."""
    if factor == 1:
        return images
    return tf.nn.avg_pool2d(images, factor, factor, "VALID")


class _Resample2D(keras.layers.Layer):
    """Base of `Upscale2D` / `Downscale2D`: an integer ``factor`` and a shape rule."""

    def __init__(self, factor=2, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def _size(self, size):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, None if h is None else self._size(h), None if w is None else self._size(w), c)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="progan")
class Upscale2D(_Resample2D):
    """Nearest-neighbour upscaling. Shapes: ``[N, H, W, C] -> [N, fH, fW, C]``."""

    def call(self, inputs):
        return upscale2d(inputs, self.factor)

    def _size(self, size):
        return size * self.factor


@keras.saving.register_keras_serializable(package="progan")
class Downscale2D(_Resample2D):
    """2x2 (factor x factor) average pooling. Shapes: ``[N, H, W, C] -> [N, H/f, W/f, C]``."""

    def call(self, inputs):
        return downscale2d(inputs, self.factor)

    def _size(self, size):
        return size // self.factor


@keras.saving.register_keras_serializable(package="progan")
class FadeIn(keras.layers.Layer):
    """Blends the old path into the new one: ``old * (1 - alpha) + new * alpha``.

    Written so that alpha = 0 gives ``old`` and alpha = 1 gives ``new`` exactly (the usual
    ``old + (new - old) * alpha`` is off by rounding at alpha = 1).

    ``alpha`` is a non-trainable float32 variable of the layer (not a Python number), so a
    compiled train step follows the fade without retracing; set it with ``layer.alpha.assign``.
    Inputs: ``[old, new]`` of equal shapes. Output: same shape.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.alpha = self.add_weight(name="alpha", shape=(), initializer="zeros", trainable=False)

    def call(self, inputs):
        old, new = inputs
        alpha = tf.cast(self.alpha, new.dtype)
        return old * (1.0 - alpha) + new * alpha

    def compute_output_shape(self, input_shape):
        return input_shape[0]
