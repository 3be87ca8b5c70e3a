"""Starting, continuing and fine-tuning runs: what `progan train / resume / finetune` call.

    train(config, data, "runs/x")           # a new run (or the same command again: continue)
    resume("runs/x")                        # continue from the newest readable snapshot
    finetune("runs/x", "runs/y", snapshot="best", lr_scale=0.8, kimg=100)

Everything a command needs (config, data levels, batch against replicas and minibatch-stddev
groups, the data set's fingerprint) is checked before the run directory is created or
touched; the process that trains a run holds its lock (`progan.run.RunLock`) for its whole
life. The loop itself is `progan.training.loop.Trainer`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
from pathlib import Path

from progan.config import Config
from progan.run import RunDir, RunInfo, check_output_dir, data_fingerprint
from progan.training import distribute
from progan.training.loop import NoSnapshotError, Trainer, TrainingError, check_batches
from progan.training.report import Reporter
from progan.schedule import Schedule

__all__ = ["Trainer", "TrainingError", "check_batches", "check_data", "conditional_config",
           "finetune", "resume", "train"]


def make_strategy(name: str):
    """`distribute.make_strategy`, with a strategy the machine cannot give (no TPU, a
    cluster that does not answer) as one `TrainingError` line."""
    try:
        return distribute.make_strategy(name)
    except distribute.DistributeError:
        raise
    except Exception as error:  # noqa: BLE001 - TensorFlow's resolvers raise many kinds
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise TrainingError(f"--strategy {name}: not available here ({type(error).__name__}: "
                            f"{first}); choose one, mirrored or auto") from None


def check_channels(data: Path, info, config: Config) -> None:
    """The data set's images have the model's channel count (1 or 3): from what the reader
    found in the records when it says, else from dataset.json, else (a reference-tool data
    set) from its first image."""
    from progan.dataset.reader import read_images

    channels = getattr(info, "channels", None)
    if channels is None and info.manifest is not None:
        channels = info.manifest.get("channels", 3)
    if channels is None and info.level_files and info.train_count:
        channels = int(read_images(data, min(info.level_files), "train", 1).shape[-1])
    if channels is not None and channels != config.model.num_channels:
        raise TrainingError(f"--data {data}: has {channels}-channel images, expected "
                            f"{config.model.num_channels} (the model's num_channels; set "
                            f"model.num_channels {channels} in --config to train on it)")


def check_data(data: Path, config: Config, schedule: Schedule) -> str:
    """The data set has the model's channels and every level the config trains on; returns
    its fingerprint."""
    from progan.dataset.reader import open_dataset

    info = open_dataset(data)
    check_channels(data, info, config)
    needed = schedule.stages()
    missing = sorted({stage.resolution for stage in needed} - set(info.level_files))
    if missing:
        largest = max(info.level_files, default=0)
        hint = (f"; train to its top level with --max-resolution {largest}, or use --config demo "
                "(32x32)" if largest >= 4 else "")
        raise TrainingError(f"--data {data}: has no {missing[0]}x{missing[0]} level, which the "
                            f"config needs (max_resolution {config.model.max_resolution}; the "
                            f"data set's largest is {largest}x{largest}){hint}")
    if info.train_count < 1:
        raise TrainingError(f"--data {data}: the train split is empty")
    return data_fingerprint(data)


def conditional_config(config: Config, data: Path) -> Config:
    """``config`` conditioned on the labels of the data set (`progan train --conditional`)."""
    from progan.dataset import reader

    labels = reader.read_labels(data, split="train")
    size = 0 if labels is None else labels.values.shape[1]
    if size == 0:
        raise TrainingError(f"--conditional: {data} has no labels (build it with create_celeba "
                            "--attributes, create_tfds, create_from_images --labels folders or "
                            "create_synthetic)")
    return config.replace(**{"model.label_size": int(size), "model.label_kind": labels.kind})


def _check_new_run_dir(run: RunDir, flag: str) -> None:
    check_output_dir(run.path, flag)
    if run.path.is_dir() and not run.exists() and any(
            path.name != ".lock" for path in run.path.iterdir()):
        raise TrainingError(f"{flag} {run.path}: exists and is not a run directory; choose another")


@contextlib.contextmanager
def _undone_on_failure(run: RunDir):
    """A new run directory that a failure before its first snapshot leaves as it was: removed
    when this made it, emptied of what this wrote when it was an empty folder, so the same
    command (corrected) can be run again."""
    existed = run.path.exists()
    before = set(run.path.iterdir()) if existed else set()
    try:
        yield
    except BaseException:
        if not run.snapshots():
            if not existed:
                shutil.rmtree(run.path, ignore_errors=True)
            elif run.path.is_dir():
                for path in set(run.path.iterdir()) - before:
                    if path.is_dir():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
        raise


def _matching_data(run: RunDir, info: RunInfo, data: Path | None, allow_different: bool,
                   log, schedule: Schedule) -> RunInfo:
    """The run's data set, or ``data`` when it is a moved copy (same fingerprint) or the user
    allowed a different one; config.json is updated to the data actually used."""
    if data is None:
        data = info.data
        if not data.is_dir():
            raise TrainingError(f"{run.config_file}: its data set {data} is gone; point to where "
                                f"it is now with: progan resume {run.path} --data DIR")
    fingerprint = check_data(data, info.config, schedule)
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


def train(config: Config, data: Path, run_dir: Path, strategy=None, callbacks=()) -> dict:
    """Start a run in ``run_dir``, or continue it when it exists with the same config and data.

    ``callbacks``: see `Trainer` (called on the chief after every snapshot)."""
    run = RunDir(run_dir)
    schedule = Schedule.of(config)
    strategy = strategy or make_strategy(config.training.strategy)
    check_batches(config, strategy, schedule)
    fingerprint = check_data(data, config, schedule)
    if not distribute.is_chief(strategy):  # workers write nothing; the chief checks and writes
        return _train(config, data, run, strategy, schedule, callbacks)
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
        return resume(run.path, data, strategy=strategy, callbacks=callbacks)
    _check_new_run_dir(run, "--out")
    with _undone_on_failure(run), run.lock("progan train"):
        if run.exists():
            raise TrainingError(f"--out {run.path}: another process started this run just now")
        run.write(RunInfo(config, Path(data).resolve(), fingerprint))
        return _train(config, data, run, strategy, schedule, callbacks)


def resume(run_dir: Path, data: Path | None = None, allow_different_data: bool = False,
           strategy=None, callbacks=(), total_kimg: float | None = None,
           restart: bool = False, max_resolution: int | None = None) -> dict:
    """Continue a run from its newest readable snapshot; ``data``: where its data set is now;
    ``total_kimg``: train it to this many kimg instead; ``max_resolution``: grow it on to this
    resolution (both recorded in config.json); ``restart``: start a run that has no readable
    full snapshot again from kimg 0."""
    run = RunDir(run_dir)
    info = run.read()
    config = _extended(run, info.config, total_kimg, max_resolution)
    schedule = Schedule.of(config)
    strategy = strategy or make_strategy(config.training.strategy)
    check_batches(config, strategy, schedule)
    if not distribute.is_chief(strategy):
        return _train(config, data or info.data, run, strategy, schedule, callbacks, restart)
    with run.lock("progan resume"):
        info = run.read()
        if config != info.config:
            before = info.config
            Reporter(run).log(
                f"the run now ends at kimg {schedule.total_kimg:g} at {config.model.max_resolution}x"
                f"{config.model.max_resolution} (was {Schedule.of(before).total_kimg:g} at "
                f"{before.model.max_resolution}x{before.model.max_resolution}), as "
                "--total-kimg / --max-resolution say")
            info = dataclasses.replace(info, config=config)
            run.write(info)
        info = _matching_data(run, info, data, allow_different_data, Reporter(run).warn,
                              schedule)
        return _train(info.config, info.data, run, strategy, schedule, callbacks, restart)


def _extended(run: RunDir, config: Config, total_kimg: float | None,
              max_resolution: int | None) -> Config:
    """``config`` grown to ``max_resolution`` (its schedule then runs to the new top's stable
    end unless ``total_kimg`` says) and ending at ``total_kimg``, which must lie past the
    newest snapshot of the run."""
    import math

    overrides = {}
    if max_resolution is not None and max_resolution != config.model.max_resolution:
        if not max_resolution > config.model.max_resolution:
            raise TrainingError(
                f"--max-resolution {max_resolution}: {run.path} already trains to "
                f"{config.model.max_resolution}x{config.model.max_resolution}; a run can grow, "
                "not shrink (fine-tune into a new run for anything else)")
        overrides = {"model.max_resolution": max_resolution, "schedule.total_kimg": None}
    if total_kimg is not None:
        if not (isinstance(total_kimg, (int, float)) and math.isfinite(total_kimg)
                and total_kimg > 0):
            raise TrainingError(f"--total-kimg {total_kimg}: expected a positive number of kimg")
        overrides["schedule.total_kimg"] = float(total_kimg)
    if not overrides:
        return config
    extended = config.replace(**overrides)
    snapshots = run.snapshots("full")
    reached = snapshots[-1].images_seen / 1000 if snapshots else 0.0
    if Schedule.of(extended).total_kimg <= reached:
        flag = (f"--total-kimg {total_kimg:g}" if total_kimg is not None
                else f"--max-resolution {max_resolution}")
        raise TrainingError(f"{flag}: {run.path} is already at kimg {reached:g}, and the run "
                            f"would end at kimg {Schedule.of(extended).total_kimg:g}; expected more")
    return extended


def _train(config: Config, data: Path, run: RunDir, strategy, schedule: Schedule,
           callbacks, restart: bool = False) -> dict:
    """Restore the newest readable snapshot and train on. A run with no readable full
    snapshot starts from kimg 0 only when it is new, or when ``restart`` says so: then what
    the earlier start wrote is moved aside first (`RunDir.move_aside_for_restart`)."""
    trainer = Trainer(config, data, run, strategy, schedule, callbacks)
    if trainer.chief:
        trainer.check_free_space()
    try:
        if run.snapshots("full"):
            seen = trainer.restore()
            if restart:
                raise TrainingError(f"--restart: {run.path} has a readable snapshot (kimg "
                                    f"{seen / 1000:g}); it resumes without --restart, and a run "
                                    "started afresh goes into a new directory")
            return trainer.train()
    except NoSnapshotError:
        if not restart:
            raise
    found = run.earlier_training() if trainer.chief else []
    if found and not restart:
        raise TrainingError(
            f"{run.path}: has no readable full snapshot but has trained before ("
            + "; ".join(found) + "); it does not start again from kimg 0 on its own. To do so "
            f"(those files are moved into a restart-* folder): progan resume {run.path} --restart")
    if found:
        aside, moved = run.move_aside_for_restart()
        trainer.reporter.warn(f"--restart: starting {run.path} again from kimg 0; moved "
                              f"{len(moved)} file(s) and folder(s) of the earlier start ("
                              + "; ".join(found) + f") into {aside}")
    return trainer.train()


def check_finetune_data(data: Path, config: Config, start: int, schedule: Schedule) -> str:
    """A data set to fine-tune on from images seen ``start``: the model's channel count and
    every level the stages from there to the end of the (fine-tuning) schedule train on; its
    maximum resolution may be lower than the model's. Returns its fingerprint."""
    from progan.dataset.reader import open_dataset

    info = open_dataset(data)
    check_channels(data, info, config)
    stage = schedule.stage_at(start)
    needed = sorted({s.resolution for s in schedule.stages() if s.end_images > start})
    missing = [r for r in needed if r not in info.level_files]
    if missing:
        largest = max(info.level_files, default=0)
        raise TrainingError(
            f"--data {data}: has no {missing[0]}x{missing[0]} level (largest {largest}x{largest}); "
            f"the snapshot trains at {stage.resolution}x{stage.resolution} and the fine-tuning "
            f"schedule reaches {needed[-1]}x{needed[-1]}, so expected levels "
            + ", ".join(str(r) for r in needed))
    if info.train_count < 1:
        raise TrainingError(f"--data {data}: the train split is empty")
    return data_fingerprint(data)


def finetune(run_dir: Path, out: Path, snapshot: str = "latest", lr_scale: float = 0.8,
             kimg: float = 100.0, reset_optimizer: bool = False, strategy=None,
             data: Path | None = None, overrides: dict | None = None, callbacks=()) -> dict:
    """Continue from a full snapshot's state at ``lr_scale`` times the learning rates for
    ``kimg`` more kimg, in a new run directory whose config.json records where it came from.

    ``data``: fine-tune on another data set (the same channels, and the levels from the
    snapshot's resolution to where the fine-tuning schedule ends; its maximum resolution may
    be lower than the model's). ``overrides``: dotted settings for the new run (e.g.
    ``{"loss.augment": ["translation"], "optimizer.freeze_d": 2}``). With either, the
    augmentation strength and its r_t accumulators start afresh (`TrainingState.reset_augment`).
    """
    source = RunDir(run_dir)
    info = source.read()
    target = RunDir(out)
    check_output_dir(target.path, "--out")
    if target.exists() or (target.path.exists() and any(target.path.iterdir())):
        raise TrainingError(f"--out {target.path}: exists; choose a new directory for the "
                            "fine-tuning run")
    for flag, value in (("--lr-scale", lr_scale), ("--kimg", kimg)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise TrainingError(f"{flag} {value}: expected a positive finite number")
    start, chosen = source.select_one(snapshot, kind="full")
    print(f"progan finetune: starting from {chosen} of {source.path}", flush=True)
    base = info.config
    optimizer = dataclasses.replace(
        base.optimizer, g_lr=base.optimizer.g_lr * lr_scale, d_lr=base.optimizer.d_lr * lr_scale,
        lr_by_resolution={r: lr * lr_scale for r, lr in base.optimizer.lr_by_resolution.items()})
    config = dataclasses.replace(base, optimizer=optimizer, schedule=dataclasses.replace(
        base.schedule, total_kimg=start / 1000 + kimg))
    if overrides:
        config = config.replace(**overrides)
    schedule = Schedule.of(config)
    strategy = strategy or make_strategy(config.training.strategy)
    check_batches(config, strategy, schedule)
    origin = {"run": str(source.path.resolve()), "images_seen": start, "kimg": start / 1000,
              "snapshot": snapshot, "lr_scale": lr_scale, "reset_optimizer": reset_optimizer,
              "data_fingerprint": info.data_fingerprint}
    if data is None:
        if not info.data.is_dir():
            raise TrainingError(f"{source.config_file}: its data set {info.data} is gone")
        data, fingerprint = info.data, check_data(info.data, config, schedule)
    else:
        data = Path(data).resolve()
        fingerprint = check_finetune_data(data, config, start, schedule)
        origin.update({"source_data": str(info.data), "new_data": str(data),
                       "new_data_fingerprint": fingerprint})
    # Everything that can fail on what was asked (the snapshot, labels, free space) before
    # the new run directory exists; a failure after it leaves none behind.
    trainer = Trainer(config, data, target, strategy, schedule, callbacks)
    trainer.restore(start, run=source)
    trainer.check_free_space()
    with _undone_on_failure(target), target.lock("progan finetune"):
        target.write(RunInfo(config, data, fingerprint, origin))
        trainer.state.optimizer_stage.assign(trainer.schedule.stage_at(start).index)
        if reset_optimizer:
            trainer.state.reset_optimizers()
        if data != info.data or overrides:
            trainer.state.reset_augment()
        trainer.reporter.log(f"fine-tuning {source.path} from kimg {start / 1000:.1f} at "
                             f"{lr_scale:g} x the learning rates for {kimg:g} kimg")
        return trainer.train()
