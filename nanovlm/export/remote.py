"""Export any nanovlm checkpoint with its modelling code inside (`trust_remote_code=True`), or convert an older one.

    export_remote(ckpt, out)      # + configuration/modeling/processing_nanovlm.py and auto_map: no project needed
    convert(ckpt, out)            # re-saved in today's layout (Auto classes after `import nanovlm`)

    AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)
    AutoProcessor.from_pretrained(out, trust_remote_code=True)

Every encoder x LM combination exports this way (DINOv2 / DINOv3 included, which have no standard
transformers VLM class): the checkpoint is the project's own transformers checkpoint plus the files
of `nanovlm.model` that define its classes (found through their relative imports, as transformers
does) and an `auto_map` in each config file. The export is checked before it is kept: the copied
code, loaded the way a user would load it, must give the checkpoint's logits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from nanovlm.export.smolvlm import UnsupportedExport, probe_inputs

CODE = {"configuration_nanovlm": ("AutoConfig", "NanoVLMConfig"),
        "modeling_nanovlm": ("AutoModelForImageTextToText", "NanoVLMForConditionalGeneration"),
        "processing_nanovlm": ("AutoProcessor", "NanoVLMProcessor")}
AUTO_MAP = {"config.json": ["AutoConfig", "AutoModelForImageTextToText"],
            "preprocessor_config.json": ["AutoImageProcessor", "AutoProcessor"],
            "processor_config.json": ["AutoProcessor", "AutoImageProcessor"]}


def auto_map() -> dict[str, str]:
    entries = {auto: f"{module}.{cls}" for module, (auto, cls) in CODE.items()}
    entries["AutoImageProcessor"] = "processing_nanovlm.NanoVLMImageProcessor"
    return entries


def code_files() -> list[Path]:
    """The model's source files and every file they import relatively (what transformers will fetch)."""
    from transformers.dynamic_module_utils import get_relative_import_files

    import nanovlm.model as package

    root = Path(package.__file__).parent
    files = {root / f"{module}.py" for module in CODE}
    for module in CODE:
        files.update(Path(f) for f in get_relative_import_files(root / f"{module}.py"))
    return sorted(files)


def _add_code(directory: Path) -> None:
    """The class files, and an auto_map in each config file pointing at them."""
    for file in code_files():
        shutil.copy(file, directory / file.name)
    entries = auto_map()
    for name, autos in AUTO_MAP.items():
        path = directory / name
        data = json.loads(path.read_text())
        data["auto_map"] = {auto: entries[auto] for auto in autos}
        if "image_processor" in data:  # transformers 5 nests the image processor's config in the processor's
            data["image_processor"]["auto_map"] = {"AutoImageProcessor": entries["AutoImageProcessor"]}
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _load_model(checkpoint: str | Path) -> Any:
    from nanovlm.model.vlm import IncompatibleCheckpoint, VisionLanguageModel

    try:
        return VisionLanguageModel.from_pretrained(checkpoint).eval()
    except IncompatibleCheckpoint as err:
        raise UnsupportedExport(str(err)) from None


# Run in a fresh interpreter: once `nanovlm` is imported, transformers prefers its registered classes to
# the checkpoint's code, so only a process without the project tests what a user without it gets.
_CHILD = """
import sys
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText
directory, inputs, result = sys.argv[1:4]
model = AutoModelForImageTextToText.from_pretrained(directory, trust_remote_code=True, dtype=torch.float32).eval()
x = load_file(inputs)
with torch.no_grad():
    logits = model(input_ids=x["input_ids"], attention_mask=x["attention_mask"], pixel_values=x["pixel_values"]).logits
assert not any(name == "nanovlm" or name.startswith("nanovlm.") for name in sys.modules), "the project was imported"
save_file({"logits": logits.contiguous()}, result)
"""


def remote_logit_difference(model: Any, directory: Path, seed: int = 0) -> float:
    """Largest |logit difference| between our model and the export run by its own copied code, in a
    process that never imports the project."""
    import subprocess
    import sys
    import tempfile

    from safetensors.torch import load_file, save_file

    ids, mask, pixels = probe_inputs(model, seed)
    with tempfile.TemporaryDirectory() as work:
        inputs, result = Path(work) / "inputs.safetensors", Path(work) / "logits.safetensors"
        save_file({"input_ids": ids, "attention_mask": mask, "pixel_values": pixels}, str(inputs))
        done = subprocess.run([sys.executable, "-c", _CHILD, str(directory), str(inputs), str(result)],
                              capture_output=True, text=True, cwd=work)
        if done.returncode != 0:
            raise UnsupportedExport(f"the exported checkpoint does not load with trust_remote_code=True: "
                                    f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}")
        theirs = load_file(str(result))["logits"]
    with torch.no_grad():
        ours = model.logits(ids, mask, pixels)
    return float((ours - theirs).abs().max())


def export_remote(checkpoint: str | Path, out: str | Path, atol: float = 1e-4, dtype: str = "float32") -> Path:
    """Write `checkpoint` with its modelling code to `out` (atomically), after checking the copied code's logits."""
    from nanovlm.files import atomic_directory, write_json

    model, meta = _load_model(checkpoint), _meta(checkpoint)
    with atomic_directory(out) as tmp:
        model.write_files(tmp, meta)  # fp32 first: the check compares like with like
        _add_code(tmp)
        diff = remote_logit_difference(model, tmp)
        if not diff <= atol:  # also catches NaN
            raise UnsupportedExport(f"the remote-code model's logits differ from the checkpoint's by {diff:.3g} "
                                    f"(> {atol}); not written")
        if dtype != "float32":
            model.to(getattr(torch, dtype)).write_files(tmp, meta)
            _add_code(tmp)  # config.json was written again
        write_json(tmp / "nanovlm_export.json", {"format": "remote", "source": str(Path(checkpoint).resolve()),
                                                 "max_abs_logit_difference_fp32": diff, "dtype": dtype})
    return Path(out)


def convert(checkpoint: str | Path, out: str | Path, atol: float = 1e-4, dtype: str = "float32") -> Path:
    """Re-save a checkpoint (any earlier layout this project wrote) in today's layout (`atol`: unused, no
    other code runs it)."""
    model = _load_model(checkpoint)
    return model.to(getattr(torch, dtype)).save_pretrained(out, meta=_meta(checkpoint))


def _meta(checkpoint: str | Path) -> dict[str, Any] | None:
    """meta.json (the run it came from, for the model card), carried over when present."""
    path = Path(checkpoint) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None
