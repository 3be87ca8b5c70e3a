"""What a person watching a run sees: start-up summary, tick lines, stats, TensorBoard, plots."""


import json

from conftest import TINY_CONFIG
from run_fixtures import tiny_run  # noqa: F401  (fixture)
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from progan.config import Config
from progan.run import RunDir, RunInfo
from progan.training import trainer as training
from progan.training.report import duration, format_tick


def tensorboard(run_dir) -> dict:
    """{tag: [(step, value)]} of every scalar event file in the run directory."""
    scalars: dict = {}
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"tensors": 0, "images": 0})
        events.Reload()
        for tag in events.Tags()["tensors"]:
            for event in events.Tensors(tag):
                value = event.tensor_proto
                scalars.setdefault(tag, []).append((event.step, value))
    return scalars


def test_a_run_with_one_resume_tells_what_it_is_where_it_is_and_when_it_ends(tmp_path, tiny_dataset):
    from tensorboard.util import tensor_util

    config = Config.from_dict(TINY_CONFIG).replace(**{
        "schedule.total_kimg": 0.3, "training.metrics": ["swd"], "training.metrics_kimg": 0.2,
        "training.metrics_num_images": 16})
    run_dir = tmp_path / "run"
    RunDir(run_dir).write(RunInfo(config, tiny_dataset, None))
    from progan.evaluation.run import training_metrics

    trainer = training.Trainer(config, tiny_dataset, run_dir,
                               callbacks=training_metrics(run_dir, config.training))
    # first session: stop after the second tick, as a preemption would
    original = trainer._tick

    def stop_after_two(*args, **kwargs):
        stats = original(*args, **kwargs)
        if stats["tick"] == 1:
            trainer.request_stop()
        return stats

    trainer._tick = stop_after_two
    assert trainer.train()["stopped"]
    training.resume(run_dir, data=tiny_dataset, allow_different_data=True,
                    callbacks=training_metrics(run_dir, config.training))

    log = (run_dir / "log.txt").read_text()
    for field in ("preset     celeba64; settings that differ: model.latent_size=16", "data       ", "fingerprint", "strategy   OneDeviceStrategy, 1 replica(s)",
                  "precision  float32, XLA off", "batch      8 global = 8 per replica",
                  "schedule   kimg per phase: 4² stable 0.2; 8² fade 0.1; total 0.3 kimg",
                  "estimated time to the end"):
        assert field in log, field
    assert log.count("run        ") == 2  # one summary per session
    stats = RunDir(run_dir).read_stats()
    assert [s["tick"] for s in stats] == list(range(len(stats))) and len(stats) >= 3
    for record in stats:
        assert {"elapsed_sec", "eta_sec", "total_kimg", "compile_sec", "maintenance_sec",
                "sec_per_kimg", "host_memory_gib", "gpu_memory_gib"} <= record.keys()
        assert record["total_kimg"] == 0.3 and record["eta_sec"] >= 0
    assert stats[-1]["elapsed_sec"] > stats[0]["elapsed_sec"]  # continues across the resume
    assert stats[-1]["eta_sec"] == 0.0  # nothing left
    assert stats[0]["compile_sec"] > 0  # the first tick traced the 4x4 graph
    line = format_tick(stats[-1])
    assert "kimg 0.3/0.3" in line and "ETA 0m 00s" in line and "res 8x8 fading" in line

    scalars = tensorboard(run_dir)
    for tag in ("Loss/D", "Loss/G", "Loss/gradient_penalty", "Progress/kimg", "Progress/resolution",
                "Timing/sec_per_kimg", "Timing/eta_hours", "Metrics/swd"):
        assert tag in scalars, (tag, sorted(scalars))
    swd_records = {r["images_seen"]: r["value"] for r in RunDir(run_dir).read_metrics()}
    for step, value in scalars["Metrics/swd"]:
        assert abs(float(tensor_util.make_ndarray(value)) - swd_records[step]) < 1e-4
    images = set()
    for path in run_dir.glob("events.out.tfevents.*"):
        events = EventAccumulator(str(path), size_guidance={"tensors": 0})
        events.Reload()
        images |= set(events.Tags()["tensors"])
    assert {"reals", "fakes", "settings"} <= images
    assert (run_dir / "curves.png").stat().st_size > 10_000


def test_durations_read_like_a_clock():
    assert duration(0) == "0m 00s" and duration(75) == "1m 15s"
    assert duration(3725) == "1h 02m" and duration(3 * 86400 + 7200) == "3d 02h"


def test_the_header_names_augmentation_and_warns_where_adaptive_p_cannot_work():
    from progan.training.report import _augment_lines

    def lines(**overrides):
        config = Config.from_dict(TINY_CONFIG).replace(**overrides)
        return _augment_lines(config.loss, config.optimizer)

    assert lines() == []
    fixed = lines(**{"loss.augment": ["translation", "color"], "optimizer.freeze_d": 2,
                     "model.max_resolution": 16})
    assert fixed[0].startswith("augment    translation, color on everything D sees, p 1")
    assert fixed[1].startswith("freeze-d   the discriminator's 2 blocks nearest the image")
    adaptive = {"loss.augment": ["cutout"], "loss.augment_target": 0.6}
    warned = lines(**adaptive)
    assert "target E[sign D(real)] = 0.6" in warned[0] and warned[1].startswith("warning    adaptive p")
    assert len(lines(**adaptive, **{"loss.name": "nonsaturating_r1"})) == 1


def test_the_header_names_every_learning_rate_change_along_the_schedule():
    from progan.config import load_config
    from progan.training.report import _lr_notes

    assert _lr_notes(load_config("celeba64").optimizer) == ""  # one rate throughout: nothing to add
    assert _lr_notes(load_config("demo").optimizer) == " (0.0015 at 4²; x0.75 in fade-ins)"
    ramped = Config.from_dict(TINY_CONFIG).replace(**{"optimizer.stable_lr_rampdown": 0.25,
                                                      "optimizer.lr_by_resolution": {8: 0.003}})
    assert _lr_notes(ramped.optimizer) == " (0.003 at 8²; to 0 over the last 25% of stable phases)"


def test_a_run_cut_short_before_its_top_resolution_says_so_at_start():
    from progan.schedule import Schedule
    from progan.training.report import _short_schedule_lines

    config = Config.from_dict(TINY_CONFIG)  # 4x4 stable 0.2, 8x8 fade 0.2 + stable 0.2
    assert _short_schedule_lines(Schedule.of(config)) == []
    short = Schedule.of(config.replace(**{"schedule.total_kimg": 0.3}))
    (line,) = _short_schedule_lines(short)
    assert "ends at 8x8 while it fades in" in line and "full schedule is 0.6 kimg" in line


def test_the_tick_line_reports_host_and_gpu_memory_apart():
    from progan.training.report import memory_gib

    memory = memory_gib()  # this machine has no GPU
    assert memory["host_memory_gib"] > 0 and memory["gpu_memory_gib"] is None
    assert memory["memory_gib"] == memory["host_memory_gib"]
    stats = {"tick": 3, "kimg": 1.0, "total_kimg": 2, "resolution": 8, "phase": "stable",
             "loss_d": 0.0, "loss_g": 0.0, "penalty": 0.0, "sec_per_kimg": 1.0,
             "images_per_sec": 1.0, "compile_sec": 0.0, "maintenance_sec": 0.0, "elapsed_sec": 1,
             "eta_sec": 1, "skipped_steps": 0}
    assert "mem host 0.91GiB gpu 3.20GiB skipped" in format_tick(
        {**stats, "memory_gib": 3.2, "host_memory_gib": 0.91, "gpu_memory_gib": 3.2})
    assert "mem host 0.91GiB skipped" in format_tick(
        {**stats, "memory_gib": 0.91, "host_memory_gib": 0.91, "gpu_memory_gib": None})
    assert "mem 0.86GiB skipped" in format_tick({**stats, "memory_gib": 0.86})  # an older record


def simulate_eta(rates, flops, compile_sec=5.0, snapshot_sec=2.0, tick_kimg=4.0):
    """A demo-schedule run on a fake clock where stage (resolution, fading) trains at
    ``rates[resolution]`` FLOP/s: [(stage, ETA of each tick, seconds actually left)]."""
    from progan.config import PRESETS
    from progan.schedule import Schedule
    from progan.training.report import TickClock, TickTimer

    schedule = Schedule.of(PRESETS["demo"]())
    now = [1000.0]
    timer = TickTimer(schedule, flops, snapshot_kimg=20, clock=lambda: now[0])
    ticks, images, maintenance = [], 0, 0.0
    for stage in schedule.stages():
        first = True
        while images < stage.end_images:
            clock = TickClock(images, start_time=now[0], maintenance=maintenance)
            now[0] += maintenance
            step = min(int(tick_kimg * 1000), stage.end_images - images)
            if first:
                clock.compile = compile_sec
                now[0] += compile_sec
            now[0] += step * flops[stage.key] / rates[stage.resolution]
            clock.train, clock.train_images = step * flops[stage.key] / rates[stage.resolution], step
            images += step
            maintenance = snapshot_sec if images == stage.end_images else 0.0
            stats = timer.finish(clock, stage, images)
            ticks.append((stage, stats["eta_sec"], now[0]))
            first = False
    end = now[0] + maintenance
    return [(stage, eta, end - at) for stage, eta, at in ticks]


def test_the_eta_from_the_8x8_fade_on_is_within_a_quarter_of_the_time_left():
    from progan.config import PRESETS
    from progan.networks import ProGAN
    from progan.schedule import Schedule
    from progan.training.flops import stage_flops

    config = PRESETS["demo"]()
    flops = stage_flops(ProGAN(config.model), Schedule.of(config))
    # a 2-core CPU: small stages keep its arithmetic units less busy than large ones
    rates = {4: 30e9, 8: 80e9, 16: 95e9, 32: 100e9}
    ticks = simulate_eta(rates, flops)
    checked = [(eta, left) for stage, eta, left in ticks[:-1] if stage.resolution >= 8]
    assert len(checked) >= 25
    for eta, left in checked:
        assert 0.75 * left <= eta <= 1.25 * left, (eta, left)
    assert ticks[-1][1] == 0.0  # the last tick: nothing left but its snapshot


def test_the_eta_checking_tool_reads_a_finished_run(tiny_run, tmp_path):
    """tools/check_eta.py: every tick's ETA against the time its run actually had left."""
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).parents[1] / "tools" / "check_eta.py"
    stats = [json.loads(line) for line in (tiny_run / "stats.jsonl").read_text().splitlines()]
    out = subprocess.run([sys.executable, str(tool), str(tiny_run)], capture_output=True,
                         text=True, check=True).stdout
    listed = re.findall(r"tick +(\d+) +\d+ \w+ +ETA +(\d+) s", out)
    assert [int(tick) for tick, _ in listed] == [record["tick"] for record in stats]
    assert [int(eta) for _, eta in listed] == [round(record["eta_sec"]) for record in stats]
    assert f"training time (the last tick's elapsed): {stats[-1]['elapsed_sec']:.0f} s" in out
    assert re.search(r"worst \|error\| from the first tick at 8x8 on: [0-9.]+%", out)
    unfinished = shutil.copytree(tiny_run, tmp_path / "unfinished")
    log = unfinished / "log.txt"
    log.write_text("".join(line for line in log.read_text().splitlines(keepends=True)
                           if " done: kimg " not in line))
    failed = subprocess.run([sys.executable, str(tool), str(unfinished)], capture_output=True, text=True)
    assert failed.returncode != 0 and "no 'done' line" in failed.stderr
