"""The progressive training loop: WGAN-GP under a `tf.distribute` strategy, exact resume.

    train(config, data, "runs/x")           # a new run (or the same command again: continue)
    resume("runs/x")                        # continue from the newest readable snapshot
    finetune("runs/x", "runs/y", snapshot="best", lr_scale=0.8, kimg=100)

Each iteration is one discriminator step, the generator EMA update, then one generator
step, on a *global* batch that the replicas split. Latents and gradient-penalty mixing
factors are drawn with stateless RNG keyed by (seed, images seen), and the data order is a
pure function of (seed, images seen) too, so a resumed run repeats exactly what an
uninterrupted one does. One `tf.function` is traced per stage (resolution, fading); alpha is
computed inside it from the images-seen variable, so a fade never retraces.

The run directory belongs to `progan.run.RunDir`; the process that trains a run holds its
lock for its whole life, and everything a command needs is validated before the directory
is created or touched.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import time
from pathlib import Path

import numpy as np

from progan.backend import keras, tf
from progan.config import Config
from progan.layers import downscale2d, upscale2d
from progan.losses import discriminator_loss, generator_loss
from progan.networks import ProGAN
from progan.run import FormatError, RunDir, RunError, RunInfo, data_fingerprint
from progan.training import distribute, state
from progan.images import format_seeds, image_grid, save_png, seed_latents, to_uint8
from progan.training.report import Reporter, plot_curves
from progan.training.schedule import Schedule, Stage

LOSS_SCALE_PERIOD = 2000
# A stop request (SIGTERM/SIGINT) is seen between compiled calls; calls are shortened to
# about this many seconds so a preempted job snapshots and exits quickly.
CALL_SECONDS = 2.0


def fakes_name(images_seen: int) -> str:
    """``fakes<kimg>.png``, kimg zero-padded with three decimals so names sort by time."""
    return f"fakes{images_seen / 1000:09.3f}.png"


class TrainingError(RunError):
    """A run cannot start or continue; the message says why and what to do."""


def _set_precision(mode: str) -> None:
    policy = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[mode]
    keras.mixed_precision.set_global_policy(policy)


class Trainer:
    """Networks, optimisers, EMA, state and the compiled steps of one run.

    Constructing a trainer writes nothing; `train` writes into the run directory.

    Args:
        config: every setting (`progan.config.Config`).
        data: the prepared dataset directory.
        run_dir: where snapshots, logs and images go (a path or a `RunDir`).
        strategy: a `tf.distribute.Strategy` (default: ``config.training.strategy``).
    """

    def __init__(self, config: Config, data: Path, run_dir, strategy=None):
        self.config = config
        self.data = Path(data)
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.run_dir = self.run.path
        training = config.training
        if training.deterministic:
            tf.config.experimental.enable_op_determinism()
        _set_precision(training.mixed_precision)
        self.strategy = strategy or distribute.make_strategy(training.strategy)
        self.chief = distribute.is_chief(self.strategy)
        self.schedule = Schedule(config.schedule, config.model.max_resolution)
        check_batches(config, self.strategy)
        with self.strategy.scope():
            keras.utils.set_random_seed(training.seed)
            self.networks = ProGAN(config.model)
            self.ema = ProGAN(config.model, with_discriminator=False)
            self.generator_variables = self.networks.generator_variables()
            self.discriminator_variables = self.networks.discriminator_variables()
            self.ema_variables = self.ema.generator_variables()
            for ema, source in zip(self.ema_variables, self.generator_variables):
                ema.assign(source)
            optimizer = config.optimizer
            self.g_optimizer, self.d_optimizer = (
                keras.optimizers.Adam(learning_rate=lr, beta_1=optimizer.beta1,
                                      beta_2=optimizer.beta2, epsilon=optimizer.epsilon, name=name)
                for lr, name in ((config.schedule.g_lr, "g_adam"), (config.schedule.d_lr, "d_adam")))
            self.g_optimizer.build(self.generator_variables)
            self.d_optimizer.build(self.discriminator_variables)
            self.images_seen = tf.Variable(0, dtype=tf.int64, trainable=False, name="images_seen")
            self.optimizer_stage = tf.Variable(-1, dtype=tf.int64, trainable=False)
            self.loss_scale = tf.Variable(2.0 ** 15 if training.mixed_precision == "fp16" else 1.0,
                                          trainable=False, name="loss_scale")
            self.finite_streak = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.nonfinite_streak = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False)
            self.stat_sums = tf.Variable(tf.zeros([5], tf.float64), trainable=False)
        counters = {"images_seen": self.images_seen, "optimizer_stage": self.optimizer_stage,
                    "loss_scale": self.loss_scale, "finite_streak": self.finite_streak,
                    "nonfinite_streak": self.nonfinite_streak, "skipped_steps": self.skipped_steps}
        parts = (self.networks, self.ema, self.g_optimizer, self.d_optimizer, counters)
        self.checkpoint = state.full_checkpoint(*parts)
        self.readable_formats = {2: self.checkpoint, 1: state.legacy_checkpoint(*parts)}
        self.network_checkpoint = state.network_checkpoint(self.ema)
        self.reporter = Reporter(self.run, chief=self.chief, total_kimg=self.schedule.total_kimg)
        self.next_tick = 0
        self._steps: dict = {}
        self._stop_requested = False
        self._last_metrics = None
        self._evaluator = None
        # fakes*.png show seeds 0 .. grid_size^2 - 1 (`progan generate --seeds` draws them again)
        self.grid_seeds = list(range(training.grid_size ** 2))
        self._grid_latents = seed_latents(self.grid_seeds, config.model.latent_size)

    # -- the compiled step ----------------------------------------------------------------

    def _random(self, images_seen, stream: int, shape, uniform=False):
        seed = tf.stack([tf.constant(self.config.training.seed, tf.int64), images_seen * 4 + stream])
        if uniform:
            return tf.random.stateless_uniform(shape, seed)
        return tf.random.stateless_normal(shape, seed)

    def _make_step(self, stage: Stage):
        """A tf.function running ``steps`` iterations of one stage."""
        config, strategy = self.config, self.strategy
        resolution, fading, batch = stage.resolution, stage.fading, stage.batch_size
        generator = self.networks.generator(resolution, fading)
        discriminator = self.networks.discriminator(resolution, fading)
        g_vars, d_vars = generator.trainable_weights, discriminator.trainable_weights
        ema_by_id = {id(v): e for v, e in zip(self.generator_variables, self.ema_variables)}
        ema_pairs = [(ema_by_id[id(v)], v) for v in g_vars]
        latent_size = config.model.latent_size
        fp16 = config.training.mixed_precision == "fp16"
        jit = config.training.xla
        start, length = stage.start_images, max(stage.end_images - stage.start_images, 1)

        def d_gradients(reals, latents, mixing, alpha, loss_scale):
            if fading:
                reals = reals + (upscale2d(downscale2d(reals)) - reals) * (1.0 - alpha)
            fakes = generator(latents, training=True)
            with tf.GradientTape() as tape:
                terms = discriminator_loss(config.loss, discriminator, reals, fakes, mixing,
                                           gradient_scale=loss_scale)
                loss = tf.reduce_sum(terms["loss"]) / batch
                scaled = loss * loss_scale
            gradients = [tf.cast(g, tf.float32) / loss_scale for g in tape.gradient(scaled, d_vars)]
            sums = tf.stack([tf.reduce_sum(terms[key]) / batch
                             for key in ("loss", "penalty", "real_score", "fake_score")])
            return gradients, sums

        def g_gradients(latents, loss_scale):
            with tf.GradientTape() as tape:
                scores = discriminator(generator(latents, training=True), training=True)
                loss = tf.reduce_sum(generator_loss(config.loss, scores)) / batch
                scaled = loss * loss_scale
            gradients = [tf.cast(g, tf.float32) / loss_scale for g in tape.gradient(scaled, g_vars)]
            return gradients, loss

        if jit:
            d_gradients = tf.function(d_gradients, jit_compile=True)
            g_gradients = tf.function(g_gradients, jit_compile=True)

        def d_replica(reals, images_seen, alpha, loss_scale):
            latents = distribute.replica_slice(self._random(images_seen, 0, [batch, latent_size]), batch)
            mixing = distribute.replica_slice(self._random(images_seen, 1, [batch], uniform=True), batch)
            gradients, sums = d_gradients(reals, latents, mixing, alpha, loss_scale)
            context = tf.distribute.get_replica_context()
            return context.all_reduce(tf.distribute.ReduceOp.SUM, (gradients, sums))

        def g_replica(images_seen, loss_scale):
            latents = distribute.replica_slice(self._random(images_seen, 2, [batch, latent_size]), batch)
            gradients, loss = g_gradients(latents, loss_scale)
            context = tf.distribute.get_replica_context()
            return context.all_reduce(tf.distribute.ReduceOp.SUM, (gradients, loss))

        def local(value):
            return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], value)

        def apply_if_finite(optimizer, gradients, variables, loss):
            finite = tf.math.is_finite(loss)
            for gradient in gradients:
                finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(gradient)))

            def apply():
                optimizer.apply(gradients, variables)
                return tf.constant(True)

            return tf.cond(finite, apply, lambda: tf.constant(False))

        def one_iteration(iterator):
            images_seen = self.images_seen.read_value()
            alpha = tf.clip_by_value(tf.cast(images_seen - start, tf.float32) / length, 0.0, 1.0) \
                if fading else tf.constant(1.0)
            self.networks.generator_fade.alpha.assign(alpha)
            self.networks.discriminator_fade.alpha.assign(alpha)
            loss_scale = self.loss_scale.read_value()
            reals = next(iterator)
            d_grads, d_sums = local(strategy.run(d_replica, args=(reals, images_seen, alpha, loss_scale)))
            d_ok = apply_if_finite(self.d_optimizer, d_grads, d_vars, d_sums[0])
            beta = config.training.ema_beta
            for ema, source in ema_pairs:
                ema.assign(source + (ema - source) * beta)
            g_grads, g_loss = local(strategy.run(g_replica, args=(images_seen, loss_scale)))
            g_ok = apply_if_finite(self.g_optimizer, g_grads, g_vars, g_loss)
            ok = tf.logical_and(d_ok, g_ok)
            self.skipped_steps.assign_add(tf.cast(tf.logical_not(ok), tf.int64))
            self.nonfinite_streak.assign(tf.where(ok, tf.constant(0, tf.int64), self.nonfinite_streak + 1))
            if fp16:
                self.finite_streak.assign(tf.where(ok, self.finite_streak + 1, 0))
                grow = self.finite_streak >= LOSS_SCALE_PERIOD
                self.loss_scale.assign(tf.where(ok, tf.where(grow, loss_scale * 2.0, loss_scale),
                                                tf.maximum(loss_scale * 0.5, 1.0)))
                self.finite_streak.assign(tf.where(grow, tf.constant(0, tf.int64), self.finite_streak))
            values = tf.concat([tf.cast(d_sums[:2], tf.float64), tf.cast([g_loss], tf.float64),
                                tf.cast(d_sums[2:3] - d_sums[3:4], tf.float64)], axis=0)
            self.stat_sums.assign_add(tf.concat([tf.where(ok, values, tf.zeros_like(values)),
                                                 tf.cast([ok], tf.float64)], axis=0))
            self.images_seen.assign_add(batch)

        @tf.function
        def run_steps(iterator, steps):
            for _ in tf.range(steps):
                one_iteration(iterator)

        return run_steps

    # -- data ---------------------------------------------------------------------------

    def run_iterations(self, count: int) -> None:
        """Run ``count`` iterations from the current images seen, without ticks or snapshots
        (tests and benchmarks). Every iteration uses the stage it starts in."""
        for _ in range(count):
            images_seen = int(self.images_seen.numpy())
            stage = self.schedule.stage_at(images_seen)
            self._enter_stage(stage)
            self._step_function(stage)(self._iterator(stage, images_seen), tf.constant(1, tf.int64))

    def _step_function(self, stage: Stage):
        if stage.key not in self._steps:
            self._steps[stage.key] = self._make_step(stage)
        return self._steps[stage.key]

    def _iterator(self, stage: Stage, images_seen: int):
        from progan.dataset import reader

        def make_dataset():
            return reader.load(self.data, stage.resolution, split="train", batch_size=stage.batch_size,
                               mirror=self.config.training.mirror, seed=self.config.training.seed,
                               start_image=images_seen)

        return iter(distribute.distribute_global_batches(self.strategy, make_dataset, stage.batch_size))

    # -- optimiser resets, snapshots ------------------------------------------------------

    def _enter_stage(self, stage: Stage) -> None:
        """Learning rates of the stage; Adam reset when a fade starts or ends (reference)."""
        self.g_optimizer.learning_rate.assign(stage.g_lr)
        self.d_optimizer.learning_rate.assign(stage.d_lr)
        if int(self.optimizer_stage.numpy()) == stage.index:
            return
        optimizer = self.config.optimizer
        previous = self.optimizer_stage.numpy() >= 0
        if previous and ((stage.fading and optimizer.reset_on_fade_start)
                         or (not stage.fading and optimizer.reset_on_fade_end)):
            self.reset_optimizers()
        self.optimizer_stage.assign(stage.index)

    def reset_optimizers(self) -> None:
        """Zero both Adam states (moments and step counts), keeping the learning rates."""
        for optimizer in (self.g_optimizer, self.d_optimizer):
            for variable in optimizer.variables:
                if variable.path != optimizer.learning_rate.path:
                    variable.assign(tf.zeros_like(variable))

    def ema_images(self, latents: np.ndarray, images_seen: int | None = None) -> np.ndarray:
        """uint8 images of the EMA generator at the stage of ``images_seen`` (default: now)."""
        stage = self.schedule.stage_at(int(self.images_seen.numpy()) if images_seen is None
                                       else images_seen)
        self.ema.set_alpha(stage.alpha)
        generator = self.ema.generator(stage.resolution, stage.fading)
        # Direct calls, not Model.predict: predict would run collectives under a multi-worker
        # strategy, and only the chief draws images.
        return np.concatenate([to_uint8(generator(latents[i:i + 64], training=False))
                               for i in range(0, len(latents), 64)])

    def snapshot(self) -> None:
        """Full and network snapshots, the fixed-latent grid of the EMA generator, the curves."""
        images_seen = int(self.images_seen.numpy())
        if not self._weights_finite():
            self.reporter.log(f"not writing a snapshot at kimg {images_seen / 1000:.1f}: "
                              "the weights are not finite")
            return
        if not self.chief:
            return
        written = self.run.write_snapshot(images_seen, "full", self.checkpoint)
        self.run.write_snapshot(images_seen, "network", self.network_checkpoint)
        self.run.prune(self.config.training.keep_checkpoints)
        grid = image_grid(self.ema_images(self._grid_latents), self.config.training.grid_size)
        save_png(self.run_dir / fakes_name(images_seen), grid)
        self.reporter.images("fakes", grid, images_seen)
        plot_curves(self.run, [b / 1000 for b in self.schedule.boundaries()])
        self.reporter.log(f"snapshot {written.name} at kimg {images_seen / 1000:.1f}")
        self._evaluate_if_due(images_seen)

    def _evaluate_if_due(self, images_seen: int) -> None:
        """`--metrics` during training: evaluate snapshots every ``metrics_kimg`` (chief only)."""
        training = self.config.training
        if not training.metrics:
            return
        due = self._last_metrics is None or images_seen - self._last_metrics >= training.metrics_kimg * 1000 \
            or self.schedule.is_finished(images_seen)
        if not due:
            return
        if self._evaluator is None:
            from progan.evaluation.run import SnapshotEvaluator

            self._evaluator = SnapshotEvaluator(self.run_dir, training.metrics,
                                                num_images=training.metrics_num_images,
                                                seed=training.seed, log=self.reporter.log)
        self._evaluator.evaluate(images_seen)
        self._last_metrics = images_seen

    def _weights_finite(self) -> bool:
        variables = self.generator_variables + self.discriminator_variables + self.ema_variables
        return bool(all(tf.reduce_all(tf.math.is_finite(v)).numpy() for v in variables))

    def _save_reals(self) -> None:
        path = self.run_dir / "reals.png"
        if not self.chief or path.exists():
            return
        from progan.dataset import reader

        resolution = self.config.model.max_resolution
        count = self.config.training.grid_size ** 2
        try:
            reals = reader.read_images(self.data, resolution, "train", count)
        except Exception as error:  # a small dataset or a missing level must not stop training
            self.reporter.log(f"reals.png skipped: {error}")
            return
        save_png(path, image_grid(reals, self.config.training.grid_size))

    # -- the loop -----------------------------------------------------------------------

    def restore(self, images_seen: int | None = None, run: RunDir | None = None) -> int:
        """Load a full snapshot of ``run`` (default: this run) and return its images seen.

        Without ``images_seen``: the newest snapshot that reads completely; each one that does
        not is named in the log and on stderr, set aside as ``damaged-<name>`` and the previous
        one is tried. With ``images_seen`` (fine-tuning): exactly that snapshot, or an error.
        """
        run = run or self.run
        for path in run.remove_stale_temporaries():
            self.reporter.warn(f"removed {path}, a snapshot left unfinished by a killed process")
        snapshots = run.snapshots("full")
        if images_seen is not None:
            chosen = [s for s in snapshots if s.images_seen == images_seen]
            if not chosen:
                raise TrainingError(f"{run.path}: no full snapshot at kimg {images_seen / 1000:g}")
            state.read_snapshot(chosen[0], self.readable_formats)
            return images_seen
        for snapshot in reversed(snapshots):
            try:
                state.read_snapshot(snapshot, self.readable_formats)
            except FormatError:
                raise
            except RunError as error:
                moved = run.set_aside(snapshot) if self.chief else snapshot.path
                self.reporter.warn(f"warning: {error}; set aside as {moved.name}, "
                                   "falling back to the previous snapshot")
                continue
            seen = int(self.images_seen.numpy())
            if seen != snapshot.images_seen:
                raise TrainingError(f"{snapshot.path}: holds images_seen {seen}, not "
                                    f"{snapshot.images_seen} as its name says")
            if self.chief:
                self.next_tick = run.rewind_stats(seen)
            self.reporter.log(f"resumed from {snapshot.name} at kimg {seen / 1000:.1f}")
            return seen
        raise TrainingError(f"{run.path}: no readable snapshot to resume from"
                            + (" (the damaged ones were set aside)" if snapshots else ""))

    def _install_signal_handlers(self):
        def request_stop(signum, frame):
            self._stop_requested = True

        previous = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, request_stop)
            except ValueError:  # not the main thread
                pass
        return previous

    def train(self) -> dict:
        """Run (or continue) to the end of the schedule. Returns the final stats."""
        training = self.config.training
        if self.chief:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._save_reals()
        previous_handlers = self._install_signal_handlers()
        try:
            return self._loop(training)
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.reporter.close()

    def _loop(self, training) -> dict:
        images_seen = int(self.images_seen.numpy())
        tick_images = max(int(training.tick_kimg * 1000), 1)
        snapshot_images = max(int(training.snapshot_kimg * 1000), 1)
        last_snapshot = images_seen if self.run.snapshots("full") else None
        if last_snapshot is None:
            self._enter_stage(self.schedule.stage_at(images_seen))
            self.snapshot()
            last_snapshot = images_seen
        tick, tick_start_images, tick_start_time = self.next_tick, images_seen, time.time()
        stats = {}
        rollbacks: dict[int, int] = {}
        self.reporter.log(f"training {self.run_dir} from kimg {images_seen / 1000:.1f} to "
                          f"{self.schedule.total_kimg:.1f} on {self.strategy.num_replicas_in_sync} "
                          f"replica(s), {type(self.strategy).__name__}; fakes*.png show seeds "
                          f"{format_seeds(self.grid_seeds)} of the EMA generator")
        stage = None
        steps_per_call = training.steps_per_call
        while not self.schedule.is_finished(images_seen) and not self._stop_requested:
            stage = self.schedule.stage_at(images_seen)
            self._enter_stage(stage)
            run_steps = self._step_function(stage)
            iterator = self._iterator(stage, images_seen)
            stage_end = min(stage.end_images, self.schedule.total_images)
            first_call = True
            while images_seen < stage_end and not self._stop_requested:
                next_tick = tick_start_images + tick_images
                next_snapshot = last_snapshot + snapshot_images
                horizon = min(stage_end, next_tick, next_snapshot)
                steps = max(1, min(steps_per_call, math.ceil((horizon - images_seen) / stage.batch_size)))
                call_start = time.time()
                run_steps(iterator, tf.constant(steps, tf.int64))
                seconds = time.time() - call_start
                if not first_call and seconds > CALL_SECONDS and steps_per_call > 1:
                    # The same iterations in shorter calls: only how often a stop is seen changes.
                    steps_per_call = max(1, int(steps * CALL_SECONDS / seconds))
                first_call = False
                images_seen += steps * stage.batch_size
                self.reporter.progress(images_seen / 1000)
                if images_seen >= next_tick or images_seen >= stage_end:
                    stats = self._tick(tick, stage, images_seen, tick_start_images, tick_start_time)
                    tick, tick_start_images, tick_start_time = tick + 1, images_seen, time.time()
                    if int(self.nonfinite_streak.numpy()) >= training.max_nonfinite_steps:
                        images_seen = self._roll_back(rollbacks)
                        tick = self.next_tick
                        last_snapshot = tick_start_images = images_seen
                        break
                if images_seen >= next_snapshot or images_seen >= stage_end:
                    self.snapshot()
                    last_snapshot = images_seen
        if last_snapshot != images_seen:
            self.snapshot()
        if self._stop_requested:
            self.reporter.log(f"stopped at kimg {images_seen / 1000:.1f} on request; "
                              f"continue with: progan resume {self.run_dir}")
        else:
            self.reporter.log(f"done: kimg {images_seen / 1000:.1f}")
        return {**stats, "stopped": self._stop_requested, "images_seen": images_seen}

    def _roll_back(self, rollbacks: dict) -> int:
        latest = self.run.snapshots("full")[-1].images_seen
        rollbacks[latest] = rollbacks.get(latest, 0) + 1
        if rollbacks[latest] > 1:
            raise TrainingError(
                f"{self.config.training.max_nonfinite_steps} non-finite steps in a row again after "
                f"rolling back to kimg {latest / 1000:.1f}; lower the learning rate "
                f"(progan finetune {self.run_dir} --lr-scale 0.5 ...)")
        seen = self.restore()
        self.nonfinite_streak.assign(0)
        self.reporter.log(f"{self.config.training.max_nonfinite_steps} non-finite steps in a row: "
                          f"rolled back to the snapshot at kimg {seen / 1000:.1f}")
        return seen

    def _tick(self, tick, stage: Stage, images_seen, start_images, start_time) -> dict:
        sums = self.stat_sums.numpy()
        self.stat_sums.assign(tf.zeros_like(self.stat_sums))
        steps = max(sums[4], 1.0)
        elapsed = max(time.time() - start_time, 1e-9)
        kimg_done = (images_seen - start_images) / 1000
        current = self.schedule.stage_at(min(images_seen, self.schedule.total_images - 1))
        stats = {
            "tick": tick, "kimg": images_seen / 1000, "images_seen": images_seen,
            "resolution": stage.resolution, "phase": stage.phase, "fading": stage.fading,
            "alpha": current.alpha if current.index == stage.index else 1.0,
            "loss_d": sums[0] / steps, "penalty": sums[1] / steps, "loss_g": sums[2] / steps,
            "wasserstein": sums[3] / steps, "sec_per_tick": elapsed,
            "sec_per_kimg": elapsed / max(kimg_done, 1e-9),
            "images_per_sec": (images_seen - start_images) / elapsed,
            "memory_gib": self._memory(), "skipped_steps": int(self.skipped_steps.numpy()),
            "loss_scale": float(self.loss_scale.numpy()),
            "g_lr": stage.g_lr, "d_lr": stage.d_lr,
        }
        self.reporter.tick(stats)
        return stats

    @staticmethod
    def _memory() -> float:
        from progan.training.report import memory_gib

        return memory_gib()

    def request_stop(self) -> None:
        self._stop_requested = True


# -- checks made before a run directory is touched --------------------------------------------


def check_batches(config: Config, strategy) -> None:
    """Every stage's batch splits over the replicas and each slice over minibatch-stddev groups."""
    schedule = Schedule(config.schedule, config.model.max_resolution)
    for stage in schedule.stages():
        try:
            distribute.check_global_batch(strategy, stage.batch_size, config.model.mbstd_group_size)
        except distribute.DistributeError as error:
            raise TrainingError(f"--batch {stage.batch_size} at {stage.resolution}x"
                                f"{stage.resolution}: {error}") from None


def check_data(data: Path, config: Config) -> str:
    """The data set has every level the config trains on; returns its fingerprint."""
    from progan.dataset.reader import open_dataset

    info = open_dataset(data)
    missing = [resolution for resolution in (2 ** level for level in range(
        int(math.log2(config.schedule.start_resolution)),
        int(math.log2(config.model.max_resolution)) + 1)) if resolution not in info.level_files]
    if missing:
        raise TrainingError(f"--data {data}: has no {missing[0]}x{missing[0]} level, which the "
                            f"config needs (max_resolution {config.model.max_resolution})")
    if info.train_count < 1:
        raise TrainingError(f"--data {data}: the train split is empty")
    return data_fingerprint(data)


def _check_new_run_dir(run: RunDir, flag: str) -> None:
    if run.path.exists() and not run.path.is_dir():
        raise TrainingError(f"{flag} {run.path}: exists and is not a directory")
    if run.path.is_dir() and not run.exists() and any(
            path.name != ".lock" for path in run.path.iterdir()):
        raise TrainingError(f"{flag} {run.path}: exists and is not a run directory; choose another")


def _matching_data(run: RunDir, info: RunInfo, data: Path | None, allow_different: bool,
                   log) -> RunInfo:
    """The run's data set, or ``data`` when it is a moved copy (same fingerprint) or the user
    allowed a different one; config.json is updated to the data actually used."""
    if data is None:
        data = info.data
        if not data.is_dir():
            raise TrainingError(f"{run.config_file}: its data set {data} is gone; point to where "
                                f"it is now with: progan resume {run.path} --data DIR")
    fingerprint = check_data(data, info.config)
    if info.data_fingerprint is not None and fingerprint != info.data_fingerprint:
        if not allow_different:
            raise TrainingError(
                f"--data {data}: a different data set (fingerprint {fingerprint}) from the one "
                f"{run.path} trained on ({info.data_fingerprint}, {info.data}); use the same data "
                "set, or say --allow-different-data to continue on this one")
        log(f"warning: continuing on a different data set {data} (fingerprint {fingerprint}, "
            f"was {info.data_fingerprint}) as --allow-different-data says")
    if Path(data).resolve() != Path(info.data).resolve() or fingerprint != info.data_fingerprint:
        info = dataclasses.replace(info, data=Path(data).resolve(), data_fingerprint=fingerprint)
        run.write(info)
    return info


# -- run-level entry points (what the CLI calls) ----------------------------------------------


def train(config: Config, data: Path, run_dir: Path, strategy=None) -> dict:
    """Start a run in ``run_dir``, or continue it when it exists with the same config and data."""
    run = RunDir(run_dir)
    strategy = strategy or distribute.make_strategy(config.training.strategy)
    check_batches(config, strategy)
    fingerprint = check_data(data, config)
    if not distribute.is_chief(strategy):  # workers write nothing; the chief checks and writes
        return _train(config, data, run, strategy)
    if run.exists():
        info = run.read()
        differences = info.config.diff(config)
        if differences:
            name = differences[0]
            section, key = name.split(".")
            raise TrainingError(
                f"{run.path} exists with {name}={getattr(getattr(info.config, section), key)!r} "
                f"but this command asks {getattr(getattr(config, section), key)!r}; use "
                f"`progan resume {run.path}` to continue it or choose another --out")
        if info.data_fingerprint not in (None, fingerprint):
            raise TrainingError(
                f"--data {data}: a different data set (fingerprint {fingerprint}) from the one "
                f"{run.path} trains on ({info.data_fingerprint}, {info.data}); choose another --out")
        return resume(run.path, data, strategy=strategy)
    _check_new_run_dir(run, "--out")
    with run.lock("progan train"):
        if run.exists():
            raise TrainingError(f"--out {run.path}: another process started this run just now")
        run.write(RunInfo(config, Path(data).resolve(), fingerprint))
        return _train(config, data, run, strategy)


def resume(run_dir: Path, data: Path | None = None, allow_different_data: bool = False,
           strategy=None) -> dict:
    """Continue a run from its newest readable snapshot; ``data``: where its data set is now."""
    run = RunDir(run_dir)
    info = run.read()
    strategy = strategy or distribute.make_strategy(info.config.training.strategy)
    check_batches(info.config, strategy)
    if not distribute.is_chief(strategy):
        return _train(info.config, data or info.data, run, strategy)
    with run.lock("progan resume"):
        info = _matching_data(run, run.read(), data, allow_different_data, Reporter(run).warn)
        return _train(info.config, info.data, run, strategy)


def _train(config: Config, data: Path, run: RunDir, strategy) -> dict:
    trainer = Trainer(config, data, run, strategy)
    if run.snapshots("full"):
        trainer.restore()
    return trainer.train()


def finetune(run_dir: Path, out: Path, snapshot: str = "latest", lr_scale: float = 0.8,
             kimg: float = 100.0, reset_optimizer: bool = False, strategy=None) -> dict:
    """Continue from a full snapshot's state at ``lr_scale`` times the learning rates for
    ``kimg`` more kimg, in a new run directory whose config.json records where it came from."""
    source = RunDir(run_dir)
    info = source.read()
    target = RunDir(out)
    if target.exists() or (target.path.exists() and any(target.path.iterdir())):
        raise TrainingError(f"--out {target.path}: exists; choose a new directory for the "
                            "fine-tuning run")
    if not (lr_scale > 0 and kimg > 0):
        raise TrainingError(f"--lr-scale {lr_scale} --kimg {kimg}: expected positive numbers")
    start, chosen = source.select_one(snapshot, kind="full")
    print(f"progan finetune: starting from {chosen} of {source.path}", flush=True)
    base = info.config
    schedule = dataclasses.replace(
        base.schedule, g_lr=base.schedule.g_lr * lr_scale, d_lr=base.schedule.d_lr * lr_scale,
        lr_by_resolution={r: lr * lr_scale for r, lr in base.schedule.lr_by_resolution.items()},
        total_kimg=start / 1000 + kimg)
    config = dataclasses.replace(base, schedule=schedule)
    strategy = strategy or distribute.make_strategy(config.training.strategy)
    check_batches(config, strategy)
    if not info.data.is_dir():
        raise TrainingError(f"{source.config_file}: its data set {info.data} is gone")
    fingerprint = check_data(info.data, config)
    origin = {"run": str(source.path.resolve()), "images_seen": start, "kimg": start / 1000,
              "snapshot": snapshot, "lr_scale": lr_scale, "reset_optimizer": reset_optimizer,
              "data_fingerprint": info.data_fingerprint}
    with target.lock("progan finetune"):
        target.write(RunInfo(config, info.data, fingerprint, origin))
        trainer = Trainer(config, info.data, target, strategy)
        trainer.restore(start, run=source)
        trainer.optimizer_stage.assign(trainer.schedule.stage_at(start).index)
        if reset_optimizer:
            trainer.reset_optimizers()
        trainer.reporter.log(f"fine-tuning {source.path} from kimg {start / 1000:.1f} at "
                             f"{lr_scale:g} x the learning rates for {kimg:g} kimg")
        return trainer.train()
