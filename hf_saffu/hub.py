"""Publish a saved SAFFU model directory to the Hugging Face Hub (``hf-saffu push``).

The directory is checked before anything is sent: it must hold a SAFFU ``config.json`` whose
``auto_map`` code files are present (so ``trust_remote_code`` loading works), safetensors
weights and a tokenizer. Then the repo is created (or reused), the branch is created when a
``revision`` is given, and the directory is uploaded in one commit, with the model card of
:func:`hf_saffu.model_card.model_card_for_dir` as ``README.md`` (the directory is not modified).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import CommitInfo, HfApi
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, HTTPError
from huggingface_hub.utils import validate_repo_id
from safetensors import safe_open

from .errors import NonFiniteError, check_finite
from .model_card import model_card_for_dir

DEFAULT_COMMIT_MESSAGE = "Upload SAFFU model with hf-saffu push"
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
REQUIRED_AUTO_CLASSES = ("AutoConfig", "AutoModelForCausalLM")
# Training leftovers that do not belong in a published model repo.
IGNORE_PATTERNS = [
    "checkpoint-*",
    "tmp-checkpoint-*",
    "runs/*",
    "*__pycache__*",
    "*.pyc",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state*.pth",
    "training_args.bin",
]
# Remote weight files not in the pushed directory are deleted, so a re-push never mixes shards.
DELETE_PATTERNS = ["*.safetensors", "model.safetensors.index.json"]
_COMMIT_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


class PushError(ValueError):
    """The model directory or repo id cannot be pushed; nothing was uploaded."""


def check_model_dir(model_dir: str | Path) -> Path:
    """Return ``model_dir`` as a Path if it is a complete SAFFU model directory, else raise PushError."""
    path = Path(model_dir)
    if not path.is_dir():
        raise PushError(f"{path} is not a directory")
    config = _read_config(path)
    if config.get("model_type") != "saffu":
        raise PushError(f"{path / 'config.json'} has model_type {config.get('model_type')!r}, expected 'saffu'")
    _check_auto_map(path, config)
    if not any((path / name).is_file() for name in WEIGHTS_FILES):
        raise PushError(f"{path} has no weights: expected one of {', '.join(WEIGHTS_FILES)}")
    _check_finite_weights(path)
    if not (path / "tokenizer_config.json").is_file() or not any((path / n).is_file() for n in TOKENIZER_FILES):
        raise PushError(
            f"{path} has no tokenizer: expected tokenizer_config.json and one of {', '.join(TOKENIZER_FILES)} "
            "(save it with tokenizer.save_pretrained)"
        )
    return path


def check_repo_id(repo_id: str) -> None:
    """Raise PushError if ``repo_id`` is not a valid Hub repo id (``name`` or ``namespace/name``)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise PushError(f"invalid repo id {repo_id!r}: {err}") from err


def push_model_dir(
    model_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> CommitInfo:
    """Upload a SAFFU model directory to ``repo_id`` (on branch ``revision``, default main).

    Everything is validated first; on a PushError nothing was sent to the Hub. ``private``
    only applies when the repo is created. The branch is created from main if missing.
    """
    path = check_model_dir(model_dir)
    check_repo_id(repo_id)
    if revision is not None and (not revision.strip() or _COMMIT_SHA_RE.match(revision)):
        raise PushError(f"--revision must name a branch, got {revision!r}")
    api = HfApi()
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    except HTTPError as error:
        if isinstance(error, HfHubHTTPError):  # the Hub answered
            raise
        raise OSError(f"cannot reach the Hub at {api.endpoint}: {error}") from error  # no connection at all
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    with folder_with_card(path, repo_id) as folder:
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=IGNORE_PATTERNS,
            delete_patterns=DELETE_PATTERNS,
        )


@contextmanager
def folder_with_card(path: Path, repo_id: str) -> Iterator[Path]:
    """A temporary folder of links to the files of ``path`` (subfolders are training leftovers) whose
    ``README.md`` is the model card to publish as ``repo_id``."""
    with tempfile.TemporaryDirectory() as staging:
        folder = Path(staging)
        for file in path.iterdir():
            if file.is_file() and file.name != "README.md":
                os.symlink(file.resolve(), folder / file.name)
        (folder / "README.md").write_text(model_card_for_dir(path, repo_id), encoding="utf-8")
        yield folder


def _read_config(path: Path) -> dict:
    """Load ``config.json`` as a dict or raise PushError."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise PushError(f"{path} is not a SAFFU model directory: config.json is missing")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PushError(f"{config_path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise PushError(f"{config_path} must hold a JSON object")
    return config


def _model_weight_files(path: Path) -> list[Path]:
    """The weight files the model loads: model.safetensors, or the shards its index names (other files in the
    directory, such as a leftover shard of an earlier save, are not part of the model)."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted({path / name for name in json.loads(index.read_text())["weight_map"].values()})
    return [path / "model.safetensors"]


def _check_finite_weights(path: Path) -> None:
    """The model's safetensors files must hold only finite numbers (read one tensor at a time)."""
    for weights in _model_weight_files(path):
        with safe_open(weights, framework="pt") as tensors:
            try:
                check_finite(((name, tensors.get_tensor(name)) for name in tensors.keys()), str(weights))
            except NonFiniteError as err:
                raise PushError(str(err)) from None


def _check_auto_map(path: Path, config: dict) -> None:
    """Require ``auto_map`` entries for the Auto classes and the code files they name."""
    auto_map = config.get("auto_map") or {}
    absent = [name for name in REQUIRED_AUTO_CLASSES if name not in auto_map]
    if absent:
        raise PushError(
            f"{path / 'config.json'} has no auto_map entry for {', '.join(absent)}: save the model with "
            "hf_saffu imported (model.save_pretrained) so the code is stored for trust_remote_code"
        )
    modules = {str(auto_map[name]).split("--")[-1].rsplit(".", 1)[0] for name in REQUIRED_AUTO_CLASSES}
    missing = sorted(f"{module}.py" for module in modules if not (path / f"{module}.py").is_file())
    if missing:
        raise PushError(f"{path} lacks the code files named in auto_map: {', '.join(missing)}")
