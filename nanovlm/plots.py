"""Headless matplotlib, set up once for every plot the project draws (runs, sweeps, reports).

    plt = pyplot()                       # the Agg backend: workers, CI and servers have no display
    fig, ax = plt.subplots(); ...; save(fig, path)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (imported lazily: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write a figure (tight layout) and free it: figures left open pile up over a sweep."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return Path(path)
