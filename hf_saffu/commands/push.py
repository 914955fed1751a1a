"""`hf-saffu push MODEL_DIR REPO_ID [--private] [--revision REV]`: publish a saved model (hf_saffu.hub)."""

import argparse

from ..hub import DEFAULT_COMMIT_MESSAGE, push_model_dir


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "push",
        help="upload a saved SAFFU model directory to the Hugging Face Hub",
        description="Validate a saved SAFFU model directory (config with auto_map and code, safetensors "
        "weights, tokenizer, model card) and upload it to a Hub model repo in one commit.",
    )
    parser.add_argument("model_dir", help="directory written by save_pretrained / the training CLI")
    parser.add_argument("repo_id", help="Hub repo id, e.g. your-name/saffu-wikitext2")
    parser.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    parser.add_argument("--revision", default=None, help="branch to push to; created from main if missing")
    parser.add_argument("--commit-message", default=DEFAULT_COMMIT_MESSAGE, help="commit message")
    return parser


def main(args: argparse.Namespace) -> None:
    """Invalid input (a PushError) and the Hub's refusals (HfHubHTTPError, e.g. 401 or 413) are reported by
    `hf_saffu.cli.main` as one line with status 2."""
    commit = push_model_dir(
        args.model_dir, args.repo_id, args.private, args.revision, commit_message=args.commit_message
    )
    branch = args.revision or "main"
    print(f"pushed {args.model_dir} to {commit.repo_url.repo_id} ({branch}) at {commit.oid}: {commit.commit_url}")
