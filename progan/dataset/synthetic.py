"""A procedural face dataset built into the package, for demos and tests.

Each image is drawn from its own random stream ``numpy.random.default_rng([seed,
index])``, so the set does not depend on the number of workers. A face is a
few ellipses — background gradient and blobs, shoulders, hair, head with
shading, eyes with irises, eyebrows, nose, mouth — with random colours, pose
(rotation, offset) and scale, drawn 4x supersampled and box-filtered, plus
fine grain: structure at every scale from 4x4 up.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from progan.dataset.format import MANIFEST_NAME, DatasetError, log2_resolution
from progan.dataset.sources import ImageSource

SUPERSAMPLE = 4


def _ellipse(x, y, cx, cy, rx, ry):
    """Normalised squared distance ((x-cx)/rx)^2 + ((y-cy)/ry)^2 (<= 1 inside)."""
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2


@dataclass(frozen=True)
class FaceParameters:
    """Every random choice of one face except its grain (see ``face_parameters``)."""

    top: np.ndarray
    bottom: np.ndarray
    blobs: tuple  # ((centre [2], radii [2], colour [3]), ...) x 3
    scale: float
    angle: float
    shift: np.ndarray
    skin_tone: float  # brightness of the skin, 0.45 (dark) .. 1.05 (pale)
    skin: np.ndarray
    hair: np.ndarray
    clothes: np.ndarray
    head_w: float
    head_h: float
    hair_extra: float
    fringe_h: float
    eye_y: float
    eye_dx: float
    iris: np.ndarray
    gaze: float
    mouth_y: float
    lips: np.ndarray
    mouth_w: float
    mouth_h: float


def face_parameters(rng):
    """The random choices of one face, drawn from ``rng`` in the order the images were
    first drawn in (that order fixes every image of every synthetic set: keep it)."""
    top, bottom = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    blobs = tuple((rng.uniform(-1, 1, 2), rng.uniform(0.2, 0.6, 2), rng.uniform(0, 1, 3))
                  for _ in range(3))
    scale = rng.uniform(0.85, 1.1)
    angle = rng.uniform(-0.25, 0.25)
    shift = rng.uniform(-0.08, 0.08, 2)
    skin_tone = rng.uniform(0.45, 1.05)
    skin = np.array([0.95, 0.78, 0.62]) * skin_tone + rng.uniform(-0.05, 0.05, 3)
    hair = rng.uniform(0, 0.6, 3) * rng.uniform(0.2, 1.0)
    clothes = rng.uniform(0, 1, 3)
    head_w = rng.uniform(0.42, 0.52)
    head_h = rng.uniform(0.55, 0.65)
    hair_extra, fringe_h = rng.uniform(0.0, 0.15), rng.uniform(0.18, 0.32)
    eye_y = rng.uniform(-0.12, -0.02)
    eye_dx = rng.uniform(0.17, 0.23)
    iris, gaze = rng.uniform(0, 0.6, 3), rng.uniform(-0.03, 0.03)
    mouth_y = rng.uniform(0.26, 0.34)
    lips = np.array([0.75, 0.25, 0.3]) * rng.uniform(0.6, 1.0)
    mouth_w = rng.uniform(0.12, 0.18)
    mouth_h = rng.uniform(0.03, 0.07)
    return FaceParameters(top, bottom, blobs, scale, angle, shift, skin_tone, skin, hair, clothes,
                          head_w, head_h, hair_extra, fringe_h, eye_y, eye_dx, iris, gaze,
                          mouth_y, lips, mouth_w, mouth_h)


def draw_face(rng, resolution):
    """One synthetic face, uint8 [resolution, resolution, 3], from a numpy Generator."""
    face = face_parameters(rng)
    size = resolution * SUPERSAMPLE
    grid = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    y, x = np.meshgrid(grid, grid, indexing="ij")
    canvas = np.empty((size, size, 3), np.float32)

    canvas[:] = face.top + (face.bottom - face.top) * ((y[..., None] + 1) / 2)
    for centre, radii, colour in face.blobs:
        blob = _ellipse(x, y, *centre, *radii) <= 1
        canvas[blob] = canvas[blob] * 0.6 + colour * 0.4

    cos, sin = np.cos(face.angle), np.sin(face.angle)
    # Face coordinates: the face is drawn upright in (u, v), then posed.
    u = ((x - face.shift[0]) * cos + (y - face.shift[1]) * sin) / face.scale
    v = (-(x - face.shift[0]) * sin + (y - face.shift[1]) * cos) / face.scale
    _draw_head(canvas, u, v, face)
    canvas += rng.normal(0, 0.02, canvas.shape).astype(np.float32)
    pixels = canvas.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)


def _draw_head(canvas, u, v, face):
    """Shoulders, neck, hair, head, eyes, eyebrows, nose and mouth, in face coordinates."""

    def paint(mask, colour):
        canvas[mask] = colour

    skin, hair, head_w, head_h = face.skin, face.hair, face.head_w, face.head_h
    paint(_ellipse(u, v, 0, 1.05, 0.85, 0.45) <= 1, face.clothes)
    paint(_ellipse(u, v, 0, 0.55, 0.16, 0.3) <= 1, skin * 0.85)
    paint(_ellipse(u, v, 0, -0.12, head_w + 0.08, head_h + face.hair_extra) <= 1, hair)
    head = _ellipse(u, v, 0, 0.0, head_w, head_h)
    inside = head <= 1
    canvas[inside] = np.clip(skin * (1.05 - 0.3 * head[inside, None]), 0, 1)
    fringe = (_ellipse(u, v, 0, -head_h * 0.95, head_w * 1.05, face.fringe_h) <= 1) & inside
    paint(fringe, hair)

    eye_y, eye_dx, gaze = face.eye_y, face.eye_dx, face.gaze
    for side in (-1, 1):
        paint(_ellipse(u, v, side * eye_dx, eye_y, 0.09, 0.05) <= 1, (0.97, 0.97, 0.95))
        paint(_ellipse(u, v, side * eye_dx + gaze, eye_y, 0.045, 0.045) <= 1, face.iris)
        paint(_ellipse(u, v, side * eye_dx + gaze, eye_y, 0.02, 0.02) <= 1, (0.05, 0.05, 0.05))
        paint(_ellipse(u, v, side * eye_dx, eye_y - 0.1, 0.1, 0.022) <= 1, hair * 0.8)
    paint(_ellipse(u, v, 0, eye_y + 0.18, 0.045, 0.08) <= 1, skin * 0.8)
    mouth_y, lips = face.mouth_y, face.lips
    smile = _ellipse(u, v, 0, mouth_y, face.mouth_w, face.mouth_h) <= 1
    paint(smile & (v >= mouth_y - 0.01), lips)
    paint(smile & (v < mouth_y - 0.01), lips * 0.85)


class SyntheticSource(ImageSource):
    """``num_images`` synthetic faces at ``resolution``, image i drawn from rng([seed, i])."""

    kind = "synthetic"
    order = "generated"

    def __init__(self, num_images, resolution, seed=0):
        log2_resolution(resolution)
        if num_images < 1:
            raise DatasetError(f"--num-images {num_images}: expected a positive number")
        self.count, self.resolution, self.seed = int(num_images), int(resolution), int(seed)
        self.description = {"kind": self.kind, "num_images": self.count,
                            "resolution": self.resolution, "seed": self.seed}

    def items(self):
        return iter(range(self.count))

    def load(self, item):
        return f"synthetic[{item}]", draw_face(np.random.default_rng([self.seed, item]), self.resolution)


def ensure_synthetic(out_dir, num_images=4096, resolution=32, seed=0, workers=None, progress=True):
    """Build the synthetic dataset at ``out_dir`` once; returns ``Path(out_dir)``.

    If ``out_dir/dataset.json`` describes a synthetic set with the same
    parameters, nothing is done. A synthetic set with other parameters is
    rebuilt; any other existing directory is an error (it is not ours to replace).
    """
    from progan.dataset.writer import write_dataset

    out_dir = Path(out_dir)
    source = SyntheticSource(num_images, resolution, seed)
    manifest_path = out_dir / MANIFEST_NAME
    if out_dir.exists():
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        if manifest.get("source") == source.description:
            return out_dir
        if manifest.get("source", {}).get("kind") != SyntheticSource.kind:
            raise DatasetError(f"{out_dir}: exists and is not a synthetic dataset; not replacing it")
    write_dataset(out_dir, source, workers=workers, overwrite=True, progress=progress)
    return out_dir
