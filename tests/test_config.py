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
