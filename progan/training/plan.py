"""`progan plan`: a run on paper — images, FLOPs, snapshot sizes, disk and projected hours.

Per stage of the schedule: the images it shows, its FLOPs (the bench's model: per image
4 F_G + 14 F_D, with F_G and F_D the forward FLOPs of the stage's networks, see
`progan.training.bench`), and the hours it would take on a named GPU class at a stated
utilisation. The hours are projections from peak FLOP/s, not measurements: `progan bench`
measures the fraction of peak a machine reaches, which is what ``utilisation`` stands for.

Snapshot sizes are float32 values: a full snapshot holds G, D, the EMA generator and Adam's
two moments of each network, 4 x (4 G + 3 D) bytes for G and D parameters (plus an index and
object graph of a few kB); a network snapshot holds the EMA generator, 4 G bytes. The run
keeps ``keep_checkpoints`` full snapshots (and the best one per metric) and every network
snapshot.
"""

from __future__ import annotations

import dataclasses
import math

from progan.config import Config
from progan.schedule import Schedule

# Peak dense FLOP/s of GPU classes, as their makers state them (TensorFloat-32 is what
# TensorFlow uses for float32 convolutions and matrix products on Ampere and later by default).
GPU_CLASSES = {
    "V100 fp32": 15.7e12,
    "A100 fp32": 19.5e12,
    "A100 tf32": 156e12,
    "H100 fp32": 67e12,
    "H100 tf32": 495e12,
}
UTILISATION = 0.3  # of peak: the default assumption, until `progan bench` measures one


@dataclasses.dataclass
class StagePlan:
    resolution: int
    phase: str
    kimg: float
    flops_per_image: int
    flops: float
    snapshots: int


@dataclasses.dataclass
class Plan:
    stages: list[StagePlan]
    generator_parameters: int
    discriminator_parameters: int
    full_snapshot_bytes: int
    network_snapshot_bytes: int
    snapshots: int
    keep_checkpoints: int
    fakes_bytes: int
    gpus: int
    utilisation: float

    @property
    def kimg(self) -> float:
        return sum(stage.kimg for stage in self.stages)

    @property
    def flops(self) -> float:
        return sum(stage.flops for stage in self.stages)

    @property
    def disk_bytes(self) -> int:
        """What the run keeps at its end: its full snapshots, every network snapshot and every
        fakes*.png (their uncompressed size: an upper bound)."""
        return (min(self.keep_checkpoints, self.snapshots) * self.full_snapshot_bytes
                + self.snapshots * (self.network_snapshot_bytes + self.fakes_bytes))

    def hours(self, flops: float, peak: float) -> float:
        """Projected hours for ``flops`` on ``gpus`` GPUs of ``peak`` FLOP/s each."""
        return flops / (peak * self.utilisation * self.gpus) / 3600


def snapshot_bytes(generator: int, discriminator: int) -> tuple[int, int]:
    """(full, network) snapshot bytes of networks with these parameter counts (float32)."""
    return 4 * (4 * generator + 3 * discriminator), 4 * generator


def make_plan(config: Config, gpus: int = 1, utilisation: float = UTILISATION) -> Plan:
    """The plan of ``config`` on ``gpus`` GPUs at ``utilisation`` of their peak."""
    from progan.networks import ProGAN
    from progan.training.bench import forward_flops, iteration_flops

    schedule = Schedule.of(config)
    networks = ProGAN(config.model)
    snapshot_images = max(int(config.training.snapshot_kimg * 1000), 1)
    stages = []
    for stage in schedule.stages():
        images = min(stage.end_images, schedule.total_images) - stage.start_images
        if images <= 0:
            continue
        per_image = iteration_flops(*forward_flops(networks, stage.resolution, stage.fading))
        stages.append(StagePlan(stage.resolution, stage.phase, images / 1000, per_image,
                                float(per_image) * images, math.ceil(images / snapshot_images)))
    counts = networks.parameter_counts()
    full, network = snapshot_bytes(counts["generator"], counts["discriminator"])
    side = config.training.grid_size * config.model.max_resolution
    return Plan(stages, counts["generator"], counts["discriminator"], full, network,
                1 + sum(stage.snapshots for stage in stages), config.training.keep_checkpoints,
                side * side * config.model.num_channels, gpus, utilisation)


def _size(count: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} B"


def format_plan(plan: Plan) -> list[str]:
    """The table `progan plan` prints."""
    classes = list(GPU_CLASSES)
    head = f"{'stage':<16} {'kimg':>9} {'GFLOP/img':>10} {'PFLOP':>10}  " + " ".join(
        f"{name:>10}" for name in classes)
    lines = [f"projected hours on {plan.gpus} GPU(s) at {plan.utilisation:.0%} of peak "
             "(projections, not measurements: `progan bench` measures the fraction of peak)",
             head, "-" * len(head)]
    for stage in plan.stages:
        lines.append(f"{stage.resolution:>4}x{stage.resolution:<4} {stage.phase:<7} {stage.kimg:>9.1f} "
                     f"{stage.flops_per_image / 1e9:>10.2f} {stage.flops / 1e15:>10.2f}  "
                     + " ".join(f"{plan.hours(stage.flops, GPU_CLASSES[name]):>10.2f}" for name in classes))
    lines.append("-" * len(head))
    lines.append(f"{'total':<16} {plan.kimg:>9.1f} {'':>10} {plan.flops / 1e15:>10.2f}  "
                 + " ".join(f"{plan.hours(plan.flops, GPU_CLASSES[name]):>10.2f}" for name in classes))
    lines += [
        f"peak FLOP/s: " + ", ".join(f"{name} {peak / 1e12:g} T" for name, peak in GPU_CLASSES.items()),
        f"parameters: generator {plan.generator_parameters:,}, discriminator "
        f"{plan.discriminator_parameters:,}",
        f"snapshots: {plan.snapshots} (every snapshot_kimg and at every stage end); full "
        f"{_size(plan.full_snapshot_bytes)} (4 x (4 G + 3 D) bytes: G, D, EMA, Adam's two "
        f"moments), network {_size(plan.network_snapshot_bytes)} (the EMA generator)",
        f"disk at the end: {_size(plan.disk_bytes)} ({min(plan.keep_checkpoints, plan.snapshots)} "
        f"full snapshots kept, every network snapshot, fakes*.png at most "
        f"{_size(plan.fakes_bytes)} each); add one full snapshot per metric's best",
    ]
    return lines
