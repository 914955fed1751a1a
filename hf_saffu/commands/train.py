"""`hf-saffu train CONFIG.yaml [--key value ...]`: the training job (hf_saffu.train).

The flags are the fields of `ModelArguments`, `DataArguments` and `ExplicitTrainingArguments`, parsed by
`HfArgumentParser`; the YAML file's values come first and the flags after them win
(`hf_saffu.train.parse_arguments`).
"""

import argparse

YAML_SUFFIXES = (".yaml", ".yml")


class PassThroughParser(argparse.ArgumentParser):
    """Keeps the command's arguments as given (`args.config`, `args.flags`) for `HfArgumentParser`; `--help`
    (as the first argument) shows this usage followed by the flags `HfArgumentParser` accepts."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(args or [])
        namespace = argparse.Namespace() if namespace is None else namespace
        for key, value in self._defaults.items():
            if not hasattr(namespace, key):
                setattr(namespace, key, value)
        if args[:1] in (["-h"], ["--help"]):
            self.print_help()
            self.exit()
        has_config = bool(args) and args[0].lower().endswith(YAML_SUFFIXES)
        namespace.config = args[0] if has_config else None
        namespace.flags = args[1:] if has_config else args
        return namespace, []

    def format_help(self) -> str:
        from ..train import argument_parser

        flags = argument_parser().format_help().split("\n\n", 1)[1]  # without HfArgumentParser's usage
        return f"{super().format_help()}\nflags (ModelArguments, DataArguments, ExplicitTrainingArguments):\n{flags}"


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    default_class = subparsers._parser_class  # argparse takes the class per subparsers object only
    subparsers._parser_class = PassThroughParser
    try:
        parser = subparsers.add_parser(
            "train",
            help="train a SAFFU model from a YAML config (flags override it)",
            description=__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            add_help=False,
        )
    finally:
        subparsers._parser_class = default_class
    parser.add_argument("-h", "--help", action="store_true", help="show this help message and exit")
    parser.add_argument(
        "config", nargs="?", metavar="CONFIG.yaml", help="a YAML file of argument values (optional; first)"
    )
    parser.add_argument("flags", nargs="*", metavar="--key value", help="arguments that override the YAML's")
    return parser


def main(args: argparse.Namespace) -> dict:
    from ..train import parse_arguments, run_training

    argv = ([args.config] if args.config else []) + list(args.flags)
    return run_training(*parse_arguments(argv))
