"""The on-disk format of a prepared dataset: level files, records and the manifest.

A dataset is a directory ``OUT/`` holding one uncompressed TFRecord file per
level, ``OUT/<name>-rXX.tfrecords`` with ``<name>`` the directory's own name and
``XX`` = log2(resolution) from ``02`` (4x4) up to the top level, exactly as the
reference tool (NVIDIA ``dataset_tool.py``) writes them. Each record is a
``tf.train.Example`` with two features:

- ``shape``: int64 list ``[C, H, W]``;
- ``data``: one bytes value, the uint8 image in CHW order.

Record ``i`` of every level file is the same image. Our tool adds
``OUT/dataset.json``, the manifest, a JSON object with these fields:

- ``format`` (``"progan-dataset"``) and ``format_version`` (int, now 1);
- ``tool_version``: the progan version that wrote it;
- ``name``: the ``<name>`` prefix of the level files;
- ``source``: how the images were obtained, ``{"kind": "celeba" | "images" |
  "tfds" | "synthetic", ...}`` with the kind's own parameters (path, split,
  seed, ...);
- ``crop``: ``{"cx", "cy", "size"}`` for CelebA, ``null`` otherwise;
- ``resolution``: the top level written (after ``--max-resolution``);
  ``source_resolution``: the square size the images were cropped/resized to;
- ``channels``: 3 (RGB);
- ``image_count``: records per level file;
- ``order``: ``"permutation(123)"`` (the reference tool's order: record ``j`` is
  source file ``numpy.random.RandomState(123).permutation(N)[j]`` of the
  ``N`` sorted files), ``"permutation(123) by partition"`` (that order within each
  partition of CelebA's ``list_eval_partition``: its train images, then validation, then
  test), ``"source"`` (the source's own order) or ``"generated"``;
- ``train_count`` / ``test_count``: the first ``train_count`` records are the
  train split, the rest the test split;
- ``split`` (absent in data sets of earlier versions): how the train split was chosen, ``{"rule",
  "description"}`` with ``rule`` one of ``"all"`` (every record is train), ``"thesis"``
  (CelebA: the first 200,000 records of the reference order), ``"official"`` (CelebA's
  ``list_eval_partition``; also ``"file"``, and ``"train"``, ``"val"``, ``"test"``: the
  records of each partition, in that order) or ``"train_count"`` (``--train-count``);
- ``skipped``: list of ``{"file", "reason"}`` for inputs that could not be read
  (short reasons: "empty file", "not an image", "truncated JPEG", "damaged PNG (...)");
  ``skipped_count``;
- ``notes``: ``{kind: {"count", "example"}}`` of changes made to usable inputs, e.g.
  ``"enlarged"`` (smaller than the resolution) or ``"16-bit converted"``; may be absent
  in data sets written before progan 0.2;
- ``levels``: list, one entry per level file, top level first, of
  ``{"file", "resolution", "records", "bytes", "sha256"}`` (the record count
  and digest let training and evaluation key caches on a level);
- ``labels`` (only in a data set with labels; absent otherwise, so a data set without
  labels has the manifest and files it always had): ``{"file", "names", "kind",
  "count", "sha256", "origin"}`` describing the labels file below: its name, one name per
  column, ``"multi_label"`` (independent 0/1 attributes, e.g. CelebA's 40) or
  ``"one_hot"`` (exactly one 1 per row: a class), the row count (= ``image_count``),
  its digest, and where the labels came from (e.g. the attributes file read).

Labels, as the reference tool stores them: one file per data set beside the level files,
``OUT/<name>-rxx.labels`` (literally ``rxx``: it serves every level), a NumPy array
written with ``np.save`` to an open file (so no ``.npy`` suffix), float32 ``[N, L]``,
row ``i`` the labels of record ``i``. The reference loader takes the first ``*.labels``
file of the folder in sorted order; with none, the data set has no labels.
"""

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from progan.errors import ProganError
from progan.system import held_native_stderr

FORMAT_NAME = "progan-dataset"
FORMAT_VERSION = 1
MANIFEST_NAME = "dataset.json"
MIN_LOG2 = 2
LEVEL_FILE_PATTERN = re.compile(r"^(?P<name>.+)-r(?P<log2>\d{2})\.tfrecords$")
LABEL_KINDS = ("multi_label", "one_hot")


class DatasetError(ProganError):
    """Bad input or a dataset that cannot be used; the message is one line for the user."""


def tensorflow():
    """The ``tensorflow`` module, which writes and reads the records, imported through
    ``progan.backend``: its C++ start-up lines are held back (shown only if the import
    fails) and its C++ log lines are off, so no TensorFlow line reaches the terminal of the
    dataset tool. A Ctrl-C or SIGTERM during the import propagates without the held lines."""
    backend = sys.modules.get("progan.backend")
    if backend is not None:
        return backend.tf
    interrupted = None
    with held_native_stderr():
        try:
            from progan.backend import tf
        except Exception:  # a real failure: raised with the held lines shown
            raise
        except BaseException as error:  # KeyboardInterrupt, the build's Terminated
            interrupted = error
    if interrupted is not None:
        raise interrupted
    return tf


def level_filename(name, resolution):
    """The reference tool's file name of one level: ``<name>-rXX.tfrecords``, XX = log2(resolution)."""
    return f"{name}-r{log2_resolution(resolution):02d}.tfrecords"


def labels_filename(name):
    """The reference tool's file name of a data set's labels: ``<name>-rxx.labels``."""
    return f"{name}-rxx.labels"


def find_labels_file(directory):
    """The labels file the reference loader would use: the first ``*.labels`` file of the
    folder in sorted order, or None."""
    found = sorted(path for path in Path(directory).glob("*.labels") if path.is_file())
    return found[0] if found else None


def write_labels(path, values):
    """Write labels as the reference tool does: ``np.save`` of float32 [N, L] to an open
    file (no ``.npy`` suffix is added)."""
    with open(path, "wb") as handle:
        np.save(handle, np.asarray(values, np.float32))


def labels_kind(values):
    """``"one_hot"`` if every row holds one 1 and zeros, else ``"multi_label"``."""
    if values.shape[1] and ((values == 0) | (values == 1)).all() and (values.sum(axis=1) == 1).all():
        return "one_hot"
    return "multi_label"


def log2_resolution(resolution):
    """log2 of a power-of-two resolution >= 4; raises DatasetError otherwise."""
    resolution = int(resolution)
    log2 = resolution.bit_length() - 1
    if resolution < 4 or resolution != 1 << log2:
        raise DatasetError(f"resolution {resolution}: expected a power of two >= 4")
    return log2


def find_level_files(directory):
    """Level files in a dataset directory as ``{resolution: Path}`` (reference or our layout)."""
    directory = Path(directory)
    levels = {}
    for path in sorted(directory.iterdir()):
        match = LEVEL_FILE_PATTERN.match(path.name)
        if match and path.is_file():
            levels[1 << int(match["log2"])] = path
    return levels


def serialize_example(image_chw):
    """One record: a serialized ``tf.train.Example`` with ``shape`` [C, H, W] and ``data`` (uint8 CHW bytes)."""
    tf = tensorflow()
    feature = {
        "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=image_chw.shape)),
        "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_chw.tobytes()])),
    }
    # deterministic: map entries in key order, so the same images always give the same bytes
    # (protobuf's default order can change from process to process)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(
        deterministic=True)


def file_sha256(path, chunk_size=1 << 20):
    """Hex sha256 digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory):
    """The parsed ``dataset.json`` of a dataset directory, or None if it has none."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a readable JSON manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path}: not a {FORMAT_NAME} manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format_version {manifest['format_version']} is newer than this tool "
            f"understands ({FORMAT_VERSION}); upgrade progan")
    _check_manifest(manifest, path)
    return manifest


def _check_manifest(manifest, path):
    """One-line errors for a dataset.json that lacks what reading a data set needs."""
    def wrong(field, expected):
        return DatasetError(f"{path}: {field} is missing or wrong, expected {expected}; restore "
                            "dataset.json or rebuild the data set")

    def count(value):
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not count(manifest.get("image_count")):
        raise wrong("'image_count'", "the number of records per level file")
    if not count(manifest.get("train_count")) or manifest["train_count"] > manifest["image_count"]:
        raise wrong("'train_count'", f"the records of the train split (0..{manifest['image_count']})")
    levels = manifest.get("levels")
    if not isinstance(levels, list) or not levels:
        raise wrong("'levels'", "a list of the level files")
    for index, level in enumerate(levels):
        if not (isinstance(level, dict) and isinstance(level.get("file"), str)
                and count(level.get("resolution")) and count(level.get("bytes"))):
            raise wrong(f"'levels' entry {index}", '{"file", "resolution", "records", "bytes", "sha256"}')
    labels = manifest.get("labels")
    if labels is not None and not (isinstance(labels, dict) and isinstance(labels.get("file"), str)
                                   and isinstance(labels.get("names"), list)):
        raise wrong("'labels'", '{"file", "names", "kind", "count", "sha256", "origin"}')
    if "channels" in manifest and manifest["channels"] not in (1, 3):
        raise wrong("'channels'", "1 or 3")


def write_manifest(directory, manifest):
    """Write ``dataset.json`` (indented, keys in insertion order) atomically."""
    path = Path(directory) / MANIFEST_NAME
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(partial, path)
