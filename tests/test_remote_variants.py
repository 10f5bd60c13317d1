"""Every reader gets the book that CI checks.

1. The notebooks read pinned sources only (the same data online and offline), and `make book` runs them with the
   settings `make test` uses.
2. A notebook that offers a remote variant (one visible switch, `REMOTE = False`, in its first code cell) still runs
   with it. CI has no internet, so the remote sources are faked locally with data of the same shape: Tiny Shakespeare
   is one document, FineWeb-Edu a small sample of web pages, codeparrot a few Python files, the SMS Spam Collection
   the pinned subset of it, Dolly-15k HumanEval's prompts and solutions in Dolly's fields. The cells that read and
   split the data (tagged `data-path` in the notebook), after the library cells (`#| export`), run with the switch
   flipped; they are where a one-document
   corpus or a missing play crashed before. LLM_BOOK_REMOTE_FULL=1 runs every cell instead (minutes per notebook).
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from shared import book, registry
from shared.export import ROOT, notebooks

SWITCH = "REMOTE = False"
TAG = "data-path"

# Run inside the kernel before the notebook's cells: registers local stand-ins under the remote names. The loaders
# are marked "not online", so the offline test environment does not skip them.
FAKES = '''
from shared import registry as _registry

_used = set()

def _fake(name, make):
    def fetch(folder):
        _used.add(name)
        return make()
    _registry.register(name, f"fake {name} (test)", _registry.Loader(f"fake {name}", False, fetch))

def _tiny_shakespeare():
    plays = [d for d in _registry.load("shakespeare") if d.id.endswith("_gut") and d.id != "metadata"]
    return [_registry.Document("tinyshakespeare", "\\n\\n".join(d.text for d in plays)[:1_100_000])]

def _fineweb_edu():                # FineWeb's text is already extracted from the HTML
    from shared.html_text import strip_html
    pages = _registry.load("web_text")[::3]
    return [_registry.Document(f"<urn:uuid:{i:08d}-fake>", strip_html(d.text)) for i, d in enumerate(pages)]

def _codeparrot():
    files = _registry.load("python_source")[:60:3]
    return [_registry.Document(f"someone/project/{d.id}", d.text) for d in files]

def _ucirvine_sms_spam():          # the same collection: the pinned subset stands in for all 5,574 messages
    return list(_registry.load("sms_spam"))

def _dolly15k():                   # real text in Dolly's record shape: HumanEval prompts and their solutions
    return [{"instruction": p["prompt"], "context": "", "response": p["canonical_solution"], "category": "open_qa"}
            for p in _registry.load("humaneval")]

_fake("tiny_shakespeare", _tiny_shakespeare)
_fake("fineweb_edu", _fineweb_edu)
_fake("codeparrot", _codeparrot)
_fake("ucirvine_sms_spam", _ucirvine_sms_spam)
_fake("dolly15k", _dolly15k)
'''


def _switch_notebooks() -> list[Path]:
    found = []
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        if any(c.cell_type == "code" and SWITCH in c.source.splitlines() for c in nb.cells):
            found.append(path)
    return found


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _literal_loads(source: str) -> set[str]:
    """Registry names a cell reads: load("name"), and the string constants a switch picks from."""
    names = set(re.findall(r"""\bload\(\s*["']([\w-]+)["']""", source))
    for line in source.splitlines():
        if re.match(r"^[A-Z_]*SOURCES?\s*=", line):
            names |= {s for s in re.findall(r"""["']([\w-]+)["']""", line) if s in registry.REGISTRY}
    return names


# ---------------------------------------------------------------- 1. the same data and settings as CI


def test_every_notebook_and_library_module_reads_only_pinned_sources():
    """By default (the switch off) a notebook reads pinned names only, so online and offline runs are identical."""
    read = {}
    for path in notebooks():
        nb = nbformat.read(path, as_version=4)
        for source in _code(nb):
            if re.search(r"except .*(SourceUnavailable|UnknownSource|KeyError)", source):
                continue                        # a demonstration of the registry's errors (chapter 2, notebook 01)
            remote_branch = re.findall(r'"(\w+)" if REMOTE else "(\w+)"', source)
            for _, pinned in remote_branch:
                read.setdefault(pinned, set()).add(path.name)
            for name in _literal_loads(source) - {r for r, _ in remote_branch}:
                read.setdefault(name, set()).add(path.name)
    for module in (ROOT / "shared").glob("*.py"):
        if module.name != "registry.py":
            for name in _literal_loads(module.read_text(encoding="utf-8")):
                read.setdefault(name, set()).add(module.name)
    assert {"shakespeare", "web_text", "gpt2_bpe"} <= set(read)
    not_pinned = {name: sorted(where) for name, where in read.items()
                  if name not in registry.REGISTRY or not registry.REGISTRY[name].pinned}
    assert not_pinned == {}


def test_make_book_runs_the_notebooks_as_make_test_does(monkeypatch):
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    test_env = dict(item.split("=", 1) for item in shlex.split(re.search(r"^TEST_ENV\s*:=(.*)$", makefile, re.M)[1]))
    # What decides the outputs is set identically by both ...
    assert book.KERNEL_ENV.items() <= test_env.items()
    # ... and the rest of TEST_ENV only switches off remote sources, which no notebook reads by default (above).
    assert set(test_env) - set(book.KERNEL_ENV) == {registry.OFFLINE_ENV, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"}
    assert re.search(r"^book:.*\n\t\$\(PY\) -m shared\.book\s*$", makefile, re.M)
    assert re.search(r"^test:.*\n(\t.*\n)*\t\$\(TEST_ENV\) \$\(PY\) -m pytest \$\(NBVAL\)", makefile, re.M)
    # shared.book really hands KERNEL_ENV to the kernels it starts (they inherit its environment).
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    assert book.main(["no-notebook-has-this-name"]) == 1
    assert {k: os.environ.get(k) for k in book.KERNEL_ENV} == book.KERNEL_ENV


# ---------------------------------------------------------------- 2. the remote variants run


SWITCHED = _switch_notebooks()


def test_the_notebooks_that_offer_remote_data_are_found():
    assert len(SWITCHED) >= 8
    for path in SWITCHED:
        nb = nbformat.read(path, as_version=4)
        first = next(c for c in nb.cells if c.cell_type == "code")
        assert SWITCH in first.source.splitlines(), f"{path.name}: the switch belongs in the first code cell"
        assert any(TAG in c.metadata.get("tags", ()) for c in nb.cells), f"{path.name}: no cell is tagged {TAG}"


@pytest.mark.parametrize("path", SWITCHED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_runs_with_the_remote_sources(path, tmp_path, monkeypatch):
    full = os.environ.get("LLM_BOOK_REMOTE_FULL") == "1"
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"
             and (full or TAG in c.metadata.get("tags", ()) or c.source.startswith("#| export"))]
    for cell in cells:
        cell.outputs = []
        if SWITCH in cell.source.splitlines():
            cell.source = cell.source.replace(SWITCH, "REMOTE = True")
    nb.cells = [nbformat.v4.new_code_cell(FAKES)] + cells + [nbformat.v4.new_code_cell("print(sorted(_used))")]
    for env, value in {**book.KERNEL_ENV, registry.OFFLINE_ENV: "1", "HF_HUB_OFFLINE": "1",
                       "HF_DATASETS_OFFLINE": "1", "MPLBACKEND": "Agg"}.items():
        monkeypatch.setenv(env, value)
    monkeypatch.setenv("PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    used = ast.literal_eval(nb.cells[-1].outputs[0]["text"])
    assert used, "with REMOTE = True the notebook read no remote source"      # the switch really switches
