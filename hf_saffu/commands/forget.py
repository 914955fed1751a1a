"""`hf-saffu forget MODEL_DIR --train_files some.txt [...]`: subtract the counts of text the model was counted on
(trained with --save_counts true; the text packed in blocks of its own, e.g. added by `hf-saffu update` or a
training run on it alone) and re-solve the pivot's tables (hf_saffu.counts).

The tables then equal those of a warm start that never saw the text: exact unlearning of what counting
learned. It cannot undo the rest: the embeddings, the contexts' U and W and the head were solved with the
text too, and backprop's changes (the tables' trained values are replaced by the re-solved closed form).
"""

import argparse

from . import update


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    return update.add_parser(subparsers, "forget", "subtract", __doc__)


def main(args: argparse.Namespace) -> dict:
    return update.main(args, sign=-1)
