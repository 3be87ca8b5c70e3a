"""progan.dataset.cli (``progan-dataset``) and tools/dataset_tool.py."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from dataset_fixtures import make_celeba_like_images, read_records

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
