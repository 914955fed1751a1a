"""SaffuConfig and its warm-start recipe (hf_saffu.configuration_saffu): validation, saving and loading."""

import json
import re

import pytest
import torch
from factories import VOCAB, packed_dataset, saffu_config
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from hf_saffu import ExplicitWarmStartConfig, SaffuConfig, SaffuForCausalLM, SaffuModel
from hf_saffu.warm_start import explicit_warm_start

RECIPE = dict(explicit_discount=None, embedding_codes="frequency_rank", explicit_context_weight=0.25)


def test_the_recipe_is_one_object_saved_as_a_nested_dict(tmp_path):
    config = saffu_config(**RECIPE, explicit_attention_iters=2, warm_start_max_tokens=500)
    assert config.warm_start_recipe == ExplicitWarmStartConfig(
        **RECIPE, explicit_attention_iters=2, warm_start_max_tokens=500, warm_start_batch_size=5
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["warm_start_recipe"]["explicit_discount"] is None
    assert saved["warm_start_recipe"]["warm_start_max_tokens"] == 500
    assert not {"explicit_discount", "embedding_codes", "explicit_attention_iters"} & set(saved)
    assert SaffuConfig.from_pretrained(tmp_path).warm_start_recipe == config.warm_start_recipe


def test_a_config_json_with_flat_recipe_fields_loads_the_same_recipe_and_warm_starts_the_same_model(tmp_path):
    """config.json files saved before the recipe had its own object hold its fields at the top level."""
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config(**RECIPE))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    recipe = saved.pop("warm_start_recipe")
    old_fields = ("explicit_smoothing", "explicit_hidden_priming", "explicit_discount", "explicit_context_weight")
    old_fields += ("embedding_codes", "hidden_targets", "contextual_embeddings", "contextual_radius")
    saved |= {name: recipe[name] for name in old_fields}  # what the earlier SaffuConfig wrote
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = SaffuForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.warm_start_recipe == ExplicitWarmStartConfig(**RECIPE)
    batches = [packed_dataset(30).with_format("torch")[:]]
    explicit_warm_start(model, batches, show_progress=False)
    explicit_warm_start(loaded, batches, show_progress=False)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_flat_fields_override_the_recipe_dict_and_unknown_recipe_fields_are_refused():
    config = saffu_config(warm_start_recipe={"explicit_discount": 0.5, "contextual_radius": 3}, explicit_discount=0.25)
    assert (config.warm_start_recipe.explicit_discount, config.warm_start_recipe.contextual_radius) == (0.25, 3)
    with pytest.raises(ValueError, match=r"warm_start_recipe has unknown fields \['smoothing'\]"):
        saffu_config(warm_start_recipe={"smoothing": 0.5})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(explicit_attention_iters=-1), "SaffuConfig.explicit_attention_iters must be an integer >= 0, got -1"),
        (
            dict(warm_start_max_tokens=0),
            "SaffuConfig.warm_start_max_tokens must be an integer >= 1 (or None: all), got 0",
        ),
        (dict(warm_start_batch_size=0), "SaffuConfig.warm_start_batch_size must be an integer >= 1, got 0"),
    ],
)
def test_the_recipe_names_a_bad_field(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        saffu_config(**overrides)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ExplicitWarmStartConfig(**overrides)


@pytest.mark.parametrize(
    ("overrides", "named", "value"),
    [
        (dict(windows=[1.5, 4]), "windows[0]", "1.5"),
        (dict(windows=[4, "4"]), "windows[1]", "'4'"),
        (dict(windows=[True]), "windows[0]", "True"),
        (dict(windows=[float("nan")]), "windows[0]", "nan"),
        (dict(explicit_smoothing=float("inf")), "explicit_smoothing", "inf"),
        (dict(explicit_smoothing=1e308), "explicit_smoothing", "1e+308"),
        (dict(explicit_hidden_priming=1e40), "explicit_hidden_priming", "1e+40"),
        (dict(initializer_range=float("inf")), "initializer_range", "inf"),
    ],
)
def test_config_rejects_and_names_the_bad_field(overrides, named, value):
    with pytest.raises(ValueError, match=re.escape(f"SaffuConfig.{named} must")) as error:
        saffu_config(**overrides)
    assert str(error.value).endswith(f"got {value}")


def test_smoothing_and_priming_are_bounded_where_float32_weights_stay_finite():
    """alpha = 1e308 and K = 1e40 are refused up front; the bounds themselves (alpha in (1e-30, 1e30], K <= 1e6)
    warm-start to finite weights."""
    from hf_saffu.warm_start import explicit_warm_start

    for overrides in (dict(explicit_smoothing=1e308), dict(explicit_hidden_priming=1e40)):
        with pytest.raises(ValueError, match=f"SaffuConfig.{next(iter(overrides))} must be a finite number"):
            saffu_config(**overrides)
    for overrides in (dict(explicit_smoothing=1e30), dict(explicit_smoothing=2e-30, explicit_hidden_priming=1e6)):
        model = SaffuForCausalLM(saffu_config(**overrides))
        explicit_warm_start(model, [packed_dataset(5).with_format("torch")[:]], show_progress=False)
        assert all(torch.isfinite(p).all() for p in model.parameters()), overrides


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(warm_started="yes"), "SaffuConfig.warm_started must be true or false, got 'yes'"),
        (dict(use_document_context="false"), "SaffuConfig.use_document_context must be true or false, got 'false'"),
        (dict(embed_bits=10**9), "SaffuConfig.embed_bits must be <= 65536"),
        (dict(windows=[1, 10**9]), "SaffuConfig.windows[1] must be <= 65536"),
        (dict(num_layers=100_000), "SaffuConfig.num_layers must be <= 256"),
        (
            dict(vocab_size=10**9, embed_bits=30, hidden_bits=30, eos_token_id=None),
            "SaffuConfig.vocab_size x embed_bits",
        ),
        (dict(hidden_bits=60_000, num_layers=2), "SaffuConfig.hidden_bits x C x hidden_bits"),
        (dict(upper_layers="mixture"), "SaffuConfig.upper_layers must be one of ('head', 'neural'), got 'mixture'"),
        (dict(upper_layers="neural", num_layers=2), 'SaffuConfig.upper_layers="neural" feeds the layers above'),
    ],
)
def test_config_values_of_the_wrong_type_or_size_are_refused(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        saffu_config(**overrides)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (dict(vocab_size=100, embed_bits=6), "embed_bits"),
        (dict(vocab_size=100, hidden_bits=6), "hidden_bits"),
        (dict(windows=[], use_document_context=False), "context"),
        (dict(windows=[0, 4]), "windows"),
        (dict(windows=[4, 4]), "windows"),
        (dict(num_layers=0), "num_layers"),
        (dict(explicit_smoothing=0.0), "explicit_smoothing"),
        (dict(explicit_hidden_priming=0.0), "explicit_hidden_priming"),
        (dict(explicit_hidden_priming=True), "explicit_hidden_priming"),
        (dict(explicit_hidden_priming="4"), "explicit_hidden_priming"),
        (dict(initializer_range=-1.0), "initializer_range"),
        (dict(eos_token_id=VOCAB), "eos_token_id"),
        (dict(vocab_size=0), "vocab_size"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        saffu_config(**overrides)


def test_config_round_trip_and_auto_classes(tmp_path):
    config = saffu_config(windows=[3, 7])
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, SaffuConfig)
    assert loaded.windows == [3, 7] and loaded.num_contexts == 3 and loaded.max_window == 7
    assert isinstance(AutoModel.from_config(config), SaffuModel)
    assert isinstance(AutoModelForCausalLM.from_config(config), SaffuForCausalLM)
