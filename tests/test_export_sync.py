"""The library in shared/ must be exactly what the notebooks export."""
import json

import pytest

from shared import export


def test_shared_is_in_sync_with_notebooks(tmp_path):
    # Export into a temporary folder and compare file by file with what is committed.
    written = {p.relative_to(tmp_path).as_posix(): p.read_text(encoding="utf-8") for p in export.export(lib=tmp_path)}
    committed = {export.module_path(tmp_path, name).relative_to(tmp_path).as_posix(): text
                 for name, text in export.generated_modules().items()}
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
    assert export.generated_modules(lib).keys() == {"toy", "other"}
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


def test_dotted_module_goes_into_a_subpackage(tmp_path):
    chapter = tmp_path / "ch09_toy"
    chapter.mkdir()
    (chapter / "01_a.ipynb").write_text(json.dumps(_notebook(
        ["#| default_exp family.member", "#| export\nZ = 3", "#| export family.other\nW = 4"])), encoding="utf-8")
    lib = tmp_path / "shared"
    export.export(root=tmp_path, lib=lib)
    assert "Z = 3" in (lib / "family" / "member.py").read_text(encoding="utf-8")
    assert "W = 4" in (lib / "family" / "other.py").read_text(encoding="utf-8")
    assert export.generated_modules(lib).keys() == {"family.member", "family.other"}
    assert any("__init__.py is missing" in p for p in export.drift(root=tmp_path))
    (lib / "family" / "__init__.py").write_text('"""A family of modules."""\n', encoding="utf-8")
    assert export.drift(root=tmp_path) == []
