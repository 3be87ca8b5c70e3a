"""progan.dataset.writer: byte-identical to the reference tool, atomic, robust."""

import json
import os
import shutil
import zipfile

import numpy as np
import PIL.Image
import pytest
from dataset_fixtures import make_celeba_like_images, read_records, reference_create_celeba

from progan.dataset.format import DatasetError, file_sha256
from progan.dataset.sources import SkipImage, celeba_source
from progan.dataset.synthetic import SyntheticSource
from progan.dataset.writer import write_dataset

COUNT = 7


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    """PNG and JPEG CelebA look-alikes, the JPEGs as PNGs decoded by Pillow, the zip, and the
    reference tool's datasets from the PNGs and from the decoded JPEGs."""
    root = tmp_path_factory.mktemp("celeba")
    make_celeba_like_images(root / "img_align_celeba_png", COUNT, seed=1)
    jpegs = make_celeba_like_images(root / "img_align_celeba", COUNT, seed=1, suffix=".jpg")
    decoded = root / "decoded_jpeg_png"
    decoded.mkdir()
    for path in jpegs:
        PIL.Image.open(path).save(decoded / (os.path.basename(path)[:-4] + ".png"))
    with zipfile.ZipFile(root / "img_align_celeba.zip", "w") as archive:
        for path in jpegs:
            archive.write(path, "img_align_celeba/" + os.path.basename(path))
    reference_create_celeba(root / "ref_png", root / "img_align_celeba_png")
    reference_create_celeba(root / "ref_jpeg", decoded)
    return root


def assert_same_records(ours, reference):
    for log2 in range(2, 8):
        mine = read_records(ours / f"{ours.name}-r{log2:02d}.tfrecords")
        theirs = read_records(reference / f"{reference.name}-r{log2:02d}.tfrecords")
        assert len(mine) == len(theirs) == COUNT
        assert mine == theirs, f"level r{log2:02d} differs"


@pytest.mark.parametrize("workers", [1, 2])
def test_png_celeba_is_byte_identical_to_reference(celeba, tmp_path, workers):
    out = tmp_path / "celeba"
    manifest = write_dataset(out, celeba_source(celeba / "img_align_celeba_png", max_images=COUNT),
                             workers=workers, progress=False)
    assert_same_records(out, celeba / "ref_png")
    assert manifest["image_count"] == COUNT and manifest["train_count"] == COUNT
    assert manifest["order"] == "permutation(123)"
    assert manifest["crop"] == {"cx": 89, "cy": 121, "size": 128}
    assert manifest == json.loads((out / "dataset.json").read_text())
    for level in manifest["levels"]:
        assert level["sha256"] == file_sha256(out / level["file"])
        assert level["records"] == COUNT
    assert sorted(os.listdir(tmp_path)) == ["celeba"]  # no staging directory left


@pytest.mark.parametrize("source", ["img_align_celeba", "img_align_celeba.zip", "."])
def test_jpeg_folder_and_zip_decode_like_pillow(celeba, tmp_path, source):
    out = tmp_path / "from_jpeg"
    # "." is the parent folder: img_align_celeba_png/ is preferred there, like the reference.
    expected = celeba / ("ref_png" if source == "." else "ref_jpeg")
    write_dataset(out, celeba_source(celeba / source, max_images=COUNT), workers=1, progress=False)
    assert_same_records(out, expected)


def test_max_resolution_writes_identical_lower_levels(celeba, tmp_path):
    out = tmp_path / "small"
    manifest = write_dataset(out, celeba_source(celeba / "img_align_celeba_png", max_images=COUNT),
                             max_resolution=32, workers=1, progress=False)
    assert manifest["resolution"] == 32 and manifest["source_resolution"] == 128
    assert sorted(p.name for p in out.glob("*.tfrecords")) == [f"small-r0{k}.tfrecords" for k in (2, 3, 4, 5)]
    for log2 in (2, 5):
        assert read_records(out / f"small-r0{log2}.tfrecords") == \
            read_records(celeba / "ref_png" / f"ref_png-r0{log2}.tfrecords")


def test_bad_files_are_skipped_and_counted_or_fatal_with_strict(celeba, tmp_path, capsys):
    folder = tmp_path / "pngs"
    shutil.copytree(celeba / "img_align_celeba_png", folder)
    data = (folder / "000002.png").read_bytes()
    (folder / "000002.png").write_bytes(data[: len(data) // 2])  # truncated
    (folder / "000005.png").write_bytes(b"this is not an image")
    manifest = write_dataset(tmp_path / "out", celeba_source(folder, max_images=COUNT),
                             workers=1, progress=True)
    assert manifest["image_count"] == COUNT - 2 and manifest["skipped_count"] == 2
    assert sorted(os.path.basename(entry["file"]) for entry in manifest["skipped"]) == \
        ["000002.png", "000005.png"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 2 and any("000005.png" in line for line in warnings)

    with pytest.raises(DatasetError, match="--strict"):
        write_dataset(tmp_path / "strict", celeba_source(folder, max_images=COUNT),
                      workers=1, strict=True, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["out", "pngs"]


def test_wrong_celeba_size_is_a_clear_error_and_leaves_nothing(celeba, tmp_path):
    folder = tmp_path / "pngs"
    shutil.copytree(celeba / "img_align_celeba_png", folder)
    PIL.Image.new("RGB", (100, 80)).save(folder / "000003.png")
    with pytest.raises(DatasetError, match=r"000003\.png: image is 100x80, expected 178x218"):
        write_dataset(tmp_path / "out", celeba_source(folder, max_images=COUNT), workers=2,
                      progress=False)
    assert sorted(os.listdir(tmp_path)) == ["pngs"]


def test_existing_out_needs_overwrite_and_is_replaced_only_when_complete(tmp_path):
    out = tmp_path / "synth"
    write_dataset(out, SyntheticSource(4, 8, seed=0), workers=1, progress=False)
    before = file_sha256(out / "synth-r03.tfrecords")
    with pytest.raises(DatasetError, match="already exists; pass --overwrite"):
        write_dataset(out, SyntheticSource(4, 8, seed=1), workers=1, progress=False)

    class Interrupted(SyntheticSource):
        def items(self):
            yield 0
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dataset(out, Interrupted(4, 8, seed=1), workers=1, overwrite=True, progress=False)
    assert file_sha256(out / "synth-r03.tfrecords") == before
    assert sorted(os.listdir(tmp_path)) == ["synth"]

    write_dataset(out, SyntheticSource(4, 8, seed=1), workers=1, overwrite=True, progress=False)
    assert file_sha256(out / "synth-r03.tfrecords") != before
    assert sorted(os.listdir(tmp_path)) == ["synth"]


def test_train_count_and_resolution_checks(tmp_path):
    manifest = write_dataset(tmp_path / "a", SyntheticSource(10, 8), workers=1, train_count=7,
                             progress=False)
    assert (manifest["train_count"], manifest["test_count"]) == (7, 3)
    with pytest.raises(DatasetError, match="--train-count 11"):
        write_dataset(tmp_path / "b", SyntheticSource(10, 8), workers=1, train_count=11, progress=False)
    with pytest.raises(DatasetError, match="--max-resolution 16: above"):
        write_dataset(tmp_path / "c", SyntheticSource(10, 8), max_resolution=16, progress=False)
    with pytest.raises(DatasetError, match="power of two"):
        write_dataset(tmp_path / "d", SyntheticSource(10, 8), max_resolution=6, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["a"]


def test_only_skips_means_no_dataset(tmp_path):
    class Unreadable(SyntheticSource):
        def load(self, item):
            raise SkipImage(f"img{item}: broken")

    with pytest.raises(DatasetError, match="no readable images"):
        write_dataset(tmp_path / "none", Unreadable(3, 8), workers=1, progress=False)
    assert os.listdir(tmp_path) == []


def test_reference_order_is_randomstate_123(celeba, tmp_path):
    out = tmp_path / "order"
    write_dataset(out, celeba_source(celeba / "img_align_celeba_png", max_images=COUNT),
                  workers=1, progress=False)
    files = sorted((celeba / "img_align_celeba_png").iterdir())
    order = np.random.RandomState(123).permutation(COUNT)
    records = read_records(out / "order-r07.tfrecords")
    for position, index in enumerate(order):
        crop = np.asarray(PIL.Image.open(files[index]))[57:185, 25:153].transpose(2, 0, 1)
        assert records[position] == ((3, 128, 128), crop.tobytes())


def test_train_count_above_what_can_be_readable_stops_the_build_early(tmp_path):
    loaded = []

    class MostlyUnreadable(SyntheticSource):
        def load(self, item):
            loaded.append(item)
            if item % 10:
                raise SkipImage(f"img{item}: broken")
            return super().load(item)

    with pytest.raises(DatasetError) as raised:  # 100 readable at most, known after 901 skips
        write_dataset(tmp_path / "out", MostlyUnreadable(1000, 8), workers=1, train_count=990,
                      progress=False)
    assert str(raised.value).startswith("--train-count 990: at most ")
    assert "images can be readable (1,000 inputs, " in str(raised.value)
    assert len(loaded) < 100  # stopped at the first chunk that showed it, not after 1,000
    assert os.listdir(tmp_path) == []
