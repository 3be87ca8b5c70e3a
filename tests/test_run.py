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
