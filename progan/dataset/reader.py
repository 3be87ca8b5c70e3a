"""Read a prepared dataset (ours or the reference tool's) as batches for training.

``load`` serves batches in a stream whose content is a pure function of ``(seed,
position)``: the image at stream position ``p`` is record ``permutation_e[p mod n]`` of
the split, with ``e = p div n`` the epoch and ``permutation_e`` drawn from
``numpy.random.default_rng([seed, e, 0])``; it is mirrored when bit ``p mod n`` of
``default_rng([seed, e, 1])`` says so. Resuming at ``start_image=N`` therefore yields
exactly what an uninterrupted stream yields from image ``N`` on, for any ``N >= 0`` and
any batch size.

Two modes serve that same stream (they order identically, so a run may switch between
them, e.g. after a change of the memory budget, without changing its data):

- in memory: a split whose level fits the memory budget is parsed once into a uint8
  array (200,000 CelebA images are 0.6 GB at 32x32, 2.5 GB at 64x64) and batches are
  gathered from it;
- streaming: a larger level (a 1024x1024 CelebA-HQ level is ~94 GB) is read from disk
  record by record. Every record of a level has the same size (same shape, same
  ``tf.train.Example`` layout), so record ``i`` sits at byte ``i * record_size``; each
  batch reads exactly its records with ``pread`` (sorted, adjacent records merged)
  into a buffer of one batch. Memory is bounded by the batch and a prefetch of two
  batches, whatever the level's size; the page cache does the rest. The record
  framing is checked on every read (length, and the bytes around the pixels), not the
  CRCs: ``progan-dataset verify`` checks the files' sha256.

The budget defaults to a quarter of this machine's (or cgroup's) memory; set it with
``load(memory_budget=...)`` or the environment variable ``PROGAN_DATA_MEMORY_BUDGET``
(bytes, or with a K/M/G suffix).

Multi-worker training: ``load(shard_index=w, shard_count=W, shard_block=L)`` yields
worker ``w``'s share of each global batch: the samples ``i`` of the global batch with
``(i // L) % W == w``, in increasing ``i``. With ``L`` = replicas per worker, worker
``w``'s share is exactly the samples of its replicas ``w*L .. w*L + L - 1`` when replica
``r`` of ``R = W*L`` takes samples ``r, r + R, ...`` (progan.training.distribute), and
its local replica ``j`` takes samples ``j, j + L, ...`` of the share. The shares of
all workers are disjoint, their union is the one-worker global batch, and each worker
reads only its records (a sharded load always streams).

Labels (``read_labels``, ``load(labels=True)``): our data sets name their labels file in
dataset.json; a reference-tool data set uses the first ``*.labels`` file of its folder, as
the reference loader does (names ``label0``, ..., one_hot when every row is). Labels are
small (CelebA's are 32 MB), so both modes hold them in memory and gather the rows of
the records each batch holds: row ``i`` belongs to record ``i``, mirrored or not.
"""

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from progan.dataset.format import (LABEL_KINDS, DatasetError, find_labels_file, find_level_files,
                                   labels_kind, read_manifest, tensorflow)

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
      label_file: the labels file (dataset.json's, else the first ``*.labels``), or None.
      channels: colour channels of every record, 1 or 3: dataset.json's, or for a data set
        without one read from the records themselves (their ``shape`` feature).
    """

    path: Path
    manifest: dict | None
    level_files: dict
    image_count: int
    train_count: int
    label_file: Path | None = None
    channels: int = 3

    @property
    def resolutions(self):
        """The resolutions of the levels present, lowest first."""
        return sorted(self.level_files)

    @property
    def label_names(self):
        """Names of the label columns, [] without labels; from dataset.json, or for a
        reference-tool data set ``label0, label1, ...`` (reads only the file's header)."""
        if self.label_file is None:
            return []
        if self.manifest is not None and "labels" in self.manifest:
            return list(self.manifest["labels"]["names"])
        shape, _ = _label_header(self.label_file, self.image_count)
        return [f"label{index}" for index in range(shape[1])]

    @property
    def label_size(self):
        """Number of label columns (0 without labels)."""
        return len(self.label_names)

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
    """DatasetInfo of a dataset directory; checks the files against dataset.json if present,
    else the records' own shapes against their file names."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: not a dataset directory{_build_hint(path)}")
    manifest = read_manifest(path)
    level_files = find_level_files(path)
    if manifest is None:
        if not level_files:
            raise DatasetError(f"{path}: no <name>-rXX.tfrecords files and no dataset.json, so not "
                               f"a data set{_build_hint(path)}")
        channels = _record_channels(level_files)
        image_count = count_records(level_files[min(level_files)])
        warnings.warn(f"{path}: no dataset.json (a reference-tool dataset?); "
                      f"treating all {image_count} records as the train split", stacklevel=2)
        return DatasetInfo(path, None, level_files, image_count, image_count, find_labels_file(path),
                           channels)
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
    label_file = find_labels_file(path)
    if "labels" in manifest:
        label_file = path / manifest["labels"]["file"]
        if not label_file.is_file():
            raise DatasetError(f"{label_file}: listed in dataset.json but missing")
    return DatasetInfo(path, manifest, listed, manifest["image_count"], manifest["train_count"],
                       label_file, manifest.get("channels", 3))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def _build_hint(path):
    """For a path that is no data set: the progan-dataset command that builds one from it,
    if it holds images (CelebA's, by their names, or any), as ``": build one with ..."``."""
    celeba_names = ("img_align_celeba", "img_align_celeba_png", "img_align_celeba.zip",
                    "list_attr_celeba.txt", "list_attr_celeba.csv")
    if path.is_file():
        if path.suffix.lower() == ".zip" and "celeba" in path.name.lower():
            return f"; it looks like CelebA: build a data set with progan-dataset create_celeba OUT {path}"
        return ""
    if not path.is_dir():
        return ""
    names, images = set(), 0
    for index, entry in enumerate(os.scandir(path)):
        if index >= 10_000:  # enough to tell; CelebA's folder alone has 202,599
            break
        names.add(entry.name)
        images += Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
        if entry.is_dir() and not images:  # images one folder down (class folders)
            images += any(Path(name).suffix.lower() in IMAGE_SUFFIXES
                          for name in os.listdir(entry.path)[:100])
    if names & set(celeba_names) or "000001.jpg" in names or "000001.png" in names:
        return f"; it looks like CelebA: build a data set with progan-dataset create_celeba OUT {path}"
    if images:
        return (f"; it holds images: build a data set with progan-dataset create_from_images OUT "
                f"{path} --size N (N a power of two, e.g. 64)")
    return ""


def _record_channels(level_files):
    """Channels of the records of a data set without dataset.json, from each level file's
    first record; a one-line error when a file's records do not match its name."""
    channels = None
    for resolution, file in sorted(level_files.items()):
        shape = first_record_shape(file)
        if len(shape) != 3 or shape[1:] != (resolution, resolution) or shape[0] not in (1, 3):
            raise DatasetError(f"{file}: the first record's shape is {list(shape)}, expected "
                               f"[C, {resolution}, {resolution}] with C 1 or 3 (as the file name says)")
        if channels not in (None, shape[0]):
            raise DatasetError(f"{file}: records of {shape[0]} channels, but the other levels "
                               f"have {channels}")
        channels = shape[0]
    return channels


def first_record_shape(file):
    """The ``shape`` feature ([C, H, W]) of a level file's first record, as a tuple."""
    tf = tensorflow()
    try:
        for record in tf.data.TFRecordDataset(str(file)).take(1).as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            return tuple(int(v) for v in example.features.feature["shape"].int64_list.value)
    except (tf.errors.OpError, ValueError) as error:  # protobuf's DecodeError is a ValueError
        reason = getattr(error, "message", str(error)).splitlines()[0]
        raise DatasetError(f"{file}: unreadable records ({reason})") from None
    raise DatasetError(f"{file}: holds no records")


@dataclass(frozen=True)
class LabelSet:
    """The labels of a split's records.

    Attributes:
      values: float32 [count, L], row k the labels of the split's record k.
      names: list of L column names.
      kind: "multi_label" (independent 0/1 attributes) or "one_hot" (one class per row);
        None when the data set has no labels (then L = 0).
    """

    values: np.ndarray
    names: list
    kind: str | None

    @property
    def size(self):
        """L, the number of label columns."""
        return self.values.shape[1]


def _label_header(file, count):
    """(shape, dtype) from a labels file's NumPy header; a one-line error unless it is a
    2-D float array of ``count`` rows."""
    expected = f"expected float32 [{count}, L] labels written with np.save (one row per record)"
    try:
        with open(file, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)  # 2.0 and 3.0 differ in text only
            shape, _, dtype = read_header(handle)
    except (OSError, ValueError, EOFError, SyntaxError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DatasetError(f"{file}: not a NumPy array file ({reason[:80]}); {expected}") from None
    if len(shape) != 2 or dtype.kind != "f":
        raise DatasetError(f"{file}: holds {dtype} {list(shape)}; {expected}")
    if shape[0] != count:
        raise DatasetError(f"{file}: has {shape[0]} rows but the level files hold {count} records; "
                           f"{expected}")
    return shape, dtype


def _load_label_values(info):
    """float32 [image_count, L] of a data set's labels file, checked (see ``read_labels``)."""
    file = info.label_file
    shape, _ = _label_header(file, info.image_count)
    try:
        with open(file, "rb") as handle:
            values = np.load(handle, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DatasetError(f"{file}: cannot be read by np.load ({reason[:80]}); expected "
                           f"float32 [{info.image_count}, {shape[1]}] labels") from None
    entry = (info.manifest or {}).get("labels")
    if entry is not None and len(entry["names"]) != shape[1]:
        raise DatasetError(f"{file}: has {shape[1]} labels per row but dataset.json names "
                           f"{len(entry['names'])}")
    return values.astype(np.float32, copy=False)


def read_labels(path, split="train"):
    """The labels of a split's records as a LabelSet (L = 0, kind None, without labels).

    Our data sets: the file dataset.json names, with its names and kind. Reference-tool
    data sets: the first ``*.labels`` file of the folder (names ``label0`` ...; kind
    "one_hot" when every row is one-hot, else "multi_label"). A labels file that np.load
    cannot read, that is not a 2-D float array, or whose rows are not one per record is a
    one-line DatasetError naming it.
    """
    return _split_labels(open_dataset(path), split)


def _split_labels(info, split):
    """The LabelSet of a split of an opened data set (see ``read_labels``)."""
    first, stop = info.split_range(split)
    if info.label_file is None:
        return LabelSet(np.zeros((stop - first, 0), np.float32), [], None)
    values = _load_label_values(info)
    kind = ((info.manifest or {}).get("labels") or {}).get("kind")
    if kind not in LABEL_KINDS:  # a reference-tool labels file says nothing of its kind
        kind = labels_kind(values)
    return LabelSet(values[first:stop], info.label_names, kind)


def count_records(file):
    """Number of records in a TFRecord file."""
    tf = tensorflow()
    try:
        return int(tf.data.TFRecordDataset(str(file)).reduce(np.int64(0), lambda count, _: count + 1))
    except tf.errors.OpError as error:
        raise DatasetError(f"{file}: unreadable records ({error.message.splitlines()[0]})") from None


def _parse_batch(serialized):
    """Serialized Examples [B] -> uint8 images [B, H, W, C] (records store CHW)."""
    tf = tensorflow()
    features = tf.io.parse_example(serialized, {
        "shape": tf.io.FixedLenFeature([3], tf.int64),
        "data": tf.io.FixedLenFeature([], tf.string)})
    shape = tf.cast(features["shape"][0], tf.int32)
    pixels = tf.io.decode_raw(features["data"], tf.uint8)
    images = tf.reshape(pixels, tf.concat([[-1], shape], axis=0))
    return tf.transpose(images, [0, 2, 3, 1])


def iter_level(file, first=0, count=None, batch_size=PARSE_BATCH):
    """uint8 image batches [<=batch_size, H, W, C] of records first.. of a level file, in order."""
    tf = tensorflow()
    records = tf.data.TFRecordDataset(str(file), buffer_size=8 << 20).skip(first)
    if count is not None:
        records = records.take(count)
    batches = records.batch(batch_size).map(_parse_batch, num_parallel_calls=2)
    try:
        yield from without_autotune(batches.prefetch(2)).as_numpy_iterator()
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


BUDGET_ENV = "PROGAN_DATA_MEMORY_BUDGET"
BUDGET_FRACTION = 0.25
STREAM_PREFETCH = 2
# Batches in flight from memory: the generator is the serial part, the map only casts.
MEMORY_PREFETCH = 4


def without_autotune(dataset):
    """``dataset`` with tf.data's autotuning off: its pipelines then have fixed parallelism
    and buffers, and no tuning thread. That thread sleeps for up to a minute between
    rounds and is not woken when its iterator is dropped: the training loop, which drops
    one iterator per stage, sat in that destructor for 5 to 45 seconds at some stage
    switches and at the end of a run. Without it an iterator goes in milliseconds."""
    tf = tensorflow()
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _machine_memory():
    """Bytes of memory of this machine, or of its cgroup when that is smaller."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def parse_bytes(text, what=BUDGET_ENV):
    """'2G', '512M', '1000000' -> bytes; a clear error otherwise."""
    value = str(text).strip().upper().removesuffix("B")
    scale = 1
    if value and value[-1] in "KMGT":
        scale = 1 << (10 * ("KMGT".index(value[-1]) + 1))
        value = value[:-1]
    try:
        number = float(value)
    except ValueError:
        number = -1
    if not (number >= 0 and number * scale < 2 ** 63):  # no inf, no NaN, no overflow
        raise DatasetError(f"{what} {text!r}: expected a number of bytes such as 2G, 512M or 1000000")
    return int(number * scale)


def memory_budget(budget=None):
    """Bytes a level may take in memory: ``budget``, else $PROGAN_DATA_MEMORY_BUDGET, else a
    quarter of the machine's (or cgroup's) memory."""
    if budget is not None:
        return parse_bytes(budget, "memory_budget")
    if os.environ.get(BUDGET_ENV):
        return parse_bytes(os.environ[BUDGET_ENV])
    return int(_machine_memory() * BUDGET_FRACTION)


class RecordFile:
    """Random access to the fixed-size records of one level file (see the module docstring).

    Args:
      file: the level file.
      first, count: the records served are ``first .. first + count - 1`` (a split);
        ``read`` takes indices relative to ``first``.
    """

    def __init__(self, file, first, count):
        tf = tensorflow()
        self.file, self.first, self.count = Path(file), int(first), int(count)
        self.fd = os.open(self.file, os.O_RDONLY)
        try:
            head = os.pread(self.fd, 12, 0)
            if len(head) < 12:
                raise DatasetError(f"{file}: too short to hold a record")
            length = int.from_bytes(head[:8], "little")
            record = os.pread(self.fd, length, 12)
            try:
                example = tf.train.Example.FromString(record)
                shape = tuple(example.features.feature["shape"].int64_list.value)
                data = example.features.feature["data"].bytes_list.value[0]
            except Exception as error:  # protobuf raises its own DecodeError
                raise DatasetError(f"{file}: the first record is not an image Example ({error})") from None
            if len(shape) != 3 or len(data) != int(np.prod(shape)):
                raise DatasetError(f"{file}: the first record's shape {shape} does not match its data")
            self.shape = shape  # C, H, W
            self.data_start = 12 + self._data_offset(record, data)
            self.record_size = 12 + length + 4
            size = os.fstat(self.fd).st_size
            if size % self.record_size or size // self.record_size < self.first + self.count:
                raise DatasetError(
                    f"{file}: records differ in size or are missing ({size} bytes is not "
                    f"{self.first + self.count} records of {self.record_size}); it cannot be streamed, "
                    "rebuild it with progan-dataset or raise the memory budget")
            template = head + record
            self.header = np.frombuffer(template[:self.data_start], np.uint8)
            self.trailer = np.frombuffer(template[self.data_start + len(data):], np.uint8)
        except BaseException:
            os.close(self.fd)
            raise

    @staticmethod
    def _data_offset(record, data):
        """Where the pixel bytes start in a serialized Example (after their field's tag and length)."""
        length, varint = len(data), bytearray()
        while True:
            byte = length & 0x7F
            length >>= 7
            varint.append(byte | (0x80 if length else 0))
            if not length:
                break
        key = b"\x0a" + bytes(varint)
        start = record.find(key)
        while start >= 0:
            offset = start + len(key)
            if record[offset:offset + len(data)] == data:
                return offset
            start = record.find(key, start + 1)
        raise DatasetError("the first record's pixel bytes cannot be located")

    def read(self, indices):
        """uint8 [len(indices), H, W, C] of records ``first + indices``, in the given order.
        Reads go in file order; runs of adjacent records are one call."""
        indices = np.asarray(indices, np.int64)
        order = np.argsort(indices, kind="stable")
        wanted = indices[order]
        size = self.record_size
        buffer = np.empty((len(indices), size), np.uint8)
        memory = memoryview(buffer).cast("B")
        breaks = (np.flatnonzero((np.diff(wanted) != 1) | (np.diff(order) != 1)) + 1).tolist()
        rows, offsets = order.tolist(), ((self.first + wanted) * size).tolist()
        for start, stop in zip([0] + breaks, breaks + [len(rows)]):
            row = rows[start]
            view = memory[row * size:(row + stop - start) * size]
            if os.preadv(self.fd, [view], offsets[start]) != len(view):
                raise DatasetError(f"{self.file}: ended inside record {offsets[start] // size}")
        data_stop = self.data_start + int(np.prod(self.shape))
        good = ((buffer[:, :self.data_start] == self.header).all(axis=1)
                & (buffer[:, data_stop:data_stop + len(self.trailer)] == self.trailer).all(axis=1))
        if not good.all():
            bad = self.first + int(indices[np.flatnonzero(~good)[0]])
            raise DatasetError(f"{self.file}: record {bad} does not have the layout of the first "
                               "one (a damaged or foreign file); run progan-dataset verify")
        pixels = buffer[:, self.data_start:data_stop].reshape(len(indices), *self.shape)
        # CHW -> HWC one channel at a time: 4x faster than a 4-d transposed copy, which
        # itself beats tf.transpose on uint8 here.
        images = np.empty((len(indices), *self.shape[1:], self.shape[0]), np.uint8)
        for channel in range(self.shape[0]):
            images[..., channel] = pixels[:, channel]
        return images

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        self.close()


def shard_slots(batch_size, shard_index=0, shard_count=1, shard_block=1):
    """Indices within a global batch of one worker's share: ``(i // block) % count == index``."""
    slots = np.arange(batch_size)
    return slots[(slots // shard_block) % shard_count == shard_index]


def uses_memory(path, resolution, split="train", memory_budget=None, shard_count=1):
    """Whether ``load`` with these arguments holds the level in memory (else it streams)."""
    info = open_dataset(path)
    first, stop = info.split_range(split)
    return _fits(stop - first, resolution, info.channels, memory_budget, shard_count)


def _fits(count, resolution, channels, budget, shard_count):
    return shard_count == 1 and count * resolution * resolution * channels <= memory_budget(budget)


def load(path, resolution, split="train", batch_size=32, mirror=False, seed=0, start_image=0,
         shuffle=True, memory_budget=None, shard_index=0, shard_count=1, shard_block=1,
         labels=False):
    """An endless ``tf.data.Dataset`` of float32 image batches [batch, R, R, C] in [-1, 1].

    Batch k holds stream positions ``start_image + k*batch_size ...`` (see the module
    docstring), so ``start_image=N`` resumes exactly after N images, for any N and any
    batch size. uint8 x maps to x / 127.5 - 1; ``mirror`` flips left-right per image.

    Args:
      path: dataset directory (ours or the reference tool's).
      resolution: level to read (4, 8, ..., must be present).
      split: 'train', 'test' or 'all' (see DatasetInfo.split_range).
      batch_size: images per *global* batch; batches never run short (the stream is endless).
      mirror: random left-right flips, a pure function of (seed, position).
      seed: fixes the shuffle and the flips.
      start_image: stream position of the first image.
      shuffle: False reads the split in file order, epoch after epoch.
      memory_budget: bytes (or '2G') the level may take in memory; a larger level streams
        from disk. Default: $PROGAN_DATA_MEMORY_BUDGET, else a quarter of the memory.
      shard_index, shard_count, shard_block: yield only this worker's share of each
        global batch, ``batch_size // shard_count`` images (see the module docstring);
        ``batch_size`` must be a multiple of ``shard_count * shard_block``.
      labels: yield ``(images, labels)`` batches, ``labels`` float32 [batch, L] the rows
        of the records in the batch (see ``read_labels``; mirroring leaves them as they
        are). A data set without labels is then an error.
    """
    tf = tensorflow()
    info = open_dataset(path)
    first, stop = info.split_range(split)
    _check_load(path, split, stop - first, batch_size, start_image, shard_index, shard_count,
                shard_block)
    label_values = None
    if labels:
        if info.label_file is None:
            raise DatasetError(f"{path}: has no labels (no *.labels file); load it with labels=False")
        label_values = _split_labels(info, split).values
    slots = shard_slots(batch_size, shard_index, shard_count, shard_block)
    streaming = not _fits(stop - first, resolution, info.channels, memory_budget, shard_count)
    gather, shape = _gatherer(info, resolution, first, stop, streaming)

    def batches():
        order = StreamOrder(seed, stop - first, shuffle)
        position = start_image
        while True:
            indices, flips = order(position + slots)
            batch = gather(indices)
            if mirror:  # numpy: several times faster than tf.reverse/tf.where on uint8 here
                batch[flips] = batch[flips, :, ::-1]
            yield batch if label_values is None else (batch, label_values[indices])
            position += batch_size

    spec = tf.TensorSpec([len(slots), *shape], tf.uint8)
    if label_values is not None:
        spec = (spec, tf.TensorSpec([len(slots), label_values.shape[1]], tf.float32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec)

    def to_float(batch, label_rows=None):
        images = tf.cast(batch, tf.float32) / 127.5 - 1.0
        return images if label_rows is None else (images, label_rows)

    # Streaming keeps memory bounded: two batches in flight, whatever the level's size.
    parallel = STREAM_PREFETCH if streaming else MEMORY_PREFETCH
    dataset = dataset.map(to_float, num_parallel_calls=parallel, deterministic=True)
    return without_autotune(dataset.prefetch(parallel))


def _check_load(path, split, count, batch_size, start_image, shard_index, shard_count, shard_block):
    """One-line errors for arguments of ``load`` that cannot serve a stream."""
    if count == 0:
        raise DatasetError(f"{path}: the {split} split is empty")
    if batch_size < 1 or start_image < 0:
        raise DatasetError(f"batch_size {batch_size}, start_image {start_image}: "
                           "expected batch_size >= 1 and start_image >= 0")
    if not (shard_count >= 1 and shard_block >= 1 and 0 <= shard_index < shard_count
            and batch_size % (shard_count * shard_block) == 0):
        raise DatasetError(
            f"shard {shard_index} of {shard_count} (block {shard_block}) with batch_size {batch_size}: "
            "expected 0 <= shard_index < shard_count and batch_size a multiple of "
            "shard_count * shard_block")


def _gatherer(info, resolution, first, stop, streaming):
    """(gather(indices) -> uint8 [len, R, R, C], (R, R, C)) of records first..stop-1 of a
    level: from memory, or read from disk per call when streaming."""
    file = info.level_file(resolution)
    if not streaming:
        images = _read_level(info, resolution, first, stop)
        return images.__getitem__, images.shape[1:]
    records = RecordFile(file, first, stop - first)
    if records.shape[1:] != (resolution, resolution):
        records.close()
        raise DatasetError(f"{file}: records are {records.shape[1]}x{records.shape[2]}, "
                           f"expected {resolution}x{resolution}")
    return records.read, (resolution, resolution, records.shape[0])
