"""Where images come from: CelebA, an image folder, TensorFlow Datasets.

(Over 300 lines: one small class per source, with the decoding they share.)

A source lists its items in record order in the main process (``items()``,
cheap picklable values: file names, or encoded bytes for tfds) and turns one
item into a square uint8 RGB image in a worker process (``load(item)``). A
decodable-but-unusable input raises ``SkipImage`` (the writer skips it with a
warning, or stops under ``--strict``); an input that shows the whole source is
wrong (a CelebA image of the wrong size) raises ``DatasetError``.

Labels: a source with labels sets ``labels`` (a ``LabelSpec``: column names, kind, origin)
and answers ``label(item)`` in the main process, for the items written, in record order:
labels are looked up by item, never by position, so a skipped input cannot shift them.
"""

import io
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from progan.dataset.format import DatasetError, log2_resolution

CELEBA_IMAGE_COUNT = 202_599
CELEBA_SIZE = (178, 218)  # PIL (width, height)
CELEBA_TRAIN_COUNT = 200_000
CELEBA_CROP_SIZE = 128
REFERENCE_ORDER_SEED = 123
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error,
                  PIL.Image.DecompressionBombError)


class SkipImage(Exception):
    """An input that is not a readable image; the message says why."""


@dataclass(frozen=True)
class LabelSpec:
    """A source's labels: one name per column, the kind (``format.LABEL_KINDS``) and where
    they come from (for the build output and the manifest)."""

    names: tuple
    kind: str
    origin: str


def reference_order(count):
    """Record order of the reference tool: record j holds sorted input ``permutation[j]``."""
    return np.random.RandomState(REFERENCE_ORDER_SEED).permutation(count)


_SIGNATURES = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"))


def sniff_format(data):
    """The image format named by the first bytes of a file (PNG, JPEG, WEBP, ...) or None."""
    head = bytes(data[:12])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for signature, name in _SIGNATURES:
        if head.startswith(signature):
            return name
    return None


def decode_failure(error, data):
    """A short reason a person can act on for a Pillow failure on ``data`` (encoded bytes)."""
    kind = sniff_format(data)
    if isinstance(error, PIL.Image.DecompressionBombError):
        return "too many pixels (Pillow's decompression-bomb limit)"
    if kind is None:
        return "not an image"
    text = str(error)
    if isinstance(error, (EOFError, PIL.UnidentifiedImageError)) or "truncated" in text.lower() \
            or "could not create decoder" in text or "broken data stream" in text:
        return f"truncated {kind}"
    return f"damaged {kind} ({text.splitlines()[0] if text else type(error).__name__})"


def open_image(data, name, check=None, rows=None):
    """Decode an image file (path or bytes) with Pillow; raises SkipImage if it cannot.

    Args:
      data: path or encoded bytes.
      name: for messages.
      check: optional callable(image, name) run on the opened, not yet decoded image.
      rows: decode only the top ``rows`` rows of a non-interlaced PNG (decoding stops
        early; the rows are the same). Other files are decoded whole.
    The SkipImage message is a short reason: "empty file", "not an image", "truncated
    JPEG", "damaged PNG (...)".
    """
    if not isinstance(data, bytes):
        data = Path(data).read_bytes()
    if not data:
        raise SkipImage("empty file")
    try:
        image = PIL.Image.open(io.BytesIO(data))
        if check is not None:
            check(image, name)
        if rows is not None:
            _stop_png_decoding_after(image, rows)
        image.load()
    except _DECODE_ERRORS as error:
        raise SkipImage(decode_failure(error, data)) from None
    return image


def _stop_png_decoding_after(image, rows):
    # The CelebA crop ends at row 185 of 218: PNG rows decode in order, so shrinking the
    # pending tile skips 15 % of the decoding. Pillow internals; skipped if they look different.
    tile = getattr(image, "tile", None)
    if (image.format != "PNG" or image.info.get("interlace") or not tile or len(tile) != 1
            or tuple(tile[0][1]) != (0, 0) + image.size or not 0 < rows < image.size[1]):
        return
    codec, _, offset, args = tile[0]
    image.tile = [type(tile[0])(codec, (0, 0, image.size[0], rows), offset, args)]
    image._size = (image.size[0], rows)


def to_rgb(image, notes=None):
    """Any Pillow mode (L, LA, P, RGBA, CMYK, I;16, ...) as RGB; transparency is dropped.

    ``notes``: an optional list that gets ("16-bit converted", mode) when 16-bit grey
    loses its low 8 bits.
    """
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grey: keep the top 8 bits rather than letting convert() clip.
        if notes is not None:
            notes.append(("16-bit converted", f"{image.format or 'image'} {image.mode}"))
        image = PIL.Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
    return image.convert("RGB")


def center_square(image, resolution, notes=None):
    """Centre-crop a Pillow image to a square and resize it to resolution^2 (Lanczos), as uint8 HWC.

    ``notes``: an optional list that gets ("enlarged", "WxH") when the square is smaller
    than ``resolution``.
    """
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != resolution:
        if side < resolution and notes is not None:
            notes.append(("enlarged", f"{width}x{height}"))
        image = image.resize((resolution, resolution), PIL.Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


class CelebACrop:
    """The reference tool's CelebA crop: check 178x218 RGB, take 128x128 centred at (cx, cy)."""

    def __init__(self, cx=89, cy=121):
        half = CELEBA_CROP_SIZE // 2
        if not (half <= cx <= CELEBA_SIZE[0] - half and half <= cy <= CELEBA_SIZE[1] - half):
            raise DatasetError(
                f"--cx {cx} --cy {cy}: the 128x128 crop must lie inside the 178x218 image "
                f"(64 <= cx <= 114, 64 <= cy <= 154)")
        self.cx, self.cy = cx, cy

    @staticmethod
    def check_size(image, name):
        if image.size != CELEBA_SIZE:
            raise DatasetError(
                f"{name}: image is {image.size[0]}x{image.size[1]}, expected 178x218 "
                "(CelebA 'aligned & cropped')")

    @property
    def rows(self):
        """Rows of the image the crop needs (from the top)."""
        return self.cy + CELEBA_CROP_SIZE // 2

    def __call__(self, image, name):
        """The 128x128 crop of a decoded image as uint8 HWC."""
        half = CELEBA_CROP_SIZE // 2
        # Cropping before the array conversion copies 128x128 pixels instead of 178x218.
        box = (self.cx - half, self.cy - half, self.cx + half, self.cy + half)
        return np.asarray(to_rgb(image.crop(box)), dtype=np.uint8)

    def describe(self):
        return {"cx": self.cx, "cy": self.cy, "size": CELEBA_CROP_SIZE}


class ImageSource:
    """Base of all sources. Subclasses set the attributes below and define items()/load().

    Attributes:
      kind: manifest ``source.kind``.
      description: dict of the source's parameters for the manifest.
      resolution: side of the square images ``load`` returns (a power of two).
      count: number of items ``items()`` yields (None if unknown in advance).
      order: manifest ``order`` (see format.py).
      crop: manifest ``crop`` dict or None.
      default_train_count: records in the train split unless the user says otherwise,
        as a function of the number of records written.
      labels: a LabelSpec, or None for a source without labels.
    """

    kind = "?"
    order = "source"
    crop = None
    labels = None

    def default_train_count(self, image_count):
        return image_count

    def items(self):
        raise NotImplementedError

    def load(self, item):
        """(name for messages, uint8 [resolution, resolution, 3], notes) of one item.

        ``notes`` is a list of (kind, detail) pairs about changes a person may want to know
        of ("enlarged", "20x20"); sources may also return just (name, image).
        """
        raise NotImplementedError

    def label(self, item):
        """float32 [len(labels.names)]: the labels of an item; called in the main process,
        in record order, for each item written (only when ``labels`` is set)."""
        raise NotImplementedError

    @property
    def input_paths(self):
        """[(path, scanned)] of the files or folders read; ``scanned``: a folder listed for
        inputs (the output may not sit inside it)."""
        return []


class FileListSource(ImageSource):
    """Files (paths, or members of one zip archive) in the reference order of their sorted names."""

    order = "permutation(123)"

    def __init__(self, files, archive=None):
        self.files = list(files)
        self.archive = archive
        self._zip = None
        self.count = len(self.files)
        self.label_rows, self._row_of = None, None

    def set_labels(self, spec, rows):
        """Give the source labels: ``rows`` float32 [len(files), L], row k for ``files[k]``."""
        self.labels, self.label_rows = spec, np.asarray(rows, np.float32)
        self._row_of = {file: index for index, file in enumerate(self.files)}

    def label(self, item):
        return self.label_rows[self._row_of[item]]

    def items(self):
        for index in reference_order(len(self.files)):
            yield self.files[index]

    def read_bytes(self, item):
        if self.archive is None:
            return Path(item).read_bytes()
        if self._zip is None:  # opened lazily: once per worker process
            self._zip = zipfile.ZipFile(self.archive)
        return self._zip.read(item)

    def open(self, item, check=None, rows=None):
        """(name, decoded Pillow image) of one file; check/rows as in open_image."""
        name = item if self.archive is None else f"{self.archive}:{item}"
        try:
            data = self.read_bytes(item)
        except OSError as error:
            raise SkipImage(f"{name}: cannot be read ({error.strerror or error})") from None
        except (zipfile.BadZipFile, zlib.error) as error:
            raise SkipImage(f"{name}: damaged zip member ({error})") from None
        try:
            return name, open_image(data, name, check, rows)
        except SkipImage as error:
            raise SkipImage(f"{name}: {error}") from None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"] = None
        return state


class CelebASource(FileListSource):
    """CelebA 'aligned & cropped' from a folder of JPEG/PNG files or from img_align_celeba.zip."""

    kind = "celeba"

    def __init__(self, files, archive, location, crop, max_images):
        super().__init__(files, archive)
        self.crop_image = crop
        self.crop = crop.describe()
        self.resolution = CELEBA_CROP_SIZE
        self.description = {"kind": self.kind, "path": str(location),
                            "max_images": max_images}
        self.location = Path(archive) if archive is not None else (
            Path(files[0]).parent if files else Path(location))

    @property
    def input_paths(self):
        return [(self.location, self.archive is None)]

    def default_train_count(self, image_count):
        return min(CELEBA_TRAIN_COUNT, image_count)

    def load(self, item):
        name, image = self.open(item, self.crop_image.check_size, self.crop_image.rows)
        return name, self.crop_image(image, name), []


def _sorted_images(paths):
    return sorted((p for p in paths if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
                  key=lambda p: p.name)


def celeba_source(path, cx=89, cy=121, max_images=None):
    """A CelebASource for a directory of images, a folder holding ``img_align_celeba[_png]/``
    or ``img_align_celeba.zip``, or the zip itself. The full set (202,599 files) is required
    unless ``max_images`` is given, in which case the first ``max_images`` sorted files are used."""
    crop = CelebACrop(cx, cy)
    path = Path(path)
    expected = (f"CELEBA {path}: expected a directory of 178x218 JPEG/PNG files "
                "or img_align_celeba.zip")
    archive, files = None, []
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise DatasetError(expected)
        archive = path
        with zipfile.ZipFile(path) as handle:
            names = [n for n in handle.namelist()
                     if not n.endswith("/") and Path(n).suffix.lower() in (".jpg", ".jpeg", ".png")]
        files = sorted(names, key=lambda n: Path(n).name)
    elif path.is_dir():
        files = [str(p) for p in _sorted_images(p for p in path.iterdir() if p.is_file())]
        if not files:
            for candidate in ("img_align_celeba_png", "img_align_celeba", "img_align_celeba.zip"):
                if (path / candidate).exists():
                    return celeba_source(path / candidate, cx, cy, max_images)
    if not files:
        raise DatasetError(expected)
    if max_images is None:
        if len(files) != CELEBA_IMAGE_COUNT:
            raise DatasetError(
                f"CELEBA {path}: found {len(files):,} images, expected {CELEBA_IMAGE_COUNT:,} "
                "(pass --max-images N to use the first N)")
    else:
        if max_images < 1:
            raise DatasetError(f"--max-images {max_images}: expected a positive number")
        files = files[:max_images]
    return CelebASource(files, archive, path, crop, max_images)


class ImageFolderSource(FileListSource):
    """Every file under a folder (recursive), centre-cropped to a square and resized."""

    kind = "images"

    def __init__(self, directory, resolution):
        directory = Path(directory)
        if not directory.is_dir():
            raise DatasetError(f"DIR {directory}: not a directory")
        log2_resolution(resolution)
        files = sorted(str(p) for p in directory.rglob("*")
                       if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DatasetError(f"DIR {directory}: contains no files (expected JPEG/PNG/WebP images)")
        super().__init__(files)
        self.resolution = resolution
        self.directory = directory
        self.description = {"kind": self.kind, "path": str(directory)}

    @property
    def input_paths(self):
        return [(self.directory, True)]

    def load(self, item):
        name, image = self.open(item)
        notes = []
        return name, center_square(to_rgb(image, notes), self.resolution, notes), notes


class TfdsSource(ImageSource):
    """An image dataset of TensorFlow Datasets, read in the split's own order.

    ``celeb_a`` gets the CelebA crop (128x128 at (cx, cy)); other datasets are
    centre-cropped and resized to ``resolution``. Images travel to the workers
    still encoded and are decoded there with Pillow.
    """

    kind = "tfds"

    def __init__(self, name, split="train", data_dir=None, image_key="image",
                 resolution=None, cx=89, cy=121):
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as error:  # tfds raises many types for unknown names
            raise DatasetError(f"NAME {name}: not a TensorFlow Datasets dataset ({error})") from None
        features = builder.info.features
        if image_key not in features:
            raise DatasetError(
                f"--image-key {image_key}: {name} has no such feature (it has {', '.join(features)})")
        try:
            builder.download_and_prepare()
        except Exception as error:  # download / preparation failures of any kind
            raise DatasetError(f"NAME {name}: cannot be prepared ({error})") from None
        splits = builder.info.splits
        if splits and split not in splits:
            raise DatasetError(f"--split {split}: not a split of {name} (it has {', '.join(splits)})")
        self.count = splits[split].num_examples if splits else None  # None: unknown (mocked)
        self.builder, self.split, self.image_key = builder, split, image_key
        self.name = name
        self.crop_image = CelebACrop(cx, cy) if name.split(":")[0] == "celeb_a" else None
        if self.crop_image is not None:
            self.crop = self.crop_image.describe()
            self.resolution = CELEBA_CROP_SIZE
        else:
            if resolution is None:
                raise DatasetError(f"NAME {name}: --resolution is required for this dataset")
            log2_resolution(resolution)
            self.resolution = resolution
        self.description = {"kind": self.kind, "name": name, "split": split,
                            "data_dir": None if data_dir is None else str(data_dir),
                            "image_key": image_key}

    def default_train_count(self, image_count):
        if self.crop_image is not None:
            return min(CELEBA_TRAIN_COUNT, image_count)
        return image_count

    def items(self):
        import tensorflow_datasets as tfds

        try:
            dataset = self.builder.as_dataset(
                split=self.split, shuffle_files=False,
                decoders={self.image_key: tfds.decode.SkipDecoding()})
        except Exception as error:  # tfds raises many types for bad splits or files
            raise DatasetError(f"NAME {self.name}: cannot be read ({error})") from None
        for index, example in enumerate(tfds.as_numpy(dataset)):
            yield index, example[self.image_key]

    def load(self, item):
        index, data = item
        name = f"{self.name}[{self.split}][{index}]"
        try:
            image = open_image(bytes(data), name, *(
                () if self.crop_image is None else (self.crop_image.check_size, self.crop_image.rows)))
        except SkipImage as error:
            raise SkipImage(f"{name}: {error}") from None
        if self.crop_image is not None:
            return name, self.crop_image(image, name), []
        notes = []
        return name, center_square(to_rgb(image, notes), self.resolution, notes), notes

    def __getstate__(self):
        state = dict(self.__dict__)
        state["builder"] = None  # workers only decode
        return state
