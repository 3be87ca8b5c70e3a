import json

import numpy as np
import pytest
from run_fixtures import command_parser, copy_run, tiny_run, tiny_run_16  # noqa: F401  (fixtures)

from progan.dataset.reader import read_images
from progan.run import RunDir, RunError
from progan.evaluation import cli
from progan.evaluation import run as evaluation
from progan.evaluation.features import RandomConvFeatures
from progan.evaluation.frechet import frechet_distance
from progan.evaluation.msssim import ms_ssim
from progan.evaluation.sliced_wasserstein import swd
from progan.generation import generate, load_generator

REQUIRED = {"kimg", "images_seen", "snapshot", "resolution", "metric", "value", "num_images",
            "split", "time", "seconds"}


def evaluate_parser():
    return command_parser(cli.add_evaluate)


def test_swd_of_every_snapshot_metrics_files_and_best(tiny_run, tmp_path, capsys):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    parser = evaluate_parser()
    args = parser.parse_args(["evaluate", str(run_dir), "--metrics", "swd", "--num-images", "32",
                              "--snapshot", "all"])
    args.run(args, parser)
    output = capsys.readouterr()
    # the synthetic set has no test split: one warning, then the train split
    assert output.out.count("warning: the test split") == 1

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    snapshots = sorted({s.images_seen for s in RunDir(run_dir).snapshots()})
    assert [r["images_seen"] for r in records] == snapshots
    assert all(REQUIRED <= set(r) and r["metric"] == "swd" and r["split"] == "train"
               and r["num_images"] == 32 for r in records)
    assert [r["resolution"] for r in records] == [4, 4, 8, 8, 8, 8, 8]
    assert (run_dir / "metrics.png").stat().st_size > 10_000

    # the value is SWD between the snapshot's EMA images and the first 32 train images
    fading = next(r for r in records if r["images_seen"] == 304)
    assert fading["fading"] and fading["alpha"] == pytest.approx(0.52)
    fakes = generate(load_generator(run_dir, "0.304").model, range(32))
    reals = read_images(RunDir(run_dir).read().data, 8, "train", 32)
    expected = swd(reals, fakes, seed=0)
    assert fading["value"] == pytest.approx(expected["avg"], rel=1e-9)
    assert fading["values"] == pytest.approx({"8": expected[8]})

    # best: the lowest SWD among the snapshots at the highest resolution evaluated
    best = RunDir(run_dir).read_best()["metrics"]["swd"]
    at_8 = [r for r in records if r["resolution"] == 8]
    chosen = min(at_8, key=lambda r: r["value"])
    assert (best["images_seen"], best["value"]) == (chosen["images_seen"], chosen["value"])
    assert best["snapshot"] == f"network-{chosen['images_seen']:012d}"
    assert RunDir(run_dir).select_one("best:swd")[0] == chosen["images_seen"]
    assert RunDir(run_dir).select_one("best")[0] == chosen["images_seen"]


def test_fid_needs_inception_unless_random_features_are_chosen(tiny_run, tmp_path, capsys):
    from progan import cli as progan_cli  # what prints an error as one line

    run_dir = copy_run(tiny_run, tmp_path / "run")
    with pytest.raises(SystemExit) as exit_info:
        progan_cli.main(["evaluate", str(run_dir), "--metrics", "swd,fid", "--num-images", "32"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "--inception-weights" in message and \
        "--inception-graph" in message
    with pytest.raises(SystemExit):
        progan_cli.main(["evaluate", str(run_dir), "--metrics", "kid",
                         "--inception-graph", str(tmp_path / "missing.pb")])
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and "--inception-graph" in message and "missing.pb" in message
    with pytest.raises(evaluation.EvaluationError, match="--metrics"):
        evaluation.parse_metrics("swd,fdi")
    assert not (run_dir / "metrics.jsonl").exists()

    data = tmp_path / "data"
    copy_run(RunDir(run_dir).read().data, data)  # a private dataset copy for the cache
    description = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**description, "data": str(data)}))
    extractor = RandomConvFeatures(seed=0)
    records = evaluation.evaluate_snapshot(run_dir, 600, ["fid", "kid"], num_images=48,
                                           split="train", feature_extractor=extractor)
    cached = list((data / ".cache").glob("*.npz"))
    assert len(cached) == 1 and "r8-train-48-random-conv" in cached[0].name

    fakes = generate(load_generator(run_dir, "0.6").model, range(48))
    real_features = extractor.features(read_images(data, 8, "train", 48))
    fake_features = extractor.features(fakes)
    expected = frechet_distance(real_features.mean(0), np.cov(real_features, rowvar=False),
                                fake_features.mean(0), np.cov(fake_features, rowvar=False))
    assert records["fid"]["value"] == pytest.approx(expected, rel=1e-6)
    assert records["fid"]["feature_extractor"] == extractor.name

    # a second evaluation reads the real statistics from the cache, not the images
    calls = []
    original = extractor.features
    extractor.features = lambda images: calls.append(len(images)) or original(images)
    again = evaluation.evaluate_snapshot(run_dir, 600, ["fid"], num_images=48, split="train",
                                         feature_extractor=extractor)
    assert calls == [48] and again["fid"]["value"] == pytest.approx(records["fid"]["value"])


def test_test_split_and_msssim_at_16(tiny_run_16, tmp_path):
    run_dir = copy_run(tiny_run_16, tmp_path / "run")
    lines = []
    evaluator = evaluation.SnapshotEvaluator(run_dir, ["swd", "msssim"], num_images=16,
                                             log=lines.append)
    records = evaluator.evaluate(16)
    assert not any("warning" in line for line in lines)
    assert {r["split"] for r in records.values()} == {"test"}
    data = RunDir(run_dir).read().data
    reals = read_images(data, 16, "test", 16)
    fakes = generate(load_generator(run_dir, "latest").model, range(16))
    assert records["msssim"]["value"] == pytest.approx(ms_ssim(fakes))
    assert records["msssim"]["real_value"] == pytest.approx(ms_ssim(reals))
    assert records["swd"]["value"] == pytest.approx(swd(reals, fakes, seed=0)["avg"])

    lines.clear()
    fallback = evaluation.evaluate_snapshot(run_dir, 0, ["swd"], num_images=32, log=lines.append)
    assert fallback["swd"]["split"] == "train"
    assert sum("warning" in line for line in lines) == 1
    with pytest.raises(evaluation.EvaluationError, match="--num-images 64: the train split"):
        evaluation.evaluate_snapshot(run_dir, 0, ["swd"], num_images=64, log=lines.append)
    # without --num-images the default is capped at the real images there are, with a note
    lines.clear()
    capped = evaluation.evaluate_snapshot(run_dir, 0, ["swd"], num_images=None, log=lines.append)
    available = read_images(data, 16, "train").shape[0]
    assert available < evaluation.DEFAULT_NUM_IMAGES
    assert capped["swd"]["num_images"] == available and capped["swd"]["split"] == "train"
    assert any(f"evaluating with {available} instead of" in line for line in lines)


def record(images_seen, metric, value, resolution=8, num_images=100, **extra):
    return {"images_seen": images_seen, "kimg": images_seen / 1000, "metric": metric,
            "value": value, "resolution": resolution, "num_images": num_images, "split": "test",
            "snapshot": f"snapshot-{images_seen:012d}", **extra}


def test_best_rules(tiny_run, tmp_path):
    """Lowest value at the highest resolution among comparable records of snapshots on disk;
    MS-SSIM closest to the reals'; other metrics' entries are kept."""
    run_dir = copy_run(tiny_run, tmp_path / "run")
    (run_dir / "checkpoints" / "best.json").write_text(json.dumps(  # progan 0.1.0's layout
        {"other": {"snapshot": "snapshot-000000000600", "images_seen": 600, "value": 1.0}}))
    records = [
        record(0, "swd", 1.0, resolution=4),            # lower, but at 4x4
        record(400, "swd", 9.0),
        record(504, "swd", 5.0),
        record(600, "swd", 7.0),
        record(504, "swd", 8.0),                        # re-evaluated: the latest record counts
        record(600, "swd", 0.5, num_images=10),         # not comparable with the newest record
        record(600, "swd", 6.0),                        # the newest: 100 images
        record(400, "msssim", 0.30, real_value=0.20),
        record(504, "msssim", 0.15, real_value=0.20),   # closest to the reals
        record(600, "msssim", 0.05, real_value=0.20),
        record(999, "msssim", 0.20, real_value=0.20),   # no such snapshot on disk
    ]
    run = RunDir(run_dir)
    run.append_metrics(records)
    best = evaluation.update_best(run, primary="swd")
    assert best["primary"] == "swd"
    assert best["metrics"]["swd"]["images_seen"] == 600 and best["metrics"]["swd"]["value"] == 6.0
    assert best["metrics"]["msssim"]["images_seen"] == 504
    assert best["metrics"]["msssim"]["real_value"] == 0.20
    assert best["metrics"]["other"]["value"] == 1.0
    assert run.read_best() == best
    # `best` is the primary metric's choice, not the alphabetically first metric's
    assert run.select_one("best")[0] == 600 and run.select_one("best:msssim")[0] == 504
    assert evaluation.update_best(run, primary="msssim")["primary"] == "msssim"
    assert run.select_one("best")[0] == 504
    assert evaluation.plot_metrics(run_dir).exists()


def test_a_new_metric_is_one_registration(tiny_run, tmp_path, monkeypatch):
    """Evaluation, validation, best.json and the plot take a metric from the registry alone."""
    from progan.evaluation import registry

    def brightness(evaluator, resolution, fakes, cache):
        return {"value": float(fakes.mean()), "real_value": float(evaluator.real_images(resolution).mean())}

    monkeypatch.setitem(registry.METRICS, "brightness", registry.Metric(
        "brightness", "mean pixel value (closest to the reals' is best)", brightness,
        min_resolution=8, target="real_value"))
    run_dir = copy_run(tiny_run, tmp_path / "run")
    records = evaluation.evaluate_run(run_dir, "brightness,swd", num_images=16, snapshots="0,0.4,0.6",
                                      split="train", log=lambda line: None)
    assert [r["images_seen"] for r in records if r["metric"] == "brightness"] == [400, 600]  # not 4x4
    best = RunDir(run_dir).read_best()
    assert best["primary"] == "brightness"
    chosen = min((r for r in records if r["metric"] == "brightness"),
                 key=lambda r: abs(r["value"] - r["real_value"]))
    assert best["metrics"]["brightness"]["images_seen"] == chosen["images_seen"]
    assert RunDir(run_dir).select_one("best")[0] == chosen["images_seen"]
    with pytest.raises(evaluation.EvaluationError, match=r"expected .*\bswd, msssim, .*\bbrightness"):
        evaluation.parse_metrics("loudness")


def test_a_moved_data_set_is_given_with_data_and_checked_by_its_fingerprint(tiny_run, tmp_path, tiny_dataset):
    import shutil

    from progan import api
    from progan.dataset.synthetic import ensure_synthetic
    from progan.run import RunError

    with pytest.raises(RunError, match="no-such-run: does not exist; expected a run directory"):
        api.evaluate(tmp_path / "no-such-run")
    run_dir = copy_run(tiny_run, tmp_path / "run")
    stored = json.loads((run_dir / "config.json").read_text())
    stored["data"]["path"] = str(tmp_path / "gone")
    (run_dir / "config.json").write_text(json.dumps(stored))
    with pytest.raises(evaluation.EvaluationError, match=r"config.json: its data set .*gone is gone; give "
                       r"where it is now: progan evaluate .* --data DIR"):
        api.evaluate(run_dir, num_images=16)
    other = ensure_synthetic(tmp_path / "other", num_images=256, resolution=8, seed=5, workers=1,
                             progress=False)
    with pytest.raises(evaluation.EvaluationError, match=r"--data .*other: a different data set"):
        api.evaluate(run_dir, num_images=16, data=other)
    moved = tmp_path / "moved"
    shutil.copytree(tiny_dataset, moved)
    records = api.evaluate(run_dir, num_images=16, data=moved)
    assert [r["metric"] for r in records] == ["swd"]


def test_a_broken_best_json_is_rebuilt_from_metrics_jsonl(tiny_run, tmp_path):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    lines = []
    evaluation.evaluate_run(run_dir, ["swd"], 16, "0.2", log=lines.append)
    RunDir(run_dir).best_file.write_text('{"primary": "swd", "metrics": {"swd": null}}')
    evaluation.evaluate_run(run_dir, ["swd"], 16, "0.304", log=lines.append)
    assert any("best.json: the entry of 'swd' is null" in line and "rebuilding it from metrics.jsonl"
               in line for line in lines)
    best = RunDir(run_dir).read_best()
    assert best["primary"] == "swd" and best["metrics"]["swd"]["images_seen"] in (200, 304)


def test_a_metrics_record_with_a_field_missing_is_named_not_a_traceback(tiny_run, tmp_path):
    import json

    run_dir = copy_run(tiny_run, tmp_path / "run")
    evaluation.evaluate_run(run_dir, ["swd"], 16, "0.2", log=lambda line: None)
    metrics = RunDir(run_dir).metrics_file
    record = json.loads(metrics.read_text().splitlines()[0])
    del record["resolution"]  # valid JSON, but not what readers need (edited by hand)
    metrics.write_text(metrics.read_text() + json.dumps(record) + "\n")
    before = metrics.read_bytes()
    with pytest.raises(RunError, match=r"metrics.jsonl: record 2 has no 'resolution'; .*remove or repair"):
        evaluation.evaluate_run(run_dir, ["swd"], 16, "0.304", log=lambda line: None)
    assert metrics.read_bytes() == before  # nothing appended to a file it cannot read
    record["resolution"] = "8"
    metrics.write_text(before.decode().splitlines()[0] + "\n" + json.dumps(record) + "\n")
    with pytest.raises(RunError, match="record 2 has 'resolution' \"8\""):
        evaluation.evaluate_run(run_dir, ["swd"], 16, "0.304", log=lambda line: None)


def test_an_interrupted_evaluate_ends_in_one_line_with_its_files_readable(tiny_run, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    run_dir = copy_run(tiny_run, tmp_path / "run")
    process = subprocess.Popen([sys.executable, "-m", "progan", "evaluate", str(run_dir), "--snapshot",
                                "all", "--num-images", "200"], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "metrics.jsonl").exists() and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 130, error[-2000:]
    assert error.strip().splitlines()[-1] == "progan evaluate: interrupted; what it finished is kept"
    assert "Traceback" not in error
    run = RunDir(run_dir)
    evaluated = {record["images_seen"] for record in run.read_metrics()}
    assert 0 < len(evaluated) < len(run.snapshots("full"))
    assert run.read_best()["metrics"]["swd"]["images_seen"] in evaluated
