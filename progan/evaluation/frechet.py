"""Feature-space metrics: Frechet distance (FID), kernel distance (KID), Inception Score,
and a cache of real-image statistics.

All functions work on plain arrays of features or logits, so they do not care which network
produced them (see ``progan.evaluation.features``).

    real = cached_statistics(cache_dir, key, lambda: extractor.features(real_images))
    fake = FeatureStatistics.from_features(extractor.features(fake_images))
    fid(real, fake); kid(real.features, fake.features)
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.linalg
import scipy.special


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     epsilon: float = 1e-6) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``. When the matrix square
    root is not finite (singular, ill-conditioned product) ``epsilon * I`` is added to both
    covariances; a complex root with a negligible imaginary diagonal is taken as real.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or \
            sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"frechet_distance: shapes do not match: mu {mu1.shape}, {mu2.shape}; "
                         f"sigma {sigma1.shape}, {sigma2.shape}")
    root = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = np.eye(len(sigma1)) * epsilon
        root = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(root):
        largest_imaginary = np.max(np.abs(np.diagonal(root).imag))
        if largest_imaginary > 1e-3:
            raise ValueError(f"frechet_distance: the covariance square root has an imaginary "
                             f"part of {largest_imaginary:.3g}; too few samples for the "
                             f"feature size?")
        root = root.real
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2)
                 - 2.0 * np.trace(root))


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
    """Mean [D] and covariance [D, D] (float64) of a feature set, and up to ``max_kept``
    of its features [K, D] (float32) for KID."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray, max_kept: int = 10_000) -> FeatureStatistics:
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or len(features) < 2:
            raise ValueError(f"FeatureStatistics: features must be [N >= 2, D], got "
                             f"{list(features.shape)}")
        return cls(mu=features.mean(axis=0), sigma=np.cov(features, rowvar=False),
                   features=features[:max_kept].astype(np.float32))

    def save(self, path: Path) -> None:
        """Write to ``path`` (.npz) atomically: a temporary file in the same directory, then
        a rename, so a crash never leaves half a cache."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(file, mu=self.mu, sigma=self.sigma, features=self.features)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> FeatureStatistics:
        """Read statistics written by ``save``."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                return cls(mu=data["mu"], sigma=data["sigma"], features=data["features"])
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{path}: not a feature-statistics file ({error})") from error


def cached_statistics(cache_dir: Path, key: str, compute_features: Callable[[], np.ndarray],
                      max_kept: int = 10_000) -> FeatureStatistics:
    """Statistics of a feature set, computed once per ``key`` and cached in ``cache_dir``.

    ``key`` names the set (e.g. dataset checksums, resolution, split and extractor); the
    file is ``<cache_dir>/<readable part of key>-<hash of key>.npz``. ``compute_features``
    returns the [N, D] features and is only called when the file does not exist.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:64]
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{readable}-{digest}.npz"
    if path.exists():
        return FeatureStatistics.load(path)
    statistics = FeatureStatistics.from_features(compute_features(), max_kept)
    statistics.save(path)
    return statistics


def fid(real: FeatureStatistics, fake: FeatureStatistics) -> float:
    """Frechet Inception Distance between the statistics of two feature sets."""
    return frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)


def kid(real_features: np.ndarray, fake_features: np.ndarray, num_subsets: int = 100,
        subset_size: int = 1000, seed: int | None = None) -> float:
    """Kernel Inception Distance: unbiased MMD^2 with the kernel (x.y / D + 1)^3, averaged
    over ``num_subsets`` random subsets of ``min(subset_size, N_real, N_fake)`` per set.

    Its expectation is 0 when both sets come from one distribution (it can be negative).
    """
    real_features = np.asarray(real_features, np.float64)
    fake_features = np.asarray(fake_features, np.float64)
    if real_features.ndim != 2 or real_features.shape[1:] != fake_features.shape[1:]:
        raise ValueError(f"kid: features must be [N, D] with the same D, got "
                         f"{list(real_features.shape)} and {list(fake_features.shape)}")
    size = min(subset_size, len(real_features), len(fake_features))
    if size < 2:
        raise ValueError(f"kid: needs at least 2 features per set, got {size}")
    dimension = real_features.shape[1]
    rng = np.random.default_rng(seed)
    total = 0.0
    for _ in range(num_subsets):
        x = real_features[rng.choice(len(real_features), size, replace=False)]
        y = fake_features[rng.choice(len(fake_features), size, replace=False)]
        within = (x @ x.T / dimension + 1) ** 3 + (y @ y.T / dimension + 1) ** 3
        between = (x @ y.T / dimension + 1) ** 3
        total += ((within.sum() - np.trace(within)) / (size * (size - 1))
                  - 2.0 * between.sum() / size ** 2)
    return float(total / num_subsets)


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score from class logits [N, classes]: mean and standard deviation over
    ``splits`` equal parts of exp(E_x KL(p(y|x) || p(y)))."""
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2 or len(logits) < splits:
        raise ValueError(f"inception_score: logits must be [N >= {splits}, classes], got "
                         f"{list(logits.shape)}")
    scores = []
    for part in np.array_split(logits, splits):
        log_p = scipy.special.log_softmax(part, axis=1)
        log_marginal = np.log(np.mean(np.exp(log_p), axis=0))
        kl = np.sum(np.exp(log_p) * (log_p - log_marginal), axis=1)
        scores.append(np.exp(np.mean(kl)))
    return float(np.mean(scores)), float(np.std(scores))
