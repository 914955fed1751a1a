"""`hf-saffu update MODEL_DIR --train_files more.txt [...]`: add the counts of more text to a saved model (trained
with --save_counts true) and re-solve the pivot's tables, without reading the old text (hf_saffu.counts).

The tables then equal those of a warm start on the old and the new text (the new text packed in blocks of its
own). Not updated: the embeddings, the contexts' U and W, the head and the neural word model with its token classes
(solved from later passes), and what backprop changed (the tables' trained values are replaced by the re-solved
closed form).
"""

import argparse
import json
from pathlib import Path


def add_parser(
    subparsers: argparse._SubParsersAction, name: str = "update", verb: str = "add", description: str = __doc__
) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name,
        help=f"{verb} text's counts to a saved model's pivot tables and re-solve them",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_dir", type=Path, help="saved model directory with saffu_counts.safetensors")
    parser.add_argument("--train_files", nargs="+", required=True, help="text files, one document a line")
    return parser


def main(args: argparse.Namespace, sign: int = 1) -> dict:
    from ..counts import change_counts

    result = change_counts(args.model_dir, args.train_files, sign)
    print(json.dumps(result))
    return result
