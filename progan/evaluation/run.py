"""Evaluate a run's snapshots: metrics.jsonl, metrics.png and checkpoints/best.json.

For each snapshot the EMA generator draws ``num_images`` images (seeds 0 .. num_images - 1,
the same for every snapshot, as `progan generate --seeds` draws them) at the stage it was in (its resolution and fade-in alpha), and they
are compared with as many real images of the run's dataset at that resolution:

* ``swd``: sliced Wasserstein distance x10^3 averaged over the Laplacian levels (per level
  in ``values``); lower is better;
* ``msssim``: MS-SSIM of the ``num_images // 2`` consecutive fake pairs (diversity; the
  paper used 10,000 pairs; needs >= 16x16) and, as ``real_value``, of the real images; the
  better snapshot is the one *closest* to the real value (too high means too little
  variety, mode collapse; too low, noise);
* ``fid``, ``kid``: Frechet / kernel distance of the feature extractor's features (Inception
  for published numbers); the real statistics are cached in ``DATA/.cache/`` keyed by the
  level file's sha256, resolution, split, count and extractor. Lower is better.

Real images come from the ``test`` split (as in the thesis); when it has fewer than
``num_images`` the ``train`` split is used instead, with a one-line warning.

Every result is one JSON line of ``RUN/metrics.jsonl``. ``RUN/checkpoints/best.json`` then
names the run's primary metric (the first of the latest ``--metrics``; what ``--snapshot
best`` means) and, per metric, the best snapshot among those still on disk whose latest record is
comparable with the newest one (same number of images, split and feature extractor) *and* at
the highest resolution evaluated: values at different resolutions measure different things
(a 4x4 SWD is not better than a 32x32 one because it is smaller).

    evaluator = SnapshotEvaluator("runs/demo", ["swd"], num_images=2048)
    evaluator.evaluate(images_seen)       # {"swd": {"value": 12.3, ...}}
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from progan.errors import ProganError
from progan.evaluation import registry
from progan.run import RunDir, RunError

DEFAULT_NUM_IMAGES = 10000  # progan evaluate without --num-images (capped at the real images there are)
PLOT_FILE = "metrics.png"


class EvaluationError(ProganError, ValueError):
    """Impossible evaluation settings; the message names the flag and what was expected."""


def parse_metrics(text: str | list | tuple) -> tuple[str, ...]:
    """``"swd,fid"`` (or a list) -> ``("swd", "fid")``; unknown names are an error."""
    try:
        return registry.parse_metrics(text)
    except ValueError as error:
        raise EvaluationError(str(error)) from None


def make_feature_extractor(kind: str = "inception", inception_weights: str | Path | None = None,
                           inception_graph: str | Path | None = None, progress: bool = False):
    """The extractor for FID/KID: the 2015 Inception graph (``inception_graph``), Keras
    InceptionV3 with ``inception_weights`` (a file, or "imagenet" to download), or
    ``kind="random"``: a seeded random conv net, only meaningful for smoke tests."""
    from progan.evaluation.features import InceptionGraph2015, KerasInceptionV3, RandomConvFeatures

    if kind == "random":
        return RandomConvFeatures(seed=0, progress=progress)
    if kind != "inception":
        raise EvaluationError(f"--feature-extractor {kind}: expected inception or random")
    if inception_graph is not None:
        return InceptionGraph2015(inception_graph, progress=progress)
    if inception_weights is not None:
        return KerasInceptionV3(inception_weights, progress=progress)
    raise EvaluationError("--metrics fid/kid need Inception weights: pass --inception-graph "
                          "classify_image_graph_def.pb or --inception-weights FILE|imagenet "
                          "(or --feature-extractor random for a smoke test)")


class SnapshotEvaluator:
    """Evaluates snapshots of one run, keeping the generator, the feature extractor and the
    real images between calls (the trainer keeps one for its periodic evaluation).

    Args:
        run_dir: the run directory.
        metrics: names from ``METRICS``.
        num_images: fake images per snapshot (and real images to compare with); None for
            ``DEFAULT_NUM_IMAGES`` or, on a smaller data set, all of its real images.
        split: real images' split, ``test`` (falls back to ``train`` if too small) or ``train``.
        seed: the SWD / KID random sampling (the fakes are always seeds 0 .. num_images - 1).
        feature_extractor: a `progan.evaluation.FeatureExtractor`; needed for fid/kid.
        log: where result lines and warnings go.
        scalars: ``({"Metrics/<name>": value}, images_seen)`` -> None writing TensorBoard
            scalars (the trainer passes its own); default: an event file in the run directory.
        data: where the run's data set is now, if it moved (checked by the fingerprint in
            config.json; default: the recorded path).
    """

    def __init__(self, run_dir: Path, metrics=("swd",), num_images: int = 2048,
                 split: str = "test", seed: int = 0, feature_extractor=None,
                 log: Callable[[str], None] = print, scalars: Callable | None = None,
                 data: Path | None = None):
        from progan.networks import ProGAN

        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        info = self.run.read()
        self.config = info.config
        self.data = self._data_set(info, data)
        self.metrics = parse_metrics(metrics)
        # None: DEFAULT_NUM_IMAGES, or all the real images there are if the data set is smaller
        self._num_images_is_default = num_images is None
        num_images = DEFAULT_NUM_IMAGES if num_images is None else num_images
        if num_images < 2:
            raise EvaluationError(f"--num-images {num_images}: expected at least 2")
        if split not in ("test", "train"):
            raise EvaluationError(f"--split {split}: expected test or train")
        needing = [m for m in self.metrics if registry.METRICS[m].needs_features]
        if feature_extractor is None and needing:
            raise EvaluationError(f"--metrics {','.join(needing)} need a feature extractor: pass "
                                  "--inception-graph FILE.pb or --inception-weights FILE")
        unlabelled = [m for m in self.metrics if registry.METRICS[m].needs_labels]
        if unlabelled and not self.config.model.label_size:
            raise EvaluationError(f"--metrics {','.join(unlabelled)}: {self.run_dir} is not a "
                                  "conditional run (trained without --conditional)")
        self.run.read_metrics(checked=True)  # a record it cannot read stops it before any work
        self.num_images, self.split, self.seed = num_images, split, seed
        self.extractor = feature_extractor
        self.log = log
        self.scalars = scalars or self._write_scalars
        self._summary = None
        self._split: str | None = None
        self._reals: dict[int, np.ndarray] = {}
        self._real_values: dict[tuple, float] = {}
        self.real_split()  # too few real images is an error now, before any work
        self.networks = ProGAN(self.config.model, with_discriminator=False)

    def _data_set(self, info, data: Path | None) -> Path:
        """The run's data set: ``data`` when it is the same set (by fingerprint), else the
        recorded path, which must still be there."""
        from progan.run import data_fingerprint

        if data is None:
            if not Path(info.data).is_dir():
                raise EvaluationError(f"{self.run.config_file}: its data set {info.data} is gone; "
                                      f"give where it is now: progan evaluate {self.run_dir} --data DIR")
            return info.data
        data = Path(data)
        if info.data_fingerprint is not None:
            fingerprint = data_fingerprint(data)
            if fingerprint != info.data_fingerprint:
                raise EvaluationError(
                    f"--data {data}: a different data set (fingerprint {fingerprint}) from the one "
                    f"{self.run_dir} trained on ({info.data_fingerprint}, {info.data}); metrics "
                    "against other images would not compare with the run's")
        return data

    # -- real images ---------------------------------------------------------------------------

    def real_split(self) -> str:
        """The split the real images come from: ``split``, or ``train`` when the test split
        has fewer than ``num_images`` images (said once, in a warning line)."""
        if self._split is None:
            from progan.dataset.reader import open_dataset

            info = open_dataset(self.data)
            split = self.split
            first, stop = info.split_range(split)
            if stop - first < self.num_images and split == "test":
                self.log(f"warning: the test split of {self.data} has {stop - first} images, "
                         f"fewer than --num-images {self.num_images}; using the train split")
                split = "train"
                first, stop = info.split_range(split)
            if stop - first < self.num_images:
                if not self._num_images_is_default:
                    raise EvaluationError(f"--num-images {self.num_images}: the {split} split "
                                          f"of {self.data} has only {stop - first} images")
                if stop - first < 2:
                    raise EvaluationError(f"{self.data}: the {split} split has "
                                          f"{stop - first} images, metrics need at least 2")
                self.log(f"note: the {split} split of {self.data} has {stop - first} images; "
                         f"evaluating with {stop - first} instead of {self.num_images}")
                self.num_images = stop - first
            self._split = split
        return self._split

    def real_images(self, resolution: int) -> np.ndarray:
        """uint8 [num_images, R, R, C]: the first ``num_images`` images of `real_split`."""
        if resolution not in self._reals:
            from progan.dataset.reader import read_images

            self._reals[resolution] = read_images(self.data, resolution, self.real_split(),
                                                  self.num_images)
        return self._reals[resolution]

    def _cache_dir(self) -> Path:
        cache = self.data / ".cache"
        if os.access(self.data, os.W_OK) or os.access(cache, os.W_OK):
            return cache
        return self.run_dir.parent / ".progan-cache"

    def _level_sha256(self, resolution: int) -> str:
        from progan.dataset.format import file_sha256
        from progan.dataset.reader import open_dataset

        info = open_dataset(self.data)
        for level in (info.manifest or {}).get("levels", []):
            if level["resolution"] == resolution and level.get("sha256"):
                return level["sha256"]
        return file_sha256(info.level_file(resolution))

    def real_statistics(self, resolution: int):
        """Feature statistics of the real images, cached on disk."""
        from progan.evaluation.frechet import cached_statistics

        key = (f"r{resolution}-{self.real_split()}-{self.num_images}-{self.extractor.name}-"
               f"{self._level_sha256(resolution)}")
        return cached_statistics(self._cache_dir(), key,
                                 lambda: self.extractor.features(self.real_images(resolution)))

    # -- one snapshot ----------------------------------------------------------------------------

    def real_value(self, metric: str, resolution: int, compute) -> float:
        """A metric's value on the real images (e.g. their MS-SSIM), computed once."""
        key = (metric, resolution)
        if key not in self._real_values:
            self._real_values[key] = compute(self.real_images(resolution))
        return self._real_values[key]

    def _write_scalars(self, values: dict, images_seen: int) -> None:
        from progan.backend import tf

        if self._summary is None:
            self._summary = tf.summary.create_file_writer(str(self.run_dir))
        with self._summary.as_default(step=int(images_seen)):
            for tag, value in values.items():
                tf.summary.scalar(tag, float(value))
        self._summary.flush()

    def evaluate(self, images_seen: int) -> dict[str, dict]:
        """Evaluate one snapshot, append its records to metrics.jsonl, update best.json and
        metrics.png. Returns ``{metric: record}``; a metric that does not apply at the
        snapshot's resolution (MS-SSIM below 16x16) is skipped with a log line."""
        from progan.generation import generate, load_snapshot

        loaded = load_snapshot(self.run, images_seen, self.config, self.networks)
        stage = loaded.stage
        started = time.time()
        self.log(f"kimg {images_seen / 1000:g}: generating {self.num_images} images at "
                 f"{stage.resolution}x{stage.resolution}, then {', '.join(self.metrics)}")
        seeds = range(self.num_images)
        fakes = generate(loaded.model, seeds, progress=sys.stdout.isatty(),
                         labels=loaded.seed_labels(seeds))
        prefix = f"kimg {images_seen / 1000:<9.3f} res {stage.resolution:<4d}"
        cache: dict = {}
        records = {}
        for name in self.metrics:
            metric = registry.METRICS[name]
            if not metric.applies(stage.resolution):
                self.log(f"{prefix} {name:<7s} skipped (needs >= {metric.min_resolution}x"
                         f"{metric.min_resolution})")
                continue
            metric_start = time.time()
            result = metric.compute(self, stage.resolution, fakes, cache)
            records[name] = {
                "kimg": images_seen / 1000, "images_seen": images_seen,
                "snapshot": self.run.snapshot_at(images_seen).name, "resolution": stage.resolution,
                "fading": stage.fading, "alpha": stage.alpha, "metric": name, **result,
                "value": float(result["value"]), "num_images": self.num_images,
                "split": self.real_split(), "seed": self.seed,
                "seconds": round(time.time() - metric_start, 3),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            self.log(f"{prefix} {name:<7s} {result['value']:.4f}  "
                     f"({records[name]['seconds']:.1f} s)")
        from progan.system import held_interrupts

        with held_interrupts():  # metrics.jsonl and best.json agree even after a Ctrl-C
            self.run.append_metrics(list(records.values()))
            update_best(self.run, primary=self.metrics[0], log=self.log)
        self.scalars({f"Metrics/{name}": record["value"] for name, record in records.items()},
                     images_seen)
        plot_metrics(self.run_dir)
        self.log(f"{prefix} evaluated in {time.time() - started:.1f} s")
        return records


def training_metrics(run_dir: Path, training) -> list:
    """The trainer callbacks of ``training.metrics`` (none without), after checking the names:
    during training only the registered metrics that need nothing but the data are computed
    (FID/KID need Inception weights, which `progan evaluate` takes as flags)."""
    usable = [name for name, metric in registry.METRICS.items() if not metric.needs_features]
    unknown = [name for name in training.metrics if name not in usable]
    if unknown:
        raise EvaluationError(f"training.metrics: expected some of {', '.join(usable)} (FID/KID: "
                              f"run progan evaluate with Inception weights), got {training.metrics!r}")
    return [TrainingMetrics(run_dir, training)] if training.metrics else []


class TrainingMetrics:
    """Metrics during training (``training.metrics``), as a trainer callback: after every
    snapshot the chief calls ``on_snapshot``, which evaluates one every ``metrics_kimg`` and
    at the end of the schedule, logging through the trainer's reporter.

    Args:
        run_dir: the run directory.
        training: the run's `progan.config.TrainingConfig`.
    """

    def __init__(self, run_dir: Path, training):
        self.run_dir, self.training = Path(run_dir), training
        self._evaluator: SnapshotEvaluator | None = None
        self._last: int | None = None

    def on_snapshot(self, images_seen: int, finished: bool, reporter) -> None:
        due = (self._last is None or finished
               or images_seen - self._last >= self.training.metrics_kimg * 1000)
        if not due:
            return
        if self._evaluator is None:
            self._evaluator = SnapshotEvaluator(
                self.run_dir, self.training.metrics, num_images=self.training.metrics_num_images,
                seed=self.training.seed, log=reporter.log, scalars=reporter.scalars)
        self._evaluator.evaluate(images_seen)
        self._last = images_seen


def evaluate_snapshot(run_dir: Path, images_seen: int, metrics=("swd",), num_images: int = 2048,
                      split: str = "test", seed: int = 0, feature_extractor=None,
                      log: Callable[[str], None] = print) -> dict[str, dict]:
    """Evaluate the snapshot at ``images_seen`` of a run (see `SnapshotEvaluator.evaluate`);
    returns ``{metric: record}``."""
    return SnapshotEvaluator(run_dir, metrics, num_images, split, seed, feature_extractor,
                             log).evaluate(images_seen)


def evaluate_run(run_dir: Path, metrics=("swd",), num_images: int = 2048,
                 snapshots: str = "latest", split: str = "test", seed: int = 0,
                 feature_extractor=None, log: Callable[[str], None] = print,
                 data: Path | None = None) -> list[dict]:
    """Evaluate the snapshots named by ``snapshots`` (``latest``, ``all``, ``best[:metric]``,
    ``KIMG[,KIMG...]``), oldest first, against the run's data set (or ``data``, where it is
    now). Returns every record written."""
    run = RunDir(run_dir)
    run.read()  # a path that is no run says so before "no snapshots"
    chosen = run.select(snapshots)
    log(f"evaluating {len(chosen)} snapshot(s) at kimg "
        + ", ".join(f"{seen / 1000:g}" for seen in chosen))
    evaluator = SnapshotEvaluator(run_dir, metrics, num_images, split, seed, feature_extractor, log,
                                  data=data)
    from progan.system import duration

    records, started = [], time.time()
    for number, images_seen in enumerate(chosen, 1):
        records.extend(evaluator.evaluate(images_seen).values())
        spent = time.time() - started
        log(f"snapshot {number}/{len(chosen)} done; {duration(spent)} so far, ETA "
            f"{duration(spent / number * (len(chosen) - number))}")
    return records


# -- the files ------------------------------------------------------------------------------------


def _comparable(record: dict) -> tuple:
    return (record["num_images"], record["split"], record.get("feature_extractor"))


def _metric(name: str) -> registry.Metric:
    """The registered metric, or for a record of an unknown one a lower-is-better stand-in."""
    return registry.METRICS.get(name) or registry.Metric(name, name, compute=None)


def update_best(run: RunDir, primary: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Rewrite ``RUN/checkpoints/best.json`` (atomically) from metrics.jsonl; see the module
    docstring for the choice. Entries of metrics with no record here are kept; ``primary``
    (default: kept as it was) becomes the run's primary metric. A best.json that cannot be
    read is rebuilt from metrics.jsonl alone, with a warning through ``log``."""
    on_disk = {snapshot.images_seen for snapshot in run.snapshots()}
    records = run.read_metrics(checked=True)
    try:
        previous = run.read_best()
    except RunError as error:
        log(f"warning: {error}; rebuilding it from {run.metrics_file.name}")
        previous = {"primary": None, "metrics": {}}
    best = previous["metrics"]
    for metric in dict.fromkeys(record["metric"] for record in records):
        of_metric = [r for r in records if r["metric"] == metric]
        latest = {}
        for record in of_metric:
            if _comparable(record) == _comparable(of_metric[-1]) and record["images_seen"] in on_disk:
                latest[record["images_seen"]] = record
        if not latest:
            continue
        top = max(record["resolution"] for record in latest.values())
        target = _metric(metric).target
        chosen = min((r for r in latest.values() if r["resolution"] == top),
                     key=_metric(metric).badness)
        best[metric] = {"snapshot": chosen["snapshot"], "images_seen": chosen["images_seen"],
                        "kimg": chosen["kimg"], "value": chosen["value"],
                        "resolution": chosen["resolution"], "num_images": chosen["num_images"]}
        if target is not None:
            best[metric][target] = chosen[target]
    primary = primary or previous["primary"] or next(iter(best), None)
    run.write_best(primary, best)
    return {"primary": primary, "metrics": best}


def plot_metrics(run_dir: Path) -> Path | None:
    """``RUN/metrics.png``: each metric against kimg (the latest record per snapshot, one line
    per number of images / split / extractor), stage boundaries dotted, the reals' MS-SSIM
    dashed. Returns the path, or None when there are no records."""
    from progan.schedule import Schedule

    run = RunDir(run_dir)
    records = run.read_metrics(checked=True)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = run.read().config
    boundaries = [b / 1000 for b in Schedule.of(config).boundaries()]
    metrics = list(dict.fromkeys(record["metric"] for record in records))
    figure, axes = plt.subplots(len(metrics), 1, figsize=(9, 2.8 * len(metrics) + 0.6),
                                sharex=True, squeeze=False)
    last_kimg = max(record["kimg"] for record in records)
    for axis, name in zip(axes[:, 0], metrics):
        metric = _metric(name)
        series: dict[tuple, dict[int, dict]] = {}
        for record in records:
            if record["metric"] == name:
                series.setdefault(_comparable(record), {})[record["images_seen"]] = record
        for (num_images, split, extractor), by_snapshot in series.items():
            points = [by_snapshot[seen] for seen in sorted(by_snapshot)]
            label = f"{num_images} images, {split}" + (f", {extractor}" if extractor else "")
            axis.plot([p["kimg"] for p in points], [p["value"] for p in points], linewidth=1,
                      color="grey", label=label)
            # a different resolution measures something else: each gets its own colour
            for resolution in sorted({p["resolution"] for p in points}):
                at = [p for p in points if p["resolution"] == resolution]
                axis.scatter([p["kimg"] for p in at], [p["value"] for p in at], s=14, zorder=3,
                             label=f"{resolution}x{resolution}")
            if metric.target is not None:
                axis.plot([p["kimg"] for p in points], [p[metric.target] for p in points],
                          linestyle="--", color="black", linewidth=1, label="reals")
        values = [r["value"] for r in records if r["metric"] == name]
        if metric.target is None and min(values) > 0 and max(values) / min(values) > 20:
            axis.set_yscale("log")
        axis.set_ylabel(metric.title if len(metric.title) <= 24 else metric.name)
        axis.set_title(metric.title, fontsize="small", loc="left")
        for boundary in boundaries:
            if boundary <= last_kimg:
                axis.axvline(boundary, color="grey", linestyle=":", linewidth=1)
        axis.grid(alpha=0.3)
        axis.legend(loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel("kimg")
    figure.suptitle(f"{Path(run_dir).name}: metrics of the EMA generator (dotted: stage boundaries)")
    with warnings.catch_warnings():  # a narrow figure cannot always fit its labels: fine
        warnings.simplefilter("ignore", UserWarning)
        figure.tight_layout()
    path = Path(run_dir) / PLOT_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

