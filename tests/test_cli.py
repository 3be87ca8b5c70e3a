"""The `progan` command line: one vocabulary, defaults shown, presets as JSON."""

import argparse
import json

import pytest

from progan import api
from progan.cli import _overrides, build_parser
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
    for name in ("train", "summary"):
        assert "--max-resolution" in commands[name]._option_string_actions, name
    assert "--resolutions" in commands["bench"]._option_string_actions
    # a benchmark of iterations offers no flag that only matters over a run
    for flag in ("--total-kimg", "--snapshot-kimg", "--metrics", "--seed", "--tick-kimg"):
        assert flag not in commands["bench"]._option_string_actions, flag
    assert "--resolution" not in commands["train"]._option_string_actions
    assert "--snapshots" not in commands["evaluate"]._option_string_actions


def test_train_with_data_defaults_to_the_thesis_preset_and_without_to_the_demo(tmp_path):
    parser = build_parser()
    with_data = parser.parse_args(["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")])
    assert api.make_config(with_data.config, "celeba64", **_overrides(with_data)) == load_config("celeba64")
    demo = parser.parse_args(["train", "--max-resolution", "16"])
    assert api.make_config(demo.config, "demo", **_overrides(demo)).model.max_resolution == 16


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


def test_bench_runs_with_every_flag_its_help_lists(capsys):
    from progan import cli

    args = ["bench", "--config", "demo", "--resolutions", "4", "--seconds", "0.05",
            "--latent-size", "16", "--fmap-base", "32", "--fmap-max", "8", "--fused-scale-from", "8",
            "--batch", "8", "--loss", "wgan_gp", "--augment", "translation", "--augment-p", "0.5",
            "--strategy", "one", "--mixed-precision", "off", "--no-xla", "--deterministic",
            "--steps-per-call", "2", "--phases", "both", "--json"]
    listed = {a.option_strings[0] for a in subcommands()["bench"]._actions if a.option_strings}
    used = {arg for arg in args if arg.startswith("--")} | {"--xla", "--data", "-h"}
    assert listed <= used | {"--no-deterministic"}, listed - used
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert [row["resolution"] for row in result["stages"]] == [4]
    assert result["stages"][0]["images_per_sec"] > 0


def test_config_reference_is_docs_settings_md():
    from progan.config import SECTIONS, SETTING_DOCS, settings_reference
    import dataclasses

    fields = {f"{name}.{field.name}" for name, cls in SECTIONS.items()
              for field in dataclasses.fields(cls)}
    assert fields == set(SETTING_DOCS)
    from conftest import REPO

    assert (REPO / "docs" / "settings.md").read_text() == settings_reference() + "\n", \
        "docs/settings.md is out of date: progan config --reference > docs/settings.md"


def test_an_unknown_flag_is_answered_with_the_closest_real_one(capsys):
    from progan import cli

    for argv, answer in ((["train", "--totl-kimg", "4"], "did you mean --total-kimg?"),
                         (["resume", "runs/x", "--totl-kimg=4"], "did you mean --total-kimg?"),
                         (["train", "--xyzzy"], "see progan train --help")):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        error = capsys.readouterr().err.strip()
        assert stop.value.code == 2 and "\n" not in error and answer in error, error
