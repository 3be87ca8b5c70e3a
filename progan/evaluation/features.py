"""Feature extractors for FID, KID and the Inception Score.

Each extractor maps uint8 NHWC images to float64 features [N, D] (``features``) and class
logits [N, classes] (``logits``), in batches:

* ``KerasInceptionV3``: ``keras.applications.InceptionV3`` with the ImageNet weights
  (downloaded by Keras, or a local weights file); images resized to 299x299 (bilinear) and
  scaled by ``inception_v3.preprocess_input``; 2048-d average pool.
* ``InceptionGraph2015``: the 2015 Inception GraphDef (``classify_image_graph_def.pb``) of
  the TTUR and NVIDIA FID code, for numbers comparable with published tables; ``pool_3``
  (2048-d) and the 1008-class softmax logits.
* ``RandomConvFeatures``: a small deterministic random-weights conv net for tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tqdm

from progan.backend import tf


class FeatureExtractor:
    """Base of the extractors: batching and input checks around ``_features_and_logits``.

    Subclasses set ``name`` (for cache keys) and implement ``_features_and_logits(batch)``
    on a uint8 NHWC ``tf.Tensor``, returning two float tensors [B, D] and [B, classes].
    """

    name = "extractor"

    def __init__(self, batch_size: int = 64, progress: bool = False):
        self.batch_size = batch_size
        self.progress = progress

    def _features_and_logits(self, images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        raise NotImplementedError

    def _run(self, images: np.ndarray, output: int) -> np.ndarray:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"{self.name}: images must be uint8 [N, H, W, 3], got "
                             f"{images.dtype} {list(images.shape)}")
        batches = []
        for start in tqdm.trange(0, len(images), self.batch_size, unit="batch",
                                 desc=self.name, disable=not self.progress):
            batch = tf.constant(images[start:start + self.batch_size])
            batches.append(self._features_and_logits(batch)[output].numpy().astype(np.float64))
        return np.concatenate(batches)

    def features(self, images: np.ndarray) -> np.ndarray:
        """float64 [N, D] features of uint8 [N, H, W, 3] images."""
        return self._run(images, 0)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float64 [N, classes] class logits of uint8 [N, H, W, 3] images."""
        return self._run(images, 1)


class KerasInceptionV3(FeatureExtractor):
    """InceptionV3 from ``keras.applications``: 2048-d average-pool features, 1000 logits.

    ``weights``: "imagenet" (Keras downloads them once), the path of a local weights file
    (``--inception-weights``), or None (random weights; only for tests).
    """

    name = "keras-inception-v3"

    def __init__(self, weights: str | Path | None = "imagenet", batch_size: int = 64,
                 progress: bool = False):
        super().__init__(batch_size, progress)
        import keras

        if weights not in ("imagenet", None) and not Path(weights).is_file():
            raise FileNotFoundError(f"--inception-weights {weights}: no such file (expected "
                                    f"Keras InceptionV3 weights, .h5 or .weights.h5)")
        try:
            model = keras.applications.InceptionV3(
                weights=str(weights) if isinstance(weights, Path) else weights)
        except Exception as error:  # Keras raises several kinds for a failed download
            raise RuntimeError(f"InceptionV3 weights {weights!r} could not be loaded ({error}); "
                               f"pass a local file with --inception-weights") from error
        self._preprocess = keras.applications.inception_v3.preprocess_input
        self.model = model
        self._pool = keras.Model(model.input, model.get_layer("avg_pool").output)
        self._classifier = model.get_layer("predictions")

    @tf.function(reduce_retracing=True)
    def _features_and_logits(self, images):
        resized = tf.image.resize(tf.cast(images, tf.float32), [299, 299], method="bilinear")
        pool = self._pool(self._preprocess(resized), training=False)
        kernel, bias = self._classifier.kernel, self._classifier.bias
        return pool, tf.matmul(pool, kernel) + bias  # the softmax layer before its softmax


class InceptionGraph2015(FeatureExtractor):
    """The 2015 Inception GraphDef used by the original FID code (TTUR, NVIDIA).

    The graph takes float 0-255 images of any size at ``ExpandDims:0`` (it resizes to 299
    and normalises itself); ``pool_3:0`` gives the 2048-d features and
    ``softmax/weights`` / ``softmax/biases`` the 1008-class logits.
    """

    name = "inception-2015"

    def __init__(self, path: str | Path, batch_size: int = 64, progress: bool = False):
        super().__init__(batch_size, progress)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"--inception-graph {path}: no such file (expected the 2015 "
                                    f"Inception GraphDef, classify_image_graph_def.pb)")
        graph_def = tf.compat.v1.GraphDef()
        try:
            graph_def.ParseFromString(path.read_bytes())
        except Exception as error:  # protobuf's DecodeError
            raise ValueError(f"{path}: not a TensorFlow GraphDef ({error})") from error

        def import_graph(images):
            pool, weights, biases = tf.compat.v1.import_graph_def(
                graph_def, input_map={"ExpandDims:0": images},
                return_elements=["pool_3:0", "softmax/weights:0", "softmax/biases:0"], name="")
            features = tf.reshape(pool, [-1, pool.shape[-1]])
            return features, tf.matmul(features, weights) + biases

        try:
            self._graph = tf.compat.v1.wrap_function(
                import_graph, [tf.TensorSpec([None, None, None, 3], tf.float32)])
        except (ValueError, KeyError) as error:
            raise ValueError(f"{path}: not the 2015 Inception graph (needs ExpandDims, pool_3, "
                             f"softmax/weights, softmax/biases): {error}") from error

    def _features_and_logits(self, images):
        return self._graph(tf.cast(images, tf.float32))


class RandomConvFeatures(FeatureExtractor):
    """A small conv net with fixed random weights (seeded): a deterministic stand-in for
    Inception in tests. Two 3x3 stride-2 conv + ReLU layers, global average pool to
    ``feature_size`` features, a dense layer to ``num_classes`` logits."""

    name = "random-conv"

    def __init__(self, seed: int = 0, feature_size: int = 32, num_classes: int = 10,
                 batch_size: int = 64, progress: bool = False):
        super().__init__(batch_size, progress)
        rng = np.random.default_rng(seed)
        self._conv1 = tf.constant(rng.normal(0, (2 / 27) ** 0.5, (3, 3, 3, 16)), tf.float32)
        self._conv2 = tf.constant(rng.normal(0, (2 / 144) ** 0.5, (3, 3, 16, feature_size)),
                                  tf.float32)
        self._dense = tf.constant(rng.normal(0, feature_size ** -0.5,
                                             (feature_size, num_classes)), tf.float32)
        self.name = f"random-conv-{seed}-{feature_size}"

    def _features_and_logits(self, images):
        x = tf.cast(images, tf.float32) / 127.5 - 1.0
        x = tf.nn.relu(tf.nn.conv2d(x, self._conv1, 2, "SAME"))
        x = tf.nn.relu(tf.nn.conv2d(x, self._conv2, 2, "SAME"))
        features = tf.reduce_mean(x, axis=[1, 2])
        return features, tf.matmul(features, self._dense)
