"""progan.dataset.synthetic: deterministic procedural faces, built once."""

import json

import numpy as np
import pytest

from progan.dataset.format import DatasetError
from progan.dataset.reader import read_images
from progan.dataset.synthetic import SyntheticSource, draw_face, ensure_synthetic


def test_draw_face_is_deterministic_and_varied():
    first = draw_face(np.random.default_rng([3, 0]), 32)
    again = draw_face(np.random.default_rng([3, 0]), 32)
    other = draw_face(np.random.default_rng([3, 1]), 32)
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other).mean() > 10
    # Face structure: the centre (head) differs from the corners (background) on average.
    faces = np.stack([draw_face(np.random.default_rng([0, i]), 32) for i in range(16)]).astype(float)
    assert faces.std(axis=0).mean() > 20  # colours vary between images
    assert faces[:, 4:28, 4:28].std(axis=(1, 2)).mean() > 15  # structure inside each image


@pytest.mark.parametrize("count, resolution, seed, attributes, sha256_start", [
    (48, 32, 0, "basic", "ef9f89d8181068c1"),  # the demo's and the quality benchmark's set
    (24, 8, 3, "basic", "7b1b493e5dc64543"),
    (40, 32, 2, "extended", "81ba0e7e804b7292"),
])
def test_the_faces_stay_byte_for_byte_what_the_records_were_measured_on(count, resolution, seed,
                                                                         attributes, sha256_start):
    """Every SWD record in docs/quality was scored on these pixels: a change of the drawing
    (or of numpy's streams) changes the data set, and must show here."""
    import hashlib

    source = SyntheticSource(count, resolution, seed=seed, attributes=attributes)
    images = np.stack([source.load(index)[1] for index in range(count)])
    assert hashlib.sha256(images.tobytes()).hexdigest()[:16] == sha256_start


def test_ensure_synthetic_builds_once_and_independent_of_workers(tmp_path):
    path = ensure_synthetic(tmp_path / "synth", num_images=24, resolution=16, seed=5,
                            workers=2, progress=False)
    manifest = json.loads((path / "dataset.json").read_text())
    assert manifest["image_count"] == 24 and manifest["resolution"] == 16
    assert [level["resolution"] for level in manifest["levels"]] == [16, 8, 4]
    stamp = (path / "dataset.json").stat().st_mtime_ns
    assert ensure_synthetic(path, num_images=24, resolution=16, seed=5) == path
    assert (path / "dataset.json").stat().st_mtime_ns == stamp

    serial = ensure_synthetic(tmp_path / "serial", num_images=24, resolution=16, seed=5,
                              workers=1, progress=False)
    serial_manifest = json.loads((serial / "dataset.json").read_text())
    assert [level["sha256"] for level in serial_manifest["levels"]] == \
        [level["sha256"] for level in manifest["levels"]]
    expected = np.stack([SyntheticSource(24, 16, 5).load(i)[1] for i in range(24)])
    np.testing.assert_array_equal(read_images(path, 16, "all"), expected)

    ensure_synthetic(path, num_images=12, resolution=16, seed=5, progress=False)
    assert json.loads((path / "dataset.json").read_text())["image_count"] == 12


def test_ensure_synthetic_refuses_to_replace_other_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="not a synthetic dataset"):
        ensure_synthetic(tmp_path / "mine", num_images=4, resolution=8)
    assert (tmp_path / "mine" / "photo.png").exists()
