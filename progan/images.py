"""Images and latents as every part of progan shows them.

    latents = seed_latents(parse_seeds("0-7,12"), latent_size=512)   # image i <- seed i
    grid = image_grid(to_uint8(generator(latents)), columns=3)
    save_png("grid.png", grid)                                        # enlarged to >= 256 px

One convention for latents, as StyleGAN2-ADA has it: the latent of seed ``s`` is
``numpy.random.RandomState(s).standard_normal(latent_size)``, whatever else is drawn with it.
The training grids (``fakes*.png``), ``progan generate --seeds`` and ``progan interpolate
--seeds`` all use it, so any face seen during training can be drawn again by its seed.

A conditional generator also takes labels: those of seed ``s`` are row
``RandomState([s, 1]).randint(N)`` of the run's label table (the training set's labels, so
attributes come with the data's frequencies and correlations); `parse_label_request` turns
``"Smiling,Eyeglasses,-Male"`` into values that override some of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def to_uint8(images) -> np.ndarray:
    """Float images in [-1, 1] -> uint8 [0, 255] (rounded half to even, clipped)."""
    images = np.asarray(images, np.float32)
    return np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows*H, columns*W, C] grid, row-major."""
    count, height, width, channels = images.shape
    columns = columns or int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    grid = np.zeros((rows * height, columns * width, channels), np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        grid[row * height:(row + 1) * height, column * width:(column + 1) * width] = image
    return grid


def enlarge(images: np.ndarray, min_size: int) -> np.ndarray:
    """Nearest-neighbour enlargement of uint8 [..., H, W, C] by the smallest integer factor
    that makes the larger side at least ``min_size``."""
    factor = max(1, int(np.ceil(min_size / max(images.shape[-3:-1]))))
    return images.repeat(factor, axis=-3).repeat(factor, axis=-2)


def save_png(path: Path, image: np.ndarray, min_size: int = 256) -> None:
    """Save a uint8 HWC image, enlarged (nearest) to at least ``min_size`` pixels so a small
    grid can be seen (``min_size=1`` keeps it as it is)."""
    from PIL import Image

    image = enlarge(image, min_size)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


MAX_SEEDS = 1_000_000  # more than any grid, walk or metric asks for: a typo, not a request


def parse_seeds(text: str) -> list[int]:
    """``"0-7,12"`` -> ``[0, 1, ..., 7, 12]``; ranges include both ends; order is kept; at
    most `MAX_SEEDS` of them."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        first, dash, last = part.partition("-")
        try:
            start, stop = int(first), int(last if dash else first)
        except ValueError:
            raise ValueError(f"expected seeds like 0-7,12, got {text!r}") from None
        if start < 0 or stop < start or stop >= 2 ** 32:
            raise ValueError(f"expected seeds like 0-7,12 (0 <= first <= last < 2^32), got {text!r}")
        if len(seeds) + stop + 1 - start > MAX_SEEDS:
            raise ValueError(f"{text!r} names {len(seeds) + stop + 1 - start:,} seeds; expected "
                             f"at most {MAX_SEEDS:,}")
        seeds.extend(range(start, stop + 1))
    if not seeds:
        raise ValueError(f"expected seeds like 0-7,12, got {text!r}")
    return seeds


def format_seeds(seeds) -> str:
    """The inverse of `parse_seeds` for a sorted run of seeds: ``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts, seeds = [], list(seeds)
    start = previous = None
    for seed in seeds + [None]:
        if seed is not None and previous is not None and seed == previous + 1:
            previous = seed
            continue
        if start is not None:
            parts.append(str(start) if start == previous else f"{start}-{previous}")
        start = previous = seed
    return ",".join(parts)


def seed_latents(seeds, latent_size: int, truncation: float | None = None) -> np.ndarray:
    """float32 [len(seeds), latent_size]: row i is the latent of ``seeds[i]``.

    ``truncation``: the truncation trick as the thesis used it: every component whose
    magnitude exceeds ``truncation`` is drawn again from the same seed's stream until all lie
    in ``[-truncation, truncation]`` (a normal truncated at +-``truncation``; components
    already inside keep their value). Smaller thresholds give more typical, less varied images.
    """
    if truncation is not None and not truncation > 0:
        raise ValueError(f"--truncation {truncation}: expected a positive threshold")
    rows = []
    for seed in seeds:
        stream = np.random.RandomState(int(seed))
        latent = stream.standard_normal(latent_size)
        if truncation is not None:
            outside = np.abs(latent) > truncation
            while outside.any():
                latent[outside] = stream.standard_normal(int(outside.sum()))
                outside = np.abs(latent) > truncation
        rows.append(latent)
    return np.asarray(rows, np.float32).reshape(len(rows), latent_size)


def seed_labels(seeds, table: np.ndarray) -> np.ndarray:
    """float32 [len(seeds), L]: the labels of seed ``s`` are row ``RandomState([s, 1])
    .randint(len(table))`` of ``table`` (a stream apart from the latents')."""
    rows = [np.random.RandomState([int(seed), 1]).randint(len(table)) for seed in seeds]
    return np.asarray(table, np.float32)[rows].reshape(len(rows), table.shape[1])


def parse_label_request(text: str, names: list[str], flag: str = "--labels") -> dict[int, float]:
    """``"Smiling,Eyeglasses,-Male"`` -> {column: 1.0 or 0.0}; names are matched without
    regard to case; ``-NAME`` forces the label to 0. An unknown name is a ValueError that
    lists the known ones."""
    lookup = {name.lower(): index for index, name in enumerate(names)}
    wanted = {}
    for part in filter(None, (item.strip() for item in text.split(","))):
        value, name = (0.0, part[1:]) if part.startswith("-") else (1.0, part)
        if name.lower() not in lookup:
            raise ValueError(f"{flag} {text}: unknown label {name!r}; this run's labels are "
                             + ", ".join(names))
        wanted[lookup[name.lower()]] = value
    if not wanted:
        raise ValueError(f"{flag} {text!r}: expected label names, e.g. Smiling,-Male")
    return wanted


def apply_label_request(labels: np.ndarray, wanted: dict[int, float], kind: str) -> np.ndarray:
    """``labels`` with the requested columns set; for one-hot classes a requested class
    replaces the row (one class per image)."""
    labels = np.array(labels, np.float32)
    if kind == "one_hot" and any(value == 1.0 for value in wanted.values()):
        labels[:] = 0.0
    for column, value in wanted.items():
        labels[:, column] = value
    return labels


def generator_inputs(latents, labels=None):
    """What a generator model takes: the latents, or ``[latents, labels]`` when conditional."""
    return latents if labels is None else [latents, labels]
