"""Write a tiny run directory with this version of progan, for the compatibility tests.

    python tests/data/write_run_fixture.py tests/data/run-v$(python -c "import progan; print(progan.__version__)")

Trains TINY_CONFIG (tests/conftest.py) to kimg 0.304 (mid 8x8 fade-in) on the 256-image
synthetic set, keeps one snapshot, and stores in ``expected.npz`` what the restored networks
must compute: EMA and trained generator images for fixed latents, discriminator scores for
fixed images. Commit the folder when a version changes the checkpoint or config.json format;
tests/test_run_compat.py then checks that every committed run keeps resuming.
"""

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TINY_CONFIG  # noqa: E402

from progan.config import Config  # noqa: E402
from progan.dataset.synthetic import ensure_synthetic  # noqa: E402
from progan.training import trainer as training  # noqa: E402


def expected_outputs(trainer) -> dict:
    """What the networks of a trainer compute at its current stage (the fixture's check)."""
    stage = trainer.schedule.stage_at(int(trainer.state.images_seen.numpy()))
    latents = np.random.default_rng(5).standard_normal(
        (4, trainer.config.model.latent_size)).astype(np.float32)
    images = np.random.default_rng(6).uniform(
        -1, 1, (4, stage.resolution, stage.resolution, 3)).astype(np.float32)
    trainer.state.ema.set_alpha(stage.alpha)
    trainer.state.networks.set_alpha(stage.alpha)
    return {
        "latents": latents, "d_images": images,
        "ema_images": trainer.state.ema.generator(stage.resolution, stage.fading)(latents).numpy(),
        "generator_images": trainer.state.networks.generator(stage.resolution, stage.fading)(latents).numpy(),
        "d_scores": trainer.state.networks.discriminator(stage.resolution, stage.fading)(images).numpy(),
        "images_seen": np.int64(trainer.state.images_seen.numpy())}


def main(out: Path) -> None:
    config = Config.from_dict(TINY_CONFIG).replace(
        **{"schedule.total_kimg": 0.304, "training.keep_checkpoints": 1})
    with tempfile.TemporaryDirectory() as scratch:
        data = ensure_synthetic(Path(scratch) / "tiny", num_images=256, resolution=8, seed=0,
                                workers=1, progress=False)
        shutil.rmtree(out, ignore_errors=True)
        training.train(config, data, out)
        trainer = training.Trainer(config, data, out)
        trainer.restore()
        np.savez(out / "expected.npz", **expected_outputs(trainer))
    for pattern in ("*.png", "events.*", "log.txt", "stats.jsonl", ".lock", "checkpoints/network-*"):
        for path in out.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
