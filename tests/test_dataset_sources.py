"""progan.dataset.sources: CelebA discovery and checks, image folders, TensorFlow Datasets."""

import json
import os
import shutil
import zipfile

import numpy as np
import PIL.Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from dataset_fixtures import make_celeba_like_images, read_records

from progan.dataset.cli import main
from progan.dataset.format import DatasetError
from progan.dataset.reader import read_images, read_labels
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


def test_tfds_celeb_a_offline_with_mock_data(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # tfds.load's own temporary folder
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


# -- CelebA as Kaggle ships it ------------------------------------------------------------------

KAGGLE_COUNT = 6
KAGGLE_PARTITION = [0, 1, 0, 2, 0, 1]  # of files 000001.jpg .. 000006.jpg


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
    """A small copy of Kaggle's CelebA (images in img_align_celeba/img_align_celeba/, CSVs at
    the root, rows listed in another order than the files) and the zip Kaggle serves it as;
    returns (root, zip, int8 -1/1 attributes of files 1..6 [6, 3])."""
    root = tmp_path_factory.mktemp("kaggle") / "celeba-dataset"
    paths = make_celeba_like_images(root / "img_align_celeba" / "img_align_celeba", KAGGLE_COUNT,
                                    seed=4, suffix=".jpg")
    names = [path.rsplit("/", 1)[1] for path in paths]
    values = np.random.default_rng(4).choice(np.array([-1, 1], np.int8), (KAGGLE_COUNT, 3))
    rows = [f"{name},{','.join(str(v) for v in row)}" for name, row in zip(names, values)][::-1]
    (root / "list_attr_celeba.csv").write_text(
        "image_id,5_o_Clock_Shadow,Arched_Eyebrows,Smiling\r\n" + "\r\n".join(rows) + "\r\n")
    (root / "list_eval_partition.csv").write_text(
        "image_id,partition\n" + "".join(f"{n},{p}\n" for n, p in zip(names, KAGGLE_PARTITION)))
    (root / "list_bbox_celeba.csv").write_text("image_id,x_1,y_1,width,height\n")
    archive = root.parent / "archive.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                handle.write(path, str(path.relative_to(root)))
    return root, archive, values


@pytest.mark.parametrize("where", ["folder", "zip"])
def test_kaggle_celeba_builds_with_its_csv_attributes(kaggle, tmp_path, capsys, where):
    root, archive, values = kaggle
    out = tmp_path / "faces"
    assert main(["create_celeba", str(out), str(root if where == "folder" else archive),
                 "--max-images", str(KAGGLE_COUNT), "--max-resolution", "8", "--workers", "1",
                 "--quiet"]) == 0
    origin = root / "list_attr_celeba.csv" if where == "folder" else f"{archive}:list_attr_celeba.csv"
    assert f"labels 3 multi_label from {origin}" in capsys.readouterr().out
    labels = read_labels(out, "all")
    assert labels.names == ["5_o_Clock_Shadow", "Arched_Eyebrows", "Smiling"]
    order = np.random.RandomState(123).permutation(KAGGLE_COUNT)  # record j is file order[j]
    np.testing.assert_array_equal(labels.values, (values[order] > 0).astype(np.float32))
    manifest = json.loads((out / "dataset.json").read_text())
    assert (manifest["train_count"], manifest["split"]["rule"]) == (KAGGLE_COUNT, "thesis")


def test_kaggle_official_partition_orders_train_then_val_then_test(kaggle, tmp_path, capsys):
    root, _, values = kaggle
    common = ["--max-images", str(KAGGLE_COUNT), "--max-resolution", "8", "--workers", "2", "--quiet"]
    assert main(["create_celeba", str(tmp_path / "thesis"), str(root)] + common) == 0
    assert main(["create_celeba", str(tmp_path / "official"), str(root), "--partition", "official"]
                + common) == 0
    capsys.readouterr()
    order = np.random.RandomState(123).permutation(KAGGLE_COUNT)
    expected = [f for part in (0, 1, 2) for f in order if KAGGLE_PARTITION[f] == part]
    thesis = read_images(tmp_path / "thesis", 8, "all")
    position = {file: record for record, file in enumerate(order)}
    np.testing.assert_array_equal(read_images(tmp_path / "official", 8, "all"),
                                  thesis[[position[f] for f in expected]])
    np.testing.assert_array_equal(read_labels(tmp_path / "official", "all").values,
                                  (values[expected] > 0).astype(np.float32))
    manifest = json.loads((tmp_path / "official" / "dataset.json").read_text())
    assert (manifest["train_count"], manifest["test_count"]) == (3, 3)
    assert manifest["order"] == "permutation(123) by partition"
    assert {key: manifest["split"][key] for key in ("rule", "train", "val", "test")} == {
        "rule": "official", "train": 3, "val": 2, "test": 1}
    assert main(["info", str(tmp_path / "official")]) == 0
    out = capsys.readouterr().out
    assert "split       train 3 (records 0..2), test 3" in out
    assert f"the official partition of {root / 'list_eval_partition.csv'}: records 0..2" in out
    assert main(["create_celeba", str(tmp_path / "x"), str(root), "--partition", "official",
                 "--train-count", "2"] + common) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "progan-dataset: error: --train-count 2: the source's records come in partitions "
        "(train, val, test) that set the train split; leave --train-count out"]
    assert not (tmp_path / "x").exists()


def test_official_txt_files_with_a_bom_and_crlf_and_a_missing_attributes_file(kaggle, tmp_path,
                                                                                 capsys):
    root, _, values = kaggle
    celeba = tmp_path / "CelebA"  # the official download's folders
    shutil.copytree(root / "img_align_celeba" / "img_align_celeba", celeba / "Img" / "img_align_celeba")
    names = sorted(p.name for p in (celeba / "Img" / "img_align_celeba").iterdir())
    header = "5_o_Clock_Shadow Arched_Eyebrows Smiling"
    lines = [str(KAGGLE_COUNT), header] + [f"{n} " + " ".join(f"{v:2d}" for v in row)
                                           for n, row in zip(names, values)]
    (celeba / "Anno").mkdir()
    (celeba / "Anno" / "list_attr_celeba.txt").write_bytes(
        b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    (celeba / "Eval").mkdir()
    (celeba / "Eval" / "list_eval_partition.txt").write_text(
        "".join(f"{n} {p}\n" for n, p in zip(names, KAGGLE_PARTITION)))
    source = celeba_source(celeba / "Img", max_images=KAGGLE_COUNT, partition="official")
    assert source.labels.origin == str(celeba / "Anno" / "list_attr_celeba.txt")
    assert [source.label(f).tolist() for f in source.files] == (values > 0).tolist()
    assert [source.partition_of(f) for f in source.files] == KAGGLE_PARTITION
    assert celeba_source(celeba, max_images=KAGGLE_COUNT).files == source.files  # CelebA/ itself
    zipped = tmp_path / "zipped"  # the official zip, as downloaded, in Img/
    (zipped / "Img").mkdir(parents=True)
    shutil.copytree(celeba / "Anno", zipped / "Anno")
    with zipfile.ZipFile(zipped / "Img" / "img_align_celeba.zip", "w") as handle:
        for name in names:
            handle.write(celeba / "Img" / "img_align_celeba" / name, "img_align_celeba/" + name)
    source = celeba_source(zipped, max_images=KAGGLE_COUNT)
    assert source.archive == zipped / "Img" / "img_align_celeba.zip"
    assert source.labels.origin == str(zipped / "Anno" / "list_attr_celeba.txt")

    (celeba / "Anno" / "list_attr_celeba.txt").unlink()
    common = ["--max-images", str(KAGGLE_COUNT), "--max-resolution", "8", "--workers", "1", "--quiet"]
    assert main(["create_celeba", str(tmp_path / "out"), str(celeba / "Img")] + common) == 0
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"progan-dataset: warning: found the images in {celeba / 'Img' / 'img_align_celeba'} but no "
        "list_attr_celeba.txt or .csv with them: the data set gets no labels (name the file with "
        "--attributes FILE, or pass --no-attributes)"]
    assert "labels" not in captured.out and not list((tmp_path / "out").glob("*.labels"))
    (celeba / "Eval" / "list_eval_partition.txt").unlink()
    assert main(["create_celeba", str(tmp_path / "none"), str(celeba / "Img"), "--partition",
                 "official", "--no-attributes"] + common) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("progan-dataset: error: --partition official: no list_eval_partition.txt "
                           "or list_eval_partition.csv found for ") and "\n" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CelebA", "out", "zipped"]


def test_tfds_download_failures_are_one_line_with_the_way_around(tmp_path, monkeypatch, capsys):
    from tensorflow_datasets.core.download import download_manager, util

    url = "https://drive.google.com/uc?export=download&id=0B7EVK8r0v71pZjFTYXZWM3FlRnM"
    failures = []

    def refuse(self, *args, **kwargs):  # what TFDS raises when Drive sends its quota page instead
        failures.append(self.name)
        raise download_manager.NonMatchingChecksumError(
            f"Artifact {url}, downloaded to {tmp_path}/tfds/downloads/x.zip, has wrong checksum:\n"
            "* Expected: UrlInfo(size=1.34 GiB)\n* Got: UrlInfo(size=2.35 KiB)")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)
    data_dir = tmp_path / "tfds"
    assert main(["create_tfds", str(tmp_path / "out"), "celeb_a", "--data-dir", str(data_dir),
                 "--quiet"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert failures == ["celeb_a"] and len(lines) == 1, lines
    assert lines[0].startswith(f"progan-dataset: error: NAME celeb_a: the download failed (Artifact {url}, ")
    assert "download quota" in lines[0] and "run: progan-dataset create_celeba OUT FOLDER" in lines[0]
    assert f"img_align_celeba.zip, list_attr_celeba.txt, list_eval_partition.txt, " \
           f"list_landmarks_align_celeba.txt, identity_CelebA.txt in {data_dir / 'downloads' / 'manual'}/" \
           in lines[0]

    def unreachable(self, *args, **kwargs):
        raise util.DownloadError("Failed to get url https://example.org/x.tar. HTTP code: 503.")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", unreachable)
    assert main(["create_tfds", str(tmp_path / "out"), "cifar10", "--size", "32", "--data-dir",
                 str(data_dir), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "progan-dataset: error: NAME cifar10: the download failed (Failed to get url "
        "https://example.org/x.tar. HTTP code: 503.); check the network and try again, or put the "
        f"files TFDS downloads for it in {data_dir / 'downloads' / 'manual'}/"]
    assert main(["create_tfds", str(tmp_path / "out"), "cifar10", "--data-dir", str(data_dir)]) == 2
    assert "NAME cifar10: --size is required" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def _declare_size(archive, member, size):
    """Rewrite the uncompressed size a zip's central directory declares for one member."""
    data = bytearray(archive.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        name_length = int.from_bytes(data[start + 28:start + 30], "little")
        if data[start + 46:start + 46 + name_length] == member.encode():
            data[start + 24:start + 28] = size.to_bytes(4, "little")
            archive.write_bytes(bytes(data))
            return
        start += 4
    raise AssertionError(f"{member} not in {archive}")


def test_zip_members_too_large_for_an_image_are_refused_before_they_are_read(tmp_path, monkeypatch):
    import tracemalloc

    from progan.dataset import sources
    from progan.dataset.sources import SkipImage

    paths = make_celeba_like_images(tmp_path / "img_align_celeba", 2, suffix=".jpg")
    archive = tmp_path / "img_align_celeba.zip"
    inflated = 8 << 20  # zeros: 8 MB that deflate to a few kB
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as handle:
        for path in paths:
            handle.write(path, "img_align_celeba/" + path.rsplit("/", 1)[1])
        handle.writestr("img_align_celeba/000003.jpg", bytes(inflated))
        handle.writestr("img_align_celeba/000004.jpg", bytes(inflated))
    assert archive.stat().st_size < 200_000
    _declare_size(archive, "img_align_celeba/000004.jpg", 1000)  # a size that lies
    source = celeba_source(archive, max_images=4)
    monkeypatch.setattr(sources, "MAX_IMAGE_BYTES", 1 << 20)  # 1 MB, to see memory stay below it
    tracemalloc.start()
    try:
        with pytest.raises(SkipImage, match=r"000003.jpg: declares 8 MB uncompressed, more than an "
                                            r"image file may hold \(1 MB\); not read$"):
            source.load("img_align_celeba/000003.jpg")
        with pytest.raises(SkipImage, match=r"000004.jpg: damaged zip member \(Bad CRC-32"):
            source.load("img_align_celeba/000004.jpg")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # neither member was inflated to its 8 MB
    monkeypatch.undo()
    # At the real limit: a member declaring 1 GB is skipped unread, the others build.
    _declare_size(archive, "img_align_celeba/000003.jpg", 1 << 30)
    manifest = write_dataset(tmp_path / "out", celeba_source(archive, max_images=4), workers=1,
                             max_resolution=8, progress=False)
    assert manifest["image_count"] == 2
    reasons = {entry["file"]: entry["reason"] for entry in manifest["skipped"]}
    assert sorted(reasons) == [f"{archive}:img_align_celeba/00000{k}.jpg" for k in (3, 4)]
    assert reasons[f"{archive}:img_align_celeba/000003.jpg"] == (
        "declares 1,024 MB uncompressed, more than an image file may hold (256 MB); not read")
    assert reasons[f"{archive}:img_align_celeba/000004.jpg"].startswith("damaged zip member (Bad CRC-32")
