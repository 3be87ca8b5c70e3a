"""The Python API: names that mean one thing, and the functions the commands call."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY_CONFIG
from run_fixtures import copy_run, tiny_run  # noqa: F401  (a session fixture)

import progan
from progan import api
from progan.config import Config


def test_no_public_name_changes_meaning_when_every_submodule_is_imported():
    code = """
import importlib, pkgutil, types, sys
import progan, progan.evaluation
packages = {"progan": progan, "progan.evaluation": progan.evaluation}
before = {(p, n): getattr(m, n) for p, m in packages.items() for n in m.__all__}
assert not any(isinstance(v, types.ModuleType) for v in before.values()), before
for info in pkgutil.walk_packages(progan.__path__, "progan."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
changed = [f"{p}.{n}" for (p, n), v in before.items() if getattr(packages[p], n) is not v]
print("changed:", changed)
print("dir:", sorted(set(progan.__all__) - set(dir(progan))),
      sorted(set(progan.evaluation.__all__) - set(dir(progan.evaluation))))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "changed: []" in result.stdout and "dir: [] []" in result.stdout, result.stdout


def test_the_operations_of_the_commands_are_top_level_functions():
    for name in ("train", "resume", "finetune", "evaluate", "load_generator", "generate",
                 "interpolate", "export"):
        function = getattr(progan, name)
        assert callable(function) and function is getattr(api, name), name
    from progan.evaluation import fid, kid, ms_ssim, swd

    assert all(callable(f) for f in (swd, ms_ssim, fid, kid))


def test_keyword_overrides_are_the_commands_flags():
    config = api.make_config("demo", total_kimg=4, batch=8, augment="translation,color",
                             xla=True, lr=0.003)
    assert config.schedule.total_kimg == 4 and config.schedule.batch_size == 8
    assert config.loss.augment == ("translation", "color") and config.training.xla
    assert config.optimizer.g_lr == config.optimizer.d_lr == 0.003
    assert config.optimizer.lr_by_resolution == {}
    with pytest.raises(api.ApiError, match="totl_kimg: not a setting"):
        api.make_config("demo", totl_kimg=4)
    with pytest.raises(api.ApiError, match="--out: required with --data"):
        api.train(data=REPO)


def test_generate_interpolate_from_a_run_and_from_a_loaded_generator(tiny_run, tmp_path):
    loaded = progan.load_generator(tiny_run, "latest")
    images = progan.generate(loaded, range(4))
    again = progan.generate(tiny_run, "0-3")
    assert images.dtype == np.uint8 and images.shape == (4, 8, 8, 3)
    np.testing.assert_array_equal(images, again)
    progan.generate(loaded, [0, 1], out=tmp_path / "grid.png")
    assert (tmp_path / "grid.png").stat().st_size > 0
    frames = progan.interpolate(loaded, [1, 2], steps=3, out=tmp_path / "walk.gif")
    assert frames.shape == (4, 8, 8, 3) and (tmp_path / "walk.gif").is_file()
    with pytest.raises(api.ApiError, match="expected at least two seeds"):
        progan.interpolate(loaded, [1])
    with pytest.raises(api.ApiError, match="not conditional"):
        progan.generate(loaded, [0], labels="Smiling")


def test_resume_extends_a_finished_run(tiny_run, tmp_path):
    from progan.run import RunDir

    run = copy_run(tiny_run, tmp_path / "run")
    finished = RunDir(run).snapshots("full")[-1].images_seen
    with pytest.raises(progan.ProganError, match="already at kimg"):
        progan.resume(run, total_kimg=finished / 1000)
    result = progan.resume(run, total_kimg=0.7)
    assert result["images_seen"] >= 700 and not result["stopped"]
    assert RunDir(run).read().config.schedule.total_kimg == 0.7
    assert Config.from_dict(TINY_CONFIG).schedule.total_kimg is None


def test_finetune_takes_gpus_as_train_and_resume_do(tiny_run, tmp_path, monkeypatch):
    from progan.cli import build_parser
    from progan.training import distribute

    args = build_parser().parse_args(["finetune", "RUN", "--kimg", "1", "--out", "OUT", "--gpus", "2"])
    assert args.gpus == 2
    # The run trained on one device (strategy "one"): asking for two is one line naming the
    # flag and what to use, and no run directory appears.
    with pytest.raises(progan.ProganError, match=r"--gpus 2 --strategy one: one device; use --strategy mirrored"):
        progan.finetune(tiny_run, tmp_path / "tuned", kimg=0.05, gpus=2)
    assert not (tmp_path / "tuned").exists()
    # One "GPU" (this CPU, as a faked device list): the fine-tuning runs on it.
    cpu = distribute.tf.config.list_logical_devices("CPU")[0]
    monkeypatch.setattr(distribute, "_accelerators", lambda: [cpu])
    result = progan.finetune(tiny_run, tmp_path / "tuned", kimg=0.05, gpus=1)
    assert result["images_seen"] >= 600 + 50 and not result["stopped"]


def test_a_data_set_without_the_presets_top_level_suggests_what_fits(tiny_dataset, tmp_path):
    with pytest.raises(progan.ProganError, match=r"largest is 8x8\); train to its top level "
                                                 r"with --max-resolution 8, or use --config demo"):
        progan.train(data=tiny_dataset, out=tmp_path / "run", config="celeba64")
    assert not (tmp_path / "run").exists()


def test_resume_grows_a_finished_run_to_a_higher_resolution(tmp_path):
    from progan.dataset.synthetic import ensure_synthetic
    from progan.run import RunDir

    data = ensure_synthetic(tmp_path / "data", num_images=64, resolution=8, seed=0, workers=1,
                            progress=False)
    config = Config.from_dict(TINY_CONFIG).replace(**{  # phases of 6 batches of 8
        "schedule.stable_kimg": 0.048, "schedule.fade_kimg": 0.048, "model.max_resolution": 4})
    run = tmp_path / "run"
    progan.train(data=data, out=run, config=config)  # 4x4 only: 0.048 kimg
    finished = RunDir(run).snapshots("full")[-1]
    before = progan.generate(run, [0, 1], snapshot=finished.path.name)
    assert before.shape == (2, 4, 4, 3)
    with pytest.raises(progan.ProganError, match="can grow, not shrink"):
        progan.resume(run, max_resolution=2)

    result = progan.resume(run, max_resolution=8)  # 8x8 fades in, then trains stable
    grown = RunDir(run).read().config
    assert grown.model.max_resolution == 8 and grown.schedule.total_kimg is None
    assert result["images_seen"] == 144 and result["resolution"] == 8 and not result["stopped"]
    assert progan.generate(run, [0], snapshot="latest").shape == (1, 8, 8, 3)
    # The snapshots from before the run grew still read. The last one now sits where 16x16
    # starts to fade in (alpha 0): the same faces, nearest-upscaled.
    after = progan.generate(run, [0, 1], snapshot=finished.path.name)
    np.testing.assert_array_equal(after[:, ::2, ::2], before)
    assert "now ends at kimg 0.144 at 8x8 (was 0.048 at 4x4)" in (run / "log.txt").read_text()
