"""The training job (hf_saffu.train): its flags, YAML configs and the run."""

import dataclasses
import inspect

import pytest
from factories import saffu_config, training_arguments, write_lines

from hf_saffu import ExplicitWarmStartConfig, SaffuConfig
from hf_saffu.data import DataArguments
from hf_saffu.model_card import TrainingRunInfo, build_model_card, model_run_info
from hf_saffu.train import (
    EARLIER_FLAGS,
    JOB_SET_FIELDS,
    ModelArguments,
    argument_parser,
    dataset_results,
    documented_arguments,
    parse_arguments,
    run_training,
)


def test_every_config_argument_is_a_flag_with_the_help_of_its_docstring():
    """ModelArguments is derived from SaffuConfig's signature and the recipe's fields (and the earlier names SaffuConfig
    still reads): a new config field is a flag with no second declaration, and its help is the first sentence of the
    config's docstring."""
    signature = set(inspect.signature(SaffuConfig.__init__).parameters) - {"self", "kwargs", *JOB_SET_FIELDS}
    recipe = {f.name for f in dataclasses.fields(ExplicitWarmStartConfig)}
    flags = {f.name for f in dataclasses.fields(ModelArguments)} - {"model_name_or_path"}
    assert flags == signature | recipe | {name for name, *_ in EARLIER_FLAGS}
    help_text = " ".join(argument_parser().format_help().split())
    for name, sentence in documented_arguments(ExplicitWarmStartConfig).items():
        assert f"--{name}" in help_text and " ".join(sentence.split()) in help_text, name
    assert "--initializer_range" in help_text and "--warm_start_max_tokens" in help_text


def test_recipe_flags_reach_the_config_recipe():
    data = ["--dataset_name", "shakespeare"]
    flags = ["--explicit_attention_iters", "2", "--warm_start_max_tokens", "1000", "--explicit_hidden_priming", "4"]
    model_args = parse_arguments([*flags, *data])[0]
    recipe = SaffuConfig(vocab_size=300, embed_bits=12, hidden_bits=12, **model_args.config_kwargs()).warm_start_recipe
    assert (recipe.explicit_attention_iters, recipe.warm_start_max_tokens, recipe.explicit_hidden_priming) == (
        2,
        1000,
        4.0,
    )


def test_text_shorter_than_a_window_is_a_clear_error(tmp_path):
    short = write_lines(tmp_path / "short.txt", ["hi"])
    data_args = DataArguments(train_files=[short], validation_files=[short], tokenizer_vocab_size=300, block_size=8)
    with pytest.raises(ValueError, match="largest window"):
        run_training(ModelArguments(windows=[16]), data_args, training_arguments(tmp_path))


@pytest.mark.parametrize("source", ["saved_folder", "train_files"])
def test_the_model_card_publishes_no_local_path(tmp_path, source):
    """Only a Hub dataset id belongs in the card's metadata; local data is named by its file or folder name."""
    data = tmp_path / "private" / "corpus"
    data.mkdir(parents=True)
    if source == "saved_folder":
        data_args, title = DataArguments(dataset_name=str(data)), "local dataset folder corpus"
    else:
        train = write_lines(data / "train.txt", ["to be or not to be"])
        data_args, title = DataArguments(train_files=[train]), "local text files train.txt"
    results = {"train_tokens": 100, "validation_perplexity": 12.5, **dataset_results(data_args)}
    info = model_run_info(saffu_config(), 10, results, None, "run")
    card = build_model_card(TrainingRunInfo.from_dict(info))
    assert card.data.datasets is None
    assert str(tmp_path) not in card.content
    assert card.data.eval_results[0].dataset_name == title
