import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf
from PIL import Image
from run_fixtures import command_parser, tiny_run  # noqa: F401  (fixture)

from progan import generation as gen
from progan.evaluation import cli
from progan.images import format_seeds, parse_seeds, seed_latents
from progan.run import RunDir, RunError


def checkpoint_values(run_dir, images_seen, prefix):
    """The arrays saved under ``prefix/<layer>/<weight>`` (e.g. ema) of a full snapshot."""
    path = run_dir / "checkpoints" / f"snapshot-{images_seen:012d}" / "ckpt"
    reader = tf.train.load_checkpoint(str(path))
    values = {}
    for name, _ in tf.train.list_variables(str(path)):
        parts = name.split("/")
        if parts[0] == prefix and parts[-1] == "VARIABLE_VALUE" and len(parts) == 5:
            values["/".join(parts[1:3])] = reader.get_tensor(name)
    return [values[key] for key in sorted(values)]


def test_load_generator_restores_the_ema_weights_and_the_stage_alpha(tiny_run):
    loaded = gen.load_generator(tiny_run, "0.304")
    assert loaded.images_seen == 304
    # TINY_CONFIG: 4x4 stable for 200 images, then the 8x8 fade over the next 200.
    assert (loaded.stage.resolution, loaded.stage.fading) == (8, True)
    assert loaded.stage.alpha == pytest.approx((304 - 200) / 200)
    assert loaded.model.output_shape == (None, 8, 8, 3)
    fade = [layer for layer in loaded.model.layers if layer.name == "generator_fade"][0]
    assert float(fade.alpha.numpy()) == pytest.approx(0.52)

    ema = checkpoint_values(tiny_run, 304, "ema")
    trained = checkpoint_values(tiny_run, 304, "generator")
    weights = [v.numpy() for v in loaded.model.trainable_weights]
    assert len(ema) == len(trained) > 0
    by_shape_ema = {value.tobytes() for value in ema}
    assert all(weight.tobytes() in by_shape_ema for weight in weights)
    assert not any(np.array_equal(a, b) for a, b in zip(ema, trained) if a.size > 1)

    latest = gen.load_generator(tiny_run)
    assert latest.images_seen == RunDir(tiny_run).snapshots()[-1].images_seen
    assert (latest.stage.resolution, latest.stage.fading, latest.stage.alpha) == (8, False, 1.0)
    with pytest.raises(RunError, match="no snapshot at 12 images"):
        gen.load_snapshot(tiny_run, 12, loaded.config)


def test_latents_are_one_per_seed_and_truncation_resamples_large_components():
    latents = seed_latents([5, 6, 5], 16)
    assert latents.dtype == np.float32 and latents.shape == (3, 16)
    np.testing.assert_array_equal(latents[0], np.random.RandomState(5).standard_normal(16).astype(np.float32))
    np.testing.assert_array_equal(latents[2], latents[0])  # a seed's latent does not depend on its row
    assert not np.array_equal(latents[0], latents[1])
    assert parse_seeds("0-3, 7,5-5") == [0, 1, 2, 3, 7, 5] and format_seeds(range(36)) == "0-35"
    assert format_seeds([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    for bad in ("", "3-1", "a", "-2"):
        with pytest.raises(ValueError, match="expected seeds like 0-7,12"):
            parse_seeds(bad)

    seeds = range(4000)
    truncated = seed_latents(seeds, 16, truncation=1.0).astype(np.float64)
    assert np.abs(truncated).max() <= 1.0
    # components already inside the threshold on the first draw are kept as drawn
    first = seed_latents(seeds, 16).astype(np.float64)
    inside = np.abs(first) <= 1.0
    np.testing.assert_array_equal(truncated[inside], first[inside])
    # redrawing until inside gives a normal truncated at +-1
    statistic = scipy.stats.kstest(truncated.ravel(), scipy.stats.truncnorm(-1.0, 1.0).cdf)
    assert statistic.pvalue > 1e-3
    with pytest.raises(ValueError, match="--truncation"):
        seed_latents([0], 16, truncation=0.0)


def test_generate_images(tiny_run):
    model = gen.load_generator(tiny_run).model
    images = gen.generate(model, [3, 4, 5, 6, 7], batch_size=2)
    assert images.dtype == np.uint8 and images.shape == (5, 8, 8, 3)
    expected = np.clip(np.rint((model(seed_latents([3, 4, 5, 6, 7], 16)).numpy() + 1) * 127.5), 0, 255)
    np.testing.assert_array_equal(images, expected.astype(np.uint8))
    np.testing.assert_array_equal(gen.generate(model, [3])[0], images[0])


def test_the_training_grid_is_drawn_again_by_its_seeds(tiny_run, tmp_path):
    """fakes-<images seen>.png shows seeds 0..N-1; `progan generate --seeds 0-3` draws the same faces."""
    parser = command_parser(cli.add_generate)
    args = parser.parse_args(["generate", str(tiny_run), "--seeds", "0-3", "--snapshot", "0.304",
                              "--out", str(tmp_path / "again.png")])
    args.run(args, parser)
    # TINY_CONFIG: grid_size 2, 8x8 images enlarged x16 to 256 pixels
    with Image.open(tiny_run / "fakes-000000000304.png") as seen, Image.open(tmp_path / "again.png") as again:
        np.testing.assert_array_equal(np.asarray(again), np.asarray(seen))
    assert "fakes*.png show seeds 0-3" in (tiny_run / "log.txt").read_text()


def reference_slerp(a, b, t):
    """Unit vectors: rotate a towards b in their plane, cos(t w) a + sin(t w) u."""
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    angle = np.arccos(np.dot(a, b))
    u = b - np.dot(a, b) * a
    u /= np.linalg.norm(u)
    return np.cos(t[:, None] * angle) * a + np.sin(t[:, None] * angle) * u


def test_slerp_matches_a_rotation_in_the_plane_of_the_endpoints():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(32), rng.standard_normal(32)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
    t = np.linspace(0, 1, 9)
    path = gen.slerp(a, b, t)
    np.testing.assert_allclose(path, reference_slerp(a, b, t), atol=1e-12)
    np.testing.assert_allclose(path[0], a, atol=1e-12)
    np.testing.assert_allclose(path[-1], b, atol=1e-12)
    steps = np.arccos(np.clip(np.sum(path[1:] * path[:-1], axis=1), -1, 1))
    np.testing.assert_allclose(steps, steps[0], atol=1e-9)  # constant angular speed
    np.testing.assert_allclose(gen.slerp(a, a, t), np.tile(a, (9, 1)), atol=1e-12)


def test_interpolate_walks_from_seed_to_seed_and_writes_a_gif(tiny_run, tmp_path):
    model = gen.load_generator(tiny_run).model
    latents = gen.interpolation_latents([1, 2, 3], 16, steps=4)
    assert latents.shape == (9, 16)
    np.testing.assert_array_equal(latents[4], seed_latents([2], 16)[0])
    frames = gen.interpolate(model, [1, 2, 3], steps=4)
    assert frames.shape == (9, 8, 8, 3)
    np.testing.assert_array_equal(frames[0], gen.generate(model, [1])[0])
    np.testing.assert_array_equal(frames[-1], gen.generate(model, [3])[0])

    parser = command_parser(cli.add_interpolate)
    args = parser.parse_args(["interpolate", str(tiny_run), "--seeds", "1,2,3", "--steps", "4",
                              "--size", "64", "--out", str(tmp_path / "walk.gif")])
    args.run(args, parser)
    with Image.open(tmp_path / "walk.gif") as gif:
        assert gif.n_frames == 9 and gif.size == (64, 64)
        gif.seek(0)
        first = np.asarray(gif.convert("RGB"))[::8, ::8]
    # GIF palettes quantise colours; the frame is still the seed-1 image
    assert np.abs(first.astype(int) - frames[0]).mean() < 8

    from progan import cli as progan_cli

    with pytest.raises(SystemExit) as stop:  # the command line prints the error in one line
        progan_cli.main(["interpolate", str(tiny_run), "--seeds", "1", "--out", "x.gif"])
    assert stop.value.code == 2
    command = ["interpolate", str(tiny_run), "--steps", "2", "--out", str(tmp_path / "walk.mp4")]
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit) as stop:
            progan_cli.main(command)
        assert stop.value.code == 2
    else:
        progan_cli.main(command)
        assert (tmp_path / "walk.mp4").stat().st_size > 0


def test_generate_command_writes_a_grid_or_a_folder(tiny_run, tmp_path, capsys):
    parser = command_parser(cli.add_generate)
    args = parser.parse_args(["generate", str(tiny_run), "--seeds", "2-7",
                              "--truncation", "1.5", "--out", str(tmp_path / "grid.png")])
    args.run(args, parser)
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (3 * 8 * 11, 2 * 8 * 11)  # 3x2 grid of 8x8, enlarged to >= 256

    args = parser.parse_args(["generate", str(tiny_run), "--seeds", "0-1,12", "--snapshot", "0.304",
                              "--out", str(tmp_path / "images")])
    args.run(args, parser)
    files = sorted((tmp_path / "images").iterdir())
    assert [f.name for f in files] == ["seed0000.png", "seed0001.png", "seed0012.png"]
    model = gen.load_generator(tiny_run, "0.304").model
    np.testing.assert_array_equal(np.asarray(Image.open(files[2])), gen.generate(model, [12])[0])

    from progan import cli as progan_cli

    with pytest.raises(SystemExit) as stop:
        progan_cli.main(["generate", str(tiny_run), "--out", str(tmp_path / "grid.jpg")])
    error = capsys.readouterr().err
    assert stop.value.code == 2 and error.count("\n") == 1 and "--out" in error


SAVED_MODEL_CHECK = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf

    module = tf.saved_model.load(sys.argv[1])
    serve = module.signatures["serving_default"]
    images = serve(latents=tf.constant(np.load(sys.argv[2])))["images"]
    assert "progan" not in sys.modules, "the SavedModel needed progan"
    np.save(sys.argv[3], images.numpy())
""")


KERAS_CHECK = textwrap.dedent("""
    import sys
    sys.modules["progan"] = None  # importing progan now fails: the file must not need it
    import keras
    import numpy as np

    model = keras.saving.load_model(sys.argv[1])
    np.save(sys.argv[3], model(np.load(sys.argv[2])).numpy())
""")


def test_export_reloads_without_progan_both_as_saved_model_and_keras(tiny_run, tmp_path):
    description = gen.export(tiny_run, tmp_path / "export", "0.304")  # a fading stage
    written = json.loads((tmp_path / "export" / "export.json").read_text())
    assert written["alpha"] == pytest.approx(0.52) and "no progan needed" in written["how_to_load"]["keras"]
    assert description["resolution"] == 8 and description["fading"]
    loaded = gen.load_generator(tiny_run, "0.304")
    latents = seed_latents(range(9, 14), 16)
    np.save(tmp_path / "latents.npy", latents)

    for script, result_file in ((SAVED_MODEL_CHECK, "images.npy"), (KERAS_CHECK, "keras.npy")):
        path = description["saved_model"] if script is SAVED_MODEL_CHECK else description["keras"]
        result = subprocess.run([sys.executable, "-c", script, path, str(tmp_path / "latents.npy"),
                                 str(tmp_path / result_file)],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
    served = np.load(tmp_path / "images.npy")
    assert served.dtype == np.uint8 and served.shape == (5, 8, 8, 3)
    np.testing.assert_array_equal(served, gen.images_from_latents(loaded.model, latents))
    np.testing.assert_allclose(np.load(tmp_path / "keras.npy"), loaded.model(latents).numpy(),
                               rtol=0, atol=1e-4)
    # an export folder is replaced, anything else is refused
    gen.export(tiny_run, tmp_path / "export", "latest")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep me")
    with pytest.raises(gen.ExportError, match="not an earlier export"):
        gen.export(tiny_run, tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep me"


def test_portable_generator_computes_what_the_progan_layers_compute():
    from progan.config import ModelConfig
    from progan.networks import ProGAN
    from progan.portable import portable_generator

    latents = seed_latents(range(3), 16)
    for fused_from in (0, 8):  # nearest upscale + conv, and the fused transposed convolution
        networks = ProGAN(ModelConfig(latent_size=16, fmap_base=64, fmap_max=16, max_resolution=16,
                                      fused_scale_from=fused_from), with_discriminator=False)
        networks.set_alpha(0.3)
        for resolution, fading in ((4, False), (16, True), (16, False)):
            model = networks.generator(resolution, fading)
            portable = portable_generator(model)
            assert {type(layer).__module__.split(".")[0] for layer in portable.layers} == {"keras"}
            np.testing.assert_allclose(portable(latents).numpy(), model(latents).numpy(), atol=1e-5)


def test_enormous_seed_requests_are_refused_with_the_memory_they_need(tiny_run, monkeypatch):
    from progan import api

    with pytest.raises(ValueError, match="names 10,000,000 seeds; expected at most 1,000,000"):
        parse_seeds("0-9999999")
    monkeypatch.setattr(api, "MAX_IMAGE_BYTES", 100 * 8 * 8 * 3)
    loaded = api.load_generator(tiny_run, "0.304")
    with pytest.raises(api.ApiError, match=r"--seeds: 101 images of 8x8x3 need 0.0 GiB of memory; at "
                       r"most 100 per command .* split the seeds"):
        api.generate(loaded, "0-100")
    assert len(api.generate(loaded, "0-99")) == 100


def test_outputs_in_a_read_only_folder_are_one_line(tiny_run, read_only_dir, capsys):
    from progan import cli as progan_cli

    for command in (["generate", str(tiny_run), "--seeds", "0-3", "--out", str(read_only_dir / "g.png")],
                    ["generate", str(tiny_run), "--seeds", "0-3", "--out", str(read_only_dir / "pngs")],
                    ["interpolate", str(tiny_run), "--out", str(read_only_dir / "walk.gif")],
                    ["export", str(tiny_run), "--out", str(read_only_dir / "export")]):
        with pytest.raises(SystemExit) as stop:
            progan_cli.main(command)
        error = capsys.readouterr().err
        assert stop.value.code == 2 and error.count("\n") == 1, error
        assert error.startswith(f"progan {command[0]}: error: --out ") and "is not writable" in error
    assert list(read_only_dir.iterdir()) == []
