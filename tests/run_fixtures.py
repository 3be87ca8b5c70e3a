"""Small trained runs shared by test_generate, test_evaluation_run and test_notebooks.

Each run is trained once per session (pytest may register these fixtures once per module
that imports them, so the builders memoise by directory). Tests that write into a run
(metrics.jsonl, best.json) work on a copy: ``copy_run``.
"""

import argparse
import shutil
from pathlib import Path

import pytest
from conftest import TINY_CONFIG

_BUILT: dict = {}


def _train_once(key, build):
    if key not in _BUILT:
        _BUILT[key] = build()
    return _BUILT[key]


def command_parser(add_command):
    """A ``progan`` parser with one sub-command registered by ``add_command(subparsers)``."""
    parser = argparse.ArgumentParser(prog="progan")
    add_command(parser.add_subparsers(dest="command"))
    return parser


def copy_run(run_dir: Path, destination: Path) -> Path:
    """A copy of a run directory (config.json keeps pointing at the same dataset)."""
    shutil.copytree(run_dir, destination)
    return destination


@pytest.fixture(scope="session")
def tiny_run(tiny_dataset, tmp_path_factory):
    """TINY_CONFIG trained 4x4 -> 8x8 (0.6 kimg): snapshots at 0, 0.104 ... 0.6 kimg, every
    one kept; 0.304 is in the 8x8 fade-in (alpha 0.52)."""
    from progan.config import Config
    from progan.training import trainer

    def build():
        config = Config.from_dict(TINY_CONFIG).replace(**{"training.keep_checkpoints": 20})
        run_dir = tmp_path_factory.mktemp("runs") / "tiny"
        trainer.train(config, tiny_dataset, run_dir)
        return run_dir

    return _train_once("tiny", build)


@pytest.fixture(scope="session")
def tiny_run_16(tmp_path_factory):
    """A run that starts and stays at 16x16 (so MS-SSIM applies) on a 64-image synthetic set
    whose last 16 images are the test split; snapshots at 0, 8 and 16 images."""
    from progan.config import Config
    from progan.dataset.synthetic import SyntheticSource
    from progan.dataset.writer import write_dataset
    from progan.training import trainer

    def build():
        root = tmp_path_factory.mktemp("run16")
        data = root / "faces16"
        write_dataset(data, SyntheticSource(64, 16, seed=1), train_count=48, workers=1,
                      progress=False)
        config = Config.from_dict({
            **TINY_CONFIG,
            "model": {**TINY_CONFIG["model"], "max_resolution": 16},
            "schedule": {"start_resolution": 16, "stable_kimg": 0.016, "batch_size": 8},
            "training": {**TINY_CONFIG["training"], "snapshot_kimg": 0.008, "tick_kimg": 0.008}})
        run_dir = root / "run"
        trainer.train(config, data, run_dir)
        return run_dir

    return _train_once("tiny16", build)
