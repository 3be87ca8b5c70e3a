"""The metrics `progan evaluate` and `progan train --metrics` know, one registration each.

A `Metric` says what it is called, at which resolutions it applies, whether it needs a
feature extractor (Inception), how a record of it is judged (lower is better, or closer to
the reals' value is better) and how it is computed from a `SnapshotEvaluator`'s real images
and a snapshot's fakes. Evaluation, best-snapshot selection, plots, TensorBoard and the
validation of ``--metrics`` all iterate `METRICS`; a new metric is one `register` call.
"""

from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Metric:
    """One metric.

    Attributes:
        name: what ``--metrics`` calls it.
        title: axis label, with its unit.
        compute: ``(evaluator, resolution, uint8 fakes, cache) -> {"value": ..., ...}``;
            ``cache`` is shared by the metrics of one snapshot (e.g. the fakes' features).
        min_resolution: smallest resolution it is meaningful at.
        needs_features: needs a feature extractor (FID, KID: Inception weights).
        target: None when lower (or, with ``higher_is_better``, higher) is better; else the
            record field whose value is ideal (the better snapshot is the one closest to it,
            e.g. the reals' MS-SSIM).
        higher_is_better: e.g. the attribute agreement.
        needs_labels: only for conditional runs.
    """

    name: str
    title: str
    compute: Callable
    min_resolution: int = 1
    needs_features: bool = False
    target: str | None = None
    higher_is_better: bool = False
    needs_labels: bool = False

    def applies(self, resolution: int) -> bool:
        return resolution >= self.min_resolution

    def badness(self, record: dict) -> float:
        """What best-snapshot selection minimises for a record of this metric."""
        if self.target is None:
            return -record["value"] if self.higher_is_better else record["value"]
        return abs(record["value"] - record[self.target])


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    METRICS[metric.name] = metric
    return metric


def _swd(evaluator, resolution, fakes, cache):
    from progan.evaluation.sliced_wasserstein import swd

    distances = swd(evaluator.real_images(resolution), fakes, seed=evaluator.seed)
    return {"value": distances.pop("avg"),
            "values": {str(level): distance for level, distance in distances.items()}}


def _msssim(evaluator, resolution, fakes, cache):
    from progan.evaluation.msssim import ms_ssim

    pairs = len(fakes) // 2 * 2
    return {"value": ms_ssim(fakes[:pairs]),
            "real_value": evaluator.real_value("msssim", resolution,
                                               lambda reals: ms_ssim(reals[:pairs]))}


def _fake_features(evaluator, fakes, cache):
    if "features" not in cache:
        cache["features"] = evaluator.extractor.features(fakes)
    return cache["features"]


def _fid(evaluator, resolution, fakes, cache):
    from progan.evaluation.frechet import FeatureStatistics, fid

    statistics = FeatureStatistics.from_features(_fake_features(evaluator, fakes, cache))
    return {"value": fid(evaluator.real_statistics(resolution), statistics),
            "feature_extractor": evaluator.extractor.name}


def _kid(evaluator, resolution, fakes, cache):
    from progan.evaluation.frechet import kid

    return {"value": kid(evaluator.real_statistics(resolution).features,
                         _fake_features(evaluator, fakes, cache), seed=evaluator.seed),
            "feature_extractor": evaluator.extractor.name}


register(Metric("swd", "SWD x10^3 (lower is better)", _swd))
# diversity: the paper's protocol needs 16x16 and up; too high means too little variety
register(Metric("msssim", "MS-SSIM (closest to the reals' is best)", _msssim, min_resolution=16,
                target="real_value"))
def _attributes(evaluator, resolution, fakes, cache):
    from progan.evaluation.attributes import evaluate_attributes

    return evaluate_attributes(evaluator, resolution, fakes)


register(Metric("fid", "FID (lower is better)", _fid, needs_features=True))
register(Metric("kid", "KID (lower is better)", _kid, needs_features=True))
# conditional runs: how often a classifier trained on the reals sees the requested labels
register(Metric("attributes", "attribute agreement (higher is better)", _attributes,
                higher_is_better=True, needs_labels=True))


def parse_metrics(text, flag: str = "--metrics") -> tuple[str, ...]:
    """``"swd,fid"`` (or a list) -> ``("swd", "fid")``; unknown names raise ValueError."""
    names = [name.strip().lower() for name in (text.split(",") if isinstance(text, str) else text)]
    names = [name for name in names if name]
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ValueError(f"{flag} {','.join(names)}: expected a comma-separated list of "
                         f"{', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))
