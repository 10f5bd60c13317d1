"""The book's library. Most modules are generated from the notebooks' `#| export` cells (their first line says
so, and names the notebook to edit); the hand-written plumbing is export.py, book.py, registry.py, device.py and
plotting.py."""
