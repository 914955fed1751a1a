"""`hf-saffu generate MODEL_DIR --prompt "..."`: sample text from a saved model (hf_saffu.generation)."""

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("generate", help="sample text from a saved model")
    parser.add_argument("model_dir")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--documents", type=int, default=1, help="keep sampling new documents after EOS, up to this many"
    )
    return parser


def main(args: argparse.Namespace) -> None:
    from ..evaluation import load_model_and_tokenizer
    from ..generation import sample_text

    model, tokenizer = load_model_and_tokenizer(args.model_dir)
    model.eval()
    print(
        sample_text(
            model,
            tokenizer,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            greedy=args.greedy,
            temperature=args.temperature,
            top_k=args.top_k,
            seed=args.seed,
            documents=args.documents,
        )
    )
