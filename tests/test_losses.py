import numpy as np
import pytest
import tensorflow as tf

from progan.config import LossConfig
from progan.losses import discriminator_loss, generator_loss

RNG = np.random.default_rng(0)
W = RNG.normal(size=(1, 4, 4, 3))
REALS = RNG.normal(size=(5, 4, 4, 3))
FAKES = RNG.normal(size=(5, 4, 4, 3))
MIX = RNG.uniform(size=5)


def tanh_critic(images, training=True):
    """D(x) = sum(tanh(w x)); its input gradient is w (1 - tanh^2(w x)), known in closed form."""
    return tf.reduce_sum(tf.tanh(tf.cast(W, images.dtype) * images), axis=[1, 2, 3])[:, None]


def critic_reference(x):
    return np.tanh(W * x).sum(axis=(1, 2, 3))


def critic_gradient_reference(x):
    return W * (1 - np.tanh(W * x) ** 2)


def test_wgan_gp_matches_closed_form():
    config = LossConfig(name="wgan_gp", gp_lambda=10.0, gp_gamma=1.0, drift=0.001)
    terms = discriminator_loss(config, tanh_critic, tf.constant(REALS, tf.float32),
                               tf.constant(FAKES, tf.float32), tf.constant(MIX, tf.float32))
    mixed = REALS + MIX[:, None, None, None] * (FAKES - REALS)
    norms = np.sqrt((critic_gradient_reference(mixed) ** 2).sum(axis=(1, 2, 3)))
    real, fake = critic_reference(REALS), critic_reference(FAKES)
    expected = fake - real + 10.0 * (norms - 1.0) ** 2 + 0.001 * real ** 2
    np.testing.assert_allclose(terms["loss"].numpy(), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(terms["penalty"].numpy(), (norms - 1.0) ** 2, rtol=1e-4, atol=1e-5)
    assert terms["loss"].shape == (5,)


def test_gradient_penalty_against_finite_differences():
    config = LossConfig(name="wgan_gp", gp_gamma=2.0)
    mix = np.zeros(5)  # x_hat = reals
    terms = discriminator_loss(config, tanh_critic, tf.constant(REALS, tf.float32),
                               tf.constant(FAKES, tf.float32), tf.constant(mix, tf.float32))
    step = 1e-6
    gradient = np.zeros_like(REALS)
    for index in np.ndindex(REALS.shape[1:]):
        delta = np.zeros_like(REALS)
        delta[(slice(None),) + index] = step
        gradient[(slice(None),) + index] = (critic_reference(REALS + delta)
                                            - critic_reference(REALS - delta)) / (2 * step)
    norms = np.sqrt((gradient ** 2).sum(axis=(1, 2, 3)))
    np.testing.assert_allclose(terms["penalty"].numpy(), (norms - 2.0) ** 2 / 4.0, rtol=1e-3, atol=1e-5)


def test_gradient_scale_does_not_change_the_penalty():
    config = LossConfig()
    args = (tanh_critic, tf.constant(REALS, tf.float32), tf.constant(FAKES, tf.float32),
            tf.constant(MIX, tf.float32))
    plain = discriminator_loss(config, *args)["penalty"].numpy()
    scaled = discriminator_loss(config, *args, gradient_scale=1024.0)["penalty"].numpy()
    np.testing.assert_allclose(scaled, plain, rtol=1e-5)


def test_nonsaturating_r1_and_least_squares():
    softplus = lambda v: np.log1p(np.exp(v))  # noqa: E731
    real, fake = critic_reference(REALS), critic_reference(FAKES)
    r1 = (critic_gradient_reference(REALS) ** 2).sum(axis=(1, 2, 3))
    config = LossConfig(name="nonsaturating_r1", r1_gamma=4.0)
    terms = discriminator_loss(config, tanh_critic, tf.constant(REALS, tf.float32),
                               tf.constant(FAKES, tf.float32))
    np.testing.assert_allclose(terms["loss"].numpy(), softplus(fake) + softplus(-real) + 2.0 * r1,
                               rtol=1e-4)
    np.testing.assert_allclose(generator_loss(config, fake[:, None]).numpy(), softplus(-fake), rtol=1e-5)
    config = LossConfig(name="least_squares")
    terms = discriminator_loss(config, tanh_critic, tf.constant(REALS, tf.float32),
                               tf.constant(FAKES, tf.float32))
    np.testing.assert_allclose(terms["loss"].numpy(), 0.5 * ((real - 1) ** 2 + fake ** 2), rtol=1e-4)
    np.testing.assert_allclose(generator_loss(config, fake).numpy(), 0.5 * (fake - 1) ** 2, rtol=1e-5)


def test_wgan_generator_loss_and_unknown_name():
    scores = np.array([[1.5], [-2.0]])
    np.testing.assert_allclose(generator_loss(LossConfig(), scores).numpy(), [-1.5, 2.0])
    bogus = LossConfig.__new__(LossConfig)
    object.__setattr__(bogus, "name", "hinge")
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        generator_loss(bogus, scores)


# A conditional critic: the score of tanh_critic, then three label logits (linear in the image).
V = RNG.normal(size=(3, 4, 4, 3))


def labelled_critic(images, training=True):
    logits = tf.einsum("nhwc,khwc->nk", images, tf.cast(V, images.dtype))
    return tf.concat([tanh_critic(images), logits], axis=1)


def _logits_reference(x):
    return np.einsum("nhwc,khwc->nk", x, V)


def _sigmoid_ce(labels, logits):  # float64, the textbook -y log s - (1 - y) log (1 - s)
    s = 1.0 / (1.0 + np.exp(-logits))
    return -(labels * np.log(s) + (1 - labels) * np.log(1 - s)).sum(axis=1)


def _softmax_ce(labels, logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -(labels * log_p).sum(axis=1)


@pytest.mark.parametrize("kind", ["multi_label", "one_hot"])
def test_conditional_losses_add_the_label_cross_entropy(kind):
    """Reference D_wgangp_acgan / G_wgan_acgan: D adds cond_weight * (CE(reals) + CE(fakes)),
    G adds cond_weight * CE(fakes); the score (column 0) and its gradient penalty unchanged."""
    if kind == "one_hot":
        real_labels, fake_labels = np.eye(3)[[0, 2, 1, 1, 0]], np.eye(3)[[2, 2, 0, 1, 1]]
    else:
        real_labels = RNG.integers(0, 2, (5, 3)).astype(np.float64)
        fake_labels = RNG.integers(0, 2, (5, 3)).astype(np.float64)
    ce = _softmax_ce if kind == "one_hot" else _sigmoid_ce
    config = LossConfig(cond_weight=0.7)
    args = (tf.constant(REALS, tf.float32), tf.constant(FAKES, tf.float32), tf.constant(MIX, tf.float32))
    plain = discriminator_loss(config, tanh_critic, *args)
    labelled = discriminator_loss(config, labelled_critic, *args, labels=(
        kind, tf.constant(real_labels, tf.float32), tf.constant(fake_labels, tf.float32)))
    penalty = ce(real_labels, _logits_reference(REALS)) + ce(fake_labels, _logits_reference(FAKES))
    np.testing.assert_allclose(labelled["label_penalty"].numpy(), penalty, rtol=1e-4)
    np.testing.assert_allclose(labelled["loss"].numpy(), plain["loss"].numpy() + 0.7 * penalty,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(labelled["penalty"].numpy(), plain["penalty"].numpy(), rtol=1e-5)
    outputs = labelled_critic(tf.constant(FAKES, tf.float32))
    g_loss = generator_loss(config, outputs, labels=(kind, tf.constant(fake_labels, tf.float32)))
    np.testing.assert_allclose(
        g_loss.numpy(), -critic_reference(FAKES) + 0.7 * ce(fake_labels, _logits_reference(FAKES)),
        rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(plain["label_penalty"].numpy(), np.zeros(5))
