"""Tiny configs, models, datasets and tokenizers shared by several test files."""

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from hf_saffu import ExplicitTrainingArguments, SaffuConfig, SaffuForCausalLM
from hf_saffu.data import DataArguments, pack_documents
from hf_saffu.model_card import RESULTS_FILE, model_card_for_dir
from hf_saffu.train import ModelArguments

# -- text: short documents of a few words, one a line ----------------------------------------------

WORDS = "the cat sat on a mat and dog ran in park with sun".split()


def text_file(path: Path, lines: int = 60, seed: int = 0) -> str:
    """`lines` short documents of WORDS, one a line."""
    generator = torch.Generator().manual_seed(seed)
    rows = [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (8,), generator=generator)) for _ in range(lines)]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return str(path)


# -- token-id data: a sparse Markov chain packed into blocks ----------------------------------------

VOCAB = 40
EOS = 1
PAD = 0
BLOCK = 24


def markov_documents(num_documents: int, seed: int = 0) -> list[list[int]]:
    """Documents from one sparse random Markov chain over tokens 2..VOCAB-1 (a learnable structure);
    `seed` draws different documents from the same chain."""
    successors = torch.randint(2, VOCAB, (VOCAB, 3), generator=torch.Generator().manual_seed(1234))
    generator = torch.Generator().manual_seed(seed)
    documents = []
    for _ in range(num_documents):
        token = int(torch.randint(2, VOCAB, (1,), generator=generator))
        document = [token]
        for _ in range(int(torch.randint(5, 40, (1,), generator=generator))):
            token = int(successors[token, torch.randint(0, 3, (1,), generator=generator)])
            document.append(token)
        documents.append(document)
    return documents


def packed_dataset(num_documents: int, seed: int = 0) -> Dataset:
    packed = pack_documents({"input_ids": markov_documents(num_documents, seed)}, BLOCK, EOS, PAD)
    return Dataset.from_dict(packed)


def saffu_config(**overrides) -> SaffuConfig:
    values = dict(
        vocab_size=VOCAB,
        embed_bits=40,
        hidden_bits=40,
        windows=[1, 4],
        eos_token_id=EOS,
        pad_token_id=PAD,
        bos_token_id=EOS,
        warm_start_batch_size=5,
    )
    values.update(overrides)
    return SaffuConfig(**values)


def fill_pivot_bigrams(model: SaffuForCausalLM, num_pairs: int, scale: float = 1.0, seed: int = 0) -> None:
    """Give the model's bigram table `num_pairs` random (pivot, next) pairs with normal(0, scale) values and
    bias, so that the channel changes the logits (a fresh table holds no pairs)."""
    channel = model.pivot_bigrams
    vocab_size = channel.bias.shape[0]
    generator = torch.Generator().manual_seed(seed)
    keys = torch.randperm(vocab_size**2, generator=generator)[: min(num_pairs, len(channel.columns))].sort().values
    with torch.no_grad():
        channel.set_pairs(
            keys,
            scale * torch.randn(len(keys), generator=generator, dtype=torch.float64),
            scale * torch.randn(vocab_size, generator=generator, dtype=torch.float64),
        )


def fill_pivot_trigrams(
    model: SaffuForCausalLM, num_triples: int, scale: float = 1.0, seed: int = 0, order: int = 3
) -> None:
    """Give the model's table of `order` (default: the trigram table) `num_triples` random n-grams with
    normal(0, scale) values."""
    table = model.ngram_tables[order - 2]
    generator = torch.Generator().manual_seed(seed + 1)
    keys = torch.randint(0, table.vocab_size**order, (min(num_triples, len(table.columns)),), generator=generator)
    keys = torch.unique(keys)
    with torch.no_grad():
        table.set_entries(keys, scale * torch.randn(len(keys), generator=generator, dtype=torch.float64))


def mixture_model(**overrides) -> SaffuForCausalLM:
    """A tiny model with a neural mixture of 8 hidden units (its W and gate weights start at 0)."""
    torch.manual_seed(0)
    return SaffuForCausalLM(saffu_config(neural_mixture_dim=8, **overrides)).eval()


def randomise_(model: SaffuForCausalLM, scale: float = 1.0) -> None:
    """Every weight of the model normal(0, scale), tables included (a fresh model's tables and W are 0)."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)


def randomised_mixture(**overrides) -> SaffuForCausalLM:
    """A trigram-table mixture model with every weight normal(0, 0.5), so the gate varies from position to position."""
    model = mixture_model(ngram_order=3, **overrides)
    randomise_(model, scale=0.5)
    return model


def one_and_two_processes(script: Path, tmp_path: Path) -> tuple[dict, dict]:
    """Run `script OUT` in one process, then under torchrun in 2 (CPU, gloo), and load what each saved in OUT."""
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single.pt")], capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-3000:]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    double = subprocess.run([*command, str(script), str(tmp_path / "double.pt")], capture_output=True, text=True)
    assert double.returncode == 0, double.stderr[-3000:]
    return torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "double.pt")


def training_arguments(tmp_path: Path, **overrides) -> ExplicitTrainingArguments:
    values = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=1e-2,
        max_steps=6,
        save_strategy="steps",
        save_steps=3,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    values.update(overrides)
    return ExplicitTrainingArguments(**values)


# -- a Python without hf_saffu ------------------------------------------------------------------------

# Prepended to a script run in a fresh Python, makes ``import hf_saffu`` fail as if the package were not installed.
BLOCK_HF_SAFFU = """
import importlib.abc
import sys


class _NoHfSaffu(importlib.abc.MetaPathFinder):  # a meta-path finder hiding the hf_saffu package

    def find_spec(self, name, path=None, target=None):
        if name == "hf_saffu" or name.startswith("hf_saffu."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None


sys.meta_path.insert(0, _NoHfSaffu())
"""


# -- a tiny tokenizer and saved model directory ------------------------------------------------------

REPO_ID = "tester/tiny-saffu"
CORPUS = [
    "the cat sat on the mat",
    "the dog ran in the park",
    "a cat and a dog sat in the sun",
    "the small dog saw the big cat",
] * 8
RUN_INFO = {
    "dataset_name": "Tiny test corpus",
    "dataset_id": "tester/tiny-corpus",
    "train_tokens": 4_096,
    "warm_start_perplexity": 41.5,
    "final_perplexity": 17.25,
    "test_perplexity": 18.125,
    "warm_start_seconds": 0.8,
    "backprop_seconds": 12.5,
}


# RUN_INFO as `hf-saffu train` records it in all_results.json, from which every card of a saved model is written.
RESULTS = {
    "dataset_name": RUN_INFO["dataset_name"],
    "dataset_id": RUN_INFO["dataset_id"],
    "train_tokens": RUN_INFO["train_tokens"],
    "warm_start_validation_perplexity": RUN_INFO["warm_start_perplexity"],
    "validation_perplexity": RUN_INFO["final_perplexity"],
    "test_perplexity": RUN_INFO["test_perplexity"],
    "warm_start_seconds": RUN_INFO["warm_start_seconds"],
    "backprop_seconds": RUN_INFO["backprop_seconds"],
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A tiny BPE tokenizer trained on ``CORPUS`` (no download)."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=64, special_tokens=["<unk>", "<eos>"], show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<eos>")


def save_saffu(directory: Path, tokenizer: PreTrainedTokenizerFast, seed: int) -> Path:
    """Save a tiny random SAFFU model, its tokenizer, the results of its run (`RESULTS`) and its model card
    (naming `REPO_ID`) into ``directory``."""
    torch.manual_seed(seed)
    config = SaffuConfig(
        vocab_size=len(tokenizer), embed_bits=7, hidden_bits=7, windows=[2, 4], eos_token_id=tokenizer.eos_token_id
    )
    model = SaffuForCausalLM(config).eval()
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    (directory / RESULTS_FILE).write_text(json.dumps(RESULTS))
    (directory / "README.md").write_text(model_card_for_dir(directory, REPO_ID))
    return directory


def batches_of(dataset: Dataset, size: int) -> list[dict]:
    torch_dataset = dataset.with_format("torch", columns=["input_ids", "attention_mask"])
    return [torch_dataset[start : start + size] for start in range(0, len(dataset), size)]


def mean_loss(model: SaffuForCausalLM, dataset: Dataset) -> float:
    batch = dataset.with_format("torch")[:]
    with torch.no_grad():
        return model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss.item()


def state_of(model: SaffuForCausalLM) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_state(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name


def write_lines(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


BENCHMARK_RECIPE = {  # a tiny training config for the training/ scripts, which read their data from --data-dir
    "train_files": ["unused-the-harness-reads-data-dir.txt"],
    "tokenizer_vocab_size": 300,
    "block_size": 32,
    "embed_bits": 16,
    "hidden_bits": 16,
    "windows": [1, 4],
    "use_document_context": True,
    "freeze_embeddings": False,
    "explicit_attention_iters": 1,
    "output_dir": "unused",
    "seed": 0,
}


def benchmark_recipe(path: Path, **overrides) -> Path:
    """BENCHMARK_RECIPE with `overrides`, written as YAML to `path`."""
    path.write_text(yaml.safe_dump(BENCHMARK_RECIPE | overrides))
    return path


def job_arguments(tmp_path: Path, architecture: dict | None = None, **training):
    """A tiny `hf-saffu train` job on generated text files: (ModelArguments, DataArguments, training arguments)."""
    data = DataArguments(
        train_files=[text_file(tmp_path / "train.txt")],
        validation_files=[text_file(tmp_path / "valid.txt", 10, seed=1)],
        tokenizer_vocab_size=300,
        block_size=16,
    )
    model = ModelArguments(embed_bits=12, hidden_bits=12, windows=[1, 4], **(architecture or {}))
    return model, data, training_arguments(tmp_path, **training)
