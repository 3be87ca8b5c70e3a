"""Everything a resume needs, in one `tf.train.Checkpoint`, written atomically.

A snapshot lives in ``RUN/checkpoints/snapshot-<images seen, 12 digits>/`` and holds the
generator, the discriminator, the EMA generator, both optimisers' slots and step counts,
images seen, the fp16 loss scale and the non-finite counters. Random numbers (latents,
gradient-penalty mixing, data order, mirror flips) are pure functions of the seed and images
seen, so no RNG state needs saving. A snapshot is written into a hidden temporary directory
and renamed into place, so a killed process never leaves a half-written snapshot where
resume would look. ``best.json`` names snapshots chosen by a metric; they are kept whatever
``keep`` says.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import tensorflow as tf

PREFIX = "snapshot-"
BEST_FILE = "best.json"


class CheckpointError(RuntimeError):
    """No usable snapshot."""


def snapshot_name(images_seen: int) -> str:
    return f"{PREFIX}{int(images_seen):012d}"


def list_snapshots(directory: Path) -> list[tuple[int, Path]]:
    """(images seen, path) of every complete snapshot, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        if path.is_dir() and path.name.startswith(PREFIX) and (path / "ckpt.index").exists():
            try:
                found.append((int(path.name[len(PREFIX):]), path))
            except ValueError:
                continue
    return sorted(found)


def read_best(directory: Path) -> dict:
    path = Path(directory) / BEST_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_json_atomic(path: Path, data) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(temporary, path)


class CheckpointStore:
    """Writes, prunes and restores the snapshots of one run.

    Args:
        directory: ``RUN/checkpoints``.
        checkpoint: the `tf.train.Checkpoint` holding every variable.
        keep: how many of the newest snapshots to keep (best ones are kept too).
        writer: whether this process writes (only the chief does).
    """

    def __init__(self, directory: Path, checkpoint: tf.train.Checkpoint, keep: int = 5,
                 writer: bool = True):
        self.directory = Path(directory)
        self.checkpoint = checkpoint
        self.keep = keep
        self.writer = writer

    def save(self, images_seen: int) -> Path:
        """Write a snapshot atomically (write to a temporary directory, then rename)."""
        final = self.directory / snapshot_name(images_seen)
        if not self.writer:
            return final
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f".tmp-{snapshot_name(images_seen)}-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        self.checkpoint.write(str(temporary / "ckpt"))
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
        self._prune()
        return final

    def _prune(self) -> None:
        best = {Path(entry["snapshot"]).name for entry in read_best(self.directory).values()}
        snapshots = list_snapshots(self.directory)
        for _, path in snapshots[:-self.keep]:
            if path.name not in best:
                shutil.rmtree(path, ignore_errors=True)

    def latest(self) -> int | None:
        snapshots = list_snapshots(self.directory)
        return snapshots[-1][0] if snapshots else None

    def restore(self, images_seen: int | None = None) -> int:
        """Restore a snapshot (default: the newest that loads) and return its images seen.

        A newest snapshot that fails to load is reported and the previous one is tried.
        """
        snapshots = list_snapshots(self.directory)
        if images_seen is not None:
            snapshots = [entry for entry in snapshots if entry[0] == images_seen]
            if not snapshots:
                raise CheckpointError(f"{self.directory}: no snapshot at {images_seen} images "
                                      f"({images_seen / 1000:g} kimg)")
        if not snapshots:
            raise CheckpointError(f"{self.directory}: no snapshot to resume from")
        for index, (seen, path) in enumerate(reversed(snapshots)):
            try:
                self.checkpoint.read(str(path / "ckpt")).assert_existing_objects_matched()
                return seen
            except (tf.errors.OpError, ValueError, AssertionError) as error:
                if index + 1 == len(snapshots):
                    raise CheckpointError(f"{path}: cannot be read ({type(error).__name__}); "
                                          "no older snapshot left") from error
                warnings.warn(f"{path}: cannot be read ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:200]}); falling back to the previous "
                              "snapshot", stacklevel=2)
        raise CheckpointError(f"{self.directory}: no snapshot could be read")
