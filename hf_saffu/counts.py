"""The warm start's counts saved beside a model, so that text can be added (`update`) or taken away (`forget`)
without reading the old text again.

The pivot's tables are a closed form of counts alone (`hf_saffu.warm_start`, `hf_saffu.explicit`): the table of
the top order (`ngram_order`) of its n-gram counts, every lower table of continuation counts, which the top
order's n-grams determine (for the default order 3: the trigram table of the triple counts n_wxy over the
bigram table of the pairs' continuation counts; for order 2: the bigram table of the pair counts n_xy). The counts
of two texts add,
so for texts A and B packed into blocks each on its own

    tables(counts(A) + counts(B)) = tables of a warm start on the blocks of A and B,
    tables(counts(A + B) - counts(B)) = tables of a warm start on the blocks of A alone

(exactly the same tables, to float rounding). The same sum merges shards counted by different processes or
machines (the torchrun all-reduce of `NgramCounts.merged`).

What the counts do not determine, and update / forget leave as they are: the embeddings (codes from token
frequency ranks and pair profiles), the contexts' U and W and the head (solved from later passes over the
data through those codes), and everything backprop changed, the tables' values included (they are replaced by
the re-solved closed form). So forgetting is exact for the tables and leaves the rest as trained on the
forgotten text too.

The file (`COUNTS_NAME`, safetensors): `token_counts` (V,) float64; `keys` and `counts` of the n-grams of the
model's order, h V + y (order 3: the triples (w V + x) V + y; order 2: the pairs x V + y), of real tokens inside
one block; metadata `order`,
`block_size`, `vocab_size` and `tokenizer` (a digest of the tokenizer's vocabulary). 16 bytes per distinct
n-gram: Brown's 815,483 triples take 13 MB, about a third of the model.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .data import check_text_file, pack_token_ids, tokenize_documents
from .modeling_saffu import SaffuForCausalLM
from .warm_start import ExplicitWarmStart, merge_counts

COUNTS_NAME = "saffu_counts.safetensors"
SAVED_FILES = ("config.json", "model.safetensors", COUNTS_NAME)  # what update / forget rewrite


def tokenizer_digest(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id, sorted): equal for the same tokenizer, saved or not."""
    return hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()


def save_counts(directory, statistics: dict[str, torch.Tensor], tokenizer, block_size: int) -> Path:
    """Write `statistics` (`hf_saffu.warm_start.table_statistics`) into directory/COUNTS_NAME."""
    path = Path(directory) / COUNTS_NAME
    metadata = {
        "order": str(int(statistics["order"])),
        "block_size": str(block_size),
        "vocab_size": str(len(statistics["token_counts"])),
        "tokenizer": tokenizer_digest(tokenizer),
    }
    tensors = {name: statistics[name].contiguous() for name in ("token_counts", "keys", "counts")}
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_counts(model_dir: Path, tokenizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The saved counts of `model_dir` and their metadata; a ValueError when there are none or they were counted
    with another tokenizer."""
    path = Path(model_dir) / COUNTS_NAME
    if not path.is_file():
        raise ValueError(
            f"{model_dir} has no saved counts ({COUNTS_NAME}): train it with --save_counts true to update or forget"
        )
    with safe_open(str(path), framework="pt") as file:
        metadata = file.metadata()
        statistics = {name: file.get_tensor(name) for name in file.keys()}
    if metadata.get("tokenizer") != tokenizer_digest(tokenizer):
        raise ValueError(f"{path} was counted with another tokenizer than {model_dir}'s: the counts do not match it")
    statistics["order"] = torch.tensor(int(metadata["order"]))
    return statistics, metadata


def count_files(model: SaffuForCausalLM, tokenizer, files: list[str], block_size: int, order: int) -> dict:
    """The counts of the documents of `files` (one a line; blank lines skipped), packed into blocks of
    `block_size` as `hf-saffu train` packs them."""
    texts = []
    for path in files:
        texts += [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    ids = tokenize_documents(tokenizer, texts)
    packed = pack_token_ids(ids, block_size, tokenizer.eos_token_id, tokenizer.pad_token_id)
    batches = [
        {key: torch.tensor(packed[key][start : start + 64]) for key in ("input_ids", "attention_mask")}
        for start in range(0, len(packed["input_ids"]), 64)
    ]
    return count_batches(model, batches, order)


def count_batches(model: SaffuForCausalLM, batches, order: int) -> dict:
    """The counts of the blocks of `batches` ({"input_ids", "attention_mask"} dicts), as the warm start counts."""
    run = ExplicitWarmStart(model, batches, show_progress=False)
    token_counts = run.count_tokens()
    keys, counts = run.count_ngrams(order)
    return {"token_counts": token_counts, "keys": keys, "counts": counts, "order": torch.tensor(order)}


def combine(statistics: dict, more: dict, sign: int) -> dict:
    """statistics + more (sign 1) or statistics - more (sign -1); a ValueError when a count would go negative
    (text that was not counted cannot be forgotten). N-grams whose count reaches 0 are dropped."""
    keys, counts = merge_counts(statistics["keys"], statistics["counts"], more["keys"], sign * more["counts"])
    token_counts = statistics["token_counts"] + sign * more["token_counts"]
    if (counts < 0).any() or (token_counts < 0).any():
        raise ValueError(
            "the text holds tokens or n-grams the saved counts lack: only text the model was counted on can be "
            "forgotten (packed in blocks of its own, as update adds it)"
        )
    seen = counts > 0
    return {"token_counts": token_counts, "keys": keys[seen], "counts": counts[seen], "order": statistics["order"]}


@torch.no_grad()
def solve_tables(model: SaffuForCausalLM, statistics: dict) -> None:
    """The pivot's tables re-solved from `statistics`, as the warm start solves them (sized by the config)."""
    if not model.ngram_tables:
        raise ValueError("the model has no pivot tables (ngram_order < 2): there is nothing counts can update")
    if int(statistics["order"]) != model.config.ngram_order:
        raise ValueError(
            f"the saved counts are of order {int(statistics['order'])}, the model's tables of ngram_order="
            f"{model.config.ngram_order}: they were not counted for this model"
        )
    if int(statistics["token_counts"].sum()) == 0:
        raise ValueError("no text is left: forgetting it all would leave empty tables")
    run = ExplicitWarmStart(model, [], show_progress=False)
    run.solve_tables((statistics["keys"], statistics["counts"].to(torch.float64)))


def change_counts(model_dir: Path, files: list[str], sign: int) -> dict:
    """Add (sign 1) or subtract (sign -1) the counts of `files` to the saved model in `model_dir` and re-solve its
    tables; the model is rewritten only when everything succeeded (staged, then moved in file by file)."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a saved model directory (no config.json)")
    for path in files:  # every input is checked before anything is read or written
        check_text_file("train", path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    statistics, metadata = load_counts(model_dir, tokenizer)
    model = SaffuForCausalLM.from_pretrained(model_dir).eval()
    if model.config.vocab_size != len(tokenizer) or int(metadata["vocab_size"]) != len(tokenizer):
        raise ValueError(f"{model_dir}: the tokenizer has {len(tokenizer)} tokens, the model or counts another number")
    more = count_files(model, tokenizer, files, int(metadata["block_size"]), int(statistics["order"]))
    statistics = combine(statistics, more, sign)
    solve_tables(model, statistics)
    staging = model_dir / ".staging-counts"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    save_counts(staging, statistics, tokenizer, int(metadata["block_size"]))
    for name in SAVED_FILES:
        os.replace(staging / name, model_dir / name)
    shutil.rmtree(staging)
    return {
        "tokens": int(statistics["token_counts"].sum()),
        "changed_tokens": int(more["token_counts"].sum()),
        "ngrams": len(statistics["keys"]),
        "ngram_capacities": model.config.ngram_capacities,
    }
