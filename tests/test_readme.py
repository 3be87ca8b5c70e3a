"""README is the front door: its commands must stay true."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import PIL.Image

from conftest import REPO

from progan.cli import build_parser
from progan.dataset.cli import build_parser as build_dataset_parser

README = (REPO / "README.md").read_text()


def bash_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    commands = []
    for line in filter(None, lines):
        for part in line.split("&&"):
            commands.append(part.strip())
    return commands


def test_quick_start_is_two_commands_and_ci_runs_the_test_one():
    quick_start = README.split("## Quick start")[1].split("## ")[0]
    blocks = re.findall(r"```bash\n(.*?)```", quick_start, flags=re.S)
    assert len(blocks) == 2
    main_command, test_command = (block.strip() for block in blocks)
    assert main_command.endswith("progan train")
    ci = (REPO / ".ci" / "run").read_text()
    install, run_tests = (part.strip() for part in test_command.split("&&"))
    assert install.replace("pip install", "python3 -m pip install -q") in ci
    assert run_tests in ci.splitlines()


def test_every_progan_command_in_the_readme_parses():
    parsers = {"progan": build_parser(), "progan-dataset": build_dataset_parser()}
    shown = set()
    for command in bash_commands():
        words = shlex.split(command)
        if words[0] in parsers:
            parsers[words[0]].parse_args(words[1:])
            shown.add((words[0], words[1]))
    # The thesis workflow walks through these; each must be shown and parse.
    workflow = {("progan", name) for name in
                ("train", "resume", "evaluate", "finetune", "generate", "interpolate", "export")}
    workflow |= {("progan-dataset", name) for name in ("create_celeba", "create_tfds", "info")}
    assert workflow <= shown, workflow - shown


# The transfer section, run on the demo run: a folder of 24 photo-like images for the
# user's portraits, a 0.05-kimg fine-tune. Every other word is README's.
TRANSFER_SUBSTITUTIONS = (("~/data/portraits", "portraits"), ("--kimg 20", "--kimg 0.05"))


def test_the_readme_main_command_trains(tmp_path):
    """`progan train` as README shows it, cut short with --total-kimg to fit the test budget,
    then the evaluation README shows next and the transfer section's commands, word for word
    (one interpreter: see DRIVER)."""
    from dataset_fixtures import make_celeba_like_images

    evaluate = next(c for c in bash_commands() if c.startswith("progan evaluate runs/demo"))
    block = README.split("## Transfer to a small data set")[1].split("```")[1]
    transfer = [line.strip() for line in block.splitlines()[1:] if line.strip()]
    for old, new in TRANSFER_SUBSTITUTIONS:
        assert any(old in c for c in transfer), f"README no longer shows {old!r}"
        transfer = [c.replace(old, new) for c in transfer]
    make_celeba_like_images(tmp_path / "portraits", 24)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    commands = ["progan train --total-kimg 0.3", evaluate, *transfer]
    result = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("ok: ") == len(commands) == 4
    tuned = json.loads((tmp_path / "runs" / "demo-portraits" / "config.json").read_text())
    assert tuned["origin"]["new_data"] == str((tmp_path / "tfrecords" / "portraits").resolve())
    assert tuned["config"]["loss"]["augment"] == ["translation", "cutout", "color"]
    assert "built-in demo" in result.stdout
    assert (tmp_path / "tfrecords" / "synthetic" / "dataset.json").exists()
    run = tmp_path / "runs" / "demo"
    assert (run / "config.json").exists() and (run / "curves.png").exists()
    assert "done: kimg 0.3" in (run / "log.txt").read_text()

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kimgs = [r["kimg"] for r in records]  # the snapshot at kimg 0 and the final one
    assert len(kimgs) == 2 and kimgs[0] == 0.0 and 0.3 <= kimgs[1] < 0.35
    assert {(r["metric"], r["num_images"]) for r in records} == {("swd", 4096)}
    assert (run / "metrics.png").exists() and (run / "checkpoints" / "best.json").exists()


CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie "
    "Young").split()

# The thesis walk-through, run as README shows it but small: a 32-image CelebA-like zip instead
# of the 202,599 photos, the demo's widths at 8x8 for 0.2 kimg instead of celeba64's 448 MB
# snapshots, a 0.1-kimg fine-tune. Every other word is README's.
THESIS_SUBSTITUTIONS = (
    ("~/data/img_align_celeba.zip", "img_align_celeba.zip --max-images 32"),
    ("--config celeba64", "--config demo --max-resolution 8 --total-kimg 0.2"),
    ("--kimg 2000", "--kimg 0.1"),
)

# Runs the commands in one interpreter (TensorFlow loads once, not nine times); stops at the
# first that fails and says which.
DRIVER = """
import json, shlex, sys
from progan.cli import main as progan
from progan.dataset.cli import main as progan_dataset
for command in json.loads(sys.argv[1]):
    words = shlex.split(command)
    entry = {"progan": progan, "progan-dataset": progan_dataset}[words[0]]
    try:
        code = entry(words[1:])
    except SystemExit as exit:
        code = exit.code
    if code:
        sys.exit(f"README command failed ({code}): {command}")
    print("ok:", command, flush=True)
"""


def test_the_readme_thesis_walk_through_runs(tmp_path):
    from dataset_fixtures import make_celeba_like_images
    import zipfile

    # ... then the conditional section's commands on the same data set (its attributes)
    blocks = [README.split(title)[1].split("```")[1] for title in
              ("## Reproducing the thesis on CelebA", "## Conditional training on CelebA's attributes")]
    commands = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()[1:]]
    commands = [c for c in commands if c]
    for old, new in THESIS_SUBSTITUTIONS:
        assert any(old in c for c in commands), f"README no longer shows {old!r}"
        commands = [c.replace(old, new) for c in commands]
    photos = make_celeba_like_images(tmp_path / "photos", 32, suffix=".jpg")
    with zipfile.ZipFile(tmp_path / "img_align_celeba.zip", "w") as archive:
        for path in photos:
            archive.write(path, f"img_align_celeba/{os.path.basename(path)}")
    # CelebA's attribute file beside the zip, as CelebA ships it (random values)
    values = np.random.default_rng(0).choice([-1, 1], (len(photos), len(CELEBA_ATTRIBUTES)))
    (tmp_path / "list_attr_celeba.txt").write_text("\n".join(
        [str(len(photos)), " ".join(CELEBA_ATTRIBUTES)]
        + [f"{os.path.basename(path)} " + " ".join(f"{v:2d}" for v in row)
           for path, row in zip(photos, values)]) + "\n")

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(commands)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stdout.count("ok: ") == len(commands) == 13
    assert "32 images" in result.stdout  # info
    run, tuned = tmp_path / "runs" / "celeba64", tmp_path / "runs" / "celeba64-ft"
    metrics = {json.loads(line)["metric"] for line in (run / "metrics.jsonl").read_text().splitlines()}
    assert metrics == {"swd"}  # MS-SSIM needs 16x16; at 4x4 evaluate says so and goes on
    assert "msssim" in result.stdout
    origin = json.loads((tuned / "config.json").read_text())["origin"]
    assert (origin["snapshot"], origin["lr_scale"]) == ("best", 0.8)
    with PIL.Image.open(tmp_path / "grid.png") as grid:  # 8 x 8 images, enlarged for viewing
        assert grid.size[0] == grid.size[1] >= 8 * 4
    with PIL.Image.open(tmp_path / "walk.gif") as walk:
        assert walk.n_frames == 2 * 30 + 1
    assert (tmp_path / "exported" / "saved_model" / "saved_model.pb").exists()
    assert (tmp_path / "exported" / "generator.keras").exists()
    conditional = tmp_path / "runs" / "celeba64-cond"
    assert json.loads((conditional / "config.json").read_text())["config"]["model"]["label_size"] == 40
    assert (tmp_path / "smiling.png").exists() and (tmp_path / "smile.gif").exists()
    agreement = [json.loads(line) for line in (conditional / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["metric"] == "attributes"]
    assert len(agreement) == 1 and set(agreement[0]["values"]) == set(CELEBA_ATTRIBUTES)


def test_the_readme_tfds_command_runs_on_tfds_mock_data(tmp_path, monkeypatch):
    """The create_tfds line word for word; TensorFlow Datasets' own mock stands in for the
    1.4 GB download (the tool's real loading path otherwise)."""
    import tensorflow_datasets as tfds

    from progan.dataset.cli import main

    command = next(c for c in bash_commands() if c.startswith("progan-dataset create_tfds"))
    monkeypatch.chdir(tmp_path)
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        assert main(shlex.split(command)[1:]) == 0
    manifest = json.loads((tmp_path / "tfrecords" / "celeba" / "dataset.json").read_text())
    assert manifest["image_count"] == 6 and manifest["source"]["name"] == "celeb_a"
