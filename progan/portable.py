"""A generator rebuilt from Keras's own layers, so it loads where progan is not installed.

    model = portable_generator(load_generator("runs/demo").model)
    model.save("generator.keras")     # later, anywhere: keras.saving.load_model("generator.keras")

Each progan layer becomes the built-in layers that compute the same function, with the
equalised-learning-rate scale folded into the weights:

    EqualizedDense / EqualizedConv2D   Dense / Conv2D (after UpSampling2D), or Conv2DTranspose
                                       with the fused 4x4 kernel
    Bias                               DepthwiseConv2D 1x1 with unit weights and the bias
    PixelNorm                          UnitNormalization then Rescaling(sqrt(channels))
                                       (x / sqrt(mean x^2) without the 1e-8 inside the root)
    Upscale2D                          UpSampling2D (nearest)
    FadeIn (alpha a)                   Rescaling(1 - a) and Rescaling(a), then Add

Outputs agree with the progan model to float rounding (a test checks 1e-4).
"""

from __future__ import annotations

import math

from progan.backend import keras, tf
from progan.layers import Bias, EqualizedConv2D, EqualizedDense, FadeIn, PixelNorm, Upscale2D
from progan.layers import _fused_kernel


def _dense(layer: EqualizedDense, inputs):
    dense = keras.layers.Dense(layer.units, use_bias=layer.use_bias, name=layer.name)
    outputs = dense(inputs)
    weights = [layer.kernel.numpy() * layer.weight_scale]
    if layer.use_bias:
        weights.append(layer.bias.numpy() * layer.lr_multiplier)
    dense.set_weights(weights)
    return outputs


def _conv(layer: EqualizedConv2D, inputs):
    if layer.resample == "down":
        raise ValueError(f"{layer.name}: only generator layers are converted")
    kernel = layer.kernel.numpy() * layer.weight_scale
    if layer.resample == "up" and layer.fused:
        kernel = tf.transpose(_fused_kernel(tf.constant(kernel[::-1, ::-1])), [0, 1, 3, 2]).numpy()
        conv = keras.layers.Conv2DTranspose(layer.filters, 4, strides=2, padding="same",
                                            use_bias=layer.use_bias, name=layer.name)
    else:
        if layer.resample == "up":
            inputs = keras.layers.UpSampling2D(2, interpolation="nearest",
                                               name=f"{layer.name}_upsample")(inputs)
        conv = keras.layers.Conv2D(layer.filters, layer.kernel_size, padding="same",
                                   use_bias=layer.use_bias, name=layer.name)
    outputs = conv(inputs)
    conv.set_weights([kernel] + ([layer.bias.numpy() * layer.lr_multiplier] if layer.use_bias else []))
    return outputs


def _bias(layer: Bias, inputs):
    add = keras.layers.DepthwiseConv2D(1, use_bias=True, name=layer.name)
    outputs = add(inputs)
    channels = inputs.shape[-1]
    add.set_weights([tf.ones([1, 1, channels, 1]).numpy(), layer.bias.numpy() * layer.lr_multiplier])
    return outputs


def _pixel_norm(layer: PixelNorm, inputs):
    unit = keras.layers.UnitNormalization(axis=-1, name=f"{layer.name}_unit")(inputs)
    return keras.layers.Rescaling(math.sqrt(inputs.shape[-1]), name=layer.name)(unit)


def _fade(layer: FadeIn, inputs):
    old, new = inputs
    alpha = float(layer.alpha.numpy())
    return keras.layers.Add(name=layer.name)([
        keras.layers.Rescaling(1.0 - alpha, name=f"{layer.name}_old")(old),
        keras.layers.Rescaling(alpha, name=f"{layer.name}_new")(new)])


def _upscale(layer: Upscale2D, inputs):
    return keras.layers.UpSampling2D(layer.factor, interpolation="nearest", name=layer.name)(inputs)


CONVERSIONS = {EqualizedDense: _dense, EqualizedConv2D: _conv, Bias: _bias, PixelNorm: _pixel_norm,
               FadeIn: _fade, Upscale2D: _upscale}


def portable_generator(model: keras.Model) -> keras.Model:
    """A copy of a progan generator (any stage, its alpha frozen) made of built-in layers."""

    def call(layer, *args, **kwargs):
        convert = CONVERSIONS.get(type(layer))
        if convert is not None:
            return convert(layer, args[0])
        if type(layer).__module__.startswith("progan"):
            raise ValueError(f"{layer.name}: no built-in equivalent for {type(layer).__name__}")
        return type(layer).from_config(layer.get_config())(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
