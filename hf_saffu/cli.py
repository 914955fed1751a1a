"""The `hf-saffu` command line: train, evaluate, generate, push, fetch-corpus, update, forget.

hf-saffu train configs/shakespeare.yaml [--key value ...]   # YAML values, overridden by flags
hf-saffu evaluate MODEL_DIR [--data ...] [--minimal-pairs PATH]
hf-saffu generate MODEL_DIR --prompt "..."
hf-saffu push MODEL_DIR REPO_ID [--private] [--revision REV]
hf-saffu fetch-corpus
hf-saffu update MODEL_DIR --train_files more.txt   # add text's counts, re-solve the pivot's tables
hf-saffu forget MODEL_DIR --train_files some.txt   # subtract them

Each command is a module hf_saffu/commands/NAME.py with `add_parser(subparsers)` and `main(args)`; this
module only dispatches. Bad input (a missing or unreadable file, an invalid flag or config value, an
unreachable Hub, a run that diverged) is reported as one line on stderr with exit status 2;
`hf-saffu --debug COMMAND ...` shows the traceback instead.
"""

import argparse
import sys
from importlib import import_module

from .commands import COMMANDS
from .errors import USER_ERRORS, raise_usage_error


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


class CommandLineParser(argparse.ArgumentParser):
    """An ArgumentParser (and sub-parsers) whose errors are one line (`UsageError`), not the usage and exit."""

    def error(self, message: str):
        raise_usage_error(message)


def build_parser() -> argparse.ArgumentParser:
    """`hf-saffu` with one sub-parser per module of hf_saffu.commands; `args.run` is that module's `main`."""
    parser = CommandLineParser(prog="hf-saffu", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (first argument)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        command = import_module(f".commands.{name}", __package__)
        command.add_parser(subparsers).set_defaults(run=command.main)
    return parser


def run_command(argv: list[str]) -> None:
    """Parse `argv` (without --debug) and run the command."""
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    main()
