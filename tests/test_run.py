"""progan.run.RunDir: config.json, the lock, snapshot folders, the selector, best.json, JSONL."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from conftest import REPO, TINY_CONFIG

from progan import cli
from progan.config import Config, ConfigError
from progan.run import RunDir, RunError, RunInfo, data_fingerprint


def make_run(tmp_path, name="run") -> RunDir:
    run = RunDir(tmp_path / name)
    run.write(RunInfo(Config.from_dict(TINY_CONFIG), tmp_path / "data", "0123456789abcdef"))
    return run


def write_snapshot(run: RunDir, images_seen: int, kind: str):
    value = tf.Variable(float(images_seen))
    return run.write_snapshot(images_seen, kind, tf.train.Checkpoint(ema={"layer": {"w": value}}))


def test_config_json_round_trip_and_format_zero(tmp_path):
    run = make_run(tmp_path)
    info = run.read()
    assert info.config == Config.from_dict(TINY_CONFIG) and info.data_fingerprint == "0123456789abcdef"
    stored = json.loads(run.config_file.read_text())
    assert stored["format_version"] == 1 and stored["data"]["fingerprint"] == "0123456789abcdef"
    # progan 0.1.0 wrote no format_version and the data path as a string
    run.config_file.write_text(json.dumps({"config": TINY_CONFIG, "data": "/somewhere", "origin": None,
                                           "progan_version": "0.1.0"}))
    old = run.read()
    assert old.data.as_posix() == "/somewhere" and old.data_fingerprint is None


@pytest.mark.parametrize("content, expected", [
    ("{not json", r"config.json: not valid JSON"),
    (json.dumps({"config": TINY_CONFIG}), r"config.json: missing key 'data'"),
    (json.dumps({"data": {"path": "/d"}}), r"config.json: missing key 'config'"),
    (json.dumps({"config": TINY_CONFIG, "data": {"path": "/d"}, "colour": 1}), r"unknown key 'colour'"),
    (json.dumps({"config": {**TINY_CONFIG, "schedule": {"total_kimg": "lots"}}, "data": {"path": "/d"}}),
     r"config.json:schedule.total_kimg: expected a positive number or null|"
     r"config.json:schedule.total_kimg: expected a number"),
    (json.dumps({"config": {**TINY_CONFIG, "model": {"widht": 3}}, "data": {"path": "/d"}}),
     r"config.json:model: unknown setting 'widht'"),
    (json.dumps({"format_version": 99, "config": TINY_CONFIG, "data": {"path": "/d"}}),
     r"format_version 99 is not one this progan"),
])
def test_a_broken_config_json_is_one_line_naming_file_and_key(tmp_path, capsys, content, expected):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.config_file.write_text(content)
    with pytest.raises((RunError, ConfigError), match=expected):
        run.read()
    with pytest.raises(SystemExit) as stop:
        cli.main(["resume", str(run.path)])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("progan resume: error: ") and "config.json" in error
    assert "Traceback" not in error


def test_snapshot_folders_selector_and_best(tmp_path):
    run = make_run(tmp_path)
    with pytest.raises(RunError, match="has no snapshots"):
        run.select_one("latest")
    for seen in (0, 20_000, 40_000):
        write_snapshot(run, seen, "network")
    for seen in (20_000, 40_000):
        write_snapshot(run, seen, "full")
    assert [(s.images_seen, s.kind) for s in run.snapshots()] == [
        (0, "network"), (20_000, "full"), (20_000, "network"), (40_000, "full"), (40_000, "network")]
    info = run.snapshots("full")[0].verify()
    assert info["format_version"] == 2 and info["kind"] == "full" and set(info["files"]) >= {"ckpt.index"}
    assert run.snapshot_at(20_000).kind == "network" and run.snapshot_at(20_000, "full").kind == "full"
    assert not list(run.checkpoints.glob(".tmp-*"))

    assert run.select_one("latest")[0] == 40_000
    assert run.select_one("20")[0] == 20_000 and run.select_one("19.6")[0] == 20_000
    # every name as `ls RUN/checkpoints` shows it, its number, or the images seen
    names = sorted(path.name for path in run.checkpoints.iterdir() if path.is_dir())
    assert "snapshot-000000020000" in names and "network-000000000000" in names
    for name in ("snapshot-000000020000", "network-000000020000", "000000020000", "20000",
                 str(run.checkpoints / "snapshot-000000020000") + "/"):
        assert run.select_one(name)[0] == 20_000, name
    with pytest.raises(RunError, match="no full snapshot of that name"):
        run.select_one("network-000000000000", kind="full")
    assert run.select("all") == [0, 20_000, 40_000] and run.select("all", kind="full") == [20_000, 40_000]
    assert run.select("40, 0") == [0, 40_000]
    with pytest.raises(RunError, match=r"--snapshot 30: no snapshot at that kimg \(have: 0, 20, 40\)"):
        run.select_one("30")
    with pytest.raises(RunError, match="--snapshot 0: no full snapshot"):
        run.select_one("0", kind="full")
    with pytest.raises(RunError, match="expected latest, best, best:METRIC, a snapshot as .ls RUN.checkpoints. shows it, or a kimg number"):
        run.select_one("newest")
    with pytest.raises(RunError, match="no metric record yet"):
        run.select_one("best")

    entry = {"images_seen": 20_000, "kimg": 20.0, "value": 3.0, "snapshot": "network-000000020000"}
    run.write_best("swd", {"msssim": {**entry, "images_seen": 40_000, "value": 0.3}, "swd": entry})
    seen, words = run.select_one("best")
    assert seen == 20_000 and "by swd" in words  # the primary metric, not the alphabetically first
    assert run.select_one("best:msssim")[0] == 40_000
    with pytest.raises(RunError, match="no best snapshot for 'fid'"):
        run.select_one("best:fid")

    # pruning keeps the newest full snapshots and the best ones; network snapshots stay
    for seen in (60_000, 80_000):
        write_snapshot(run, seen, "full")
    run.prune(keep=1)
    assert [s.images_seen for s in run.snapshots("full")] == [20_000, 40_000, 80_000]  # best ones kept
    assert len(run.snapshots("network")) == 3


def test_a_truncated_or_unreadable_snapshot_fails_verification(tmp_path):
    run = make_run(tmp_path)
    snapshot = write_snapshot(run, 100, "full")
    data = next(snapshot.path.glob("ckpt.data-*"))
    data.write_bytes(data.read_bytes()[:-3])
    with pytest.raises(RunError, match=r"ckpt.data-00000-of-00001: \d+ bytes, expected \d+ \(truncated\?\)"):
        snapshot.verify()
    (snapshot.path / "snapshot.json").write_text("{")
    with pytest.raises(RunError, match="snapshot.json: unreadable"):
        snapshot.verify()
    (snapshot.path / "snapshot.json").write_text(json.dumps({"format_version": 7}))
    with pytest.raises(RunError, match="snapshot format 7 is newer than this progan"):
        snapshot.verify()


def test_stats_rewind_to_a_snapshot_and_tolerate_a_cut_last_line(tmp_path):
    run = make_run(tmp_path)
    for tick, seen in enumerate((100, 200, 300, 400)):
        run.append_stats({"tick": tick, "images_seen": seen})
    with open(run.stats_file, "a") as out:
        out.write('{"tick": 4, "images_')  # killed mid-write
    assert [r["tick"] for r in run.read_stats()] == [0, 1, 2, 3]
    assert run.rewind_stats(200) == 2
    assert [r["images_seen"] for r in run.read_stats()] == [100, 200]
    assert run.rewind_stats(0) == 0 and run.read_stats() == []


def test_stale_temporary_folders_are_removed_live_ones_kept(tmp_path):
    run = make_run(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = run.checkpoints / f".tmp-snapshot-000000000100-{dead}"
    live = run.checkpoints / f".tmp-snapshot-000000000200-{os.getppid()}"
    for path in (stale, live):
        path.mkdir(parents=True)
        (path / "ckpt.index").write_bytes(b"partial")
    assert run.remove_stale_temporaries() == [stale]
    assert live.exists() and not stale.exists()


def test_the_lock_admits_one_process_and_dies_with_it(tmp_path):
    run = make_run(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom progan.run import RunDir\n"
         "lock = RunDir(sys.argv[1]).lock('progan train')\nprint('locked', flush=True)\ntime.sleep(60)",
         str(run.path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        started = time.time()
        with pytest.raises(RunError, match=rf"in use by PID {holder.pid} on .* \(progan train, since"):
            run.lock("progan resume")
        assert time.time() - started < 1.0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with run.lock("progan resume"):  # the OS released the killed holder's lock
        assert json.loads(run.lock_file.read_text())["pid"] == os.getpid()


def test_data_fingerprint_follows_content_not_place(tmp_path, tiny_dataset):
    moved = tmp_path / "moved"
    shutil.copytree(tiny_dataset, moved)
    assert data_fingerprint(moved) == data_fingerprint(tiny_dataset)
    manifest = json.loads((moved / "dataset.json").read_text())
    manifest["train_count"] -= 1  # another split is another data set
    (moved / "dataset.json").write_text(json.dumps(manifest))
    assert data_fingerprint(moved) != data_fingerprint(tiny_dataset)
    # a reference-tool data set (no manifest) is fingerprinted by its files
    bare = tmp_path / "bare"
    shutil.copytree(tiny_dataset, bare)
    (bare / "dataset.json").unlink()
    with pytest.warns(UserWarning, match="no dataset.json"):
        first = data_fingerprint(bare)
    level = next(bare.glob("*-r03.tfrecords"))
    level.write_bytes(level.read_bytes()[:-1] + b"\x00")
    with pytest.warns(UserWarning):
        assert data_fingerprint(bare) != first


def test_an_append_after_a_cut_last_line_drops_it_instead_of_burying_it(tmp_path):
    run = make_run(tmp_path)
    run.append_metrics([{"metric": "swd", "images_seen": 100}])
    with open(run.metrics_file, "a") as out:
        out.write('{"metric": "swd", "ima')  # interrupted mid-write
    run.append_metrics([{"metric": "swd", "images_seen": 200}])
    assert [r["images_seen"] for r in run.read_metrics()] == [100, 200]


def test_output_folders_are_checked_before_anything_is_written(tmp_path, read_only_dir):
    from progan.run import check_output_dir

    check_output_dir(tmp_path / "new" / "deeper", "--out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match=r"--out .*file: exists and is not a directory"):
        check_output_dir(tmp_path / "file", "--out")
    with pytest.raises(RunError, match=r"--out .*file/run: is inside .*file, which exists and is not"):
        check_output_dir(tmp_path / "file" / "run", "--out")
    with pytest.raises(RunError, match=r"--out .*read-only/run: .*read-only is not writable"):
        check_output_dir(read_only_dir / "run", "--out")


def test_a_snapshot_that_cannot_be_written_keeps_the_previous_one(tmp_path, monkeypatch):
    from progan.errors import Fault

    run = make_run(tmp_path)
    write_snapshot(run, 100, "full")
    checkpoint = tf.train.Checkpoint(ema={"layer": {"w": tf.Variable(1.0)}})

    def disk_full(prefix):  # as TensorFlow fails on a full disk: a partial file, then the error
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        with open(f"{prefix}.index", "wb") as partial:
            partial.write(b"x")
        raise tf.errors.ResourceExhaustedError(None, None, f"{prefix}.index; No space left on device")

    monkeypatch.setattr(checkpoint, "write", disk_full)
    with pytest.raises(Fault, match=r"checkpoints: cannot write snapshot-000000000200 \(.*No space left on "
                       r"device\); the previous snapshot snapshot-000000000100 is kept; .*progan resume"):
        run.write_snapshot(200, "full", checkpoint)
    assert [s.images_seen for s in run.snapshots()] == [100]
    assert not list(run.checkpoints.glob(".tmp-*"))


def test_the_free_space_check_says_what_is_needed(tmp_path):
    from progan.run import WriteFault, check_free_space

    check_free_space(tmp_path / "not-yet", 1, "one byte")
    with pytest.raises(WriteFault, match=r"MiB free, a snapshot needs about \d+.\d MiB; free some space"):
        check_free_space(tmp_path, 1 << 62, "a snapshot")


@pytest.mark.parametrize("damage, expected", [
    ("deleted", r"labels.npz: missing; this run is conditional \(3 labels\)"),
    ("cut in half", r"labels.npz: not a readable label table \(BadZipFile"),
    ("wrong columns", r"labels.npz: values of shape \[5, 1\], expected \[rows >= 1, 3 columns\]"),
    ("1-D", r"labels.npz: values of shape \[5\], expected"),
    ("0 rows", r"labels.npz: values of shape \[0, 3\], expected"),
    ("names", r"labels.npz: 2 names and kind 'multi_label' for 3 columns"),
])
def test_a_damaged_label_table_is_one_line_naming_it(tmp_path, damage, expected):
    import numpy as np

    from progan.run import LabelTable

    run = make_run(tmp_path)
    values = np.eye(5, 3, dtype=np.float32)
    run.write_labels(LabelTable(values, ["a", "b", "c"], "multi_label"))
    assert run.read_labels(3).names == ["a", "b", "c"]
    path = run.path / "labels.npz"
    table = {"values": values, "names": np.array(["a", "b", "c"]), "kind": np.array("multi_label")}
    if damage == "deleted":
        path.unlink()
    elif damage == "cut in half":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        changed = {"wrong columns": {"values": values[:, :1]}, "1-D": {"values": values[:, 0]},
                   "0 rows": {"values": values[:0]}, "names": {"names": np.array(["a", "b"])}}[damage]
        with open(path, "wb") as out:
            np.savez(out, **{**table, **changed})
    with pytest.raises(RunError, match=expected):
        run.read_labels(3)


@pytest.mark.parametrize("content, expected", [
    ("null", "holds NoneType"),
    ("[1, 2]", "holds list"),
    ('{"primary": 3, "metrics": {}}', "primary is 3"),
    ('{"primary": "swd", "metrics": null}', "metrics is None"),
    ('{"primary": "swd", "metrics": {"swd": {"value": 1.0}}}', "the entry of 'swd' is"),
    ('{"primary": "swd", "metrics": {"swd": {"images_seen": "100", "value": 1.0}}}', "the entry of 'swd'"),
    ("{broken", "not valid JSON"),
])
def test_a_best_json_of_the_wrong_shape_is_named_and_never_stops_pruning(tmp_path, capsys, content,
                                                                         expected):
    run = make_run(tmp_path)
    for seen in (100, 200, 300):
        write_snapshot(run, seen, "full")
    run.append_metrics([{"metric": "swd", "images_seen": 100, "value": 1.0}])
    run.best_file.write_text(content)
    with pytest.raises(RunError, match=f"best.json: .*{expected}.*progan evaluate .* rebuilds it"):
        run.select_one("best")
    warnings = []
    run.prune(keep=1, warn=warnings.append)  # training goes on: the evaluated snapshot is kept
    assert [s.images_seen for s in run.snapshots("full")] == [100, 300]
    assert len(warnings) == 1 and "keeping every evaluated snapshot" in warnings[0]
    with pytest.raises(SystemExit) as stop:
        cli.main(["generate", str(run.path), "--snapshot", "best", "--out", str(tmp_path / "x.png")])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.count("\n") == 1 and "best.json" in error


def test_a_path_that_is_no_run_says_so(tmp_path):
    with pytest.raises(RunError, match="no-such-run: does not exist; expected a run directory"):
        RunDir(tmp_path / "no-such-run").read()
    (tmp_path / "folder").mkdir()
    with pytest.raises(RunError, match=r"folder: not a run directory \(no config.json\)"):
        RunDir(tmp_path / "folder").read()
