"""`progan plan` against a count by hand of the tiny networks and a snapshot on disk."""

import math

import pytest
from conftest import REPO, TINY_CONFIG

from progan.config import Config
from progan.run import RunDir
from progan.training.plan import GPU_CLASSES, format_plan, make_plan

# Multiply-adds per image of the tiny networks (every layer 16 channels, tests/conftest.py):
# G 4x4: dense 16 -> 4x4x16, conv 3x3, toRGB; D 4x4: fromRGB, conv 3x3 over 16 + 1 (minibatch
# stddev) channels, dense 256 -> 16, dense 16 -> 1. The 8x8 block adds two 3x3 convolutions at
# 8x8 to each (D's second runs before its pooling) and an 8x8 toRGB / fromRGB; a fade-in also
# runs the 4x4 toRGB / fromRGB.
G4 = 16 * 256 + 9 * 16 * 16 * 16 + 16 * 3 * 16
D4 = 3 * 16 * 16 + 9 * 17 * 16 * 16 + 256 * 16 + 16
BLOCK8 = 2 * 9 * 16 * 16 * 64
G8, D8 = G4 - 16 * 3 * 16 + BLOCK8 + 16 * 3 * 64, D4 - 3 * 16 * 16 + BLOCK8 + 3 * 16 * 64
FORWARD = {(4, "stable"): (G4, D4), (8, "fading"): (G8 + 16 * 3 * 16, D8 + 3 * 16 * 16),
           (8, "stable"): (G8, D8)}


def test_the_plan_of_the_tiny_config_matches_a_count_by_hand_and_a_snapshot_on_disk(tmp_path):
    config = Config.from_dict(TINY_CONFIG)
    plan = make_plan(config, gpus=2, utilisation=0.25)
    assert [(s.resolution, s.phase, s.kimg) for s in plan.stages] == [
        (4, "stable", 0.2), (8, "fading", 0.2), (8, "stable", 0.2)]
    for stage in plan.stages:
        g_macs, d_macs = FORWARD[(stage.resolution, stage.phase)]
        assert stage.flops_per_image == 4 * 2 * g_macs + 14 * 2 * d_macs  # bench's model
        assert stage.flops == stage.flops_per_image * 200
    assert plan.flops == sum(s.flops for s in plan.stages) and plan.kimg == pytest.approx(0.6)
    peak = GPU_CLASSES["A100 fp32"]
    assert plan.hours(plan.flops, peak) == pytest.approx(plan.flops / (peak * 0.25 * 2) / 3600)
    assert plan.snapshots == 1 + 3 * 2  # kimg 0, then every 0.1 kimg of each 0.2-kimg stage

    # the sizes against a snapshot of the tiny networks as the trainer writes it
    from progan.training.trainer import Trainer

    trainer = Trainer(config, REPO, tmp_path / "run")
    full = RunDir(tmp_path / "run").write_snapshot(0, "full", trainer.state.checkpoint)
    network = RunDir(tmp_path / "run").write_snapshot(0, "network", trainer.state.network_checkpoint)
    for snapshot, planned in ((full, plan.full_snapshot_bytes), (network, plan.network_snapshot_bytes)):
        measured = sum(path.stat().st_size for path in snapshot.path.glob("ckpt.data-*"))
        assert planned <= measured <= 1.06 * planned, (snapshot.kind, measured, planned)
    assert plan.disk_bytes == 5 * plan.full_snapshot_bytes + 7 * (plan.network_snapshot_bytes + 16 * 16 * 3)
    lines = format_plan(plan)
    assert lines[0].startswith("projected hours on 2 GPU(s) at 25% of peak (projections")
    assert any(line.startswith("total") and f"{plan.hours(plan.flops, peak):.2f}" in line for line in lines)
    assert math.isclose(sum(s.kimg for s in plan.stages), 0.6)
