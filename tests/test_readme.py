"""README is the front door: its commands must stay true."""

import json
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from conftest import REPO

from progan.cli import build_parser
from progan.dataset.cli import build_parser as build_dataset_parser

README = (REPO / "README.md").read_text()
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
    "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
    "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
    "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
    "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie "
    "Young").split()


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
    workflow |= {("progan-dataset", name) for name in ("create_celeba", "info")}
    assert workflow <= shown, workflow - shown


def test_the_readme_is_a_front_door_that_fits_on_a_screen():
    assert len(README.splitlines()) <= 200
    for link in re.findall(r"\]\(((?:docs|notebooks)/[^)#]+)\)", README):
        assert (REPO / link).is_file(), f"README links to {link}, which does not exist"


# Runs the commands in one interpreter (TensorFlow loads once, not a dozen times); stops at
# the first that fails and says which. A command is a progan / progan-dataset line, or
# "python:" and a Python block to exec.
DRIVER = """
import json, shlex, sys
from progan.cli import main as progan
from progan.dataset.cli import main as progan_dataset
for command in json.loads(sys.argv[1]):
    if command.startswith("python:"):
        exec(command[len("python:"):], {})
        print("ok: the Python block", flush=True)
        continue
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


def start_commands(commands, cwd):
    """The commands, in order, in one Python process of their own (started, not awaited)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-c", DRIVER, json.dumps(commands)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_commands(process, commands, timeout=500):
    """The output of ``start_commands``' process, checked: it ran every command."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        process.kill()
    assert process.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert stdout.count("ok: ") == len(commands)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_commands(commands, cwd, timeout=500):
    return finish_commands(start_commands(commands, cwd), commands, timeout)


def substituted(commands, substitutions):
    for old, new in substitutions:
        assert any(old in c for c in commands), f"the page no longer shows {old!r}"
        commands = [c.replace(old, new) for c in commands]
    return commands


def make_kaggle_celeba(root, count=32):
    """CelebA as Kaggle ships it: img_align_celeba/img_align_celeba/*.jpg and the CSV lists."""
    from dataset_fixtures import make_celeba_like_images

    photos = make_celeba_like_images(root / "img_align_celeba" / "img_align_celeba", count,
                                     suffix=".jpg")
    names = [os.path.basename(path) for path in photos]
    values = np.random.default_rng(0).choice([-1, 1], (count, len(CELEBA_ATTRIBUTES)))
    (root / "list_attr_celeba.csv").write_text("\n".join(
        ["image_id," + ",".join(CELEBA_ATTRIBUTES)]
        + [name + "," + ",".join(str(v) for v in row) for name, row in zip(names, values)]) + "\n")
    (root / "list_eval_partition.csv").write_text("\n".join(
        ["image_id,partition"] + [f"{name},{0 if i < count * 3 // 4 else 2}"
                                  for i, name in enumerate(names)]) + "\n")


# Every command README shows, in its order and word for word but small: the demo cut to 0.3
# kimg, a 32-image Kaggle-layout CelebA folder instead of 202,599 photos, the demo's widths at
# 8x8 instead of celeba64's 448 MB snapshots, a 0.1-kimg fine-tune, the demo's snapshots scored
# on 512 images rather than all 4,096 (plan runs as shown).
README_SUBSTITUTIONS = (
    ("~/data/celeba", "celeba --max-images 32"),
    ("--out runs/celeba64 --config celeba64",
     "--out runs/celeba64 --config demo --max-resolution 8 --total-kimg 0.2"),
    ("--total-kimg 8000", "--total-kimg 0.3"),
    ("--kimg 2000", "--kimg 0.1"),
    ("runs/demo --metrics swd --snapshot all", "runs/demo --metrics swd --snapshot all --num-images 512"),
)
PYTHON_SUBSTITUTIONS = (("total_kimg=20", "total_kimg=0.3"),)


def test_every_command_of_the_readme_runs(tmp_path, pages_job):
    # pages_job: the pages' commands run alongside (each process is mostly one Python thread)
    quick_start_install = {"pip install -e \".[cpu]\"", "pip install -e \".[cpu,test]\"",
                           "python3 -m pytest -q"}  # CI runs these: see the test above
    commands = [c for c in bash_commands() if c not in quick_start_install]
    assert commands[0] == "progan train"
    tensorboard = [c for c in commands if c.startswith("tensorboard")]
    commands = [c for c in commands if not c.startswith("tensorboard")]
    assert all(c.split()[0] in ("progan", "progan-dataset") for c in commands), commands
    commands = ["progan train --total-kimg 0.3"] + substituted(commands[1:], README_SUBSTITUTIONS)
    python_blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert len(python_blocks) == 1
    program = substituted(python_blocks, PYTHON_SUBSTITUTIONS)[0]
    make_kaggle_celeba(tmp_path / "celeba")

    result = run_commands([*commands, "python:" + program], tmp_path)
    assert "built-in demo" in result.stdout and "32 images" in result.stdout
    demo, run, tuned = (tmp_path / "runs" / name for name in ("demo", "celeba64", "celeba64-ft"))
    assert "done: kimg 0.3" in (demo / "log.txt").read_text()
    kimgs = [json.loads(line)["kimg"] for line in (demo / "metrics.jsonl").read_text().splitlines()]
    assert len(kimgs) >= 2 and kimgs[0] == 0.0  # every snapshot of the demo
    assert json.loads((run / "config.json").read_text())["config"]["schedule"]["total_kimg"] == 0.3
    assert "done: kimg 0.3" in (run / "log.txt").read_text()  # extended by resume --total-kimg
    assert (json.loads((tmp_path / "tfrecords" / "celeba" / "dataset.json").read_text())
            ["labels"]["names"] == CELEBA_ATTRIBUTES)  # Kaggle's CSV attributes kept
    origin = json.loads((tuned / "config.json").read_text())["origin"]
    assert (origin["snapshot"], origin["lr_scale"]) == ("best", 0.8)
    with PIL.Image.open(tmp_path / "grid.png") as grid:  # 8 x 8 images, enlarged for viewing
        assert grid.size[0] == grid.size[1] >= 8 * 4
    with PIL.Image.open(tmp_path / "walk.gif") as walk:
        assert walk.n_frames == 9  # the Python block's walk (written last): 8 steps + 1
    assert (tmp_path / "exported" / "saved_model" / "saved_model.pb").exists()
    assert (tmp_path / "runs" / "quick" / "checkpoints" / "best.json").exists()

    assert tensorboard == ["tensorboard --logdir runs"]
    serve_tensorboard(tmp_path, tensorboard[0] + " --port 0")


def serve_tensorboard(cwd, command):
    """Start the command, wait for the address it serves, fetch the page, stop it."""
    import urllib.request

    process = subprocess.Popen(shlex.split(command), cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            found = re.search(r"(http://localhost:\d+/)", line)
            if found:
                break
        assert found, "tensorboard printed no address"
        with urllib.request.urlopen(found.group(1) + "data/runs", timeout=30) as response:
            assert "demo" in response.read().decode()
    finally:
        process.terminate()
        process.wait(timeout=30)


TRANSFER = (REPO / "docs" / "transfer.md").read_text()
CONDITIONAL = (REPO / "docs" / "conditional.md").read_text()


def page_commands(page):
    blocks = re.findall(r"```bash\n(.*?)```", page, flags=re.S)
    return [line.split("#")[0].strip() for block in blocks for line in block.splitlines()
            if line.split("#")[0].strip()]


@pytest.fixture(scope="module")
def pages_job(tmp_path_factory, tiny_dataset):
    """Every command of docs/transfer.md (on a small demo-preset run) and docs/conditional.md
    (on a labelled CelebA folder), small, started in a process of their own: (process,
    commands, directory)."""
    from dataset_fixtures import make_celeba_like_images

    root = tmp_path_factory.mktemp("pages")
    make_celeba_like_images(root / "portraits", 24)
    make_kaggle_celeba(root / "celeba")
    setup = [f"progan train --data {tiny_dataset} --out runs/demo --config demo --max-resolution 8 "
             "--total-kimg 0.1",  # the demo run the transfer page starts from, small
             "progan-dataset create_celeba tfrecords/celeba celeba --max-resolution 8 --max-images 32"]
    transfer = substituted(page_commands(TRANSFER), (("~/data/portraits", "portraits"),
                                                    ("--kimg 20", "--kimg 0.05")))
    conditional = substituted(page_commands(CONDITIONAL), (
        ("--config celeba64", "--config demo --max-resolution 8 --total-kimg 0.1"),))
    commands = [*setup, *transfer, *conditional]
    process = start_commands(commands, root)
    yield process, commands, root
    process.kill()


def test_the_transfer_and_conditional_pages_commands_run(pages_job):
    process, commands, tmp_path = pages_job
    finish_commands(process, commands)
    tuned = json.loads((tmp_path / "runs" / "demo-portraits" / "config.json").read_text())
    assert tuned["origin"]["new_data"] == str((tmp_path / "tfrecords" / "portraits").resolve())
    assert tuned["config"]["loss"]["augment"] == ["translation", "cutout", "color"]
    cond = tmp_path / "runs" / "celeba64-cond"
    assert json.loads((cond / "config.json").read_text())["config"]["model"]["label_size"] == 40
    assert (tmp_path / "smiling.png").exists() and (tmp_path / "smile.gif").exists()
    agreement = [json.loads(line) for line in (cond / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line)["metric"] == "attributes"]
    assert len(agreement) == 1 and set(agreement[0]["values"]) == set(CELEBA_ATTRIBUTES)


def test_the_readme_tfds_command_runs_on_tfds_mock_data(tmp_path, monkeypatch):
    """docs/data.md's create_tfds line word for word; TensorFlow Datasets' own mock stands in
    for the 1.4 GB download (the tool's real loading path otherwise)."""
    import tensorflow_datasets as tfds

    from progan.dataset.cli import main

    data_page = (REPO / "docs" / "data.md").read_text()
    command = next(c for c in page_commands(data_page) if c.startswith("progan-dataset create_tfds"))
    monkeypatch.chdir(tmp_path)
    with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
        assert main(shlex.split(command)[1:]) == 0
    manifest = json.loads((tmp_path / "tfrecords" / "celeba-tfds" / "dataset.json").read_text())
    assert manifest["image_count"] == 6 and manifest["source"]["name"] == "celeb_a"
