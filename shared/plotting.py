"""The book's plotting style (hand-written plumbing, not generated)."""
from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt


def use_book_style() -> None:
    """One look for every figure: readable sizes, a light grid, no top/right spines, fixed DPI."""
    matplotlib.rcParams.update({
        "figure.figsize": (7.0, 3.6), "figure.dpi": 90, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False, "font.size": 10, "legend.frameon": False,
        "svg.hashsalt": "llm-book",
    })
    plt.rcParams["axes.prop_cycle"] = matplotlib.cycler(color=plt.get_cmap("tab10").colors)
