"""Shared pieces of the Brown benchmarks (benchmark.py, ablate.py, generation_benchmark.py).

One ByteLevel BPE tokenizer trained on Brown train, every split packed into blocks of `block_size`
tokens (EOS after each sentence), and one exact token-level perplexity for every model:

    perplexity = exp(sum of token NLL / number of predicted tokens)

over the same packed blocks (each block is scored on its own, from a fresh state), so every arm is
scored on exactly the same predicted tokens.
"""

import functools
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch
from datasets import DatasetDict

from hf_saffu import SaffuForCausalLM
from hf_saffu.data import DataArguments, load_text_datasets, text_batches, tokenize_and_pack, train_tokenizer
from hf_saffu.train import config_for_tokenizer

REPO_ROOT = Path(__file__).resolve().parents[1]
BROWN_DIR = REPO_ROOT.parent / "shared" / "data" / "brown"


def brown_data(
    vocab_size: int = 8192,
    block_size: int = 128,
    train_documents: int | None = None,
    eval_documents: int | None = None,
    data_dir: Path = BROWN_DIR,
):
    """(tokenizer, packed DatasetDict with train/validation/test) for Brown; the tokenizer is trained on
    the (possibly truncated) train split, eval splits are optionally cut to their first documents."""
    data_args = DataArguments(
        train_files=[str(data_dir / "train.txt")],
        validation_files=[str(data_dir / "validation.txt")],
        test_files=[str(data_dir / "test.txt")],
        tokenizer_vocab_size=vocab_size,
        block_size=block_size,
        max_train_documents=train_documents,
    )
    raw = load_text_datasets(data_args)
    if eval_documents is not None:
        raw = DatasetDict(
            {
                split: ds if split == "train" else ds.select(range(min(eval_documents, len(ds))))
                for split, ds in raw.items()
            }
        )
    tokenizer = train_tokenizer(text_batches(raw["train"], "text"), vocab_size)
    packed = tokenize_and_pack(raw, tokenizer, data_args)
    return tokenizer, packed.with_format("torch")


def saffu_model(tokenizer, **config_kwargs) -> SaffuForCausalLM:
    """A SAFFU for `tokenizer` (SaffuConfig defaults unless overridden)."""
    return SaffuForCausalLM(config_for_tokenizer(tokenizer, **config_kwargs))


def count_parameters(model: torch.nn.Module) -> int:
    """All parameters, frozen ones (SAFFU's bit-cipher embeddings) included."""
    return sum(p.numel() for p in model.parameters())


def warm_start_batches(train, max_tokens: int | None = None, batch_size: int = 64) -> list[dict]:
    """The (capped) train blocks as {"input_ids", "attention_mask"} batches for `explicit_warm_start`."""
    if max_tokens is not None:
        block_size = len(train[0]["input_ids"])
        train = train.select(range(min(len(train), math.ceil(max_tokens / block_size))))
    return [
        {
            "input_ids": train[s : s + batch_size]["input_ids"],
            "attention_mask": train[s : s + batch_size]["attention_mask"],
        }
        for s in range(0, len(train), batch_size)
    ]


@torch.no_grad()
def perplexity(model: torch.nn.Module, dataset, batch_size: int = 64) -> float:
    """Exact token-level perplexity of a causal LM over packed blocks (labels -100 are not predicted)."""
    was_training = model.training
    model.eval()
    nll = torch.zeros((), dtype=torch.float64)
    tokens = 0
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        nll += torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2).float(), labels, ignore_index=-100, reduction="sum"
        ).double()
        tokens += int((labels != -100).sum())
    model.train(was_training)
    return math.exp(nll.item() / tokens)


@functools.cache
def git_revision() -> str:
    """`git rev-parse HEAD`, with ' (uncommitted changes)' when the tree is dirty; cached, so a script that
    calls it when it starts reports the commit it ran from even if HEAD moves meanwhile."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + (" (uncommitted changes)" if git("status", "--porcelain") else "")


def machine_description() -> str:
    """CPU model, visible cores, torch threads, memory and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import transformers

    return (
        f"{cpu}, {len(os.sched_getaffinity(0))} visible cores, torch threads {torch.get_num_threads()}, "
        f"{memory:.0f} GiB RAM, Linux {platform.release()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}"
    )


def command_line() -> str:
    """The command that is running, as typed (relative to the repo root)."""
    return "python " + " ".join([os.path.relpath(sys.argv[0], REPO_ROOT), *sys.argv[1:]])
