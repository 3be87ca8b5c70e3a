"""The progressive training loop: WGAN-GP under a `tf.distribute` strategy, exact resume.

    trainer = Trainer(config, data_dir, run_dir)      # builds networks, optimisers, checkpoint
    trainer.train()                                   # runs to config.schedule.total_kimg

Each iteration is one discriminator step, the generator EMA update, then one generator
step, on a *global* batch that the replicas split. Latents and gradient-penalty mixing
factors are drawn with stateless RNG keyed by (seed, images seen), and the data order is a
pure function of (seed, images seen) too, so a resumed run repeats exactly what an
uninterrupted one does. One `tf.function` is traced per stage (resolution, fading); alpha is
computed inside it from the images-seen variable, so a fade never retraces.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from progan import __version__
from progan.config import Config
from progan.layers import downscale2d, upscale2d
from progan.losses import discriminator_loss, generator_loss
from progan.networks import ProGAN
from progan.training import distribute
from progan.training.report import Reporter, image_grid, plot_curves, save_png, to_uint8
from progan.training.schedule import Schedule, Stage
from progan.training.state import CheckpointStore, list_snapshots, read_best

RUN_FILE = "config.json"
LOSS_SCALE_PERIOD = 2000


def fakes_name(images_seen: int) -> str:
    """``fakes<kimg>.png``, kimg zero-padded with three decimals so names sort by time."""
    return f"fakes{images_seen / 1000:09.3f}.png"


class TrainingError(RuntimeError):
    """A run cannot start or continue; the message says why and what to do."""


def read_run(run_dir: Path) -> dict:
    """The run description in ``RUN/config.json``: config, data, origin."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise TrainingError(f"{run_dir}: not a run directory (no {RUN_FILE})")
    run = json.loads(path.read_text())
    run["config"] = Config.from_dict(run["config"], str(path))
    return run


def write_run(run_dir: Path, config: Config, data: Path, origin: dict | None = None) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    description = {"config": config.to_dict(), "data": str(Path(data).resolve()),
                   "origin": origin, "progan_version": __version__}
    (run_dir / RUN_FILE).write_text(json.dumps(description, indent=2, sort_keys=True) + "\n")


def _set_precision(mode: str) -> None:
    policy = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}[mode]
    keras.mixed_precision.set_global_policy(policy)


class Trainer:
    """Networks, optimisers, EMA, state and the compiled steps of one run.

    Args:
        config: every setting (`progan.config.Config`).
        data: the prepared dataset directory.
        run_dir: where snapshots, logs and images go.
        strategy: a `tf.distribute.Strategy` (default: ``config.training.strategy``).
    """

    def __init__(self, config: Config, data: Path, run_dir: Path, strategy=None):
        self.config = config
        self.data = Path(data)
        self.run_dir = Path(run_dir)
        training = config.training
        if training.deterministic:
            tf.config.experimental.enable_op_determinism()
        _set_precision(training.mixed_precision)
        self.strategy = strategy or distribute.make_strategy(training.strategy)
        self.chief = distribute.is_chief(self.strategy)
        self.schedule = Schedule(config.schedule, config.model.max_resolution)
        for stage in self.schedule.stages():
            distribute.check_global_batch(self.strategy, stage.batch_size,
                                          config.model.mbstd_group_size)
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
        self.checkpoint = tf.train.Checkpoint(
            generator=list(self.generator_variables), discriminator=list(self.discriminator_variables),
            ema=list(self.ema_variables),
            g_optimizer=list(self.g_optimizer.variables), d_optimizer=list(self.d_optimizer.variables),
            images_seen=self.images_seen, optimizer_stage=self.optimizer_stage,
            loss_scale=self.loss_scale, finite_streak=self.finite_streak,
            nonfinite_streak=self.nonfinite_streak, skipped_steps=self.skipped_steps)
        self.store = CheckpointStore(self.run_dir / "checkpoints", self.checkpoint,
                                     keep=training.keep_checkpoints, writer=self.chief)
        self.reporter = Reporter(self.run_dir, chief=self.chief, total_kimg=self.schedule.total_kimg)
        self._steps: dict = {}
        self._stop_requested = False
        self._last_metrics = None
        self._evaluator = None
        self._grid_latents = np.random.RandomState(training.seed).standard_normal(
            (training.grid_size ** 2, config.model.latent_size)).astype(np.float32)

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
        """Checkpoint plus the fixed-latent grid of the EMA generator and the curves."""
        images_seen = int(self.images_seen.numpy())
        if not self._weights_finite():
            self.reporter.log(f"not writing a snapshot at kimg {images_seen / 1000:.1f}: "
                              "the weights are not finite")
            return
        path = self.store.save(images_seen)
        if not self.chief:
            return
        kimg = images_seen / 1000
        grid = image_grid(self.ema_images(self._grid_latents), self.config.training.grid_size)
        save_png(self.run_dir / fakes_name(images_seen), grid)
        self.reporter.images("fakes", grid, images_seen)
        plot_curves(self.run_dir, [b / 1000 for b in self.schedule.boundaries()])
        self.reporter.log(f"snapshot {path.name} at kimg {kimg:.1f}")
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

    def restore(self, images_seen: int | None = None) -> int:
        seen = self.store.restore(images_seen)
        self.reporter.log(f"resumed from snapshot at kimg {seen / 1000:.1f}")
        return seen

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
        last_snapshot = images_seen if self.store.latest() is not None else None
        if last_snapshot is None:
            self._enter_stage(self.schedule.stage_at(images_seen))
            self.snapshot()
            last_snapshot = images_seen
        tick, tick_start_images, tick_start_time = 0, images_seen, time.time()
        stats = {}
        rollbacks: dict[int, int] = {}
        self.reporter.log(f"training {self.run_dir} from kimg {images_seen / 1000:.1f} to "
                          f"{self.schedule.total_kimg:.1f} on {self.strategy.num_replicas_in_sync} "
                          f"replica(s), {type(self.strategy).__name__}")
        stage = None
        while not self.schedule.is_finished(images_seen) and not self._stop_requested:
            stage = self.schedule.stage_at(images_seen)
            self._enter_stage(stage)
            run_steps = self._step_function(stage)
            iterator = self._iterator(stage, images_seen)
            stage_end = min(stage.end_images, self.schedule.total_images)
            while images_seen < stage_end and not self._stop_requested:
                next_tick = tick_start_images + tick_images
                next_snapshot = last_snapshot + snapshot_images
                horizon = min(stage_end, next_tick, next_snapshot)
                steps = max(1, min(training.steps_per_call,
                                   math.ceil((horizon - images_seen) / stage.batch_size)))
                run_steps(iterator, tf.constant(steps, tf.int64))
                images_seen += steps * stage.batch_size
                self.reporter.progress(images_seen / 1000)
                if images_seen >= next_tick or images_seen >= stage_end:
                    stats = self._tick(tick, stage, images_seen, tick_start_images, tick_start_time)
                    tick, tick_start_images, tick_start_time = tick + 1, images_seen, time.time()
                    if int(self.nonfinite_streak.numpy()) >= training.max_nonfinite_steps:
                        images_seen = self._roll_back(rollbacks)
                        last_snapshot = images_seen
                        break
                if images_seen >= next_snapshot or images_seen >= stage_end:
                    self.snapshot()
                    last_snapshot = images_seen
        if self._stop_requested:
            if last_snapshot != images_seen:
                self.snapshot()
            self.reporter.log(f"stopped at kimg {images_seen / 1000:.1f} on request; "
                              f"continue with: progan resume {self.run_dir}")
        else:
            if last_snapshot != images_seen:
                self.snapshot()
            self.reporter.log(f"done: kimg {images_seen / 1000:.1f}")
        return {**stats, "stopped": self._stop_requested, "images_seen": images_seen}

    def _roll_back(self, rollbacks: dict) -> int:
        latest = self.store.latest()
        rollbacks[latest] = rollbacks.get(latest, 0) + 1
        if rollbacks[latest] > 1:
            raise TrainingError(
                f"{self.config.training.max_nonfinite_steps} non-finite steps in a row again after "
                f"rolling back to kimg {latest / 1000:.1f}; lower the learning rate "
                f"(progan finetune {self.run_dir} --lr-scale 0.5 ...)")
        seen = self.store.restore(latest)
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


# -- run-level entry points (what the CLI calls) ----------------------------------------------


def train(config: Config, data: Path, run_dir: Path, strategy=None) -> dict:
    """Start a run in ``run_dir`` (or continue it when it exists with the same config)."""
    run_dir = Path(run_dir)
    strategy = strategy or distribute.make_strategy(config.training.strategy)
    if not distribute.is_chief(strategy):  # workers write nothing; the chief checks and writes
        return _run(config, data, run_dir, strategy)
    if (run_dir / RUN_FILE).exists():
        existing = read_run(run_dir)
        differences = existing["config"].diff(config)
        if differences:
            name = differences[0]
            section, key = name.split(".")
            raise TrainingError(
                f"{run_dir} exists with {name}={getattr(getattr(existing['config'], section), key)!r} "
                f"but this command asks {getattr(getattr(config, section), key)!r}; use "
                f"`progan resume {run_dir}` to continue it or choose another --out")
        return resume(run_dir, strategy)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise TrainingError(f"--out {run_dir}: exists and is not a run directory; choose another")
    _check_data(data, config)
    write_run(run_dir, config, data)
    return Trainer(config, data, run_dir, strategy).train()


def resume(run_dir: Path, strategy=None) -> dict:
    """Continue a run from its newest readable snapshot, with no other argument."""
    run = read_run(run_dir)
    return _run(run["config"], Path(run["data"]), Path(run_dir), strategy)


def _run(config: Config, data: Path, run_dir: Path, strategy=None) -> dict:
    trainer = Trainer(config, data, run_dir, strategy)
    if list_snapshots(run_dir / "checkpoints"):
        trainer.restore()
    return trainer.train()


def select_snapshot(run_dir: Path, which: str) -> int:
    """Images seen of the snapshot named by latest | best | best:<metric> | KIMG."""
    snapshots = list_snapshots(Path(run_dir) / "checkpoints")
    if not snapshots:
        raise TrainingError(f"{run_dir}: has no snapshots")
    if which == "latest":
        return snapshots[-1][0]
    if which.startswith("best"):
        best = read_best(Path(run_dir) / "checkpoints")
        if not best:
            raise TrainingError(f"--checkpoint {which}: {run_dir} has no metric record yet; "
                                f"run `progan evaluate {run_dir}` first")
        metric = which.partition(":")[2] or sorted(best)[0]
        if metric not in best:
            raise TrainingError(f"--checkpoint {which}: no best snapshot for {metric!r} "
                                f"(have: {', '.join(sorted(best))})")
        return int(best[metric]["images_seen"])
    try:
        wanted = int(round(float(which) * 1000))
    except ValueError:
        raise TrainingError(f"--checkpoint {which}: expected latest, best or a kimg number") from None
    nearest = min((abs(seen - wanted), seen) for seen, _ in snapshots)
    if nearest[0] <= 500:  # kimg as printed in file names and logs, rounded
        return nearest[1]
    available = ", ".join(f"{seen / 1000:g}" for seen, _ in snapshots)
    raise TrainingError(f"--checkpoint {which}: no snapshot at that kimg (have: {available})")


def finetune(run_dir: Path, out: Path, checkpoint: str = "latest", lr_scale: float = 0.8,
             kimg: float = 100.0, reset_optimizer: bool = False, strategy=None) -> dict:
    """Continue from a snapshot's weights at ``lr_scale`` times the learning rates for ``kimg``
    more kimg, in a new run directory whose config.json records where it came from."""
    source = read_run(run_dir)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TrainingError(f"--out {out}: exists; choose a new directory for the fine-tuning run")
    if lr_scale <= 0 or kimg <= 0:
        raise TrainingError(f"--lr-scale {lr_scale} --kimg {kimg}: expected positive numbers")
    start = select_snapshot(run_dir, checkpoint)
    base = source["config"]
    schedule = dataclasses.replace(
        base.schedule, g_lr=base.schedule.g_lr * lr_scale, d_lr=base.schedule.d_lr * lr_scale,
        lr_by_resolution={r: lr * lr_scale for r, lr in base.schedule.lr_by_resolution.items()},
        total_kimg=start / 1000 + kimg)
    config = dataclasses.replace(base, schedule=schedule)
    origin = {"run": str(Path(run_dir).resolve()), "images_seen": start, "kimg": start / 1000,
              "checkpoint": checkpoint, "lr_scale": lr_scale, "reset_optimizer": reset_optimizer}
    write_run(out, config, Path(source["data"]), origin)
    trainer = Trainer(config, Path(source["data"]), out, strategy)
    CheckpointStore(Path(run_dir) / "checkpoints", trainer.checkpoint).restore(start)
    trainer.optimizer_stage.assign(trainer.schedule.stage_at(start).index)
    if reset_optimizer:
        trainer.reset_optimizers()
    trainer.reporter.log(f"fine-tuning {run_dir} from kimg {start / 1000:.1f} at "
                         f"{lr_scale:g} x the learning rates for {kimg:g} kimg")
    return trainer.train()


def _check_data(data: Path, config: Config) -> None:
    from progan.dataset.reader import open_dataset

    info = open_dataset(data)
    missing = [resolution for resolution in (2 ** level for level in range(
        int(math.log2(config.schedule.start_resolution)),
        int(math.log2(config.model.max_resolution)) + 1)) if resolution not in info.level_files]
    if missing:
        raise TrainingError(f"--data {data}: has no {missing[0]}x{missing[0]} level, which the "
                            f"config needs (max_resolution {config.model.max_resolution})")
