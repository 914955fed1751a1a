"""Saved counts: `hf-saffu update` / `forget` re-solve the pivot's tables to those of a warm start on the text added
or left, and bad input changes nothing on disk."""

import shutil
from pathlib import Path

import pytest
import torch
from factories import text_file
from transformers import AutoTokenizer

from hf_saffu import SaffuForCausalLM
from hf_saffu.cli import main as cli
from hf_saffu.counts import COUNTS_NAME
from hf_saffu.data import pack_token_ids
from hf_saffu.train import parse_arguments, run_training
from hf_saffu.warm_start import explicit_warm_start

TINY = [
    *("--tokenizer_vocab_size", "300", "--embed_bits", "12", "--hidden_bits", "12", "--windows", "1", "4"),
    *("--block_size", "16", "--warm_start_only", "true", "--report_to", "none", "--use_cpu", "true"),
    *("--disable_tqdm", "true"),
]


def train(tmp: Path, name: str, train_file: str, *flags: str) -> Path:
    output_dir = tmp / name
    validation = text_file(tmp / "validation.txt", 10, seed=9)
    run_training(
        *parse_arguments(
            [
                *TINY,
                "--train_files",
                train_file,
                "--validation_files",
                validation,
                "--output_dir",
                str(output_dir),
                *flags,
            ]
        )
    )
    return output_dir


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("texts")
    return {name: text_file(root / f"{name}.txt", 40, seed) for name, seed in (("old", 0), ("new", 1), ("other", 2))}


@pytest.fixture(scope="module")
def counted_model(tmp_path_factory, texts) -> Path:
    """A warm start on old.txt with its counts saved."""
    return train(tmp_path_factory.mktemp("trained"), "model", texts["old"], "--save_counts", "true")


def copy_of(model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


def tables(model: SaffuForCausalLM) -> dict[str, torch.Tensor]:
    return {
        name: tensor
        for name, tensor in model.state_dict().items()
        if name.startswith(("pivot_bigrams.", "pivot_trigrams."))
    }


def assert_same_tables(got: SaffuForCausalLM, expected: SaffuForCausalLM) -> None:
    got, expected = tables(got), tables(expected)
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].shape == tensor.shape, name
        if tensor.is_floating_point():
            torch.testing.assert_close(got[name], tensor, rtol=1e-6, atol=1e-6, msg=name)
        else:
            assert torch.equal(got[name], tensor), name


def warm_start_on(model_dir: Path, files: list[str]) -> SaffuForCausalLM:
    """A fresh warm start (the saved model's config and tokenizer) on the files, each packed in blocks of its own."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = SaffuForCausalLM.from_pretrained(model_dir)
    batches = []
    for path in files:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
        packed = pack_token_ids(
            tokenizer(lines, add_special_tokens=False)["input_ids"], 16, tokenizer.eos_token_id, tokenizer.pad_token_id
        )
        batches.append({key: torch.tensor(packed[key]) for key in ("input_ids", "attention_mask")})
    explicit_warm_start(model, batches, show_progress=False)
    return model


def test_update_then_forget_equal_warm_starts_on_the_text_there_is(counted_model, texts, tmp_path):
    model_dir = copy_of(counted_model, tmp_path)
    original = SaffuForCausalLM.from_pretrained(model_dir)
    cli(["update", str(model_dir), "--train_files", texts["new"]])
    updated = SaffuForCausalLM.from_pretrained(model_dir)
    assert_same_tables(updated, warm_start_on(model_dir, [texts["old"], texts["new"]]))
    assert updated.config.ngram_capacities[1] > original.config.ngram_capacities[1]  # the tables grew with the data
    cli(["forget", str(model_dir), "--train_files", texts["new"]])
    assert_same_tables(SaffuForCausalLM.from_pretrained(model_dir), original)


def snapshot(model_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in model_dir.iterdir() if path.is_file()}


def test_bad_input_is_one_line_and_changes_nothing(counted_model, texts, tmp_path, capsys):
    model_dir = copy_of(counted_model, tmp_path)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    uncounted = train(tmp_path, "uncounted", texts["old"])
    other_tokenizer = train(tmp_path, "other", texts["other"])
    mismatched = Path(shutil.copytree(model_dir, tmp_path / "mismatched"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(other_tokenizer / name, mismatched / name)
    cases = [
        (["update", str(uncounted), "--train_files", texts["new"]], uncounted, "has no saved counts"),
        (["update", str(mismatched), "--train_files", texts["new"]], mismatched, "another tokenizer"),
        (["update", str(model_dir), "--train_files", str(empty)], model_dir, "holds no text"),
        (["forget", str(model_dir), "--train_files", texts["other"]], model_dir, "only text the model was counted on"),
        (["update", str(tmp_path / "missing"), "--train_files", texts["new"]], None, "not a saved model directory"),
    ]
    capsys.readouterr()  # the training runs' output
    for argv, directory, message in cases:
        before = snapshot(directory) if directory else None
        with pytest.raises(SystemExit) as exit_info:
            cli(argv)
        error = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar of loading the model
        assert exit_info.value.code == 2 and message in error and error.startswith("hf-saffu "), (argv, error)
        assert directory is None or snapshot(directory) == before, argv
    assert not (uncounted / COUNTS_NAME).exists() and (model_dir / COUNTS_NAME).exists()
