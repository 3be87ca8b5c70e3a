"""The worker processes that encode a source's images, and how they stop.

Workers (forked processes) decode, crop, build the pyramid and write each chunk of up to
48 images as small TFRecord files of their own; ``encoded_chunks`` hands the replies back in
record order and the writer appends the chunks to the level files (no image data crosses a
pipe). Memory stays bounded: at most 4 chunks per worker are in flight. Tasks travel as
JSON plus raw bytes over pipes (no pickle).

Stopping: the main process owns Ctrl-C and SIGTERM (``stop_on_signals``); workers ignore
both, die with their parent (PR_SET_PDEATHSIG), and are killed at once when the generator
of replies is closed, whatever ended the build. A worker that dies or fails ends the build
with one line naming the worker and the item it was encoding.
"""

import contextlib
import ctypes
import errno
import json
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from pathlib import Path

import numpy as np

from progan.dataset.format import DatasetError, serialize_example, tensorflow
from progan.dataset.pyramid import build_pyramid
from progan.dataset.sources import SkipImage

_WORKER_STATE = {}
CHUNK_SIZE = 48  # small enough that the last chunks leave little idle time, large enough
#                  that opening each chunk's level files costs little per image


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM (see ``stop_on_signals``)."""


def _raise_stop(signum, frame):
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signal.Signals(signum).name)


@contextlib.contextmanager
def stop_on_signals():
    """Inside the block Ctrl-C (SIGINT) raises KeyboardInterrupt and SIGTERM raises
    ``Terminated`` in the main thread, so a build stops its workers, removes its staging
    folder and ends, whatever handlers the process inherited: a command a shell script
    starts in the background (``cmd &``) inherits SIGINT *ignored*, and Python then installs
    no handler of its own, so Ctrl-C would go unheard. Outside the main thread (where
    handlers cannot be set) the block changes nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number in previous:
        signal.signal(number, _raise_stop)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _init_worker(source, num_levels, level_names):
    _WORKER_STATE.update(source=source, num_levels=num_levels, level_names=level_names)


def _load(source, item):
    """(name, image, notes) of one item; sources may return (name, image)."""
    loaded = source.load(item)
    return loaded if len(loaded) == 3 else (loaded[0], loaded[1], [])


def _encode_chunk(task):
    """Worker: load, pyramid and write one chunk of items as its own small level files.

    Args:
      task: (chunk file prefix, list of source items).
    Returns:
      dict(prefix, written, skipped=[messages], notes=[[kind, name, detail]],
      kept=[positions in the chunk of the items written]).
    """
    tf = tensorflow()
    prefix, items = task
    source, names = _WORKER_STATE["source"], _WORKER_STATE["level_names"]
    writers = [tf.io.TFRecordWriter(f"{prefix}-{name}") for name in names]
    written, skipped, notes, kept = 0, [], [], []
    try:
        for position, item in enumerate(items):
            try:
                name, image, image_notes = _load(source, item)
            except SkipImage as error:
                skipped.append(str(error))
                continue
            except (DatasetError, KeyboardInterrupt):
                raise
            except Exception as error:  # a failure that is not the file's: name the item
                raise DatasetError(f"{_describe_item(item)}: {error_line(error)}") from None
            notes.extend([kind, name, detail] for kind, detail in image_notes)
            levels = build_pyramid(image, _WORKER_STATE["num_levels"])[-len(names):]
            for writer, level in zip(writers, levels):
                writer.write(fast_example(level))
            written += 1
            kept.append(position)
    finally:
        for writer in writers:
            writer.close()
    return {"prefix": prefix, "written": written, "skipped": skipped, "notes": notes, "kept": kept}


_EXAMPLE_TEMPLATES = {}


def fast_example(image_chw):
    """``serialize_example(image_chw)``, byte for byte, from a template per shape: the
    serialized Example is the same bytes around the pixels for every image of a shape."""
    template = _EXAMPLE_TEMPLATES.get(image_chw.shape)
    if template is None:
        probe = np.full(image_chw.shape, 0x5A, np.uint8)
        serialized = serialize_example(probe)
        data = probe.tobytes()
        start = serialized.rfind(data)
        if start < 0 or serialized.count(data) != 1 or serialize_example(
                np.full(image_chw.shape, 0xA5, np.uint8)) != (
                serialized[:start] + b"\xa5" * len(data) + serialized[start + len(data):]):
            template = False  # not a fixed layout: always serialize
        else:
            template = (serialized[:start], serialized[start + len(data):])
        _EXAMPLE_TEMPLATES[image_chw.shape] = template
    if template is False:
        return serialize_example(image_chw)
    return template[0] + image_chw.tobytes() + template[1]


def load_tensorflow():
    """Load the TensorFlow parts the workers use, once, before they fork: TensorFlow loads
    lazily, and each worker would otherwise spend seconds loading it for itself."""
    tf = tensorflow()
    serialize_example(np.zeros((3, 4, 4), np.uint8))
    writer = tf.io.TFRecordWriter(os.devnull)
    writer.close()
    return tf.io.TFRecordWriter


def error_line(error, context=""):
    """One line for an exception raised while building (OSError, TensorFlow, anything)."""
    if isinstance(error, DatasetError):
        return str(error)
    if isinstance(error, OSError):
        where = error.filename or context
        reason = "no space left on device" if error.errno in (errno.ENOSPC, errno.EDQUOT) \
            else (error.strerror or str(error))
        return f"{where}: {reason}" if where else reason
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    first = message.strip().splitlines()[0] if message.strip() else type(error).__name__
    if "No space left on device" in message:
        first = "no space left on device"
    return f"{context}: {first}" if context else f"{type(error).__name__}: {first}"


def _die_with_parent(parent):
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the kernel kills us if the parent dies
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def _pack(prefix, items):
    """A task as bytes: JSON header ([prefix, [[kind, value, length]...]]) + raw byte payloads."""
    header, blobs = [], []
    for item in items:
        if isinstance(item, tuple) and len(item) == 2:
            data = bytes(item[1])
            header.append(["b", int(item[0]), len(data)])
            blobs.append(data)
        elif isinstance(item, (int, np.integer)):
            header.append(["i", int(item)])
        else:
            header.append(["s", str(item)])
    head = json.dumps([prefix, header]).encode()
    return len(head).to_bytes(8, "little") + head + b"".join(blobs)


def _unpack(message):
    size = int.from_bytes(message[:8], "little")
    prefix, header = json.loads(message[8:8 + size])
    items, offset = [], 8 + size
    for entry in header:
        if entry[0] == "b":
            items.append((entry[1], message[offset:offset + entry[2]]))
            offset += entry[2]
        else:
            items.append(entry[1])
    return prefix, items


def _worker_main(conn, parent, source, num_levels, level_names, inherited):
    # The main process coordinates Ctrl-C and SIGTERM (it kills the workers): a signal to
    # the whole process group must not kill a worker first and look like a crash.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent(parent)
    for other in inherited:  # other workers' pipe ends, inherited through fork
        other.close()
    _init_worker(source, num_levels, level_names)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            os._exit(0)
        if not message:
            os._exit(0)
        prefix, items = _unpack(message)
        try:
            reply = _encode_chunk((prefix, items))
        except BaseException as error:  # everything goes back as one line
            reply = {"error": error_line(error, str(Path(prefix).parent.parent)), "prefix": prefix}
        try:
            conn.send_bytes(json.dumps(reply).encode())
        except OSError:
            os._exit(1)


class _Worker:
    def __init__(self, context, parent, source, num_levels, level_names, others):
        ours, theirs = context.Pipe()
        self.process = context.Process(
            target=_worker_main, daemon=True,
            args=(theirs, parent, source, num_levels, level_names, [w.conn for w in others] + [ours]))
        self.process.start()
        theirs.close()
        self.conn, self.task = ours, None

    def death(self):
        code = self.process.exitcode
        if code is None:
            return "stopped answering"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"


def _chunks(items, size):
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _describe_item(item):
    if isinstance(item, tuple):
        return f"item {item[0]}"
    if isinstance(item, (int, np.integer)):
        return f"item {item}"
    return str(item)


def _describe_chunk(chunk):
    more = f" and {len(chunk) - 1} more" if len(chunk) > 1 else ""
    return f"{_describe_item(chunk[0])}{more}"


def encoded_chunks(source, num_levels, level_names, workers, chunk_dir):
    """Results of _encode_chunk in record order, each with its chunk's ``items`` (a generator:
    close it to stop the workers)."""
    size = CHUNK_SIZE if source.count is None else max(1, min(CHUNK_SIZE, source.count // (4 * workers)))
    tasks = ((f"{chunk_dir / 'chunk'}{index:08d}", chunk)
             for index, chunk in enumerate(_chunks(source.items(), size)))
    if workers <= 1:
        _init_worker(source, num_levels, level_names)
        for task in tasks:
            yield dict(_encode_chunk(task), items=task[1])
        return
    # fork shares the already-imported modules (TensorFlow is imported by the package);
    # workers use only numpy, Pillow, protobuf and TF's synchronous record writer.
    context = multiprocessing.get_context("fork")
    pool = []
    try:
        for _ in range(workers):
            pool.append(_Worker(context, os.getpid(), source, num_levels, level_names, pool))
        idle, busy = list(pool), {}
        done, first_items = {}, {}
        sent = appended = 0
        exhausted = False
        while True:
            while idle and not exhausted and sent - appended < 4 * workers:
                try:
                    prefix, chunk = next(tasks)
                except StopIteration:
                    exhausted = True
                    break
                worker = idle.pop()
                worker.task = sent
                first_items[sent] = chunk
                busy[worker.conn] = worker
                worker.conn.send_bytes(_pack(prefix, chunk))
                sent += 1
            while appended in done:
                yield dict(done.pop(appended), items=first_items.pop(appended))
                appended += 1
            if exhausted and not busy and not done:
                return
            sentinels = {worker.process.sentinel: worker for worker in pool}
            ready = multiprocessing.connection.wait(list(busy) + list(sentinels), timeout=5.0)
            for handle in sorted(ready, key=lambda h: h not in busy):  # replies before deaths
                if handle in busy:
                    worker = busy[handle]
                    try:
                        reply = json.loads(handle.recv_bytes())
                    except (EOFError, OSError):
                        worker.process.join(1)
                        raise DatasetError(
                            f"worker process {worker.process.pid} {worker.death()} while encoding "
                            f"{_describe_chunk(first_items[worker.task])}") from None
                    if "error" in reply:
                        raise DatasetError(reply["error"])
                    del busy[handle]
                    done[worker.task] = reply
                    idle.append(worker)
                elif sentinels[handle].conn not in busy or not sentinels[handle].conn.poll():
                    worker = sentinels[handle]
                    worker.process.join(1)
                    what = ("" if worker.task is None or worker.conn not in busy else
                            f" while encoding {_describe_chunk(first_items[worker.task])}")
                    raise DatasetError(f"worker process {worker.process.pid} {worker.death()}{what}")
    finally:
        _stop(pool)


def _stop(pool):
    """End every worker within about a second: they only ever write into the staging folder."""
    for worker in pool:
        if worker.process.is_alive():
            try:
                os.kill(worker.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for worker in pool:
        worker.process.join(2)
        worker.conn.close()


def default_workers():
    """All cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1

