"""Use a trained run: sample images, walk the latent space, export the generator.

Images always come from the moving-average (EMA) generator of a snapshot, at the stage the
schedule was in when the snapshot was written (its resolution and fade-in alpha):

    loaded = load_generator("runs/demo", "latest")      # or "best", "best:swd", "120" (kimg)
    images = generate(loaded.model, seeds=range(64))    # uint8 [64, R, R, C]
    frames = interpolate(loaded.model, seeds=[1, 2, 3], steps=30)
    export("runs/demo", "exported/")                    # SavedModel + generator.keras

Image ``i`` is drawn from the latent of ``seeds[i]`` (`progan.images.seed_latents`), the same
convention as the training grids, so ``generate(model, [s])`` is the face that ``interpolate``
starts from for seed ``s`` and the face at seed ``s`` of every ``fakes*.png``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np

from progan.backend import keras, tf
from progan.checkpoints import read_ema
from progan.config import Config
from progan.networks import ProGAN
from progan.images import enlarge, generator_inputs, seed_labels, seed_latents, to_uint8
from progan.schedule import Schedule, Stage
from progan.errors import ProganError
from progan.run import RunDir, check_output_dir

SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "generator.keras"
EXPORT_INFO = "export.json"


class ExportError(ProganError):
    """An export cannot be written where asked."""


class LoadedGenerator(NamedTuple):
    """The EMA generator of one snapshot: ``(model, stage, config, images_seen)``.

    ``model`` maps float32 latents [N, latent_size] to float32 images [N, R, R, C] in about
    [-1, 1], with the fade-in alpha of ``stage`` already set.
    """

    model: keras.Model
    stage: Stage
    config: Config
    images_seen: int
    labels: object = None  # a conditional run's `progan.run.LabelTable`

    def seed_labels(self, seeds):
        """The labels of ``seeds`` for a conditional run (None otherwise)."""
        return None if self.labels is None else seed_labels(seeds, self.labels.values)


def load_generator(run_dir: Path, snapshot: str | int | float = "latest",
                   networks: ProGAN | None = None, log=None) -> LoadedGenerator:
    """The EMA generator of a run's snapshot, at that snapshot's stage.

    Args:
        run_dir: a run directory (``config.json``, ``checkpoints/``).
        snapshot: ``"latest"``, ``"best"`` (by the run's primary metric), ``"best:<metric>"``
            or a kimg number; full and network snapshots both serve.
        networks: a ``ProGAN(config.model, with_discriminator=False)`` to load into instead
            of building a new one (building costs seconds; evaluating many snapshots reuses one).
        log: called with one line saying which snapshot was chosen (e.g. ``print``).
    """
    run = RunDir(run_dir)
    config = run.read().config
    images_seen, chosen = run.select_one(str(snapshot))
    if log is not None:
        log(f"using {chosen}")
    return load_snapshot(run, images_seen, config, networks)


def load_snapshot(run_dir: Path | RunDir, images_seen: int, config: Config,
                  networks: ProGAN | None = None) -> LoadedGenerator:
    """`load_generator` for the snapshot at exactly ``images_seen`` of a run with ``config``."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    snapshot = run.snapshot_at(images_seen)
    if networks is None:
        networks = ProGAN(config.model, with_discriminator=False)
    read_ema(snapshot, networks)
    stage = Schedule.of(config).stage_at(images_seen)
    networks.set_alpha(stage.alpha)
    return LoadedGenerator(networks.generator(stage.resolution, stage.fading), stage, config,
                           images_seen, run.read_labels(config.model.label_size) if config.model.label_size else None)


def latent_size_of(model: keras.Model) -> int:
    return int(model.inputs[0].shape[-1])


def _check_labels(model: keras.Model, labels, count: int):
    conditional = len(model.inputs) > 1
    if conditional and labels is None:
        raise ValueError("this generator is conditional: it needs labels (one row per image)")
    if not conditional and labels is not None:
        raise ValueError("--labels: this run is not conditional (it was trained without labels)")
    if labels is not None and len(labels) != count:
        raise ValueError(f"{len(labels)} label rows for {count} images")


def images_from_latents(model: keras.Model, latents: np.ndarray, batch_size: int = 64,
                        progress: bool = False, labels=None) -> np.ndarray:
    """uint8 [N, R, R, C] images of a generator for float32 latents [N, latent_size] (and
    labels [N, L] for a conditional one); ``progress`` shows a bar of images generated."""
    from tqdm import tqdm

    _check_labels(model, labels, len(latents))
    batches = []
    with tqdm(total=len(latents), unit="img", desc="generating", disable=not progress,
              leave=False) as bar:
        for start in range(0, len(latents), batch_size):
            window = slice(start, start + batch_size)
            inputs = generator_inputs(latents[window], None if labels is None else labels[window])
            batches.append(to_uint8(model(inputs, training=False)))
            bar.update(len(batches[-1]))
    return np.concatenate(batches)


def generate(model: keras.Model, seeds, truncation: float | None = None,
             batch_size: int = 64, progress: bool = False, labels=None) -> np.ndarray:
    """uint8 [len(seeds), R, R, C]: image i from the latent of ``seeds[i]`` (and, for a
    conditional generator, the labels row i)."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("--seeds: expected at least one seed")
    latents = seed_latents(seeds, latent_size_of(model), truncation)
    return images_from_latents(model, latents, batch_size, progress, labels)


def slerp(start: np.ndarray, end: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Spherical interpolation between two vectors [D] at fractions ``t`` [T] -> [T, D].

    ``sin((1-t) omega) / sin(omega) * start + sin(t omega) / sin(omega) * end``, omega the
    angle between them: the path keeps the norm of equal-norm endpoints and moves at a
    constant angular speed (a Gaussian latent lives near a sphere, where linear mixing would
    pass through atypically short vectors). Near-parallel endpoints fall back to a linear mix.
    """
    start, end = np.asarray(start, np.float64), np.asarray(end, np.float64)
    t = np.asarray(t, np.float64)[:, None]
    cosine = np.dot(start, end) / (np.linalg.norm(start) * np.linalg.norm(end))
    omega = np.arccos(np.clip(cosine, -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        return (1.0 - t) * start + t * end
    return (np.sin((1.0 - t) * omega) * start + np.sin(t * omega) * end) / np.sin(omega)


def interpolation_latents(seeds: list[int], latent_size: int, steps: int,
                          truncation: float | None = None) -> np.ndarray:
    """float32 [steps * (len(seeds) - 1) + 1, latent_size]: ``steps`` slerp frames from each
    seed's latent towards the next one's, then the last seed's latent."""
    if len(seeds) < 2 or steps < 1:
        raise ValueError(f"--seeds {','.join(map(str, seeds))} --steps {steps}: expected at least "
                         f"two seeds and at least one step")
    keys = seed_latents(seeds, latent_size, truncation)
    fractions = np.arange(steps) / steps
    path = [slerp(a, b, fractions) for a, b in zip(keys[:-1], keys[1:])]
    return np.concatenate(path + [keys[-1][None]]).astype(np.float32)


def interpolate(model: keras.Model, seeds: list[int], steps: int = 30,
                truncation: float | None = None, batch_size: int = 64, labels=None) -> np.ndarray:
    """uint8 frames [steps * (len(seeds) - 1) + 1, R, R, C] of a walk through the seeds'
    latents. A conditional generator takes ``labels`` [len(seeds), L], one row per seed,
    mixed linearly between them: ``seeds=[5, 5]`` with two label rows changes only the labels."""
    latents = interpolation_latents(seeds, latent_size_of(model), steps, truncation)
    if labels is not None:
        labels = np.asarray(labels, np.float32)
        fractions = (np.arange(steps) / steps)[:, None]
        path = [(1.0 - fractions) * a + fractions * b for a, b in zip(labels[:-1], labels[1:])]
        labels = np.concatenate(path + [labels[-1][None]]).astype(np.float32)
    return images_from_latents(model, latents, batch_size, labels=labels)


def save_animation(path: Path, frames: np.ndarray, fps: float = 24.0, min_size: int = 256) -> Path:
    """Write uint8 frames [T, H, W, C] as an animated GIF (Pillow, looping) or, for a ``.mp4``
    path, an H.264 video (needs the ``imageio-ffmpeg`` package). Small frames are enlarged
    (nearest) to at least ``min_size`` pixels."""
    from PIL import Image

    path = Path(path)
    frames = enlarge(frames, min_size)
    if frames.shape[-1] == 1:
        frames = frames[..., 0]
    if path.suffix.lower() == ".mp4":
        try:
            import imageio_ffmpeg
        except ImportError:
            raise ValueError(f"--out {path}: MP4 needs the imageio-ffmpeg package "
                             f"(pip install imageio-ffmpeg); or write a .gif") from None
        height, width = frames.shape[1:3]
        writer = imageio_ffmpeg.write_frames(
            str(path), (width, height), fps=fps,
            pix_fmt_in="rgb24" if frames.ndim == 4 else "gray")
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame).tobytes())
        writer.close()
        return path
    if path.suffix.lower() != ".gif":
        raise ValueError(f"--out {path}: expected a .gif or .mp4 file name")
    images = [Image.fromarray(frame) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:],
                   duration=int(round(1000 / fps)), loop=0)
    return path


class ExportedGenerator(tf.Module):
    """A generator as a ``tf.Module`` whose ``generate`` signature maps float32 latents
    [None, latent_size] to uint8 images [None, R, R, C] (rounded, clipped to 0-255)."""

    def __init__(self, model: keras.Model):
        super().__init__(name="progan_generator")
        self.model = model
        signature = [tf.TensorSpec([None, latent_size_of(model)], tf.float32, name="latents")]
        if len(model.inputs) > 1:  # conditional: latents and labels
            signature.append(tf.TensorSpec([None, int(model.inputs[1].shape[-1])], tf.float32,
                                           name="labels"))
        self.generate = tf.function(self._generate, input_signature=signature)

    def _generate(self, latents, labels=None):
        images = self.model(generator_inputs(latents, labels), training=False)
        # tf.round rounds half to even, as np.rint in to_uint8 does.
        return {"images": tf.cast(tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0.0, 255.0),
                                  tf.uint8)}


def export(run_dir: Path, out: Path, snapshot: str | int | float = "latest", log=None) -> dict:
    """Write a snapshot's EMA generator (at its stage) to ``out``.

    * ``out/saved_model/``: a TensorFlow SavedModel with the ``serving_default`` signature
      ``latents`` float32 [None, latent_size] -> ``images`` uint8 [None, R, R, C]; it loads
      with plain ``tf.saved_model.load`` (no progan needed);
    * ``out/generator.keras``: the generator rebuilt from Keras's built-in layers
      (`progan.portable`), float32 latents -> float32 images in about [-1, 1]; it loads with
      plain ``keras.saving.load_model`` (no progan needed);
    * ``out/export.json``: the run, snapshot, kimg, resolution, alpha, model config and how to
      load each file.

    ``out`` must be new, empty, or an earlier export (its export.json is there): nothing
    else is ever replaced. Returns the description.
    """
    from progan.portable import portable_generator

    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / EXPORT_INFO).is_file())):
        raise ExportError(f"--out {out}: exists and is not an earlier export (no {EXPORT_INFO}); "
                          "choose a new or empty directory")
    check_output_dir(out, "--out")
    loaded = load_generator(run_dir, snapshot, log=log)
    saved_model, keras_file = out / SAVED_MODEL_DIR, out / KERAS_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
        if saved_model.exists():
            shutil.rmtree(saved_model)
        module = ExportedGenerator(loaded.model)
        tf.saved_model.save(module, str(saved_model),
                            signatures={"serving_default": module.generate})
        portable_generator(loaded.model).save(keras_file)
    except (OSError, tf.errors.OpError) as error:  # a full disk, or it went read-only meanwhile
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise ExportError(f"--out {out}: cannot write the export ({type(error).__name__}: "
                          f"{first})") from None
    stage = loaded.stage
    description = {
        "run": str(run_dir.resolve()), "snapshot": RunDir(run_dir).snapshot_at(loaded.images_seen).name,
        "images_seen": loaded.images_seen, "kimg": loaded.images_seen / 1000,
        "resolution": stage.resolution, "fading": stage.fading, "alpha": stage.alpha,
        "latent_size": loaded.config.model.latent_size,
        "num_channels": loaded.config.model.num_channels,
        "labels": None if loaded.labels is None else {"names": list(loaded.labels.names),
                                                      "kind": loaded.labels.kind},
        "saved_model": str(saved_model), "keras": str(keras_file),
        "how_to_load": {
            "saved_model": "tf.saved_model.load(path).signatures['serving_default']"
                           "(latents=float32 [N, latent_size], and labels=float32 [N, L] for a "
                           "conditional run)['images'] -> uint8 [N, R, R, C]; TensorFlow only",
            "keras": "keras.saving.load_model(path)(latents, or [latents, labels] for a "
                     "conditional run) -> float32 images in about [-1, 1]; "
                     "built-in Keras layers only, no progan needed"},
        "model": loaded.config.to_dict()["model"],
    }
    (out / EXPORT_INFO).write_text(json.dumps(description, indent=2) + "\n")
    return description
