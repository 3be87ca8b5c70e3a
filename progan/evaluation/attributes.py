"""Attribute agreement of a conditional generator (`progan evaluate --metrics attributes`).

A conditional run is asked for labels (e.g. "Smiling, no Eyeglasses"); does it draw them?
A small Keras CNN is trained on the real images of the run's data set at the snapshot's
resolution (trained once per data set level and cached beside the other evaluation caches,
with its own accuracy on real images it did not train on), then classifies the fakes. The
agreement of one label is the fraction of fakes whose predicted label equals the requested
one; the metric is their mean (higher is better).

Chance, for reading the figure: a generator that ignores its labels but draws data-like
images agrees on a binary attribute of frequency p with probability p^2 + (1 - p)^2 (the
requested labels are drawn from the data), and on one of K classes with probability
sum_k p_k^2. Both are recorded (``chance``), and so is the classifier's accuracy
(``classifier_accuracy``): agreement cannot be read beyond what the classifier gets right.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from progan.backend import keras, tf
from progan.dataset.reader import without_autotune

MAX_TRAIN_IMAGES = 20000
EPOCHS = 6
MIN_STEPS = 500  # small data sets get more epochs: a classifier needs steps, not epochs
BATCH = 64
HELD_OUT = 0.1  # of the training images, when the data set has no test split


def build_classifier(resolution: int, channels: int, label_size: int) -> keras.Model:
    """Three conv blocks (32, 64, 128 filters, each halving the size while above 4x4), global
    average pooling and one logit per label."""
    inputs = keras.Input((resolution, resolution, channels), name="images")
    features = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    size = resolution
    for filters in (32, 64, 128):
        features = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(features)
        if size > 4:
            features = keras.layers.MaxPooling2D()(features)
            size //= 2
    features = keras.layers.GlobalAveragePooling2D()(features)
    return keras.Model(inputs, keras.layers.Dense(label_size, name="logits")(features))


def predict(model: keras.Model, images: np.ndarray, kind: str) -> np.ndarray:
    """0/1 float32 [N, L] predictions: each attribute's logit > 0, or the arg-max class."""
    logits = model.predict(images, batch_size=256, verbose=0)
    if kind == "one_hot":
        return np.eye(logits.shape[1], dtype=np.float32)[np.argmax(logits, axis=1)]
    return (logits > 0).astype(np.float32)


def agreement(predicted: np.ndarray, requested: np.ndarray, kind: str) -> np.ndarray:
    """Per-label fraction of images whose prediction equals the request ([L]); for one-hot
    classes, the fraction predicted as the requested class, counted per requested class."""
    if kind == "one_hot":
        hits = (predicted * requested).sum(axis=1)  # 1 where the arg-max class was requested
        counts = requested.sum(axis=0)
        return np.where(counts > 0, (requested * hits[:, None]).sum(axis=0) / np.maximum(counts, 1),
                        np.nan)
    return (predicted == requested).mean(axis=0)


def chance(labels: np.ndarray, kind: str) -> float:
    """Mean agreement of a generator that ignores its labels (see the module docstring)."""
    frequency = labels.mean(axis=0)
    if kind == "one_hot":
        return float((frequency ** 2).sum())
    return float((frequency ** 2 + (1 - frequency) ** 2).mean())


def train_classifier(images, labels, held_images, held_labels, kind: str, seed: int = 0,
                     log=print):
    """A fitted classifier and its per-label accuracy on the held-out images."""
    keras.utils.set_random_seed(seed)
    model = build_classifier(images.shape[1], images.shape[3], labels.shape[1])
    loss = (keras.losses.CategoricalCrossentropy(from_logits=True) if kind == "one_hot"
            else keras.losses.BinaryCrossentropy(from_logits=True))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    steps = max(MIN_STEPS, EPOCHS * -(-len(images) // BATCH))
    log(f"attributes: training the classifier on {len(images)} real images at "
        f"{images.shape[1]}x{images.shape[1]} ({steps} steps of {BATCH})")
    batches = without_autotune(tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
                               .shuffle(len(images), seed=seed).repeat().batch(BATCH))
    model.fit(batches, epochs=1, steps_per_epoch=steps, verbose=0,
              shuffle=False)  # the data set shuffles itself
    accuracy = agreement(predict(model, held_images, kind), held_labels, kind)
    return model, accuracy


def cached_classifier(cache_dir: Path, key: str, load_data, kind: str, log=print):
    """``(model, per-label accuracy on held-out reals)``, trained once per ``key`` (a data
    set level) and kept as ``attributes-KEY.keras`` + ``.json`` in ``cache_dir``."""
    cache_dir = Path(cache_dir)
    model_file = cache_dir / f"attributes-{key}.keras"
    info_file = model_file.with_suffix(".json")
    if model_file.exists() and info_file.exists():
        try:
            model = keras.saving.load_model(model_file, compile=False)
            return model, np.asarray(json.loads(info_file.read_text())["accuracy"], np.float64)
        except (OSError, ValueError, KeyError) as error:
            log(f"attributes: retraining, the cached classifier {model_file} is unreadable ({error})")
    model, accuracy = train_classifier(*load_data(), kind=kind, log=log)
    cache_dir.mkdir(parents=True, exist_ok=True)
    temporary = model_file.with_name(f".tmp-{model_file.name}")
    model.save(temporary)
    temporary.replace(model_file)
    info_file.write_text(json.dumps({"accuracy": [float(a) for a in accuracy]}) + "\n")
    return model, accuracy


def split_for_classifier(images: np.ndarray, labels: np.ndarray, test_images=None,
                         test_labels=None):
    """(train images, train labels, held-out images, held-out labels): the test split when
    there is one, else the last ``HELD_OUT`` of the training images."""
    images, labels = images[:MAX_TRAIN_IMAGES], labels[:MAX_TRAIN_IMAGES]
    if test_images is not None and len(test_images):
        return images, labels, test_images, test_labels
    cut = max(1, int(len(images) * (1 - HELD_OUT)))
    return images[:cut], labels[:cut], images[cut:], labels[cut:]


def evaluate_attributes(evaluator, resolution: int, fakes: np.ndarray) -> dict:
    """The ``attributes`` metric of one snapshot (see the module docstring)."""
    from progan.dataset.reader import read_images, read_labels, open_dataset
    from progan.images import seed_labels

    table = evaluator.run.read_labels(evaluator.config.model.label_size)
    requested = seed_labels(range(len(fakes)), table.values)
    data = evaluator.data

    def load_data():
        train = read_labels(data, "train")
        images = read_images(data, resolution, "train", min(len(train.values), MAX_TRAIN_IMAGES))
        first, stop = open_dataset(data).split_range("test")
        test_images = test_labels = None
        if stop > first:
            test_labels = read_labels(data, "test").values
            test_images = read_images(data, resolution, "test", len(test_labels))
        return split_for_classifier(images, train.values[:len(images)], test_images, test_labels)

    key = f"r{resolution}-{evaluator._level_sha256(resolution)[:16]}"
    model, accuracy = cached_classifier(evaluator._cache_dir(), key, load_data, table.kind,
                                        log=evaluator.log)
    per_label = agreement(predict(model, fakes, table.kind), requested, table.kind)
    return {"value": float(np.nanmean(per_label)),
            "values": {name: float(value) for name, value in zip(table.names, per_label)},
            "chance": chance(table.values, table.kind),
            "classifier_accuracy": float(np.nanmean(accuracy)),
            "classifier_accuracies": {name: float(a) for name, a in zip(table.names, accuracy)}}


__all__ = ["agreement", "build_classifier", "cached_classifier", "chance", "evaluate_attributes",
           "predict", "train_classifier"]
