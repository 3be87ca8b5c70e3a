"""README is the front door: its commands must stay true."""

import json
import os
import re
import shlex
import subprocess
import sys

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


def test_the_readme_main_command_trains(tmp_path):
    """`progan train` as README shows it, cut short with --total-kimg to fit the test budget."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-m", "progan", "train", "--total-kimg", "0.3"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "built-in demo" in result.stdout
    assert (tmp_path / "tfrecords" / "synthetic" / "dataset.json").exists()
    run = tmp_path / "runs" / "demo"
    assert (run / "config.json").exists() and (run / "curves.png").exists()
    assert "done: kimg 0.3" in (run / "log.txt").read_text()

    # ... and the evaluation README shows next, word for word
    evaluate = next(c for c in bash_commands() if c.startswith("progan evaluate runs/demo"))
    result = subprocess.run([sys.executable, "-m", *shlex.split(evaluate)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    kimgs = [r["kimg"] for r in records]  # the snapshot at kimg 0 and the final one
    assert len(kimgs) == 2 and kimgs[0] == 0.0 and 0.3 <= kimgs[1] < 0.35
    assert {(r["metric"], r["num_images"]) for r in records} == {("swd", 4096)}
    assert (run / "metrics.png").exists() and (run / "checkpoints" / "best.json").exists()
