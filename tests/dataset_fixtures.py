"""Helpers shared by the dataset tests and tools/bench_dataset.py.

``reference_create_celeba`` is a plain, independent re-statement of what NVIDIA's
``dataset_tool.py create_celeba`` does: Pillow +
np.asarray, the 128x128 crop, the float32 2x2 mean chain with rint/clip/uint8,
CHW, RandomState(123) order, one TFRecordWriter per level, single-threaded.
"""

import glob
import os

import numpy as np
import PIL.Image


def make_celeba_like_images(directory, count, seed=0, suffix=".png", size=(178, 218), quality=90,
                            texture="smooth"):
    """Write ``count`` photo-like images named 000001<suffix>, ...; returns their paths in
    sorted order. ``texture``: "smooth" (colour waves + light grain) or "detailed" (waves
    plus strong per-pixel texture, like hair and skin in a photo: what costs PNG the most)."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    paths = []
    for index in range(count):
        freq = rng.uniform(0.02, 0.12, (3, 2))
        phase = rng.uniform(0, 6.3, 3)
        image = np.stack([128 + 100 * np.sin(x * freq[c, 0] + y * freq[c, 1] + phase[c])
                          for c in range(3)], axis=-1)
        image += rng.normal(0, 6 if texture == "smooth" else 40, image.shape)
        image = PIL.Image.fromarray(np.clip(np.rint(image), 0, 255).astype(np.uint8))
        path = os.path.join(str(directory), f"{index + 1:06d}{suffix}")
        image.save(path, **({"quality": quality} if suffix == ".jpg" else {}))
        paths.append(path)
    return paths


def write_celeba_attributes(path, file_names, seed=0, count=40):
    """Write a ``list_attr_celeba.txt`` for ``file_names`` as CelebA ships it (the image count,
    the names, then a file name and one -1/1 per name, columns padded with spaces); returns
    (names, int8 [len(file_names), count] of -1/1) in the order given."""
    rng = np.random.default_rng(seed)
    names = [f"Attribute_{index:02d}" for index in range(count)]
    values = rng.choice(np.array([-1, 1], np.int8), (len(file_names), count))
    lines = [str(len(file_names)), " ".join(names)]
    lines += [name + " " + " ".join(f"{value:2d}" for value in row)
              for name, row in zip(file_names, values)]
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    with open(path, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return names, values


def reference_create_celeba(out_dir, png_dir, cx=89, cy=121):
    """The reference tool's create_celeba on every PNG in png_dir (no count check)."""
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(str(png_dir), "*.png")))
    order = np.arange(len(files))
    np.random.RandomState(123).shuffle(order)
    os.makedirs(out_dir, exist_ok=True)
    prefix = os.path.join(str(out_dir), os.path.basename(str(out_dir)))
    writers = [tf.io.TFRecordWriter(prefix + "-r%02d.tfrecords" % (7 - lod)) for lod in range(6)]
    for idx in range(order.size):
        img = np.asarray(PIL.Image.open(files[order[idx]]))
        assert img.shape == (218, 178, 3)
        img = img[cy - 64:cy + 64, cx - 64:cx + 64].transpose(2, 0, 1)
        for lod, writer in enumerate(writers):
            if lod:
                img = img.astype(np.float32)
                img = (img[:, 0::2, 0::2] + img[:, 0::2, 1::2]
                       + img[:, 1::2, 0::2] + img[:, 1::2, 1::2]) * 0.25
            quant = np.rint(img).clip(0, 255).astype(np.uint8)
            example = tf.train.Example(features=tf.train.Features(feature={
                "shape": tf.train.Feature(int64_list=tf.train.Int64List(value=quant.shape)),
                "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[quant.tobytes()]))}))
            writer.write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return len(files)


def read_records(path):
    """[(shape tuple, data bytes)] of a TFRecord level file, parsed with tf.train.Example."""
    import tensorflow as tf

    records = []
    for raw in tf.data.TFRecordDataset(str(path)).as_numpy_iterator():
        example = tf.train.Example.FromString(raw)
        feature = example.features.feature
        records.append((tuple(feature["shape"].int64_list.value), feature["data"].bytes_list.value[0]))
    return records


# -- real processes (tests/test_dataset_safety.py) --------------------------------------------

_TF_LOG_LINE = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "W0000 ", "E0000 ")


def tool_lines(stderr):
    """The lines of a progan-dataset run's stderr that the tool wrote (TensorFlow's C++
    start-up chatter removed)."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith(_TF_LOG_LINE)]


# ``progan-dataset ARGS`` inside TFDS's mock (random examples, no download): argv[1] is the
# number of examples. main() without argv ends the process itself, as the command does.
_MOCKED_TFDS = """
import sys
import tensorflow_datasets as tfds
from progan.dataset.cli import main
examples = int(sys.argv.pop(1))
with tfds.testing.mock_data(num_examples=examples, policy=tfds.testing.MockPolicy.USE_CODE):
    sys.exit(main())
"""


def start_tool(*args, cwd=None, sigint_ignored=False, tfds_examples=None):
    """``progan-dataset ARGS`` as a real process in its own process group.

    ``sigint_ignored``: start it with SIGINT ignored, as a shell script's ``cmd &`` does.
    ``tfds_examples``: run it inside TFDS's mock data with that many examples.
    """
    import signal
    import subprocess
    import sys

    command = ([sys.executable, "-c", _MOCKED_TFDS, str(tfds_examples)] if tfds_examples
               else [sys.executable, "-m", "progan.dataset.cli"])
    return subprocess.Popen(command + [str(arg) for arg in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=cwd,
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
                            if sigint_ignored else None)


def wait_for_records(parent, name, process, timeout=120):
    """Wait until a build has appended records to its staging folder; returns the folder."""
    import time
    from pathlib import Path

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for staging in Path(parent).glob(f".{name}.partial-*"):
            try:
                if any(f.stat().st_size > 0 for f in staging.glob("*.tfrecords")):
                    return staging
            except FileNotFoundError:
                pass
        if process.poll() is not None:
            raise AssertionError(f"the build ended before writing records: {process.communicate()}")
        time.sleep(0.02)
    raise AssertionError("no records written in time")


def tree_digest(path):
    """{relative path: (size, sha256)} of every file under a folder (or of one file)."""
    import hashlib
    from pathlib import Path

    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent if path.is_file() else path)):
            (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files}


def children(pid):
    """Process ids of the direct children of a process (Linux /proc)."""
    from pathlib import Path

    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found
