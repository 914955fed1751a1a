"""`hf-saffu evaluate MODEL_DIR [--data FILE ...] [--minimal-pairs PATH]`: perplexity and minimal-pair
accuracy of a saved model (hf_saffu.evaluation)."""

import argparse
from pathlib import Path

from ..evaluation import (
    evaluate_minimal_pairs,
    format_minimal_pairs_table,
    load_model_and_tokenizer,
    perplexity,
    read_texts,
    write_json,
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("evaluate", help="perplexity and minimal pairs of a saved model")
    parser.add_argument("model_dir", type=Path, help="saved model directory (model + tokenizer)")
    parser.add_argument(
        "--minimal-pairs", type=Path, help="JSONL file or directory of them (sentence_good/sentence_bad)"
    )
    parser.add_argument(
        "--data", type=Path, nargs="+", help="text files for perplexity (one text per line, or JSONL 'text')"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, help="window length for perplexity (default: model context)")
    parser.add_argument("--stride", type=int, help="sliding-window stride for perplexity (default: max_length//2)")
    parser.add_argument("--output", type=Path, help="write all results to this JSON file")
    parser.add_argument("--device", default="cpu", help="torch device to evaluate on (default: cpu)")
    parser.add_argument("--trust-remote-code", action="store_true")
    return parser


def main(args: argparse.Namespace) -> None:
    """Print a perplexity line and/or the minimal-pair table, and
    write everything to ``--output`` as JSON when given."""
    if args.minimal_pairs is None and not args.data:
        raise SystemExit("hf-saffu evaluate: nothing to evaluate; give --minimal-pairs PATH and/or --data FILE ...")
    model, tokenizer = load_model_and_tokenizer(args.model_dir, args.trust_remote_code)
    model.to(args.device)
    results: dict[str, dict] = {}
    if args.data:
        texts = [text for path in args.data for text in read_texts(path)]
        results["perplexity"] = perplexity(
            model, tokenizer, texts, args.batch_size, stride=args.stride, max_length=args.max_length
        )
        ppl = results["perplexity"]
        print(f"perplexity {ppl['perplexity']:.4f} over {ppl['n_tokens']} tokens")
    if args.minimal_pairs is not None:
        results["minimal_pairs"] = evaluate_minimal_pairs(model, tokenizer, args.minimal_pairs, args.batch_size)
        print(format_minimal_pairs_table(results["minimal_pairs"]))
    if args.output is not None:
        print(f"wrote {write_json(results, args.output)}")
