"""Write a source's images as a TFRecord pyramid, in parallel, atomically.

Workers (processes) decode, crop, build the pyramid and write each chunk of
16 images as small TFRecord files; the main process appends the chunks in
order to the level files (a kernel-side copy: no image data crosses a pipe).
Everything happens in a temporary directory beside ``OUT`` that is renamed into
place only once every file and ``dataset.json`` are complete. Memory stays
bounded: at most 4 chunks per worker are in flight.
"""

import hashlib
import multiprocessing
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from progan.dataset.format import (FORMAT_NAME, FORMAT_VERSION, MIN_LOG2, DatasetError,
                                   level_filename, log2_resolution,
                                   serialize_example, write_manifest)
from progan.dataset.pyramid import build_pyramid
from progan.dataset.sources import SkipImage

_WORKER_STATE = {}
CHUNK_SIZE = 16  # small enough that the last chunks leave little idle time


def _init_worker(source, num_levels, level_names):
    _WORKER_STATE.update(source=source, num_levels=num_levels, level_names=level_names)


def _encode_chunk(task):
    """Worker: load, pyramid and write one chunk of items as its own small level files.

    Args:
      task: (chunk directory prefix, list of source items).
    Returns:
      (the prefix, number of records written, [skip messages]).
    """
    import tensorflow as tf

    prefix, items = task
    source, names = _WORKER_STATE["source"], _WORKER_STATE["level_names"]
    writers = [tf.io.TFRecordWriter(f"{prefix}-{name}") for name in names]
    written, skipped = 0, []
    try:
        for item in items:
            try:
                _, image = source.load(item)
            except SkipImage as error:
                skipped.append(str(error))
                continue
            levels = build_pyramid(image, _WORKER_STATE["num_levels"])[-len(names):]
            for writer, level in zip(writers, levels):
                writer.write(serialize_example(level))
            written += 1
    finally:
        for writer in writers:
            writer.close()
    return prefix, written, skipped


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


def default_workers():
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _pool(workers, source, num_levels, level_names):
    # fork shares the already-imported modules (TensorFlow is imported by the package);
    # workers use only numpy, Pillow, protobuf and TF's synchronous record writer.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    return context.Pool(workers, initializer=_init_worker,
                        initargs=(source, num_levels, level_names))


def _chunks(items, size, window):
    """Lists of ``size`` items; waits while ``window`` (a semaphore) is exhausted, so at
    most that many chunks are in flight (bounded memory)."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            window.acquire()
            yield chunk
            chunk = []
    if chunk:
        window.acquire()
        yield chunk


def _encoded_chunks(source, num_levels, level_names, workers, chunk_dir):
    """Results of _encode_chunk in record order: (chunk file prefix, written, skipped)."""
    size = CHUNK_SIZE if source.count is None else max(1, min(CHUNK_SIZE, source.count // (4 * workers)))
    window = threading.Semaphore(4 * workers)
    tasks = ((f"{chunk_dir / 'chunk'}{index:08d}", chunk)
             for index, chunk in enumerate(_chunks(source.items(), size, window)))
    if workers <= 1:
        _init_worker(source, num_levels, level_names)
        results = map(_encode_chunk, tasks)
        for result in results:
            yield result
            window.release()
        return
    with _pool(workers, source, num_levels, level_names) as pool:
        for result in pool.imap(_encode_chunk, tasks):
            yield result
            window.release()


def write_dataset(out_dir, source, *, max_resolution=None, workers=None, overwrite=False,
                  strict=False, train_count=None, progress=True):
    """Write ``source`` as a dataset directory ``out_dir``; returns its manifest (dict).

    Args:
      out_dir: the dataset directory to create; level files are named after it.
      source: an ImageSource (see sources.py, synthetic.py).
      max_resolution: highest level written (a power of two <= source.resolution);
        default the source's resolution. Lower levels are identical either way.
      workers: processes decoding in parallel; default all cores; 1 = in this process.
      overwrite: replace an existing ``out_dir`` (only after the new one is complete).
      strict: an unreadable input is an error instead of a skipped file.
      train_count: records in the train split; default the source's rule.
      progress: show a progress bar (terminal) or tick lines (logs) on stderr; warnings
        about skipped inputs are printed either way.
    """
    from progan import __version__

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise DatasetError(f"OUT {out_dir}: already exists; pass --overwrite to replace it")
    top = source.resolution if max_resolution is None else int(max_resolution)
    log2_resolution(top)
    if top > source.resolution:
        raise DatasetError(
            f"--max-resolution {top}: above the source's resolution {source.resolution}")
    num_levels = log2_resolution(source.resolution) - MIN_LOG2 + 1
    num_written = log2_resolution(top) - MIN_LOG2 + 1
    resolutions = [top >> k for k in range(num_written)]
    workers = default_workers() if workers is None else max(1, int(workers))
    if train_count is not None and train_count < 0:
        raise DatasetError(f"--train-count {train_count}: expected a count >= 0")
    name = out_dir.name

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    bar = Progress(source.count, f"{name}", enabled=progress)
    level_names = [level_filename(name, r) for r in resolutions]
    try:
        chunk_dir = staging / "chunks"
        chunk_dir.mkdir()
        image_count, skipped = 0, []
        outputs = [open(staging / level_name, "wb") for level_name in level_names]
        digests = [hashlib.sha256() for _ in level_names]  # hashed while the workers run
        try:
            for prefix, written, chunk_skipped in _encoded_chunks(
                    source, num_levels, level_names, workers, chunk_dir):
                if chunk_skipped and strict:
                    raise DatasetError(f"{chunk_skipped[0]} (--strict)")
                for message in chunk_skipped:
                    bar.write(f"warning: skipped {message}")
                skipped.extend(chunk_skipped)
                # Records are self-delimiting: a level file is its chunks' files in order.
                for output, digest, level_name in zip(outputs, digests, level_names):
                    part = Path(f"{prefix}-{level_name}")
                    records = part.read_bytes()
                    digest.update(records)
                    output.write(records)
                    part.unlink()
                image_count += written
                bar.update(written + len(chunk_skipped))
        finally:
            for output in outputs:
                output.close()
        chunk_dir.rmdir()
        if image_count == 0:
            raise DatasetError(f"{source.description.get('path', name)}: no readable images")
        train = source.default_train_count(image_count) if train_count is None else int(train_count)
        if not 0 <= train <= image_count:
            raise DatasetError(f"--train-count {train}: expected 0..{image_count}")
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "tool_version": __version__,
            "name": name,
            "source": source.description,
            "crop": source.crop,
            "resolution": top,
            "source_resolution": source.resolution,
            "channels": 3,
            "image_count": image_count,
            "order": source.order,
            "train_count": train,
            "test_count": image_count - train,
            "skipped_count": len(skipped),
            "skipped": [_skip_entry(reason) for reason in skipped],
            "levels": [{"file": level_name, "resolution": resolution, "records": image_count,
                        "bytes": (staging / level_name).stat().st_size, "sha256": digest.hexdigest()}
                       for level_name, resolution, digest in zip(level_names, resolutions, digests)],
        }
        write_manifest(staging, manifest)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        bar.close()
    return manifest


def _skip_entry(message):
    file, _, reason = message.partition(": ")
    return {"file": file, "reason": reason}


def _move_into_place(staging, out_dir):
    """Rename the finished staging directory to out_dir, replacing an old one last."""
    if out_dir.exists():
        retired = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, retired)
        os.replace(staging, out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out_dir)
