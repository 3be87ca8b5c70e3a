"""Labels in the data set format: CelebA's attributes, folder classes, TFDS attributes and the
synthetic faces' attributes, written in record order and read back by read_labels and load."""

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from dataset_fixtures import make_celeba_like_images, reference_create_celeba, write_celeba_attributes

from progan.dataset.cli import main
from progan.dataset.format import DatasetError, file_sha256
from progan.dataset.reader import load, open_dataset, read_images, read_labels, stream_indices
from progan.dataset.sources import ImageFolderSource, celeba_source, reference_order
from progan.dataset.synthetic import SyntheticSource, ensure_synthetic
from progan.dataset.writer import write_dataset

COUNT = 12


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    """CelebA look-alikes: JPEGs with list_attr_celeba.txt in the parent folder, and the
    attribute values (-1/1) in sorted file order."""
    root = tmp_path_factory.mktemp("labels") / "CelebA"
    files = make_celeba_like_images(root / "img_align_celeba", COUNT, seed=4, suffix=".jpg")
    names, values = write_celeba_attributes(root / "list_attr_celeba.txt",
                                            [os.path.basename(f) for f in files])
    return root, names, values


def one_line_error(call, *names):
    """Run ``call``, expecting a one-line DatasetError that names every one of ``names``."""
    with pytest.raises(DatasetError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and all(str(name) in message for name in names), message
    return message


def test_celeba_attributes_follow_the_record_order_past_skipped_images(celeba, tmp_path, capsys):
    root, names, values = celeba
    folder = tmp_path / "img_align_celeba"
    shutil.copytree(root / "img_align_celeba", folder)
    shutil.copy(root / "list_attr_celeba.txt", tmp_path)  # beside the folder
    (folder / "000004.jpg").write_bytes(b"not a picture")  # skipped: it must have no row
    manifest = write_dataset(tmp_path / "out", celeba_source(folder, max_images=COUNT),
                             max_resolution=16, workers=2, progress=True)
    assert "labels: 40 multi_label from " + str(tmp_path / "list_attr_celeba.txt") in capsys.readouterr().err
    order = [index for index in reference_order(COUNT) if index != 3]
    expected = (values[order] > 0).astype(np.float32)
    entry = manifest["labels"]
    assert entry["file"] == "out-rxx.labels" and entry["names"] == names
    assert entry["kind"] == "multi_label" and entry["count"] == COUNT - 1 == manifest["image_count"]
    assert entry["sha256"] == file_sha256(tmp_path / "out" / "out-rxx.labels")
    with open(tmp_path / "out" / "out-rxx.labels", "rb") as handle:  # the reference's own read
        stored = np.load(handle)
    assert stored.dtype == np.float32 and np.array_equal(stored, expected)
    labels = read_labels(tmp_path / "out", "all")
    assert labels.names == names and labels.kind == "multi_label" and labels.size == 40
    np.testing.assert_array_equal(labels.values, expected)
    info = open_dataset(tmp_path / "out")
    assert info.label_names == names and info.label_size == 40
    images, rows = next(iter(load(tmp_path / "out", 16, "all", batch_size=COUNT - 1, shuffle=False,
                                  labels=True)))
    np.testing.assert_array_equal(rows.numpy(), expected)
    np.testing.assert_allclose(images.numpy(), read_images(tmp_path / "out", 16, "all") / 127.5 - 1,
                               atol=1e-6)


def test_reference_made_labelled_data_sets_read_here(celeba, tmp_path):
    root, _, _ = celeba
    pngs = tmp_path / "png"
    pngs.mkdir()
    for path in sorted((root / "img_align_celeba").iterdir())[:8]:
        PIL.Image.open(path).save(pngs / (path.stem + ".png"))
    reference_create_celeba(tmp_path / "ref", pngs)
    classes = np.random.default_rng(1).integers(0, 10, 8)
    one_hot = np.eye(10, dtype=np.float32)[classes]
    with open(tmp_path / "ref" / "ref-rxx.labels", "wb") as handle:  # as the reference tool
        np.save(handle, one_hot)
    with pytest.warns(UserWarning, match="no dataset.json"):
        labels = read_labels(tmp_path / "ref")
        info = open_dataset(tmp_path / "ref")
        batches = load(tmp_path / "ref", 8, batch_size=8, seed=5, mirror=True, labels=True)
    assert labels.kind == "one_hot" and labels.names == [f"label{k}" for k in range(10)]
    np.testing.assert_array_equal(labels.values, one_hot)
    assert info.label_size == 10 and info.label_file.name == "ref-rxx.labels"
    images, rows = next(iter(batches))
    indices, _ = stream_indices(5, 8, np.arange(8))
    np.testing.assert_array_equal(rows.numpy(), one_hot[indices])
    assert images.shape == (8, 8, 8, 3)
    with open(tmp_path / "ref" / "ref-rxx.labels", "wb") as handle:
        np.save(handle, np.stack([one_hot[:, 0], 1 - one_hot[:, 0], one_hot[:, 1]], axis=1))
    with pytest.warns(UserWarning):
        assert read_labels(tmp_path / "ref").kind == "multi_label"


def test_bad_labels_files_are_one_line_errors(tmp_path):
    path = tmp_path / "faces"
    write_dataset(path, SyntheticSource(6, 8, seed=1), workers=1, progress=False)
    file = path / "faces-rxx.labels"
    good = file.read_bytes()
    bad = {"rows": np.zeros((5, 2), np.float32), "one-d": np.zeros(6, np.float32),
           "integers": np.zeros((6, 2), np.int64)}
    for what, array in bad.items():
        with open(file, "wb") as handle:
            np.save(handle, array)
        message = one_line_error(lambda: read_labels(path), file, "expected float32 [6, L]")
        assert what != "rows" or "has 5 rows but the level files hold 6 records" in message
    for data in (good[:len(good) - 7], b"garbage, not numpy", b""):
        file.write_bytes(data)
        one_line_error(lambda: read_labels(path), file, "expected float32 [6")
        one_line_error(lambda: next(iter(load(path, 8, batch_size=2, labels=True))), file)
    assert next(iter(load(path, 8, batch_size=2))).shape == (2, 8, 8, 3)  # images need no labels
    file.unlink()
    one_line_error(lambda: open_dataset(path), file, "listed in dataset.json but missing")


def test_attributes_inside_a_zip_beside_a_folder_or_named(celeba, tmp_path):
    root, _, values = celeba
    archive = tmp_path / "img_align_celeba.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted((root / "img_align_celeba").iterdir()):
            handle.write(path, "img_align_celeba/" + path.name)
        handle.write(root / "list_attr_celeba.txt", "CelebA/Anno/list_attr_celeba.txt")
    source = celeba_source(archive, max_images=5)
    assert source.labels.origin == f"{archive}:CelebA/Anno/list_attr_celeba.txt"
    assert [source.label(item).tolist() for item in source.files] == (values[:5] > 0).tolist()
    assert celeba_source(root, max_images=5).labels.origin == str(root / "list_attr_celeba.txt")
    pngs = tmp_path / "img_align_celeba_png"  # the PNG release shares the attributes file
    pngs.mkdir()
    for path in sorted((root / "img_align_celeba").iterdir())[:3]:
        PIL.Image.open(path).save(pngs / (path.stem + ".png"))
    named = celeba_source(pngs, max_images=3, attributes=root / "list_attr_celeba.txt")
    assert [named.label(item).tolist() for item in named.files] == (values[:3] > 0).tolist()
    assert celeba_source(pngs, max_images=3).labels is None
    assert celeba_source(root, max_images=3, attributes=None).labels is None


@pytest.mark.parametrize("change, where", [
    (lambda lines: ["11"] + lines[1:5] + lines[6:], "has no line for 000004.jpg"),
    (lambda lines: lines[:3] + [lines[3] + " 1"] + lines[4:], "line 4: 41 values, expected 40"),
    (lambda lines: lines[:4] + [lines[4].replace(" 1", " 0", 1)] + lines[5:], "line 5: value '0'"),
    (lambda lines: lines[1:], "line 1: expected the image count"),
    (lambda lines: [lines[0], " ".join(lines[1].split()[:39])] + lines[2:], "line 3: 40 values, expected 39"),
    (lambda lines: ["13"] + lines[1:], "line 1 says 13 images but the file lists 12"),
])
def test_malformed_attributes_files_are_one_line_errors(celeba, tmp_path, change, where):
    root, _, _ = celeba
    text = tmp_path / "list_attr_celeba.txt"
    text.write_text("\n".join(change((root / "list_attr_celeba.txt").read_text().splitlines())))
    one_line_error(lambda: celeba_source(root / "img_align_celeba", max_images=COUNT,
                                         attributes=text), text, where)


def test_create_celeba_attribute_flags(celeba, tmp_path, capsys):
    root, _, _ = celeba
    broken = tmp_path / "list_attr_celeba.txt"
    broken.write_text("not a count\n")
    common = ["--max-images", "4", "--max-resolution", "8", "--workers", "1", "--quiet"]
    assert main(["create_celeba", str(tmp_path / "a"), str(root), "--attributes", str(broken)] + common) == 2
    assert capsys.readouterr().err.strip().endswith(f"{broken}: line 1: expected the image count, "
                                                    "found 'not a count' (or Kaggle's CSV header "
                                                    "image_id,...)")
    assert main(["create_celeba", str(tmp_path / "b"), str(root), "--no-attributes"] + common) == 0
    assert "labels" not in capsys.readouterr().out and not list((tmp_path / "b").glob("*.labels"))
    assert "labels" not in json.loads((tmp_path / "b" / "dataset.json").read_text())
    assert main(["create_celeba", str(tmp_path / "c"), str(root)] + common) == 0
    assert f"labels 40 multi_label from {root / 'list_attr_celeba.txt'}" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "labels      40 multi_label per record, 4 rows  c-rxx.labels" in out and "Attribute_39" in out


def test_folder_classes_are_one_hot(tmp_path, capsys):
    rng = np.random.default_rng(0)
    classes = {"cat": 3, "dog": 4, "emu": 2}
    for name, count in classes.items():
        for index in range(count):
            folder = tmp_path / "in" / name / ("deeper" if index == 0 else "")
            folder.mkdir(parents=True, exist_ok=True)
            PIL.Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                folder / f"{name}{index}.png")
    (tmp_path / "in" / "dog" / "notes.txt").write_text("skipped: no row")
    (tmp_path / "in" / "README").write_text("not an image, so it may sit in DIR")
    assert main(["create_from_images", str(tmp_path / "out"), str(tmp_path / "in"), "--size", "8",
                 "--labels", "folders", "--workers", "2", "--quiet"]) == 0
    assert "labels 3 one_hot" in capsys.readouterr().out
    labels = read_labels(tmp_path / "out", "all")
    assert labels.names == ["cat", "dog", "emu"] and labels.kind == "one_hot"
    files = sorted(str(p) for p in (tmp_path / "in").rglob("*") if p.is_file())
    written = [files[i] for i in reference_order(len(files)) if files[i].endswith(".png")]
    expected = [labels.names.index(Path(f).relative_to(tmp_path / "in").parts[0]) for f in written]
    np.testing.assert_array_equal(labels.values, np.eye(3, dtype=np.float32)[expected])
    # An image in DIR without an image suffix is found only when decoded: the build stops
    # and leaves nothing (no records without labels).
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "in" / "stray", format="PNG")
    one_line_error(lambda: write_dataset(tmp_path / "failed", ImageFolderSource(
        tmp_path / "in", 8, labels="folders"), workers=2, progress=False), tmp_path / "in" / "stray")
    assert sorted(os.listdir(tmp_path)) == ["in", "out"]
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "in" / "stray.jpg")
    one_line_error(lambda: ImageFolderSource(tmp_path / "in", 8, labels="folders"),
                   "--labels folders", tmp_path / "in" / "stray.jpg")


def test_tfds_attributes_with_mock_data(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # tfds.load's own temporary folder
    import tensorflow_datasets as tfds

    from progan.dataset.sources import TfdsSource

    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        manifest = write_dataset(tmp_path / "tfds", TfdsSource("celeb_a"), workers=1,
                                 max_resolution=8, progress=False)
        plain = write_dataset(tmp_path / "plain", TfdsSource("celeb_a", attributes=False), workers=1,
                              max_resolution=8, progress=False)
        examples = list(tfds.as_numpy(tfds.load("celeb_a", split="train", shuffle_files=False)))
    names = manifest["labels"]["names"]
    assert len(names) == 40 and names[0] == "5_o_Clock_Shadow" and names == sorted(names)
    expected = np.array([[example["attributes"][n] for n in names] for example in examples], np.float32)
    labels = read_labels(tmp_path / "tfds", "all")
    assert labels.kind == "multi_label" and 0 < labels.values.mean() < 1
    np.testing.assert_array_equal(labels.values, expected)
    assert "labels" not in plain and open_dataset(tmp_path / "plain").label_file is None
    assert [level["sha256"] for level in plain["levels"]] == [level["sha256"] for level in manifest["levels"]]


# The first 16 faces of the demo set (seed 0, 32x32) as drawn before attributes existed.
DEMO_FACES_SHA256 = "0cb5e6673612fd804ddee5c3755446fab9897a67928a588e784b8a6db6b8bd27"


def test_synthetic_attributes_leave_the_default_faces_and_are_visible():
    digest = hashlib.sha256()
    for index in range(16):
        digest.update(SyntheticSource(16, 32, 0).load(index)[1].tobytes())
    assert digest.hexdigest() == DEMO_FACES_SHA256
    basic, extended = SyntheticSource(600, 16, 3), SyntheticSource(600, 16, 3, "extended")
    assert basic.labels.names == ("Dark_Hair", "Pale_Skin")
    assert extended.labels.names == ("Dark_Hair", "Pale_Skin", "Eyeglasses", "Smiling")
    values = np.stack([extended.label(index) for index in range(600)])
    assert ((values.mean(axis=0) > 0.28) & (values.mean(axis=0) < 0.72)).all(), values.mean(axis=0)
    np.testing.assert_array_equal(values[:, :2], [basic.label(index) for index in range(600)])
    images = np.stack([extended.load(index)[1] for index in range(600)]).astype(np.float32)
    plain = np.stack([basic.load(index)[1] for index in range(200)]).astype(np.float32)
    neither = (values[:200, 2] == 0) & (values[:200, 3] == 0)
    np.testing.assert_array_equal(images[:200][neither], plain[neither])  # drawn features add, only
    assert (np.abs(images[:200] - plain).reshape(200, -1).max(axis=1)[~neither] > 30).all()
    # Visible at 16x16: even a linear read-out of the pixels (ridge regression) finds every
    # attribute in unseen faces well above the majority guess (a small CNN: 92-100 %).
    features = np.concatenate([images.reshape(600, -1) / 255, np.ones((600, 1))], axis=1)
    train, test = features[:450], features[450:]
    weights = np.linalg.solve(train.T @ train + 10 * np.eye(train.shape[1]), train.T @ (values[:450] - 0.5))
    accuracy = ((test @ weights > 0) == (values[450:] > 0.5)).mean(axis=0)
    majority = np.maximum(values[450:].mean(axis=0), 1 - values[450:].mean(axis=0))
    assert (accuracy > majority + 0.1).all(), (accuracy, majority)


def test_synthetic_labels_on_disk_and_without_them(tmp_path):
    basic = ensure_synthetic(tmp_path / "basic", num_images=10, resolution=8, seed=2, workers=1,
                             progress=False)
    assert main(["create_synthetic", str(tmp_path / "none"), "--num-images", "10", "--size", "8",
                 "--seed", "2", "--no-attributes", "--workers", "1", "--quiet"]) == 0
    with_labels = json.loads((basic / "dataset.json").read_text())
    without = json.loads((tmp_path / "none" / "dataset.json").read_text())
    assert sorted(os.listdir(tmp_path / "none")) == ["dataset.json", "none-r02.tfrecords",
                                                     "none-r03.tfrecords"]
    assert with_labels.pop("labels")["names"] == ["Dark_Hair", "Pale_Skin"]
    for manifest in (with_labels, without):  # the same data set, without the labels
        manifest["name"] = [level.pop("file") for level in manifest["levels"]]
    assert without == dict(with_labels, name=["none-r03.tfrecords", "none-r02.tfrecords"])
    np.testing.assert_array_equal(read_labels(basic, "all").values,
                                  [SyntheticSource(10, 8, 2).label(index) for index in range(10)])
    empty = read_labels(tmp_path / "none")
    assert empty.values.shape == (10, 0) and empty.names == [] and empty.kind is None
    one_line_error(lambda: load(tmp_path / "none", 8, labels=True), "has no labels")
    # The labels file is part of the data set: --overwrite replaces it, verify checks it.
    write_dataset(basic, SyntheticSource(10, 8, 2, "extended"), workers=1, overwrite=True, progress=False)
    assert read_labels(basic).size == 4
    assert main(["verify", str(basic)]) == 0
    with open(basic / "basic-rxx.labels", "r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        handle.write(np.float32(7).tobytes())
    assert main(["verify", str(basic)]) == 1
    (basic / "stray.txt").write_text("not ours")
    one_line_error(lambda: write_dataset(basic, SyntheticSource(10, 8, 2), workers=1, overwrite=True,
                                         progress=False), "stray.txt")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    path = tmp_path_factory.mktemp("stream") / "faces"
    write_dataset(path, SyntheticSource(40, 16, seed=6, attributes="extended"), workers=1,
                  train_count=30, progress=False)
    return path


def batches_of(dataset, count):
    taken = list(dataset.take(count))
    return (np.concatenate([images.numpy() for images, _ in taken]),
            np.concatenate([rows.numpy() for _, rows in taken]))


def test_streaming_and_shards_serve_the_labels_of_their_records(faces):
    rows = read_labels(faces).values
    options = dict(batch_size=8, seed=3, mirror=True, start_image=5, labels=True)
    images, labels = batches_of(load(faces, 16, **options), 5)  # 40 positions: past an epoch
    indices, _ = stream_indices(3, 30, np.arange(5, 45))
    np.testing.assert_array_equal(labels, rows[indices])
    plain = load(faces, 16, **dict(options, labels=False))
    plain = np.concatenate([batch.numpy() for batch in plain.take(5)])
    np.testing.assert_array_equal(images, plain)  # labels change nothing about the images
    streamed = batches_of(load(faces, 16, memory_budget=1, **options), 5)
    np.testing.assert_array_equal(streamed[0], images)
    np.testing.assert_array_equal(streamed[1], labels)
    shards = [batches_of(load(faces, 16, shard_index=w, shard_count=2, shard_block=2, **options), 5)
              for w in range(2)]
    for batch in range(5):
        slots = np.arange(8)
        for worker, (shard_images, shard_labels) in enumerate(shards):
            mine = slots[(slots // 2) % 2 == worker] + 8 * batch
            np.testing.assert_array_equal(shard_labels[4 * batch:4 * batch + 4], labels[mine])
            np.testing.assert_array_equal(shard_images[4 * batch:4 * batch + 4], images[mine])
