"""Training from a stream: ExplicitTrainer on a `datasets.IterableDataset`, and `hf-saffu train --streaming true`."""

import json
import math
from types import SimpleNamespace

import pytest
import torch
from datasets import Dataset, IterableDataset
from factories import packed_dataset, saffu_config, text_file, training_arguments

from hf_saffu import SaffuForCausalLM
from hf_saffu.configuration_saffu import ExplicitWarmStartConfig
from hf_saffu.train import parse_arguments, run_training
from hf_saffu.trainer import ExplicitTrainer, stream_shard


def warm_started_state(tmp_path, train, **recipe) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config(**recipe))
    args = training_arguments(tmp_path, warm_start_only=True)
    ExplicitTrainer(model=model, args=args, train_dataset=train).train()
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def as_stream(dataset: Dataset, num_shards: int = 1) -> IterableDataset:
    return dataset.to_iterable_dataset(num_shards=num_shards)


@pytest.mark.parametrize("cap", [None, 500])
def test_a_stream_warm_starts_the_same_weights_as_the_dataset(tmp_path, cap):
    """The warm start makes its passes over an IterableDataset (re-iterated each pass) and ends with the weights
    of the same blocks as a map-style Dataset, tensor for tensor (with and without warm_start_max_tokens)."""
    train = packed_dataset(120)
    expected = warm_started_state(tmp_path / "dataset", train, warm_start_max_tokens=cap)
    got = warm_started_state(tmp_path / "stream", as_stream(train, num_shards=3), warm_start_max_tokens=cap)
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def test_backprop_runs_on_a_stream_for_max_steps(tmp_path):
    torch.manual_seed(0)
    model = SaffuForCausalLM(saffu_config())
    trainer = ExplicitTrainer(
        model=model, args=training_arguments(tmp_path), train_dataset=as_stream(packed_dataset(60))
    )
    output = trainer.train()
    assert output.global_step == 6 and model.config.warm_started
    assert trainer.train_tokens() == sum(sum(mask) for mask in packed_dataset(60)["attention_mask"])
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())


@pytest.mark.parametrize("num_shards", [1, 2, 3])
def test_the_processes_split_a_stream_into_disjoint_parts_that_cover_it(num_shards):
    """Under two processes every block is read by exactly one (whole shards when they divide evenly, else every
    other block), so the summed statistics are those of one process."""
    train = packed_dataset(50)
    rows = [tuple(row) for row in train["input_ids"]]
    parts = []
    for rank in range(2):
        recipe = ExplicitWarmStartConfig(warm_start_max_tokens=None, warm_start_batch_size=4)
        args = SimpleNamespace(world_size=2, process_index=rank)
        parts.append(
            [
                tuple(r.tolist())
                for b in stream_shard(as_stream(train, num_shards), recipe, args)
                for r in b["input_ids"]
            ]
        )
    assert sorted(parts[0] + parts[1]) == sorted(rows) and parts[0] and parts[1]


def test_unpacked_and_empty_streams_are_clear_errors(tmp_path):
    model = SaffuForCausalLM(saffu_config())
    ragged = IterableDataset.from_generator(lambda: iter([{"input_ids": [2, 3, 4]}, {"input_ids": [2, 3]}]))
    trainer = ExplicitTrainer(model=model, args=training_arguments(tmp_path), train_dataset=ragged)
    with pytest.raises(ValueError, match="input_ids rows have different lengths"):
        trainer.train()
    empty = IterableDataset.from_generator(lambda: iter([]))
    trainer = ExplicitTrainer(model=model, args=training_arguments(tmp_path), train_dataset=empty)
    with pytest.raises(ValueError, match="the stream is empty"):
        trainer.train()


def test_train_streaming_gives_the_warm_start_of_the_whole_files(tmp_path):
    """`hf-saffu train --streaming true` packs the stream into the same blocks and warm-starts to the same validation
    perplexity as reading the files whole; backprop runs its max_steps."""
    train, validation = text_file(tmp_path / "train.txt", 80), text_file(tmp_path / "validation.txt", 20, seed=1)
    flags = [
        *("--train_files", train, "--validation_files", validation, "--tokenizer_vocab_size", "300"),
        *("--embed_bits", "12", "--hidden_bits", "12", "--windows", "1", "4", "--block_size", "16"),
        *("--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "true"),
        *("--save_strategy", "no", "--disable_tqdm", "true"),
    ]
    results = {}
    for streaming in ("false", "true"):
        output_dir = tmp_path / f"streaming-{streaming}"
        results[streaming] = run_training(
            *parse_arguments([*flags, "--streaming", streaming, "--output_dir", str(output_dir)])
        )
        assert results[streaming]["backprop_steps"] == 2
    assert results["true"]["train_tokens"] == results["false"]["train_tokens"]
    assert math.isclose(
        results["true"]["warm_start_validation_perplexity"],
        results["false"]["warm_start_validation_perplexity"],
        rel_tol=1e-12,
    )
    saved = json.loads((tmp_path / "streaming-true" / "all_results.json").read_text())
    assert saved["train_tokens"] == results["false"]["train_tokens"]


def test_streaming_without_a_validation_split_is_a_clear_error(tmp_path):
    train = text_file(tmp_path / "train.txt", 20)
    args = parse_arguments(["--train_files", train, "--streaming", "true", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match="streaming needs a 'train' and a 'validation' split"):
        run_training(*args)
