"""progan.dataset.reader: values, splits, seeded order, exact resume, reference datasets."""

import json

import numpy as np
import pytest
from dataset_fixtures import make_celeba_like_images, reference_create_celeba

from progan.dataset.format import DatasetError
from progan.dataset.reader import load, open_dataset, read_images, stream_indices
from progan.dataset.synthetic import SyntheticSource
from progan.dataset.writer import write_dataset

COUNT, TRAIN = 40, 30


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("reader") / "faces"
    write_dataset(path, SyntheticSource(COUNT, 16, seed=2), workers=1, train_count=TRAIN, progress=False)
    return path


@pytest.fixture(scope="module")
def records(dataset):
    """uint8 [COUNT, 16, 16, 3] of every record, drawn straight from the source."""
    return np.stack([SyntheticSource(COUNT, 16, seed=2).load(i)[1] for i in range(COUNT)])


def take(dataset, batches):
    return [batch.numpy() for batch in dataset.take(batches)]


def test_read_images_and_splits(dataset, records):
    np.testing.assert_array_equal(read_images(dataset, 16, "all"), records)
    np.testing.assert_array_equal(read_images(dataset, 16, "train"), records[:TRAIN])
    np.testing.assert_array_equal(read_images(dataset, 16, "test", count=4), records[TRAIN:TRAIN + 4])
    lower = read_images(dataset, 8, "all", count=3).astype(np.float64)
    expected = np.rint(records[:3].astype(np.float64).reshape(3, 8, 2, 8, 2, 3).mean(axis=(2, 4)))
    np.testing.assert_array_equal(lower, expected)
    with pytest.raises(DatasetError, match="test split has 10 images, 11 requested"):
        read_images(dataset, 16, "test", count=11)
    with pytest.raises(DatasetError, match="split 'val'"):
        read_images(dataset, 16, "val")


def test_load_values_in_file_order_without_shuffle(dataset, records):
    batches = take(load(dataset, 16, "test", batch_size=4, shuffle=False), 3)
    assert batches[0].dtype == np.float32 and batches[0].shape == (4, 16, 16, 3)
    stream = np.concatenate(batches)
    expected = records[[30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 30, 31]] / 127.5 - 1.0
    np.testing.assert_allclose(stream, expected, rtol=0, atol=1e-6)


def test_each_epoch_is_a_seeded_permutation(dataset, records):
    stream = np.concatenate(take(load(dataset, 16, "train", batch_size=6, seed=9), 10))  # 2 epochs
    as_uint8 = np.rint((stream + 1.0) * 127.5).astype(np.uint8)
    flat = records[:TRAIN].reshape(TRAIN, -1)
    index = [int(np.flatnonzero((flat == image.reshape(-1)).all(axis=1))[0]) for image in as_uint8]
    assert sorted(index[:TRAIN]) == list(range(TRAIN)) and sorted(index[TRAIN:]) == list(range(TRAIN))
    assert index[:TRAIN] != index[TRAIN:] and index[:TRAIN] != list(range(TRAIN))
    again = np.concatenate(take(load(dataset, 16, "train", batch_size=6, seed=9), 10))
    np.testing.assert_array_equal(stream, again)
    other = np.concatenate(take(load(dataset, 16, "train", batch_size=6, seed=10), 5))
    assert not np.array_equal(stream[:TRAIN], other)


@pytest.mark.parametrize("mirror", [False, True])
def test_start_image_resumes_exactly(dataset, mirror):
    batch = 8
    full = take(load(dataset, 16, "train", batch_size=batch, mirror=mirror, seed=3), 9)  # 72 = 2.4 epochs
    resumed = take(load(dataset, 16, "train", batch_size=batch, mirror=mirror, seed=3,
                        start_image=4 * batch), 5)
    for expected, got in zip(full[4:], resumed):
        np.testing.assert_array_equal(expected, got)
    # The position is counted in images: another batch size and an odd start give the same stream.
    stream = np.concatenate(full)
    odd = np.concatenate(take(load(dataset, 16, "train", batch_size=5, mirror=mirror, seed=3,
                                   start_image=13), 10))
    np.testing.assert_array_equal(stream[13:63], odd)


def test_mirror_flips_per_image_as_a_function_of_position(dataset):
    plain = np.concatenate(take(load(dataset, 16, "train", batch_size=10, seed=4), 6))
    mirrored = np.concatenate(take(load(dataset, 16, "train", batch_size=10, seed=4, mirror=True), 6))
    flipped = np.array([np.array_equal(m, p[:, ::-1]) and not np.array_equal(m, p)
                        for m, p in zip(mirrored, plain)])
    same = np.array([np.array_equal(m, p) for m, p in zip(mirrored, plain)])
    assert (flipped | same).all()
    assert 10 < flipped.sum() < 50
    _, flips = stream_indices(4, TRAIN, np.arange(60))
    np.testing.assert_array_equal(flipped, flips)


def test_missing_resolution_and_manifest_mismatch(dataset, tmp_path):
    with pytest.raises(DatasetError, match=r"has no 32x32 level \(levels present: 4, 8, 16\)"):
        load(dataset, 32, batch_size=4)
    broken = tmp_path / "broken"
    write_dataset(broken, SyntheticSource(8, 8, seed=0), workers=1, progress=False)
    with open(broken / "broken-r02.tfrecords", "ab") as handle:
        handle.write(b"garbage")
    with pytest.raises(DatasetError, match="broken-r02.tfrecords: .* bytes but dataset.json says"):
        load(broken, 4, batch_size=2)
    manifest = json.loads((broken / "dataset.json").read_text())
    manifest["image_count"] = manifest["train_count"] = 9
    (broken / "dataset.json").write_text(json.dumps(manifest))
    (broken / "broken-r02.tfrecords").unlink()
    with pytest.raises(DatasetError, match="listed in dataset.json but missing"):
        open_dataset(broken)
    manifest["levels"] = [level for level in manifest["levels"] if level["resolution"] != 4]
    (broken / "dataset.json").write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="has 8 records, expected at least 9"):
        read_images(broken, 8, "all")


def test_reads_reference_tool_datasets(tmp_path):
    make_celeba_like_images(tmp_path / "png", 5, seed=3)
    reference_create_celeba(tmp_path / "ref", tmp_path / "png")
    with pytest.warns(UserWarning, match="no dataset.json .* all 5 records as the train split"):
        info = open_dataset(tmp_path / "ref")
    assert sorted(info.level_files) == [4, 8, 16, 32, 64, 128]
    with pytest.warns(UserWarning):
        images = read_images(tmp_path / "ref", 128, "train")
    files = sorted((tmp_path / "png").iterdir())
    import PIL.Image

    first = np.asarray(PIL.Image.open(files[np.random.RandomState(123).permutation(5)[0]]))
    np.testing.assert_array_equal(images[0], first[57:185, 25:153])
    with pytest.warns(UserWarning):
        batch = next(iter(load(tmp_path / "ref", 8, batch_size=3)))
    assert batch.shape == (3, 8, 8, 3)
