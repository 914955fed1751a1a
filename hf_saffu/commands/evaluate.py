"""`hf-saffu evaluate MODEL_DIR [--data FILE ...] [--minimal-pairs PATH]`: perplexity and minimal-pair
accuracy of a saved model (hf_saffu.evaluation).

`--data` is scored by the packed-documents protocol of hf_saffu.evaluation, with the block size of the run
that trained the model (its all_results.json), so for the test file of a `hf-saffu train` run it prints the
test perplexity of that run's all_results.json and model card.
"""

import argparse
from pathlib import Path

import torch

from ..errors import load_json
from ..evaluation import (
    context_length,
    evaluate_minimal_pairs,
    format_minimal_pairs_table,
    load_model_and_tokenizer,
    packed_perplexity,
    read_texts,
    write_json,
)

DEFAULT_BLOCK_SIZE = 128  # DataArguments.block_size's default


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate", help="perplexity and minimal pairs of a saved model", description=__doc__
    )
    parser.add_argument("model_dir", type=Path, help="saved model directory (model + tokenizer)")
    parser.add_argument(
        "--minimal-pairs", type=Path, help="JSONL file or directory of them (sentence_good/sentence_bad)"
    )
    parser.add_argument(
        "--data", type=Path, nargs="+", help="text files for perplexity (one document per line, or JSONL 'text')"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--block-size",
        type=int,
        help="tokens per packed block for perplexity (default: the training run's block_size from "
        f"MODEL_DIR/all_results.json, else the model's context length, else {DEFAULT_BLOCK_SIZE})",
    )
    parser.add_argument("--output", type=Path, help="write all results to this JSON file")
    parser.add_argument("--device", default="cpu", help="torch device to evaluate on (default: cpu)")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser


def run_block_size(model_dir: Path, model) -> int:
    """The block size the training run evaluated with, else the model's context length, else the default."""
    results = model_dir / "all_results.json"
    if results.is_file():
        block_size = load_json(results).get("block_size")
        if isinstance(block_size, int):
            return block_size
    return context_length(model) or DEFAULT_BLOCK_SIZE


def check_device(name: str) -> torch.device:
    """`--device` as a torch device that this machine has; a ValueError naming it otherwise."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type != "cpu":
        module = getattr(torch, device.type, None)
        available = module is not None and hasattr(module, "is_available") and module.is_available()
        count = module.device_count() if available and hasattr(module, "device_count") else 1
        if not available or (device.index or 0) >= count:
            raise ValueError(
                f"--device {name}: this machine has no such device (torch sees none of type {device.type})"
            )
    return device


def main(args: argparse.Namespace) -> None:
    """Print a perplexity line and/or the minimal-pair table, and write everything to ``--output`` as JSON
    when given."""
    if args.minimal_pairs is None and not args.data:
        raise ValueError("nothing to evaluate: give --data FILE ... and/or --minimal-pairs PATH")
    device = check_device(args.device)
    model, tokenizer = load_model_and_tokenizer(args.model_dir, args.trust_remote_code)
    model.to(device)
    results: dict[str, dict] = {}
    if args.data:
        texts = [text for path in args.data for text in read_texts(path)]
        block_size = args.block_size or run_block_size(args.model_dir, model)
        results["perplexity"] = packed_perplexity(model, tokenizer, texts, block_size, args.batch_size)
        ppl = results["perplexity"]
        print(f"perplexity {ppl['perplexity']:.4f} over {ppl['n_tokens']} tokens (packed blocks of {block_size})")
    if args.minimal_pairs is not None:
        results["minimal_pairs"] = evaluate_minimal_pairs(model, tokenizer, args.minimal_pairs, args.batch_size)
        print(format_minimal_pairs_table(results["minimal_pairs"]))
    if args.output is not None:
        print(f"wrote {write_json(results, args.output)}")
