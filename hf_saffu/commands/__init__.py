"""The `hf-saffu` sub-commands, one module each (train, evaluate, generate, push, fetch_corpus,
update, forget).

Every module has `add_parser(subparsers)`, which adds the command's parser, and `main(args)`, which runs
it; `hf_saffu.cli` only dispatches. The library modules (evaluation, hub, train, ...) build no parsers.
"""

COMMANDS = ("train", "evaluate", "generate", "push", "fetch_corpus", "update", "forget")
