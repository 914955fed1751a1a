"""Errors raised for bad input, and the check that a model holds only finite numbers.

The `hf-saffu` command line reports `USER_ERRORS` (bad files, flags, configs, unreachable endpoints,
diverged runs) as one line on stderr and exit status 2 (`hf_saffu.cli.main`).
"""

from collections.abc import Iterable

import httpx2
import torch


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
# files, HfHubHTTPError), httpx2.HTTPError (an unreachable Hub endpoint), OutputDirInUseError (a concurrent run).
USER_ERRORS = (ValueError, OSError, httpx2.HTTPError, OutputDirInUseError)


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
