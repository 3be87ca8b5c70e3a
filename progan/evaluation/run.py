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
import time
from pathlib import Path
from typing import Callable

import numpy as np

from progan.errors import ProganError
from progan.run import RunDir

METRICS = ("swd", "msssim", "fid", "kid")
FEATURE_METRICS = ("fid", "kid")
DEFAULT_NUM_IMAGES = 10000  # progan evaluate without --num-images (capped at the real images there are)
PLOT_FILE = "metrics.png"
MSSSIM_MIN_RESOLUTION = 16


class EvaluationError(ProganError, ValueError):
    """Impossible evaluation settings; the message names the flag and what was expected."""


def parse_metrics(text: str | list | tuple) -> tuple[str, ...]:
    """``"swd,fid"`` (or a list) -> ``("swd", "fid")``; unknown names are an error."""
    names = [name.strip().lower() for name in (text.split(",") if isinstance(text, str) else text)]
    names = [name for name in names if name]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise EvaluationError(f"--metrics {','.join(names)}: expected a comma-separated list of "
                              f"{', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


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
    """

    def __init__(self, run_dir: Path, metrics=("swd",), num_images: int = 2048,
                 split: str = "test", seed: int = 0, feature_extractor=None,
                 log: Callable[[str], None] = print):
        from progan.networks import ProGAN

        self.run = RunDir(run_dir)
        self.run_dir = self.run.path
        info = self.run.read()
        self.config = info.config
        self.data = info.data
        self.metrics = parse_metrics(metrics)
        # None: DEFAULT_NUM_IMAGES, or all the real images there are if the data set is smaller
        self._num_images_is_default = num_images is None
        num_images = DEFAULT_NUM_IMAGES if num_images is None else num_images
        if num_images < 2:
            raise EvaluationError(f"--num-images {num_images}: expected at least 2")
        if split not in ("test", "train"):
            raise EvaluationError(f"--split {split}: expected test or train")
        if feature_extractor is None and any(m in FEATURE_METRICS for m in self.metrics):
            raise EvaluationError("--metrics fid/kid need a feature extractor: pass "
                                  "--inception-graph FILE.pb or --inception-weights FILE")
        self.num_images, self.split, self.seed = num_images, split, seed
        self.extractor = feature_extractor
        self.log = log
        self._split: str | None = None
        self._reals: dict[int, np.ndarray] = {}
        self._real_msssim: dict[int, float] = {}
        self.real_split()  # too few real images is an error now, before any work
        self.networks = ProGAN(self.config.model, with_discriminator=False)

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

    def measure(self, metric: str, resolution: int, fakes: np.ndarray,
                features: dict) -> dict | None:
        """``{"value": ..., more fields}`` of one metric on uint8 fakes at ``resolution``, or
        None when the metric does not apply there. ``features`` caches the fakes' features
        between fid and kid."""
        from progan.evaluation.frechet import FeatureStatistics, fid, kid
        from progan.evaluation.msssim import ms_ssim
        from progan.evaluation.swd import swd

        if metric == "swd":
            distances = swd(self.real_images(resolution), fakes, seed=self.seed)
            return {"value": distances.pop("avg"),
                    "values": {str(level): distance for level, distance in distances.items()}}
        if metric == "msssim":
            if resolution < MSSSIM_MIN_RESOLUTION:
                return None
            pairs = len(fakes) // 2 * 2
            if resolution not in self._real_msssim:
                self._real_msssim[resolution] = ms_ssim(self.real_images(resolution)[:pairs])
            return {"value": ms_ssim(fakes[:pairs]), "real_value": self._real_msssim[resolution]}
        real = self.real_statistics(resolution)
        if "fakes" not in features:
            features["fakes"] = self.extractor.features(fakes)
        value = (fid(real, FeatureStatistics.from_features(features["fakes"])) if metric == "fid"
                 else kid(real.features, features["fakes"], seed=self.seed))
        return {"value": value, "feature_extractor": self.extractor.name}

    def evaluate(self, images_seen: int) -> dict[str, dict]:
        """Evaluate one snapshot, append its records to metrics.jsonl, update best.json and
        metrics.png. Returns ``{metric: record}``; a metric that does not apply at the
        snapshot's resolution (MS-SSIM below 16x16) is skipped with a log line."""
        from progan.generate import generate, load_snapshot

        loaded = load_snapshot(self.run, images_seen, self.config, self.networks)
        stage = loaded.stage
        started = time.time()
        fakes = generate(loaded.model, range(self.num_images))
        prefix = f"kimg {images_seen / 1000:<9.3f} res {stage.resolution:<4d}"
        features: dict = {}
        records = {}
        for metric in self.metrics:
            metric_start = time.time()
            result = self.measure(metric, stage.resolution, fakes, features)
            if result is None:
                self.log(f"{prefix} {metric:<7s} skipped (needs >= {MSSSIM_MIN_RESOLUTION}x"
                         f"{MSSSIM_MIN_RESOLUTION})")
                continue
            records[metric] = {
                "kimg": images_seen / 1000, "images_seen": images_seen,
                "snapshot": self.run.snapshot_at(images_seen).name, "resolution": stage.resolution,
                "fading": stage.fading, "alpha": stage.alpha, "metric": metric, **result,
                "value": float(result["value"]), "num_images": self.num_images,
                "split": self.real_split(), "seed": self.seed,
                "seconds": round(time.time() - metric_start, 3),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
            self.log(f"{prefix} {metric:<7s} {result['value']:.4f}  "
                     f"({records[metric]['seconds']:.1f} s)")
        self.run.append_metrics(list(records.values()))
        update_best(self.run, primary=self.metrics[0])
        plot_metrics(self.run_dir)
        self.log(f"{prefix} evaluated in {time.time() - started:.1f} s")
        return records


def evaluate_snapshot(run_dir: Path, images_seen: int, metrics=("swd",), num_images: int = 2048,
                      split: str = "test", seed: int = 0, feature_extractor=None,
                      log: Callable[[str], None] = print) -> dict[str, dict]:
    """Evaluate the snapshot at ``images_seen`` of a run (see `SnapshotEvaluator.evaluate`);
    returns ``{metric: record}``."""
    return SnapshotEvaluator(run_dir, metrics, num_images, split, seed, feature_extractor,
                             log).evaluate(images_seen)


def evaluate_run(run_dir: Path, metrics=("swd",), num_images: int = 2048,
                 snapshots: str = "latest", split: str = "test", seed: int = 0,
                 feature_extractor=None, log: Callable[[str], None] = print) -> list[dict]:
    """Evaluate the snapshots named by ``snapshots`` (``latest``, ``all``, ``best[:metric]``,
    ``KIMG[,KIMG...]``), oldest first. Returns every record written."""
    chosen = RunDir(run_dir).select(snapshots, flag="--snapshots")
    log(f"evaluating {len(chosen)} snapshot(s) at kimg "
        + ", ".join(f"{seen / 1000:g}" for seen in chosen))
    evaluator = SnapshotEvaluator(run_dir, metrics, num_images, split, seed, feature_extractor, log)
    records = []
    for number, images_seen in enumerate(chosen, 1):
        records.extend(evaluator.evaluate(images_seen).values())
        log(f"snapshot {number}/{len(chosen)} done")
    return records


# -- the files ------------------------------------------------------------------------------------


def _comparable(record: dict) -> tuple:
    return (record["num_images"], record["split"], record.get("feature_extractor"))


def badness(record: dict) -> float:
    """What best.json minimises: the value, or for MS-SSIM its distance to the reals'."""
    if record["metric"] == "msssim":
        return abs(record["value"] - record["real_value"])
    return record["value"]


def update_best(run: RunDir, primary: str | None = None) -> dict:
    """Rewrite ``RUN/checkpoints/best.json`` (atomically) from metrics.jsonl; see the module
    docstring for the choice. Entries of metrics with no record here are kept; ``primary``
    (default: kept as it was) becomes the run's primary metric."""
    on_disk = {snapshot.images_seen for snapshot in run.snapshots()}
    records = run.read_metrics()
    previous = run.read_best()
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
        chosen = min((r for r in latest.values() if r["resolution"] == top), key=badness)
        best[metric] = {"snapshot": chosen["snapshot"], "images_seen": chosen["images_seen"],
                        "kimg": chosen["kimg"], "value": chosen["value"],
                        "resolution": chosen["resolution"], "num_images": chosen["num_images"]}
        if metric == "msssim":
            best[metric]["real_value"] = chosen["real_value"]
    primary = primary or previous["primary"] or next(iter(best), None)
    run.write_best(primary, best)
    return {"primary": primary, "metrics": best}


def plot_metrics(run_dir: Path) -> Path | None:
    """``RUN/metrics.png``: each metric against kimg (the latest record per snapshot, one line
    per number of images / split / extractor), stage boundaries dotted, the reals' MS-SSIM
    dashed. Returns the path, or None when there are no records."""
    from progan.training.schedule import Schedule

    run = RunDir(run_dir)
    records = run.read_metrics()
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = run.read().config
    boundaries = [b / 1000 for b in Schedule(config.schedule, config.model.max_resolution).boundaries()]
    metrics = list(dict.fromkeys(record["metric"] for record in records))
    figure, axes = plt.subplots(len(metrics), 1, figsize=(9, 2.8 * len(metrics) + 0.6),
                                sharex=True, squeeze=False)
    last_kimg = max(record["kimg"] for record in records)
    for axis, metric in zip(axes[:, 0], metrics):
        series: dict[tuple, dict[int, dict]] = {}
        for record in records:
            if record["metric"] == metric:
                series.setdefault(_comparable(record), {})[record["images_seen"]] = record
        for (num_images, split, extractor), by_snapshot in series.items():
            points = [by_snapshot[seen] for seen in sorted(by_snapshot)]
            label = f"{num_images} images, {split}" + (f", {extractor}" if extractor else "")
            axis.plot([p["kimg"] for p in points], [p["value"] for p in points], marker="o",
                      markersize=3, label=label)
            if metric == "msssim":
                axis.plot([p["kimg"] for p in points], [p["real_value"] for p in points],
                          linestyle="--", color="black", linewidth=1, label="reals")
        values = [r["value"] for r in records if r["metric"] == metric]
        if metric in ("swd", "fid") and min(values) > 0 and max(values) / min(values) > 20:
            axis.set_yscale("log")
        axis.set_ylabel(metric)
        for boundary in boundaries:
            if boundary <= last_kimg:
                axis.axvline(boundary, color="grey", linestyle=":", linewidth=1)
        axis.grid(alpha=0.3)
        axis.legend(loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel("kimg")
    figure.suptitle(f"{Path(run_dir).name}: metrics of the EMA generator (dotted: stage boundaries)")
    figure.tight_layout()
    path = Path(run_dir) / PLOT_FILE
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path

