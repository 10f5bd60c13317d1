"""Every Mermaid diagram in the notebooks parses with Mermaid's own parser (JupyterLab renders them with it).

The parser runs under Node.js (tests/diagrams, pinned in its package-lock.json; `make setup` installs it when npm is
on the machine). Without Node.js the check is skipped with the reason printed: the book itself does not need Node.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKER = ROOT / "tests" / "diagrams"
NOTEBOOKS = sorted(ROOT.glob("ch0*/*.ipynb"))


def run_checker(paths):
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: the Mermaid check needs it (the book does not)")
    if not (CHECKER / "node_modules" / "mermaid").is_dir():
        pytest.skip("Mermaid's parser is not installed: `make setup` installs it when npm is on the machine")
    return subprocess.run(["node", str(CHECKER / "check_mermaid.mjs"), *map(str, paths)], capture_output=True,
                          text=True, encoding="utf-8", timeout=300)


def test_every_diagram_parses():
    result = run_checker(NOTEBOOKS)
    assert result.returncode == 0, result.stdout + result.stderr
    diagrams = int(result.stdout.strip().splitlines()[-1].split()[0])
    assert diagrams >= 20, result.stdout          # the chapters' diagrams are there, not just parseable


def test_a_broken_diagram_is_caught(tmp_path):
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("```mermaid\nflowchart LR\n  A[f (x)] --> B\n```")])
    path = tmp_path / "broken.ipynb"
    nbformat.write(nb, path)
    result = run_checker([path])
    assert result.returncode == 1 and "FAIL" in result.stdout and "1 diagrams, 1 failed" in result.stdout
