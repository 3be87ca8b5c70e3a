"""Differentiable augmentation, its adaptive strength, FreezeD and `finetune --data`."""

import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_CONFIG
from run_fixtures import tiny_run  # noqa: F401  (fixture)

from progan.config import Config
from progan.run import RunDir, RunError
from progan.training import augment
from progan.training import trainer as training

ALL_OPS = ("translation", "cutout", "color")


def tiny(**overrides) -> Config:
    return Config.from_dict(TINY_CONFIG).replace(**overrides)


def _images(seed=0, shape=(4, 8, 8, 3), dtype=tf.float64):
    return tf.constant(np.random.default_rng(seed).uniform(-1, 1, shape), dtype)


def _params(images_seen=0, stream=augment.REALS, batch=4):
    return augment.draw(7, tf.constant(images_seen, tf.int64), stream, batch)


@pytest.mark.parametrize("op", ALL_OPS)
def test_each_op_is_differentiable_and_matches_finite_differences(op):
    images = _images()
    params = _params()
    weights = _images(seed=1)
    gated = tf.concat([tf.zeros_like(params[:, :1]), params[:, 1:]], axis=1)  # gates on

    def objective(x):
        return tf.reduce_sum(weights * augment.augment(x, gated, (op,), 1.0))

    with tf.GradientTape() as tape:
        tape.watch(images)
        value = objective(images)
    gradient = tape.gradient(value, images).numpy()
    assert np.all(np.isfinite(gradient)) and np.abs(gradient).max() > 0
    assert not np.array_equal(augment.augment(images, gated, (op,), 1.0).numpy(), images.numpy())
    rng, eps, base = np.random.default_rng(2), 1e-6, images.numpy()
    for _ in range(6):
        index = tuple(rng.integers(0, n) for n in base.shape)
        plus, minus = base.copy(), base.copy()
        plus[index] += eps
        minus[index] -= eps
        estimate = (objective(tf.constant(plus)) - objective(tf.constant(minus))).numpy() / (2 * eps)
        assert estimate == pytest.approx(gradient[index], abs=1e-6, rel=1e-5)


def test_p_zero_is_bitwise_identity_and_randomness_is_a_function_of_seed_and_images_seen():
    images = _images(dtype=tf.float32)
    params = _params()
    np.testing.assert_array_equal(augment.augment(images, params, ALL_OPS, 0.0).numpy(), images.numpy())
    first = augment.augment(images, params, ALL_OPS, 1.0).numpy()
    np.testing.assert_array_equal(augment.augment(images, _params(), ALL_OPS, 1.0).numpy(), first)
    for other in (_params(images_seen=8), _params(stream=augment.G_FAKES)):
        assert not np.array_equal(augment.augment(images, other, ALL_OPS, 1.0).numpy(), first)
    # p = 0.5: some samples augmented, the others bitwise untouched
    half = augment.augment(images, params, ALL_OPS, 0.5).numpy()
    same = [np.array_equal(half[i], images.numpy()[i]) for i in range(len(half))]
    gates = params.numpy()[:, [0, 3, 6]] < 0.5
    assert same == [not gates[i].any() for i in range(len(half))]


def _trainer(config, data, path):
    return training.Trainer(config, data, path)


def _state_arrays(trainer):
    state = trainer.state
    return [v.numpy() for v in state.generator_variables + state.discriminator_variables
            + state.ema_variables + list(state.augment.values())]


@pytest.fixture
def deterministic():
    """training.deterministic turns op determinism on for the process: off again after."""
    from tensorflow.python.framework import config as framework_config

    was = framework_config.is_op_determinism_enabled()
    yield
    if not was:
        framework_config.disable_op_determinism()


def test_resumed_run_with_adaptive_augmentation_matches_an_uninterrupted_one(
        tmp_path, tiny_dataset, deterministic):
    config = tiny(**{"loss.augment": list(ALL_OPS), "loss.augment_target": 0.6,
                     "loss.augment_interval": 2, "loss.augment_speed_kimg": 0.2,
                     "training.deterministic": True})
    straight = _trainer(config, tiny_dataset, tmp_path / "straight")
    first = _trainer(config, tiny_dataset, tmp_path / "interrupted")
    for trainer in (straight, first):  # mid-way, so that augmentation happens and p moves
        trainer.state.augment["augment_p"].assign(0.5)
    straight.run_iterations(6)
    first.run_iterations(3)  # the snapshot falls between two updates of p
    first.snapshot()
    resumed = _trainer(config, tiny_dataset, tmp_path / "interrupted")
    assert resumed.restore() == 24
    resumed.run_iterations(3)
    assert float(straight.state.augment["augment_p"].numpy()) != 0.5  # p moved
    for a, b in zip(_state_arrays(straight), _state_arrays(resumed)):
        np.testing.assert_array_equal(a, b)


def test_adaptive_p_rises_when_the_discriminator_overfits(tmp_path):
    from progan.dataset.synthetic import ensure_synthetic

    data = ensure_synthetic(tmp_path / "sixteen", num_images=16, resolution=8, seed=0,
                            workers=1, progress=False)
    # G barely moves (g_lr 1e-9): D alone learns to tell 16 reals from fixed fakes. The
    # non-saturating loss, as in StyleGAN2-ADA: its D(real) > 0 means "real".
    config = tiny(**{"optimizer.g_lr": 1e-9, "optimizer.d_lr": 0.01, "loss.augment": ["color"],
                     "loss.name": "nonsaturating_r1", "loss.r1_gamma": 0.1,
                     "loss.augment_target": 0.6, "loss.augment_interval": 2,
                     "loss.augment_speed_kimg": 1.0})
    trainer = _trainer(config, data, tmp_path / "run")
    stage, step, iterator = trainer.enter(0)
    history = []
    for _ in range(8):
        step(iterator, tf.constant(4, tf.int64))
        history.append((float(trainer.state.augment["augment_rt"].numpy()),
                        float(trainer.state.augment["augment_p"].numpy())))
    rts, ps = zip(*history)
    assert max(rts[-3:]) > 0.6 and rts[-1] > rts[0], history
    assert ps[0] >= 0 and ps[-1] > 0 and ps[-1] >= max(ps[:-1]) - 1e-6, history


def test_frozen_discriminator_layers_do_not_change(tmp_path, tiny_dataset):
    config = tiny(**{"optimizer.freeze_d": 1})
    trainer = _trainer(config, tiny_dataset, tmp_path / "run")
    trainer.state.images_seen.assign(trainer.schedule.start_of(8, fading=False))
    named = trainer.state.networks.named_weights("discriminator")
    before = {f"{layer}/{name}": v.numpy() for layer, weights in named.items()
              for name, v in weights.items()}
    trainer.run_iterations(2)
    changed = {key for layer, weights in named.items() for name, v in weights.items()
               if not np.array_equal(v.numpy(), before[key := f"{layer}/{name}"])}
    frozen = {key for key in before if key.startswith(("d_8_", "from_rgb_8/"))}
    assert frozen and not (changed & frozen)
    assert {key for key in before if key.startswith("d_4_")} <= changed


def test_finetune_onto_another_data_set(tmp_path, tiny_run):
    from progan.dataset.synthetic import ensure_synthetic

    source = tiny_run  # its snapshot at kimg 0.104 (4x4 stable) is the start
    other = ensure_synthetic(tmp_path / "other", num_images=64, resolution=8, seed=1,
                             workers=1, progress=False)
    small = ensure_synthetic(tmp_path / "small", num_images=64, resolution=4, seed=1,
                             workers=1, progress=False)
    gray = tmp_path / "gray"
    shutil.copytree(other, gray)
    manifest = json.loads((gray / "dataset.json").read_text())
    (gray / "dataset.json").write_text(json.dumps({**manifest, "channels": 1}))
    for data, kimg, message in ((small, 0.2, "has no 8x8 level"), (gray, 0.05, "1-channel")):
        with pytest.raises(RunError, match=message) as error:
            training.finetune(source, tmp_path / "refused", snapshot="0.104", kimg=kimg, data=data)
        assert "\n" not in str(error.value) and "--data" in str(error.value)
    assert not (tmp_path / "refused").exists()
    from progan.cli import main as progan  # the command line, in this process (TF loads once)

    assert progan(["finetune", str(source), "--snapshot", "0.104", "--data", str(other), "--kimg", "0.05", "--out",
                   str(tmp_path / "tuned"), "--augment", "translation,color", "--freeze-d", "1"]) == 0
    info = RunDir(tmp_path / "tuned").read()
    source_info = RunDir(source).read()
    assert info.origin["run"] == str(source.resolve()) and info.origin["images_seen"] == 104
    assert info.origin["data_fingerprint"] == source_info.data_fingerprint
    assert info.origin["new_data_fingerprint"] == info.data_fingerprint != source_info.data_fingerprint
    assert info.config.loss.augment == ("translation", "color") and info.config.optimizer.freeze_d == 1
    stats = [json.loads(line) for line in (tmp_path / "tuned" / "stats.jsonl").read_text().splitlines()]
    assert stats[-1]["images_seen"] >= 154 and stats[-1]["augment_p"] == 1.0
    # a data set with a lower maximum resolution is fine while the schedule stays below it
    training.finetune(source, tmp_path / "tuned4", snapshot="0.104", kimg=0.02, data=small)
    assert RunDir(tmp_path / "tuned4").read().origin["new_data"] == str(small.resolve())
