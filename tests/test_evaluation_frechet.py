"""FID, KID, Inception Score and the statistics cache against float64 closed forms."""

import numpy as np
import pytest

from progan.evaluation.frechet import (FeatureStatistics, cached_statistics, fid,
                                       frechet_distance, inception_score, kid)


def random_covariance(rng, dimension):
    factor = rng.normal(size=(dimension, dimension))
    return factor @ factor.T / dimension + 0.1 * np.eye(dimension)


def reference_frechet(mu1, sigma1, mu2, sigma2):
    """tr (S1 S2)^(1/2) = tr (S1^(1/2) S2 S1^(1/2))^(1/2), through symmetric eigensolvers."""
    values, vectors = np.linalg.eigh(sigma1)
    root1 = vectors @ np.diag(np.sqrt(np.clip(values, 0, None))) @ vectors.T
    inner = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return (np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2)
            - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def test_identical_covariances_give_squared_mean_distance():
    rng = np.random.default_rng(0)
    sigma = random_covariance(rng, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(np.sum((mu1 - mu2) ** 2),
                                                                     rel=1e-9, abs=1e-9)


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(1)
    variances1, variances2 = rng.uniform(0.5, 3, 8), rng.uniform(0.5, 3, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(variances1) - np.sqrt(variances2)) ** 2)
    assert frechet_distance(mu1, np.diag(variances1), mu2, np.diag(variances2)) == \
        pytest.approx(expected, rel=1e-9)


def test_general_covariances_match_eigen_reference():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    sigma1, sigma2 = random_covariance(rng, 32), random_covariance(rng, 32)
    assert frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(
        reference_frechet(mu1, sigma1, mu2, sigma2), rel=1e-8)


def test_fid_of_features_from_rank_deficient_samples_is_finite_and_near_reference():
    rng = np.random.default_rng(3)
    real = FeatureStatistics.from_features(rng.normal(size=(20, 64)))  # 20 samples, 64 dims
    fake = FeatureStatistics.from_features(rng.normal(1.0, 1.0, size=(20, 64)))
    value = fid(real, fake)
    assert np.isfinite(value)
    assert value == pytest.approx(reference_frechet(real.mu, real.sigma, fake.mu, fake.sigma),
                                  rel=1e-3)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_kid_is_unbiased_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(4)
    same = [kid(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), num_subsets=5,
                subset_size=50, seed=seed) for seed in range(40)]
    different = kid(rng.normal(size=(60, 8)), rng.normal(0.5, 1.0, size=(60, 8)),
                    num_subsets=5, subset_size=50, seed=0)
    standard_error = np.std(same) / np.sqrt(len(same))
    assert abs(np.mean(same)) < 4 * standard_error
    assert min(same) < 0 < max(same)  # unbiased: the estimate goes negative, unlike the biased one
    assert different > 10 * np.std(same)


def test_kid_matches_direct_unbiased_mmd_on_full_sets():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(30, 4)), rng.normal(0.3, 1.0, size=(30, 4))

    def kernel(a, b):
        return (a @ b / 4 + 1) ** 3

    within = sum(kernel(x[i], x[j]) + kernel(y[i], y[j])
                 for i in range(30) for j in range(30) if i != j) / (30 * 29)
    between = sum(kernel(x[i], y[j]) for i in range(30) for j in range(30)) / 900
    assert kid(x, y, num_subsets=3, subset_size=30, seed=0) == pytest.approx(
        within - 2 * between, rel=1e-10)


def test_inception_score_limits():
    uniform = np.zeros((100, 10))
    assert inception_score(uniform) == pytest.approx((1.0, 0.0), abs=1e-9)
    confident = np.full((100, 10), -50.0)
    confident[np.arange(100), np.arange(100) % 10] = 50.0  # every split sees every class
    mean, std = inception_score(confident)
    assert mean == pytest.approx(10.0, rel=1e-6) and std < 1e-6


def test_cached_statistics_computes_once_and_loads_without_pickle(tmp_path):
    rng = np.random.default_rng(6)
    features = rng.normal(size=(50, 6))
    calls = []

    def compute():
        calls.append(1)
        return features

    first = cached_statistics(tmp_path, "celeba/abc123 r64 test inception", compute)
    second = cached_statistics(tmp_path, "celeba/abc123 r64 test inception", compute)
    assert len(calls) == 1
    np.testing.assert_allclose(second.mu, features.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(second.sigma, np.cov(features, rowvar=False), rtol=1e-12)
    np.testing.assert_array_equal(second.features, first.features)
    [path] = tmp_path.glob("*.npz")
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["features", "mu", "sigma"]
    cached_statistics(tmp_path, "celeba/abc123 r64 train inception", compute)
    assert len(calls) == 2 and len(list(tmp_path.glob("*.npz"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_cache_file_gives_a_clear_error(tmp_path):
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz: not a feature-statistics file"):
        FeatureStatistics.load(path)
