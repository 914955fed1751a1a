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
from transformers.dynamic_module_utils import get_relative_import_files

from .errors import NonFiniteError, check_finite
from .model_card import RESULTS_FILE, model_card_for_dir, model_weight_files

DEFAULT_COMMIT_MESSAGE = "Upload SAFFU model with hf-saffu push"
WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
REQUIRED_AUTO_CLASSES = ("AutoConfig", "AutoModelForCausalLM")
# What a model repo holds besides the weights and the code (README.md is the card written for the repo). Nothing
# else of the directory is published: no dotfiles (.env), staging leftovers (.tmp*), checkpoints or logs.
PUBLISHED_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    RESULTS_FILE,
    *TOKENIZER_FILES,
)
# Remote weight files not in the pushed directory are deleted, so a re-push never mixes shards.
DELETE_PATTERNS = ["*.safetensors", "model.safetensors.index.json"]
_COMMIT_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
# What to do about the Hub's usual refusals of a push, by HTTP status.
REFUSAL_HINTS = {
    401: ": log in with `hf auth login` or set HF_TOKEN to a valid token",
    403: ": the token may not write to this repo; use a token with write access",
    413: ": the upload is larger than the Hub accepts in one request",
}


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
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        with folder_with_card(path, repo_id) as folder:
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                commit_message=commit_message,
                delete_patterns=DELETE_PATTERNS,
            )
    except HfHubHTTPError as error:  # the Hub answered: the same error, its message made one line
        error.args = (hub_refusal(error, api.endpoint, repo_id),)
        raise
    except HTTPError as error:  # no answer at all
        raise OSError(f"cannot reach the Hub at {api.endpoint}: {error}") from error


def hub_refusal(error: HfHubHTTPError, endpoint: str, repo_id: str) -> str:
    """One line for an HTTP error answer of the Hub: its status, its own message (``X-Error-Message`` or the
    body) and, for a refused token or a too-large upload, what to do, e.g. ``the Hub at URL refused the push to
    REPO: 401 Unauthorized (Invalid credentials in Authorization header): ...``."""
    status = f"{error.response.status_code} {error.response.reason_phrase}".strip()
    reason = " ".join(str(error.server_message or "").split())
    line = f"the Hub at {endpoint} refused the push to {repo_id}: {status}" + (f" ({reason})" if reason else "")
    return line + REFUSAL_HINTS.get(error.response.status_code, "")


@contextmanager
def folder_with_card(path: Path, repo_id: str) -> Iterator[Path]:
    """A temporary folder of links to the files of ``path`` a model repo holds (`published_files`), whose
    ``README.md`` is the model card to publish as ``repo_id``."""
    with tempfile.TemporaryDirectory() as staging:
        folder = Path(staging)
        for file in published_files(path):
            os.symlink(file.resolve(), folder / file.name)
        (folder / "README.md").write_text(model_card_for_dir(path, repo_id), encoding="utf-8")
        yield folder


def published_files(path: Path) -> list[Path]:
    """The files of a model directory that are published: `PUBLISHED_FILES`, the weights the model loads (an
    index and its shards, or model.safetensors) and the code files of ``auto_map`` with the files they import."""
    files = [path / name for name in PUBLISHED_FILES if (path / name).is_file()]
    files += model_weight_files(path)
    index = path / "model.safetensors.index.json"
    files += [index] if index.is_file() else []
    for module in sorted(_auto_map_modules(_read_config(path))):
        code = path / f"{module}.py"
        files += [code, *map(Path, get_relative_import_files(str(code)))]
    return sorted(file for file in set(files) if file.parent.resolve() == path.resolve())


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


def _check_finite_weights(path: Path) -> None:
    """The model's safetensors files must hold only finite numbers (read one tensor at a time)."""
    for weights in model_weight_files(path):
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
    missing = sorted(f"{module}.py" for module in _auto_map_modules(config) if not (path / f"{module}.py").is_file())
    if missing:
        raise PushError(f"{path} lacks the code files named in auto_map: {', '.join(missing)}")


def _auto_map_modules(config: dict) -> set[str]:
    """The module names (``modeling_saffu``) of the classes ``auto_map`` names for the Auto classes."""
    auto_map = config.get("auto_map") or {}
    return {str(auto_map[name]).split("--")[-1].rsplit(".", 1)[0] for name in REQUIRED_AUTO_CLASSES if name in auto_map}
