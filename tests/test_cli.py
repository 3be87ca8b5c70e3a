"""The `progan` command line: one vocabulary, defaults shown, presets as JSON."""

import argparse
import json

import pytest

from progan.cli import build_parser, config_from_args
from progan.config import Config, load_config


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_every_flag_explains_itself_with_its_default_or_choices():
    vague = []
    for name, parser in subcommands().items():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            text = (action.help or "").lower()
            boolean = action.nargs == 0
            # overrides say "sets <setting>" in a group titled "(default: the config's value)"
            if not text or not (boolean or action.required or action.choices or "default" in text
                                or text.startswith("sets ")):
                vague.append(f"{name} {action.option_strings[0]}")
    assert not vague, vague


def test_one_vocabulary():
    commands = subcommands()
    for name in ("finetune", "evaluate", "generate", "interpolate", "export"):
        assert "--snapshot" in commands[name]._option_string_actions, name
    for name in ("evaluate",):
        assert "--num-images" in commands[name]._option_string_actions
    for name in ("train", "bench", "summary"):
        assert "--max-resolution" in commands[name]._option_string_actions, name
    assert "--resolution" not in commands["train"]._option_string_actions
    assert "--snapshots" not in commands["evaluate"]._option_string_actions


def test_train_with_data_defaults_to_the_thesis_preset_and_without_to_the_demo(tmp_path):
    parser = build_parser()
    with_data = parser.parse_args(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert config_from_args(with_data, "celeba64") == load_config("celeba64")
    demo = parser.parse_args(["train", "--max-resolution", "16"])
    assert config_from_args(demo, "demo").model.max_resolution == 16


def test_config_dump_prints_what_config_file_accepts(tmp_path, capsys):
    from progan import cli

    assert cli.main(["config", "--dump", "demo"]) == 0
    dumped = capsys.readouterr().out
    assert Config.from_json(dumped) == load_config("demo")
    (tmp_path / "mine.json").write_text(dumped)
    assert load_config(tmp_path / "mine.json") == load_config("demo")
    with pytest.raises(SystemExit) as stop:
        cli.main(["config", "--dump", "nonsense"])
    assert stop.value.code == 2
    assert "expected a preset" in capsys.readouterr().err
    json.loads(dumped)
