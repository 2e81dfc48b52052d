"""Making checkpoints usable outside this project: exports to other layouts, model cards.

    from nanovlm.export import export_checkpoint, check_exportable
    check_exportable("runs/x/checkpoints/best", "smolvlm")      # before any work: raises UnsupportedExport
    export_checkpoint("runs/x/checkpoints/best", "out/", "remote")

Formats (`python -m experiments.export CKPT OUT --format F`):
- `smolvlm`: transformers' own SmolVLMForConditionalGeneration (SigLIP vision only): no project, no remote code.
- `remote`: our transformers classes copied into the checkpoint (`trust_remote_code=True`): every combination.
- `nanovlm`: re-saved in today's layout (converts checkpoints written before the Auto classes existed).
A checkpoint itself loads through the Auto classes once `nanovlm` is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from nanovlm.export import remote, smolvlm
from nanovlm.export.smolvlm import REFUSED_FORMATS, UnsupportedExport

EXPORTERS: dict[str, Callable[..., Path]] = {"smolvlm": smolvlm.export_checkpoint, "remote": remote.export_remote,
                                             "nanovlm": remote.convert}
FORMATS = tuple(EXPORTERS)


def check_exportable(checkpoint: str | Path, fmt: str) -> None:
    """Refuse, from the config alone, what cannot be exported to `fmt` (UnsupportedExport)."""
    if fmt in REFUSED_FORMATS:
        raise UnsupportedExport(f"--format {fmt} is refused: {REFUSED_FORMATS[fmt]}")
    if fmt not in EXPORTERS:
        raise UnsupportedExport(f"unknown format {fmt!r}; use one of: {', '.join(FORMATS)}")
    if fmt == "smolvlm":
        smolvlm.check_exportable(checkpoint, fmt)
    elif not (Path(checkpoint) / "config.json").is_file():
        raise UnsupportedExport(f"{checkpoint} is not a checkpoint directory (no config.json)")


def export_checkpoint(checkpoint: str | Path, out: str | Path, fmt: str, atol: float | None = None,
                      dtype: str = "float32") -> Path:
    """Write the `fmt` export of `checkpoint` to `out`, atomically, after the format's own checks."""
    check_exportable(checkpoint, fmt)
    kwargs = {"dtype": dtype} if atol is None else {"dtype": dtype, "atol": atol}
    return EXPORTERS[fmt](checkpoint, out, **kwargs)


__all__ = ["FORMATS", "UnsupportedExport", "check_exportable", "export_checkpoint"]
