"""Making checkpoints usable outside this project: export to transformers' SmolVLM classes, model cards.

    from nanovlm.export import export_checkpoint, check_exportable
    check_exportable("runs/x/checkpoints/best", "smolvlm")      # config only: raises UnsupportedExport
    export_checkpoint("runs/x/checkpoints/best", "out/", "smolvlm")

The command lines are `python -m experiments.export` and `python -m experiments.publish`.
"""

from nanovlm.export.smolvlm import (FORMATS, UnsupportedExport, check_exportable, export_checkpoint,
                                    ExportPlan)

__all__ = ["FORMATS", "UnsupportedExport", "check_exportable", "export_checkpoint", "ExportPlan"]
