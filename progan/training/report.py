"""What the user watches: tick lines, stats.jsonl, TensorBoard and curves.png.

Only the chief reports; other workers get a `Reporter` with ``chief=False`` that writes
nothing. Tick lines go to stdout and ``RUN/log.txt``; a tqdm bar runs when stdout is a
terminal.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from progan.schedule import Schedule
from progan.system import duration


def memory_gib() -> dict:
    """Peak memory in GiB: ``host_memory_gib`` (resident, this process), ``gpu_memory_gib``
    (the largest peak of this process's GPUs, None without one) and ``memory_gib`` (the
    larger of the two, the field older runs have)."""
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    gpu = None
    try:
        import tensorflow as tf

        for device in tf.config.list_logical_devices("GPU"):
            peak = tf.config.experimental.get_memory_info(device.name)["peak"] / 2 ** 30
            gpu = peak if gpu is None else max(gpu, peak)
    except (ValueError, RuntimeError):
        pass
    return {"memory_gib": max(host, gpu or 0.0), "host_memory_gib": host, "gpu_memory_gib": gpu}


@dataclasses.dataclass
class TickClock:
    """Where the time of one tick went: compiling (the first call of a stage traces it),
    training, and maintenance (snapshots, grids, metrics)."""

    start_images: int
    start_time: float = dataclasses.field(default_factory=time.time)
    compile: float = 0.0
    train: float = 0.0
    train_images: int = 0
    maintenance: float = 0.0


class TickTimer:
    """The timing fields of every tick line and the time left to the end of the schedule.

    The time left is the work left over the speed measured: every remaining stage's images
    times its FLOPs per image (``flops``, what `progan bench` counts), over the FLOP rate
    measured at that stage (wall time, snapshots excepted), else at its resolution, else at
    the highest resolution measured (larger stages keep the arithmetic units at least as
    busy); plus a stage switch (as long as the switches measured) per stage not yet started
    and the snapshots ahead at their measured cost. Without ``flops`` every image
    counts as one unit of work (pixels do not say how the work grows).

    Args:
        schedule: the run's `progan.schedule.Schedule`.
        flops: ``{stage.key: FLOPs of one training iteration per image}``.
        snapshot_kimg: thousands of images between snapshots (stage ends snapshot too).
        clock: seconds now (``time.time``; tests pass a fake).
    Attributes:
        elapsed_before: training seconds of earlier sessions of this run (from stats.jsonl).
    """

    def __init__(self, schedule, flops: dict | None = None, snapshot_kimg: float | None = None,
                 clock=time.time):
        self.schedule = schedule
        self.flops = flops or {}
        self.snapshot_images = max(int((snapshot_kimg or 0) * 1000), 0)
        self.clock = clock
        self.elapsed_before = 0.0
        self._work = {}  # stage key -> [work units, seconds] trained in this session
        self._switches: list[float] = []  # seconds of each stage switch seen
        self._maintenance = [0.0, 0]  # seconds, snapshots
        self._session_start = clock()
        self._estimated = False

    def _units(self, key) -> float:
        return float(self.flops.get(key, 1.0))

    def finish(self, clock: TickClock, stage, images_seen: int) -> dict:
        """The timing statistics of the tick that ``clock`` measured, ending at ``images_seen``."""
        now = self.clock()
        elapsed = max(now - clock.start_time, 1e-9)
        images = images_seen - clock.start_images
        sec_per_kimg = (clock.train / (clock.train_images / 1000) if clock.train_images
                        else elapsed / max(images / 1000, 1e-9))
        work = self._work.setdefault(stage.key, [0.0, 0.0])
        if clock.compile:
            # A stage's first tick: its calls after the first give the speed; the rest (the
            # switch from the previous stage, tracing, the first call) is what every stage
            # switch costs, several seconds more than the tracing alone.
            if clock.train_images > 0 and clock.train > 0:
                work[0] += clock.train_images * self._units(stage.key)
                work[1] += clock.train
            self._switches.append(max(elapsed - clock.maintenance - clock.train, 0.0))
        elif images > 0:  # the wall time without snapshots: what the images cost
            work[0] += images * self._units(stage.key)
            work[1] += max(elapsed - clock.maintenance, 1e-9)
        if clock.maintenance:
            self._maintenance[0] += clock.maintenance
            self._maintenance[1] += 1
        elapsed_total = self.elapsed_before + now - self._session_start
        eta = self.seconds_left(images_seen)
        return {"sec_per_tick": elapsed, "sec_per_kimg": sec_per_kimg,
                "images_per_sec": images / elapsed,
                "compile_sec": clock.compile, "maintenance_sec": clock.maintenance,
                "elapsed_sec": elapsed_total, "elapsed_hours": elapsed_total / 3600,
                "eta_sec": eta, "eta_hours": eta / 3600, **memory_gib()}

    def first_estimate(self, clock: TickClock, stage, stats: dict) -> str | None:
        """The log line of the first estimate of the time left (once per session)."""
        if self._estimated or not clock.train_images:
            return None
        self._estimated = True
        return (f"estimated time to the end: {duration(stats['eta_sec'])} (from "
                f"{clock.train_images} images at {stage.resolution}x{stage.resolution}"
                + (", the FLOPs of every stage ahead" if self.flops else "")
                + "; every tick line updates it)")

    def rate(self, stage) -> float | None:
        """Work units per second expected at ``stage`` (None before any measurement)."""
        measured = {key: work / seconds for key, (work, seconds) in self._work.items()
                    if seconds > 0 and work > 0}
        if not measured:
            return None
        if stage.key in measured:
            return measured[stage.key]
        same = [rate for (resolution, _), rate in measured.items() if resolution == stage.resolution]
        if same:
            return max(same)
        top = max(resolution for resolution, _ in measured)
        return max(rate for (resolution, _), rate in measured.items() if resolution == top)

    def seconds_left(self, images_seen: int) -> float:
        """Seconds left to the end of the schedule (0 before any measurement)."""
        if not any(work for work, _ in self._work.values()):
            return 0.0
        seconds = 0.0
        started = set(self._work)
        switch_seconds = sum(self._switches) / len(self._switches) if self._switches else 0.0
        snapshot_seconds = (self._maintenance[0] / self._maintenance[1]
                            if self._maintenance[1] else 0.0)
        for stage in self.schedule.stages():
            end = min(stage.end_images, self.schedule.total_images)
            left = end - max(stage.start_images, images_seen)
            if left <= 0:
                continue
            rate = self.rate(stage)
            if rate is None:  # nothing measured yet
                return 0.0
            seconds += left * self._units(stage.key) / rate
            if stage.key not in started and images_seen < stage.start_images:
                seconds += switch_seconds
            snapshots = math.ceil(left / self.snapshot_images) if self.snapshot_images else 1
            seconds += max(snapshots, 1) * snapshot_seconds
        # The end costs its last snapshot, not a switch: a switch's time is mostly the next
        # stage's tracing, and dropping a data iterator is immediate (reader.without_autotune).
        return seconds


class Reporter:
    """Tick lines, stats.jsonl, TensorBoard scalars and images, and the PNG files of a run.

    Args:
        run: the `progan.run.RunDir` (nothing is written until the first report).
        chief: only the chief writes anything.
        total_kimg: for the progress bar.
    """

    def __init__(self, run, chief: bool = True, total_kimg: float | None = None,
                 start_kimg: float = 0.0):
        self.run = run
        self.run_dir = run.path
        self.chief = chief
        self._summary = None
        self._bar = None
        if chief:
            if sys.stdout.isatty() and total_kimg:
                from tqdm import tqdm

                self._bar = tqdm(total=round(total_kimg, 1), initial=round(start_kimg, 1),
                                 dynamic_ncols=True, leave=False,
                                 bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg "
                                            "[{elapsed}<{remaining}]")

    def log(self, message: str) -> None:
        if not self.chief:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run.log_file, "a") as log:
            log.write(line + "\n")

    def warn(self, message: str) -> None:
        """A log line that also goes to stderr (damage found, data changed, ...)."""
        self.log(message)
        print(message, file=sys.stderr, flush=True)

    def progress(self, kimg: float) -> None:
        if self._bar is not None:
            kimg = min(kimg, self._bar.total)  # never past the end: no negative remaining time
            self._bar.update(max(0.0, kimg - self._bar.n))

    def tick(self, stats: dict) -> None:
        """One tick: a log line, a stats.jsonl record and TensorBoard scalars by group."""
        if not self.chief:
            return
        self.log(format_tick(stats))
        self.run.append_stats(stats)
        self.scalars({tag: stats[key] for tag, key in TENSORBOARD_TAGS.items()
                      if stats.get(key) is not None}, stats["images_seen"])

    def scalars(self, values: dict, images_seen: int) -> None:
        """TensorBoard scalars (``{"Group/name": value}``) at the step ``images_seen``."""
        if not self.chief:
            return
        from progan.backend import tf

        with self._writer().as_default(step=int(images_seen)):
            for tag, value in values.items():
                tf.summary.scalar(tag, float(value))
        self._writer().flush()

    def images(self, name: str, grid: np.ndarray, images_seen: int) -> None:
        """A uint8 grid to TensorBoard."""
        if not self.chief:
            return
        from progan.backend import tf

        with self._writer().as_default(step=int(images_seen)):
            tf.summary.image(name, grid[None])
        self._writer().flush()

    def text(self, name: str, markdown: str, images_seen: int = 0) -> None:
        """A text panel in TensorBoard (the run's settings)."""
        if not self.chief:
            return
        from progan.backend import tf

        with self._writer().as_default(step=int(images_seen)):
            tf.summary.text(name, markdown)
        self._writer().flush()

    def _writer(self):
        if self._summary is None:
            from progan.backend import tf

            self._summary = tf.summary.create_file_writer(str(self.run_dir))
        return self._summary

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._summary is not None:
            self._summary.close()


# TensorBoard tag -> stats key
TENSORBOARD_TAGS = {
    "Loss/D": "loss_d", "Loss/G": "loss_g", "Loss/gradient_penalty": "penalty",
    "Loss/wasserstein_estimate": "wasserstein", "Loss/label_penalty": "label_penalty",
    "Progress/kimg": "kimg", "Progress/resolution": "resolution", "Progress/alpha": "alpha",
    "Progress/skipped_steps": "skipped_steps", "Progress/loss_scale": "loss_scale",
    "Progress/learning_rate_G": "g_lr", "Progress/learning_rate_D": "d_lr",
    "Progress/augment_p": "augment_p", "Progress/augment_rt": "augment_rt",
    "Timing/sec_per_kimg": "sec_per_kimg", "Timing/images_per_sec": "images_per_sec",
    "Timing/sec_per_tick": "sec_per_tick", "Timing/compile_sec": "compile_sec",
    "Timing/maintenance_sec": "maintenance_sec", "Timing/elapsed_hours": "elapsed_hours",
    "Timing/eta_hours": "eta_hours", "Resources/peak_memory_gib": "memory_gib",
    "Resources/peak_host_memory_gib": "host_memory_gib",
    "Resources/peak_gpu_memory_gib": "gpu_memory_gib",
}


def format_tick(stats: dict) -> str:
    """One tick line: where the run is, its losses, its speed and when it will end."""
    alpha = f" alpha {stats['alpha']:.3f}" if stats.get("fading") else ""
    return (f"tick {stats['tick']:<4d} kimg {stats['kimg']:.1f}/{stats['total_kimg']:g} "
            f"res {stats['resolution']}x{stats['resolution']} {stats['phase']}{alpha}  "
            f"loss D {stats['loss_d']:+.4f} G {stats['loss_g']:+.4f} gp {stats['penalty']:.4f}"
            + (f" labels {stats['label_penalty']:.3f}" if "label_penalty" in stats else "")
            + (f" aug p {stats['augment_p']:.3f}" if "augment_p" in stats else "")
            + (f" r_t {stats['augment_rt']:.3f}" if "augment_rt" in stats else "") + "  "
            f"sec/kimg {stats['sec_per_kimg']:.2f} img/s {stats['images_per_sec']:.1f} "
            f"compile {stats['compile_sec']:.1f}s maint {stats['maintenance_sec']:.1f}s  "
            f"elapsed {duration(stats['elapsed_sec'])} ETA {duration(stats['eta_sec'])}  "
            f"{format_memory(stats)} skipped {stats['skipped_steps']}")


def format_memory(stats: dict) -> str:
    """``mem host 0.91GiB gpu 3.20GiB`` (no gpu part without one; ``mem 0.91GiB`` for a
    record written before the two were apart)."""
    if stats.get("host_memory_gib") is None:
        return f"mem {stats['memory_gib']:.2f}GiB"
    gpu = stats.get("gpu_memory_gib")
    return f"mem host {stats['host_memory_gib']:.2f}GiB" + (f" gpu {gpu:.2f}GiB" if gpu is not None else "")


def plot_curves(run, stages) -> Path | None:
    """RUN/curves.png: losses, the gradient penalty and the speed against kimg; each stage
    boundary is drawn and labelled with its resolution and phase. ``stages``: the
    schedule's `Stage` list."""
    stats = run.read_stats()
    if not stats:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kimg = [s["kimg"] for s in stats]
    figure, (losses, penalty, speed) = plt.subplots(3, 1, figsize=(10, 8), sharex=True,
                                                    gridspec_kw={"height_ratios": [3, 2, 2]})
    losses.plot(kimg, [s["loss_d"] for s in stats], label="D loss")
    losses.plot(kimg, [s["loss_g"] for s in stats], label="G loss")
    losses.set_ylabel("loss (per image)")
    losses.legend(loc="upper right", fontsize="small")
    penalty.plot(kimg, [s["penalty"] for s in stats], color="tab:red")
    penalty.set_ylabel("gradient penalty\n(||grad D|| - 1)^2")
    speed.plot(kimg, [s["images_per_sec"] for s in stats], color="tab:green")
    speed.set_ylabel("training speed\n(images / s)")
    speed.set_xlabel("kimg (thousands of real images shown)")
    for axis in (losses, penalty, speed):
        for stage in stages:
            if 0 < stage.start_images / 1000 <= max(kimg):
                axis.axvline(stage.start_images / 1000, color="grey", linestyle=":", linewidth=1)
        axis.grid(alpha=0.3)
    for stage in stages:
        if stage.start_images / 1000 <= max(kimg):
            losses.annotate(f"{stage.resolution}² {'fade' if stage.fading else 'stable'}",
                            (stage.start_images / 1000, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(2, -2), textcoords="offset points", fontsize="x-small",
                            va="top", color="dimgrey")
    figure.suptitle(f"{run.path.name}: training curves (dotted: a new stage starts)")
    with warnings.catch_warnings():  # a narrow figure cannot always fit its labels: fine
        warnings.simplefilter("ignore", UserWarning)
        figure.tight_layout()
    path = run.path / "curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def startup_summary(config, data, strategy, run_path, presets: dict) -> list[str]:
    """The lines a run prints before it trains: what it is, on what, with what, for how long."""
    from progan.dataset.reader import open_dataset
    from progan.run import data_fingerprint

    nearest = min(presets, key=lambda name: len(presets[name]().diff(config)))
    differences = presets[nearest]().diff(config)
    changed = ", ".join(f"{name}={_setting(config, name)!r}" for name in differences) or "none"
    info = open_dataset(data)
    levels = sorted(info.level_files)
    schedule = Schedule.of(config)
    phases = []
    for stage in schedule.stages():
        kimg = (min(stage.end_images, schedule.total_images) - stage.start_images) / 1000
        phases.append(f"{stage.resolution}² {'fade' if stage.fading else 'stable'} {kimg:g}")
    replicas = strategy.num_replicas_in_sync
    batches = sorted({stage.batch_size for stage in schedule.stages()})
    devices = ", ".join(strategy.extended.worker_devices)
    training = config.training
    precision = {"off": "float32", "bf16": "mixed bfloat16", "fp16": "mixed float16 (loss scaling)"}
    return [
        f"run        {run_path}",
        f"preset     {nearest}; settings that differ: {changed}",
        f"data       {data}: {info.image_count:,} images ({info.train_count:,} train), levels "
        f"{levels[0]}..{levels[-1]}, fingerprint {data_fingerprint(data)}",
        f"strategy   {type(strategy).__name__}, {replicas} replica(s) on {devices}",
        f"precision  {precision[training.mixed_precision]}, XLA {'on' if training.xla else 'off'}, "
        f"deterministic {'on' if training.deterministic else 'off'}",
        f"batch      {'/'.join(map(str, batches))} global = "
        f"{'/'.join(str(b // replicas) for b in batches)} per replica",
        f"model      latent {config.model.latent_size}, fmap_base {config.model.fmap_base}, "
        f"fmap_max {config.model.fmap_max}, 4² -> {config.model.max_resolution}²",
        f"optimiser  Adam lr G {config.optimizer.g_lr:g} D {config.optimizer.d_lr:g}{_lr_notes(config.optimizer)}, "
        f"beta ({config.optimizer.beta1:g}, {config.optimizer.beta2:g}), EMA {training.ema_beta:g}"
        + (f" ({training.ema_beta_fade:g} in fade-ins)" if training.ema_beta_fade is not None else "")
        + ", "
        f"loss {config.loss.name}",
        f"schedule   kimg per phase: {'; '.join(phases)}; total {schedule.total_kimg:g} kimg",
        "time       no estimate before the first tick has measured this machine's speed; "
        "then every tick line's ETA is the FLOPs left over the FLOP rate measured",
    ] + _short_schedule_lines(schedule) + _augment_lines(config.loss, config.optimizer)


def _short_schedule_lines(schedule) -> list[str]:
    """A warning when the run ends before its top resolution is stable (a --total-kimg that
    cuts the schedule short), saying where it ends and what would reach the top."""
    last = schedule.stages()[-1]
    if last.resolution == schedule.max_resolution and not last.fading:
        return []
    where = f"{last.resolution}x{last.resolution}" + (" while it fades in" if last.fading else "")
    needed = Schedule(dataclasses.replace(schedule.config, total_kimg=None),
                      schedule.max_resolution, schedule.optimizer).total_kimg
    return [f"warning    the run ends at {where}, before its top resolution "
            f"{schedule.max_resolution}x{schedule.max_resolution} is trained: the full schedule "
            f"is {needed:g} kimg (total_kimg {schedule.total_kimg:g})"]


def _lr_notes(optimizer) -> str:
    """What changes the learning rates along the schedule, e.g. " (0.0015 at 4²; x0.75 in
    fade-ins)"; empty when nothing does."""
    notes = [f"{lr:g} at {resolution}²" for resolution, lr in sorted(optimizer.lr_by_resolution.items())]
    if optimizer.fade_lr_scale != 1:
        notes.append(f"x{optimizer.fade_lr_scale:g} in fade-ins")
    if optimizer.stable_lr_rampdown > 0:
        notes.append(f"to 0 over the last {optimizer.stable_lr_rampdown:.0%} of stable phases")
    return f" ({'; '.join(notes)})" if notes else ""


def _augment_lines(loss, optimizer) -> list[str]:
    """The augmentation and FreezeD settings, with a warning where adaptive p cannot work."""
    lines = []
    if loss.augment:
        strength = (f"adaptive p, target E[sign D(real)] = {loss.augment_target:g}"
                    if loss.augment_target is not None else f"p {loss.augment_p:g}")
        lines.append(f"augment    {', '.join(loss.augment)} on everything D sees, {strength}")
        if loss.augment_target is not None and loss.name == "wgan_gp":
            lines.append("warning    adaptive p reads the sign of D(real), which a WGAN-GP critic does "
                         "not centre on the real/fake boundary (its drift term keeps real scores "
                         "near 0): p will likely stay near 0; use --augment-p or --loss "
                         "nonsaturating_r1")
    if optimizer.freeze_d:
        lines.append(f"freeze-d   the discriminator's {optimizer.freeze_d} blocks nearest the image "
                     "stay fixed")
    return lines


def _setting(config, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)
