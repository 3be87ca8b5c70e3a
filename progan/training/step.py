"""The compiled training step of one stage: D step, EMA update, G step, as small functions.

    step = build_step(state, stage, strategy, stats)   # one per (resolution, fading)
    step(iterator, tf.constant(8, tf.int64))      # eight iterations, without leaving the graph

Each iteration reads images seen, computes alpha from it (so a fade never retraces), takes
one discriminator step on a global batch of reals, updates the generator's moving average,
takes one generator step, and adds its statistics to `StepStats`. Latents and mixing factors
are stateless random numbers keyed by (seed, images seen), so a resumed run repeats an
uninterrupted one exactly. A step whose loss or gradients are not finite is not applied.
"""

from __future__ import annotations

import re

from progan.backend import tf
from progan.layers import downscale2d, upscale2d
from progan.losses import discriminator_loss, generator_loss
from progan.training import augment, distribute

# What each iteration reports, summed over a tick (and how many iterations were applied).
STAT_NAMES = ("loss_d", "penalty", "loss_g", "wasserstein", "label_penalty")


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


def fade_alpha(images_seen, stage):
    """Alpha of ``stage`` after ``images_seen`` images: 0 -> 1 across a fade, else 1."""
    if not stage.fading:
        return tf.constant(1.0)
    length = max(stage.end_images - stage.start_images, 1)
    return tf.clip_by_value(tf.cast(images_seen - stage.start_images, tf.float32) / length, 0.0, 1.0)


def stable_lr_factor(images_seen, stage, rampdown: float):
    """The learning rates' factor in a stable phase: 1, then linearly down to 0 across the
    phase's last ``rampdown`` fraction (``optimizer.stable_lr_rampdown``)."""
    length = max(stage.end_images - stage.start_images, 1)
    remaining = tf.cast(stage.end_images - images_seen, tf.float32) / length
    return tf.clip_by_value(remaining / rampdown, 0.0, 1.0)


def unscaled_gradients(tape, scaled_loss, variables, loss_scale):
    """d(scaled_loss)/d(variables) / loss_scale in float32, where ``scaled_loss`` = loss *
    loss_scale was computed on ``tape`` (float16 loss scaling; the scale is 1 otherwise)."""
    return [tf.cast(g, tf.float32) / loss_scale for g in tape.gradient(scaled_loss, variables)]


def ema_beta(training, stage) -> float:
    """The EMA's beta in ``stage``: ``ema_beta_fade`` during a fade-in when set."""
    if stage.fading and training.ema_beta_fade is not None:
        return training.ema_beta_fade
    return training.ema_beta


def frozen_d_layers(stage, freeze_d: int) -> set:
    """Names of the discriminator layers FreezeD keeps fixed at ``stage``: the blocks of the
    ``freeze_d`` highest resolutions (those nearest the input: at 32x32 with 2, d_32_* and
    d_16_*) and their fromRGB layers (from_rgb_32, from_rgb_16)."""
    resolutions, resolution = set(), stage.resolution
    while len(resolutions) < freeze_d and resolution >= 4:
        resolutions.add(resolution)
        resolution //= 2
    return {f"{prefix}_{r}" for r in resolutions for prefix in ("d", "from_rgb")}


def _layer_prefix(name: str) -> str:
    match = re.match(r"(d|from_rgb)_(\d+)", name)
    return match.group(0) if match else name


def update_ema(pairs, beta: float) -> None:
    """ema <- source + (ema - source) * beta for each (ema, source) pair."""
    for ema, source in pairs:
        ema.assign(source + (ema - source) * beta)


class StageStep:
    """The iterations of one stage; `build_step` returns its compiled ``run_steps``.

    Random streams per iteration, keyed by (seed, images seen): 0 the discriminator's
    latents, 1 the WGAN-GP mixing factors, 2 the generator's latents (the reference draws
    new ones; with ``loss.shared_latents`` the generator step reuses stream 0), 3 for a
    conditional model the rows of the real label table that label the fakes (the first
    half for the discriminator step, the second for the generator step), so the fakes'
    labels follow the data's label distribution, as the reference draws them.
    With ``loss.augment``, `progan.training.augment` streams 1-3 (a different key) augment
    the reals, the D step's fakes and the G step's fakes; the WGAN-GP mixes the augmented
    reals and fakes. ``optimizer.freeze_d`` leaves `frozen_d_layers` out of ``d_vars``.
    """

    def __init__(self, state, stage, strategy, stats: StepStats):
        self.state, self.stage, self.strategy, self.stats = state, stage, strategy, stats
        self.config = state.config
        self.batch = stage.batch_size
        self.generator = state.networks.generator(stage.resolution, stage.fading)
        self.discriminator = state.networks.discriminator(stage.resolution, stage.fading)
        self.g_vars = self.generator.trainable_weights
        frozen = frozen_d_layers(stage, self.config.optimizer.freeze_d)
        frozen_ids = {id(v) for layer, weights in state.networks.named_weights("discriminator").items()
                      if _layer_prefix(layer) in frozen for v in weights.values()}
        self.d_vars = [v for v in self.discriminator.trainable_weights if id(v) not in frozen_ids]
        self.augment_ops = tuple(self.config.loss.augment)
        ema_of = {id(v): e for v, e in zip(state.generator_variables, state.ema_variables)}
        self.ema_pairs = [(ema_of[id(v)], v) for v in self.g_vars]
        self.g_stream = 0 if self.config.loss.shared_latents else 2
        self.label_table = state.label_table  # None: unconditional
        self.label_kind = self.config.model.label_kind
        if self.config.training.xla:
            self.d_gradients = tf.function(self.d_gradients, jit_compile=True)
            self.g_gradients = tf.function(self.g_gradients, jit_compile=True)

    def latents(self, images_seen, stream: int):
        shape = [self.batch, self.config.model.latent_size]
        return distribute.replica_slice(
            stateless_random(self.config.training.seed, images_seen, stream, shape), self.batch)

    def fake_labels(self, images_seen, half: int):
        """This replica's labels for the fakes of the D (half 0) or G (half 1) step."""
        key = tf.stack([tf.constant(self.config.training.seed, tf.int64), images_seen * 4 + 3])
        rows = tf.random.stateless_uniform([2 * self.batch], key, minval=0,
                                           maxval=tf.shape(self.label_table, out_type=tf.int64)[0],
                                           dtype=tf.int64)
        rows = distribute.replica_slice(rows[half * self.batch:(half + 1) * self.batch], self.batch)
        return tf.gather(self.label_table, rows)

    def augment_params(self, images_seen, stream: int):
        """This replica's augmentation random numbers for ``stream`` (None: no augmentation)."""
        if not self.augment_ops:
            return None
        return distribute.replica_slice(
            augment.draw(self.config.training.seed, images_seen, stream, self.batch), self.batch)

    def augmented(self, images, params, p):
        return images if params is None else augment.augment(images, params, self.augment_ops, p)

    def generate(self, latents, labels):
        inputs = latents if labels is None else [latents, labels]
        return self.generator(inputs, training=True)

    def d_gradients(self, reals, latents, mixing, alpha, loss_scale, real_labels=None,
                    fake_labels=None, augment_params=(None, None), p=None):
        """The discriminator's gradients and its loss terms, both summed over this replica."""
        if self.stage.fading:
            reals = fade_reals(reals, alpha)
        fakes = self.generate(latents, fake_labels)
        reals = self.augmented(reals, augment_params[0], p)
        fakes = self.augmented(fakes, augment_params[1], p)
        labels = None if fake_labels is None else (self.label_kind, real_labels, fake_labels)
        with tf.GradientTape() as tape:
            terms = discriminator_loss(self.config.loss, self.discriminator, reals, fakes, mixing,
                                       gradient_scale=loss_scale, labels=labels)
            loss = tf.reduce_sum(terms["loss"]) / self.batch
            scaled = loss * loss_scale
        gradients = unscaled_gradients(tape, scaled, self.d_vars, loss_scale)
        sums = {name: tf.reduce_sum(terms[key]) / self.batch for name, key in
                (("loss_d", "loss"), ("penalty", "penalty"), ("real", "real_score"),
                 ("fake", "fake_score"), ("labels", "label_penalty"))}
        sums["real_sign"] = tf.reduce_sum(tf.sign(tf.cast(terms["real_score"], tf.float32))) / self.batch
        return gradients, sums

    def g_gradients(self, latents, loss_scale, fake_labels=None, augment_params=None, p=None):
        labels = None if fake_labels is None else (self.label_kind, fake_labels)
        with tf.GradientTape() as tape:
            fakes = self.augmented(self.generate(latents, fake_labels), augment_params, p)
            outputs = self.discriminator(fakes, training=True)
            loss = tf.reduce_sum(generator_loss(self.config.loss, outputs, labels)) / self.batch
            scaled = loss * loss_scale
        return unscaled_gradients(tape, scaled, self.g_vars, loss_scale), loss

    def d_replica(self, reals, images_seen, alpha, loss_scale, p):
        mixing = distribute.replica_slice(
            stateless_random(self.config.training.seed, images_seen, 1, [self.batch], uniform=True),
            self.batch)
        latents = self.latents(images_seen, 0)
        extra = {} if not self.augment_ops else {
            "p": p, "augment_params": (self.augment_params(images_seen, augment.REALS),
                                       self.augment_params(images_seen, augment.D_FAKES))}
        if self.label_table is None:
            result = self.d_gradients(reals, latents, mixing, alpha, loss_scale, **extra)
        else:
            images, real_labels = reals
            result = self.d_gradients(images, latents, mixing, alpha, loss_scale, real_labels,
                                      self.fake_labels(images_seen, 0), **extra)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, result)

    def g_replica(self, images_seen, loss_scale, p):
        latents = self.latents(images_seen, self.g_stream)
        fake_labels = None if self.label_table is None else self.fake_labels(images_seen, 1)
        extra = {} if not self.augment_ops else {
            "p": p, "augment_params": self.augment_params(images_seen, augment.G_FAKES)}
        result = self.g_gradients(latents, loss_scale, fake_labels, **extra)
        return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, result)

    def run_replicas(self, function, *args):
        """``function`` on every replica; the all-reduced result as seen by the first."""
        result = self.strategy.run(function, args=args)
        return tf.nest.map_structure(lambda v: self.strategy.experimental_local_results(v)[0], result)

    def one_iteration(self, iterator):
        """D step, EMA update, G step; then the bookkeeping counters and statistics."""
        state = self.state
        images_seen = state.images_seen.read_value()
        alpha = fade_alpha(images_seen, self.stage)
        state.networks.generator_fade.alpha.assign(alpha)
        state.networks.discriminator_fade.alpha.assign(alpha)
        # The one writer of both learning rates: the stage's, times the stable phase's
        # rampdown when it is on (a function of images seen, so a resume is exact).
        rampdown = self.config.optimizer.stable_lr_rampdown
        factor = (stable_lr_factor(images_seen, self.stage, rampdown)
                  if rampdown > 0 and not self.stage.fading else 1.0)
        state.g_optimizer.learning_rate.assign(self.stage.g_lr * factor)
        state.d_optimizer.learning_rate.assign(self.stage.d_lr * factor)
        loss_scale = state.loss_scale.scale.read_value()
        p = state.augment["augment_p"].read_value()
        d_grads, d_sums = self.run_replicas(self.d_replica, next(iterator), images_seen, alpha,
                                            loss_scale, p)
        if self.d_vars:
            d_ok = apply_if_finite(state.d_optimizer, d_grads, self.d_vars, d_sums["loss_d"])
        else:  # FreezeD froze every block of this stage
            d_ok = tf.math.is_finite(d_sums["loss_d"])
        self.adapt_augment(d_sums["real_sign"])
        update_ema(self.ema_pairs, ema_beta(self.config.training, self.stage))
        g_grads, g_loss = self.run_replicas(self.g_replica, images_seen, loss_scale, p)
        g_ok = apply_if_finite(state.g_optimizer, g_grads, self.g_vars, g_loss)
        self.record(tf.logical_and(d_ok, g_ok), d_sums, g_loss)

    def adapt_augment(self, real_sign) -> None:
        """Adaptive strength: accumulate E[sign(D(real))] of this iteration; every
        ``augment_interval`` iterations move p by sign(r_t - target) x batch x interval /
        (augment_speed_kimg x 1000), clipped to [0, 1] (StyleGAN2-ADA)."""
        loss = self.config.loss
        if not self.augment_ops or loss.augment_target is None:
            return
        counters = self.state.augment
        signs = counters["augment_signs"].read_value() + tf.where(
            tf.math.is_finite(real_sign), real_sign, 0.0)
        count = counters["augment_count"].read_value() + 1.0
        due = count >= loss.augment_interval
        step = self.batch * loss.augment_interval / (loss.augment_speed_kimg * 1000.0)
        new_p, r_t = augment.adapt(counters["augment_p"].read_value(), signs, count,
                                   loss.augment_target, step)
        counters["augment_p"].assign(tf.where(due, new_p, counters["augment_p"]))
        counters["augment_rt"].assign(tf.where(due, r_t, counters["augment_rt"]))
        counters["augment_signs"].assign(tf.where(due, 0.0, signs))
        counters["augment_count"].assign(tf.where(due, 0.0, count))

    def record(self, ok, d_sums, g_loss) -> None:
        state = self.state
        state.skipped_steps.assign_add(tf.cast(tf.logical_not(ok), tf.int64))
        state.nonfinite_streak.assign(tf.where(ok, tf.constant(0, tf.int64),
                                               state.nonfinite_streak + 1))
        state.loss_scale.update(ok)
        self.stats.add({"loss_d": d_sums["loss_d"], "penalty": d_sums["penalty"], "loss_g": g_loss,
                        "wasserstein": d_sums["real"] - d_sums["fake"],
                        "label_penalty": d_sums["labels"]}, ok)
        state.images_seen.assign_add(self.batch)

    # AutoGraph off: the loop is written as a while loop, every branch below is Python's
    # (settings, not tensors), and converting the step's code again for every stage cost
    # about half of each stage's tracing.
    @tf.function(autograph=False)
    def run_steps(self, iterator, steps):
        def body(done):
            self.one_iteration(iterator)
            return (done + 1,)

        tf.while_loop(lambda done: done < steps, body, (tf.constant(0, steps.dtype),))

    def __call__(self, iterator, steps):
        return self.run_steps(iterator, steps)


def build_step(state, stage, strategy, stats: StepStats) -> StageStep:
    """A callable ``(iterator, steps)`` running ``steps`` compiled iterations of ``stage``."""
    return StageStep(state, stage, strategy, stats)
