"""What the user watches: tick lines, stats.jsonl, TensorBoard and curves.png.

Only the chief reports; other workers get a `Reporter` with ``chief=False`` that writes
nothing. Tick lines go to stdout and ``RUN/log.txt``; a tqdm bar runs when stdout is a
terminal.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np


def memory_gib() -> float:
    """Peak resident memory of this process (and the GPU's peak when there is one), GiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    try:
        import tensorflow as tf

        if tf.config.list_logical_devices("GPU"):
            peak = max(peak, tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 30)
    except (ValueError, RuntimeError):
        pass
    return peak


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

                self._bar = tqdm(total=round(total_kimg, 3), initial=round(start_kimg, 3),
                                 unit="kimg", dynamic_ncols=True, leave=False)

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
            self._bar.update(max(0.0, round(kimg - self._bar.n, 3)))

    def tick(self, stats: dict) -> None:
        """One tick: a log line, a stats.jsonl record and TensorBoard scalars."""
        if not self.chief:
            return
        self.log(format_tick(stats))
        self.run.append_stats(stats)
        writer = self._writer()
        import tensorflow as tf

        with writer.as_default(step=int(stats["images_seen"])):
            for key, value in stats.items():
                if isinstance(value, (int, float)) and key != "images_seen":
                    tf.summary.scalar(key.replace(".", "/"), value)
        writer.flush()

    def images(self, name: str, grid: np.ndarray, images_seen: int) -> None:
        """A uint8 grid to TensorBoard."""
        if not self.chief:
            return
        import tensorflow as tf

        with self._writer().as_default(step=int(images_seen)):
            tf.summary.image(name, grid[None])

    def _writer(self):
        if self._summary is None:
            import tensorflow as tf

            self._summary = tf.summary.create_file_writer(str(self.run_dir))
        return self._summary

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._summary is not None:
            self._summary.close()


def format_tick(stats: dict) -> str:
    alpha = f" alpha {stats['alpha']:.3f}" if stats.get("fading") else ""
    return (f"tick {stats['tick']:<4d} kimg {stats['kimg']:<9.1f} res {stats['resolution']:<4d}"
            f"{stats['phase']:<7s}{alpha} loss D {stats['loss_d']:+.4f} G {stats['loss_g']:+.4f} "
            f"gp {stats['penalty']:.4f} sec/tick {stats['sec_per_tick']:<7.1f} "
            f"sec/kimg {stats['sec_per_kimg']:<7.3f} img/s {stats['images_per_sec']:<8.1f} "
            f"mem {stats['memory_gib']:.2f}GiB skipped {stats['skipped_steps']}")


def plot_curves(run, boundaries_kimg: list[float]) -> Path | None:
    """RUN/curves.png: losses and images/s against kimg, stage boundaries marked."""
    stats = run.read_stats()
    run_dir = run.path
    if not stats:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kimg = [s["kimg"] for s in stats]
    figure, (losses, speed) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    losses.plot(kimg, [s["loss_d"] for s in stats], label="D loss")
    losses.plot(kimg, [s["loss_g"] for s in stats], label="G loss")
    losses.plot(kimg, [s["penalty"] for s in stats], label="gradient penalty")
    losses.set_ylabel("loss")
    losses.legend(loc="upper right")
    speed.plot(kimg, [s["images_per_sec"] for s in stats], color="tab:green")
    speed.set_ylabel("images / s")
    speed.set_xlabel("kimg")
    for axis in (losses, speed):
        for boundary in boundaries_kimg:
            if boundary <= max(kimg):
                axis.axvline(boundary, color="grey", linestyle=":", linewidth=1)
        axis.grid(alpha=0.3)
    figure.suptitle(f"{Path(run_dir).name}: training curves (dotted: stage boundaries)")
    figure.tight_layout()
    path = Path(run_dir) / "curves.png"
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
