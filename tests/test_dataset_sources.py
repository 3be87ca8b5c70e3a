"""progan.dataset.sources: CelebA discovery and checks, image folders, TensorFlow Datasets."""

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from dataset_fixtures import make_celeba_like_images, read_records

from progan.dataset.format import DatasetError
from progan.dataset.sources import ImageFolderSource, TfdsSource, celeba_source, reference_order
from progan.dataset.writer import write_dataset


def test_reference_order_matches_shuffled_arange():
    order = np.arange(50)
    np.random.RandomState(123).shuffle(order)
    np.testing.assert_array_equal(reference_order(50), order)


def test_celeba_source_checks(tmp_path):
    with pytest.raises(DatasetError, match=r"^CELEBA .*nowhere: expected a directory of 178x218 JPEG/PNG"):
        celeba_source(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="expected a directory"):
        celeba_source(tmp_path / "notes.txt")
    make_celeba_like_images(tmp_path / "img_align_celeba", 3, suffix=".jpg")
    with pytest.raises(DatasetError, match=r"found 3 images, expected 202,599 \(pass --max-images"):
        celeba_source(tmp_path)
    source = celeba_source(tmp_path, max_images=2)
    assert source.count == 2 and source.files[0].endswith("000001.jpg")
    with pytest.raises(DatasetError, match="--cx 30 --cy 121"):
        celeba_source(tmp_path, cx=30, max_images=2)


def _save(image, path, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def expected_square(path, resolution):
    """Independent statement: Pillow RGB, centre square crop, Lanczos resize."""
    image = PIL.Image.open(path)
    if image.mode == "P":
        image = image.convert("RGBA")
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    box = ((width - side) // 2, (height - side) // 2, (width - side) // 2 + side, (height - side) // 2 + side)
    return np.asarray(image.crop(box).resize((resolution, resolution), PIL.Image.LANCZOS))


def test_image_folder_converts_modes_crops_and_resizes(tmp_path):
    rng = np.random.default_rng(0)
    rgb = PIL.Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8))
    files = [
        _save(rgb, tmp_path / "in" / "a_rgb.png"),
        _save(rgb.convert("L"), tmp_path / "in" / "sub" / "b_gray.jpg"),
        _save(rgb.convert("RGBA"), tmp_path / "in" / "sub" / "deeper" / "c_rgba.png"),
        _save(rgb.convert("P"), tmp_path / "in" / "d_palette.png"),
        _save(rgb.convert("CMYK"), tmp_path / "in" / "e_cmyk.jpg"),
        _save(rgb, tmp_path / "in" / "f.webp", lossless=True),
    ]
    (tmp_path / "in" / "readme.txt").write_text("not an image")
    source = ImageFolderSource(tmp_path / "in", 16)
    manifest = write_dataset(tmp_path / "out", source, workers=1, progress=False)
    assert manifest["image_count"] == 6 and manifest["skipped_count"] == 1
    assert manifest["skipped"][0]["file"].endswith("readme.txt")
    listed = sorted([str(p) for p in files] + [str(tmp_path / "in" / "readme.txt")])
    order = [listed[i] for i in reference_order(len(listed)) if not listed[i].endswith(".txt")]
    records = read_records(tmp_path / "out" / "out-r04.tfrecords")
    for path, (shape, data) in zip(order, records):
        assert shape == (3, 16, 16)
        image = np.frombuffer(data, np.uint8).reshape(3, 16, 16).transpose(1, 2, 0)
        np.testing.assert_array_equal(image, expected_square(path, 16), err_msg=path)


def test_image_folder_checks(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        ImageFolderSource(tmp_path / "missing", 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="contains no files"):
        ImageFolderSource(tmp_path / "empty", 32)
    with pytest.raises(DatasetError, match="resolution 48: expected a power of two"):
        ImageFolderSource(tmp_path, 48)


def test_tfds_celeb_a_offline_with_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        source = TfdsSource("celeb_a", split="train")
        manifest = write_dataset(tmp_path / "tfds", source, workers=2, max_resolution=64,
                                 progress=False)
        encoded = tfds.load("celeb_a", split="train", shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
        # Pillow/libjpeg-turbo decoding is TF's INTEGER_ACCURATE DCT (TF's default differs).
        expected = [tf.io.decode_jpeg(example["image"], dct_method="INTEGER_ACCURATE").numpy()
                    for example in encoded]
        with pytest.raises(DatasetError, match="--image-key picture"):
            TfdsSource("celeb_a", image_key="picture")
    assert manifest["image_count"] == 6 and manifest["order"] == "source"
    assert manifest["source"]["name"] == "celeb_a" and manifest["crop"]["size"] == 128
    records = read_records(tmp_path / "tfds" / "tfds-r06.tfrecords")
    for image, (shape, data) in zip(expected, records):
        crop = image[57:185, 25:153].astype(np.float64)
        level = np.rint(crop.reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))).astype(np.uint8)
        assert shape == (3, 64, 64)
        np.testing.assert_array_equal(np.frombuffer(data, np.uint8).reshape(3, 64, 64),
                                      level.transpose(2, 0, 1))
