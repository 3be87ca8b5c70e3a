"""Where images come from: CelebA, an image folder, TensorFlow Datasets.

A source lists its items in record order in the main process (``items()``,
cheap picklable values: file names, or encoded bytes for tfds) and turns one
item into a square uint8 RGB image in a worker process (``load(item)``). A
decodable-but-unusable input raises ``SkipImage`` (the writer skips it with a
warning, or stops under ``--strict``); an input that shows the whole source is
wrong (a CelebA image of the wrong size) raises ``DatasetError``.

Labels: a source with labels sets ``labels`` (a ``LabelSpec``: column names, kind, origin)
and answers ``label(item)`` in the main process, for the items written, in record order:
labels are looked up by item, never by position, so a skipped input cannot shift them.
CelebA's 40 attributes come from ``list_attr_celeba.txt`` (matched by file name without
extension, so the JPEG and PNG releases share it), TFDS's from a dict of booleans called
``attributes``, an image folder's from its first-level sub-folders (one-hot classes).
"""

import contextlib
import io
import os
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image

from progan.dataset.format import DatasetError, log2_resolution, tensorflow

CELEBA_IMAGE_COUNT = 202_599
CELEBA_SIZE = (178, 218)  # PIL (width, height)
CELEBA_TRAIN_COUNT = 200_000
CELEBA_CROP_SIZE = 128
REFERENCE_ORDER_SEED = 123
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error,
                  PIL.Image.DecompressionBombError)


MAX_IMAGE_BYTES = 256 << 20  # an image file larger than this is refused unread


def _megabytes(count):
    return f"{count / (1 << 20):,.0f} MB" if count >= 1 << 20 else f"{count:,} bytes"


def _read_capped(member):
    """The bytes of an open zip member, read in small pieces up to just past MAX_IMAGE_BYTES:
    zipfile inflates as much as each read asks for before trimming to the declared size, so a
    member whose declared size lies costs a piece of memory, not what it inflates to."""
    pieces, size = [], 0
    while size <= MAX_IMAGE_BYTES:
        piece = member.read(1 << 16)
        if not piece:
            break
        pieces.append(piece)
        size += len(piece)
    return b"".join(pieces)


def _check_image_size(size, verb):
    """SkipImage when an image file's size (``verb``: "declares " for a zip's directory
    entry, "holds " for what was read, "" for a size on disk) is above MAX_IMAGE_BYTES."""
    if size > MAX_IMAGE_BYTES:
        raise SkipImage(f"{verb}{_megabytes(size)}{' uncompressed' if verb == 'declares ' else ''}, "
                        f"more than an image file may hold ({_megabytes(MAX_IMAGE_BYTES)}); not read")


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
      labels: a LabelSpec, or None for a source without labels.
      partitions: names of the groups the records come in, in record order (e.g. CelebA's
        official train, val, test), or None; then ``partition_of(item)`` gives an item's
        group index, and the writer counts the records written of each.
    """

    kind = "?"
    order = "source"
    crop = None
    labels = None
    partitions = None

    def default_split(self, image_count, partition_counts):
        """(train count, manifest ``split``) unless the user sets ``--train-count``: from the
        number of records written and ``{group index: records written}`` (see ``partitions``)."""
        return image_count, {"rule": "all", "description": "every record is train"}

    def partition_of(self, item):
        """The index in ``partitions`` of an item's group (only when ``partitions`` is set)."""
        raise NotImplementedError

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
        """The bytes of one file. A file larger than an image may be (``MAX_IMAGE_BYTES``)
        is refused unread (SkipImage): a zip member by the size its zip directory declares,
        before a byte is inflated, a file by its size on disk; and either is read with a cap,
        in case the declared size lies."""
        if self.archive is None:
            with open(item, "rb") as handle:
                _check_image_size(os.fstat(handle.fileno()).st_size, "")
                data = handle.read(MAX_IMAGE_BYTES + 1)
        else:
            if self._zip is None:  # opened lazily: once per worker process
                self._zip = zipfile.ZipFile(self.archive)
            info = self._zip.getinfo(item)
            _check_image_size(info.file_size, "declares ")
            with self._zip.open(info) as member:
                data = _read_capped(member)
        _check_image_size(len(data), "holds ")
        return data

    def open(self, item, check=None, rows=None):
        """(name, decoded Pillow image) of one file; check/rows as in open_image."""
        name = item if self.archive is None else f"{self.archive}:{item}"
        try:
            data = self.read_bytes(item)
        except SkipImage as error:
            raise SkipImage(f"{name}: {error}") from None
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
    """CelebA 'aligned & cropped' from a folder of JPEG/PNG files or from a zip of them.

    ``partition``: "thesis" (records in the reference order, the first 200,000 train) or
    "official" (the reference order within each partition of ``list_eval_partition``: its
    train images first, then validation, then test; ``partition_rows`` {file stem: 0/1/2}).
    """

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
        self.partition_file, self.partition_rows = None, None
        self.partition_found = None  # where list_eval_partition was found, used or not

    def use_official_partition(self, where, partition_rows):
        """Order the records by the official partition (``{file stem: 0, 1 or 2}``)."""
        self.partition_file, self.partition_rows = where, partition_rows
        self.order = "permutation(123) by partition"
        self.partitions = CELEBA_PARTITIONS

    @property
    def input_paths(self):
        return [(self.location, self.archive is None)]

    def items(self):
        if self.partition_rows is None:
            yield from super().items()
            return
        ordered = list(super().items())
        for partition in range(len(CELEBA_PARTITIONS)):
            yield from (item for item in ordered if self.partition_of(item) == partition)

    def partition_of(self, item):
        return self.partition_rows[_stem(item)]

    def default_split(self, image_count, partition_counts):
        if self.partition_rows is None:
            return thesis_split(image_count)
        train, val, test = (partition_counts.get(index, 0) for index in range(3))
        return train, {
            "rule": "official", "file": self.partition_file, "train": train, "val": val, "test": test,
            "description": f"the official partition of {self.partition_file}: records 0..{train - 1} "
                          f"are its train images ({train:,}); the test split is its validation "
                          f"({val:,}) then test ({test:,}) images"}

    def load(self, item):
        name, image = self.open(item, self.crop_image.check_size, self.crop_image.rows)
        return name, self.crop_image(image, name), []


def thesis_split(image_count, order="the reference order"):
    """(train count, manifest ``split``) of the thesis's CelebA split: the first 200,000
    records (in ``order``) train, the rest test."""
    train = min(CELEBA_TRAIN_COUNT, image_count)
    return train, {"rule": "thesis",
                   "description": f"the first {train:,} records (in {order}) are train, the rest "
                                  "test, as in the thesis (first 200,000 of 202,599)"}


def _sorted_images(paths):
    return sorted((p for p in paths if p.suffix.lower() in (".jpg", ".jpeg", ".png")),
                  key=lambda p: p.name)


# Looked for, in this order, in a folder without images: the PNG and JPEG releases, the zip,
# and the official download's Img/ folder that holds them.
CELEBA_FOLDERS = ("img_align_celeba_png", "img_align_celeba", "img_align_celeba.zip", "Img")


def celeba_source(path, cx=89, cy=121, max_images=None, attributes="auto", partition="thesis"):
    """A CelebASource for a folder of images, a folder holding ``img_align_celeba[_png]/``
    or ``img_align_celeba.zip`` (at any depth of such folders: Kaggle's copy has
    ``img_align_celeba/img_align_celeba/``), or a zip of the images (the official
    ``img_align_celeba.zip`` or Kaggle's archive). The full set (202,599 files) is required
    unless ``max_images`` is given, in which case the first ``max_images`` sorted files are used.

    ``attributes``: "auto" reads ``list_attr_celeba.txt`` or Kaggle's ``list_attr_celeba.csv``
    when one is found (see ``find_celeba_file``), a path reads that file, None builds
    without labels. ``partition``: "thesis" or "official" (see CelebASource); "official"
    needs ``list_eval_partition.txt`` or ``.csv``.
    """
    crop = CelebACrop(cx, cy)
    if partition not in ("thesis", "official"):
        raise DatasetError(f"--partition {partition}: expected thesis or official")
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
            for candidate in CELEBA_FOLDERS:
                if (path / candidate).exists():
                    return celeba_source(path / candidate, cx, cy, max_images, attributes, partition)
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
    source = CelebASource(files, archive, path, crop, max_images)
    names = [Path(file).name for file in files]
    found = (find_celeba_file(source, CELEBA_ATTRIBUTES) if attributes == "auto"
             else None if attributes is None else _read_text_file(Path(attributes), "--attributes"))
    if found is not None:
        text, where = found
        columns, rows = celeba_attribute_rows(text, where, names)
        source.set_labels(LabelSpec(tuple(columns), "multi_label", where), rows)
    found = find_celeba_file(source, CELEBA_PARTITION)
    if partition == "official":
        if found is None:
            raise DatasetError(f"--partition official: no {' or '.join(CELEBA_PARTITION)} found "
                               f"for {source.location} (looked {_where_looked(source)})")
        source.use_official_partition(found[1], celeba_partition_rows(*found, names))
    if found is not None:
        source.partition_found = found[1]
    return source


CELEBA_ATTRIBUTES = ("list_attr_celeba.txt", "list_attr_celeba.csv")
CELEBA_PARTITION = ("list_eval_partition.txt", "list_eval_partition.csv")
CELEBA_PARTITIONS = ("train", "val", "test")  # list_eval_partition's 0, 1, 2
MAX_TEXT_BYTES = 256 << 20  # list_attr_celeba.txt is 26 MB


def _read_text_file(path, flag):
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_TEXT_BYTES + 1)
    except OSError as error:
        raise DatasetError(f"{flag} {path}: cannot be read ({error.strerror or error})") from None
    if len(data) > MAX_TEXT_BYTES:
        raise DatasetError(f"{flag} {path}: larger than {_megabytes(MAX_TEXT_BYTES)}, expected a "
                           "CelebA annotation file (list_attr_celeba.txt is 26 MB)")
    return data.decode("utf-8", errors="replace"), str(path)


def _annotation_folders(source):
    """Folders where CelebA's annotation files are looked for, nearest first: the zip's folder
    and the one above it; or the image folder and up to two folders above it (Kaggle's CSVs
    sit two above its ``img_align_celeba/img_align_celeba/``). In each, also ``Anno/`` and
    ``Eval/`` (the official download's ``CelebA/Anno/``, ``CelebA/Eval/`` next to
    ``CelebA/Img/``)."""
    if source.archive is not None:
        bases = [Path(source.archive).parent, Path(source.archive).parent.parent]
    else:
        bases = [source.location, source.location.parent, source.location.parent.parent]
    folders = []
    for base in dict.fromkeys(bases):
        folders += [base, base / "Anno", base / "Eval"]
    return folders


def _where_looked(source):
    inside = f"inside {source.archive}, " if source.archive is not None else ""
    return inside + "in " + ", ".join(str(folder) for folder in _annotation_folders(source))


def find_celeba_file(source, names):
    """(text, where) of the first of ``names`` found for a CelebASource, or None: inside its
    zip (at any depth), then in the folders of ``_annotation_folders``."""
    if source.archive is not None:
        with zipfile.ZipFile(source.archive) as handle:
            for name in names:
                members = sorted(info for info in handle.infolist() if Path(info.filename).name == name)
                if members:
                    where = f"{source.archive}:{members[0].filename}"
                    if members[0].file_size > MAX_TEXT_BYTES:
                        raise DatasetError(f"{where}: declares {_megabytes(members[0].file_size)}, "
                                           "expected a CelebA annotation file (at most "
                                           f"{_megabytes(MAX_TEXT_BYTES)})")
                    with handle.open(members[0]) as member:
                        data = member.read(MAX_TEXT_BYTES)
                    return data.decode("utf-8", errors="replace"), where
    for folder in _annotation_folders(source):
        for name in names:
            if (folder / name).is_file():
                return _read_text_file(folder / name, "annotation file")
    return None


def _stem(name):
    """A file name without folder and extension, as ``Path(name).stem`` (10x faster: CelebA
    has 202,599 names)."""
    base = name.rpartition("/")[2]
    return base.rpartition(".")[0] or base


def _table(text, where, header, cells):
    """(names, [(line number, cells)], declared image count or None) of a CelebA annotation
    file in either copy's form.

    The official ``.txt`` (``header="count"``): line 1 the image count, line 2 the column
    names, then a file name and one value per name, separated by spaces. Kaggle's ``.csv``
    (a comma in line 1): ``image_id,<names>``, then one comma-separated line per image. With
    ``header="none"`` the official file has no header lines (``list_eval_partition.txt``).
    A UTF-8 byte-order mark and CRLF line ends are accepted. ``cells`` is the expected
    header of the csv (``None``: any names).
    """
    lines = text.removeprefix("\ufeff").splitlines()
    first = lines[0].strip() if lines else ""
    if "," in first:
        names = [cell.strip() for cell in first.split(",")]
        if names[0] != "image_id" or len(names) < 2 or (cells is not None and names[1:] != cells):
            wanted = "image_id," + (",".join(cells) if cells is not None else "<names>")
            raise DatasetError(f"{where}: line 1: expected the header {wanted}, found {first[:40]!r}")
        rows = [(number, [cell.strip() for cell in line.split(",")])
                for number, line in enumerate(lines[1:], start=2) if line.strip()]
        return names[1:], rows, None
    if header == "none":
        return cells, [(number, line.split()) for number, line in enumerate(lines, start=1)
                       if line.strip()], None
    try:
        declared = int(first)
    except ValueError:
        raise DatasetError(f"{where}: line 1: expected the image count, found {first[:40]!r} "
                           "(or Kaggle's CSV header image_id,...)") from None
    names = lines[1].split() if len(lines) > 1 else []
    if not names:
        raise DatasetError(f"{where}: line 2: expected the attribute names")
    rows = [(number, line.split()) for number, line in enumerate(lines[2:], start=3) if line.strip()]
    return names, rows, declared


def parse_celeba_attributes(text, where):
    """(names, {file stem: (line number, row index)}, uint8 0/1 [M, len(names)]) of the
    text of ``list_attr_celeba.txt`` (the image count, the names, then one line per image:
    file name and one -1/1 per name) or of Kaggle's ``list_attr_celeba.csv`` (a header
    ``image_id,<names>``, then the same rows, comma-separated). Any other shape is a
    one-line DatasetError naming ``where`` and the line."""
    names, lines, declared = _table(text, where, "count", None)
    stems, rows = {}, []
    for number, parts in lines:
        if len(parts) - 1 != len(names):
            raise DatasetError(f"{where}: line {number}: {len(parts) - 1} values, expected "
                               f"{len(names)} (one per attribute name of the header)")
        if not set(parts[1:]) <= {"1", "-1"}:
            bad = next(value for value in parts[1:] if value not in ("1", "-1"))
            raise DatasetError(f"{where}: line {number}: value {bad[:20]!r} for "
                               f"{names[parts[1:].index(bad)]}, expected -1 or 1")
        stem = _stem(parts[0])
        if stem in stems:
            raise DatasetError(f"{where}: line {number}: {parts[0]} is listed twice "
                               f"(first on line {stems[stem][0]})")
        stems[stem] = (number, len(rows))
        rows.append("".join(parts[1:]))  # e.g. "-11-1": unambiguous, every "-" precedes a 1
    if declared is not None and len(rows) != declared:
        raise DatasetError(f"{where}: line 1 says {declared} images but the file lists {len(rows)}")
    digits = "".join(rows).replace("-1", "0").encode("ascii")  # one character per value
    values = (np.frombuffer(digits, np.uint8) - ord("0")).reshape(len(rows), len(names))
    return names, stems, values


def celeba_attribute_rows(text, where, file_names):
    """(names, float32 0/1 [len(file_names), 40]) of the attributes of each file, matched by
    the file name without extension (000001.jpg and 000001.png share a line)."""
    names, stems, values = parse_celeba_attributes(text, where)
    rows = []
    for name in file_names:
        found = stems.get(_stem(name))
        if found is None:
            raise DatasetError(f"{where}: has no line for {name} (one line per image is expected, "
                               "matched by file name; pass --no-attributes to build without them)")
        rows.append(found[1])
    return names, values[rows].astype(np.float32)


def celeba_partition_rows(text, where, file_names):
    """{file stem: 0 (train), 1 (validation) or 2 (test)} of each file, from the official
    ``list_eval_partition.txt`` (``000001.jpg 0`` per line, no header) or Kaggle's
    ``list_eval_partition.csv`` (header ``image_id,partition``)."""
    _, lines, _ = _table(text, where, "none", ["partition"])
    partitions = {}
    for number, parts in lines:
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DatasetError(f"{where}: line {number}: expected a file name and its partition "
                               f"0, 1 or 2, found {' '.join(parts)[:40]!r}")
        partitions[_stem(parts[0])] = int(parts[1])
    rows = {}
    for name in file_names:
        stem = _stem(name)
        if stem not in partitions:
            raise DatasetError(f"{where}: has no line for {name} (--partition official needs the "
                               "partition of every image)")
        rows[stem] = partitions[stem]
    return rows


class ImageFolderSource(FileListSource):
    """Every file under a folder (recursive), centre-cropped to a square and resized.

    ``labels="folders"``: the class of an image is its first-level sub-folder (``DIR/cat/
    x.png`` and ``DIR/cat/old/y.png`` are both "cat"), stored one-hot over the sorted class
    names. An image directly in DIR has no class: that is an error, before anything is built.
    """

    kind = "images"

    def __init__(self, directory, resolution, labels="none"):
        directory = Path(directory)
        if not directory.is_dir():
            raise DatasetError(f"DIR {directory}: not a directory")
        log2_resolution(resolution)
        if labels not in ("none", "folders"):
            raise DatasetError(f"--labels {labels}: expected none or folders")
        files = sorted(str(p) for p in directory.rglob("*")
                       if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DatasetError(f"DIR {directory}: contains no files (expected JPEG/PNG/WebP images)")
        super().__init__(files)
        self.resolution = resolution
        self.directory = directory
        self.description = {"kind": self.kind, "path": str(directory)}
        if labels == "folders":
            self._label_by_folder()

    def _label_by_folder(self):
        """One-hot classes from the first-level sub-folders (see the class docstring)."""
        relative = [Path(file).relative_to(self.directory).parts for file in self.files]
        loose = [parts[0] for parts in relative
                 if len(parts) == 1 and Path(parts[0]).suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            raise DatasetError(f"--labels folders: {self.directory / loose[0]} is directly in DIR, "
                               "not in a class folder (DIR/<class>/...)")
        classes = sorted({parts[0] for parts in relative if len(parts) > 1})
        if not classes:
            raise DatasetError(f"--labels folders: DIR {self.directory} has no sub-folders "
                               "(expected one folder of images per class)")
        index = {name: column for column, name in enumerate(classes)}
        rows = np.zeros((len(self.files), len(classes)), np.float32)
        for row, parts in enumerate(relative):
            if len(parts) > 1:
                rows[row, index[parts[0]]] = 1
        self.set_labels(LabelSpec(tuple(classes), "one_hot", f"folders of {self.directory}"), rows)

    def label(self, item):
        row = super().label(item)
        if not row.any():  # a file in DIR itself that turned out to be an image
            raise DatasetError(f"--labels folders: {item} is directly in DIR, not in a class folder")
        return row

    @property
    def input_paths(self):
        return [(self.directory, True)]

    def load(self, item):
        name, image = self.open(item)
        notes = []
        return name, center_square(to_rgb(image, notes), self.resolution, notes), notes


# What TFDS downloads for celeb_a (its checksums.tsv), the names its manual folder takes.
CELEB_A_TFDS_FILES = ("img_align_celeba.zip", "list_attr_celeba.txt", "list_eval_partition.txt",
                      "list_landmarks_align_celeba.txt", "identity_CelebA.txt")


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _is_download_failure(error):
    """Whether a TFDS preparation failure is a failed download (as opposed to, say, a full disk)."""
    import urllib.error

    from tensorflow_datasets.core.download import download_manager, util

    kinds = (download_manager.NonMatchingChecksumError, util.DownloadError, ConnectionError,
             TimeoutError, urllib.error.URLError)
    try:
        import requests

        kinds += (requests.RequestException,)
    except ImportError:
        pass
    text = str(error)
    return isinstance(error, kinds) or "drive.google.com" in text or "GDrive" in text


def preparation_failure(name, error, data_dir_root):
    """One line for a failed ``download_and_prepare`` of a TFDS dataset: what happened, and
    for a failed download the way around it (celeb_a: Google Drive's quota)."""
    manual = Path(data_dir_root) / "downloads" / "manual"
    if not _is_download_failure(error):
        return f"NAME {name}: cannot be prepared ({_first_line(error)})"
    if name.split(":")[0] != "celeb_a":
        return (f"NAME {name}: the download failed ({_first_line(error)}); check the network and "
                f"try again, or put the files TFDS downloads for it in {manual}/")
    return (f"NAME {name}: the download failed ({_first_line(error)[:160]}): Google Drive, which "
            "serves celeb_a's files, refuses them once their daily download quota is used up. "
            "Download the aligned images and attribute files yourself (the official "
            "img_align_celeba.zip and Anno/list_attr_celeba.txt from "
            "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, or Kaggle's "
            "jessicali9530/celeba-dataset) and run: progan-dataset create_celeba OUT FOLDER; or put "
            f"{', '.join(CELEB_A_TFDS_FILES)} in {manual}/ and run this command again")


@contextlib.contextmanager
def _scratch_tempdir():
    """Temporary files made inside go to a folder of our own, removed afterwards: TensorFlow
    Datasets makes a temporary folder for every builder (its metadata from the bucket) and
    never removes it, one more empty /tmp/tmp*tfds per command otherwise."""
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="progan-tfds-") as scratch:
        tempfile.tempdir = scratch
        try:
            yield
        finally:
            tempfile.tempdir = previous


class TfdsSource(ImageSource):
    """An image dataset of TensorFlow Datasets, read in the split's own order.

    ``celeb_a`` gets the CelebA crop (128x128 at (cx, cy)); other datasets are
    centre-cropped and resized to ``resolution``. Images travel to the workers
    still encoded and are decoded there with Pillow.

    With ``attributes`` (the default), a feature ``attributes`` that is a dict of booleans
    (celeb_a's 40) becomes the labels: 0/1 in TFDS's order of the names, multi_label.
    """

    kind = "tfds"

    def __init__(self, name, split="train", data_dir=None, image_key="image",
                 resolution=None, cx=89, cy=121, attributes=True):
        tensorflow()  # quietly, before tensorflow_datasets imports it
        import tensorflow_datasets as tfds

        self.crop_image = CelebACrop(cx, cy) if name.split(":")[0] == "celeb_a" else None
        if self.crop_image is not None:
            self.crop = self.crop_image.describe()
            self.resolution = CELEBA_CROP_SIZE
        else:
            if resolution is None:
                raise DatasetError(f"NAME {name}: --size is required for this dataset (only "
                                   "celeb_a has a crop of its own)")
            log2_resolution(resolution)
            self.resolution = resolution
        with _scratch_tempdir():
            try:
                builder = tfds.builder(name, data_dir=data_dir)
            except Exception as error:  # tfds raises many types for unknown names
                raise DatasetError(f"NAME {name}: not a TensorFlow Datasets dataset "
                                   f"({_first_line(error)})") from None
            features = builder.info.features
            if image_key not in features:
                raise DatasetError(f"--image-key {image_key}: {name} has no such feature (it "
                                   f"has {', '.join(features)})")
            try:
                builder.download_and_prepare()
            except Exception as error:  # download / preparation failures of any kind
                raise DatasetError(preparation_failure(name, error, builder.data_dir_root)) from None
        splits = builder.info.splits
        if splits and split not in splits:
            raise DatasetError(f"--split {split}: not a split of {name} (it has {', '.join(splits)})")
        self.count = splits[split].num_examples if splits else None  # None: unknown (mocked)
        self.builder, self.split, self.image_key = builder, split, image_key
        self.name = name
        self.description = {"kind": self.kind, "name": name, "split": split,
                            "data_dir": None if data_dir is None else str(data_dir),
                            "image_key": image_key}
        self._pending = {}  # record index -> labels, from items() until label() takes them
        if attributes:
            self.labels = self._attribute_labels(features)

    def _attribute_labels(self, features):
        """A LabelSpec of the boolean ``attributes`` dict of the features, or None."""
        import tensorflow_datasets as tfds

        found = features["attributes"] if "attributes" in features else None
        if not isinstance(found, tfds.features.FeaturesDict) or not found.keys() or any(
                feature.np_dtype != np.bool_ for feature in found.values()):
            return None
        return LabelSpec(tuple(found.keys()), "multi_label", f"tfds {self.name} 'attributes'")

    def default_split(self, image_count, partition_counts):
        if self.crop_image is not None:
            return thesis_split(image_count, f"the order of TFDS's {self.split} split")
        return super().default_split(image_count, partition_counts)

    def items(self):
        import tensorflow_datasets as tfds

        try:
            dataset = self.builder.as_dataset(
                split=self.split, shuffle_files=False,
                decoders={self.image_key: tfds.decode.SkipDecoding()})
        except Exception as error:  # tfds raises many types for bad splits or files
            raise DatasetError(f"NAME {self.name}: cannot be read ({error})") from None
        for index, example in enumerate(tfds.as_numpy(dataset)):
            if self.labels is not None:
                values = example["attributes"]
                self._pending[index] = np.array([values[n] for n in self.labels.names], np.float32)
            yield index, example[self.image_key]

    def label(self, item):
        return self._pending.pop(item[0])

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
        state["_pending"] = {}
        return state
