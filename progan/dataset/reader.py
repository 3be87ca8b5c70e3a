"""Read a prepared dataset (ours or the reference tool's) as batches for training.

``load`` holds the requested level's split in memory as uint8 (parsed from the
TFRecord file in large batches: 200,000 CelebA images are 0.6 GB at 32x32 and
2.5 GB at 64x64) and serves batches from it in a stream whose content is a pure
function of ``(seed, position)``: the image at stream position ``p`` is record
``permutation_e[p mod n]`` of the split, with ``e = p div n`` the epoch and
``permutation_e`` drawn from ``numpy.random.default_rng([seed, e, 0])``; it is
mirrored when bit ``p mod n`` of ``default_rng([seed, e, 1])`` says so. Resuming
at ``start_image=N`` therefore yields exactly what an uninterrupted stream
yields from image ``N`` on, for any ``N >= 0`` and any batch size.
"""

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from progan.dataset.format import DatasetError, find_level_files, read_manifest

SPLITS = ("train", "test", "all")
PARSE_BATCH = 2048


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset directory holds.

    Attributes:
      path: the directory.
      manifest: parsed dataset.json, or None (reference-tool dataset).
      level_files: {resolution: Path} of the level files present.
      image_count: records per level file.
      train_count: records in the train split (the first ones).
    """

    path: Path
    manifest: dict | None
    level_files: dict
    image_count: int
    train_count: int

    def split_range(self, split):
        """(first, stop) record indices of a split: 'train', 'test' or 'all'."""
        if split == "train":
            return 0, self.train_count
        if split == "test":
            return self.train_count, self.image_count
        if split == "all":
            return 0, self.image_count
        raise DatasetError(f"split {split!r}: expected one of {', '.join(SPLITS)}")

    def level_file(self, resolution):
        """The level file of a resolution; a clear error if the dataset lacks it."""
        if resolution not in self.level_files:
            have = ", ".join(str(r) for r in sorted(self.level_files)) or "none"
            raise DatasetError(
                f"{self.path}: has no {resolution}x{resolution} level (levels present: {have}); "
                "rebuild it with a higher --max-resolution")
        return self.level_files[resolution]


def open_dataset(path):
    """DatasetInfo of a dataset directory; checks the files against dataset.json if present."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: not a dataset directory")
    manifest = read_manifest(path)
    level_files = find_level_files(path)
    if manifest is None:
        if not level_files:
            raise DatasetError(f"{path}: no <name>-rXX.tfrecords files and no dataset.json")
        image_count = count_records(level_files[min(level_files)])
        warnings.warn(f"{path}: no dataset.json (a reference-tool dataset?); "
                      f"treating all {image_count} records as the train split", stacklevel=2)
        return DatasetInfo(path, None, level_files, image_count, image_count)
    listed = {}
    for level in manifest["levels"]:
        file = path / level["file"]
        if not file.is_file():
            raise DatasetError(f"{file}: listed in dataset.json but missing")
        size = file.stat().st_size
        if size != level["bytes"]:
            raise DatasetError(
                f"{file}: {size} bytes but dataset.json says {level['bytes']}; the files disagree "
                "with the manifest (run progan-dataset verify, or rebuild the dataset)")
        listed[level["resolution"]] = file
    return DatasetInfo(path, manifest, listed, manifest["image_count"], manifest["train_count"])


def count_records(file):
    """Number of records in a TFRecord file."""
    import tensorflow as tf

    try:
        return int(tf.data.TFRecordDataset(str(file)).reduce(np.int64(0), lambda count, _: count + 1))
    except tf.errors.OpError as error:
        raise DatasetError(f"{file}: unreadable records ({error.message.splitlines()[0]})") from None


def _parse_batch(serialized):
    """Serialized Examples [B] -> uint8 images [B, H, W, C] (records store CHW)."""
    import tensorflow as tf

    features = tf.io.parse_example(serialized, {
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "data": tf.io.FixedLenFeature([], tf.string)})
    shape = tf.cast(features["shape"][0], tf.int32)
    pixels = tf.io.decode_raw(features["data"], tf.uint8)
    images = tf.reshape(pixels, tf.concat([[-1], shape], axis=0))
    return tf.transpose(images, [0, 2, 3, 1])


def iter_level(file, first=0, count=None, batch_size=PARSE_BATCH):
    """uint8 image batches [<=batch_size, H, W, C] of records first.. of a level file, in order."""
    import tensorflow as tf

    records = tf.data.TFRecordDataset(str(file), buffer_size=8 << 20).skip(first)
    if count is not None:
        records = records.take(count)
    batches = records.batch(batch_size).map(_parse_batch, num_parallel_calls=tf.data.AUTOTUNE)
    try:
        yield from batches.prefetch(2).as_numpy_iterator()
    except tf.errors.OpError as error:
        raise DatasetError(f"{file}: unreadable records ({error.message.splitlines()[0]})") from None


def _read_level(info, resolution, first, stop):
    """uint8 [stop - first, R, R, C] records first..stop-1 of one level, in file order."""
    file = info.level_file(resolution)
    count = stop - first
    images = None
    filled = 0
    for batch in iter_level(file, first, count):
        if images is None:
            if batch.shape[1:3] != (resolution, resolution):
                raise DatasetError(
                    f"{file}: records are {batch.shape[1]}x{batch.shape[2]}, "
                    f"expected {resolution}x{resolution}")
            images = np.empty((count,) + batch.shape[1:], np.uint8)
        images[filled:filled + len(batch)] = batch
        filled += len(batch)
    if filled != count:
        raise DatasetError(f"{file}: has {first + filled} records, expected at least {stop} "
                           "(the files disagree with the manifest)")
    return images


def read_images(path, resolution, split="train", count=None):
    """The first ``count`` images of a split (all if None), file order, as uint8 [N, R, R, C]."""
    info = open_dataset(path)
    first, stop = info.split_range(split)
    if count is not None:
        if count > stop - first:
            raise DatasetError(f"{path}: the {split} split has {stop - first} images, "
                               f"{count} requested")
        stop = first + count
    if stop == first:
        return np.zeros((0, resolution, resolution, 3), np.uint8)
    return _read_level(info, resolution, first, stop)


class StreamOrder:
    """Which record, mirrored or not, sits at each stream position; pure in (seed, position).

    Epoch e = position div count uses the permutation of ``default_rng([seed, e, 0])``
    (the file order if not shuffling) and the mirror bits of ``default_rng([seed, e, 1])``.
    The last two epochs' arrays are kept, so consecutive batches cost a gather.
    """

    def __init__(self, seed, count, shuffle=True):
        self.seed, self.count, self.shuffle = int(seed), int(count), shuffle
        self._epochs = {}

    def _epoch(self, epoch):
        if epoch not in self._epochs:
            order = (np.random.default_rng([self.seed, epoch, 0]).permutation(self.count)
                     if self.shuffle else np.arange(self.count))
            mirror = np.random.default_rng([self.seed, epoch, 1]).integers(0, 2, self.count).astype(bool)
            self._epochs = {e: arrays for e, arrays in self._epochs.items() if e == epoch - 1}
            self._epochs[epoch] = order, mirror
        return self._epochs[epoch]

    def __call__(self, positions):
        """(record offsets within the split, mirror flags) for an int array of positions."""
        positions = np.asarray(positions, np.int64)
        epochs, offsets = np.divmod(positions, self.count)
        indices = np.empty_like(positions)
        flips = np.empty(positions.shape, bool)
        for epoch in range(int(epochs.min()), int(epochs.max()) + 1):
            members = epochs == epoch
            order, mirror = self._epoch(epoch)
            indices[members] = order[offsets[members]]
            flips[members] = mirror[offsets[members]]
        return indices, flips


def stream_indices(seed, count, positions, shuffle=True):
    """(record offsets, mirror flags) of stream positions, as ``load`` uses them (see StreamOrder)."""
    return StreamOrder(seed, count, shuffle)(positions)


def _memory_limit():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def load(path, resolution, split="train", batch_size=32, mirror=False, seed=0, start_image=0,
         shuffle=True):
    """An endless ``tf.data.Dataset`` of float32 image batches [batch, R, R, C] in [-1, 1].

    Batch k holds stream positions ``start_image + k*batch_size ...`` (see the module
    docstring), so ``start_image=N`` resumes exactly after N images, for any N and any
    batch size. uint8 x maps to x / 127.5 - 1; ``mirror`` flips left-right per image.

    Args:
      path: dataset directory (ours or the reference tool's).
      resolution: level to read (4, 8, ..., must be present).
      split: 'train', 'test' or 'all' (see DatasetInfo.split_range).
      batch_size: images per batch; batches never run short (the stream is endless).
      mirror: random left-right flips, a pure function of (seed, position).
      seed: fixes the shuffle and the flips.
      start_image: stream position of the first image.
      shuffle: False reads the split in file order, epoch after epoch.
    """
    import tensorflow as tf

    info = open_dataset(path)
    first, stop = info.split_range(split)
    count = stop - first
    if count == 0:
        raise DatasetError(f"{path}: the {split} split is empty")
    if batch_size < 1 or start_image < 0:
        raise DatasetError(f"batch_size {batch_size}, start_image {start_image}: "
                           "expected batch_size >= 1 and start_image >= 0")
    channels = (info.manifest or {}).get("channels", 3)
    needed = count * resolution * resolution * channels
    if needed > _memory_limit():
        raise DatasetError(
            f"{path}: the {split} split at {resolution}x{resolution} needs {needed / 2**30:.1f} GiB "
            f"in memory, over half of this machine's RAM; use a smaller resolution or split")
    images = _read_level(info, resolution, first, stop)
    channels = images.shape[-1]

    def batches():
        order = StreamOrder(seed, count, shuffle)
        position = start_image
        while True:
            indices, flips = order(np.arange(position, position + batch_size))
            batch = images[indices]
            if mirror:
                batch[flips] = batch[flips, :, ::-1]
            yield batch
            position += batch_size

    spec = tf.TensorSpec([batch_size, resolution, resolution, channels], tf.uint8)
    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec)
    dataset = dataset.map(lambda batch: tf.cast(batch, tf.float32) / 127.5 - 1.0,
                          num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)
