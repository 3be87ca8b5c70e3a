"""``progan-dataset``: create, inspect, extract, compare and verify TFRecord datasets.

Every sub-command only parses its flags and calls the dataset package; every flag's help
says what it means, its unit and its default.
"""

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import warnings
from pathlib import Path

import numpy as np

PROG = "progan-dataset"
OUT_HELP = "the data set folder to create; its level files are named after it (OUT-rXX.tfrecords)"


def _create_flags():
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--max-resolution", type=int, default=None, metavar="PIXELS",
                        help="highest level written, a power of two (e.g. 64); lower levels are "
                             "the same either way (default: the source's resolution)")
    parent.add_argument("--workers", type=int, default=None, metavar="N",
                        help="processes decoding images in parallel; 1 decodes in this process "
                             "(default: every core this process may use)")
    parent.add_argument("--train-count", type=int, default=None, metavar="N",
                        help="records in the train split, the first N; the rest are the test "
                             "split (default: 200,000 for CelebA, else every record)")
    parent.add_argument("--strict", action="store_true",
                        help="stop at the first unreadable input (default: skip it with a warning "
                             "and list it in dataset.json)")
    parent.add_argument("--overwrite", action="store_true",
                        help="replace OUT if it is a data set written by this tool, once the new "
                             "one is complete; never anything else (default: refuse an existing OUT)")
    parent.add_argument("--quiet", action="store_true",
                        help="no progress bar or labels line; warnings and the summary still print "
                             "(default: progress on stderr)")
    return parent


def _add_create_commands(commands):
    """The create_* sub-commands: each source's own flags, plus the shared ones."""
    create = _create_flags()

    sub = commands.add_parser("create_celeba", parents=[create],
                              help="CelebA aligned & cropped (official or Kaggle copy; folder or zip)")
    sub.add_argument("out", type=Path, metavar="OUT", help=OUT_HELP)
    sub.add_argument("celeba", type=Path, metavar="CELEBA",
                     help="img_align_celeba/ (JPEG), img_align_celeba_png/, img_align_celeba.zip, "
                          "Kaggle's zip, or a folder holding one of them or the official Img/ "
                          "(Kaggle's img_align_celeba/img_align_celeba/ is found)")
    sub.add_argument("--cx", type=int, default=89, metavar="PIXELS",
                     help="centre x of the 128x128 crop in the 178x218 image (default 89)")
    sub.add_argument("--cy", type=int, default=121, metavar="PIXELS",
                     help="centre y of the 128x128 crop in the 178x218 image (default 121)")
    sub.add_argument("--max-images", type=int, default=None, metavar="N",
                     help="use the first N files in name order (default: all, and exactly 202,599 "
                          "are required)")
    choice = sub.add_mutually_exclusive_group()
    choice.add_argument("--attributes", type=Path, default=None, metavar="FILE",
                        help="list_attr_celeba.txt or Kaggle's list_attr_celeba.csv, stored as 40 "
                             "labels (default: found in the zip, beside the images, up to two "
                             "folders above them or in an Anno/ folder there; none found: no labels)")
    choice.add_argument("--no-attributes", action="store_true",
                        help="store no labels even if an attributes file is found")
    sub.add_argument("--partition", choices=("thesis", "official"), default="thesis",
                     help="which records are train: thesis = the first 200,000 in the reference "
                          "order (the same data set from every copy of CelebA); official = the "
                          "images list_eval_partition.txt/.csv marks 0 (162,770), followed by its "
                          "validation (1) and test (2) images as the test split (default thesis)")

    sub = commands.add_parser("create_from_images", parents=[create],
                              help="any folder (recursive) of JPEG/PNG/WebP images")
    sub.add_argument("out", type=Path, metavar="OUT", help=OUT_HELP)
    sub.add_argument("directory", type=Path, metavar="DIR",
                     help="the folder of images; every file under it (sub-folders too) is read")
    sub.add_argument("--size", type=int, required=True, metavar="PIXELS",
                     help="images are centre-cropped to a square and resized to SIZE x SIZE, a "
                          "power of two (required)")
    sub.add_argument("--labels", choices=("none", "folders"), default="none",
                     help="folders: each first-level sub-folder of DIR is a class, stored as one-hot "
                          "labels (default none)")

    sub = commands.add_parser("create_tfds", parents=[create], help="an image dataset of TensorFlow Datasets")
    sub.add_argument("out", type=Path, metavar="OUT", help=OUT_HELP)
    sub.add_argument("name", metavar="NAME", help="the TFDS dataset, e.g. celeb_a or cifar10")
    sub.add_argument("--split", default="train",
                     help="the TFDS split read, e.g. train or test (default train)")
    sub.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                     help="TFDS's data folder, where it downloads and prepares the dataset; files "
                          "downloaded by hand go in DIR/downloads/manual/ (default: $TFDS_DATA_DIR, "
                          "else ~/tensorflow_datasets)")
    sub.add_argument("--image-key", default="image", metavar="FEATURE",
                     help="the feature that holds the image (default image)")
    sub.add_argument("--size", type=int, default=None, metavar="PIXELS",
                     help="images are centre-cropped and resized to SIZE x SIZE, a power of two "
                          "(required except for celeb_a, which gets the 128x128 CelebA crop)")
    sub.add_argument("--cx", type=int, default=89, metavar="PIXELS",
                     help="celeb_a only: centre x of the 128x128 crop (default 89)")
    sub.add_argument("--cy", type=int, default=121, metavar="PIXELS",
                     help="celeb_a only: centre y of the 128x128 crop (default 121)")
    sub.add_argument("--no-attributes", action="store_true",
                     help="do not store the boolean 'attributes' feature (celeb_a's 40) as labels "
                          "(default: stored when the dataset has it)")

    sub = commands.add_parser("create_synthetic", parents=[create], help="procedural faces (demo, tests)")
    sub.add_argument("out", type=Path, metavar="OUT", help=OUT_HELP)
    sub.add_argument("--num-images", type=int, default=4096, metavar="N",
                     help="number of faces (default 4096)")
    sub.add_argument("--size", type=int, default=32, metavar="PIXELS",
                     help="side of the square faces, a power of two (default 32)")
    sub.add_argument("--seed", type=int, default=0,
                     help="face i is drawn from numpy's default_rng([SEED, i]) (default 0)")
    choice = sub.add_mutually_exclusive_group()
    choice.add_argument("--attributes", choices=("basic", "extended"), default="basic",
                        help="basic: Dark_Hair, Pale_Skin (the default images); extended: also "
                             "Eyeglasses and Smiling, drawn into the faces (other images) "
                             "(default basic)")
    choice.add_argument("--no-attributes", action="store_true",
                        help="store no labels (the images are the basic ones)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG, description="Create and inspect multi-resolution TFRecord datasets "
        "(the layout of NVIDIA's progressive_growing_of_gans dataset_tool.py).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     help="what to do; COMMAND -h shows its flags")
    _add_create_commands(commands)

    sub = commands.add_parser("info", help="counts, levels, split, checksums, source, labels")
    sub.add_argument("directory", type=Path, metavar="DIR", help="the data set folder")

    sub = commands.add_parser("extract", help="write some records of one level as PNGs or one grid PNG")
    sub.add_argument("directory", type=Path, metavar="DIR", help="the data set folder")
    sub.add_argument("dest", type=Path, metavar="DEST",
                     help="a folder for the PNGs (created if missing; existing PNGs of the same "
                          "names are not replaced), or with --grid the new .png file")
    sub.add_argument("--level", type=int, default=None, metavar="PIXELS",
                     help="which level, by its resolution (default: the top one)")
    sub.add_argument("--split", default="all", choices=("train", "test", "all"),
                     help="which records to count from (default all)")
    sub.add_argument("--start", type=int, default=0, metavar="N",
                     help="first record, counted from the start of the split (default 0)")
    sub.add_argument("--count", type=int, default=64, metavar="N",
                     help="number of records, fewer if the split ends first (default 64)")
    sub.add_argument("--grid", action="store_true",
                     help="one grid image, nearly square, instead of one PNG per record")

    sub = commands.add_parser("compare", help="compare two datasets record by record")
    sub.add_argument("first", type=Path, metavar="A", help="a data set folder")
    sub.add_argument("second", type=Path, metavar="B", help="the data set folder to compare it with")

    sub = commands.add_parser("verify", help="check the level and labels files against dataset.json "
                                             "(sha256, counts)")
    sub.add_argument("directory", type=Path, metavar="DIR", help="the data set folder")
    return parser


def _write(args, source):
    from progan.dataset.writer import write_dataset

    args.building = True
    manifest = write_dataset(args.out, source, max_resolution=args.max_resolution,
                             workers=args.workers, overwrite=args.overwrite, strict=args.strict,
                             train_count=args.train_count, progress=not args.quiet)
    print(f"{args.out}: {manifest['image_count']} images, levels "
          f"{', '.join(str(level['resolution']) for level in manifest['levels'])}, "
          f"train {manifest['train_count']} / test {manifest['test_count']}, "
          f"skipped {manifest['skipped_count']}"
          + "".join(f", {kind} {note['count']}" for kind, note in sorted(manifest["notes"].items()))
          + _labels_summary(manifest.get("labels")))
    return 0


def _labels_summary(labels):
    if labels is None:
        return ""
    return f", labels {len(labels['names'])} {labels['kind']} from {labels['origin']}"


def create_celeba(args):
    from progan.dataset.sources import celeba_source

    attributes = None if args.no_attributes else args.attributes or "auto"
    source = celeba_source(args.celeba, args.cx, args.cy, args.max_images, attributes, args.partition)
    if attributes == "auto" and source.labels is None:
        print(f"{PROG}: warning: found the images in {source.location} but no list_attr_celeba.txt "
              "or .csv with them: the data set gets no labels (name the file with --attributes "
              "FILE, or pass --no-attributes)", file=sys.stderr)
    if args.partition == "thesis" and source.partition_found and not args.quiet:
        print(f"{PROG}: note: split as in the thesis (the first 200,000 records train); "
              f"--partition official would use {source.partition_found}", file=sys.stderr)
    return _write(args, source)


def create_from_images(args):
    from progan.dataset.sources import ImageFolderSource

    return _write(args, ImageFolderSource(args.directory, args.size, args.labels))


def create_tfds(args):
    from progan.dataset.format import tensorflow
    from progan.dataset.sources import TfdsSource

    tensorflow()
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # its bars and log lines would mix with ours
    if not args.quiet:
        print(f"{PROG}: note: TensorFlow Datasets prepares {args.name} first (the first time: a "
              "download, which can take a while)", file=sys.stderr)
    return _write(args, TfdsSource(args.name, args.split, args.data_dir, args.image_key,
                                   args.size, args.cx, args.cy, not args.no_attributes))


def create_synthetic(args):
    from progan.dataset.synthetic import SyntheticSource

    attributes = "none" if args.no_attributes else args.attributes
    return _write(args, SyntheticSource(args.num_images, args.size, args.seed, attributes))


def info(args):
    from progan.dataset.reader import open_dataset

    dataset = open_dataset(args.directory)
    manifest = dataset.manifest
    print(f"dataset     {dataset.path}")
    print(f"images      {dataset.image_count}")
    print(f"split       train {dataset.train_count} (records 0..{dataset.train_count - 1}), "
          f"test {dataset.image_count - dataset.train_count}")
    rule = (manifest or {}).get("split")
    if isinstance(rule, dict) and rule.get("description"):
        print(f"            {rule['description']}")
    if manifest is None:
        print("manifest    none (reference-tool dataset): all records count as train")
        print(f"channels    {dataset.channels} (from the records)")
        for resolution, file in sorted(dataset.level_files.items(), reverse=True):
            print(f"level {resolution:>4}  {file.name}  {file.stat().st_size} bytes")
        _print_labels(dataset)
        return 0
    unknown = "? (not in dataset.json)"
    print(f"source      {manifest.get('source', unknown)}")
    print(f"crop        {manifest.get('crop', unknown)}")
    print(f"order       {manifest.get('order', unknown)}")
    print(f"channels    {dataset.channels}")
    print(f"skipped     {manifest.get('skipped_count', unknown)}")
    for entry in manifest.get("skipped", [])[:20]:
        if isinstance(entry, dict):
            print(f"  {entry.get('file')}: {entry.get('reason')}")
    print(f"tool        progan {manifest.get('tool_version', '?')} "
          f"(format {manifest.get('format_version', '?')})")
    for level in manifest["levels"]:
        print(f"level {level['resolution']:>4}  {level['file']}  {level.get('records', '?')} records  "
              f"{level['bytes']} bytes  sha256 {level.get('sha256', '?')}")
    _print_labels(dataset)
    return 0


def _print_labels(dataset):
    """The labels lines of ``info``: file, count, kind, and every name with the share of
    records that have it (the file is read and checked; ``verify`` checks its sha256)."""
    from progan.dataset.reader import read_labels

    if dataset.label_file is None:
        print("labels      none")
        return
    labels = read_labels(dataset.path, "all")
    entry = (dataset.manifest or {}).get("labels")
    where = f"  from {entry['origin']}" if entry and entry.get("origin") else ""
    print(f"labels      {labels.size} {labels.kind} per record, {len(labels.values)} rows  "
          f"{dataset.label_file.name}{where}")
    present = labels.values.mean(axis=0) if len(labels.values) else np.zeros(labels.size)
    print("            " + ", ".join(f"{name} {share:.0%}" for name, share in zip(labels.names, present)))


def extract(args):
    from progan.dataset.format import DatasetError
    from progan.dataset.reader import open_dataset, read_images

    dataset = open_dataset(args.directory)
    resolution = args.level or max(dataset.level_files)
    dataset.level_file(resolution)
    if args.start < 0 or args.count < 1:
        raise DatasetError(f"--start {args.start} --count {args.count}: expected start >= 0, count >= 1")
    first, stop = dataset.split_range(args.split)
    count = min(args.count, stop - first - args.start)
    if count < 1:
        raise DatasetError(f"--start {args.start}: the {args.split} split has {stop - first} records")
    indices = range(first + args.start, first + args.start + count)
    targets = _extract_targets(args.dest, args.grid, indices)
    images = read_images(args.directory, resolution, args.split, args.start + count)[args.start:]
    if args.grid:
        columns = math.ceil(math.sqrt(count))
        rows = math.ceil(count / columns)
        grid = np.zeros((rows * resolution, columns * resolution, images.shape[-1]), np.uint8)
        for index, image in enumerate(images):
            row, column = divmod(index, columns)
            grid[row * resolution:(row + 1) * resolution,
                 column * resolution:(column + 1) * resolution] = image
        args.dest.parent.mkdir(parents=True, exist_ok=True)
        _save_png(grid, args.dest)
        print(f"{args.dest}: grid of {count} images at {resolution}x{resolution}")
        return 0
    args.dest.mkdir(parents=True, exist_ok=True)
    for image, target in zip(images, targets):
        _save_png(image, target)
    print(f"{args.dest}: {count} PNGs at {resolution}x{resolution}")
    return 0


def _extract_targets(dest, grid, indices):
    """The files ``extract`` will write, after one-line refusals of a DEST it may not write:
    never a file it did not write, never a folder as the grid file."""
    from progan.dataset.format import DatasetError

    if grid:
        if dest.is_dir():
            raise DatasetError(f"DEST {dest}: is a folder; --grid writes one .png file, e.g. "
                               f"{dest / 'grid.png'}")
        if dest.suffix.lower() != ".png":
            raise DatasetError(f"DEST {dest}: expected a .png file name for the grid")
        if dest.exists() or dest.is_symlink():
            raise DatasetError(f"DEST {dest}: already exists; not replacing it, choose a new name")
        _check_folder_path(dest, dest.parent)
        return [dest]
    if dest.exists() and not dest.is_dir():
        raise DatasetError(f"DEST {dest}: is a file; expected a folder for the PNGs (or --grid "
                           "and a new .png file name)")
    _check_folder_path(dest, dest)
    targets = [dest / f"img{index:08d}.png" for index in indices]
    taken = next((target for target in targets if target.exists() or target.is_symlink()), None)
    if taken is not None:
        raise DatasetError(f"DEST {dest}: already holds {taken.name}; not replacing it, choose an "
                           "empty folder")
    return targets


def _check_folder_path(dest, folder):
    """A one-line error unless ``folder`` is, or can be made, a folder (no file on its path)."""
    from progan.dataset.format import DatasetError

    existing = next((path for path in (folder, *folder.parents) if path.exists()), None)
    if existing is not None and not existing.is_dir():
        raise DatasetError(f"DEST {dest}: {existing} is a file, not a folder")


def _save_png(pixels, path):
    """Write uint8 HWC pixels as a PNG, complete or not at all (a ``.partial`` file renamed)."""
    import PIL.Image

    partial = path.with_name(f".{path.name}.partial")
    try:
        PIL.Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(
            partial, format="PNG")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def compare(args):
    from progan.dataset.reader import iter_level, open_dataset

    first, second = open_dataset(args.first), open_dataset(args.second)
    identical = True
    if first.image_count != second.image_count:
        print(f"image counts differ: {first.image_count} vs {second.image_count}")
        identical = False
    only = set(first.level_files) ^ set(second.level_files)
    if only:
        print(f"levels present in only one: {', '.join(str(r) for r in sorted(only))}")
        identical = False
    for resolution in sorted(set(first.level_files) & set(second.level_files), reverse=True):
        same, total, first_difference = 0, 0, None
        batches = zip(iter_level(first.level_files[resolution]), iter_level(second.level_files[resolution]))
        for batch_a, batch_b in batches:
            equal = (batch_a == batch_b).reshape(len(batch_a), -1).all(axis=1)
            if first_difference is None and not equal.all():
                first_difference = total + int(np.argmin(equal))
            same += int(equal.sum())
            total += len(equal)
        identical &= same == total == first.image_count == second.image_count
        note = "" if first_difference is None else f", first difference at record {first_difference}"
        print(f"level {resolution:>4}: identical {same} / {total}{note}")
    identical &= _compare_labels(first, second)
    print("identical" if identical else "different")
    return 0 if identical else 1


def _compare_labels(first, second):
    """Compare two data sets' labels row by row (both without labels: nothing to say)."""
    from progan.dataset.reader import read_labels

    if first.label_file is None and second.label_file is None:
        return True
    if first.label_file is None or second.label_file is None:
        print("labels present in only one")
        return False
    a, b = read_labels(first.path, "all"), read_labels(second.path, "all")
    if a.values.shape != b.values.shape or a.names != b.names:
        print(f"labels differ: {a.size} columns ({', '.join(a.names[:3])}, ...) vs {b.size} "
              f"({', '.join(b.names[:3])}, ...)")
        return False
    equal = (a.values == b.values).all(axis=1)
    note = "" if equal.all() else f", first difference at record {int(np.argmin(equal))}"
    print(f"labels    : identical {int(equal.sum())} / {len(equal)}{note}")
    return bool(equal.all())


def verify(args):
    from progan.dataset.format import DatasetError, file_sha256
    from progan.dataset.reader import count_records, open_dataset

    dataset = open_dataset(args.directory)
    if dataset.manifest is None:
        raise DatasetError(f"DIR {args.directory}: has no dataset.json to verify against")
    good = True
    for level in dataset.manifest["levels"]:
        file = dataset.path / level["file"]
        digest = file_sha256(file)
        try:
            records = count_records(file)
        except DatasetError:
            records = "unreadable"
        ok = digest == level["sha256"] and records == level["records"]
        good &= ok
        print(f"{'OK' if ok else 'MISMATCH'}  {level['file']}  records {records}/{level['records']}"
              f"  sha256 {'matches' if digest == level['sha256'] else 'differs: ' + digest}")
    if "labels" in dataset.manifest:
        good &= _verify_labels(dataset)
    print("verified" if good else "the files disagree with dataset.json")
    return 0 if good else 1


def _verify_labels(dataset):
    """Check the labels file against dataset.json (sha256, and that it reads as one row per
    record); prints one line, returns whether it matched."""
    from progan.dataset.format import DatasetError, file_sha256
    from progan.dataset.reader import read_labels

    entry = dataset.manifest["labels"]
    digest = file_sha256(dataset.path / entry["file"])
    try:
        rows = len(read_labels(dataset.path, "all").values)
    except DatasetError as error:
        rows = f"unreadable ({error})"
    ok = digest == entry["sha256"] and rows == entry["count"]
    print(f"{'OK' if ok else 'MISMATCH'}  {entry['file']}  rows {rows}/{entry['count']}"
          f"  sha256 {'matches' if digest == entry['sha256'] else 'differs: ' + digest}")
    return ok


COMMANDS = {"create_celeba": create_celeba, "create_from_images": create_from_images,
            "create_tfds": create_tfds, "create_synthetic": create_synthetic, "info": info,
            "extract": extract, "compare": compare, "verify": verify}


def main(argv=None):
    """Entry point of ``progan-dataset``; returns the exit code (2 for bad input).

    Called without ``argv`` (the command line: the console script, ``python -m``,
    tools/dataset_tool.py) it ends the process itself once TensorFlow is loaded: the
    interpreter's teardown of TensorFlow takes seconds on a busy machine, and a failure
    must end in seconds.
    """
    code = _main(argv)
    if argv is None and "tensorflow" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv):
    from progan.dataset.format import DatasetError
    from progan.dataset.pool import Terminated, stop_on_signals

    parser = build_parser()
    args = parser.parse_args(argv)
    args.building = False
    for library in ("absl", "tensorflow", "tensorflow_datasets", "etils"):
        logging.getLogger(library).setLevel(logging.CRITICAL + 1)  # their lines are not ours
    try:
        with stop_on_signals(), _one_line_warnings():
            return COMMANDS[args.command](args)
    except DatasetError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a file the command reads or writes, e.g. permission denied
        where = f"{error.filename}: " if error.filename else ""
        print(f"{PROG}: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as error:
        cause = "SIGINT" if isinstance(error, KeyboardInterrupt) else str(error)
        note = (f"; stopped the workers and removed the partial data set, OUT {args.out} is unchanged"
                if args.building else "")
        print(f"{PROG}: interrupted by {cause}{note}", file=sys.stderr)
        return 130 if cause == "SIGINT" else 128 + signal.SIGTERM


@contextlib.contextmanager
def _one_line_warnings():
    """Show a warning (e.g. "no dataset.json: all records count as train") as one line
    ``progan-dataset: warning: ...`` instead of Python's two lines of file and source."""
    previous = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "progan" in Path(filename).parts:  # other libraries' warnings are not for our users
            print(f"{PROG}: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    sys.exit(main())
