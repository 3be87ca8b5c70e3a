"""The Python functions behind the commands, with the commands' defaults.

    import progan
    progan.train()                                       # the demo: synthetic faces -> runs/demo
    progan.train(data="tfrecords/celeba", out="runs/c", config="celeba64", total_kimg=4000)
    progan.resume("runs/c")                              # or resume("runs/c", total_kimg=8000)
    progan.finetune("runs/c", "runs/c-ft", snapshot="best", lr_scale=0.8, kimg=2000)
    progan.evaluate("runs/c", metrics="swd,msssim", snapshot="all")
    generator = progan.load_generator("runs/c", "best")
    images = progan.generate(generator, seeds=range(16))  # uint8 [16, R, R, C]
    frames = progan.interpolate("runs/c", seeds=[1, 2, 3], out="walk.gif")
    progan.export("runs/c", "exported/")

This is the one place that wires a run: it checks what was asked, builds the trainer's
callbacks (metrics during training) and calls `progan.training`, `progan.evaluation` and
`progan.generation`. Every failure meant for the user is a `progan.errors.ProganError` with
one line naming the setting or file. Importing this module loads no TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from progan.errors import ProganError

DEFAULT_DATA = Path("tfrecords/synthetic")
DEFAULT_RUN = Path("runs/demo")
DEMO_DATA = {"num_images": 4096, "resolution": 32, "seed": 0}

# Keyword (and, with dashes, command-line flag) -> the dotted setting it sets.
SETTINGS = {
    "max_resolution": "model.max_resolution",
    "latent_size": "model.latent_size",
    "fmap_base": "model.fmap_base",
    "fmap_max": "model.fmap_max",
    "fused_scale_from": "model.fused_scale_from",
    "fade_kimg": "schedule.fade_kimg",
    "stable_kimg": "schedule.stable_kimg",
    "total_kimg": "schedule.total_kimg",
    "batch": "schedule.batch_size",
    "loss": "loss.name",
    "augment": "loss.augment",
    "augment_p": "loss.augment_p",
    "augment_target": "loss.augment_target",
    "freeze_d": "optimizer.freeze_d",
    "seed": "training.seed",
    "tick_kimg": "training.tick_kimg",
    "snapshot_kimg": "training.snapshot_kimg",
    "keep_checkpoints": "training.keep_checkpoints",
    "strategy": "training.strategy",
    "mixed_precision": "training.mixed_precision",
    "xla": "training.xla",
    "deterministic": "training.deterministic",
    "mirror": "training.mirror",
    "steps_per_call": "training.steps_per_call",
    "metrics": "training.metrics",
    "metrics_kimg": "training.metrics_kimg",
    "metrics_num_images": "training.metrics_num_images",
}
# The keywords that take a comma-separated list (or a Python list).
LIST_SETTINGS = ("augment", "metrics")


class ApiError(ProganError, ValueError):
    """A call's arguments cannot work; the message names the argument and what was expected."""


def settings_of(overrides: dict, lr: float | None = None) -> dict:
    """Dotted settings for keyword overrides (``total_kimg=4`` -> ``schedule.total_kimg``).

    ``lr`` sets both networks' learning rate and replaces any per-resolution rates (the
    start-up summary lists every setting that differs from the preset, these included)."""
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise ApiError(f"{unknown[0]}: not a setting; expected one of {', '.join(SETTINGS)}")
    dotted = {}
    for name, value in overrides.items():
        if value is None:
            continue
        if name in LIST_SETTINGS and isinstance(value, str):
            value = [item for item in value.split(",") if item]
        dotted[SETTINGS[name]] = list(value) if name in LIST_SETTINGS else value
    if lr is not None:
        dotted.update({"optimizer.g_lr": lr, "optimizer.d_lr": lr, "optimizer.lr_by_resolution": {}})
    return dotted


def make_config(config=None, default: str = "demo", settings: dict | None = None, **overrides):
    """A `progan.config.Config`: a preset name, a JSON file or a Config (default ``default``),
    with keyword overrides (see `SETTINGS`; ``lr=`` sets both rates) and dotted ``settings``."""
    from progan.config import Config, load_config

    lr = overrides.pop("lr", None)
    base = config if isinstance(config, Config) else load_config(config or default)
    dotted = {**settings_of(overrides, lr), **(settings or {})}
    return base.replace(**dotted) if dotted else base


def _callbacks(run_dir: Path, config) -> list:
    from progan.evaluation.run import training_metrics

    return training_metrics(run_dir, config.training)


# -- training ----------------------------------------------------------------------------------


def _strategy(config, gpus: int | None):
    """The strategy of ``config`` on the first ``gpus`` GPUs (None: the trainer's default)."""
    if gpus is None:
        return None
    from progan.training import distribute

    return distribute.make_strategy(config.training.strategy, gpus)


def train(data=None, out=None, config=None, conditional: bool = False,
          settings: dict | None = None, log=print, gpus: int | None = None, **overrides) -> dict:
    """Train progressively; returns the last tick's statistics (``stopped``: on request).

    Without ``data``: the built-in demo, the synthetic face set built once into
    ``tfrecords/synthetic`` and the ``demo`` preset into ``runs/demo``. With ``data``: the
    ``celeba64`` preset unless ``config`` says otherwise, and ``out`` is required. The same
    call on an existing run with the same settings continues it.

    Args:
        data: a prepared data set directory (`progan-dataset`).
        out: the run directory.
        config: a preset name (``demo``, ``celeba64``, ``paper``), a JSON file or a `Config`.
        conditional: condition both networks on the data set's labels.
        settings: dotted settings, e.g. ``{"optimizer.d_lr": 0.003}``.
        gpus: train on the first this many visible GPUs (of each worker); default: all.
        **overrides: the command's override flags as keywords (`SETTINGS`, and ``lr``).
    """
    from progan.training import trainer

    config = make_config(config, "demo" if data is None else "celeba64", settings, **overrides)
    if data is None:
        from progan.dataset.synthetic import ensure_synthetic
        from progan.schedule import Schedule

        log(f"progan train: no --data given, so this runs the built-in demo: the synthetic face "
            f"set ({DEMO_DATA['num_images']} images, built once into {DEFAULT_DATA}) and the "
            f"config's schedule, 4x4 -> {config.model.max_resolution}x"
            f"{config.model.max_resolution} ({Schedule.of(config).total_kimg:g} kimg)")
        data = ensure_synthetic(DEFAULT_DATA, **DEMO_DATA)
        out = DEFAULT_RUN if out is None else out
    elif out is None:
        raise ApiError("--out: required with --data (the run directory to write)")
    data, out = Path(data), Path(out)
    if conditional:
        config = trainer.conditional_config(config, data)
    return trainer.train(config, data, out, strategy=_strategy(config, gpus),
                         callbacks=_callbacks(out, config))


def resume(run, data=None, allow_different_data: bool = False, total_kimg: float | None = None,
           gpus: int | None = None, restart: bool = False,
           max_resolution: int | None = None) -> dict:
    """Continue a run from its newest readable snapshot.

    Args:
        run: the run directory (its config.json holds every setting).
        data: where the run's data set is now, if it moved (checked by fingerprint).
        allow_different_data: continue on a ``data`` set with another fingerprint.
        total_kimg: extend the run to this many kimg; recorded in config.json.
        max_resolution: grow the run on to this resolution (new blocks fade in after the
            last stage, to the new top's stable end unless ``total_kimg`` says); the data set
            needs the new levels; recorded in config.json.
        gpus: train on the first this many visible GPUs (of each worker); default: all.
        restart: start a run that has no readable full snapshot again from kimg 0 (what its
            earlier start wrote is moved into a restart-* folder); never needed otherwise.
    """
    from progan.run import RunDir
    from progan.training import trainer

    run = Path(run)
    config = RunDir(run).read().config
    return trainer.resume(run, None if data is None else Path(data), allow_different_data,
                          strategy=_strategy(config, gpus), callbacks=_callbacks(run, config),
                          total_kimg=total_kimg, restart=restart,
                          max_resolution=max_resolution)


def finetune(run, out, kimg: float, snapshot: str = "latest", lr_scale: float = 0.8,
             reset_optimizer: bool = False, data=None, gpus: int | None = None,
             **overrides) -> dict:
    """Continue from a full snapshot at ``lr_scale`` times the learning rates for ``kimg``
    more kimg, in a new run ``out`` whose config.json records where it came from.

    ``data``: fine-tune on another data set (transfer). ``gpus``: fine-tune on the first this
    many visible GPUs (of each worker); default: all. ``overrides``: ``augment``,
    ``augment_p``, ``augment_target``, ``freeze_d`` of the new run.
    """
    from progan.run import RunDir
    from progan.training import trainer

    allowed = {"augment", "augment_p", "augment_target", "freeze_d"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise ApiError(f"{unknown[0]}: not a fine-tuning setting; expected one of "
                       f"{', '.join(sorted(allowed))}")
    dotted = settings_of(overrides)
    config = RunDir(run).read().config
    return trainer.finetune(Path(run), Path(out), str(snapshot), lr_scale, kimg, reset_optimizer,
                            strategy=_strategy(config, gpus),
                            data=None if data is None else Path(data), overrides=dotted or None,
                            callbacks=_callbacks(Path(out), config))


# -- evaluation --------------------------------------------------------------------------------


def evaluate(run, metrics="swd", snapshot: str = "latest", num_images: int | None = None,
             split: str = "test", seed: int = 0, feature_extractor: str = "inception",
             inception_weights=None, inception_graph=None, log=print, data=None) -> list[dict]:
    """Metrics of a run's snapshots, appended to metrics.jsonl; metrics.png and best.json are
    brought up to date. Returns the new records (one per snapshot and metric).

    ``snapshot``: ``latest``, ``all``, ``best``, ``best:METRIC``, or snapshots as
    ``ls RUN/checkpoints`` shows them or by kimg, comma-separated. ``data``: where the run's
    data set is now, if it moved (checked by its fingerprint).
    """
    from progan.evaluation.registry import METRICS
    from progan.evaluation.run import evaluate_run, make_feature_extractor, parse_metrics

    metrics = parse_metrics(metrics)
    extractor = None
    if any(METRICS[metric].needs_features for metric in metrics):
        try:
            extractor = make_feature_extractor(feature_extractor, inception_weights,
                                               inception_graph, progress=True)
        except (ValueError, FileNotFoundError, RuntimeError) as error:
            raise ApiError(str(error)) from None
    return evaluate_run(Path(run), metrics, num_images, str(snapshot), split, seed, extractor,
                        log=log, data=None if data is None else Path(data))


# -- generation --------------------------------------------------------------------------------


def load_generator(run, snapshot: str = "latest", log=None):
    """The EMA generator of a run's snapshot (`progan.generation.LoadedGenerator`: model,
    stage, config, images seen, labels), at that snapshot's resolution and fade-in."""
    from progan.generation import load_generator as load

    return load(Path(run), str(snapshot), log=log)


def _loaded(generator, snapshot: str, log):
    if isinstance(generator, (str, Path)):
        return load_generator(generator, snapshot, log=log)
    from progan.generation import LoadedGenerator

    if not isinstance(generator, LoadedGenerator):
        raise ApiError(f"generator: expected a run directory or what load_generator returns, got "
                       f"{type(generator).__name__}")
    return generator


def _seed_list(seeds) -> list[int]:
    from progan.images import parse_seeds

    if isinstance(seeds, str):
        try:
            return parse_seeds(seeds)
        except ValueError as error:
            raise ApiError(str(error)) from None
    return [int(seed) for seed in seeds]


def labels_for(loaded, seeds: list[int], labels=None, labels_from: int | None = None,
               walk: bool = False):
    """The label rows of ``seeds`` for a conditional run (None for an unconditional one):
    drawn with each seed, or training image ``labels_from``'s, then ``labels`` forced
    (``"Smiling,-Male"``; with ``walk``, one spec per seed separated by ';')."""
    from progan.images import apply_label_request, parse_label_request

    if loaded.labels is None:
        if labels is not None or labels_from is not None:
            raise ApiError("--labels: this run is not conditional (trained without labels)")
        return None
    table = loaded.labels
    rows = loaded.seed_labels(seeds)
    if labels_from is not None:
        if not 0 <= labels_from < len(table.values):
            raise ApiError(f"--labels-from {labels_from}: expected an index below "
                           f"{len(table.values)} (the training images)")
        rows[:] = table.values[labels_from]
    if labels is None:
        return rows
    specs = labels.split(";") if walk else [labels]
    if len(specs) not in (1, len(seeds)):
        raise ApiError(f"--labels {labels}: expected one spec or one per seed ({len(seeds)}), "
                       "separated by ';'")
    per_seed = specs if len(specs) == len(seeds) else specs * len(seeds)
    try:
        for row, spec in enumerate(per_seed):
            wanted = parse_label_request(spec, table.names)
            rows[row:row + 1] = apply_label_request(rows[row:row + 1], wanted, table.kind)
    except ValueError as error:
        raise ApiError(str(error)) from None
    return rows


def generate(generator, seeds="0-63", truncation: float | None = None, labels=None,
             labels_from: int | None = None, snapshot: str = "latest", out=None, log=None):
    """uint8 images [len(seeds), R, R, C]: image i from the latent of ``seeds[i]`` (the
    training grids' convention). ``generator``: a run directory (its ``snapshot``) or what
    `load_generator` returns; ``seeds``: ints or ``"0-7,12"``. ``out``: also write a grid
    (``.png``) or one ``seedNNNN.png`` per image into a directory."""
    from progan.generation import generate as draw

    if out is not None:
        check_image_out(out)
    loaded = _loaded(generator, snapshot, log)
    seeds = _seed_list(seeds)
    _check_memory(loaded, len(seeds))
    rows = labels_for(loaded, seeds, labels, labels_from)
    try:
        images = draw(loaded.model, seeds, truncation, labels=rows,
                      progress=len(seeds) >= PROGRESS_IMAGES)
    except ValueError as error:
        raise ApiError(str(error)) from None
    if out is not None:
        _write_images(Path(out), images, seeds)
    return images


MAX_IMAGE_BYTES = 2 << 30  # generate holds every image in memory: 2 GiB of uint8 at most
PROGRESS_IMAGES = 1024     # a progress bar from this many images on


def _check_memory(loaded, count: int) -> None:
    resolution, channels = loaded.stage.resolution, loaded.config.model.num_channels
    needed = count * resolution * resolution * channels
    if needed > MAX_IMAGE_BYTES:
        most = MAX_IMAGE_BYTES // (resolution * resolution * channels)
        raise ApiError(f"--seeds: {count:,} images of {resolution}x{resolution}x{channels} need "
                       f"{needed / 2**30:.1f} GiB of memory; at most {most:,} per command "
                       f"({MAX_IMAGE_BYTES / 2**30:g} GiB): split the seeds over several commands")


def check_image_out(out) -> None:
    """``--out`` of generate: a .png file name or a directory, in a place that can be written."""
    from progan.run import RunError, check_output_dir

    out = Path(out)
    if out.suffix and out.suffix.lower() != ".png":
        raise ApiError(f"--out {out}: expected a .png file name or a directory")
    if out.suffix and out.is_dir():
        raise ApiError(f"--out {out}: is a directory; expected a .png file name")
    try:
        check_output_dir(out.parent if out.suffix else out, "--out")
    except RunError as error:
        raise ApiError(str(error)) from None


def _write_images(out: Path, images, seeds) -> None:
    from progan.images import image_grid, save_png

    try:
        if out.suffix:
            out.parent.mkdir(parents=True, exist_ok=True)
            save_png(out, image_grid(images))
        else:
            out.mkdir(parents=True, exist_ok=True)
            for seed, image in zip(seeds, images):
                save_png(out / f"seed{seed:04d}.png", image, min_size=1)
    except OSError as error:  # a full disk, or a folder that went read-only meanwhile
        raise ApiError(f"--out {out}: cannot write the images ({error})") from None


def check_walk(seeds, steps: int, fps: float, out) -> list[int]:
    """The seeds of a latent walk, after checking its arguments (before any loading)."""
    seeds = _seed_list(seeds)
    if len(seeds) < 2:
        raise ApiError(f"--seeds {','.join(map(str, seeds))}: expected at least two seeds")
    if steps < 1 or fps <= 0:
        raise ApiError(f"--steps {steps} --fps {fps}: expected positive numbers")
    if out is not None and Path(out).suffix.lower() not in (".gif", ".mp4"):
        raise ApiError(f"--out {out}: expected a .gif or .mp4 file name")
    if out is not None:
        from progan.run import RunError, check_output_dir

        try:
            check_output_dir(Path(out).parent, "--out")
        except RunError as error:
            raise ApiError(str(error)) from None
    return seeds


def interpolate(generator, seeds="1,2,3", steps: int = 30, truncation: float | None = None,
                labels=None, labels_from: int | None = None, snapshot: str = "latest", out=None,
                fps: float = 24.0, size: int = 256, log=None):
    """A slerp walk through the latents of ``seeds`` in order, ``steps`` frames per pair:
    uint8 frames [F, R, R, C]; ``out``: also write them as a GIF (or MP4), frames enlarged to
    at least ``size`` pixels."""
    from progan.generation import interpolate as walk, save_animation

    seeds = check_walk(seeds, steps, fps, out)
    loaded = _loaded(generator, snapshot, log)
    rows = labels_for(loaded, seeds, labels, labels_from, walk=True)
    frames = walk(loaded.model, seeds, steps, truncation, labels=rows)
    if out is not None:
        try:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            save_animation(Path(out), frames, fps, size)
        except (ValueError, OSError) as error:
            raise ApiError(f"--out {out}: {error}" if isinstance(error, OSError) else str(error)) from None
    return frames


def export(run, out, snapshot: str = "latest", log=None) -> dict:
    """The EMA generator as a TensorFlow SavedModel (latents -> uint8 images) and a
    ``generator.keras`` of Keras's own layers, in ``out``; returns what export.json says."""
    from progan.generation import export as write

    return write(Path(run), Path(out), str(snapshot), log=log)


__all__ = ["ApiError", "evaluate", "export", "finetune", "generate", "interpolate",
           "load_generator", "make_config", "resume", "train"]
