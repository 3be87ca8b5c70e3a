"""GAN losses as per-sample values (the trainer averages them over the global batch).

Each discriminator loss returns a dict of ``[N]`` float32 tensors: ``loss`` (what is
minimised) and its terms for the log. Each generator loss maps fake scores ``[N, 1]`` to a
``[N]`` loss. Three families, selected by `LossConfig.name`:

  wgan_gp           D: D(G(z)) - D(x) + lambda (||grad D(x_hat)||_2 - gamma)^2 / gamma^2
                       + drift * D(x)^2,  x_hat = x + u (G(z) - x), u ~ U[0, 1) per sample
                    G: -D(G(z))                       (Gulrajani et al. 2017; Karras et al. 2018)
  nonsaturating_r1  D: softplus(D(G(z))) + softplus(-D(x)) + r1_gamma / 2 ||grad D(x)||^2
                    G: softplus(-D(G(z)))             (Goodfellow et al. 2014; Mescheder et al. 2018)
  least_squares     D: ((D(x) - 1)^2 + D(G(z))^2) / 2
                    G: (D(G(z)) - 1)^2 / 2            (Mao et al. 2017)
"""

from __future__ import annotations

from progan.backend import tf
from progan.config import LossConfig


def _split(outputs):
    """Discriminator outputs [N, 1 + L] -> (scores [N], label logits [N, L]), float32."""
    outputs = tf.cast(outputs, tf.float32)
    outputs = tf.reshape(outputs, [tf.shape(outputs)[0], -1])  # [N] scores are [N, 1]
    return outputs[:, 0], outputs[:, 1:]


def label_penalty(kind: str, labels, logits):
    """Per-sample cross-entropy of the label logits (reference AC-GAN term): softmax for
    one-hot classes, the sum of sigmoid cross-entropies (the negative log-likelihood of the
    whole attribute vector) for independent binary attributes."""
    labels = tf.cast(labels, tf.float32)
    if kind == "one_hot":
        return tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits),
                         axis=1)


def _input_gradient_norm_squared(discriminator, images, gradient_scale=1.0):
    """Per-sample ||d D(images) / d images||^2, in float32.

    ``gradient_scale`` multiplies the inner objective before differentiation and is divided
    out afterwards, so float16 gradients do not underflow (dynamic loss scaling).
    """
    images = tf.cast(images, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)
        outputs = discriminator(images, training=True)
        objective = tf.reduce_sum(_split(outputs)[0]) * gradient_scale
    gradients = tf.cast(tape.gradient(objective, images), tf.float32) / gradient_scale
    return tf.reduce_sum(tf.square(gradients), axis=[1, 2, 3]), outputs


def discriminator_loss(config: LossConfig, discriminator, reals, fakes, mixing=None,
                       gradient_scale=1.0, labels=None) -> dict:
    """Per-sample discriminator loss and its terms.

    Args:
        config: which loss and its constants.
        discriminator: callable images -> scores ``[N, 1]``.
        reals, fakes: ``[N, H, W, C]`` images.
        mixing: ``[N]`` factors u ~ U[0, 1) for the WGAN-GP interpolation (drawn by the
            caller, so replicas and tests can control them).
        gradient_scale: inner loss scale for the gradient penalty under float16.
        labels: for a conditional model, ``(kind, real labels [N, L], fake labels [N, L])``:
            adds ``cond_weight * (CE(real) + CE(fake))`` of the label logits to the loss.
    Returns:
        dict of ``[N]`` tensors: ``loss``, ``real_score``, ``fake_score``, ``penalty`` and
        ``label_penalty`` (0 when unconditional).
    """
    r1_norm_squared = None
    if config.name == "nonsaturating_r1":  # one forward pass on the reals serves R1 and the scores
        r1_norm_squared, real_outputs = _input_gradient_norm_squared(discriminator, reals, gradient_scale)
    else:
        real_outputs = discriminator(reals, training=True)
    fake_outputs = discriminator(fakes, training=True)
    (real_scores, real_logits), (fake_scores, fake_logits) = _split(real_outputs), _split(fake_outputs)
    terms = _adversarial_terms(config, discriminator, reals, fakes, real_scores, fake_scores,
                               mixing, gradient_scale, r1_norm_squared)
    terms["label_penalty"] = tf.zeros_like(real_scores)
    if labels is not None:
        kind, real_labels, fake_labels = labels
        terms["label_penalty"] = (label_penalty(kind, real_labels, real_logits)
                                  + label_penalty(kind, fake_labels, fake_logits))
        terms["loss"] = terms["loss"] + config.cond_weight * terms["label_penalty"]
    return terms


def _adversarial_terms(config, discriminator, reals, fakes, real_scores, fake_scores, mixing,
                       gradient_scale, r1_norm_squared=None):
    if config.name == "wgan_gp":
        reals32, fakes32 = tf.cast(reals, tf.float32), tf.cast(fakes, tf.float32)
        mixing = tf.reshape(tf.cast(mixing, tf.float32), [-1, 1, 1, 1])
        mixed = reals32 + mixing * (fakes32 - reals32)
        norm_squared, _ = _input_gradient_norm_squared(discriminator, mixed, gradient_scale)
        norm = tf.sqrt(norm_squared + 1e-12)
        penalty = tf.square(norm - config.gp_gamma) / config.gp_gamma ** 2
        loss = (fake_scores - real_scores + config.gp_lambda * penalty
                + config.drift * tf.square(real_scores))
    elif config.name == "nonsaturating_r1":
        penalty = r1_norm_squared
        loss = (tf.nn.softplus(fake_scores) + tf.nn.softplus(-real_scores)
                + config.r1_gamma * 0.5 * penalty)
    elif config.name == "least_squares":
        penalty = tf.zeros_like(real_scores)
        loss = 0.5 * (tf.square(real_scores - 1.0) + tf.square(fake_scores))
    else:
        raise ValueError(f"loss.name: unknown loss {config.name!r}")
    return {"loss": loss, "real_score": real_scores, "fake_score": fake_scores, "penalty": penalty}


def generator_loss(config: LossConfig, fake_outputs, labels=None) -> tf.Tensor:
    """Per-sample generator loss ``[N]`` from the discriminator's outputs for the fakes
    (``[N, 1]`` scores, or ``[N, 1 + L]`` with label logits); ``labels`` = (kind, the fakes'
    labels) adds ``cond_weight * CE`` of the logits (reference ``G_wgan_acgan``)."""
    fake_scores, fake_logits = _split(fake_outputs)
    if config.name == "wgan_gp":
        loss = -fake_scores
    elif config.name == "nonsaturating_r1":
        loss = tf.nn.softplus(-fake_scores)
    elif config.name == "least_squares":
        loss = 0.5 * tf.square(fake_scores - 1.0)
    else:
        raise ValueError(f"loss.name: unknown loss {config.name!r}")
    if labels is not None:
        kind, fake_labels = labels
        loss = loss + config.cond_weight * label_penalty(kind, fake_labels, fake_logits)
    return loss
