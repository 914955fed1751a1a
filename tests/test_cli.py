"""The `hf-saffu` command line: one module per command under hf_saffu/commands, cli.py only dispatches."""

import pytest

from hf_saffu.cli import build_parser
from hf_saffu.cli import main as cli_main
from hf_saffu.commands import COMMANDS


def test_every_command_has_a_parser_and_a_main():
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices
    assert sorted(choices) == sorted(name.replace("_", "-") for name in COMMANDS)


def test_train_help_shows_the_config_positional_and_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: hf-saffu train [-h] [CONFIG.yaml]" in out
    assert "--output_dir" in out and "--windows" in out and "--block_size" in out


def test_train_keeps_the_arguments_as_given():
    args = build_parser().parse_args(["train", "c.yaml", "--windows", "4", "16"])
    assert (args.config, args.flags) == ("c.yaml", ["--windows", "4", "16"])
    args = build_parser().parse_args(["train", "--windows", "4", "16", "--output_dir", "o"])
    assert (args.config, args.flags) == (None, ["--windows", "4", "16", "--output_dir", "o"])
