"""The paper's metrics on uint8 NHWC NumPy images: SWD, MS-SSIM, FID, KID, Inception Score.

    from progan.evaluation import ms_ssim, fid, kid, inception_score
    from progan.evaluation.sliced_wasserstein import swd      # (progan.evaluation.sliced_wasserstein is the module)

The names load their modules (and TensorFlow) on first use, so importing the package is cheap.
"""

_PUBLIC = {
    "FeatureExtractor": "features", "InceptionGraph2015": "features",
    "KerasInceptionV3": "features", "RandomConvFeatures": "features",
    "FeatureStatistics": "frechet", "cached_statistics": "frechet", "fid": "frechet",
    "frechet_distance": "frechet", "inception_score": "frechet", "kid": "frechet",
    "MS_SSIM_WEIGHTS": "msssim", "ms_ssim": "msssim",
    "sample_swd_protocol": "sliced_wasserstein", "swd": "sliced_wasserstein",
    "swd_from_sampling": "sliced_wasserstein",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        value = getattr(importlib.import_module(f"progan.evaluation.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'progan.evaluation' has no attribute {name!r}")


def __dir__():
    return list(__all__)
