"""The book's library. Most modules are generated from the notebooks' `#| export` cells (their first line says
so, and names the notebook to edit); the hand-written plumbing is export.py, book.py, registry.py and catalogue.py (the data sources), device.py,
plotting.py, files.py and parallel/runtime.py."""
