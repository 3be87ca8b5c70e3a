"""`progan bench`: images/s of a full training iteration per stage, with analytic FLOPs.

An iteration is what training runs per minibatch: the discriminator step with its gradient
penalty, the EMA update and the generator step; its FLOPs per image (4 F_G + 14 F_D) are
counted in `progan.training.flops`.

The achieved FLOP/s is compared with a float32 matrix-multiply peak measured in the same
process (chained 2048 x 2048 products on the same device).
"""

from __future__ import annotations

import os
import platform
import re
import tempfile
import time
from pathlib import Path

from progan.backend import tf
from progan.config import Config
from progan.training.flops import forward_flops, iteration_flops, stage_flops  # noqa: F401


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    match = re.search(r"^flags\s*:(.*)$", text, re.MULTILINE)
    return set(match.group(1).split()) if match else set()


def instruction_set(flags: set[str]) -> str:
    """The widest vector/matrix instruction set among ``flags``: AMX, AVX-512, AVX2, or older."""
    if {"amx_tile", "amx_bf16"} <= flags and "avx512f" in flags:
        return "AMX"
    if "avx512f" in flags:
        return "AVX-512"
    if "avx2" in flags and "fma" in flags:
        return "AVX2"
    return "below AVX2" if flags else "unknown"


def machine() -> dict:
    """Where a figure was measured: CPU model, instruction set, cores, oneDNN's ISA cap."""
    model = platform.processor() or platform.machine()
    try:
        match = re.search(r"^model name\s*:\s*(.*)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        model = match.group(1).strip() if match else model
    except OSError:
        pass
    flags = cpu_flags()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "instruction_set": instruction_set(flags),
            "avx512_bf16": "avx512_bf16" in flags, "cores": cores,
            "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def format_machine(info: dict) -> str:
    cap = (f", oneDNN capped at {info['onednn_max_cpu_isa']}" if info.get("onednn_max_cpu_isa")
           else "")
    load = (f"; load average {info['load_average'][0]:.1f}" if info.get("load_average") else "")
    return (f"CPU {info['cpu']}, {info['instruction_set']}{cap}, {info['cores']} core(s)"
            f"{load}")


def matmul_peak(size: int = 2048, repeats: int = 8, trials: int = 3) -> float:
    """Measured float32 matrix-multiply FLOP/s of the default device (best of ``trials``).

    The products are chained (each multiplies the previous result), so no graph optimiser can
    merge them; the matrix is scaled to keep values bounded.
    """
    matrix = tf.random.normal([size, size]) / size ** 0.5
    start_value = tf.random.normal([size, size])

    @tf.function
    def products(matrix, value):
        for _ in range(repeats):
            value = tf.matmul(matrix, value)
        return value

    products(matrix, start_value).numpy()
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        products(matrix, start_value).numpy()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 * repeats / best


def bench(config: Config, resolutions: list[int], data: Path | None = None, seconds: float = 10.0,
          phases: tuple[bool, ...] = (True,), max_seconds_per_iteration: float = 60.0,
          log=print) -> dict:
    """Measure each (resolution, fading) stage; returns the table and the matmul peak.

    The start resolution has no fade-in: its stable stage is measured instead. A stage whose first measured iteration takes longer than ``max_seconds_per_iteration`` is
    reported as skipped.
    """
    from progan.dataset.synthetic import ensure_synthetic
    from progan.training.loop import Trainer

    top = max(resolutions)
    config = config.replace(**{"model.max_resolution": max(top, config.model.max_resolution)})
    with tempfile.TemporaryDirectory(prefix="progan-bench-") as scratch:
        if data is None:
            data = ensure_synthetic(Path(scratch) / "data", num_images=512, resolution=top,
                                    progress=False)
        trainer = Trainer(config, data, Path(scratch) / "run")
        info = machine()
        log(format_machine(info))
        # The peak is measured before and after the stages and the higher one kept: on a
        # machine that others share, one measurement can fall in a busy moment.
        peaks = [matmul_peak()]
        rows = []
        for resolution in resolutions:
            for fading in sorted({fading and resolution > config.schedule.start_resolution
                                  for fading in phases}, reverse=True):
                rows.append(_bench_stage(trainer, resolution, fading, seconds,
                                         max_seconds_per_iteration))
        peaks.append(matmul_peak())
        peak = max(peaks)
        for row in rows:
            if "skipped" not in row:
                row["fraction_of_peak"] = row["achieved_flops"] / peak
            log(format_row(row))
    info["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {"machine": info, "matmul_peak_flops": peak, "matmul_peaks_flops": peaks, "stages": rows,
            "config": {"latent_size": config.model.latent_size, "fmap_base": config.model.fmap_base,
                       "fmap_max": config.model.fmap_max, "steps_per_call": config.training.steps_per_call,
                       "xla": config.training.xla, "mixed_precision": config.training.mixed_precision}}


def _bench_stage(trainer, resolution, fading, seconds, max_seconds) -> dict:
    start = trainer.schedule.start_of(resolution, fading)
    images_seen = trainer.state.images_seen
    images_seen.assign(start)
    stage, step, iterator = trainer.enter(start)
    per_call = trainer.config.training.steps_per_call
    g_forward, d_forward = forward_flops(trainer.state.networks, resolution, fading)
    flops = iteration_flops(g_forward, d_forward)
    row = {"resolution": resolution, "phase": stage.phase, "batch": stage.batch_size,
           "flops_per_image": flops, "g_forward_flops": g_forward, "d_forward_flops": d_forward}
    step(iterator, tf.constant(1, tf.int64))  # trace
    begin = time.perf_counter()
    step(iterator, tf.constant(1, tf.int64))
    images_seen.numpy()
    first = time.perf_counter() - begin
    if first > max_seconds:
        return {**row, "skipped": f"one iteration took {first:.0f} s (over {max_seconds:.0f} s)"}
    calls = max(1, int(seconds / max(first * per_call, 1e-4)))
    step(iterator, tf.constant(per_call, tf.int64))
    images_seen.numpy()
    begin = time.perf_counter()
    for _ in range(calls):
        step(iterator, tf.constant(per_call, tf.int64))
    images_seen.numpy()
    elapsed = time.perf_counter() - begin
    images_per_sec = calls * per_call * stage.batch_size / elapsed
    achieved = images_per_sec * flops
    return {**row, "images_per_sec": images_per_sec, "achieved_flops": achieved,
            "iterations": calls * per_call}


def format_row(row: dict) -> str:
    head = f"{row['resolution']:>5d} {row['phase']:<7s} batch {row['batch']:<4d}"
    if "skipped" in row:
        return f"{head} skipped: {row['skipped']}"
    return (f"{head} {row['images_per_sec']:>10.1f} img/s  {row['flops_per_image'] / 1e6:>10.1f} "
            f"MFLOP/img  {row['achieved_flops'] / 1e9:>8.2f} GFLOP/s  "
            f"{100 * row['fraction_of_peak']:>5.1f}% of matmul peak")


def parse_resolutions(text: str) -> list[int]:
    from progan.resolution import is_power_of_two

    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 4 or not is_power_of_two(v) for v in values):
        raise ValueError(f"--resolutions {text}: expected powers of two >= 4, e.g. 4,8,16")
    return values
