import keras
import numpy as np
import pytest
import tensorflow as tf

from progan.config import ModelConfig
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


def test_spectral_normalisation_wraps_discriminator_layers():
    progan = ProGAN(ModelConfig(**{**SMALL.__dict__, "spectral_norm": True}))
    assert progan.parameter_counts() == ProGAN(SMALL).parameter_counts()
    images = np.random.default_rng(4).normal(size=(4, 8, 8, 3)).astype(np.float32)
    discriminator = progan.discriminator(8)
    before = discriminator(images).numpy()
    discriminator(images, training=True)
    assert np.isfinite(before).all()
    wrapped = [layer for layer in discriminator.layers if isinstance(layer, keras.layers.SpectralNormalization)]
    assert len(wrapped) == 6  # fromRGB 8, two convs at 8, conv + two dense at 4


def test_describe_lists_every_stage(small):
    summary = describe(small)
    keys = [(s["network"], s["resolution"], s["fading"]) for s in summary["stages"]]
    assert len(keys) == 2 * 7 and ("generator", 32, True) in keys
    top = [s for s in summary["stages"] if s["network"] == "generator" and s["resolution"] == 32
           and not s["fading"]][0]
    assert top["layers"][-1]["output_shape"] == [None, 32, 32, 3]
    assert summary["parameters"] == small.parameter_counts()
