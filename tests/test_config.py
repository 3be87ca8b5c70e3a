import json

import pytest

from progan.config import PRESETS, Config, ConfigError, load_config


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    config = load_config(name)
    again = Config.from_json(config.to_json())
    assert again == config
    assert again.diff(config) == []


def test_celeba64_is_the_thesis_setup():
    config = load_config("celeba64")
    assert (config.model.latent_size, config.model.fmap_base, config.model.fmap_max) == (512, 8192, 512)
    assert config.model.max_resolution == 64
    assert config.schedule.batch_size == 16 and config.optimizer.g_lr == config.optimizer.d_lr == 0.001
    assert (config.schedule.fade_kimg, config.schedule.stable_kimg) == (800, 800)
    assert (config.optimizer.beta1, config.optimizer.beta2, config.optimizer.epsilon) == (0.0, 0.99, 1e-8)
    assert (config.loss.name, config.loss.gp_lambda, config.loss.drift) == ("wgan_gp", 10.0, 0.001)
    assert config.model.leaky_slope == 0.2 and config.model.mbstd_group_size == 4
    assert config.training.ema_beta == 0.999 and config.training.mirror


def test_paper_preset_uses_v1_minibatches():
    schedule = load_config("paper").schedule
    assert schedule.batch_size == 16
    assert schedule.batch_sizes == {256: 14, 512: 6, 1024: 3}


def test_unknown_keys_and_bad_values_are_named():
    with pytest.raises(ConfigError, match="unknown setting 'latnt_size'"):
        Config.from_dict({"model": {"latnt_size": 3}})
    with pytest.raises(ConfigError, match="unknown section 'modle'"):
        Config.from_dict({"modle": {}})
    with pytest.raises(ConfigError, match="model.max_resolution"):
        Config.from_dict({"model": {"max_resolution": 48}})
    with pytest.raises(ConfigError, match="schedule.batch_size"):
        Config.from_dict({"schedule": {"batch_size": 0}})
    with pytest.raises(ConfigError, match="an integer"):
        Config.from_dict({"model": {"latent_size": "512"}})
    with pytest.raises(ConfigError, match="loss.name"):
        Config.from_dict({"loss": {"name": "hinge"}})
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.from_json("{")


def test_replace_and_diff():
    base = load_config("demo")
    changed = base.replace(**{"schedule.batch_size": 32, "training.seed": 7})
    assert changed.schedule.batch_size == 32 and changed.training.seed == 7
    assert sorted(base.diff(changed)) == ["schedule.batch_size", "training.seed"]
    with pytest.raises(ConfigError, match="unknown setting 'schedule.bach'"):
        base.replace(**{"schedule.bach": 1})


def test_load_config_from_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"model": {"max_resolution": 16}, "schedule": {"batch_sizes": {"8": 4}}}))
    config = load_config(path)
    assert config.model.max_resolution == 16 and config.schedule.batch_sizes == {8: 4}
    with pytest.raises(ConfigError, match="expected a preset"):
        load_config(tmp_path / "missing.json")


@pytest.mark.parametrize("setting, value, expected", [
    ("training.seed", -1, r"training.seed: expected an integer from 0 to 2147483647"),
    ("training.seed", 2 ** 40, r"training.seed: expected an integer from 0 to 2147483647"),
    ("optimizer.freeze_d", 3, r"optimizer.freeze_d: expected fewer than the discriminator's 3 "
                              r"blocks at max_resolution 16 \(at most 2"),
])
def test_values_no_run_can_use_are_refused_before_anything_is_written(setting, value, expected):
    config = load_config("demo").replace(**{"model.max_resolution": 16})
    assert config.replace(**{"optimizer.freeze_d": 2}).optimizer.freeze_d == 2
    with pytest.raises(ConfigError, match=expected):
        config.replace(**{setting: value})


def test_numbers_set_in_python_must_be_finite_too():
    import dataclasses

    config = load_config("demo")
    for section, name in (("schedule", "total_kimg"), ("optimizer", "g_lr"), ("training", "tick_kimg")):
        with pytest.raises(ConfigError, match=f"{section}.{name}: expected a finite number, got inf"):
            dataclasses.replace(getattr(config, section), **{name: float("inf")})


def test_a_runs_config_json_is_a_config_file(tmp_path):
    from progan.run import RunDir, RunInfo

    config = load_config("demo").replace(**{"training.seed": 7})
    run = RunDir(tmp_path / "run")
    run.write(RunInfo(config, tmp_path / "data", None))
    assert load_config(run.config_file) == config
