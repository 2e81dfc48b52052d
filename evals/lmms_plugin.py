"""Registration of this project's model with lmms-eval (the optional `eval` extra).

    [project.entry-points."lmms_eval.models"]
    nanovlm_lab = "evals.lmms_plugin:manifest"       # lmms-eval finds the model by this name

    lmms-eval --model nanovlm_lab --model_args pretrained=CKPT --tasks mmstar
    register()      # the same without the entry point (an install that predates it); idempotent

The name is `nanovlm_lab`, not `nanovlm`: lmms-eval 0.7.3 ships its own `nanovlm` (lmms-lab's
SigLIP2 + Qwen3 model, a different architecture and checkpoint format). Importing this module
does not import lmms-eval; `manifest()` and `register()` do.
"""

from __future__ import annotations

from typing import Any

MODEL_NAME = "nanovlm_lab"
CLASS_PATH = "evals.lmms_model.NanoVLMLab"


def manifest() -> Any:
    """The entry point's payload: lmms-eval's ModelManifest for our model class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)


def register() -> None:
    """Make `nanovlm_lab` known to lmms-eval in this process, entry point or not."""
    from lmms_eval import models

    if MODEL_NAME not in models.MODEL_REGISTRY_V2.list_model_names():
        models.MODEL_REGISTRY_V2.register_manifest(manifest())
    models.AVAILABLE_MODELS.setdefault(MODEL_NAME, CLASS_PATH.rsplit(".", 1)[-1])
