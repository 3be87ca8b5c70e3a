"""Generator and discriminator of Progressive GAN (reference `G_paper` / `D_paper`).

`ProGAN(model_config)` creates every layer once, for the maximum resolution, and hands out
a Keras model per stage that shares them:

    progan = ProGAN(ModelConfig(max_resolution=64))
    generator = progan.generator(32, fading=True)        # latents [N, 512] -> images [N, 32, 32, 3]
    discriminator = progan.discriminator(32, fading=True) # images -> scores [N, 1]
    progan.set_alpha(0.25)                                # both networks' fade-in

Levels are log2(resolution): level 2 is the 4x4 block. Generator images are linear (about
[-1, 1]) float32 NHWC; the discriminator returns one float32 score per image (and, for a
conditional model, one logit per label).
"""

from __future__ import annotations

import math

from progan.backend import keras
from progan.config import ModelConfig
from progan.layers import (Bias, Downscale2D, EqualizedConv2D, EqualizedDense, FadeIn,
                           MinibatchStddev, PixelNorm, Upscale2D)
from progan.resolution import level_of


class ProGAN:
    """All layers of both networks, built once; per-stage Keras models sharing them.

    Args:
        config: a `progan.config.ModelConfig`.
        with_discriminator: False builds the generator only (e.g. for its moving average).
    Attributes:
        generator_fade, discriminator_fade: the `FadeIn` layers holding each network's alpha.
    """

    def __init__(self, config: ModelConfig | None = None, with_discriminator: bool = True):
        self.config = config or ModelConfig()
        self.max_level = level_of(self.config.max_resolution)
        self.with_discriminator = with_discriminator
        self.generator_fade = FadeIn(name="generator_fade")
        self.discriminator_fade = FadeIn(name="discriminator_fade")
        self._generator_blocks = {level: self._generator_block(level)
                                  for level in range(2, self.max_level + 1)}
        self._to_rgb = {level: EqualizedConv2D(self.config.num_channels, 1,
                                               gain=self.config.to_rgb_gain,
                                               name=f"to_rgb_{2 ** level}")
                        for level in range(2, self.max_level + 1)}
        self._discriminator_blocks = {level: self._discriminator_block(level)
                                      for level in range(2, self.max_level + 1)}
        self._from_rgb = {level: [self._d_layer(EqualizedConv2D(
                                      self._nf(level - 1), 1, name=f"from_rgb_{2 ** level}")),
                                  self._activation()]
                          for level in range(2, self.max_level + 1)}
        self._models: dict = {}
        self._layer_tables: dict = {}
        # Build every layer now, so a checkpoint has one shape for the whole run.
        networks = [self.generator] + ([self.discriminator] if with_discriminator else [])
        for network in networks:
            for level in range(2, self.max_level + 1):
                network(2 ** level)
            if self.max_level > 2:
                network(self.config.max_resolution, fading=True)

    # -- block builders ---------------------------------------------------------------

    def _nf(self, stage: int) -> int:
        return self.config.num_features(stage)

    def _activation(self):
        return keras.layers.LeakyReLU(negative_slope=self.config.leaky_slope)

    def _pixel_norm(self):
        return PixelNorm(self.config.pixelnorm_epsilon)

    def _fused(self, level: int) -> bool:
        fused_from = self.config.fused_scale_from
        return fused_from > 0 and 2 ** level >= fused_from

    def _d_layer(self, layer):
        """A discriminator layer; with spectral norm, wrapped, and storing the weights it
        applies (spectral norm bounds the stored kernel, so no run-time equalising scale)."""
        if not self.config.spectral_norm:
            return layer
        plain = type(layer).from_config({**layer.get_config(), "equalized": False})
        return keras.layers.SpectralNormalization(plain)

    def _generator_block(self, level: int) -> list:
        nf = self._nf(level - 1)
        name = f"g_{2 ** level}"
        if level == 2:
            head = [EqualizedDense(nf * 16, gain=self.config.g_dense_gain, use_bias=False,
                                   name=f"{name}_dense"),
                    keras.layers.Reshape((4, 4, nf)), Bias(name=f"{name}_dense_bias")]
        else:
            head = [EqualizedConv2D(nf, 3, resample="up", fused=self._fused(level),
                                    name=f"{name}_conv0_up")]
        head_norm = [self._pixel_norm()] \
            if level > 2 or self.config.pixelnorm_after_dense else []
        layers = head + [self._activation()] + head_norm + [
            EqualizedConv2D(nf, 3, name=f"{name}_conv1"), self._activation(), self._pixel_norm()]
        if level == 2 and self.config.normalize_latents:
            layers.insert(0, self._pixel_norm())
        return layers

    def _discriminator_block(self, level: int) -> list:
        name = f"d_{2 ** level}"
        if level == 2:
            layers = [MinibatchStddev(self.config.mbstd_group_size)] \
                if self.config.mbstd_group_size > 0 else []
            return layers + [
                self._d_layer(EqualizedConv2D(self._nf(1), 3, name=f"{name}_conv")),
                self._activation(), keras.layers.Flatten(),
                self._d_layer(EqualizedDense(self._nf(0), name=f"{name}_dense0")),
                self._activation(),
                self._d_layer(EqualizedDense(1 + self.config.label_size,
                                             gain=self.config.d_output_gain,
                                             name=f"{name}_dense1"))]
        return [self._d_layer(EqualizedConv2D(self._nf(level - 1), 3, name=f"{name}_conv0")),
                self._activation(),
                self._d_layer(EqualizedConv2D(self._nf(level - 2), 3, resample="down",
                                              fused=self._fused(level), name=f"{name}_conv1_down")),
                self._activation()]

    # -- per-stage models -------------------------------------------------------------

    def _check_stage(self, resolution: int, fading: bool) -> int:
        level = level_of(resolution)
        if level > self.max_level:
            raise ValueError(f"resolution {resolution} is above the model's max_resolution "
                             f"{self.config.max_resolution}")
        if fading and level == 2:
            raise ValueError("resolution 4 has no fade-in: it is the first stage")
        return level

    def generator(self, resolution: int, fading: bool = False) -> keras.Model:
        """Keras model: latents ``[N, latent_size]`` -> images ``[N, R, R, C]`` (float32);
        with ``label_size`` > 0 it takes ``[latents, labels]``.

        With ``fading=True`` the output is ``lerp(upscale(toRGB(previous block)),
        toRGB(new block), alpha)``.
        """
        level = self._check_stage(resolution, fading)
        key = ("generator", level, fading)
        if key not in self._models:
            table = []
            latents = keras.Input((self.config.latent_size,), name="latents")
            inputs = features = latents
            if self.config.label_size:  # reference: concat([latents, labels]) before it all
                labels = keras.Input((self.config.label_size,), name="labels")
                inputs = [latents, labels]
                features = _apply([keras.layers.Concatenate(name="latents_and_labels")],
                                  inputs, table)
            for block_level in range(2, level + 1):
                if block_level == level and fading:
                    previous = _apply([self._to_rgb[level - 1],
                                       Upscale2D(name="upscale_previous")],
                                      features, table)
                features = _apply(self._generator_blocks[block_level], features, table)
            images = _apply([self._to_rgb[level]], features, table)
            if fading:
                images = _apply([self.generator_fade], [previous, images], table)
            images = _apply([keras.layers.Activation("linear", dtype="float32", name="images")],
                            images, table)
            self._models[key] = keras.Model(inputs, images,
                                            name=_model_name("generator", resolution, fading))
            self._layer_tables[key] = table
        return self._models[key]

    def discriminator(self, resolution: int, fading: bool = False) -> keras.Model:
        """Keras model: images ``[N, R, R, C]`` -> scores ``[N, 1]`` (float32); with
        ``label_size`` L > 0, ``[N, 1 + L]``: the score, then one logit per label.

        With ``fading=True`` the new block's output is blended with ``fromRGB(downscale(images))``
        before the previous blocks: ``lerp(old, new, alpha)``.
        """
        if not self.with_discriminator:
            raise ValueError("this ProGAN was built with_discriminator=False")
        level = self._check_stage(resolution, fading)
        key = ("discriminator", level, fading)
        if key not in self._models:
            table = []
            images = keras.Input((resolution, resolution, self.config.num_channels), name="images")
            features = _apply(self._from_rgb[level], images, table)
            for block_level in range(level, 1, -1):
                features = _apply(self._discriminator_blocks[block_level], features, table)
                if block_level == level and fading:
                    previous = _apply(
                        [Downscale2D(name="downscale_input")]
                        + self._from_rgb[level - 1], images, table)
                    features = _apply([self.discriminator_fade], [previous, features], table)
            scores = _apply([keras.layers.Activation("linear", dtype="float32", name="scores")],
                            features, table)
            self._models[key] = keras.Model(images, scores,
                                            name=_model_name("discriminator", resolution, fading))
            self._layer_tables[key] = table
        return self._models[key]

    def layer_table(self, network: str, resolution: int, fading: bool = False) -> list:
        """(layer, output shape) of every layer call of one stage's model, in order (what
        `progan summary` lists and `progan bench` counts FLOPs from)."""
        getattr(self, network)(resolution, fading)
        return list(self._layer_tables[(network, level_of(resolution), fading)])

    def set_alpha(self, alpha: float) -> None:
        """Set the fade-in of both networks (0 = previous stage, 1 = new block only)."""
        self.generator_fade.alpha.assign(alpha)
        self.discriminator_fade.alpha.assign(alpha)

    # -- whole-network views ------------------------------------------------------------

    def _network_layers(self, network: str, resolution: int | None = None) -> list:
        """Every layer of one network up to ``resolution`` (default: all), block by block."""
        top = self.max_level if resolution is None else level_of(resolution)
        if network == "generator":
            return [layer for level in range(2, top + 1)
                    for layer in self._generator_blocks[level] + [self._to_rgb[level]]]
        if network == "discriminator" and self.with_discriminator:
            return [layer for level in range(2, top + 1)
                    for layer in self._discriminator_blocks[level] + self._from_rgb[level]]
        raise ValueError(f"network: expected generator or discriminator, got {network!r}")

    def generator_variables(self, resolution: int | None = None) -> list:
        """Trainable variables of the generator up to ``resolution`` (default: all)."""
        return _unique_trainable(self._network_layers("generator", resolution))

    def discriminator_variables(self, resolution: int | None = None) -> list:
        """Trainable variables of the discriminator up to ``resolution`` (default: all)."""
        return _unique_trainable(self._network_layers("discriminator", resolution))

    def named_weights(self, network: str) -> dict[str, dict[str, object]]:
        """Every weight of ``"generator"`` or ``"discriminator"`` (all resolutions, trainable
        or not, e.g. spectral norm's ``vector_u``) as ``{layer name: {weight name: variable}}``.

        These names are what checkpoints are keyed by, so they must stay stable: a layer's
        name says its network, resolution and role (``g_8_conv1``, ``to_rgb_16``); a wrapped
        layer is named by the layer it wraps. The fade-in alphas are not included (each step
        sets them from the schedule).
        """
        named: dict[str, dict[str, object]] = {}
        for layer in self._network_layers(network):
            if not layer.weights:
                continue
            name = getattr(layer, "layer", layer).name
            weights = {variable.name: variable for variable in layer.weights}
            if name in named or len(weights) != len(layer.weights):
                raise ValueError(f"weight names of layer {name!r} are not unique")
            named[name] = weights
        return named

    def parameter_counts(self, resolution: int | None = None) -> dict:
        """Trainable parameters of the whole generator and discriminator up to ``resolution``,
        every toRGB / fromRGB included (the figures the reference code prints)."""
        return {"generator": _count(self.generator_variables(resolution)),
                "discriminator": _count(self.discriminator_variables(resolution))}


def _apply(layers, tensor, table=None):
    """Call layers in sequence; on symbolic tensors, record (layer, output shape) in ``table``."""
    for layer in layers:
        tensor = layer(tensor)
        if table is not None:
            table.append((layer, tuple(tensor.shape)))
    return tensor


def _model_name(network: str, resolution: int, fading: bool) -> str:
    return f"{network}_{resolution}x{resolution}" + ("_fading" if fading else "")


def _unique_trainable(layers) -> list:
    seen, variables = set(), []
    for layer in layers:
        for variable in layer.trainable_weights:
            if id(variable) not in seen:
                seen.add(id(variable))
                variables.append(variable)
    return variables


def _count(variables) -> int:
    return int(sum(math.prod(variable.shape) for variable in variables))


def describe(progan: ProGAN, resolution: int | None = None) -> dict:
    """Per-stage layer tables and the parameter counts (what `progan summary` prints)."""
    resolution = resolution or progan.config.max_resolution
    stages = []
    for level in range(2, level_of(resolution) + 1):
        for fading in ((False,) if level == 2 else (True, False)):
            for network in ("generator", "discriminator"):
                model = getattr(progan, network)(2 ** level, fading)
                table = progan.layer_table(network, 2 ** level, fading)
                stages.append({
                    "network": network, "resolution": 2 ** level, "fading": fading,
                    "layers": [{"name": layer.name, "class": type(layer).__name__,
                                "output_shape": list(shape),
                                "parameters": _count(layer.trainable_weights)}
                               for layer, shape in table],
                    "trainable_parameters": _count(model.trainable_weights)})
    return {"resolution": resolution, "stages": stages,
            "parameters": progan.parameter_counts(resolution)}
