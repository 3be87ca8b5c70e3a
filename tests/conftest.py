"""Shared test settings.

The CPU is split into two logical devices before TensorFlow starts, so MirroredStrategy
can be tested on this machine; the Keras dtype policy is restored after every test.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])

REPO = Path(__file__).resolve().parents[1]

TINY_CONFIG = {
    "model": {"latent_size": 16, "fmap_base": 64, "fmap_max": 16, "max_resolution": 8},
    "schedule": {"stable_kimg": 0.2, "fade_kimg": 0.2, "batch_size": 8},
    "training": {"tick_kimg": 0.1, "snapshot_kimg": 0.1, "grid_size": 2, "seed": 1,
                 "strategy": "one"},
}


@pytest.fixture(autouse=True)
def _restore_dtype_policy():
    policy = keras.mixed_precision.global_policy()
    yield
    keras.mixed_precision.set_global_policy(policy)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A 256-image synthetic dataset with levels 4 and 8, built once per session."""
    from progan.dataset.synthetic import ensure_synthetic

    return ensure_synthetic(tmp_path_factory.mktemp("data") / "tiny", num_images=256,
                            resolution=8, seed=0, workers=1, progress=False)


@pytest.fixture
def tiny_config_file(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


def run_progan(*args, timeout=300, **kwargs):
    """`python -m progan ...` in a subprocess (the same command line a user types)."""
    import subprocess

    return subprocess.run([sys.executable, "-m", "progan", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=kwargs.pop("cwd", REPO), **kwargs)


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write to: a read-only tmpfs for root (whom permissions do not
    stop), mode 555 otherwise."""
    import subprocess

    path = tmp_path / "read-only"
    path.mkdir()
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], check=True)
        yield path
        subprocess.run(["umount", str(path)], check=True)
    else:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
