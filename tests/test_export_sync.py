"""The library in shared/ must be exactly what the notebooks export."""
import json

import pytest

from shared import export


def test_shared_is_in_sync_with_notebooks(tmp_path):
    # Export into a temporary folder and compare file by file with what is committed.
    written = {p.name: p.read_text(encoding="utf-8") for p in export.export(lib=tmp_path)}
    committed = {f"{name}.py": text for name, text in export.generated_modules().items()}
    assert written.keys() == committed.keys(), "run `make export`: generated modules differ from the notebooks'"
    for name in written:
        assert written[name] == committed[name], f"shared/{name} drifted from its notebook: run `make export`"
    assert export.drift() == []


def test_every_generated_module_names_its_notebook():
    for name, text in export.generated_modules().items():
        first = text.splitlines()[0]
        assert "ch0" in first and ".ipynb" in first, f"shared/{name}.py does not say which notebook to edit"


def _notebook(cells):
    return {"cells": [{"cell_type": "code", "source": src, "metadata": {}, "outputs": [], "execution_count": None}
                      for src in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def test_exporter_on_a_toy_book(tmp_path):
    chapter = tmp_path / "ch09_toy"
    chapter.mkdir()
    (chapter / "01_a.ipynb").write_text(json.dumps(_notebook(
        ["#| default_exp toy\nimport math", "#| export\ndef f(x):\n    return x + 1", "print(f(1))",
         "#| export other\nY = 2"])), encoding="utf-8")
    (chapter / "02_b.ipynb").write_text(json.dumps(_notebook(
        ["#| default_exp toy", "#| export\ndef g(x):\n    return 2 * x"])), encoding="utf-8")
    lib = tmp_path / "shared"
    export.export(root=tmp_path, lib=lib)
    toy = (lib / "toy.py").read_text(encoding="utf-8")
    assert toy.startswith(export.GENERATED_MARK) and "ch09_toy/01_a.ipynb, ch09_toy/02_b.ipynb" in toy
    assert toy.index("def f") < toy.index("def g") and "print(f(1))" not in toy
    assert "Y = 2" in (lib / "other.py").read_text(encoding="utf-8")
    namespace = {}
    exec(toy, namespace)
    assert namespace["g"](namespace["f"](1)) == 4
    # Editing the notebook without exporting is drift; a stale generated module is drift too.
    (chapter / "02_b.ipynb").write_text(json.dumps(_notebook(["#| default_exp toy"])), encoding="utf-8")
    assert any("toy.py" in p for p in export.drift(root=tmp_path))


def test_export_cell_without_module_is_an_error(tmp_path):
    chapter = tmp_path / "ch09_toy"
    chapter.mkdir()
    (chapter / "01_a.ipynb").write_text(json.dumps(_notebook(["#| export\nX = 1"])), encoding="utf-8")
    with pytest.raises(SystemExit, match="default_exp"):
        export.collect(root=tmp_path)
