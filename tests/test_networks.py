import keras
import numpy as np
import pytest
import tensorflow as tf

from progan.config import ModelConfig
from progan.layers import PixelNorm
from progan.networks import ProGAN, describe

SMALL = ModelConfig(latent_size=16, fmap_base=64, fmap_max=16, max_resolution=32)


@pytest.fixture(scope="module")
def small():
    keras.utils.set_random_seed(0)
    return ProGAN(SMALL)


@pytest.mark.parametrize("resolution, generator, discriminator", [
    (64, 22_490_383, 22_498_049),
    (128, 22_933_394, 22_941_313),
    (1024, 23_079_115, 23_087_249),
])
def test_parameter_counts_match_the_official_implementation(resolution, generator, discriminator):
    counts = ProGAN(ModelConfig(max_resolution=resolution)).parameter_counts()
    assert counts == {"generator": generator, "discriminator": discriminator}


def test_every_stage_has_the_right_shapes(small):
    latents = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    for resolution in (4, 8, 16, 32):
        for fading in ((False,) if resolution == 4 else (False, True)):
            images = small.generator(resolution, fading)(latents)
            assert images.shape == (4, resolution, resolution, 3) and images.dtype == tf.float32
            scores = small.discriminator(resolution, fading)(images)
            assert scores.shape == (4, 1)


def test_stages_share_one_set_of_weights(small):
    union = {id(v) for r in (4, 8, 16, 32) for fading in ((False,) if r == 4 else (False, True))
             for v in small.generator(r, fading).trainable_weights}
    assert union == {id(v) for v in small.generator_variables()}
    top = {id(v) for v in small.generator(32).trainable_weights}
    below = {id(v) for v in small.generator(8).trainable_weights} - top
    assert len(below) == 2  # only the 8x8 toRGB kernel and bias are not in the 32x32 model
    assert small.parameter_counts()["generator"] == sum(int(np.prod(v.shape)) for v in small.generator_variables())
    with pytest.raises(ValueError, match="no fade-in"):
        small.generator(4, fading=True)
    with pytest.raises(ValueError, match="above the model's max_resolution"):
        small.discriminator(64)


@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_fade_in_identities(small, resolution):
    rng = np.random.default_rng(resolution)
    latents = rng.normal(size=(4, 16)).astype(np.float32)
    images = rng.uniform(-1, 1, size=(4, resolution, resolution, 3)).astype(np.float32)
    previous = resolution // 2
    small.set_alpha(0.0)
    grown = small.generator(previous)(latents).numpy().repeat(2, axis=1).repeat(2, axis=2)
    np.testing.assert_array_equal(small.generator(resolution, fading=True)(latents).numpy(), grown)
    downscaled = tf.nn.avg_pool2d(images, 2, 2, "VALID")
    np.testing.assert_array_equal(small.discriminator(resolution, fading=True)(images).numpy(),
                                  small.discriminator(previous)(downscaled).numpy())
    small.set_alpha(1.0)
    np.testing.assert_array_equal(small.generator(resolution, fading=True)(latents).numpy(),
                                  small.generator(resolution)(latents).numpy())
    np.testing.assert_array_equal(small.discriminator(resolution, fading=True)(images).numpy(),
                                  small.discriminator(resolution)(images).numpy())
    small.set_alpha(0.5)
    halfway = small.generator(resolution, fading=True)(latents).numpy()
    np.testing.assert_allclose(halfway, 0.5 * grown + 0.5 * small.generator(resolution)(latents).numpy(),
                               rtol=1e-5, atol=1e-6)


def test_generator_normalises_latents_and_features():
    progan = ProGAN(ModelConfig(latent_size=8, fmap_base=32, fmap_max=8, max_resolution=8))
    latents = np.random.default_rng(1).normal(size=(2, 8)).astype(np.float32)
    generator = progan.generator(8)
    # A latent's scale does not matter: it is pixel-normalised first.
    np.testing.assert_allclose(generator(latents * 7.0).numpy(), generator(latents).numpy(),
                               rtol=1e-4, atol=1e-5)


def test_fused_networks_equal_unfused():
    fused = ProGAN(SMALL)
    plain = ProGAN(ModelConfig(**{**SMALL.__dict__, "fused_scale_from": 0}))
    for resolution in (8, 32):
        for network in ("generator", "discriminator"):
            getattr(plain, network)(resolution).set_weights(getattr(fused, network)(resolution).get_weights())
    latents = np.random.default_rng(2).normal(size=(4, 16)).astype(np.float32)
    fused_small = ProGAN(ModelConfig(**{**SMALL.__dict__, "fused_scale_from": 8}))
    fused_small.generator(32).set_weights(plain.generator(32).get_weights())
    fused_small.discriminator(32).set_weights(plain.discriminator(32).get_weights())
    images = plain.generator(32)(latents).numpy()
    np.testing.assert_allclose(fused_small.generator(32)(latents).numpy(), images, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused_small.discriminator(32)(images).numpy(),
                               plain.discriminator(32)(images).numpy(), rtol=1e-4, atol=1e-4)


def test_mixed_bfloat16_build_runs_and_keeps_float32_outputs():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    progan = ProGAN(SMALL)
    latents = np.random.default_rng(3).normal(size=(4, 16)).astype(np.float32)
    images = progan.generator(16, fading=True)(latents)
    scores = progan.discriminator(16, fading=True)(images)
    assert images.dtype == tf.float32 and scores.dtype == tf.float32
    assert np.isfinite(images.numpy()).all() and np.isfinite(scores.numpy()).all()
    assert all(v.dtype == "float32" for v in progan.generator(16).trainable_weights)


def test_spectral_normalisation_bounds_what_each_discriminator_layer_applies():
    progan = ProGAN(ModelConfig(**{**SMALL.__dict__, "spectral_norm": True}))
    assert progan.parameter_counts() == ProGAN(SMALL).parameter_counts()
    images = np.random.default_rng(4).normal(size=(4, 8, 8, 3)).astype(np.float32)
    discriminator = progan.discriminator(8)
    before = discriminator(images).numpy()
    for _ in range(30):  # one power iteration per training call, as Keras does
        after = discriminator(images, training=True).numpy()
    wrapped = [layer for layer in discriminator.layers if isinstance(layer, keras.layers.SpectralNormalization)]
    assert len(wrapped) == 6  # fromRGB 8, two convs at 8, conv + two dense at 4
    for layer in wrapped:
        inner = layer.layer
        assert not inner.equalized and inner.weight_scale == 1.0
        # what the layer applies: its kernel as a [fan_in, outputs] matrix (float64 SVD reference)
        applied = inner.kernel.numpy().astype(np.float64).reshape(-1, inner.kernel.shape[-1])
        # the layer's own power-iteration estimate of the applied kernel's norm is 1 ...
        u = layer.vector_u.numpy().astype(np.float64)
        v = u @ applied.T
        v /= np.linalg.norm(v)
        assert float(np.squeeze(v @ applied @ u.T) / np.linalg.norm(u)) == pytest.approx(1.0, abs=2e-3), inner.name
        # ... and the true largest singular value is within what 30 power iterations resolve
        assert np.linalg.svd(applied, compute_uv=False)[0] == pytest.approx(1.0, abs=0.05), inner.name
    assert np.isfinite(after).all() and not np.allclose(after, before)  # the scores changed
    assert np.abs(after).max() < np.abs(before).max()  # bounded layers shrink the scores


def test_describe_lists_every_stage(small):
    summary = describe(small)
    keys = [(s["network"], s["resolution"], s["fading"]) for s in summary["stages"]]
    assert len(keys) == 2 * 7 and ("generator", 32, True) in keys
    top = [s for s in summary["stages"] if s["network"] == "generator" and s["resolution"] == 32
           and not s["fading"]][0]
    assert top["layers"][-1]["output_shape"] == [None, 32, 32, 3]
    assert summary["parameters"] == small.parameter_counts()


def _layers_named(layers, fragment):
    return [layer for layer in layers if fragment in layer.name]


def test_reference_gains_and_pixelnorm_by_default():
    progan = ProGAN(ModelConfig(latent_size=8, fmap_base=32, fmap_max=8, max_resolution=8))
    generator = progan.generator(8).layers + progan.generator(4).layers
    assert _layers_named(generator, "g_4_dense")[0].gain == pytest.approx(np.sqrt(2) / 4)
    assert {layer.gain for layer in _layers_named(generator, "to_rgb")} == {1.0}
    assert _layers_named(progan.discriminator(8).layers, "d_4_dense1")[0].gain == 1.0
    assert all(layer.gain == pytest.approx(np.sqrt(2)) for layer in _layers_named(generator, "conv"))
    # latents, after the dense layer, after each 3x3 convolution: 1 + 1 + 1 at 4x4
    assert sum(isinstance(layer, PixelNorm) for layer in progan.generator(4).layers) == 3


@pytest.mark.parametrize("network", ["generator", "discriminator"])
def test_output_gains_scale_the_outputs_and_keep_the_parameters(network):
    small = ModelConfig(latent_size=8, fmap_base=32, fmap_max=8, max_resolution=8)
    reference = ProGAN(small)
    he = ProGAN(ModelConfig(**{**small.__dict__, "to_rgb_gain": 2.0, "d_output_gain": 3.0}))
    assert he.parameter_counts() == reference.parameter_counts()
    rng = np.random.default_rng(5)
    for resolution in (4, 8):
        inputs = (rng.normal(size=(4, 8)) if network == "generator"
                  else rng.uniform(-1, 1, size=(4, resolution, resolution, 3))).astype(np.float32)
        model = getattr(reference, network)(resolution)
        getattr(he, network)(resolution).set_weights(model.get_weights())
        factor = 2.0 if network == "generator" else 3.0  # the biases start at zero
        np.testing.assert_allclose(getattr(he, network)(resolution)(inputs).numpy(),
                                   factor * model(inputs).numpy(), rtol=1e-4, atol=1e-5)


def test_dense_gain_and_pixelnorm_after_dense_options():
    small = ModelConfig(latent_size=8, fmap_base=32, fmap_max=8, max_resolution=8)
    reference = ProGAN(small)
    gain = ProGAN(ModelConfig(**{**small.__dict__, "g_dense_gain": float(np.sqrt(2))}))
    peer = ProGAN(ModelConfig(**{**small.__dict__, "g_dense_gain": float(np.sqrt(2)),
                                 "pixelnorm_after_dense": False}))
    assert peer.parameter_counts() == reference.parameter_counts()
    assert _layers_named(peer.generator(4).layers, "g_4_dense")[0].gain == pytest.approx(np.sqrt(2))
    assert sum(isinstance(layer, PixelNorm) for layer in peer.generator(4).layers) == 2
    assert sum(isinstance(layer, PixelNorm) for layer in peer.generator(8).layers) == 4
    latents = np.random.default_rng(6).normal(size=(4, 8)).astype(np.float32)
    images = reference.generator(8)(latents).numpy()
    for progan in (gain, peer):
        progan.generator(8).set_weights(reference.generator(8).get_weights())
    # Zero biases at the start: the pixel norm after lrelu(dense) cancels the dense gain...
    np.testing.assert_allclose(gain.generator(8)(latents).numpy(), images, rtol=1e-4, atol=1e-5)
    # ...and without it the gain reaches the 3x3 convolution.
    assert not np.allclose(peer.generator(8)(latents).numpy(), images, rtol=1e-2, atol=1e-3)


def test_gain_and_pixelnorm_options_validate_and_round_trip():
    from progan.config import Config, ConfigError, load_config

    for name in ("g_dense_gain", "to_rgb_gain", "d_output_gain"):
        with pytest.raises(ConfigError, match=f"model.{name}"):
            Config.from_dict({"model": {name: 0}})
        with pytest.raises(ConfigError, match="a number"):
            Config.from_dict({"model": {name: "1.4"}})
    with pytest.raises(ConfigError, match="true or false"):
        Config.from_dict({"model": {"pixelnorm_after_dense": 1}})
    config = load_config("demo").replace(**{"model.to_rgb_gain": 2, "model.pixelnorm_after_dense": False})
    assert config.model.to_rgb_gain == 2.0 and isinstance(config.model.to_rgb_gain, float)
    assert Config.from_json(config.to_json()) == config
    # A config.json written before these options existed reads as the reference networks.
    old = config.to_dict()
    for name in ("g_dense_gain", "to_rgb_gain", "d_output_gain", "pixelnorm_after_dense"):
        del old["model"][name]
    assert Config.from_dict(old).model.to_rgb_gain == 1.0


def test_presets_reference_networks_and_rates_except_the_demo():
    from progan.config import load_config

    for model in (ModelConfig(), load_config("celeba64").model, load_config("paper").model):
        assert (model.g_dense_gain, model.to_rgb_gain, model.d_output_gain,
                model.pixelnorm_after_dense) == (np.sqrt(2) / 4, 1.0, 1.0, True)
    demo = load_config("demo").model  # the reference gains fade in badly at its widths
    assert (demo.g_dense_gain, demo.to_rgb_gain, demo.d_output_gain,
            demo.pixelnorm_after_dense) == (np.sqrt(2), np.sqrt(2), np.sqrt(2), False)
    for preset in ("celeba64", "paper"):  # the reference: one rate for both networks
        optimizer = load_config(preset).optimizer
        assert optimizer.g_lr == optimizer.d_lr and not optimizer.lr_by_resolution
        assert optimizer.fade_lr_scale == 1 and optimizer.stable_lr_rampdown == 0
    # With one shared rate the critic trails the generator at the demo's widths (SWD at the
    # end of the 8x8 fade-in 60.8 +- 8.8 over 6 seeds; D at 1.5x: 48.4 +- 2.0; at the end of
    # 32x32 over 3 seeds: D at 1.5x 27.9 +- 1.2, at 3x 24.6 +- 0.8).
    demo_optimizer = load_config("demo").optimizer
    assert demo_optimizer.d_lr == pytest.approx(3 * demo_optimizer.g_lr)


def test_conditional_networks_add_exactly_the_label_parameters():
    """Reference conditioning: labels are concatenated to the latents before everything (the
    latent pixel norm included), so the first dense kernel grows by L rows of 16 nf(1); the
    discriminator's output layer gives 1 + L values (kernel nf(0) x (1 + L) and bias 1 + L)."""
    import dataclasses

    base = ModelConfig(latent_size=16, fmap_base=64, fmap_max=32, max_resolution=16)
    conditional = dataclasses.replace(base, label_size=5)
    plain, labelled = ProGAN(base), ProGAN(conditional)
    before, after = plain.parameter_counts(), labelled.parameter_counts()
    assert after["generator"] - before["generator"] == 5 * 16 * base.num_features(1)
    assert after["discriminator"] - before["discriminator"] == 5 * base.num_features(0) + 5
    generator = labelled.generator(8, fading=True)
    images = generator([np.ones((2, 16), np.float32), np.zeros((2, 5), np.float32)])
    assert images.shape == (2, 8, 8, 3)
    assert labelled.discriminator(8)(images).shape == (2, 6)
    table = [type(layer).__name__ for layer, _ in labelled.layer_table("generator", 8, True)]
    assert table[:2] == ["Concatenate", "PixelNorm"]
    # the labels change the images (they reach the first layer)
    other = generator([np.ones((2, 16), np.float32), np.ones((2, 5), np.float32)])
    assert not np.allclose(images, other)


def test_under_adam_an_equalized_gain_is_the_layers_learning_rate():
    """Why the reference's toRGB / D-output gain of 1 fades in slowly at small widths (issue
    14): Adam's first step moves every raw weight by lr whatever the gradient's scale, and the
    layer applies weight * gain / sqrt(fan_in), so its output moves gain times as far. Gain 1
    instead of He's sqrt(2) is a toRGB learning 0.71x as fast as every other layer."""
    import keras

    from progan.layers import EqualizedConv2D

    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 4, 8)).astype(np.float32)
    target = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    raw = rng.normal(size=(1, 1, 8, 3)).astype(np.float32)
    kernel_moves = {}
    for gain in (1.0, float(np.sqrt(2))):
        layer = EqualizedConv2D(3, 1, gain=gain, use_bias=False)
        layer.build(x.shape)
        layer.kernel.assign(raw)
        before = layer(x).numpy()
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) * target)  # linear: the gradient's signs do not depend on the gain
        gradients = tape.gradient(loss, layer.trainable_weights)
        keras.optimizers.Adam(1e-3, beta_1=0.0, beta_2=0.99, epsilon=1e-8).apply(
            gradients, layer.trainable_weights)
        moved = layer(x).numpy() - before
        # float64 reference: every raw weight moved by -lr * sign(gradient) (first Adam step)
        step = -1e-3 * np.sign(gradients[0].numpy().astype(np.float64))[0, 0]
        np.testing.assert_allclose(moved, gain / np.sqrt(8) * np.einsum("nhwc,cd->nhwd", x, step),
                                   rtol=2e-3, atol=2e-6)
        kernel_moves[gain] = np.abs(moved).mean()
    assert kernel_moves[np.sqrt(2)] / kernel_moves[1.0] == pytest.approx(np.sqrt(2), rel=1e-3)
