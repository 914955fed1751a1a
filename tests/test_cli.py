"""The `hf-saffu` command line: one module per command under hf_saffu/commands, cli.py only dispatches."""

import json

import pytest
import torch
from factories import text_file

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


@pytest.mark.parametrize("name", ["brown.yaml", "shakespeare.yaml"])
def test_the_shipped_configs_parse_into_valid_arguments(name, tmp_path):
    from pathlib import Path

    from hf_saffu import SaffuConfig
    from hf_saffu.train import parse_arguments

    config = Path(__file__).resolve().parents[1] / "configs" / name
    data = [] if name == "shakespeare.yaml" else ["--train_files", "brown/train.txt"]  # brown.yaml: data by flag
    model_args, data_args, training_args = parse_arguments([str(config), "--output_dir", str(tmp_path), *data])
    SaffuConfig(vocab_size=data_args.tokenizer_vocab_size, **model_args.config_kwargs())  # validates every field
    assert training_args.warm_start and training_args.max_steps > 0
    if name == "brown.yaml":  # the rates and schedule chosen from the probes (docs/DESIGN.md)
        assert (training_args.head_learning_rate, training_args.table_learning_rate) == (1e-5, 1e-4)
        assert (training_args.neural_mixture_learning_rate, training_args.freeze_embeddings_steps) == (3e-3, 0)


def test_train_resumes_from_the_command_line(tmp_path, capsys):
    """`--resume_from_checkpoint true` continues the last checkpoint (no second warm start) and saves a model
    flagged warm_started; `--resume_from_checkpoint false` is a new run, refused in a used output_dir."""
    train, validation = text_file(tmp_path / "train.txt", 100), text_file(tmp_path / "validation.txt", 20, seed=1)
    run = tmp_path / "run"
    flags = [
        *("train", "--train_files", train, "--tokenizer_vocab_size", "300", "--block_size", "24"),
        *("--embed_bits", "12", "--hidden_bits", "12", "--windows", "1", "4", "--output_dir", str(run)),
        *("--report_to", "none", "--use_cpu", "true", "--save_strategy", "steps", "--save_steps", "2"),
        *("--per_device_train_batch_size", "4", "--validation_files", validation),
    ]
    cli_main([*flags, "--max_steps", "2"])
    assert (run / "checkpoint-2").is_dir()
    with pytest.raises(SystemExit) as refused:
        cli_main([*flags, "--max_steps", "4", "--resume_from_checkpoint", "false"])
    assert refused.value.code == 2 and "holds a previous run (checkpoint-2" in capsys.readouterr().err
    cli_main([*flags, "--max_steps", "4", "--resume_from_checkpoint", "true"])
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    results = json.loads((run / "all_results.json").read_text())
    assert results["warm_start_seconds"] is None  # resumed: the warm start did not run again
    assert json.loads((run / "config.json").read_text())["warm_started"] is True


def test_train_builds_the_class_factored_mixture_from_flags(tmp_path):
    """`--neural_mixture_dim 4 --neural_mixture_classes 3` (validated before the tokenizer sets the vocabulary):
    the saved model loads with the warm start's classes (not the default k(y) = y mod C) and a normalised ln p."""
    from hf_saffu import SaffuForCausalLM

    train = text_file(tmp_path / "train.txt", 100)
    run = tmp_path / "run"
    cli_main(
        [
            *("train", "--train_files", train, "--tokenizer_vocab_size", "300", "--block_size", "24"),
            *("--embed_bits", "12", "--hidden_bits", "12", "--windows", "1", "4", "--output_dir", str(run)),
            *("--report_to", "none", "--use_cpu", "true", "--save_strategy", "no", "--max_steps", "2"),
            *("--per_device_train_batch_size", "4", "--neural_mixture_dim", "4", "--neural_mixture_classes", "3"),
            *("--table_leave_one_out", "true"),
        ]
    )
    model = SaffuForCausalLM.from_pretrained(run).eval()
    classes = model.neural_mixture.token_classes
    assert model.config.neural_mixture_classes == 3 and sorted(classes.unique().tolist()) == [0, 1, 2]
    assert not torch.equal(classes, torch.arange(len(classes)) % 3)  # the warm start's clusters were saved
    ids = torch.randint(5, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model(ids).logits.logsumexp(-1), torch.zeros(2, 10), atol=1e-4)
