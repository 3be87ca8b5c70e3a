"""The paper's metrics on uint8 NHWC NumPy images: SWD, MS-SSIM, FID, KID, Inception Score.

    from progan.evaluation import swd, ms_ssim, fid, kid, inception_score
"""

from progan.evaluation.features import (FeatureExtractor, InceptionGraph2015, KerasInceptionV3,
                                        RandomConvFeatures)
from progan.evaluation.frechet import (FeatureStatistics, cached_statistics, fid,
                                       frechet_distance, inception_score, kid)
from progan.evaluation.msssim import MS_SSIM_WEIGHTS, ms_ssim
from progan.evaluation.swd import sample_swd_protocol, swd, swd_from_sampling

__all__ = [
    "FeatureExtractor", "FeatureStatistics", "InceptionGraph2015", "KerasInceptionV3",
    "MS_SSIM_WEIGHTS", "RandomConvFeatures", "cached_statistics", "fid", "frechet_distance",
    "inception_score", "kid", "ms_ssim", "sample_swd_protocol", "swd", "swd_from_sampling",
]
