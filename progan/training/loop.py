"""The training loop of one run, in the manner of stylegan2-ada's ``training_loop``.

    trainer = Trainer(config, data, "runs/x")    # set up: process settings, state, reporter
    trainer.restore()                            # restore: the newest readable snapshot
    trainer.train()                              # loop: stages, ticks, snapshots, metrics; done

`Trainer.train` reads top to bottom in phases; the variables live in
`progan.training.state.TrainingState`, the compiled step in `progan.training.step`, the run
directory in `progan.run.RunDir`, tick timing and the ETA in `progan.training.report`.
Constructing a trainer writes nothing.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

from progan.backend import keras, tf
from progan.checkpoints import SnapshotUnusable, checkpoint_shapes, read_snapshot
from progan.config import Config, TrainingConfig
from progan.errors import Fault
from progan.images import format_seeds, image_grid, save_png, seed_labels, seed_latents
from progan.run import FormatError, RunDir, RunError, WriteFault, check_free_space
from progan.training import distribute, state as states
from progan.training.report import Reporter, TickClock, TickTimer, plot_curves, startup_summary
from progan.schedule import Schedule, Stage
from progan.training.flops import stage_flops
from progan.training.step import StepStats, build_step

# A stop request (SIGTERM/SIGINT) is seen between compiled calls; calls are shortened to
# about this many seconds so a preempted job snapshots and exits quickly.
CALL_SECONDS = 2.0


class TrainingError(RunError):
    """A run cannot start or continue; the message says why and what to do."""


class WorkerLostError(TrainingError):
    """Another worker of a multi-worker job was lost; relaunching the job resumes it."""


class DataReadFault(TrainingError, Fault):
    """A data file could not be read while training (cut short, changed, gone)."""


class NoSnapshotError(TrainingError):
    """A run has full snapshots, but none of them reads (each was set aside as damaged)."""


def fakes_name(images_seen: int) -> str:
    """``fakes-<images seen, 12 digits>.png``: the number of the snapshot folders it belongs
    to (``snapshot-`` / ``network-`` the same digits), so names sort by time."""
    return f"fakes-{images_seen:012d}.png"


def configure_process(training: TrainingConfig) -> None:
    """The process-wide settings of a run, in one place: the Keras dtype policy (mixed
    precision) and op determinism. (The seed is set where the networks are built.)"""
    policy = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
    keras.mixed_precision.set_global_policy(policy[training.mixed_precision])
    if training.deterministic:
        tf.config.experimental.enable_op_determinism()


def check_batches(config: Config, strategy, schedule: Schedule) -> None:
    """Every stage's batch splits over the replicas and each slice over minibatch-stddev groups."""
    for stage in schedule.stages():
        try:
            distribute.check_global_batch(strategy, stage.batch_size, config.model.mbstd_group_size)
        except distribute.DistributeError as error:
            raise TrainingError(f"--batch {stage.batch_size} at {stage.resolution}x"
                                f"{stage.resolution}: {error}") from None


class Trainer:
    """One run's state, compiled steps and reporting; `train` is the loop.

    Args:
        config: every setting (`progan.config.Config`).
        data: the prepared dataset directory.
        run_dir: where snapshots, logs and images go (a path or a `RunDir`).
        strategy: a `tf.distribute.Strategy` (default: ``config.training.strategy``).
        schedule: the run's `Schedule` (default: built from ``config``).
        callbacks: objects with ``on_snapshot(images_seen, finished, reporter)``, called on
            the chief after every snapshot (metrics during training are one, added by the entry point
            that wires the run).
    """

    def __init__(self, config: Config, data: Path, run_dir, strategy=None,
                 schedule: Schedule | None = None, callbacks=()):
        configure_process(config.training)
        self.config, self.data = config, Path(data)
        self.run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.run_dir = self.run.path
        self.strategy = strategy or distribute.make_strategy(config.training.strategy)
        self.chief = distribute.is_chief(self.strategy)
        self.schedule = schedule or Schedule.of(config)
        self.state = states.TrainingState(config, self.strategy)
        self.labels = self._load_labels() if config.model.label_size else None
        with self.strategy.scope():
            self.stats = StepStats()
        self.reporter = Reporter(self.run, chief=self.chief, total_kimg=self.schedule.total_kimg)
        # fakes*.png show seeds 0 .. grid_size^2 - 1 (`progan generate --seeds` draws them again)
        self.grid_seeds = list(range(config.training.grid_size ** 2))
        self.next_tick = 0
        self.timer = TickTimer(self.schedule, stage_flops(self.state.networks, self.schedule),
                               config.training.snapshot_kimg)
        self.callbacks = list(callbacks)
        self._steps: dict = {}
        self._stop_requested = False  # asked of this process (a signal, `request_stop`)
        self._stopping = False  # agreed by every worker: see `distribute.stop_agreement`
        self._agree_stop = distribute.stop_agreement(self.strategy)

    def _load_labels(self):
        """A conditional run's training labels: from the data set, checked against the
        config, kept in the state (the fakes' labels are drawn from them); `train` also
        writes them to RUN/labels.npz."""
        from progan.dataset import reader

        labels = reader.read_labels(self.data, split="train")
        model = self.config.model
        if labels.values.shape[1] != model.label_size or labels.kind != model.label_kind:
            raise TrainingError(
                f"{self.data}: {labels.values.shape[1]} {labels.kind} labels, but the config is "
                f"conditional on {model.label_size} {model.label_kind} labels")
        self.state.set_labels(labels.values, self.strategy)
        return labels

    # -- compiled steps and data -------------------------------------------------------------

    def step_function(self, stage: Stage):
        """The compiled step of a stage (traced on first use, then reused)."""
        if stage.key not in self._steps:
            self._steps[stage.key] = build_step(self.state, stage, self.strategy, self.stats)
        return self._steps[stage.key]

    def iterator(self, stage: Stage, images_seen: int):
        """Global batches of the stage's resolution from stream position ``images_seen`` on."""
        from progan.dataset import reader

        def make_dataset(shard_index=0, shard_count=1, shard_block=1):
            # under several workers, each reads only its share of every global batch
            return reader.load(self.data, stage.resolution, split="train", batch_size=stage.batch_size,
                               mirror=self.config.training.mirror, seed=self.config.training.seed,
                               start_image=images_seen, shard_index=shard_index,
                               shard_count=shard_count, shard_block=shard_block,
                               **({"labels": True} if self.labels is not None else {}))

        return iter(distribute.distribute_global_batches(self.strategy, make_dataset, stage.batch_size))

    def enter(self, images_seen: int):
        """The stage at ``images_seen`` with its learning rates and Adam resets applied, its
        compiled step and a data iterator positioned there."""
        stage = self.schedule.stage_at(images_seen)
        self.state.enter_stage(stage)
        return stage, self.step_function(stage), self.iterator(stage, images_seen)

    def run_iterations(self, count: int) -> None:
        """Run ``count`` iterations from the current images seen, without ticks or snapshots
        (tests and benchmarks). Every iteration uses the stage it starts in."""
        for _ in range(count):
            _, step, iterator = self.enter(int(self.state.images_seen.numpy()))
            step(iterator, tf.constant(1, tf.int64))

    # -- snapshots ---------------------------------------------------------------------------

    def snapshot_bytes(self) -> int:
        """About what a full and a network snapshot take on disk, with a grid of fakes (at
        most its raw size) and the curves."""
        import numpy as np

        values = sum(int(np.prod(shape)) for checkpoint in (self.state.checkpoint,
                                                             self.state.network_checkpoint)
                     for shape in checkpoint_shapes(checkpoint).values())
        model, grid = self.config.model, self.config.training.grid_size
        return 4 * values + (grid * model.max_resolution) ** 2 * model.num_channels + (256 << 10)

    def check_free_space(self) -> None:
        """`progan.run.WriteFault` when the run's disk cannot take one more snapshot."""
        check_free_space(self.run.checkpoints, self.snapshot_bytes(),
                         f"a snapshot of this model (at {self.run.checkpoints})")

    def snapshot(self) -> None:
        """Full and network snapshots, the fixed-seed grid of the EMA generator, the curves.
        A disk that cannot take them ends training with one line, the previous snapshot kept."""
        images_seen = int(self.state.images_seen.numpy())
        if not self.state.weights_finite():
            self.reporter.log(f"not writing a snapshot at kimg {images_seen / 1000:.1f}: "
                              "the weights are not finite")
            return
        if not self.chief:
            return
        try:
            self.check_free_space()
        except WriteFault as error:
            kept = self.run.snapshots("full")
            raise WriteFault(f"{error}; the snapshot at kimg {images_seen / 1000:g} is not "
                             "written" + (f", the previous one ({kept[-1].name}) is kept" if kept
                                          else "") + f"; then: progan resume {self.run_dir}") from None
        written = self.run.write_snapshot(images_seen, "full", self.state.checkpoint)
        self.run.write_snapshot(images_seen, "network", self.state.network_checkpoint)
        self.run.prune(self.config.training.keep_checkpoints, self.reporter.warn)
        latents = seed_latents(self.grid_seeds, self.config.model.latent_size)
        labels = None if self.labels is None else seed_labels(self.grid_seeds, self.labels.values)
        grid = image_grid(self.state.ema_images(latents, self.schedule.stage_at(images_seen), labels),
                          self.config.training.grid_size)
        save_png(self.run_dir / fakes_name(images_seen), grid)
        self.reporter.images("fakes", grid, images_seen)
        plot_curves(self.run, self.schedule.stages())
        self.reporter.log(f"snapshot {written.name} at kimg {images_seen / 1000:.1f}")
        finished = self.schedule.is_finished(images_seen)
        for callback in self.callbacks:
            callback.on_snapshot(images_seen, finished, self.reporter)

    def restore(self, images_seen: int | None = None, run: RunDir | None = None) -> int:
        """Load a full snapshot of ``run`` (default: this run) and return its images seen.

        Without ``images_seen``: the newest snapshot that reads completely; each damaged one
        (a file missing, cut short or failing its checksum) is named in the log and on
        stderr, set aside as ``damaged-<name>`` and the previous one is tried. A snapshot
        that does not fit the config, or one from a newer progan, stops the restore with
        nothing renamed. With ``images_seen`` (fine-tuning): exactly that snapshot, or an error.
        """
        run = run or self.run
        # (a fine-tuning source is only read: its temporaries are its own trainer's business)
        for path in run.remove_stale_temporaries() if run is self.run and self.chief else ():
            self.reporter.warn(f"removed {path}, a snapshot left unfinished by a killed process")
        snapshots = run.snapshots("full")
        if images_seen is not None:
            chosen = [s for s in snapshots if s.images_seen == images_seen]
            if not chosen:
                raise TrainingError(f"{run.path}: no full snapshot at kimg {images_seen / 1000:g}")
            read_snapshot(chosen[0], self.state.readable_formats)
            return images_seen
        for snapshot in reversed(snapshots):
            try:
                read_snapshot(snapshot, self.state.readable_formats)
            except (FormatError, SnapshotUnusable):
                raise
            except RunError as error:
                moved = run.set_aside(snapshot) if self.chief else snapshot.path
                self.reporter.warn(f"warning: {error}; set aside as {moved.name}, "
                                   "falling back to the previous snapshot")
                continue
            seen = int(self.state.images_seen.numpy())
            if seen != snapshot.images_seen:
                raise TrainingError(f"{snapshot.path}: holds images_seen {seen}, not "
                                    f"{snapshot.images_seen} as its name says")
            if self.chief:
                self.next_tick = run.rewind_stats(seen)
            self.reporter.log(f"resumed from {snapshot.name} at kimg {seen / 1000:.1f}")
            return seen
        raise NoSnapshotError(f"{run.path}: no readable snapshot to resume from"
                            + (f" (all {len(snapshots)} were damaged and are set aside as "
                               "damaged-*); to start the run again from kimg 0: progan resume "
                               f"{run.path} --restart" if snapshots else ""))

    # -- the loop ----------------------------------------------------------------------------

    def train(self) -> dict:
        """Run (or continue) to the end of the schedule. Returns the last tick's stats."""
        training = self.config.training
        # Set up: the run directory, what this run is, the reals grid, stop requests.
        if self.chief:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._summarise()
        self._save_reals()
        if self.labels is not None and self.chief:
            self.run.write_labels(self.labels)  # generate/evaluate/export need no data set
        previous_handlers = self._install_signal_handlers()
        try:
            # A new run snapshots its untrained networks first (kimg 0 in every curve).
            images_seen = int(self.state.images_seen.numpy())
            self._check_same_start(images_seen)
            if not self.run.snapshots("full"):
                self.state.enter_stage(self.schedule.stage_at(images_seen))
                self.snapshot()
            self._warn_frozen_stages(images_seen)
            self.reporter.log(
                f"training {self.run_dir} from kimg {images_seen / 1000:.1f} to "
                f"{self.schedule.total_kimg:.1f} on {self.strategy.num_replicas_in_sync} replica(s), "
                f"{type(self.strategy).__name__}; fakes*.png show seeds "
                f"{format_seeds(self.grid_seeds)} of the EMA generator")
            # Loop: stage by stage; ticks, snapshots and metrics fall on their kimg.
            try:
                stats, images_seen, last_snapshot = self._loop(training, images_seen)
            except tf.errors.OpError as error:
                lost = distribute.lost_worker(error, self.strategy)
                if lost is None:
                    raise
                newest = self.run.snapshots("full")
                at = f" at kimg {newest[-1].images_seen / 1000:g}" if newest else ""
                message = (f"{lost}; this worker stops too, and the run keeps its newest "
                           f"snapshot{at}: launch the same job again (every worker) to resume "
                           "from it")
                self.reporter.log(message)
                raise WorkerLostError(message) from None
            # Done (or stopped): the last state is always a snapshot.
            if last_snapshot != images_seen:
                self.snapshot()
            if self._stopping:
                again = ("launch the same job again (every worker)"
                         if distribute.is_multiworker(self.strategy) else f"progan resume {self.run_dir}")
                self.reporter.log(f"stopped at kimg {images_seen / 1000:.1f} on request; "
                                  f"continue with: {again}")
            else:
                self.reporter.log(f"done: kimg {images_seen / 1000:.1f}")
            return {**stats, "stopped": self._stopping, "images_seen": images_seen}
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.reporter.close()

    def _loop(self, training, images_seen: int) -> tuple[dict, int, int]:
        """Stages until the end of the schedule or a stop request; returns the last tick's
        stats, images seen and the images seen of the last snapshot."""
        tick_images = max(int(training.tick_kimg * 1000), 1)
        snapshot_images = max(int(training.snapshot_kimg * 1000), 1)
        tick, clock = self.next_tick, TickClock(images_seen)
        last_snapshot, stats, rollbacks = images_seen, {}, {}
        steps_per_call = training.steps_per_call
        while not self.schedule.is_finished(images_seen) and not self._stopping:
            stage, step, iterator = self.enter(images_seen)
            stage_end = min(stage.end_images, self.schedule.total_images)
            first_call = True  # traces the stage's graph: compile time, not training time
            while images_seen < stage_end and not self._stop_agreed():
                horizon = min(stage_end, clock.start_images + tick_images, last_snapshot + snapshot_images)
                steps = max(1, min(steps_per_call, math.ceil((horizon - images_seen) / stage.batch_size)))
                call_start = time.time()
                try:
                    step(iterator, tf.constant(steps, tf.int64))
                except tf.errors.OpError as error:
                    raise self._data_fault(error, stage, last_snapshot) or error
                seconds = time.time() - call_start
                if first_call:
                    clock.compile += seconds
                else:
                    clock.train, clock.train_images = clock.train + seconds, clock.train_images + steps * stage.batch_size
                    if seconds > CALL_SECONDS and steps_per_call > 1:
                        # The same iterations in shorter calls: only how often a stop is seen changes.
                        steps_per_call = max(1, int(steps * CALL_SECONDS / seconds))
                first_call = False
                images_seen += steps * stage.batch_size
                self.reporter.progress(images_seen / 1000)
                if images_seen >= clock.start_images + tick_images or images_seen >= stage_end:
                    stats = self._tick(tick, stage, images_seen, clock)
                    tick, clock = tick + 1, TickClock(images_seen)
                    if int(self.state.nonfinite_streak.numpy()) >= training.max_nonfinite_steps:
                        images_seen = last_snapshot = self._roll_back(rollbacks)
                        tick, clock = self.next_tick, TickClock(images_seen)
                        break
                if images_seen >= last_snapshot + snapshot_images or images_seen >= stage_end:
                    maintenance_start = time.time()
                    self.snapshot()
                    clock.maintenance += time.time() - maintenance_start
                    last_snapshot = images_seen
        return stats, images_seen, last_snapshot

    def _check_same_start(self, images_seen: int) -> None:
        """Every worker must start from the same snapshot; each chose the newest it sees in
        the run directory, so a worker that sees another one stops them all, in one line."""
        lowest, highest = distribute.position_agreement(self.strategy)(images_seen)
        if lowest != highest:
            raise TrainingError(
                f"the workers start from different snapshots (kimg {lowest / 1000:g} to "
                f"{highest / 1000:g}; this one: {images_seen / 1000:g}): they do not all see the "
                f"same {self.run_dir}; give every worker the chief's run directory on a shared "
                "file system, then launch the same job again (every worker)")

    def _stop_agreed(self) -> bool:
        """Whether to stop before the next compiled call: asked of any worker (the cluster may
        signal only some), agreed by all, so that every worker stops after the same iteration."""
        self._stopping = self._agree_stop(self._stop_requested)
        return self._stopping

    def _data_fault(self, error, stage: Stage, last_snapshot: int) -> DataReadFault | None:
        """The `DataReadFault` of a compiled call that failed reading the data set (a level
        file cut short or changed under the streaming reader), naming the file; None for
        any other error."""
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        # the streaming reader's own words, raised inside the graph's input function
        said = [line.split("DatasetError: ", 1)[1] for line in lines if "DatasetError: " in line]
        if not (said or isinstance(error, (tf.errors.DataLossError, tf.errors.OutOfRangeError))
                or any("record" in line.lower() for line in lines)):
            return None
        from progan.dataset.format import find_level_files

        try:
            level = find_level_files(self.data).get(stage.resolution, self.data)
        except OSError:
            level = self.data
        detail = said[0] if said else (f"{level}: " + next(
            (line for line in lines if "record" in line.lower()), lines[0] if lines else "")[:160])
        return DataReadFault(
            f"{detail} ({type(error).__name__} while training at {stage.resolution}x"
            f"{stage.resolution}); the snapshot at kimg {last_snapshot / 1000:g} is kept; repair "
            f"or rebuild the data set, then: progan resume {self.run_dir}")

    def _roll_back(self, rollbacks: dict) -> int:
        latest = self.run.snapshots("full")[-1].images_seen
        rollbacks[latest] = rollbacks.get(latest, 0) + 1
        if rollbacks[latest] > 1:
            raise TrainingError(
                f"{self.config.training.max_nonfinite_steps} non-finite steps in a row again after "
                f"rolling back to kimg {latest / 1000:.1f}; lower the learning rate "
                f"(progan finetune {self.run_dir} --lr-scale 0.5 ...)")
        seen = self.restore()
        self.state.nonfinite_streak.assign(0)
        self.reporter.log(f"{self.config.training.max_nonfinite_steps} non-finite steps in a row: "
                          f"rolled back to the snapshot at kimg {seen / 1000:.1f}")
        return seen

    def _tick(self, tick, stage: Stage, images_seen: int, clock: TickClock) -> dict:
        means = self.stats.take()
        current = self.schedule.stage_at(min(images_seen, self.schedule.total_images - 1))
        stats = {
            "tick": tick, "kimg": images_seen / 1000, "images_seen": images_seen,
            "total_kimg": self.schedule.total_kimg,
            "resolution": stage.resolution, "phase": stage.phase, "fading": stage.fading,
            "alpha": current.alpha if current.index == stage.index else 1.0,
            **{name: means[name] for name in ("loss_d", "penalty", "loss_g", "wasserstein")},
            **self.timer.finish(clock, stage, images_seen),
            "skipped_steps": int(self.state.skipped_steps.numpy()),
            "loss_scale": float(self.state.loss_scale.scale.numpy()),
            "g_lr": stage.g_lr, "d_lr": stage.d_lr,
        }
        if self.config.model.label_size:  # the label cross-entropy of reals + fakes (D side)
            stats["label_penalty"] = means["label_penalty"]
        if self.config.loss.augment:  # the augmentation strength (and r_t when adaptive)
            stats["augment_p"] = float(self.state.augment["augment_p"].numpy())
            if self.config.loss.augment_target is not None:
                stats["augment_rt"] = float(self.state.augment["augment_rt"].numpy())
        self.reporter.tick(stats)
        first_estimate = self.timer.first_estimate(clock, stage, stats)
        if first_estimate:
            self.reporter.log(first_estimate)
        return stats

    def _warn_frozen_stages(self, images_seen: int) -> None:
        """FreezeD with as many blocks as a stage has freezes that stage's whole
        discriminator: it would train G against a fixed D there, so say so at the start."""
        freeze_d = self.config.optimizer.freeze_d
        frozen = [stage for stage in self.schedule.stages() if stage.end_images > images_seen
                  and stage.resolution.bit_length() - 2 <= freeze_d]
        if freeze_d and frozen:
            last = frozen[-1]
            self.reporter.warn(
                f"warning: optimizer.freeze_d {freeze_d} freezes every discriminator block up to "
                f"{last.resolution}x{last.resolution} (until kimg {last.end_images / 1000:g}): "
                "D does not learn there")

    def _summarise(self) -> None:
        """The start-up summary: in the log, on stdout and as TensorBoard text."""
        from progan.config import PRESETS

        previous = self.run.read_stats()
        self.timer.elapsed_before = previous[-1].get("elapsed_sec", 0.0) if previous else 0.0
        lines = startup_summary(self.config, self.data, self.strategy, self.run_dir, PRESETS)
        for line in lines:
            self.reporter.log(line)
        self.reporter.text("settings", "\n".join(f"    {line}" for line in lines)
                           + "\n\n```json\n" + self.config.to_json() + "\n```")

    # -- around the loop ---------------------------------------------------------------------

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
        grid = image_grid(reals, self.config.training.grid_size)
        save_png(path, grid)
        self.reporter.images("reals", grid, 0)

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

    def request_stop(self) -> None:
        self._stop_requested = True
