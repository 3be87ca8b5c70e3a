"""progan.dataset.cli (``progan-dataset``) and tools/dataset_tool.py."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from dataset_fixtures import make_celeba_like_images, read_records, tree_digest

from progan.dataset.cli import main
from progan.dataset.reader import read_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "synth"
    assert main(["create_synthetic", str(out), "--num-images", "12", "--size", "16",
                 "--seed", "1", "--train-count", "10", "--workers", "1", "--quiet"]) == 0
    return out


def test_info_reports_counts_levels_split_and_checksums(synth, capsys):
    assert main(["info", str(synth)]) == 0
    out = capsys.readouterr().out
    assert "images      12" in out and "train 10" in out and "test 2" in out
    assert "'kind': 'synthetic'" in out
    assert out.count("sha256 ") == 3 and "synth-r04.tfrecords  12 records" in out


def test_extract_pngs_and_grid(synth, tmp_path, capsys):
    assert main(["extract", str(synth), str(tmp_path / "pngs"), "--count", "3", "--start", "2",
                 "--level", "8"]) == 0
    names = sorted(p.name for p in (tmp_path / "pngs").iterdir())
    assert names == ["img00000002.png", "img00000003.png", "img00000004.png"]
    np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "pngs" / names[0])),
                                  read_images(synth, 8, "all")[2])
    assert main(["extract", str(synth), str(tmp_path / "grid.png"), "--grid", "--count", "5"]) == 0
    grid = np.asarray(PIL.Image.open(tmp_path / "grid.png"))
    assert grid.shape == (32, 48, 3)  # 3 columns x 2 rows of 16x16
    np.testing.assert_array_equal(grid[16:32, 0:16], read_images(synth, 16, "all")[3])


def test_compare_and_verify(synth, tmp_path, capsys):
    twin, other = tmp_path / "twin", tmp_path / "other"
    main(["create_synthetic", str(twin), "--num-images", "12", "--size", "16", "--seed", "1",
          "--workers", "2", "--quiet"])
    main(["create_synthetic", str(other), "--num-images", "12", "--size", "16", "--seed", "2",
          "--workers", "1", "--quiet"])
    assert main(["compare", str(synth), str(twin)]) == 0
    assert "level   16: identical 12 / 12" in capsys.readouterr().out
    assert main(["compare", str(synth), str(other)]) == 1
    assert "different" in capsys.readouterr().out

    assert main(["verify", str(twin)]) == 0
    level = twin / "twin-r03.tfrecords"
    data = bytearray(level.read_bytes())
    data[-40] ^= 0xFF  # same size, different content
    level.write_bytes(bytes(data))
    assert main(["verify", str(twin)]) == 1
    assert "MISMATCH  twin-r03.tfrecords" in capsys.readouterr().out


def test_create_celeba_and_from_images(tmp_path, capsys):
    make_celeba_like_images(tmp_path / "img_align_celeba", 3, suffix=".jpg")
    assert main(["create_celeba", str(tmp_path / "c"), str(tmp_path), "--max-images", "3",
                 "--max-resolution", "64", "--cx", "90", "--quiet"]) == 0
    assert "3 images, levels 64, 32, 16, 8, 4, train 3 / test 0" in capsys.readouterr().out
    assert read_records(tmp_path / "c" / "c-r06.tfrecords")[0][0] == (3, 64, 64)
    assert main(["create_from_images", str(tmp_path / "f"), str(tmp_path / "img_align_celeba"),
                 "--size", "32", "--quiet"]) == 0
    assert read_images(tmp_path / "f", 32, "all").shape == (3, 32, 32, 3)


def test_errors_are_one_line_exit_2_and_leave_nothing(tmp_path, capsys):
    assert main(["create_celeba", str(tmp_path / "out"), str(tmp_path / "x" / "y")]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"progan-dataset: error: CELEBA {tmp_path / 'x' / 'y'}: expected a directory of 178x218 "
        "JPEG/PNG files or img_align_celeba.zip"]
    (tmp_path / "taken").mkdir()
    assert main(["create_synthetic", str(tmp_path / "taken"), "--num-images", "2", "--quiet"]) == 2
    assert "OUT" in capsys.readouterr().err and list((tmp_path / "taken").iterdir()) == []
    assert main(["create_synthetic", str(tmp_path / "odd"), "--size", "24"]) == 2
    assert "resolution 24: expected a power of two" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    with pytest.raises(SystemExit) as exit_info:
        main(["create_from_images", str(tmp_path / "o"), str(tmp_path)])  # --resolution missing
    assert exit_info.value.code == 2


def test_reading_commands_print_no_tensorflow_lines(synth, tmp_path):
    result = subprocess.run([sys.executable, "-m", "progan.dataset.cli", "extract", str(synth),
                             str(tmp_path / "pngs"), "--count", "2"],
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{tmp_path / 'pngs'}: 2 PNGs at 16x16\n"


def test_tools_script_runs_the_same_main(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "dataset_tool.py"), "create_celeba",
                             str(tmp_path / "out"), str(tmp_path / "nope")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("progan-dataset: error: CELEBA")
    assert not (tmp_path / "out").exists()


def test_every_flag_and_argument_of_every_command_has_a_help_line():
    import argparse

    from progan.dataset.cli import build_parser

    parser = build_parser()
    commands = next(action for action in parser._actions
                    if isinstance(action, argparse._SubParsersAction))
    parsers = {"progan-dataset": parser, **commands.choices}
    assert set(commands.choices) == {"create_celeba", "create_from_images", "create_tfds",
                                     "create_synthetic", "info", "extract", "compare", "verify"}
    missing = [f"{name} {action.option_strings[0] if action.option_strings else action.dest}"
               for name, sub in parsers.items() for action in sub._actions
               if not isinstance(action, argparse._HelpAction)
               and (not action.help or action.help == argparse.SUPPRESS)]
    assert missing == []


def _one_line(capsys, expected_start):
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"progan-dataset: error: {expected_start}"), lines
    return lines[0]


def test_extract_never_writes_over_a_file_or_into_a_wrong_kind_of_path(synth, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    (tmp_path / "folder").mkdir()
    (tmp_path / "pngs").mkdir()
    (tmp_path / "pngs" / "img00000001.png").write_bytes(b"a user's picture")
    before = tree_digest(tmp_path)
    cases = [
        ([str(tmp_path / "notes.txt")], f"DEST {tmp_path / 'notes.txt'}: is a file; expected a folder"),
        ([str(tmp_path / "notes.txt" / "x")], f"DEST {tmp_path / 'notes.txt' / 'x'}: "
                                               f"{tmp_path / 'notes.txt'} is a file, not a folder"),
        ([str(tmp_path / "folder"), "--grid"], f"DEST {tmp_path / 'folder'}: is a folder; --grid "
                                               "writes one .png file"),
        ([str(tmp_path / "notes.txt"), "--grid"], f"DEST {tmp_path / 'notes.txt'}: expected a .png"),
        ([str(tmp_path / "grid.jpg"), "--grid"], f"DEST {tmp_path / 'grid.jpg'}: expected a .png"),
        ([str(tmp_path / "pngs"), "--count", "3"], f"DEST {tmp_path / 'pngs'}: already holds "
                                                   "img00000001.png; not replacing it"),
    ]
    for dest, message in cases:
        assert main(["extract", str(synth), *dest]) == 2
        _one_line(capsys, message)
    (tmp_path / "grid.png").write_bytes(b"an older grid")
    before = tree_digest(tmp_path)
    assert main(["extract", str(synth), str(tmp_path / "grid.png"), "--grid"]) == 2
    _one_line(capsys, f"DEST {tmp_path / 'grid.png'}: already exists; not replacing it")
    assert tree_digest(tmp_path) == before


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("levels"), "'levels' is missing or wrong, expected a list of the level files"),
    (lambda m: m.pop("image_count"), "'image_count' is missing or wrong, expected the number of records"),
    (lambda m: m.update(train_count=13), "'train_count' is missing or wrong, expected the records of "
                                         "the train split (0..12)"),
    (lambda m: m["levels"][1].pop("file"), "'levels' entry 1 is missing or wrong"),
])
def test_a_damaged_dataset_json_is_one_line_for_info_and_for_training(synth, tmp_path, capsys,
                                                                       change, message):
    import json
    import shutil

    from progan.dataset.format import DatasetError
    from progan.dataset.reader import open_dataset

    copy = tmp_path / "synth"
    shutil.copytree(synth, copy)
    manifest = json.loads((copy / "dataset.json").read_text())
    change(manifest)
    (copy / "dataset.json").write_text(json.dumps(manifest))
    expected = f"{copy / 'dataset.json'}: {message}"
    assert main(["info", str(copy)]) == 2
    assert _one_line(capsys, expected).endswith("; restore dataset.json or rebuild the data set")
    with pytest.raises(DatasetError) as raised:  # what the trainer calls
        open_dataset(copy)
    assert str(raised.value).startswith(expected) and "\n" not in str(raised.value)


def test_a_folder_of_images_is_no_data_set_and_the_error_names_the_command(tmp_path, capsys):
    from progan.dataset.format import DatasetError
    from progan.dataset.reader import open_dataset

    photos, celeba, empty = tmp_path / "photos", tmp_path / "celeba", tmp_path / "empty"
    make_celeba_like_images(photos / "cats", 2, size=(20, 20))
    make_celeba_like_images(celeba / "img_align_celeba", 2, suffix=".jpg")
    empty.mkdir()
    hints = {photos: f"; it holds images: build a data set with progan-dataset create_from_images "
                     f"OUT {photos} --size N (N a power of two, e.g. 64)",
             celeba: f"; it looks like CelebA: build a data set with progan-dataset create_celeba "
                     f"OUT {celeba}",
             celeba / "img_align_celeba": "; it looks like CelebA: build a data set with "
                                          f"progan-dataset create_celeba OUT {celeba / 'img_align_celeba'}",
             empty: ""}
    for folder, hint in hints.items():
        message = f"{folder}: no <name>-rXX.tfrecords files and no dataset.json, so not a data set{hint}"
        with pytest.raises(DatasetError) as raised:
            open_dataset(folder)
        assert str(raised.value) == message
        assert main(["info", str(folder)]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [f"progan-dataset: error: {message}"]


def test_reference_data_sets_expose_the_channels_of_their_records(tmp_path, capsys):
    import tensorflow as tf

    from progan.dataset.format import DatasetError, serialize_example
    from progan.dataset.reader import load, open_dataset

    gray = tmp_path / "gray"
    gray.mkdir()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 1, 8, 8), dtype=np.uint8)  # as the reference tool's mnist
    for log2, step in ((3, 1), (2, 2)):
        with tf.io.TFRecordWriter(str(gray / f"gray-r{log2:02d}.tfrecords")) as writer:
            for image in images:
                writer.write(serialize_example(np.ascontiguousarray(image[:, ::step, ::step])))
    with pytest.warns(UserWarning, match="no dataset.json"):
        info = open_dataset(gray)
        batch = next(iter(load(gray, 8, batch_size=5, shuffle=False)))
    assert (info.channels, info.resolutions, info.image_count) == (1, [4, 8], 5)
    np.testing.assert_allclose(batch.numpy(), images.transpose(0, 2, 3, 1) / 127.5 - 1, atol=1e-6)
    assert main(["info", str(gray)]) == 0
    captured = capsys.readouterr()
    assert "channels    1 (from the records)" in captured.out
    assert captured.err.strip().splitlines() == [
        f"progan-dataset: warning: {gray}: no dataset.json (a reference-tool dataset?); treating all "
        "5 records as the train split"]
    (gray / "gray-r03.tfrecords").rename(gray / "gray-r04.tfrecords")  # 8x8 records named 16x16
    with pytest.raises(DatasetError, match=r"gray-r04.tfrecords: the first record's shape is \[1, 8, 8\], "
                                           r"expected \[C, 16, 16\]"):
        open_dataset(gray)


def test_every_command_of_the_data_page_parses():
    import shlex

    from progan.dataset.cli import build_parser

    text = (ROOT / "docs" / "data.md").read_text()
    blocks = text.split("```bash")[1:]
    commands = [line.strip() for block in blocks for line in block.split("```")[0].splitlines()
                if line.strip().startswith("progan-dataset ")]
    assert len(commands) >= 14
    for command in commands:
        args = build_parser().parse_args(shlex.split(command)[1:])  # SystemExit(2) if a flag is wrong
        assert args.command in {"create_celeba", "create_from_images", "create_tfds",
                                "create_synthetic", "info", "extract", "compare", "verify"}
