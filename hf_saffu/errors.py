"""Errors raised for bad input, and the check that a model holds only finite numbers.

The `hf-saffu` command line reports `USER_ERRORS` (bad files, flags, configs, unreachable endpoints,
diverged runs) as one line on stderr and exit status 2 (`hf_saffu.cli.main`).
"""

import errno
import json
import os
import stat
import zipfile
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub.errors import HTTPError
from safetensors import SafetensorError, safe_open


class NonFiniteError(ValueError):
    """A model's weights (or a run's loss) hold NaN or infinity: nothing about it may be saved or reported."""


class UsageError(ValueError):
    """A command-line flag or argument argparse could not read."""


class OutputDirInUseError(RuntimeError):
    """Another training run holds the output_dir's lock (a user error: reported as one line, exit status 2)."""


def raise_usage_error(message: str):
    """An `ArgumentParser.error` that raises `UsageError` (reported as one line) instead of printing the usage."""
    raise UsageError(f"{message} (see --help)")


# What a user can cause by bad input: ValueError (bad values, NonFiniteError), OSError (missing or unreadable
# files, HfHubHTTPError), HTTPError (an unreachable Hub endpoint: the base of huggingface_hub's HTTP errors, taken
# from huggingface_hub so that a change of its HTTP client does not break the import), OutputDirInUseError (a
# concurrent run), SafetensorError (a weights file that cannot be written, e.g. on a full disk, or read).
USER_ERRORS = (ValueError, OSError, HTTPError, OutputDirInUseError, SafetensorError)


def non_finite_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding NaN or +-inf (one host synchronisation when all are finite)."""
    named = [(name, tensor) for name, tensor in named_tensors if tensor.is_floating_point()]
    if not named or bool(torch.stack([torch.isfinite(tensor).all() for _, tensor in named]).all()):
        return []
    return [name for name, tensor in named if not bool(torch.isfinite(tensor).all())]


def check_finite(
    named_tensors: Iterable[tuple[str, torch.Tensor]], where: str, hint: str = "the model is unusable"
) -> None:
    """Raise `NonFiniteError` naming the tensors of `where` (e.g. a model directory) that are not finite."""
    bad = non_finite_tensors(named_tensors)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise NonFiniteError(f"{where} holds NaN or infinite weights ({shown}): {hint}")


def check_regular_file(path: str | Path, what: str) -> None:
    """`path` must be a regular file (or a link to one): else the error `what PATH does not exist` (missing,
    FileNotFoundError), `is a directory` (IsADirectoryError), `is a symlink loop` or `is a FIFO ...` (OSError)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        dangling = f" (a symlink to the missing {os.readlink(path)})" if os.path.islink(path) else ""
        raise FileNotFoundError(f"{what} {path} does not exist{dangling}") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise OSError(f"{what} {path} is a symlink loop (it links back to itself)") from None
        raise OSError(f"{what} {path} cannot be read: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{what} {path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
        raise OSError(f"{what} {path} is {kind}, not a regular file")


def load_json(path: str | Path):
    """The JSON value in `path`; a ValueError naming the file when it is not valid JSON (or not UTF-8)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the file is corrupt; restore or re-create it") from None


def check_saved_files(folder: str | Path) -> None:
    """Every file a save wrote into `folder` must be readable before anything loads it: the *.json files valid
    JSON, the *.safetensors files whole (a header that matches the file) and the torch.save files (*.pt, *.pth,
    *.bin) whole zip archives. A ValueError names the first file that is not (truncated, empty, corrupt)."""
    for path in sorted(Path(folder).iterdir()):
        if not path.is_file():
            continue
        if path.suffix == ".json":
            load_json(path)
        elif path.suffix == ".safetensors":
            try:
                with safe_open(path, framework="pt") as weights:
                    weights.keys()
            except (SafetensorError, OSError) as error:
                raise ValueError(
                    f"{path} is not a whole safetensors file ({error}): it is truncated or corrupt"
                ) from None
        elif path.suffix in (".pt", ".pth", ".bin") and not zipfile.is_zipfile(path):
            raise ValueError(f"{path} is not a whole torch.save file (truncated, empty or corrupt)")
