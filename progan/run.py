"""The run directory: the only code that knows its layout.

    RUN/
      config.json        every setting, the data set (path + fingerprint), the origin of a
                         fine-tuning run, the format version
      .lock              held (flock) by the one process that trains the run
      log.txt            tick lines and events          stats.jsonl   one JSON object per tick
      metrics.jsonl      one JSON object per metric and snapshot (progan evaluate)
      checkpoints/
        snapshot-<images seen, 12 digits>/   full training state: both networks, the EMA
                                             generator, both optimisers, counters
        network-<images seen, 12 digits>/    the EMA generator only (small, kept forever)
        best.json                            the best snapshot per metric, the primary metric

Every snapshot folder holds ``ckpt.index``, ``ckpt.data-*`` (a `tf.train.Checkpoint` keyed
by name: ``<network>/<layer>/<variable>``) and ``snapshot.json`` (format version, kind,
images seen and the size of every file, so a truncated file is found before it is read).
Snapshots are written into a hidden ``.tmp-*`` folder and renamed into place, so a folder
with the final name is always complete. Folders written by progan 0.1.0 have no
``snapshot.json`` and positional keys (format 1); they are read and migrated on load.

This module is long on purpose: it is the one place that knows the run directory.
`RunDir` is plain Python (TensorFlow is imported only to read or write a checkpoint), so
evaluation, generation, notebooks and the trainer all use it without importing each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import NamedTuple

from progan import __version__
from progan.config import LABEL_KINDS, Config
from progan.errors import Fault, ProganError
from progan.system import pid_alive

RUN_FORMAT = 1            # config.json
CHECKPOINT_FORMAT = 2     # snapshot folders; 1 = progan 0.1.0 (positional keys)
CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
LOG_FILE = "log.txt"
STATS_FILE = "stats.jsonl"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
BEST_FILE = "best.json"
LABELS_FILE = "labels.npz"  # a conditional run's label table (names, kind, values)
SNAPSHOT_INFO = "snapshot.json"
CHECKPOINT_PREFIX = "ckpt"
KINDS = {"full": "snapshot-", "network": "network-"}
NAME_PATTERN = re.compile(r"(snapshot|network)-(\d{12})")
TEMPORARY = ".tmp-"


class RunError(ProganError, RuntimeError):
    """A run directory cannot be used as asked; the message names the file or flag."""


class LabelTable(NamedTuple):
    """Labels of a conditional run: ``values`` float32 [N, L] (rows of the training split),
    ``names`` (L), ``kind`` "multi_label" or "one_hot"."""

    values: object
    names: list
    kind: str


class FormatError(RunError):
    """A file was written by a newer progan (not damage: nothing falls back from it)."""


class WriteFault(RunError, Fault):
    """A file could not be written (disk full, read-only, permissions); what was there before
    is kept."""


def check_output_dir(path: Path, flag: str) -> None:
    """``path`` can be used as an output directory: it is one, or can be made, and it is
    writable. Raises `RunError` naming ``flag`` otherwise (before anything is written)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "exists" if existing == path else f"is inside {existing}, which exists"
        raise RunError(f"{flag} {path}: {what} and is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK) or _read_only(existing):
        raise RunError(f"{flag} {path}: {existing} is not writable (read-only file system or "
                       "no permission); choose another place")


def _read_only(path: Path) -> bool:
    """Whether ``path`` is on a read-only file system (``os.access`` says yes to root there)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_free_space(path: Path, needed: int, what: str) -> None:
    """`WriteFault` when the file system of ``path`` (or its nearest existing parent) has
    fewer than ``needed`` bytes free."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    if free < needed:
        raise WriteFault(f"{path}: {free / 2**20:.1f} MiB free, {what} needs about "
                         f"{needed / 2**20:.1f} MiB; free some space")


def write_json_atomic(path: Path, data) -> None:
    """Write JSON to ``path`` so that readers see the old or the new file, never a part."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    temporary = path.with_name(f"{TEMPORARY}{path.name}-{os.getpid()}")
    try:
        with open(temporary, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def _write_failure(error: Exception) -> bool:
    """Whether an error of a write is the machine's (disk full, read-only, permissions), in
    Python's or TensorFlow's words, rather than a bug."""
    if isinstance(error, OSError):
        return True
    names = {"ResourceExhaustedError", "PermissionDeniedError", "FailedPreconditionError",
             "UnavailableError", "DataLossError", "UnknownError"}
    return type(error).__name__ in names and "tensorflow" in type(error).__module__


# -- the data set a run trains on ---------------------------------------------------------------


def data_fingerprint(data: Path) -> str:
    """A short checksum of a prepared data set that survives moving or copying it.

    From ``dataset.json``: every level's resolution, record count and sha256, and the split.
    A reference-tool data set (no manifest) is fingerprinted by its level files' sizes and
    the sha256 of their first and last MiB.
    """
    from progan.dataset.reader import open_dataset

    info = open_dataset(data)
    digest = hashlib.sha256()
    if info.manifest is not None:
        levels = sorted((level["resolution"], level["records"], level["sha256"])
                        for level in info.manifest["levels"])
        digest.update(json.dumps([levels, info.image_count, info.train_count]).encode())
    else:
        for resolution, file in sorted(info.level_files.items()):
            size = file.stat().st_size
            with open(file, "rb") as stream:
                head = stream.read(1 << 20)
                stream.seek(max(0, size - (1 << 20)))
                tail = stream.read()
            digest.update(f"{resolution}:{size}:".encode() + hashlib.sha256(head + tail).digest())
    return digest.hexdigest()[:16]


# -- what config.json holds ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """The contents of ``config.json``.

    Attributes:
        config: every setting.
        data: the prepared data set's directory.
        data_fingerprint: `data_fingerprint` of it when the run started (None for runs of
            progan 0.1.0, which did not record one).
        origin: for a fine-tuning run, where it started (source run, snapshot, lr scale).
    """

    config: Config
    data: Path
    data_fingerprint: str | None
    origin: dict | None = None

    def to_dict(self) -> dict:
        return {"format_version": RUN_FORMAT, "progan_version": __version__,
                "config": self.config.to_dict(),
                "data": {"path": str(Path(self.data).resolve()),
                         "fingerprint": self.data_fingerprint},
                "origin": self.origin}


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """One snapshot folder: ``kind`` is ``full`` (training state) or ``network`` (EMA only)."""

    images_seen: int
    kind: str
    path: Path

    @property
    def kimg(self) -> float:
        return self.images_seen / 1000

    @property
    def prefix(self) -> Path:
        """What `tf.train.Checkpoint.read` takes."""
        return self.path / CHECKPOINT_PREFIX

    @property
    def name(self) -> str:
        return self.path.name

    def info(self) -> dict:
        """``snapshot.json``; for a progan 0.1.0 folder (none there) format 1, kind full."""
        path = self.path / SNAPSHOT_INFO
        if not path.exists() and (self.path / f"{CHECKPOINT_PREFIX}.index").exists():
            return {"format_version": 1, "kind": "full", "images_seen": self.images_seen}
        try:
            info = json.loads(path.read_text())
            version = int(info["format_version"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise RunError(f"{path}: unreadable ({type(error).__name__}: {error})") from None
        if version > CHECKPOINT_FORMAT:
            raise FormatError(f"{self.path}: snapshot format {version} is newer than this progan "
                           f"({__version__} reads up to {CHECKPOINT_FORMAT}); upgrade progan")
        if version < 1:
            raise RunError(f"{path}: unknown snapshot format {version}")
        return info

    def verify(self) -> dict:
        """``snapshot.json`` after checking that every file it lists has its recorded size;
        raises `RunError` naming the first file that does not."""
        info = self.info()
        if "files" not in info:  # format 1: the index must at least be there
            if not (self.path / f"{CHECKPOINT_PREFIX}.index").exists():
                raise RunError(f"{self.path}: no {CHECKPOINT_PREFIX}.index")
            return info
        for name, size in info["files"].items():
            file = self.path / name
            actual = file.stat().st_size if file.exists() else None
            if actual != size:
                raise RunError(f"{file}: " + ("missing" if actual is None else
                                              f"{actual} bytes, expected {size} (truncated?)"))
        return info


# -- the directory ------------------------------------------------------------------------------


class RunDir:
    """A run directory (see the module docstring for the layout).

    Args:
        path: the directory (it need not exist yet).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.config_file = self.path / CONFIG_FILE
        self.lock_file = self.path / LOCK_FILE
        self.log_file = self.path / LOG_FILE
        self.stats_file = self.path / STATS_FILE
        self.metrics_file = self.path / METRICS_FILE
        self.checkpoints = self.path / CHECKPOINTS
        self.best_file = self.checkpoints / BEST_FILE

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.config_file.is_file()

    # -- config.json ---------------------------------------------------------------------------

    def read(self) -> RunInfo:
        """``config.json``, validated; any problem is one `RunError`/`ConfigError` line."""
        file = self.config_file
        if not self.path.exists():
            raise RunError(f"{self.path}: does not exist; expected a run directory")
        if not file.is_file():
            raise RunError(f"{self.path}: not a run directory (no {CONFIG_FILE})")
        try:
            data = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunError(f"{file}: not valid JSON ({error})") from None
        if not isinstance(data, dict):
            raise RunError(f"{file}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version", 0)  # progan 0.1.0 wrote none
        if not isinstance(version, int) or version > RUN_FORMAT:
            raise FormatError(f"{file}: format_version {version!r} is not one this progan "
                           f"({__version__}) reads (0 to {RUN_FORMAT}); upgrade progan")
        for key in ("config", "data"):
            if key not in data:
                raise RunError(f"{file}: missing key {key!r}")
        known = {"format_version", "progan_version", "config", "data", "origin"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RunError(f"{file}: unknown key {unknown[0]!r}; expected {', '.join(sorted(known))}")
        config = Config.from_dict(data["config"], str(file))
        described = data["data"]
        if isinstance(described, str):  # format 0
            described = {"path": described, "fingerprint": None}
        if not isinstance(described, dict) or not isinstance(described.get("path"), str):
            raise RunError(f"{file}: key 'data' must be an object with a 'path' string")
        fingerprint = described.get("fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise RunError(f"{file}: key 'data.fingerprint' must be a string or null")
        origin = data.get("origin")
        if origin is not None and not isinstance(origin, dict):
            raise RunError(f"{file}: key 'origin' must be an object or null")
        return RunInfo(config, Path(described["path"]), fingerprint, origin)

    def write(self, info: RunInfo) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.config_file, info.to_dict())

    # -- one process at a time -----------------------------------------------------------------

    def lock(self, command: str) -> "RunLock":
        """Take the run's exclusive lock for this process's life (see `RunLock`)."""
        return RunLock(self, command)

    # -- snapshots -----------------------------------------------------------------------------

    def snapshot_path(self, images_seen: int, kind: str = "full") -> Path:
        return self.checkpoints / f"{KINDS[kind]}{int(images_seen):012d}"

    def snapshots(self, kind: str | None = None) -> list[Snapshot]:
        """Snapshot folders with their final names (complete when written), oldest first;
        ``kind`` None lists both kinds."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for path in self.checkpoints.iterdir():
            for folder_kind, prefix in KINDS.items():
                if kind in (None, folder_kind) and path.name.startswith(prefix) and path.is_dir():
                    digits = path.name[len(prefix):]
                    if digits.isdigit():
                        found.append(Snapshot(int(digits), folder_kind, path))
        return sorted(found, key=lambda snapshot: (snapshot.images_seen, snapshot.kind))

    def snapshot_at(self, images_seen: int, kind: str | None = None) -> Snapshot:
        """The snapshot at exactly ``images_seen``: of ``kind``, or the network snapshot
        when there is one (smaller to read), else the full one."""
        matching = [s for s in self.snapshots(kind) if s.images_seen == images_seen]
        if not matching:
            raise RunError(f"{self.path}: no {kind + ' ' if kind else ''}snapshot at "
                           f"{images_seen} images ({images_seen / 1000:g} kimg)")
        return sorted(matching, key=lambda s: s.kind != "network")[0]

    def write_snapshot(self, images_seen: int, kind: str, checkpoint, extra: dict | None = None) -> Snapshot:
        """Write ``checkpoint`` (a `tf.train.Checkpoint`) as a snapshot folder, atomically:
        into ``.tmp-<name>-<pid>`` first, then renamed over any folder of that name."""
        final = self.snapshot_path(images_seen, kind)
        temporary = self.checkpoints / f"{TEMPORARY}{final.name}-{os.getpid()}"
        shutil.rmtree(temporary, ignore_errors=True)
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            checkpoint.write(str(temporary / CHECKPOINT_PREFIX))
            files = {path.name: path.stat().st_size for path in sorted(temporary.iterdir())}
            write_json_atomic(temporary / SNAPSHOT_INFO, {
                "format_version": CHECKPOINT_FORMAT, "kind": kind, "images_seen": int(images_seen),
                "kimg": images_seen / 1000, "progan_version": __version__,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "files": files, **(extra or {})})
            if final.exists():
                shutil.rmtree(final)
            os.replace(temporary, final)
        except Exception as error:  # noqa: BLE001 - TensorFlow's own errors (ResourceExhausted) too
            if not _write_failure(error):
                raise
            kept = [s.name for s in self.snapshots(kind) if s.path != final]
            raise WriteFault(
                f"{self.checkpoints}: cannot write {final.name} ({_first_line(error)}); "
                + (f"the previous snapshot {kept[-1]} is kept" if kept else "no snapshot written")
                + f"; free space (or fix the folder), then: progan resume {self.path}") from None
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        return Snapshot(int(images_seen), kind, final)

    def set_aside(self, snapshot: Snapshot) -> Path:
        """Rename a damaged snapshot to ``damaged-<name>`` so no command picks it again."""
        target = snapshot.path.with_name(f"damaged-{snapshot.name}")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(snapshot.path, target)
        return target

    def damaged(self) -> list[Path]:
        """Snapshot folders set aside as ``damaged-*``."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(path for path in self.checkpoints.iterdir()
                      if path.is_dir() and path.name.startswith("damaged-"))

    def earlier_training(self) -> list[str]:
        """What shows that this run has trained before, in words (empty for a new run):
        ticks in stats.jsonl, network snapshots, damaged snapshots. A run that has these but
        no readable full snapshot must not silently start again from kimg 0."""
        found = []
        ticks = len(self.read_stats())
        if ticks:
            found.append(f"{ticks} tick(s) in {STATS_FILE}")
        networks = self.snapshots("network")
        if networks:
            found.append(f"{len(networks)} network snapshot(s) up to kimg {networks[-1].kimg:g}")
        damaged = self.damaged()
        if damaged:
            found.append(f"{len(damaged)} damaged snapshot(s) ({damaged[-1].name}, ...)")
        return found

    def move_aside_for_restart(self) -> tuple[Path, list[str]]:
        """Move what an earlier start of the run wrote (ticks, metrics, images, curves,
        TensorBoard events, network and damaged snapshots, best.json) into a new
        ``restart-<time>/`` folder, so a run started again writes none of it twice and
        nothing is deleted. Returns the folder and the names moved."""
        aside = self.path / f"restart-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir()
        moved = []
        candidates = [self.stats_file, self.metrics_file, self.best_file, *self.damaged(),
                      *(snapshot.path for snapshot in self.snapshots("network"))]
        for pattern in ("fakes*.png", "curves.png", "metrics.png", "events.out.tfevents.*"):
            candidates += sorted(self.path.glob(pattern))
        for path in candidates:
            if path.exists():
                target = aside / path.relative_to(self.path)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
                moved.append(str(path.relative_to(self.path)))
        return aside, moved

    def remove_stale_temporaries(self) -> list[Path]:
        """Remove ``.tmp-*`` snapshot folders of processes that are no longer alive."""
        removed = []
        if not self.checkpoints.is_dir():
            return removed
        for path in self.checkpoints.iterdir():
            if not (path.is_dir() and path.name.startswith(TEMPORARY)):
                continue
            pid = path.name.rpartition("-")[2]
            if pid.isdigit() and pid_alive(int(pid)) and int(pid) != os.getpid():
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed

    def prune(self, keep: int, warn=None) -> list[Path]:
        """Delete full snapshots beyond the newest ``keep``, except the best ones; network
        snapshots are kept forever. A best.json that cannot be read never stops this (it is
        derived): every evaluated snapshot is kept instead, and ``warn`` says so."""
        try:
            best = {entry["images_seen"] for entry in self.read_best()["metrics"].values()}
        except RunError as error:
            best = {record.get("images_seen") for record in self.read_metrics()}
            if warn is not None:
                warn(f"warning: {error}; keeping every evaluated snapshot until then")
        removed = []
        for snapshot in self.snapshots("full")[:-keep]:
            if snapshot.images_seen not in best:
                shutil.rmtree(snapshot.path, ignore_errors=True)
                removed.append(snapshot.path)
        return removed

    # -- choosing snapshots --------------------------------------------------------------------

    def select(self, spec: str, kind: str | None = None, flag: str = "--snapshot") -> list[int]:
        """Images seen of the snapshots named by ``spec``, oldest first, with `select_one`'s
        words plus ``all`` and comma-separated lists (``20,40,best:swd``)."""
        spec = str(spec).strip()
        if spec == "all":
            chosen = sorted({s.images_seen for s in self.snapshots(kind)})
            if not chosen:
                raise RunError(f"{flag} all: {self.path} has no snapshots")
            return chosen
        parts = [part.strip() for part in spec.split(",") if part.strip()]
        if not parts:
            raise RunError(f"{flag} {spec!r}: expected latest, all, best, best:METRIC or KIMG[,KIMG...]")
        return sorted({self.select_one(part, kind, flag)[0] for part in parts})

    def select_one(self, spec: str, kind: str | None = None,
                   flag: str = "--snapshot") -> tuple[int, str]:
        """(images seen, what was chosen, in words) of ``latest``, ``best`` (the primary
        metric's best), ``best:<metric>``, a name as ``ls RUN/checkpoints`` shows it
        (``snapshot-000000012000``, ``network-000000012000``, or its number), the images seen
        of a snapshot (``12000``), or a kimg number as the log prints it (``12``: the nearest
        snapshot within 0.5 kimg)."""
        spec = str(spec).strip().rstrip("/")
        named = NAME_PATTERN.fullmatch(spec.rpartition("/")[2])
        if named:  # a folder name, as ls shows it (its kind is only a hint: both serve)
            spec = named.group(2)
        available = sorted({s.images_seen for s in self.snapshots(kind)})
        if not available:
            raise RunError(f"{self.path}: has no {kind + ' ' if kind else ''}snapshots")
        if spec == "latest":
            return available[-1], f"the latest snapshot (kimg {available[-1] / 1000:g})"
        if spec == "best" or spec.startswith("best:"):
            best = self.read_best()
            metric = spec.partition(":")[2] or best["primary"]
            if not best["metrics"]:
                raise RunError(f"{flag} {spec}: {self.path} has no metric record yet; run "
                               f"`progan evaluate {self.path}` first")
            if metric not in best["metrics"]:
                raise RunError(f"{flag} {spec}: no best snapshot for {metric!r} (have: "
                               f"{', '.join(best['metrics'])})")
            entry = best["metrics"][metric]
            seen = int(entry["images_seen"])
            if seen not in available:
                raise RunError(f"{flag} {spec}: the best {metric} snapshot (kimg {seen / 1000:g}) "
                               f"is not on disk{' as a ' + kind + ' snapshot' if kind else ''}")
            return seen, (f"the best snapshot by {metric} (kimg {seen / 1000:g}, "
                          f"{metric} {entry['value']:.4g})")
        if spec.isdigit() and int(spec) in available:  # images seen, as in the names
            return int(spec), f"the snapshot at kimg {int(spec) / 1000:g}"
        if named or (spec.isdigit() and len(spec) == 12):
            listed = ", ".join(f"{seen:012d}" for seen in available)
            raise RunError(f"{flag} {spec}: no {kind + ' ' if kind else ''}snapshot of that "
                           f"name (have: {listed})")
        try:
            wanted = int(round(float(spec) * 1000))
        except ValueError:
            raise RunError(f"{flag} {spec}: expected latest, best, best:METRIC, a snapshot "
                           "as `ls RUN/checkpoints` shows it, or a kimg number") from None
        distance, seen = min((abs(seen - wanted), seen) for seen in available)
        if distance > 500:  # kimg as printed in names and logs, rounded
            listed = ", ".join(f"{seen / 1000:g}" for seen in available)
            raise RunError(f"{flag} {spec}: no {kind + ' ' if kind else ''}snapshot at that kimg "
                           f"(have: {listed})")
        return seen, f"the snapshot at kimg {seen / 1000:g}"

    # -- best.json -----------------------------------------------------------------------------

    def read_best(self) -> dict:
        """``{"primary": metric or None, "metrics": {metric: entry}}``; a file of another
        shape is one `RunError` (best.json is derived: `progan evaluate` rebuilds it from
        metrics.jsonl)."""
        if not self.best_file.exists():
            return {"primary": None, "metrics": {}}
        rebuild = f"`progan evaluate {self.path}` rebuilds it from {METRICS_FILE}"
        try:
            best = json.loads(self.best_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunError(f"{self.best_file}: not valid JSON ({error}); {rebuild}") from None
        if isinstance(best, dict) and "metrics" not in best:  # progan 0.1.0: {metric: entry}
            best = {"primary": next(iter(self.metric_names()), None), "metrics": best}
        problem = _best_problem(best)
        if problem:
            raise RunError(f"{self.best_file}: {problem}, expected {{\"primary\": METRIC or null, "
                           f"\"metrics\": {{METRIC: {{\"images_seen\": INT, \"value\": NUMBER, "
                           f"...}}}}}}; {rebuild}")
        return best

    def write_best(self, primary: str | None, metrics: dict) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.best_file, {"primary": primary, "metrics": metrics})

    # -- stats.jsonl and metrics.jsonl ---------------------------------------------------------

    def append_stats(self, record: dict) -> None:
        _append_jsonl(self.stats_file, [record])

    def read_stats(self) -> list[dict]:
        return _read_jsonl(self.stats_file)

    def rewind_stats(self, images_seen: int) -> int:
        """Drop the tick records after ``images_seen`` (what a resume repeats); returns the
        number the next tick gets."""
        records = self.read_stats()
        kept = [record for record in records if record.get("images_seen", 0) <= images_seen]
        if len(kept) != len(records):
            write_text_atomic(self.stats_file, "".join(json.dumps(r, sort_keys=True) + "\n"
                                                       for r in kept))
        return max((record.get("tick", -1) for record in kept), default=-1) + 1

    def write_labels(self, labels) -> None:
        """RUN/labels.npz: the training split's label table, so that generate, evaluate and
        export need no data set (no pickle: strings are a unicode array)."""
        import numpy as np

        temporary = self.path / f"{TEMPORARY}{LABELS_FILE}-{os.getpid()}"
        try:
            with open(temporary, "wb") as out:
                np.savez(out, values=np.asarray(labels.values, np.float32),
                         names=np.asarray(labels.names, dtype=str), kind=np.asarray(labels.kind))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path / LABELS_FILE)
        finally:
            temporary.unlink(missing_ok=True)

    def read_labels(self, label_size: int | None = None):
        """The `LabelTable` of a conditional run; None for an unconditional one (no file).

        With ``label_size`` (the config's): the file must be there and hold a table of that
        many columns, at least one row, a name per column and a known kind; anything else is
        one `RunError` naming the file."""
        import zipfile

        import numpy as np

        path = self.path / LABELS_FILE
        if not path.exists():
            if label_size:
                raise RunError(f"{path}: missing; this run is conditional ({label_size} labels) "
                               f"and its fakes' labels are drawn from it (`progan resume {self.path}` "
                               "writes it again from the data set)")
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                table = LabelTable(archive["values"].astype(np.float32),
                                   [str(name) for name in np.atleast_1d(archive["names"])],
                                   str(archive["kind"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            raise RunError(f"{path}: not a readable label table ({type(error).__name__}: "
                           f"{_first_line(error)}); `progan resume {self.path}` writes it again "
                           "from the data set") from None
        values = table.values
        expected = f"{label_size} columns" if label_size else "columns"
        if values.ndim != 2 or values.shape[0] < 1 or (label_size and values.shape[1] != label_size):
            raise RunError(f"{path}: values of shape {list(values.shape)}, expected [rows >= 1, "
                           f"{expected}] (the config's model.label_size); `progan resume {self.path}` "
                           "writes it again from the data set")
        if len(table.names) != values.shape[1] or table.kind not in LABEL_KINDS:
            raise RunError(f"{path}: {len(table.names)} names and kind {table.kind!r} for "
                           f"{values.shape[1]} columns; expected a name per column and kind "
                           "multi_label or one_hot")
        return table

    def append_metrics(self, records: list[dict]) -> None:
        _append_jsonl(self.metrics_file, records)

    def read_metrics(self, checked: bool = False) -> list[dict]:
        """The records of metrics.jsonl. ``checked``: a line that is JSON but not a metric
        record as the evaluation reads it (a field missing or of the wrong kind, e.g. edited
        by hand) is a `RunError` naming the line."""
        records = _read_jsonl(self.metrics_file)
        for number, record in enumerate(records if checked else (), 1):
            problem = _metric_record_problem(record)
            if problem:
                raise RunError(f"{self.metrics_file}: record {number} {problem}; expected one "
                               "line per metric and snapshot as `progan evaluate` writes it "
                               "(remove or repair that line)")
        return records

    def metric_names(self) -> list[str]:
        return list(dict.fromkeys(record.get("metric") for record in self.read_metrics()
                                   if isinstance(record.get("metric"), str)))


# The fields of a metrics.jsonl record that readers rely on, and their kinds.
METRIC_RECORD_FIELDS = {"metric": (str,), "images_seen": (int,), "kimg": (int, float),
                        "resolution": (int,), "value": (int, float), "num_images": (int,),
                        "split": (str,), "snapshot": (str,)}


def _metric_record_problem(record) -> str:
    """What is wrong with one metrics.jsonl record ("" when nothing)."""
    if not isinstance(record, dict):
        return f"holds {type(record).__name__}, not a record"
    for name, kinds in METRIC_RECORD_FIELDS.items():
        if name not in record:
            return f"has no {name!r}"
        if not isinstance(record[name], kinds) or isinstance(record[name], bool):
            return f"has {name!r} {json.dumps(record[name])[:40]}"
    return ""


def _best_problem(best) -> str:
    """What is wrong with the shape of best.json's contents ("" when nothing)."""
    if not isinstance(best, dict):
        return f"holds {type(best).__name__}"
    if not (best.get("primary") is None or isinstance(best["primary"], str)):
        return f"primary is {best['primary']!r}"
    if not isinstance(best.get("metrics"), dict):
        return f"metrics is {best.get('metrics')!r}"
    for metric, entry in best["metrics"].items():
        number = (int, float)
        if not (isinstance(entry, dict) and type(entry.get("images_seen")) is int
                and isinstance(entry.get("value"), number) and not isinstance(entry["value"], bool)):
            return f"the entry of {metric!r} is {json.dumps(entry)[:80]}"
    return ""


def _append_jsonl(path: Path, records: list[dict]) -> None:
    """Append records, one line each, after dropping a last line cut short by a kill (which
    readers skip anyway): new lines after it would make it a bad line in the middle."""
    with open(path, "a+b") as out:
        size = out.seek(0, os.SEEK_END)
        if size:
            out.seek(max(0, size - (1 << 16)))
            tail = out.read()
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                out.truncate(size - len(tail) + cut + 1 if cut >= 0 or size <= len(tail) else size)
        out.write("".join(json.dumps(record, sort_keys=True) + "\n" for record in records).encode())


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    records = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # a line cut short by a kill; the rest is good
                break
            raise RunError(f"{path}:{number}: not a JSON line") from None
    return records


class RunLock:
    """An exclusive `fcntl.flock` on ``RUN/.lock``, held until `release` or process exit.

    The OS drops the lock when the process dies, however it dies, so a lock left by a
    killed process never blocks. The file records the holder (PID, host, command) for the
    message a second process gets.
    """

    def __init__(self, run: RunDir, command: str):
        import fcntl

        self.run = run
        run.path.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(run.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self._fd, 4096, 0).decode(errors="replace")
            os.close(self._fd)
            try:
                holder = json.loads(holder)
                who = (f"PID {holder['pid']} on {holder['host']} "
                       f"({holder['command']}, since {holder['since']})")
            except (ValueError, KeyError, TypeError):
                who = "another process"
            raise RunError(f"{run.path}: in use by {who}; one process trains a run at a time "
                           "(wait for it to finish or stop it first)") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
