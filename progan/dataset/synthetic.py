"""A procedural face dataset built into the package, for demos and tests.

Each image is drawn from its own random stream ``numpy.random.default_rng([seed,
index])``, so the set does not depend on the number of workers. A face is a
few ellipses — background gradient and blobs, shoulders, hair, head with
shading, eyes with irises, eyebrows, nose, mouth — with random colours, pose
(rotation, offset) and scale, drawn 4x supersampled and box-filtered, plus
fine grain: structure at every scale from 4x4 up.

Attributes (labels, multi_label), chosen so that the default set's images do not change:
the demo, the quality benchmark and the committed figures use it, and they stay
byte-identical to the images drawn before attributes existed.

- ``basic`` (the default): ``Dark_Hair`` (the hair colour's luminance 0.299 R + 0.587 G
  + 0.114 B is below 0.15; ~47 % of faces) and ``Pale_Skin`` (the skin's brightness
  factor, drawn from 0.45..1.05, is above 0.85; ~33 %). Both are read off choices every
  face already makes (``face_parameters``), so the images are exactly those without labels.
- ``extended``: the basic two plus ``Eyeglasses`` (tinted lenses in thick dark frames)
  and ``Smiling`` (a wide open mouth showing teeth), each drawn in half the faces from a
  second stream ``default_rng([seed, index, 1])``. They change the pictures, so they are
  a different data set (its manifest says ``"attributes": "extended"``); a face with
  neither is the basic face, byte for byte.
- ``none``: no labels file (the images are the basic ones).

All four are visible at 16x16: a small CNN (two conv layers) trained on 2,500 faces finds
them in unseen faces 92-100 % of the time at 16x16 and 32x32 (Dark_Hair and Pale_Skin are
thresholds on a continuous colour, so faces near the threshold are ambiguous, as in photos).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from progan.dataset.format import MANIFEST_NAME, DatasetError, log2_resolution
from progan.dataset.sources import ImageSource, LabelSpec

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


@dataclass(frozen=True)
class DrawnFeatures:
    """Features only the ``extended`` attribute set draws (see ``drawn_features``)."""

    eyeglasses: bool
    smiling: bool
    frame: np.ndarray  # colour of the glasses' frame
    tint: float  # how dark the lenses are: 0.15 (clear) .. 0.9 (sunglasses)


def drawn_features(rng):
    """Glasses and a smile, from their own random stream (so the face's own choices, and
    every face without them, are the same as in the basic set)."""
    eyeglasses, smiling = rng.uniform(0, 1, 2) < 0.5
    return DrawnFeatures(bool(eyeglasses), bool(smiling), rng.uniform(0, 0.25, 3),
                         rng.uniform(0.15, 0.9))


def draw_face(rng, resolution, features=None):
    """One synthetic face, uint8 [resolution, resolution, 3], from a numpy Generator;
    ``features``: DrawnFeatures to add (glasses, a smile), or None for the basic face."""
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
    _draw_head(canvas, u, v, face, features is not None and features.smiling)
    if features is not None and features.eyeglasses:
        _draw_glasses(canvas, u, v, face, features)
    canvas += rng.normal(0, 0.02, canvas.shape).astype(np.float32)
    pixels = canvas.reshape(resolution, SUPERSAMPLE, resolution, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return np.clip(np.rint(pixels * 255), 0, 255).astype(np.uint8)


def _draw_head(canvas, u, v, face, smiling=False):
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
    if smiling:  # a wide open smile: a half ellipse of lips around a row of teeth
        top = mouth_y - 0.05
        paint((_ellipse(u, v, 0, top, 0.25, 0.15) <= 1) & (v >= top), lips * 0.6)
        paint((_ellipse(u, v, 0, top, 0.2, 0.08) <= 1) & (v >= top), (0.97, 0.96, 0.92))
        return
    smile = _ellipse(u, v, 0, mouth_y, face.mouth_w, face.mouth_h) <= 1
    paint(smile & (v >= mouth_y - 0.01), lips)
    paint(smile & (v < mouth_y - 0.01), lips * 0.85)


def _draw_glasses(canvas, u, v, face, features):
    """Two tinted lenses in thick frames, a bridge and the temples, over the eyes."""
    eye_y, eye_dx = face.eye_y, face.eye_dx
    for side in (-1, 1):
        ring = _ellipse(u, v, side * eye_dx, eye_y, 0.17, 0.13)
        lens = _ellipse(u, v, side * eye_dx, eye_y, 0.13, 0.09) <= 1
        canvas[lens] = canvas[lens] * (1 - features.tint) + 0.05 * features.tint
        canvas[(ring <= 1) & ~lens] = features.frame
        temple = ((np.abs(v - eye_y + 0.02) <= 0.025) & (side * u >= eye_dx + 0.15)
                  & (side * u <= face.head_w + 0.04))
        canvas[temple] = features.frame
    bridge = (np.abs(v - eye_y + 0.02) <= 0.025) & (np.abs(u) <= eye_dx - 0.12)
    canvas[bridge] = features.frame


DARK_HAIR_LUMINANCE = 0.15
PALE_SKIN_TONE = 0.85
BASIC_ATTRIBUTES = ("Dark_Hair", "Pale_Skin")
EXTENDED_ATTRIBUTES = BASIC_ATTRIBUTES + ("Eyeglasses", "Smiling")
ATTRIBUTE_SETS = ("basic", "extended", "none")


def face_attributes(face, features=None):
    """0/1 values of the attributes of a face: BASIC_ATTRIBUTES, or EXTENDED_ATTRIBUTES when
    ``features`` (DrawnFeatures) are given."""
    values = [face.hair @ np.array([0.299, 0.587, 0.114]) < DARK_HAIR_LUMINANCE,
              face.skin_tone > PALE_SKIN_TONE]
    if features is not None:
        values += [features.eyeglasses, features.smiling]
    return np.array(values, np.float32)


class SyntheticSource(ImageSource):
    """``num_images`` synthetic faces at ``resolution``, image i drawn from rng([seed, i]);
    ``attributes``: "basic", "extended" or "none" (see the module docstring)."""

    kind = "synthetic"
    order = "generated"

    def __init__(self, num_images, resolution, seed=0, attributes="basic"):
        log2_resolution(resolution)
        if num_images < 1:
            raise DatasetError(f"--num-images {num_images}: expected a positive number")
        if attributes not in ATTRIBUTE_SETS:
            raise DatasetError(f"--attributes {attributes}: expected one of {', '.join(ATTRIBUTE_SETS)}")
        self.count, self.resolution, self.seed = int(num_images), int(resolution), int(seed)
        self.extended = attributes == "extended"
        # The description names only what changes the images: basic and none are one image set.
        self.description = {"kind": self.kind, "num_images": self.count,
                            "resolution": self.resolution, "seed": self.seed}
        if self.extended:
            self.description["attributes"] = attributes
        if attributes != "none":
            names = EXTENDED_ATTRIBUTES if self.extended else BASIC_ATTRIBUTES
            self.labels = LabelSpec(names, "multi_label", f"synthetic faces ({attributes} attributes)")

    def items(self):
        return iter(range(self.count))

    def _features(self, item):
        return drawn_features(np.random.default_rng([self.seed, item, 1])) if self.extended else None

    def load(self, item):
        image = draw_face(np.random.default_rng([self.seed, item]), self.resolution, self._features(item))
        return f"synthetic[{item}]", image

    def label(self, item):
        # The face's choices are drawn again (cheap: no pixels), in the order draw_face draws them.
        return face_attributes(face_parameters(np.random.default_rng([self.seed, item])),
                               self._features(item))


def ensure_synthetic(out_dir, num_images=4096, resolution=32, seed=0, workers=None, progress=True,
                     attributes="basic"):
    """Build the synthetic dataset at ``out_dir`` once; returns ``Path(out_dir)``.

    If ``out_dir/dataset.json`` describes a synthetic set with the same
    parameters, nothing is done (a set built before labels existed keeps having none: its
    images are the same). A synthetic set with other parameters is rebuilt; any other
    existing directory is an error (it is not ours to replace).
    """
    from progan.dataset.writer import write_dataset

    out_dir = Path(out_dir)
    source = SyntheticSource(num_images, resolution, seed, attributes)
    manifest_path = out_dir / MANIFEST_NAME
    if out_dir.exists():
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        if manifest.get("source") == source.description:
            return out_dir
        if manifest.get("source", {}).get("kind") != SyntheticSource.kind:
            raise DatasetError(f"{out_dir}: exists and is not a synthetic dataset; not replacing it")
    write_dataset(out_dir, source, workers=workers, overwrite=True, progress=progress)
    return out_dir
