"""The progressive-growing schedule: images seen -> stage. Pure Python, no TensorFlow.

The reference semantics: training starts at ``start_resolution`` in a stable phase of
``stable_kimg``; then each higher resolution fades in over ``fade_kimg`` (alpha ramps
linearly from 0 to 1 with images shown) and trains stable for ``stable_kimg``. During a
fade the new resolution's batch size and learning rates (the optimiser settings') apply,
times ``fade_lr_scale``. The last resolution stays
stable until ``total_kimg`` (default: the end of its stable phase).

    schedule = Schedule(ScheduleConfig(stable_kimg=800, fade_kimg=800), max_resolution=64)
    schedule.stage_at(1_000_000)   # Stage(resolution=8, fading=True, alpha=0.25, ...)
    schedule.start_of(16)          # images seen when the 16x16 stable phase starts
"""

from __future__ import annotations

import dataclasses
import math

from progan.config import OptimizerConfig, ScheduleConfig


@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of the schedule, and where in it a given images-seen count falls."""

    index: int
    resolution: int
    fading: bool
    start_images: int
    end_images: int
    alpha: float
    batch_size: int
    g_lr: float
    d_lr: float

    @property
    def phase(self) -> str:
        return "fading" if self.fading else "stable"

    @property
    def key(self) -> tuple[int, bool]:
        """What selects a compiled graph: (resolution, fading)."""
        return (self.resolution, self.fading)


class Schedule:
    """Images seen -> `Stage`, and the inverse queries.

    Args:
        config: a `ScheduleConfig`.
        max_resolution: the model's top resolution.
        optimizer: the `OptimizerConfig` whose learning rates each stage carries (default:
            the defaults).
    """

    @classmethod
    def of(cls, config) -> "Schedule":
        """The schedule of a whole `progan.config.Config` (its schedule and top resolution)."""
        return cls(config.schedule, config.model.max_resolution, config.optimizer)

    def __init__(self, config: ScheduleConfig, max_resolution: int,
                 optimizer: OptimizerConfig | None = None):
        self.config = config
        self.optimizer = optimizer or OptimizerConfig()
        self.max_resolution = max_resolution
        stable, fade = _images(config.stable_kimg), _images(config.fade_kimg)
        spans, start = [], 0
        resolution = config.start_resolution
        while True:
            if resolution > config.start_resolution and fade > 0:
                spans.append((resolution, True, start, start + fade))
                start += fade
            spans.append((resolution, False, start, start + stable))
            start += stable
            if resolution >= max_resolution:
                break
            resolution *= 2
        natural_end = start
        self.total_images = natural_end if config.total_kimg is None else _images(config.total_kimg)
        resolution, fading, last_start, _ = spans[-1]
        spans[-1] = (resolution, fading, last_start, max(self.total_images, last_start))
        self._spans = [span for span in spans if span[2] < self.total_images] or spans[:1]

    @property
    def total_kimg(self) -> float:
        return self.total_images / 1000.0

    def batch_size(self, resolution: int) -> int:
        return self.config.batch_sizes.get(resolution, self.config.batch_size)

    def learning_rates(self, resolution: int) -> tuple[float, float]:
        """(generator, discriminator) learning rate at a resolution."""
        if resolution in self.optimizer.lr_by_resolution:
            lr = self.optimizer.lr_by_resolution[resolution]
            return lr, lr
        return self.optimizer.g_lr, self.optimizer.d_lr

    def stages(self) -> list[Stage]:
        """Every stage, in order, each at its own start (alpha 0 or 1)."""
        return [self._stage(index, images_seen=span[2]) for index, span in enumerate(self._spans)]

    def stage_at(self, images_seen: int) -> Stage:
        """The stage that covers ``images_seen`` (the last stage past the end)."""
        if images_seen < 0:
            raise ValueError(f"images_seen: expected >= 0, got {images_seen}")
        for index, (_, _, start, end) in enumerate(self._spans):
            if start <= images_seen < end:
                return self._stage(index, images_seen)
        return self._stage(len(self._spans) - 1, images_seen)

    def start_of(self, resolution: int, fading: bool = False) -> int:
        """Images seen when a stage starts (the inverse of `stage_at`)."""
        for span_resolution, span_fading, start, _ in self._spans:
            if (span_resolution, span_fading) == (resolution, fading):
                return start
        raise ValueError(f"the schedule has no {'fading' if fading else 'stable'} stage at "
                         f"resolution {resolution}")

    def boundaries(self) -> list[int]:
        """Images seen at every stage start after the first (for plots and snapshots)."""
        return [span[2] for span in self._spans[1:]]

    def is_finished(self, images_seen: int) -> bool:
        return images_seen >= self.total_images

    def _stage(self, index: int, images_seen: int) -> Stage:
        resolution, fading, start, end = self._spans[index]
        alpha = min(max((images_seen - start) / (end - start), 0.0), 1.0) if fading else 1.0
        g_lr, d_lr = self.learning_rates(resolution)
        if fading:
            g_lr, d_lr = g_lr * self.optimizer.fade_lr_scale, d_lr * self.optimizer.fade_lr_scale
        return Stage(index=index, resolution=resolution, fading=fading, start_images=start,
                     end_images=end, alpha=alpha, batch_size=self.batch_size(resolution),
                     g_lr=g_lr, d_lr=d_lr)


def _images(kimg: float) -> int:
    return int(math.floor(kimg * 1000 + 0.5))
