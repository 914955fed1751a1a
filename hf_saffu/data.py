"""Data for training: raw text datasets, a ByteLevel BPE tokenizer, packing into fixed-size blocks.

Every row of a text dataset is one document. Tokenised documents are concatenated with an EOS after
each (so the model's document context resets there) and cut into blocks of `block_size` tokens; the
last block of each packing batch is padded (attention_mask 0, label -100), never dropped, so
evaluation covers every token.
"""

import codecs
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict, IterableDataset, load_dataset, load_from_disk
from datasets import config as datasets_config
from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .configuration_saffu import SaffuConfig
from .corpus import load_shakespeare
from .errors import check_regular_file

EOS_TOKEN = "<|endoftext|>"
# Documents packed together: blocks never span two packing batches (the last block of each is padded).
PACKING_BATCH = 10_000
PAD_TOKEN = "<pad>"
BUILTIN_CORPUS = "shakespeare"
# Upper bounds checked before any data is read: a block is one row of every (batch, block, ...) activation, and a
# BPE vocabulary beyond 2^20 tokens exceeds any corpus this package trains on (and the model's matrices).
MAX_BLOCK_SIZE = 2**20
MAX_TOKENIZER_VOCAB_SIZE = 2**20
# A document longer than this is tokenised (and counted for the tokenizer) in pieces cut before a word
# (`document_pieces`); its ids are joined back into one document. Tokenising one 50 MB line whole took 12 GB.
MAX_PIECE_CHARS = 2**16
LAST_WORD_START = re.compile(r".*\s(?=\S)", re.DOTALL)  # up to the last whitespace that precedes a word


@dataclass
class DataArguments:
    """Where the text comes from and how it is tokenised and packed."""

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": f"a `datasets` dataset name, a folder written by save_to_disk, or '{BUILTIN_CORPUS}' for the "
            "built-in corpus"
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "the dataset's configuration name"})
    train_files: list[str] | None = field(default=None, metadata={"help": "local text files: one document a line"})
    validation_files: list[str] | None = field(default=None, metadata={"help": "local validation text files"})
    test_files: list[str] | None = field(default=None, metadata={"help": "local test text files"})
    text_column: str = field(default="text", metadata={"help": "the column holding the documents"})
    validation_percentage: int = field(
        default=5, metadata={"help": "share of train held out when the data has no validation split"}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "an existing tokenizer; by default a ByteLevel BPE is trained on train"}
    )
    tokenizer_vocab_size: int = field(default=8192, metadata={"help": "vocabulary size of the trained tokenizer"})
    block_size: int = field(default=128, metadata={"help": "tokens per packed training block"})
    max_train_documents: int | None = field(default=None, metadata={"help": "use only the first N train documents"})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "processes for datasets.map"})
    streaming: bool = field(
        default=False,
        metadata={
            "help": "read the training text as a stream (a datasets IterableDataset, never held whole): the warm "
            "start makes its passes over it and backprop needs max_steps; validation and test are read whole"
        },
    )

    def __post_init__(self):
        self.dataset_name = self.dataset_name or None  # `--dataset_name ''` clears a config's dataset
        if self.dataset_name is not None and (self.train_files or self.validation_files or self.test_files):
            raise ValueError(
                f"DataArguments: dataset_name ({self.dataset_name!r}) and local files (train_files, validation_files, "
                "test_files) are both set; give one source (--dataset_name '' clears a config's dataset_name)"
            )
        if self.dataset_name is None and not self.train_files:
            raise ValueError(f"DataArguments: give dataset_name (e.g. '{BUILTIN_CORPUS}') or train_files")
        check_not_a_file_format(self.dataset_name)
        if not 2 <= self.block_size <= MAX_BLOCK_SIZE:
            raise ValueError(f"DataArguments.block_size must be >= 2 and <= {MAX_BLOCK_SIZE}, got {self.block_size}")
        if not 260 <= self.tokenizer_vocab_size <= MAX_TOKENIZER_VOCAB_SIZE:
            raise ValueError(
                f"DataArguments.tokenizer_vocab_size must be >= 260 (256 bytes + specials) and <= "
                f"{MAX_TOKENIZER_VOCAB_SIZE}, got {self.tokenizer_vocab_size}"
            )


def check_not_a_file_format(dataset_name: str | None) -> None:
    """`dataset_name` must not be one of datasets' file formats ("text", "json", "csv", ...): loaded without
    data files, those read every matching file under the current folder."""
    if dataset_name in _PACKAGED_DATASETS_MODULES and not Path(dataset_name).exists():
        raise ValueError(
            f"DataArguments: dataset_name {dataset_name!r} is a file format, not a dataset (it would read every "
            f"file of the current folder): give the files with train_files (and validation_files, test_files)"
        )


def load_text_datasets(data_args: DataArguments) -> DatasetDict:
    """train / validation (/ test) splits with one document per row in `text_column`."""
    if data_args.dataset_name == BUILTIN_CORPUS:
        raw = load_shakespeare()
    elif data_args.dataset_name is not None and is_saved_dataset(data_args.dataset_name):
        raw = load_from_disk(data_args.dataset_name)
        if isinstance(raw, Dataset):
            raw = DatasetDict({"train": raw})
    elif data_args.dataset_name is not None:
        raw = load_dataset(data_args.dataset_name, data_args.dataset_config)
    else:
        files = {"train": data_args.train_files}
        if data_args.validation_files:
            files["validation"] = data_args.validation_files
        if data_args.test_files:
            files["test"] = data_args.test_files
        for split, paths in files.items():
            for path in paths:
                check_text_file(split, path)
        raw = load_dataset("text", data_files=files)
    if "train" not in raw:
        raise ValueError(f"the dataset has no 'train' split (splits: {list(raw)})")
    if data_args.text_column not in raw["train"].column_names:
        raise ValueError(
            f"the dataset has no column '{data_args.text_column}' (columns: {raw['train'].column_names}); "
            "set text_column"
        )
    raw = DatasetDict(
        {split: ds.filter(lambda row: bool(row[data_args.text_column].strip())) for split, ds in raw.items()}
    )
    if data_args.max_train_documents is not None:
        raw["train"] = raw["train"].select(range(min(data_args.max_train_documents, len(raw["train"]))))
    if len(raw["train"]) == 0:
        raise ValueError("the training data is empty (no non-blank documents)")
    if "validation" not in raw:
        held_out = raw["train"].train_test_split(test_size=data_args.validation_percentage / 100, seed=0)
        raw["train"], raw["validation"] = held_out["train"], held_out["test"]
    return raw


def load_text_streams(data_args: DataArguments) -> dict:
    """`load_text_datasets` with the train split as a `datasets.IterableDataset` read lazily from its source
    (local files and Hub datasets are streamed; the built-in corpus and saved folders are read from disk as
    they are) and the validation / test splits as Datasets (evaluation is exact over every token)."""
    name, column = data_args.dataset_name, data_args.text_column
    if name == BUILTIN_CORPUS or (name is not None and is_saved_dataset(name)):
        raw = load_text_datasets(DataArguments(**{**vars(data_args), "streaming": False}))
        return {**raw, "train": raw["train"].to_iterable_dataset()}
    if name is not None:
        streams = load_dataset(name, data_args.dataset_config, streaming=True)
    else:
        files = {"train": data_args.train_files, "validation": data_args.validation_files, "test": data_args.test_files}
        files = {split: paths for split, paths in files.items() if paths}
        for split, paths in files.items():
            for path in paths:
                check_text_file(split, path)
        streams = load_dataset("text", data_files=files, streaming=True)
    if "train" not in streams or "validation" not in streams:
        raise ValueError(
            f"streaming needs a 'train' and a 'validation' split (a stream is not split; splits: {list(streams)}): "
            "give validation_files"
        )
    first = next(iter(streams["train"]), None)
    if first is None or column not in first:
        found = "no documents" if first is None else f"columns: {list(first)}"
        raise ValueError(f"the training stream has no column '{column}' ({found}); set text_column")
    streams = {split: stream.filter(lambda row: bool(row[column].strip())) for split, stream in streams.items()}
    train = streams.pop("train")
    if data_args.max_train_documents is not None:
        train = train.take(data_args.max_train_documents)
    return {"train": train, **{split: Dataset.from_list(list(stream)) for split, stream in streams.items()}}


def pack_stream(stream: IterableDataset, tokenizer, data_args: DataArguments) -> IterableDataset:
    """The blocks `tokenize_and_pack` makes of a train split, as a stream: documents tokenised and packed
    `PACKING_BATCH` documents at a time, as they are read."""
    return pack_blocks(stream, list(next(iter(stream))), tokenizer, data_args)


def pack_blocks(data, columns: list[str], tokenizer, data_args: DataArguments, **map_options):
    """`data` (a DatasetDict or an IterableDataset) tokenised (`tokenize_documents`, its `columns` removed) and
    packed into blocks (`pack_documents`); `map_options` (e.g. num_proc) go to both `map` calls."""
    text = data_args.text_column
    tokenized = data.map(
        lambda batch: {"input_ids": tokenize_documents(tokenizer, batch[text])},
        batched=True,
        remove_columns=columns,
        **map_options,
    )
    return tokenized.map(
        pack_documents,
        batched=True,
        batch_size=PACKING_BATCH,
        fn_kwargs={
            "block_size": data_args.block_size,
            "eos_id": tokenizer.eos_token_id,
            "pad_id": tokenizer.pad_token_id,
        },
        **map_options,
    )


def is_saved_dataset(path: str) -> bool:
    """A folder written by `Dataset.save_to_disk` (one split, used as train) or `DatasetDict.save_to_disk`."""
    folder = Path(path)
    names = (datasets_config.DATASET_STATE_JSON_FILENAME, datasets_config.DATASETDICT_JSON_FILENAME)
    return any((folder / name).is_file() for name in names)


def check_text_file(split: str, path: str, chunk_bytes: int = 1 << 20) -> None:
    """A `split` file must be a readable UTF-8 text file with at least one non-blank line (read in chunks)."""
    file = Path(path)
    check_regular_file(file, f"{split} file")
    decoder = codecs.getincrementaldecoder("utf-8")()
    has_text, offset = False, 0
    with file.open("rb") as stream:
        try:
            while chunk := stream.read(chunk_bytes):
                has_text = bool(decoder.decode(chunk).strip()) or has_text
                offset += len(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{split} file {path} is not UTF-8 text (near byte {offset + error.start}: {error.reason})"
            ) from None
    if not has_text:
        raise ValueError(f"{split} file {path} holds no text (it is empty or blank)")


def train_tokenizer(texts, vocab_size: int) -> PreTrainedTokenizerFast:
    """A ByteLevel BPE tokenizer trained on an iterable of texts; EOS doubles as BOS, plus a pad token. It pads
    on the left, as batched generation with a causal model needs (training packs its own blocks)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN, padding_side="left"
    )


def config_for_tokenizer(tokenizer, **config_kwargs) -> SaffuConfig:
    """A `SaffuConfig` whose vocabulary size and special token ids are the tokenizer's."""
    return SaffuConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **config_kwargs,
    )


def text_batches(dataset, column: str, batch_size: int = 1000):
    """The texts of `column`, a batch at a time, long documents in pieces (`document_pieces`)."""
    if isinstance(dataset, IterableDataset):
        for batch in dataset.iter(batch_size=batch_size):
            yield [piece for text in batch[column] for piece in document_pieces(text)]
        return
    for start in range(0, len(dataset), batch_size):
        yield [piece for text in dataset[start : start + batch_size][column] for piece in document_pieces(text)]


def document_pieces(text: str) -> list[str]:
    """`text` cut into pieces of at most `MAX_PIECE_CHARS` characters, each cut just before the whitespace that precedes
    a word (the last one in the piece's span; a span without one is cut at MAX_PIECE_CHARS). A ByteLevel (GPT-2)
    pre-tokenizer never joins two words across such a cut, so the pieces' tokens are the whole text's."""
    pieces, start, max_chars = [], 0, MAX_PIECE_CHARS
    while len(text) - start > max_chars:
        match = LAST_WORD_START.match(text, start + 1, start + max_chars)
        cut = match.end() - 1 if match else start + max_chars
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def tokenize_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """The token ids of each document, long ones tokenised in pieces (`document_pieces`) and joined; the pieces
    go to the tokenizer in calls of at most about `MAX_PIECE_CHARS` * 16 characters, so the memory of its
    encodings is bounded, not that of the longest document (or batch)."""
    ids: list[list[int]] = [[] for _ in texts]
    group: list[tuple[int, str]] = []
    characters = 0
    for owner, text in enumerate(texts):
        for piece in document_pieces(text):
            group.append((owner, piece))
            characters += len(piece)
            if characters > 16 * MAX_PIECE_CHARS:
                extend_with_ids(tokenizer, group, ids)
                group, characters = [], 0
    extend_with_ids(tokenizer, group, ids)
    return ids


def extend_with_ids(tokenizer, group: list[tuple[int, str]], ids: list[list[int]]) -> None:
    """Tokenise the (document index, piece) pairs of `group` in one call; append each piece's ids to its document's."""
    if group:
        encoded = tokenizer([piece for _, piece in group], add_special_tokens=False)["input_ids"]
        for (owner, _), piece_ids in zip(group, encoded, strict=True):
            ids[owner].extend(piece_ids)


def pack_documents(batch: dict, block_size: int, eos_id: int, pad_id: int) -> dict:
    """Concatenate the documents' token ids, EOS after each, and cut into blocks of `block_size`; the last block
    is padded with `pad_id` (attention_mask 0, labels -100). The blocks are rows of int64 numpy arrays, written
    in place: 8 bytes a token, not a Python list slot per token for the stream and for each of the three
    columns (a document of millions of tokens)."""
    ends = np.cumsum([len(ids) + 1 for ids in batch["input_ids"]], dtype=np.int64)
    length = int(ends[-1]) if len(ends) else 0
    shape = (-(-length // block_size), block_size)
    input_ids = np.full(shape[0] * block_size, pad_id, dtype=np.int64)
    for ids, end in zip(batch["input_ids"], ends, strict=True):
        input_ids[end - len(ids) - 1 : end - 1] = ids
        input_ids[end - 1] = eos_id
    attention_mask = np.zeros_like(input_ids)
    attention_mask[:length] = 1
    labels = input_ids.copy()
    labels[length:] = -100
    return {
        "input_ids": input_ids.reshape(shape),
        "attention_mask": attention_mask.reshape(shape),
        "labels": labels.reshape(shape),
    }


def pack_token_ids(token_ids: list[list[int]], block_size: int, eos_id: int, pad_id: int) -> dict:
    """`pack_documents` over consecutive packing batches of `PACKING_BATCH` documents: the blocks
    `tokenize_and_pack` makes of a split whose documents tokenise to `token_ids`."""
    batches = [
        pack_documents({"input_ids": token_ids[start : start + PACKING_BATCH]}, block_size, eos_id, pad_id)
        for start in range(0, max(len(token_ids), 1), PACKING_BATCH)
    ]
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}


def tokenize_and_pack(raw: DatasetDict, tokenizer, data_args: DataArguments) -> DatasetDict:
    """Every split as packed blocks: input_ids, attention_mask, labels (-100 at padding)."""
    columns = next(iter(raw.values())).column_names
    packed = pack_blocks(raw, columns, tokenizer, data_args, num_proc=data_args.preprocessing_num_workers)
    if "train" in packed and len(packed["train"]) == 0:
        raise ValueError("the training data holds no tokens after tokenization")
    return packed


def count_tokens(dataset) -> int:
    """Real (unpadded) tokens of a packed split."""
    return sum(sum(mask) for mask in dataset["attention_mask"])
