"""The training job: data -> tokenizer -> SAFFU model -> explicit warm start + backprop -> evaluation.

Arguments are three dataclasses parsed by `HfArgumentParser` from a YAML file, overridden by
command-line flags: `ModelArguments`, `DataArguments` and `ExplicitTrainingArguments`
(`hf-saffu train`, hf_saffu/commands/train.py, runs `run_training(*parse_arguments(argv))`).
"""

import dataclasses
import functools
import inspect
import json
import re
import time
import typing
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import yaml
from datasets import DatasetDict
from huggingface_hub.errors import HFValidationError, HTTPError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoTokenizer, HfArgumentParser, default_data_collator, set_seed
from transformers.hf_argparser import string_to_bool

from .configuration_saffu import ExplicitWarmStartConfig, SaffuConfig, recipe_from
from .counts import save_counts
from .data import (
    BUILTIN_CORPUS,
    DataArguments,
    config_for_tokenizer,
    count_tokens,
    load_text_datasets,
    load_text_streams,
    pack_stream,
    text_batches,
    tokenize_and_pack,
    train_tokenizer,
)
from .errors import UsageError, check_finite, check_saved_files, raise_usage_error
from .generation import sample_text
from .model_card import RESULTS_FILE, model_card_for_dir
from .modeling_saffu import SaffuForCausalLM
from .output_dir import check_output_dir, output_dir_lock, staged_folder
from .trainer import ExplicitTrainer, ExplicitTrainingArguments

# SaffuConfig keyword arguments the job sets itself, not flags: the vocabulary and the special tokens come from the
# tokenizer, warm_started from the warm start, tie_word_embeddings stays False, and the recipe comes field by field.
JOB_SET_FIELDS = (
    "vocab_size",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "warm_started",
    "tie_word_embeddings",
    "warm_start_recipe",
)


# Earlier names SaffuConfig still reads (from kwargs, mapped to ngram_capacities), kept as flags for old commands and
# configs: (name, annotation, default, help).
EARLIER_FLAGS = (
    ("pivot_bigrams", int | None, None, "earlier name of the order-2 table's entries (ngram_capacities[0]; 0: none)"),
    ("pivot_trigrams", int | None, None, "earlier name of the order-3 table's entries (ngram_capacities[1]; 0: none)"),
)


def documented_arguments(cls) -> dict[str, str]:
    """The first sentence of each argument's description in the "Args:" section of `cls`'s docstring
    (transformers' format: `name (`type`, ...):` and the description indented below it)."""
    arguments, name = {}, None
    for line in inspect.getdoc(cls).split("Args:", 1)[1].split("\n"):
        if match := re.fullmatch(r"    (\w+) \(.*\):", line):
            name = match.group(1)
            arguments[name] = ""
        elif name is not None and line.startswith("        "):
            arguments[name] = f"{arguments[name]} {line.strip()}".strip()
        elif line.strip():
            name = None  # the end of the section (Example:)
    return {name: re.split(r"(?<=[^.]\.)\s+(?=[A-Z`(])", text, maxsplit=1)[0] for name, text in arguments.items()}


def config_parameters() -> list[tuple[str, object, object, str]]:
    """(name, annotation, default, help) of every `SaffuConfig` keyword argument a run sets: SaffuConfig's own
    (but `JOB_SET_FIELDS`), those of its warm-start recipe (`ExplicitWarmStartConfig`) and `EARLIER_FLAGS`."""
    own = [
        (p.name, p.annotation, p.default, SaffuConfig)
        for p in inspect.signature(SaffuConfig.__init__).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in ("self", *JOB_SET_FIELDS)
    ]
    recipe = [(f.name, f.type, f.default, ExplicitWarmStartConfig) for f in dataclasses.fields(ExplicitWarmStartConfig)]
    docs = {cls: documented_arguments(cls) for cls in (SaffuConfig, ExplicitWarmStartConfig)}
    documented = [(name, annotation, default, docs[cls][name]) for name, annotation, default, cls in own + recipe]
    return documented + list(EARLIER_FLAGS)


def flag_words(annotation, default) -> dict:
    """The words a config argument takes besides a number, mapped to their config values: its `Literal` members,
    and `none` (None) when it may be None but its default is not."""
    members = typing.get_args(annotation) or (annotation,)
    words = {word: word for member in members if typing.get_origin(member) is Literal for word in member.__args__}
    if default is not None and type(None) in members:
        words["none"] = None
    return words


def flag_field(name: str, annotation, default, help: str) -> tuple[str, object, dataclasses.Field]:
    """A `ModelArguments` field of the config argument `name`, unset (None) by default so that the config's own
    default applies. A list is a list flag; a number that also takes words (`flag_words`) is a string flag read
    by `number_or_word`; anything else keeps its type."""
    members = [member for member in typing.get_args(annotation) or (annotation,) if member is not type(None)]
    words = flag_words(annotation, default)
    if any(typing.get_origin(member) in (list, tuple) for member in members):
        kind = list[int]
    elif words:
        kind = str
    else:
        kind = members[0]
    described = f"{help} (SaffuConfig's default: {list(default) if isinstance(default, tuple) else default})"
    if words:
        described += f"; a number or one of {sorted(words)}"
    return name, kind | None, dataclasses.field(default=None, metadata={"help": described})


class ConfigArguments:
    """What `ModelArguments` does with the config arguments of a run."""

    def __post_init__(self):
        if self.model_name_or_path is None:  # check the architecture now, before any data is read
            SaffuConfig(vocab_size=1, **self.config_kwargs())

    def config_kwargs(self) -> dict:
        """The `SaffuConfig` keyword arguments this run sets (unset fields keep SaffuConfig's defaults)."""
        kwargs = {}
        for name, annotation, default, _ in config_parameters():
            value, words = getattr(self, name), flag_words(annotation, default)
            if value is not None:
                kwargs[name] = number_or_word(name, value, words) if words else value
        return kwargs


ModelArguments = dataclasses.make_dataclass(
    "ModelArguments",
    [
        (
            "model_name_or_path",
            str | None,
            dataclasses.field(default=None, metadata={"help": "continue from this saved model"}),
        ),
        *(flag_field(*parameter) for parameter in config_parameters()),
    ],
    bases=(ConfigArguments,),
    namespace={
        "__doc__": "The SAFFU architecture and warm-start recipe (the `SaffuConfig` and `ExplicitWarmStartConfig` "
        "keyword arguments a run sets, one flag each, derived from their signatures and docstrings), or a saved "
        "model to continue from."
    },
)
ModelArguments.__module__ = __name__


def number_or_word(name: str, value: str, words: dict):
    """The value of a flag that takes a number or one of `words` (mapped to its config value)."""
    if value.lower() in words:
        return words[value.lower()]
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name} must be a number or one of {sorted(words)}, got {value!r}") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (plain YAML keeps the last silently; a
    flag's two spellings, embed_bits and embed-bits, are one key) and aliases (`*name`: a config needs none, and
    nested aliases expand exponentially)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ValueError(
                f"the alias *{event.anchor} (line {event.start_mark.line + 1}) is not allowed: write the value out"
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            name = key.replace("-", "_") if isinstance(key, str) else key
            if name in seen:
                twice = (
                    f"key {key!r} is" if seen[name] == key else f"keys {seen[name]!r} and {key!r} (one argument) are"
                )
                raise ValueError(f"the {twice} given twice (line {key_node.start_mark.line + 1})")
            seen[name] = key
        return super().construct_mapping(node, deep)


# YAML 1.2 floats: PyYAML (YAML 1.1) reads 1e-4, with no dot, as a string.
UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+)$"
    ),
    list("-+0123456789."),
)


def yaml_to_flags(config: dict) -> list[str]:
    """{"windows": [2, 8], "warm_start": true} -> ["--windows", "2", "8", "--warm_start", "true"]."""
    flags = []
    for key, value in config.items():
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        flags += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return flags


def check_yaml_values(parser: HfArgumentParser, config: dict, path: Path) -> None:
    """A YAML value of a numeric argument must be a YAML number (not a string such as "4", nor a boolean), of an
    integer argument an integer (not 1e23), and of a boolean argument a YAML boolean (not "no"): flags are strings,
    so after `yaml_to_flags` the parser could no longer tell. A YAML null is refused for a required-path argument
    (output_dir), which would otherwise fall back to transformers' default folder."""
    types = {action.dest: action.type for action in parser._actions}
    for key, value in config.items():
        kind = types.get(key.replace("-", "_") if isinstance(key, str) else key)
        if value is None and key == "output_dir":
            raise ValueError(f"{path}: {key} must be a folder name, got null")
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if kind in (int, float) and (isinstance(item, bool) or not isinstance(item, int | float)):
                raise ValueError(f"{path}: {key} must hold numbers, got {item!r}")
            if kind is int and isinstance(item, float):
                raise ValueError(f"{path}: {key} must hold integers, got {item!r}")
            if kind is string_to_bool and not isinstance(item, bool):
                raise ValueError(f"{path}: {key} must be true or false, got {item!r}")


def argument_parser() -> HfArgumentParser:
    """The parser of the job's flags: the fields of the three argument dataclasses."""
    parser = HfArgumentParser((ModelArguments, DataArguments, ExplicitTrainingArguments))
    for action in parser._actions:  # a list flag may be empty: YAML `windows: []` is `--windows` alone
        if action.nargs == "+":
            action.nargs = "*"
    parser.error = raise_usage_error  # one line, not argparse's usage and exit
    return parser


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, ExplicitTrainingArguments]:
    """`CONFIG.yaml [--key value ...]`: the YAML's values first, flags after them win."""
    parser = argument_parser()
    flags = argv
    if argv and argv[0].lower().endswith((".yaml", ".yml")):
        path = Path(argv[0])
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            config = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
        except yaml.YAMLError as error:
            raise ValueError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
        if not isinstance(config, dict):
            raise ValueError(f"{path} must hold a mapping of argument names to values")
        check_yaml_values(parser, config, path)
        flags = yaml_to_flags(without_replaced_source(config, argv[1:])) + argv[1:]
    check_single_dash_values(argv)
    return parser.parse_args_into_dataclasses(args=flags)


def check_single_dash_values(argv: list[str]) -> None:
    """A value such as `-dash.txt` would be read as an (unknown) option by argparse, which then takes the flag
    before it as given no value: refused, naming the value and the way to write it."""
    for value in argv:
        if value.startswith("-") and not value.startswith("--") and not re.fullmatch(r"-[0-9.eE+-]+|-inf|-nan", value):
            raise UsageError(
                f"{value!r} starts with '-', so it would be read as an option: write a file name as ./{value}"
            )


# The data source: a dataset (name and configuration) or local files. A flag naming one replaces a config's other.
DATASET_KEYS, FILE_KEYS = ("dataset_name", "dataset_config"), ("train_files", "validation_files", "test_files")


def without_replaced_source(config: dict, flags: list[str]) -> dict:
    """The YAML `config` without its data source when the command-line `flags` name the other kind:
    `hf-saffu train configs/shakespeare.yaml --train_files my.txt` trains on my.txt."""
    given = {flag.removeprefix("--").split("=", 1)[0].replace("-", "_") for flag in flags if flag.startswith("--")}
    replaced = FILE_KEYS if given & {"dataset_name"} else DATASET_KEYS if given & {"train_files"} else ()
    return {key: value for key, value in config.items() if key not in replaced}


def check_pretrained_source(name: str, value: str | None) -> None:
    """`value` must be a local directory or a Hub repo id; a local path that does not exist is reported as
    missing here instead of being looked up on the Hub."""
    if value is None or Path(value).is_dir():
        return
    path = Path(value)
    if path.exists():
        raise NotADirectoryError(f"{name} {value} is a file: give the directory that save_pretrained wrote")
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise FileNotFoundError(f"{name} {value} does not exist (and is not a Hub repo id)") from None
    if path.parent != Path(".") and path.parent.is_dir():
        raise FileNotFoundError(f"{name} {value} does not exist (its folder {path.parent} does)")


@contextmanager
def naming_the_source(name: str, value: str):
    """An OSError of loading `value` (a local folder or a Hub repo id) names the argument it came from."""
    try:
        yield
    except (OSError, HTTPError) as error:
        where = "a local folder" if Path(value).is_dir() else "not a local folder; as a Hub repo id"
        raise OSError(f"{name} {value} ({where}) could not be loaded: {error}") from error


def build_tokenizer(data_args: DataArguments, raw):
    if data_args.tokenizer_name_or_path:
        with naming_the_source("tokenizer_name_or_path", data_args.tokenizer_name_or_path):
            return AutoTokenizer.from_pretrained(data_args.tokenizer_name_or_path)
    return train_tokenizer(text_batches(raw["train"], data_args.text_column), data_args.tokenizer_vocab_size)


def build_model(model_args: ModelArguments, tokenizer) -> SaffuForCausalLM:
    if model_args.model_name_or_path:
        if Path(model_args.model_name_or_path).is_dir():
            check_saved_files(model_args.model_name_or_path)
        with naming_the_source("model_name_or_path", model_args.model_name_or_path):
            model = SaffuForCausalLM.from_pretrained(model_args.model_name_or_path)
        if model.config.vocab_size != len(tokenizer):
            raise ValueError(
                f"{model_args.model_name_or_path} has vocab_size={model.config.vocab_size} but the tokenizer has "
                f"{len(tokenizer)} tokens"
            )
        # the warm-start settings of this run (flags, YAML) apply to the saved model's recipe; its architecture stays
        model.config.warm_start_recipe = recipe_from(model.config.warm_start_recipe, model_args.config_kwargs())
        return model
    return SaffuForCausalLM(config_for_tokenizer(tokenizer, **model_args.config_kwargs()))


def holding_the_output_dir(run):
    """`run(model_args, data_args, training_args)` with training_args.output_dir locked throughout
    (`hf_saffu.output_dir.output_dir_lock`): a concurrent run in the same output_dir is refused and touches nothing."""

    @functools.wraps(run)
    def locked(model_args, data_args, training_args):
        with output_dir_lock(training_args.output_dir, training_args.should_save):
            return run(model_args, data_args, training_args)

    return locked


@holding_the_output_dir
def run_training(
    model_args: ModelArguments, data_args: DataArguments, training_args: ExplicitTrainingArguments
) -> dict:
    """Train, evaluate (validation and test), save model + tokenizer + results + model card, sample."""
    check_pretrained_source("tokenizer_name_or_path", data_args.tokenizer_name_or_path)
    check_pretrained_source("model_name_or_path", model_args.model_name_or_path)
    check_output_dir(training_args, training_args.resume_from_checkpoint)
    set_seed(training_args.seed)
    raw = load_text_streams(data_args) if data_args.streaming else load_text_datasets(data_args)
    tokenizer = build_tokenizer(data_args, raw)
    if data_args.streaming:
        evaluation = tokenize_and_pack(
            DatasetDict({k: v for k, v in raw.items() if k != "train"}), tokenizer, data_args
        )
        packed = {**evaluation, "train": pack_stream(raw["train"], tokenizer, data_args)}
    else:
        packed = tokenize_and_pack(raw, tokenizer, data_args)
    model = build_model(model_args, tokenizer)
    check_counts_request(training_args, model)
    largest_window = model.config.max_window
    train_tokens = None if data_args.streaming else count_tokens(packed["train"])  # a stream is counted as read
    if train_tokens is not None and train_tokens <= largest_window:
        raise ValueError(
            f"the training data has {train_tokens} tokens, not more than the largest window ({largest_window})"
        )
    trainer = ExplicitTrainer(
        model=model,
        args=training_args,
        train_dataset=packed["train"],
        eval_dataset=packed["validation"],
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    start = time.perf_counter()
    resume = training_args.resume_from_checkpoint
    train_output = trainer.train(resume_from_checkpoint=resume)
    total_seconds = time.perf_counter() - start
    report = trainer.warm_start_report
    results = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": trainer.train_tokens(),
        "warm_start_seconds": report.total_seconds if report else None,
        "warm_start_tokens": report.tokens if report else None,
        "backprop_seconds": total_seconds - (report.total_seconds if report else 0.0),
        "backprop_steps": train_output.global_step,
        "block_size": data_args.block_size,  # of the validation/test perplexities (hf-saffu evaluate reads it)
    }
    if trainer.gate_calibration is not None:
        results["gate_calibration"] = trainer.gate_calibration.metrics()
    if "warm_start_eval_perplexity" in trainer.warm_start_metrics:
        results["warm_start_validation_perplexity"] = trainer.warm_start_metrics["warm_start_eval_perplexity"]
    for split in ("validation", "test"):
        if split in packed:
            metrics = trainer.evaluate(eval_dataset=packed[split], metric_key_prefix=split)
            results[f"{split}_perplexity"] = metrics[f"{split}_perplexity"]
            results[f"{split}_loss"] = metrics[f"{split}_loss"]
    if trainer.is_world_process_zero():
        save_run(trainer, tokenizer, results, data_args, training_args)
        sample = sample_text(model.eval(), tokenizer, "", max_new_tokens=80, documents=4)
        results["sample"] = sample
        print(json.dumps({k: v for k, v in results.items() if k != "sample"}, indent=2))
        print(f"\nsample:\n{sample}\n")
    return results


def save_run(trainer, tokenizer, results: dict, data_args: DataArguments, training_args) -> None:
    """Model, tokenizer, results and model card into output_dir, written into a staging folder first and moved
    into place once all are written (`staged_folder`); then pushed to the Hub with `push_to_hub`."""
    output_dir = Path(training_args.output_dir)
    check_finite(trainer.model.named_parameters(), "the trained model", hint="nothing was saved")
    with staged_folder(output_dir) as staging:
        trainer.save_model(str(staging), _internal_call=True)
        tokenizer.save_pretrained(str(staging))
        results |= dataset_results(data_args)
        (staging / RESULTS_FILE).write_text(json.dumps(results, indent=2))
        if training_args.save_counts:
            save_counts(staging, trainer.warm_start_report.statistics, tokenizer, data_args.block_size)
        card = model_card_for_dir(staging, name=output_dir.resolve().name)
        (staging / "README.md").write_text(card, encoding="utf-8")
    if training_args.push_to_hub:  # after the results and the card, which the push publishes
        trainer.push_to_hub()


def check_counts_request(training_args: ExplicitTrainingArguments, model: SaffuForCausalLM) -> None:
    """save_counts needs this run's warm start (the counts are not kept otherwise) and a pivot table to count for."""
    if not training_args.save_counts:
        return
    if not model.ngram_tables:
        raise ValueError("save_counts saves the counts of the pivot's tables, and the model has none (ngram_order < 2)")
    if not training_args.warm_start or training_args.resume_from_checkpoint or model.config.warm_started:
        raise ValueError(
            "save_counts saves the counts of this run's warm start, and it runs none (warm_start=false, resuming, "
            "or a model that is already warm-started)"
        )


def dataset_results(data_args: DataArguments) -> dict:
    """How all_results.json (and so the model card) names the training data."""
    return {
        "dataset_name": dataset_title(data_args),
        "dataset_id": hub_dataset_id(data_args),
        "dataset_config": data_args.dataset_config,
    }


def hub_dataset_id(data_args: DataArguments) -> str | None:
    """The Hub id of the training data, the only kind of name the card's `datasets:` metadata takes: None for
    the built-in corpus and for local files and folders."""
    name = data_args.dataset_name
    return None if name is None or name == BUILTIN_CORPUS or Path(name).exists() else name


def dataset_title(data_args: DataArguments) -> str:
    """How the model card names the training data: the dataset's name, or the local files' and folder's names
    (never a local path, which would be published with the card)."""
    name = data_args.dataset_name
    if name is not None and not Path(name).exists():
        return name
    if name is not None:
        return f"local dataset folder {Path(name).name}"
    return "local text files " + ", ".join(Path(path).name for path in data_args.train_files)
