"""The output_dir of a training run: what a run may write there, and how it writes without losing anything.

A new run refuses an output_dir holding a previous run's model or checkpoints (`check_output_dir`, unless
resuming or `overwrite_output_dir`); a run holds the directory's lock while it trains (`output_dir_lock`: a
second run there is refused and touches nothing); checkpoints are written under a staging name and renamed once
complete (`STAGING_PREFIX`, `hf_saffu.trainer.ExplicitTrainer._save_checkpoint`), and the final save goes through
a staging folder (`staged_folder`), so a kill or a full disk leaves the previous files whole. These guards bracket
the whole `train` call, the warm start included, which runs before `Trainer.train`'s first callback event: they
are functions and context managers the trainer calls, not callbacks.
"""

import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from .errors import OutputDirInUseError

# A checkpoint is written inside tmp-checkpoint-N and renamed to checkpoint-N when complete; Trainer's resume
# (get_last_checkpoint) and rotation (glob "checkpoint-*") never see the staging name.
STAGING_PREFIX = "tmp-"
# The final save (model, tokenizer, results, card) is written into output_dir/tmp-save-XXXX, then moved into place.
SAVE_STAGING_PREFIX = "tmp-save-"
# What a new run in a used output_dir would replace (the saved model) or rotate away (the checkpoints).
PREVIOUS_RUN = re.compile(rf"^(model\.safetensors|model\.safetensors\.index\.json|{PREFIX_CHECKPOINT_DIR}-\d+)$")


def resume_request(resume_from_checkpoint: str | bool | None) -> str | bool | None:
    """`resume_from_checkpoint` as the command line or Python gives it: None for a new run (None, False,
    "false"), True for the last checkpoint (True, "true"), else the path as given."""
    if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() in ("true", "false"):
        resume_from_checkpoint = resume_from_checkpoint.lower() == "true"
    return resume_from_checkpoint or None


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | None:
    """The checkpoint to resume from (`resume_request`): a path as given, or the last checkpoint-N in
    output_dir for True; None for a new run."""
    resume_from_checkpoint = resume_request(resume_from_checkpoint)
    if resume_from_checkpoint is True:
        last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
        if last is None:
            raise ValueError(f"resume_from_checkpoint=true, but output_dir {output_dir} holds no checkpoint-N folder")
        return last
    return resume_from_checkpoint


def check_output_dir(args, resume_from_checkpoint) -> None:
    """output_dir must be writable (`check_writable`), and a new run (not resuming, no `overwrite_output_dir`)
    must not replace a previous run's model or rotate away its checkpoints: a FileExistsError naming them."""
    check_writable(args.output_dir)
    if resume_request(resume_from_checkpoint) is not None or args.overwrite_output_dir:
        return
    previous = previous_run_files(Path(args.output_dir))
    if previous:
        raise FileExistsError(
            f"output_dir {args.output_dir} holds a previous run ({', '.join(previous)}), which a new run would "
            "overwrite or delete: resume it (resume_from_checkpoint), choose another output_dir, or set "
            "overwrite_output_dir=True"
        )


def previous_run_files(output_dir: Path) -> list[str]:
    """The saved model and checkpoint-N directories in output_dir, sorted by name."""
    if not output_dir.is_dir():
        return []
    return sorted(path.name for path in output_dir.iterdir() if PREVIOUS_RUN.match(path.name))


def remove_staged_checkpoints(run_dir: str) -> None:
    """Delete the tmp-checkpoint-* directories an interrupted save left behind."""
    for staged in Path(run_dir).glob(f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.rmtree(staged)


def remove_staged_saves(output_dir: str) -> None:
    """Delete the staging folders (`staged_folder`) of final saves an interrupted run left behind."""
    for staged in Path(output_dir).glob(f"{SAVE_STAGING_PREFIX}*"):
        shutil.rmtree(staged)


def remove_checkpoints(output_dir: str) -> None:
    """Delete a previous run's checkpoint-N folders (overwrite_output_dir): a later resume_from_checkpoint=true
    must continue the new run, not the old one."""
    for checkpoint in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if checkpoint.is_dir() and PREVIOUS_RUN.match(checkpoint.name):
            shutil.rmtree(checkpoint)


@contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """A fresh staging folder inside `target` to write files into; when the block ends, every file moves into
    `target` (`os.replace`, one rename each; the weights last) and the folder is removed. When the block raises
    (a full disk, a bad value), the folder is removed and `target` keeps its previous files untouched."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=SAVE_STAGING_PREFIX, dir=target))
    try:
        yield staging
        for path in sorted(staging.iterdir(), key=lambda path: (path.suffix == ".safetensors", path.name)):
            if (target / path.name).is_dir():
                shutil.rmtree(target / path.name)
            os.replace(path, target / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def check_writable(output_dir: str) -> None:
    """output_dir (or, while it does not exist, its nearest existing parent) must be a writable directory: an
    OSError naming it, raised before any data is read or any warm start runs."""
    path = Path(output_dir).absolute()
    existing = next(folder for folder in (path, *path.parents) if folder.exists() or folder == folder.parent)
    if not existing.is_dir():
        where = "" if existing == path else f" (its parent {existing} is a file)"
        raise NotADirectoryError(f"output_dir {output_dir} is not a directory{where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (nothing can be created in {existing})"
        raise PermissionError(f"output_dir {output_dir} is not writable{where}")


_LOCKED_OUTPUT_DIRS: set[str] = set()  # the output_dirs this process holds (a nested lock is a no-op)


@contextmanager
def output_dir_lock(output_dir: str, enabled: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on output_dir (`flock` of the directory itself: no lock file is written) for the
    block: a second run in the same output_dir, started while this one holds it, gets an `OutputDirInUseError`
    and touches nothing. The directory is created for the lock, and removed again when it is still empty at the
    end (a run that failed before writing anything leaves no trace). Only the process that saves takes it."""
    path = Path(output_dir)
    key = os.path.realpath(path)
    if not enabled or key in _LOCKED_OUTPUT_DIRS:
        yield
        return
    check_writable(output_dir)
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirInUseError(
                f"output_dir {output_dir} is in use by another training run (it holds the directory's lock); "
                "wait for it to finish or choose another output_dir"
            ) from None
        _LOCKED_OUTPUT_DIRS.add(key)
        try:
            yield
        finally:
            _LOCKED_OUTPUT_DIRS.discard(key)
            if created and not any(path.iterdir()):
                path.rmdir()
    finally:
        os.close(descriptor)
