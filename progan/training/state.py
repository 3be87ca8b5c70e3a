"""The variables of a run, created once under the strategy's scope: `TrainingState`.

What its checkpoints hold and how a snapshot is read back is `progan.checkpoints`.
"""

from __future__ import annotations

from progan.backend import tf
from progan.checkpoints import (full_checkpoint, grown_layers, legacy_checkpoint,
                                network_checkpoint)


class TrainingState:
    """Every variable of a run: both networks, the EMA generator, both Adam optimisers and
    the counters, created once under the strategy's scope, with their checkpoints.

    Args:
        config: every setting.
        strategy: the `tf.distribute.Strategy` the variables live under.
    Attributes:
        networks, ema: `ProGAN` (generator + discriminator) and its moving-average generator.
        g_optimizer, d_optimizer: Keras Adam optimisers, built for every variable of their net.
        images_seen, optimizer_stage, skipped_steps, nonfinite_streak: int64 counters.
        loss_scale: the fp16 `LossScale` (1 and inert otherwise).
        augment: float32 ``augment_p``, ``augment_signs``, ``augment_count``, ``augment_rt``
            (see `augment_defaults`; checkpointed when ``loss.augment`` is set).
        checkpoint, network_checkpoint: the full and the EMA-only `tf.train.Checkpoint`.
        readable_formats: ``{format version: checkpoint}`` that `read_snapshot` takes.
    """

    def __init__(self, config, strategy):
        from progan.backend import keras
        from progan.networks import ProGAN
        from progan.training.step import LossScale

        self.config = config
        with strategy.scope():
            keras.utils.set_random_seed(config.training.seed)
            self.networks = ProGAN(config.model)
            self.ema = ProGAN(config.model, with_discriminator=False)
            self.generator_variables = self.networks.generator_variables()
            self.discriminator_variables = self.networks.discriminator_variables()
            self.ema_variables = self.ema.generator_variables()
            for ema, source in zip(self.ema_variables, self.generator_variables):
                ema.assign(source)
            adam = config.optimizer
            # learning rate 0 until the compiled step writes the stage's (its one writer)
            self.g_optimizer, self.d_optimizer = (
                keras.optimizers.Adam(learning_rate=0.0, beta_1=adam.beta1, beta_2=adam.beta2,
                                      epsilon=adam.epsilon, name=name)
                for name in ("g_adam", "d_adam"))
            self.g_optimizer.build(self.generator_variables)
            self.d_optimizer.build(self.discriminator_variables)
            self.images_seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="images_seen")
            self.optimizer_stage = tf.Variable(-1, dtype=tf.int64, trainable=False)
            self.nonfinite_streak = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.loss_scale = LossScale(enabled=config.training.mixed_precision == "fp16")
            self.augment = {name: tf.Variable(value, dtype=tf.float32, trainable=False, name=name)
                            for name, value in self.augment_defaults().items()}
        counters = {"images_seen": self.images_seen, "optimizer_stage": self.optimizer_stage,
                    "loss_scale": self.loss_scale.scale, "finite_streak": self.loss_scale.finite_streak,
                    "nonfinite_streak": self.nonfinite_streak, "skipped_steps": self.skipped_steps}
        parts = (self.networks, self.ema, self.g_optimizer, self.d_optimizer, counters)
        self._counters = counters
        # A run with augmentation saves its strength and r_t accumulators too.
        self.checkpoint = full_checkpoint(*parts[:4], {**counters, **(
            self.augment if config.loss.augment else {})})
        self.readable_formats = {2: self._checkpoint_for, 1: legacy_checkpoint(*parts)}
        self.network_checkpoint = network_checkpoint(self.ema)
        self.label_table = None  # a conditional run's training labels (see set_labels)

    def augment_defaults(self) -> dict:
        """The augmentation counters of a new run: p (0 when adaptive, else augment_p), the
        sum of E[sign(D(real))] over the iterations since the last update, their count, and
        the last r_t."""
        loss = self.config.loss
        return {"augment_p": 0.0 if loss.augment_target is not None else loss.augment_p,
                "augment_signs": 0.0, "augment_count": 0.0, "augment_rt": 0.0}

    def reset_augment(self) -> None:
        for name, value in self.augment_defaults().items():
            self.augment[name].assign(value)

    def _checkpoint_for(self, keys: set) -> tf.train.Checkpoint:
        """The full checkpoint with the augmentation counters that a snapshot holds (a run
        without augmentation, or written before it existed, has none); those it lacks start
        from `augment_defaults`. Layers of resolutions the snapshot predates (a run grown to
        a higher max_resolution) keep their initial values."""
        present = {name: variable for name, variable in self.augment.items()
                   if any(key.startswith(f"counters/{name}/") for key in keys)}
        defaults = self.augment_defaults()
        for name in self.augment.keys() - present.keys():
            self.augment[name].assign(defaults[name])
        layers = {**self.networks.named_weights("generator"),
                  **self.networks.named_weights("discriminator")}
        return full_checkpoint(self.networks, self.ema, self.g_optimizer, self.d_optimizer,
                               {**self._counters, **present}, grown_layers(keys, layers))

    def set_labels(self, values, strategy) -> None:
        """The label table [N, L] the fakes' labels are drawn from (not checkpointed: it is
        the data set's, and RUN/labels.npz keeps a copy)."""
        with strategy.scope():
            self.label_table = tf.Variable(tf.constant(values, tf.float32), trainable=False,
                                           name="label_table")

    def enter_stage(self, stage) -> None:
        """Adam reset when a fade starts or ends (reference). The learning rates are the
        compiled step's to write, every iteration (`progan.training.step`)."""
        if int(self.optimizer_stage.numpy()) == stage.index:
            return
        adam = self.config.optimizer
        if self.optimizer_stage.numpy() >= 0 and ((stage.fading and adam.reset_on_fade_start)
                                                  or (not stage.fading and adam.reset_on_fade_end)):
            self.reset_optimizers()
        self.optimizer_stage.assign(stage.index)

    def reset_optimizers(self) -> None:
        """Zero both Adam states (moments and step counts), keeping the learning rates."""
        for optimizer in (self.g_optimizer, self.d_optimizer):
            for variable in optimizer.variables:
                if variable.path != optimizer.learning_rate.path:
                    variable.assign(tf.zeros_like(variable))

    def weights_finite(self) -> bool:
        variables = self.generator_variables + self.discriminator_variables + self.ema_variables
        return bool(all(tf.reduce_all(tf.math.is_finite(v)).numpy() for v in variables))

    def ema_images(self, latents, stage, labels=None):
        """uint8 images of the EMA generator at ``stage`` (its resolution and alpha);
        ``labels`` [N, L] for a conditional model."""
        import numpy as np

        from progan.images import generator_inputs, to_uint8

        self.ema.set_alpha(stage.alpha)
        generator = self.ema.generator(stage.resolution, stage.fading)
        # Direct calls, not Model.predict: predict would run collectives under a multi-worker
        # strategy, and only the chief draws images.
        return np.concatenate([
            to_uint8(generator(generator_inputs(latents[i:i + 64],
                                                None if labels is None else labels[i:i + 64]),
                               training=False))
            for i in range(0, len(latents), 64)])
