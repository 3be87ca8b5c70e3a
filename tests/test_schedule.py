import math
import random

import pytest

from progan.config import Config, OptimizerConfig, ScheduleConfig
from progan.schedule import Schedule


def reference_lod_schedule(images_seen, stable_kimg, fade_kimg, max_resolution, start_resolution=4):
    """The reference code's TrainingSchedule (lod arithmetic), restated."""
    kimg = images_seen / 1000.0
    phase_duration = stable_kimg + fade_kimg
    phase = int(math.floor(kimg / phase_duration))
    phase_kimg = kimg - phase * phase_duration
    top = int(math.log2(max_resolution))
    lod = top - int(math.log2(start_resolution)) - phase
    lod -= max(phase_kimg - stable_kimg, 0.0) / fade_kimg
    lod = max(lod, 0.0)
    resolution = 2 ** (top - int(math.floor(lod)))
    fraction = lod - math.floor(lod)
    return resolution, fraction > 0, 1.0 - fraction


def test_thesis_schedule_landmarks():
    schedule = Schedule(ScheduleConfig(stable_kimg=800, fade_kimg=800), max_resolution=64)
    stage = schedule.stage_at(0)
    assert (stage.resolution, stage.fading, stage.alpha) == (4, False, 1.0)
    stage = schedule.stage_at(800_000)
    assert (stage.resolution, stage.fading, stage.alpha) == (8, True, 0.0)
    stage = schedule.stage_at(1_200_000)
    assert (stage.resolution, stage.fading, stage.alpha) == (8, True, 0.5)
    stage = schedule.stage_at(1_600_000)
    assert (stage.resolution, stage.fading) == (8, False)
    assert schedule.total_images == 800_000 + 4 * 1_600_000
    last = schedule.stage_at(schedule.total_images - 1)
    assert (last.resolution, last.fading) == (64, False)
    assert schedule.is_finished(schedule.total_images) and not schedule.is_finished(7_199_999)
    assert [(s.resolution, s.phase) for s in schedule.stages()] == [
        (4, "stable"), (8, "fading"), (8, "stable"), (16, "fading"), (16, "stable"),
        (32, "fading"), (32, "stable"), (64, "fading"), (64, "stable")]


def test_matches_reference_lod_arithmetic():
    stable, fade = 600, 600
    schedule = Schedule(ScheduleConfig(stable_kimg=stable, fade_kimg=fade), max_resolution=128)
    rng = random.Random(0)
    for images_seen in [rng.randrange(0, schedule.total_images) for _ in range(2000)]:
        stage = schedule.stage_at(images_seen)
        resolution, fading, alpha = reference_lod_schedule(images_seen, stable, fade, 128)
        assert (stage.resolution, stage.fading) == (resolution, fading), images_seen
        assert stage.alpha == pytest.approx(alpha, abs=1e-9)


def test_inverse_queries_agree_with_stage_at():
    schedule = Schedule(ScheduleConfig(stable_kimg=3, fade_kimg=2), max_resolution=32)
    for stage in schedule.stages():
        assert schedule.start_of(stage.resolution, stage.fading) == stage.start_images
        assert schedule.stage_at(stage.start_images).index == stage.index
        assert schedule.stage_at(stage.start_images - 1).index == stage.index - 1 \
            if stage.index else True
    assert schedule.boundaries() == [s.start_images for s in schedule.stages()[1:]]
    with pytest.raises(ValueError, match="no fading stage at resolution 4"):
        schedule.start_of(4, fading=True)


def test_batch_and_learning_rate_tables_apply_during_the_fade():
    config = ScheduleConfig(stable_kimg=1, fade_kimg=1, batch_size=16, batch_sizes={16: 8})
    optimizer = OptimizerConfig(g_lr=0.002, d_lr=0.003, lr_by_resolution={16: 0.0015})
    schedule = Schedule(config, max_resolution=16, optimizer=optimizer)
    fading16 = schedule.stage_at(schedule.start_of(16, fading=True))
    assert (fading16.batch_size, fading16.g_lr, fading16.d_lr) == (8, 0.0015, 0.0015)
    stable8 = schedule.stage_at(schedule.start_of(8))
    assert (stable8.batch_size, stable8.g_lr, stable8.d_lr) == (16, 0.002, 0.003)


def test_fade_lr_scale_applies_to_fade_ins_only():
    optimizer = OptimizerConfig(g_lr=0.002, d_lr=0.003, lr_by_resolution={16: 0.004},
                                fade_lr_scale=0.5)
    schedule = Schedule(ScheduleConfig(stable_kimg=1, fade_kimg=1), max_resolution=16,
                        optimizer=optimizer)
    rates = {(stage.resolution, stage.fading): (stage.g_lr, stage.d_lr) for stage in schedule.stages()}
    assert rates == {(4, False): (0.002, 0.003), (8, True): (0.001, 0.0015), (8, False): (0.002, 0.003),
                     (16, True): (0.002, 0.002), (16, False): (0.004, 0.004)}
    with pytest.raises(ValueError, match="optimizer.fade_lr_scale"):
        OptimizerConfig(fade_lr_scale=0)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="optimizer.stable_lr_rampdown"):
            OptimizerConfig(stable_lr_rampdown=bad)


def test_total_kimg_truncates_or_extends_the_last_stage():
    short = Schedule(ScheduleConfig(stable_kimg=10, fade_kimg=10, total_kimg=15), max_resolution=64)
    assert short.total_images == 15_000
    assert [s.key for s in short.stages()] == [(4, False), (8, True)]
    long = Schedule(ScheduleConfig(stable_kimg=10, fade_kimg=10, total_kimg=100), max_resolution=8)
    assert long.stage_at(99_999).key == (8, False)
    no_fade = Schedule(ScheduleConfig(stable_kimg=10, fade_kimg=0), max_resolution=16)
    assert [s.key for s in no_fade.stages()] == [(4, False), (8, False), (16, False)]


def test_learning_rate_settings_of_earlier_config_files_still_read():
    """The learning rates moved from the schedule section to the optimizer section."""
    old = Config.from_dict({"schedule": {"stable_kimg": 1, "g_lr": 0.002, "d_lr": 0.003,
                                         "lr_by_resolution": {"4": 0.001}, "fade_lr_scale": 0.5}})
    assert (old.optimizer.g_lr, old.optimizer.d_lr, old.optimizer.lr_by_resolution,
            old.optimizer.fade_lr_scale) == (0.002, 0.003, {4: 0.001}, 0.5)
    assert "g_lr" not in old.to_dict()["schedule"] and old.schedule.stable_kimg == 1
    assert Config().replace(**{"schedule.g_lr": 0.01}).optimizer.g_lr == 0.01
    with pytest.raises(ValueError, match="schedule.g_lr and optimizer.g_lr disagree"):
        Config.from_dict({"schedule": {"g_lr": 0.002}, "optimizer": {"g_lr": 0.003}})
