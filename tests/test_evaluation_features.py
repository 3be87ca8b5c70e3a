"""Feature extractors: shapes, determinism, and the wiring of the Inception variants."""

import numpy as np
import pytest
import scipy.special
import tensorflow as tf

from progan.evaluation.features import (InceptionGraph2015, KerasInceptionV3,
                                        RandomConvFeatures)


def images(count, resolution=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, resolution, resolution, 3),
                                                dtype=np.uint8)


def test_random_conv_features_are_deterministic_and_batch_independent():
    batch = images(10)
    a = RandomConvFeatures(seed=1, feature_size=24, batch_size=3)
    b = RandomConvFeatures(seed=1, feature_size=24, batch_size=10)
    features = a.features(batch)
    assert features.shape == (10, 24) and features.dtype == np.float64
    np.testing.assert_allclose(features, b.features(batch), rtol=1e-5, atol=1e-6)
    assert a.logits(batch).shape == (10, 10)
    assert not np.allclose(features, RandomConvFeatures(seed=2, feature_size=24).features(batch))
    assert np.std(features, axis=0).mean() > 0  # different images, different features


def test_extractor_rejects_non_uint8_images():
    with pytest.raises(ValueError, match=r"uint8 \[N, H, W, 3\]"):
        RandomConvFeatures().features(np.zeros((2, 8, 8, 3), np.float32))


def test_keras_inception_v3_pool_features_and_logits_match_the_model():
    extractor = KerasInceptionV3(weights=None, batch_size=2)  # no download on this machine
    batch = images(3, resolution=32)
    features, logits = extractor.features(batch), extractor.logits(batch)
    assert features.shape == (3, 2048) and logits.shape == (3, 1000)
    resized = tf.image.resize(tf.cast(batch, tf.float32), [299, 299], method="bilinear")
    scaled = resized.numpy() / 127.5 - 1.0
    probabilities = extractor.model(scaled, training=False).numpy()
    np.testing.assert_allclose(scipy.special.softmax(logits, axis=1), probabilities, atol=1e-5)


def test_keras_inception_v3_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--inception-weights .*missing.h5: no such file"):
        KerasInceptionV3(weights=tmp_path / "missing.h5")


def write_fake_inception_graph(path, rng):
    """A tiny GraphDef with the 2015 graph's tensor names: ExpandDims -> pool_3, softmax."""
    kernel = rng.normal(size=(3, 3, 3, 5)).astype(np.float32)
    weights = rng.normal(size=(5, 7)).astype(np.float32)
    biases = rng.normal(size=7).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [1, None, None, 3], name="ExpandDims")
        scaled = (images - 128.0) / 128.0
        conv = tf.nn.relu(tf.nn.conv2d(scaled, kernel, 1, "SAME"))
        tf.reduce_mean(conv, axis=[1, 2], keepdims=True, name="pool_3")
        tf.constant(weights, name="softmax/weights")
        tf.constant(biases, name="softmax/biases")
    path.write_bytes(graph.as_graph_def().SerializeToString())
    return kernel, weights, biases


def test_inception_graph_2015_reads_pool_3_and_logits(tmp_path):
    kernel, weights, biases = write_fake_inception_graph(tmp_path / "graph.pb",
                                                         np.random.default_rng(0))
    extractor = InceptionGraph2015(tmp_path / "graph.pb", batch_size=3)
    batch = images(4, resolution=8)
    features, logits = extractor.features(batch), extractor.logits(batch)
    scaled = (batch.astype(np.float64) - 128) / 128
    padded = np.pad(scaled, [(0, 0), (1, 1), (1, 1), (0, 0)])
    conv = sum(np.einsum("nhwc,cd->nhwd", padded[:, dy:dy + 8, dx:dx + 8], kernel[dy, dx])
               for dy in range(3) for dx in range(3))
    expected = np.maximum(conv, 0).mean(axis=(1, 2))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, expected @ weights + biases, rtol=1e-4, atol=1e-4)


def test_inception_graph_2015_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--inception-graph .*none.pb: no such file"):
        InceptionGraph2015(tmp_path / "none.pb")
    (tmp_path / "junk.pb").write_bytes(b"\xff\xfe not a protobuf")
    with pytest.raises(ValueError, match="junk.pb: not a TensorFlow GraphDef"):
        InceptionGraph2015(tmp_path / "junk.pb")
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="input")
    (tmp_path / "other.pb").write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(ValueError, match="other.pb: not the 2015 Inception graph"):
        InceptionGraph2015(tmp_path / "other.pb")
