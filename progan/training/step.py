"""The compiled training step of one stage: D step, EMA update, G step, as small functions.

    step = build_step(state, stage, strategy)     # one tf.function per (resolution, fading)
    step(iterator, tf.constant(8, tf.int64))      # eight iterations, without leaving the graph

Each iteration reads images seen, computes alpha from it (so a fade never retraces), takes
one discriminator step on a global batch of reals, updates the generator's moving average,
takes one generator step, and adds its statistics to `StepStats`. Latents and mixing factors
are stateless random numbers keyed by (seed, images seen), so a resumed run repeats an
uninterrupted one exactly. A step whose loss or gradients are not finite is not applied.
"""

from __future__ import annotations

from progan.backend import tf
from progan.layers import downscale2d, upscale2d
from progan.losses import discriminator_loss, generator_loss
from progan.training import distribute

# What each iteration reports, summed over a tick (and how many iterations were applied).
STAT_NAMES = ("loss_d", "penalty", "loss_g", "wasserstein")


class LossScale:
    """Dynamic loss scaling for float16: start at 2^15, halve on a non-finite step (not below
    1), double after ``period`` finite steps in a row. Inert (always 1) when not enabled."""

    def __init__(self, enabled: bool, period: int = 2000):
        self.enabled, self.period = enabled, period
        self.scale = tf.Variable(2.0 ** 15 if enabled else 1.0, trainable=False, name="loss_scale")
        self.finite_streak = tf.Variable(0, dtype=tf.int64, trainable=False)

    def update(self, ok) -> None:
        """After an iteration: ``ok`` says whether it was finite and applied."""
        if not self.enabled:
            return
        self.finite_streak.assign(tf.where(ok, self.finite_streak + 1, 0))
        grow = self.finite_streak >= self.period
        scale = self.scale.read_value()
        self.scale.assign(tf.where(ok, tf.where(grow, scale * 2.0, scale), tf.maximum(scale * 0.5, 1.0)))
        self.finite_streak.assign(tf.where(grow, tf.constant(0, tf.int64), self.finite_streak))


class StepStats:
    """Named statistics summed over the iterations of a tick (applied iterations only)."""

    def __init__(self):
        self.sums = {name: tf.Variable(0.0, dtype=tf.float64, trainable=False) for name in STAT_NAMES}
        self.steps = tf.Variable(0.0, dtype=tf.float64, trainable=False)

    def add(self, values: dict, ok) -> None:
        for name in STAT_NAMES:
            self.sums[name].assign_add(tf.where(ok, tf.cast(values[name], tf.float64), 0.0))
        self.steps.assign_add(tf.cast(ok, tf.float64))

    def take(self) -> dict:
        """The means since the last call (and ``steps``), then reset."""
        steps = max(float(self.steps.numpy()), 1.0)
        means = {name: float(total.numpy()) / steps for name, total in self.sums.items()}
        means["steps"] = float(self.steps.numpy())
        for variable in (*self.sums.values(), self.steps):
            variable.assign(tf.zeros_like(variable))
        return means


def stateless_random(seed: int, images_seen, stream: int, shape, uniform: bool = False):
    """Normal (or uniform) numbers that depend only on (seed, images seen, stream)."""
    key = tf.stack([tf.constant(seed, tf.int64), images_seen * 4 + stream])
    return tf.random.stateless_uniform(shape, key) if uniform else tf.random.stateless_normal(shape, key)


def apply_if_finite(optimizer, gradients, variables, loss):
    """Apply the gradients only when the loss and every gradient are finite; returns whether."""
    finite = tf.math.is_finite(loss)
    for gradient in gradients:
        finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(gradient)))

    def apply():
        optimizer.apply(gradients, variables)
        return tf.constant(True)

    return tf.cond(finite, apply, lambda: tf.constant(False))


def fade_reals(reals, alpha):
    """The reals as the fading discriminator must see them: lerp(up(down(x)), x, alpha)."""
    return reals + (upscale2d(downscale2d(reals)) - reals) * (1.0 - alpha)


def build_step(state, stage, strategy, stats: StepStats):
    """A `tf.function` ``(iterator, steps)`` running ``steps`` iterations of ``stage``."""
    config = state.config
    batch, fading = stage.batch_size, stage.fading
    generator = state.networks.generator(stage.resolution, fading)
    discriminator = state.networks.discriminator(stage.resolution, fading)
    g_vars, d_vars = generator.trainable_weights, discriminator.trainable_weights
    ema_of = {id(v): e for v, e in zip(state.generator_variables, state.ema_variables)}
    ema_pairs = [(ema_of[id(v)], v) for v in g_vars]
    latent_size, seed = config.model.latent_size, config.training.seed
    start, length = stage.start_images, max(stage.end_images - stage.start_images, 1)

    def d_gradients(reals, latents, mixing, alpha, loss_scale):
        if fading:
            reals = fade_reals(reals, alpha)
        fakes = generator(latents, training=True)
        with tf.GradientTape() as tape:
            terms = discriminator_loss(config.loss, discriminator, reals, fakes, mixing,
                                       gradient_scale=loss_scale)
            loss = tf.reduce_sum(terms["loss"]) / batch
            scaled = loss * loss_scale
        gradients = [tf.cast(g, tf.float32) / loss_scale for g in tape.gradient(scaled, d_vars)]
        sums = {name: tf.reduce_sum(terms[key]) / batch for name, key in
                (("loss_d", "loss"), ("penalty", "penalty"), ("real", "real_score"),
                 ("fake", "fake_score"))}
        return gradients, sums

    def g_gradients(latents, loss_scale):
        with tf.GradientTape() as tape:
            scores = discriminator(generator(latents, training=True), training=True)
            loss = tf.reduce_sum(generator_loss(config.loss, scores)) / batch
            scaled = loss * loss_scale
        gradients = [tf.cast(g, tf.float32) / loss_scale for g in tape.gradient(scaled, g_vars)]
        return gradients, loss

    if config.training.xla:
        d_gradients = tf.function(d_gradients, jit_compile=True)
        g_gradients = tf.function(g_gradients, jit_compile=True)

    def d_replica(reals, images_seen, alpha, loss_scale):
        latents = distribute.replica_slice(
            stateless_random(seed, images_seen, 0, [batch, latent_size]), batch)
        mixing = distribute.replica_slice(
            stateless_random(seed, images_seen, 1, [batch], uniform=True), batch)
        result = d_gradients(reals, latents, mixing, alpha, loss_scale)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, result)

    def g_replica(images_seen, loss_scale):
        latents = distribute.replica_slice(
            stateless_random(seed, images_seen, 2, [batch, latent_size]), batch)
        result = g_gradients(latents, loss_scale)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, result)

    def local(value):
        return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], value)

    def update_ema():
        beta = config.training.ema_beta
        for ema, source in ema_pairs:
            ema.assign(source + (ema - source) * beta)

    def one_iteration(iterator):
        images_seen = state.images_seen.read_value()
        alpha = tf.clip_by_value(tf.cast(images_seen - start, tf.float32) / length, 0.0, 1.0) \
            if fading else tf.constant(1.0)
        state.networks.generator_fade.alpha.assign(alpha)
        state.networks.discriminator_fade.alpha.assign(alpha)
        loss_scale = state.loss_scale.scale.read_value()
        reals = next(iterator)
        d_grads, d_sums = local(strategy.run(d_replica, args=(reals, images_seen, alpha, loss_scale)))
        d_ok = apply_if_finite(state.d_optimizer, d_grads, d_vars, d_sums["loss_d"])
        update_ema()
        g_grads, g_loss = local(strategy.run(g_replica, args=(images_seen, loss_scale)))
        g_ok = apply_if_finite(state.g_optimizer, g_grads, g_vars, g_loss)
        ok = tf.logical_and(d_ok, g_ok)
        state.skipped_steps.assign_add(tf.cast(tf.logical_not(ok), tf.int64))
        state.nonfinite_streak.assign(tf.where(ok, tf.constant(0, tf.int64),
                                               state.nonfinite_streak + 1))
        state.loss_scale.update(ok)
        stats.add({"loss_d": d_sums["loss_d"], "penalty": d_sums["penalty"], "loss_g": g_loss,
                   "wasserstein": d_sums["real"] - d_sums["fake"]}, ok)
        state.images_seen.assign_add(batch)

    @tf.function
    def run_steps(iterator, steps):
        for _ in tf.range(steps):
            one_iteration(iterator)

    return run_steps
