"""Write a source's images as a TFRecord pyramid in a staging folder, then swap it in.

The worker processes that encode the images are ``progan.dataset.pool``'s; this module
decides what OUT may be, appends the workers' chunks in record order to the level files,
writes the labels file and ``dataset.json``, and moves the finished data set into place.

Safety rules (see ``check_out``):

- Everything is written in a staging folder ``.<name>.partial-<pid>`` beside ``OUT``
  (it holds a marker file naming the process) that becomes ``OUT`` only once every
  file and ``dataset.json`` are complete.
- Only a data set this tool wrote (``dataset.json`` and its level files, nothing
  else) is ever replaced, with ``overwrite=True``, and only after the new one is
  complete. OUT may not be, contain, or lie inside a scanned folder of the input.
- Any failure (unreadable input under ``strict``, disk full, a worker that dies,
  Ctrl-C, SIGTERM) stops every worker at once and removes the staging folder;
  the error is one line naming the cause and, where there is one, the file.
- Staging folders of builds whose process is gone (SIGKILL, power loss) are
  removed by the next build in the same parent folder.

Labels (a source with ``labels``): each reply names the positions of the items its chunk
wrote, and the main process asks the source for their labels as it appends the chunk, so
row ``i`` of ``<name>-rxx.labels`` is record ``i`` and a skipped input has no row. The file
is written in the staging folder with the level files and moves with them: a data set
never has labels without records or records without their labels.
"""

import collections
import ctypes
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from progan.dataset.format import (FORMAT_NAME, FORMAT_VERSION, LEVEL_FILE_PATTERN, MANIFEST_NAME,
                                   MIN_LOG2, DatasetError, file_sha256, labels_filename,
                                   level_filename, log2_resolution, write_labels, write_manifest)
from progan.dataset.pool import (CHUNK_SIZE, Terminated, default_workers, encoded_chunks, error_line,
                                 load_tensorflow)
from progan.system import pid_alive

__all__ = ["CHUNK_SIZE", "Progress", "RECORD_OVERHEAD", "STAGING_MARKER", "Terminated", "check_out",
           "default_workers", "estimate_bytes", "remove_stale_staging", "write_dataset"]

STAGING_MARKER = ".progan-dataset-staging"
RECORD_OVERHEAD = 64  # bytes per record beyond the pixels: Example framing + TFRecord header/CRCs



# -- messages -------------------------------------------------------------------------------


def _size(count):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"



def _skip_entry(message):
    file, _, reason = message.rpartition(": ")
    return {"file": file, "reason": reason}


# -- processes ------------------------------------------------------------------------------


def _process_start(pid):
    """Start time of a process in clock ticks since boot (Linux), or None."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None



class Progress:
    """A tqdm bar on a terminal; plain ``desc: n/total`` lines every ~10 % otherwise (logs)."""

    def __init__(self, total, desc, enabled=True):
        self.total, self.desc, self.count = total, desc, 0
        self.bar = None
        self.interactive = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.step = max(1, (total or 10_000) // 10)
        self.next_tick = self.step
        self.start = time.perf_counter()
        if self.interactive:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)

    def update(self, n=1):
        self.count += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (self.count >= self.next_tick or self.count == self.total):
            rate = self.count / max(time.perf_counter() - self.start, 1e-9)
            print(f"{self.desc}: {self.count}/{self.total or '?'} ({rate:.0f} img/s)",
                  file=sys.stderr, flush=True)
            self.next_tick += self.step

    def write(self, message):
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# -- what OUT may be ------------------------------------------------------------------------


def _dataset_files(directory):
    """The files of a data set this tool wrote in ``directory``, or None if it holds anything
    else (or has no readable dataset.json of ours)."""
    manifest_path = directory / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        return None
    ours = {MANIFEST_NAME, MANIFEST_NAME + ".partial", STAGING_MARKER}
    ours.update(_listed_files(manifest))
    if isinstance(manifest.get("name"), str):
        ours.add(labels_filename(manifest["name"]))
    files = []
    for path in directory.iterdir():
        match = LEVEL_FILE_PATTERN.match(path.name)
        if path.is_dir() or path.is_symlink() or not (
                path.name in ours or (match and match["name"] == manifest.get("name"))):
            return None
        files.append(path)
    return files


def _listed_files(manifest):
    """Names of the files a manifest lists: its level files and its labels file."""
    listed = {level.get("file", "") for level in manifest.get("levels", []) if isinstance(level, dict)}
    labels = manifest.get("labels")
    if isinstance(labels, dict) and isinstance(labels.get("file"), str):
        listed.add(labels["file"])
    return listed


def _foreign_entry(directory):
    """An entry of ``directory`` that is not part of its data set (for messages)."""
    manifest = {}
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        pass
    listed = {MANIFEST_NAME} | _listed_files(manifest)
    for path in sorted(directory.iterdir()):
        if path.name not in listed:
            return path
    return directory


def check_out(out_dir, source=None, overwrite=False):
    """Refuse an OUT that is not ours to write; raises DatasetError with one line.

    OUT may not exist, may be an empty folder (with ``overwrite``), or may be a data set
    this tool wrote (``dataset.json`` and its level files only; with ``overwrite``). A file,
    a non-empty folder of anything else, the input, a folder holding the input, or a
    folder inside a scanned input folder is refused whatever ``overwrite`` says.
    """
    out_dir = Path(out_dir)
    resolved = out_dir.resolve()
    for path, scanned in (source.input_paths if source is not None else []):
        path = Path(path).resolve()
        if resolved == path:
            raise DatasetError(f"OUT {out_dir}: is the input {path}; choose another folder")
        if path.is_relative_to(resolved):
            raise DatasetError(f"OUT {out_dir}: contains the input {path}; choose another folder")
        if scanned and resolved.is_relative_to(path):
            raise DatasetError(f"OUT {out_dir}: is inside the input folder {path}, which is "
                               "scanned for images; choose a folder outside it")
    if out_dir.is_symlink():
        raise DatasetError(f"OUT {out_dir}: is a symbolic link; name the folder itself")
    if out_dir.exists() and not out_dir.is_dir():
        raise DatasetError(f"OUT {out_dir}: is a file, not a data set folder; not replacing it")
    if not out_dir.exists():
        return
    entries = list(out_dir.iterdir())
    if not entries:
        if not overwrite:
            raise DatasetError(f"OUT {out_dir}: already exists; pass --overwrite to use it")
        return
    if (out_dir / MANIFEST_NAME).is_file() and _dataset_files(out_dir) is not None:
        if not overwrite:
            raise DatasetError(f"OUT {out_dir}: already exists; pass --overwrite to replace it")
        return
    if not (out_dir / MANIFEST_NAME).is_file():
        raise DatasetError(f"OUT {out_dir}: exists and is not a data set written by progan-dataset "
                           f"(no {MANIFEST_NAME}); not replacing it, choose another folder")
    raise DatasetError(f"OUT {out_dir}: holds {_foreign_entry(out_dir).name}, which is not part of "
                       "its data set; not replacing it, choose another folder")


def estimate_bytes(count, resolutions, channels=3):
    """Bytes the level files of ``count`` images at ``resolutions`` take (a close upper bound)."""
    return count * sum(channels * r * r + RECORD_OVERHEAD for r in resolutions)


def _check_free_space(parent, count, resolutions, out_dir):
    if count is None:
        return
    needed = estimate_bytes(count, resolutions) + (1 << 20)
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise DatasetError(
            f"OUT {out_dir}: the data set needs about {_size(needed)} ({count:,} images, levels "
            f"{resolutions[0]}..{resolutions[-1]}) but {parent} has only {_size(free)} free")


# -- staging folders ------------------------------------------------------------------------


def _staging_alive(path):
    """Whether the build that owns a staging/retired folder is still running."""
    pid = int(path.name.rsplit("-", 1)[1])
    try:
        marker = json.loads((path / STAGING_MARKER).read_text())
    except (OSError, ValueError):
        marker = None
    if not pid_alive(pid):
        return False
    if isinstance(marker, dict) and marker.get("start") is not None:
        return _process_start(pid) == marker["start"]  # else the pid was reused
    return True


def remove_stale_staging(parent, report=print):
    """Remove ``.NAME.partial-PID`` / ``.NAME.old-PID`` folders in ``parent`` whose process is
    gone; returns them. Only folders this tool made are touched (a marker file, or a data set
    of ours); anything else with such a name is left alone and named."""
    removed = []
    parent = Path(parent)
    if not parent.is_dir():
        return removed
    for path in sorted(parent.glob(".*.partial-*")) + sorted(parent.glob(".*.old-*")):
        if not path.is_dir() or path.is_symlink() or not path.name.rsplit("-", 1)[1].isdigit():
            continue
        if _staging_alive(path):
            continue
        pid = path.name.rsplit("-", 1)[1]
        if (path / STAGING_MARKER).is_file():
            shutil.rmtree(path, ignore_errors=True)
        elif _dataset_files(path) is not None:
            _remove_dataset(path)
        else:
            report(f"warning: left {path} alone: named like a staging folder but not made by "
                   "progan-dataset")
            continue
        if not path.exists():
            report(f"removed {path}, left by an earlier build (process {pid}) that is no longer running")
            removed.append(path)
    return removed


def _remove_dataset(directory):
    """Delete a data set folder of ours file by file; anything else in it stays (and the folder)."""
    files = _dataset_files(directory)
    if files is None:
        return False
    for path in files:
        path.unlink(missing_ok=True)
    try:
        directory.rmdir()
    except OSError:
        return False
    return True


_RENAME_EXCHANGE = 2


def _exchange(first, second):
    """Atomically swap two paths (renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), _RENAME_EXCHANGE)
    return result == 0


def _move_into_place(staging, out_dir, report):
    """Rename the finished staging folder to out_dir; an old data set there is swapped out
    atomically where the kernel allows, then deleted file by file."""
    (staging / STAGING_MARKER).unlink(missing_ok=True)
    if not out_dir.exists():
        os.replace(staging, out_dir)
        return
    if not any(out_dir.iterdir()):
        out_dir.rmdir()
        os.replace(staging, out_dir)
        return
    if _dataset_files(out_dir) is None:  # changed since check_out: leave it alone
        raise DatasetError(f"OUT {out_dir}: changed during the build and is no longer only a data "
                           "set; not replacing it")
    retired = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    if _exchange(staging, out_dir):
        os.replace(staging, retired)
    else:
        os.replace(out_dir, retired)
        os.replace(staging, out_dir)
    if not _remove_dataset(retired):
        report(f"warning: the previous data set is kept in {retired}: it held files this tool "
               "did not write")


# -- the build ------------------------------------------------------------------------------


def write_dataset(out_dir, source, *, max_resolution=None, workers=None, overwrite=False,
                  strict=False, train_count=None, progress=True):
    """Write ``source`` as a dataset directory ``out_dir``; returns its manifest (dict).

    Args:
      out_dir: the dataset directory to create; level files are named after it.
      source: an ImageSource (see sources.py, synthetic.py).
      max_resolution: highest level written (a power of two <= source.resolution);
        default the source's resolution. Lower levels are identical either way.
      workers: processes decoding in parallel; default all cores; 1 = in this process.
      overwrite: replace an existing data set of ours at ``out_dir`` (only after the new
        one is complete); see check_out for what is never replaced.
      strict: an unreadable input is an error instead of a skipped file.
      train_count: records in the train split; default the source's rule.
      progress: show a progress bar (terminal) or tick lines (logs) on stderr; warnings
        about skipped inputs are printed either way.

    Raises DatasetError (one line) for bad arguments before anything is written, and for
    any failure during the build, after stopping the workers and removing the staging folder.
    """
    from progan import __version__

    out_dir = Path(out_dir)
    if out_dir.name in ("", ".", ".."):  # "." names no folder: use the real one
        out_dir = out_dir.resolve()
    top = source.resolution if max_resolution is None else int(max_resolution)
    log2_resolution(top)
    if top > source.resolution:
        raise DatasetError(
            f"--max-resolution {top}: above the source's resolution {source.resolution}")
    num_levels = log2_resolution(source.resolution) - MIN_LOG2 + 1
    num_written = log2_resolution(top) - MIN_LOG2 + 1
    resolutions = [top >> k for k in range(num_written)]
    if workers is not None and int(workers) < 1:
        raise DatasetError(f"--workers {workers}: expected 1 or more")
    workers = default_workers() if workers is None else int(workers)
    if train_count is not None:
        if train_count < 0:
            raise DatasetError(f"--train-count {train_count}: expected a count >= 0")
        if source.partitions is not None:
            raise DatasetError(f"--train-count {train_count}: the source's records come in "
                               f"partitions ({', '.join(source.partitions)}) that set the train "
                               "split; leave --train-count out")
        if source.count is not None and train_count > source.count:
            raise DatasetError(f"--train-count {train_count}: the source has only "
                               f"{source.count:,} images")
    check_out(out_dir, source, overwrite)
    name = out_dir.name
    parent = out_dir.parent
    if not parent.exists():
        parent.mkdir(parents=True, exist_ok=True)
    bar = Progress(source.count, f"{name}", enabled=progress)
    remove_stale_staging(parent, bar.write)
    _check_free_space(parent, source.count, resolutions, out_dir)
    load_tensorflow()
    bar.start = time.perf_counter()  # rates count the build, not the loading of TensorFlow

    staging = parent / f".{name}.partial-{os.getpid()}"
    if staging.exists():  # ours: this very process made it and failed to remove it
        shutil.rmtree(staging)
    level_names = [level_filename(name, r) for r in resolutions]
    current = staging
    image_count, skipped, notes, label_rows = 0, [], [], []
    partition_counts = collections.Counter()
    if source.labels is not None and progress:  # the summary line says it when quiet
        bar.write(f"labels: {len(source.labels.names)} {source.labels.kind} from {source.labels.origin}")
    try:
        staging.mkdir()
        (staging / STAGING_MARKER).write_text(json.dumps(
            {"pid": os.getpid(), "start": _process_start(os.getpid())}) + "\n")
        chunk_dir = staging / "chunks"
        chunk_dir.mkdir()
        outputs = [open(staging / level_name, "wb") for level_name in level_names]
        digests = [hashlib.sha256() for _ in level_names]  # hashed while the workers run
        chunks = encoded_chunks(source, num_levels, level_names, workers, chunk_dir)
        try:
            for reply in chunks:
                chunk_skipped = reply["skipped"]
                if chunk_skipped and strict:
                    raise DatasetError(f"{chunk_skipped[0]} (--strict stops at the first unreadable input)")
                for message in chunk_skipped:
                    bar.write(f"warning: skipped {message}")
                skipped.extend(chunk_skipped)
                notes.extend(reply["notes"])
                # Records are self-delimiting: a level file is its chunks' files in order.
                for output, digest, level_name in zip(outputs, digests, level_names):
                    part = Path(f"{reply['prefix']}-{level_name}")
                    current = part
                    records = part.read_bytes()
                    digest.update(records)
                    current = staging / level_name
                    output.write(records)
                    part.unlink()
                written = [reply["items"][k] for k in reply["kept"]]  # in record order
                if source.labels is not None:
                    label_rows.extend(source.label(item) for item in written)
                if source.partitions is not None:
                    partition_counts.update(source.partition_of(item) for item in written)
                image_count += reply["written"]
                bar.update(reply["written"] + len(chunk_skipped))
                _check_train_count(train_count, source.count, skipped)
            current = staging
        finally:
            chunks.close()  # stops the workers
            for output in outputs:
                try:
                    output.close()
                except OSError:
                    pass
        chunk_dir.rmdir()
        if image_count == 0:
            raise DatasetError(f"{source.description.get('path', name)}: no readable images "
                               f"({len(skipped)} skipped)")
        if train_count is None:
            train, split = source.default_split(image_count, partition_counts)
        else:
            train, split = int(train_count), {
                "rule": "train_count",
                "description": f"the first {train_count:,} records are train (--train-count), "
                               "the rest test"}
        if not 0 <= train <= image_count:
            raise DatasetError(f"--train-count {train}: only {image_count:,} images were readable "
                               f"({len(skipped)} skipped); expected 0..{image_count}")
        summary = _summarize_notes(notes, source.resolution)
        for line in summary.values():
            bar.write(f"note: {line['message']}")
        manifest = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "tool_version": __version__,
            "name": name, "source": source.description, "crop": source.crop,
            "resolution": top, "source_resolution": source.resolution, "channels": 3,
            "image_count": image_count, "order": source.order,
            "train_count": train, "test_count": image_count - train, "split": split,
            "skipped_count": len(skipped), "skipped": [_skip_entry(reason) for reason in skipped],
            "notes": {kind: {"count": line["count"], "example": line["example"]}
                      for kind, line in summary.items()},
            "levels": [{"file": level_name, "resolution": resolution, "records": image_count,
                        "bytes": (staging / level_name).stat().st_size, "sha256": digest.hexdigest()}
                       for level_name, resolution, digest in zip(level_names, resolutions, digests)],
        }
        if source.labels is not None:
            current = staging / labels_filename(name)
            manifest["labels"] = _write_labels(current, source.labels, label_rows)
        current = staging / MANIFEST_NAME
        write_manifest(staging, manifest)
        current = out_dir
        _move_into_place(staging, out_dir, bar.write)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, (OSError, DatasetError)) or type(error).__module__.startswith("tensorflow"):
            line = error_line(error, str(current))
            if "no space left on device" in line:
                needed = estimate_bytes(source.count or image_count, resolutions)
                line = (f"OUT {out_dir}: no space left on device in {parent} while writing the data "
                        f"set (it needs about {_size(needed)}); the partial data set was removed")
            if isinstance(error, DatasetError) and line == str(error):
                raise
            raise DatasetError(line) from None
        raise
    finally:
        bar.close()
    return manifest


def _check_train_count(train_count, count, skipped):
    """Stop a build as soon as ``--train-count`` exceeds the images that can still be readable
    (the inputs less those skipped so far), rather than at its end."""
    if train_count is not None and count is not None and count - len(skipped) < train_count:
        raise DatasetError(f"--train-count {train_count}: at most {count - len(skipped):,} images "
                           f"can be readable ({count:,} inputs, {len(skipped):,} skipped so far); "
                           f"expected at most that many")


def _write_labels(path, spec, rows):
    """Write the labels file of a build (rows in record order); returns its manifest entry."""
    values = np.stack(rows).astype(np.float32)
    if values.shape[1] != len(spec.names):
        raise DatasetError(f"{path.name}: rows of {values.shape[1]} labels, but {len(spec.names)} "
                           f"names ({spec.origin})")
    write_labels(path, values)
    return {"file": path.name, "names": list(spec.names), "kind": spec.kind,
            "count": len(values), "sha256": file_sha256(path), "origin": spec.origin}


def _summarize_notes(notes, resolution):
    """{kind: {count, example, message}} of the notes of all images."""
    summary = {}
    for kind, name, detail in notes:
        entry = summary.setdefault(kind, {"count": 0, "example": f"{name} ({detail})"})
        entry["count"] += 1
    for kind, entry in summary.items():
        if kind == "enlarged":
            entry["message"] = (f"enlarged {entry['count']} images smaller than {resolution}x"
                                f"{resolution} (e.g. {entry['example']})")
        elif kind == "16-bit converted":
            entry["message"] = (f"{entry['count']} 16-bit images converted to 8 bits "
                                f"(e.g. {entry['example']})")
        else:
            entry["message"] = f"{kind}: {entry['count']} images (e.g. {entry['example']})"
    return summary
