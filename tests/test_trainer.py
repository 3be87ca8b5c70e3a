import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, TINY_CONFIG, run_progan
from run_fixtures import copy_run

from progan.config import Config
from progan.run import RunDir, RunError, RunInfo
from progan.training import trainer as training


def list_snapshots(checkpoints):
    """(images seen, path) of the full snapshots in a run's checkpoints folder, oldest first."""
    return [(s.images_seen, s.path) for s in RunDir(checkpoints.parent).snapshots("full")]


def tiny(**overrides) -> Config:
    return Config.from_dict(TINY_CONFIG).replace(**overrides)


def snapshot_arrays(run_dir):
    """Every variable of the newest snapshot, by checkpoint key."""
    seen, path = list_snapshots(run_dir / "checkpoints")[-1]
    reader = tf.train.load_checkpoint(str(path / "ckpt"))
    return seen, {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(str(path / "ckpt"))
                  if "OBJECT_GRAPH" not in name}


def _wait_for_new_snapshot(process, run_dir, after, limit=120):
    deadline = time.time() + limit
    while time.time() < deadline and process.poll() is None:
        snapshots = list_snapshots(run_dir / "checkpoints")
        if snapshots and snapshots[-1][0] > after:
            return True
        time.sleep(0.05)
    return False


def test_killed_and_resumed_run_is_bitwise_identical(tmp_path, tiny_dataset, tiny_config_file, request):
    """SIGKILL at an arbitrary moment, then SIGTERM, each followed by `progan resume`."""
    common = ["--config", tiny_config_file, "--data", tiny_dataset, "--deterministic",
              "--stable-kimg", "0.2", "--fade-kimg", "0.2"]
    straight = tmp_path / "straight"
    # The uninterrupted run goes alongside (--deterministic: the load changes no bit of it).
    straight_log = (tmp_path / "straight.log").open("w")
    straight_process = subprocess.Popen([sys.executable, "-m", "progan", "train", *map(str, common),
                                         "--out", str(straight)], cwd=REPO, stdout=straight_log,
                                        stderr=subprocess.STDOUT)
    request.addfinalizer(lambda: straight_process.poll() is None and straight_process.kill())

    interrupted = tmp_path / "interrupted"
    rng = random.Random(7)
    command = [sys.executable, "-m", "progan", "train", *map(str, common), "--out", str(interrupted)]
    interruptions = []
    # SIGKILL while a snapshot is being written, then SIGTERM at a random moment.
    for stop_signal, during_write in ((signal.SIGKILL, True), (signal.SIGTERM, False)):
        process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        before = (list_snapshots(interrupted / "checkpoints") or [(-1, None)])[-1][0]
        assert _wait_for_new_snapshot(process, interrupted, max(before, 0)), "no progress to interrupt"
        if during_write:
            deadline = time.time() + 60
            while not list((interrupted / "checkpoints").glob(".tmp-*")) and time.time() < deadline:
                time.sleep(0.001)
        else:
            time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(stop_signal)
        output = process.communicate(timeout=120)[0]
        interruptions.append((stop_signal, process.returncode, output))
        command = [sys.executable, "-m", "progan", "resume", str(interrupted)]
    assert interruptions[0][1] == -signal.SIGKILL
    sigterm_code, sigterm_output = interruptions[1][1], interruptions[1][2]
    assert sigterm_code == 0 and f"progan resume {interrupted}" in sigterm_output, sigterm_output[-2000:]
    assert "done: kimg" not in sigterm_output
    result = run_progan("resume", interrupted)
    assert result.returncode == 0, result.stderr[-2000:]
    straight_process.wait(timeout=300)
    straight_log.close()
    assert straight_process.returncode == 0, (tmp_path / "straight.log").read_text()[-2000:]

    seen_straight, straight_arrays = snapshot_arrays(straight)
    seen_interrupted, interrupted_arrays = snapshot_arrays(interrupted)
    assert seen_straight == seen_interrupted
    assert straight_arrays.keys() == interrupted_arrays.keys() and len(straight_arrays) > 20
    for name, array in straight_arrays.items():
        np.testing.assert_array_equal(interrupted_arrays[name], array, err_msg=name)
    log = (interrupted / "log.txt").read_text()
    assert log.count("resumed from snapshot") == 2
    assert not list((interrupted / "checkpoints").glob(".tmp-*"))
    ticks = [json.loads(line) for line in (interrupted / "stats.jsonl").read_text().splitlines()]
    straight_ticks = [json.loads(line) for line in (straight / "stats.jsonl").read_text().splitlines()]
    assert [t["tick"] for t in ticks] == list(range(len(ticks)))  # no repeats after a resume
    assert [t["images_seen"] for t in ticks] == [t["images_seen"] for t in straight_ticks]
    assert (straight / "reals.png").exists() and (straight / "curves.png").exists()
    assert len(list(straight.glob("fakes*.png"))) >= 3
    stats = [json.loads(line) for line in (straight / "stats.jsonl").read_text().splitlines()]
    assert {"kimg", "resolution", "alpha", "loss_d", "loss_g", "images_per_sec", "memory_gib"} <= stats[-1].keys()
    assert list(straight.glob("events.out.tfevents.*"))


def _weights(trainer):
    return [v.numpy() for v in trainer.state.generator_variables + trainer.state.discriminator_variables
            + trainer.state.ema_variables]


def test_labelled_batches_split_over_replicas_like_the_images():
    """Replica r of R takes samples r, r + R, ... of every global batch: of the images and,
    for a conditional run, of their labels alike (distribute_global_batches)."""
    from progan.training.distribute import distribute_global_batches

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    images = np.arange(8 * 2 * 2 * 3, dtype=np.float32).reshape(8, 2, 2, 3)
    labels = np.arange(8 * 5, dtype=np.float32).reshape(8, 5)

    def make_dataset(shard_index=0, shard_count=1, shard_block=1):
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    batch_images, batch_labels = next(iter(distribute_global_batches(strategy, make_dataset, 8)))
    for replica, (x, y) in enumerate(zip(strategy.experimental_local_results(batch_images),
                                         strategy.experimental_local_results(batch_labels))):
        np.testing.assert_array_equal(x.numpy(), images[replica::2])
        np.testing.assert_array_equal(y.numpy(), labels[replica::2])


def test_mirrored_iteration_equals_one_device(tmp_path, tiny_dataset):
    # Adam's first step is lr * g / (|g| + eps): with eps = 1e-8 a gradient element that cancels
    # to ~1e-7 flips sign on float rounding and moves by 2 lr. eps = 1e-3 keeps the update a
    # smooth function of the gradient, so the comparison tests the distribution (same latents,
    # same mixing factors, gradients averaged over the global batch, applied once), not rounding.
    config = tiny(**{"schedule.batch_size": 8, "optimizer.epsilon": 1e-3})
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    assert len(devices) == 2
    results = []
    for strategy in (tf.distribute.OneDeviceStrategy(devices[0]), tf.distribute.MirroredStrategy(devices)):
        trainer = training.Trainer(config, tiny_dataset, tmp_path / type(strategy).__name__, strategy)
        before = _weights(trainer)
        trainer.state.images_seen.assign(trainer.schedule.start_of(8, fading=True) + 64)  # mid-fade
        trainer.run_iterations(1)
        results.append((before, _weights(trainer), np.array(list(trainer.stats.take().values()))))
    (before_one, after_one, stats_one), (before_two, after_two, stats_two) = results
    np.testing.assert_allclose(stats_two, stats_one, rtol=1e-5)
    for a, b in zip(before_one, before_two):
        np.testing.assert_array_equal(a, b)
    one, two = np.concatenate([a.ravel() for a in after_one]), np.concatenate([b.ravel() for b in after_two])
    assert np.abs(one - two).max() / np.abs(one).max() <= 1e-5
    changed = sum(not np.array_equal(a, start) for a, start in zip(after_one, before_one))
    assert changed > 10  # the iteration really updated D, G and the EMA


def test_multiworker_processes_agree_and_only_the_chief_writes(tmp_path, tiny_dataset):
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    config = tmp_path / "mw.json"
    config.write_text(json.dumps({**TINY_CONFIG, "schedule": {**TINY_CONFIG["schedule"], "total_kimg": 0.12},
                                  "training": {**TINY_CONFIG["training"], "strategy": "multiworker"}}))
    script = ("import sys, hashlib, numpy as np\n"
              "from pathlib import Path\n"
              "from progan.config import load_config\n"
              "from progan.training.trainer import Trainer\n"
              "t = Trainer(load_config(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))\n"
              "t.train()\n"
              "h = hashlib.sha256()\n"
              "for v in t.state.generator_variables + t.state.discriminator_variables + t.state.ema_variables:\n"
              "    h.update(np.ascontiguousarray(v.numpy()).tobytes())\n"
              "print('WEIGHTS', h.hexdigest(), int(t.state.images_seen.numpy()))\n")
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                      "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(
            [sys.executable, "-c", script, str(config), str(tiny_dataset), str(tmp_path / f"run{index}")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO))
    outputs = [process.communicate(timeout=240) for process in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    digests = [[line for line in out.splitlines() if line.startswith("WEIGHTS")][0] for out, _ in outputs]
    assert digests[0] == digests[1]
    assert int(digests[0].split()[2]) >= 120
    assert list_snapshots(tmp_path / "run0" / "checkpoints")
    assert not (tmp_path / "run1").exists()


def _all_checkpoint_values_finite(run_dir):
    for _, path in list_snapshots(run_dir / "checkpoints"):
        reader = tf.train.load_checkpoint(str(path / "ckpt"))
        for name, _ in tf.train.list_variables(str(path / "ckpt")):
            value = reader.get_tensor(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.isfinite(value).all(), name


def test_nonfinite_steps_are_skipped_then_rolled_back(tmp_path, tiny_dataset):
    config = tiny(**{"training.max_nonfinite_steps": 2, "training.tick_kimg": 0.008,
                     "schedule.total_kimg": 0.2})
    trainer = training.Trainer(config, tiny_dataset, tmp_path / "run")
    trainer.snapshot()
    poisoned = trainer.state.discriminator_variables[0]
    poisoned.assign(tf.fill(poisoned.shape, float("nan")))
    result = trainer.train()
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "2 non-finite steps in a row: rolled back to the snapshot at kimg 0.0" in log
    assert result["images_seen"] >= 200 and trainer.state.weights_finite()
    _all_checkpoint_values_finite(tmp_path / "run")


def test_a_diverging_run_stops_after_a_second_rollback(tmp_path, tiny_dataset):
    config = tiny(**{"training.max_nonfinite_steps": 2, "training.tick_kimg": 0.008,
                     "optimizer.g_lr": 1e37, "optimizer.d_lr": 1e37})
    with pytest.raises(training.TrainingError, match="non-finite steps in a row again"):
        training.train(config, tiny_dataset, tmp_path / "run")
    assert "rolled back" in (tmp_path / "run" / "log.txt").read_text()
    _all_checkpoint_values_finite(tmp_path / "run")


def test_a_skipped_step_leaves_the_weights_alone(tmp_path, tiny_dataset):
    trainer = training.Trainer(tiny(), tiny_dataset, tmp_path / "run")
    poisoned = trainer.state.discriminator_variables[0]
    poisoned.assign(tf.fill(poisoned.shape, float("nan")))
    before = [v.numpy() for v in trainer.state.discriminator_variables[1:]]
    trainer.run_iterations(1)
    assert int(trainer.state.skipped_steps.numpy()) == 1
    for start, variable in zip(before, trainer.state.discriminator_variables[1:]):
        np.testing.assert_array_equal(variable.numpy(), start)


def test_contradicting_config_is_named(tmp_path, tiny_dataset):
    run_dir = tmp_path / "run"
    RunDir(run_dir).write(RunInfo(tiny(), tiny_dataset, None))
    with pytest.raises(training.TrainingError, match=r"schedule.batch_size=8 but this command asks 16"):
        training.train(tiny(**{"schedule.batch_size": 16}), tiny_dataset, run_dir)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_dataset):
    run_dir = tmp_path_factory.mktemp("runs") / "source"
    config = tiny(**{"schedule.total_kimg": 0.3})
    training.train(config, tiny_dataset, run_dir)
    return run_dir


def test_finetune_starts_from_the_snapshot_at_a_reduced_rate(tmp_path, finished_run):
    with pytest.raises(RunError, match="no metric record yet"):
        training.finetune(finished_run, tmp_path / "nope", snapshot="best", kimg=0.1)
    snapshots = list_snapshots(finished_run / "checkpoints")
    start = snapshots[-2][0]
    out = tmp_path / "tuned"
    result = training.finetune(finished_run, out, snapshot=f"{start / 1000}", lr_scale=0.8, kimg=0.05,
                               reset_optimizer=True)
    run = RunDir(out).read()
    assert run.origin["images_seen"] == start and run.origin["lr_scale"] == 0.8
    assert run.origin["data_fingerprint"] == RunDir(finished_run).read().data_fingerprint
    assert run.config.optimizer.g_lr == pytest.approx(0.8 * 0.001)
    assert run.config.schedule.total_kimg == pytest.approx(start / 1000 + 0.05)
    first = list_snapshots(out / "checkpoints")[0]
    assert first[0] == start  # the fine-tuning run begins with the source snapshot's state
    assert result["images_seen"] >= start + 50
    source = tf.train.load_checkpoint(str(snapshots[-2][1] / "ckpt"))
    tuned = tf.train.load_checkpoint(str(first[1] / "ckpt"))
    key = [name for name, _ in tf.train.list_variables(str(first[1] / "ckpt")) if name.startswith("generator/g_4_conv1/kernel")][0]
    np.testing.assert_array_equal(tuned.get_tensor(key), source.get_tensor(key))
    with pytest.raises(RunError, match="no full snapshot at that kimg"):
        training.finetune(finished_run, tmp_path / "t2", snapshot="12345", kimg=1)


def _xla_functions(step) -> list[str]:
    """Names of the functions in a compiled step's graph that XLA must compile."""
    names = []
    for concrete in step.run_steps._list_all_concrete_functions_for_serialization():
        for function in concrete.graph.as_graph_def().library.function:
            if function.attr["_XlaMustCompile"].b:
                names.append(function.signature.name)
    return names


@pytest.mark.parametrize("precision, xla", [("bf16", False), ("fp16", False), ("off", True)])
def test_mixed_precision_and_xla_train(tmp_path, tiny_dataset, precision, xla):
    config = tiny(**{"training.mixed_precision": precision, "training.xla": xla})
    trainer = training.Trainer(config, tiny_dataset, tmp_path / "run")
    start = trainer.schedule.start_of(8, fading=True)
    trainer.state.images_seen.assign(start)
    before = [v.numpy() for v in trainer.state.generator_variables]
    trainer.run_iterations(2)
    after = [v.numpy() for v in trainer.state.generator_variables]
    assert all(np.isfinite(a).all() for a in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))
    # the layers compute in the policy's dtype and keep float32 variables; images stay float32
    compute = {"off": "float32", "bf16": "bfloat16", "fp16": "float16"}[precision]
    generator = trainer.state.networks.generator(8, True)
    convolutions = [layer for layer in generator.layers if "conv" in layer.name]
    assert convolutions and all(layer.compute_dtype == compute for layer in convolutions)
    assert all(v.dtype == "float32" for v in trainer.state.generator_variables)
    assert generator(np.zeros((2, 16), np.float32)).dtype == tf.float32
    # every skipped fp16 step halved the loss scale; no other precision skips
    skipped = int(trainer.state.skipped_steps.numpy())
    scale = float(trainer.state.loss_scale.scale.numpy())
    assert scale == (2.0 ** 15 / 2 ** skipped if precision == "fp16" else 1.0)
    assert skipped == 0 or precision == "fp16"
    compiled = _xla_functions(trainer.step_function(trainer.schedule.stage_at(start)))
    assert (sorted(name.split("_gradients")[0] for name in compiled) == ["__inference_d", "__inference_g"]) == xla


def test_the_loss_scale_halves_on_overflow_and_doubles_after_a_finite_period():
    from progan.training.step import LossScale

    scale = LossScale(enabled=True, period=3)
    history = []
    for ok in (False, False, True, True, True, True, False):
        scale.update(tf.constant(ok))
        history.append(float(scale.scale.numpy()))
    assert history == [2.0 ** 14, 2.0 ** 13, 2.0 ** 13, 2.0 ** 13, 2.0 ** 14, 2.0 ** 14, 2.0 ** 13]
    for _ in range(40):
        scale.update(tf.constant(False))
    assert float(scale.scale.numpy()) == 1.0  # never below 1
    inert = LossScale(enabled=False)
    inert.update(tf.constant(False))
    assert float(inert.scale.numpy()) == 1.0


# -- the run directory under attack -------------------------------------------------------------


def test_a_second_trainer_on_the_same_run_fails_at_once(tmp_path, tiny_dataset, tiny_config_file):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "progan", "train", "--config", str(tiny_config_file), "--data",
               str(tiny_dataset), "--out", str(run_dir), "--stable-kimg", "0.6", "--fade-kimg", "0.6"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = []
    try:
        assert _wait_for_new_snapshot(first, run_dir, -1), "the first trainer never snapshotted"
        seconds += [subprocess.Popen(second_command, cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)  # both at once
                   for second_command in (command, [sys.executable, "-m", "progan", "resume", str(run_dir)])]
        for second in seconds:
            error = second.communicate(timeout=120)[1].strip().splitlines()[-1]
            assert second.returncode == 2
            assert f"in use by PID {first.pid} on " in error and error.startswith("progan ")
        deadline = time.time() + 120  # the first is unharmed: it goes on to log a tick ...
        while not (run_dir / "stats.jsonl").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGTERM)  # ... and stops cleanly on request
        out, err = first.communicate(timeout=300)
    finally:
        for process in (first, *seconds):
            process.kill()
    assert first.returncode == 0, err[-2000:]
    log = (run_dir / "log.txt").read_text()
    assert log.count("training ") == 1
    assert "done: kimg 1.8" in log or "on request; continue with: progan resume" in log
    ticks = [json.loads(line)["tick"] for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert ticks == list(range(len(ticks)))


def _damage(run_dir, images_seen, how):
    path = run_dir / "checkpoints" / f"snapshot-{images_seen:012d}"
    if how == "truncated data":
        data = next(path.glob("ckpt.data-*"))
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    elif how == "truncated index":
        index = path / "ckpt.index"
        index.write_bytes(index.read_bytes()[:100])
    elif how == "unreadable snapshot.json":
        (path / "snapshot.json").write_text("{\"format_version\": ")
    elif how == "missing data":
        next(path.glob("ckpt.data-*")).unlink()
    elif how == "wrong shapes":  # a checkpoint of the right names from a narrower model
        other = training.Trainer(tiny(**{"model.fmap_max": 8}), REPO, run_dir / "unused")
        RunDir(run_dir).write_snapshot(images_seen, "full", other.state.checkpoint)
    return path.name


@pytest.mark.parametrize("newest, previous", [("truncated data", "unreadable snapshot.json"),
                                              ("truncated index", "missing data")])
def test_damaged_snapshots_fall_back_to_the_newest_readable_one(tmp_path, finished_run, capfd,
                                                                newest, previous):
    run_dir = copy_run(finished_run, tmp_path / "run")
    names = [_damage(run_dir, 304, newest), _damage(run_dir, 200, previous)]
    capfd.readouterr()
    result = training.resume(run_dir)
    error = capfd.readouterr().err
    log = (run_dir / "log.txt").read_text()
    for name, how in zip(names, (newest, previous)):
        assert name in error and f"set aside as damaged-{name}" in log
        assert (run_dir / "checkpoints" / f"damaged-{name}").is_dir()
    assert "resumed from snapshot-000000000104 at kimg 0.1" in log
    assert result["images_seen"] == 304 and not result["stopped"]
    assert RunDir(run_dir).snapshots("full")[-1].images_seen == 304  # written anew
    stats = RunDir(run_dir).read_stats()
    assert [s["tick"] for s in stats] == list(range(len(stats)))
    assert [s["images_seen"] for s in stats] == sorted({s["images_seen"] for s in stats})


def test_a_snapshot_that_does_not_fit_the_config_is_a_config_error_not_damage(tmp_path, finished_run):
    """An edited config.json (here the minibatch-stddev group, which changes the shape of the
    discriminator's d_4_conv kernel) names the layer and the setting; nothing is set aside,
    and with the setting put back the run resumes."""
    from progan.checkpoints import SnapshotMismatchError

    run_dir = copy_run(finished_run, tmp_path / "run")
    before = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    stored = json.loads((run_dir / "config.json").read_text())
    edited = json.loads(json.dumps(stored))
    edited["config"]["model"]["mbstd_group_size"] = 0
    (run_dir / "config.json").write_text(json.dumps(edited))
    with pytest.raises(SnapshotMismatchError, match=r"discriminator/d_4_conv/kernel is \[3, 3, 17, 16\] "
                       r"in the snapshot but \[3, 3, 16, 16\].*model.mbstd_group_size"):
        training.resume(run_dir)
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == before
    _damage(run_dir, 304, "wrong shapes")  # one snapshot of a narrower model: no fallback either
    (run_dir / "config.json").write_text(json.dumps(stored))
    with pytest.raises(SnapshotMismatchError, match="d_4_conv/bias is \\[8\\] in the snapshot but \\[16\\].*fmap_max"):
        training.resume(run_dir)
    assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == before


def test_a_run_without_a_readable_snapshot_starts_again_only_when_told(tmp_path, finished_run):
    run_dir = copy_run(finished_run, tmp_path / "run")
    run = RunDir(run_dir)
    ticks = len(run.read_stats())
    for snapshot in run.snapshots("full"):
        _damage(run_dir, snapshot.images_seen, "truncated data")
    with pytest.raises(training.TrainingError, match="no readable snapshot.*all 4 were damaged.*--restart"):
        training.resume(run_dir)
    assert len(run.damaged()) == 4 and not run.snapshots("full")
    for attempt in (lambda: training.resume(run_dir),
                    lambda: training.train(run.read().config, run.read().data, run_dir)):
        with pytest.raises(training.TrainingError, match=f"has trained before \\({ticks} tick"
                           r".*4 network snapshot.*4 damaged.*progan resume .* --restart"):
            attempt()
        assert len(run.read_stats()) == ticks and not run.snapshots("full")
    with pytest.raises(training.TrainingError, match="--restart: .* has a readable snapshot"):
        training.resume(finished_run, restart=True)
    result = training.resume(run_dir, restart=True)
    assert result["images_seen"] == 304
    aside = list(run_dir.glob("restart-*"))
    assert len(aside) == 1 and len(RunDir(aside[0]).read_stats()) == ticks
    assert len(list((aside[0] / "checkpoints").glob("damaged-snapshot-*"))) == 4
    assert [s["tick"] for s in run.read_stats()] == list(range(ticks))  # written once, not twice
    assert "--restart: starting" in (run_dir / "log.txt").read_text()


def test_a_moved_data_set_is_accepted_a_different_one_refused(tmp_path, finished_run, tiny_dataset):
    run_dir = copy_run(finished_run, tmp_path / "run")
    moved = tmp_path / "moved"
    shutil.copytree(tiny_dataset, moved)
    training.resume(run_dir, data=moved)
    assert RunDir(run_dir).read().data == moved.resolve()

    from progan.dataset.synthetic import ensure_synthetic

    other = ensure_synthetic(tmp_path / "other", num_images=256, resolution=8, seed=5, workers=1,
                             progress=False)
    with pytest.raises(training.TrainingError, match="a different data set .* --allow-different-data"):
        training.resume(run_dir, data=other)
    config = RunDir(run_dir).read().config
    with pytest.raises(training.TrainingError, match="--data .*: a different data set"):
        training.train(config, other, run_dir)
    assert RunDir(run_dir).read().data == moved.resolve()
    training.resume(run_dir, data=other, allow_different_data=True)
    assert RunDir(run_dir).read().data == other.resolve()
    assert "continuing on a different data set" in (run_dir / "log.txt").read_text()


def test_a_command_that_fails_validation_writes_nothing(tmp_path, tiny_dataset, tiny_config_file, capsys):
    from progan import cli

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--config", str(tiny_config_file), "--data", str(tiny_dataset),
                  "--out", str(out), "--batch", "6"])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--batch 6" in error and "group size 4" in error
    assert not out.exists()
    with pytest.raises(training.TrainingError, match="has no 16x16 level"):
        training.train(tiny(**{"model.max_resolution": 16}), tiny_dataset, out)
    assert not out.exists()


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
def test_runs_written_by_earlier_versions_resume(tmp_path, tiny_dataset, version):
    """tests/data/run-v<version> was written by that version (tests/data/write_run_fixture.py)."""
    run_dir = copy_run(REPO / "tests" / "data" / f"run-v{version}", tmp_path / "run")
    expected = np.load(run_dir / "expected.npz")
    training.resume(run_dir, data=tiny_dataset)  # the schedule is done: restore and check only
    info = RunDir(run_dir).read()
    assert info.data == tiny_dataset.resolve() and info.data_fingerprint is not None
    trainer = training.Trainer(info.config, tiny_dataset, run_dir)
    assert trainer.restore() == int(expected["images_seen"])
    sys.path.insert(0, str(REPO / "tests" / "data"))
    from write_run_fixture import expected_outputs

    for name, value in expected_outputs(trainer).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    from progan.generation import load_generator

    ema = load_generator(run_dir, "latest").model(expected["latents"]).numpy()
    np.testing.assert_allclose(ema, expected["ema_images"], rtol=1e-5, atol=1e-6)
    before = [v.numpy() for v in trainer.state.discriminator_variables]
    trainer.run_iterations(1)  # the restored optimiser state trains on
    assert int(trainer.state.skipped_steps.numpy()) == 0
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(trainer.state.discriminator_variables, before))


def test_a_snapshot_from_a_newer_progan_is_an_error_not_damage(tmp_path, finished_run):
    run_dir = copy_run(finished_run, tmp_path / "run")
    newest = RunDir(run_dir).snapshots("full")[-1]
    info = json.loads((newest.path / "snapshot.json").read_text())
    (newest.path / "snapshot.json").write_text(json.dumps({**info, "format_version": 9}))
    with pytest.raises(RunError, match="snapshot format 9 is newer than this progan"):
        training.resume(run_dir)
    assert newest.path.is_dir()  # left as it is, for the newer progan


@pytest.mark.parametrize("fading", [True, False])
def test_the_ema_uses_ema_beta_fade_during_fade_ins(tmp_path, tiny_dataset, fading):
    """One iteration updates ema <- G + (ema - G) * beta between the D and G steps, with
    beta = ema_beta_fade in a fade-in and ema_beta in a stable phase (the demo's
    short average during fades, longer in stable phases)."""
    config = tiny(**{"training.ema_beta": 0.75, "training.ema_beta_fade": 0.25})
    trainer = training.Trainer(config, tiny_dataset, tmp_path / "run")
    start = trainer.schedule.start_of(8, fading=fading) + (64 if fading else 0)
    trainer.state.images_seen.assign(start)
    for ema in trainer.state.ema_variables:
        ema.assign(tf.zeros_like(ema))
    generator = [v.numpy() for v in trainer.state.generator_variables]
    trainer.run_iterations(1)
    beta = 0.25 if fading else 0.75
    stage_vars = {id(v) for v in trainer.state.networks.generator(8, fading).trainable_weights}
    checked = 0
    for source, before, ema in zip(trainer.state.generator_variables, generator,
                                   trainer.state.ema_variables):
        if id(source) in stage_vars:  # G did not move before the EMA update: G's value then
            np.testing.assert_allclose(ema.numpy(), (1 - beta) * before, rtol=1e-6, atol=1e-7)
            checked += 1
    assert checked > 5


def test_stable_lr_rampdown_scales_the_steps_at_the_end_of_stable_phases_only(tmp_path, tiny_dataset):
    """`optimizer.stable_lr_rampdown` f: both learning rates are the phase's until the last f
    of a stable phase, then fall linearly to 0 at its end; fade-ins keep theirs. The factor
    is what Adam's step uses: a first step after a reset moves each weight by ~lr (beta1 0)."""
    config = tiny(**{"optimizer.stable_lr_rampdown": 0.5, "optimizer.g_lr": 0.004,
                     "optimizer.d_lr": 0.008, "optimizer.fade_lr_scale": 0.5})
    trainer = training.Trainer(config, tiny_dataset, tmp_path / "run")
    state = trainer.state
    start = trainer.schedule.start_of(8)
    end = trainer.schedule.stage_at(start).end_images
    for seen, expected in ((start + 16, 1.0), (end - 48, 48 / ((end - start) * 0.5))):
        state.images_seen.assign(seen)
        state.reset_optimizers()
        before = [v.numpy() for v in state.discriminator_variables]
        trainer.run_iterations(1)
        assert state.g_optimizer.learning_rate.numpy() == pytest.approx(0.004 * expected, rel=1e-6)
        assert state.d_optimizer.learning_rate.numpy() == pytest.approx(0.008 * expected, rel=1e-6)
        moved = np.concatenate([np.abs(v.numpy() - b).ravel()
                                for v, b in zip(state.discriminator_variables, before)])
        assert np.median(moved[moved > 0]) == pytest.approx(0.008 * expected, rel=0.05)
    state.images_seen.assign(trainer.schedule.start_of(8, fading=True) + 8)  # a fade-in
    trainer.run_iterations(1)
    assert state.d_optimizer.learning_rate.numpy() == pytest.approx(0.008 * 0.5, rel=1e-6)


def test_a_failed_start_leaves_nothing_that_blocks_the_retry(tmp_path, finished_run, tiny_dataset,
                                                             monkeypatch):
    """Checks come before the first write; a failure after it (here: the loop itself) removes
    the new run folder, so the corrected command runs."""
    from progan.config import ConfigError

    out = tmp_path / "tuned"
    with pytest.raises(training.TrainingError, match="--kimg inf: expected a positive finite number"):
        training.finetune(finished_run, out, kimg=float("inf"))
    with pytest.raises(ConfigError, match="optimizer.freeze_d: expected fewer than"):
        training.finetune(finished_run, out, kimg=0.05, overrides={"optimizer.freeze_d": 99})
    assert not out.exists()

    def fails(self):
        self.reporter.log("about to fail")
        raise RuntimeError("the loop failed")

    with monkeypatch.context() as patch:
        patch.setattr(training.Trainer, "train", fails)
        for start in (lambda: training.finetune(finished_run, out, kimg=0.05),
                      lambda: training.train(tiny(), tiny_dataset, tmp_path / "new")):
            with pytest.raises(RuntimeError, match="the loop failed"):
                start()
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(RuntimeError, match="the loop failed"):
            training.train(tiny(), tiny_dataset, empty)
    assert not out.exists() and not (tmp_path / "new").exists() and list(empty.iterdir()) == []
    result = training.finetune(finished_run, out, kimg=0.05)
    assert result["images_seen"] >= 304 + 50 and RunDir(out).read().origin["images_seen"] == 304


def test_a_data_set_of_other_channels_is_refused_before_the_run_exists(tmp_path, tiny_dataset):
    data = tmp_path / "grey"
    shutil.copytree(tiny_dataset, data)
    manifest = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**manifest, "channels": 1}))
    with pytest.raises(training.TrainingError, match="grey: has 1-channel images, expected 3 "
                       r"\(the model's num_channels"):
        training.train(tiny(), data, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_level_file_cut_while_streaming_ends_training_in_one_line(tmp_path, tiny_dataset, monkeypatch):
    from progan.dataset import reader
    from progan.errors import Fault

    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    monkeypatch.setenv("PROGAN_DATA_MEMORY_BUDGET", "1K")  # stream from disk
    load = reader.load

    def load_then_cut(path, resolution, *args, **kwargs):
        dataset = load(path, resolution, *args, **kwargs)
        if resolution == 8:
            level = reader.open_dataset(path).level_files[8]
            level.write_bytes(level.read_bytes()[:3000])
        return dataset

    monkeypatch.setattr(reader, "load", load_then_cut)
    with pytest.raises(Fault, match=r"-r03.tfrecords: ended inside record \d+ \(UnknownError while "
                       r"training at 8x8\); the snapshot at kimg 0.2 is kept; .*progan resume"):
        training.train(tiny(), data, tmp_path / "run")
    assert RunDir(tmp_path / "run").snapshots("full")[-1].images_seen == 200


def test_a_full_disk_stops_before_a_snapshot_and_keeps_the_previous_one(tmp_path, tiny_dataset,
                                                                         monkeypatch):
    import collections

    from progan import run as runs

    usage = collections.namedtuple("usage", "total used free")
    free = {"bytes": 1 << 40}
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda path: usage(0, 0, free["bytes"]))
    free["bytes"] = 1 << 16
    with pytest.raises(runs.WriteFault, match=r"0.1 MiB free, a snapshot of this model .* needs about"):
        training.train(tiny(), tiny_dataset, tmp_path / "never")
    assert not (tmp_path / "never").exists()  # refused before the first snapshot: nothing left

    written = runs.RunDir.write_snapshot

    def fill_after_the_second(self, images_seen, kind, *args, **kwargs):
        snapshot = written(self, images_seen, kind, *args, **kwargs)
        if images_seen >= 104 and kind == "network":
            free["bytes"] = 1 << 16
        return snapshot

    free["bytes"] = 1 << 40
    with monkeypatch.context() as patch:
        patch.setattr(runs.RunDir, "write_snapshot", fill_after_the_second)
        with pytest.raises(runs.WriteFault, match=r"the snapshot at kimg 0.2 is not written, the "
                           r"previous one \(snapshot-000000000104\) is kept; then: progan resume"):
            training.train(tiny(), tiny_dataset, tmp_path / "run")
    free["bytes"] = 1 << 40
    result = training.resume(tmp_path / "run", total_kimg=0.25)
    assert result["images_seen"] >= 250
    assert "resumed from snapshot-000000000104" in (tmp_path / "run" / "log.txt").read_text()


def test_freeze_d_that_freezes_a_whole_stage_says_so(tmp_path, tiny_dataset, capfd):
    training.train(tiny(**{"optimizer.freeze_d": 1, "schedule.total_kimg": 0.1}), tiny_dataset,
                   tmp_path / "run")
    assert ("warning: optimizer.freeze_d 1 freezes every discriminator block up to 4x4 (until kimg 0.2)"
            in capfd.readouterr().err)
