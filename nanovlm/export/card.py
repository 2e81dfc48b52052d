"""Model cards: README.md (YAML front matter + markdown) from a checkpoint and its MLflow run.

    record = run_record(checkpoint, tracking_uri)        # meta.json's run id -> params, metrics, tags
    text = model_card(checkpoint, record, repo_id="me/tiny", fmt="smolvlm")

Everything printed is measured (the run's metrics and tags, parameter counts from the checkpoint's
weights); a missing value is shown as "not recorded", never estimated. Used by experiments.publish.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

NOT_RECORDED = "not recorded"
# Hub ids of the real backbones (for base_model); tiny stand-ins and local paths have none.
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass
class RunRecord:
    """What the card needs from the MLflow run that trained the checkpoint (empty without one)."""

    run_id: str | None = None
    tracking_uri: str | None = None
    status: str | None = None
    start_time: int | None = None  # ms since the epoch
    end_time: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def run_record(checkpoint: str | Path, tracking_uri: str) -> RunRecord:
    """The checkpoint's run (meta.json `run_id`) read with MlflowClient; an empty record if it has none."""
    meta_file = Path(checkpoint) / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    run_id = meta.get("run_id")
    if not run_id:
        return RunRecord(tracking_uri=tracking_uri)
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    return RunRecord(run_id, tracking_uri, run.info.status, run.info.start_time, run.info.end_time,
                     dict(run.data.params), dict(run.data.metrics), dict(run.data.tags))


def parameter_counts(checkpoint: str | Path) -> dict[str, int]:
    """Parameters per part, counted from the safetensors headers (shared tensors stored once)."""
    from safetensors import safe_open

    counts: dict[str, int] = {}
    files = sorted(Path(checkpoint).glob("*.safetensors"))
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                numel = 1
                for d in f.get_slice(name).get_shape():
                    numel *= d
                part = _part(name)
                counts[part] = counts.get(part, 0) + numel
    counts["total"] = sum(counts.values())
    return counts


def _part(name: str) -> str:
    if name.startswith(("vision.", "model.vision_model.")):
        return "vision"
    if name.startswith(("projector.", "model.connector.")):
        return "projector"
    return "language"


def _base_models(record: RunRecord, stored: dict[str, Any]) -> list[str]:
    sources = stored.get("sources", {})
    candidates = [record.tags.get("vision_encoder"), record.tags.get("language_model"),
                  sources.get("vision"), sources.get("language")]
    out: list[str] = []
    for c in candidates:
        if c and HUB_ID.match(c) and not Path(c).exists() and c not in out:
            out.append(c)
    return out


def _fmt_number(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def eval_rows(metrics: dict[str, float]) -> list[tuple[str, str, str, str]]:
    """(task, score, value, stderr) for every eval/<task>/<score>, stderr from <score>_stderr (or _stderr_clt)."""
    rows = []
    for name in sorted(metrics):
        parts = name.split("/")
        if len(parts) != 3 or parts[0] != "eval" or "_stderr" in parts[2]:
            continue
        _, task, score = parts
        err = metrics.get(f"{name}_stderr", metrics.get(f"{name}_stderr_clt"))
        rows.append((task, score, _fmt_number(metrics[name]), "" if err is None else _fmt_number(err)))
    return rows


def reproduce_command(record: RunRecord, preset_defaults: dict[str, str] | None = None) -> str:
    """The command line that trains this configuration again: the preset plus every param that differs
    from `preset_defaults` (the preset's flattened config; without it every recorded value is spelled out)."""
    params = record.params
    preset = params.get("preset") or record.tags.get("preset")
    if not preset:
        return NOT_RECORDED
    flags = []
    defaults = preset_defaults or {}
    skip = {"preset", "output_dir", "experiment"}
    for key, value in sorted(params.items()):
        if key in skip or "." not in key and key != "run_name":
            continue
        if defaults.get(key) == value:
            continue
        flags.append(f"--set {key}={value}" if "." in key else f"--{key} {value}")
    return " ".join(["python -m experiments.run", preset, *flags])


def _duration(record: RunRecord) -> str:
    if not (record.start_time and record.end_time):
        return NOT_RECORDED
    seconds = (record.end_time - record.start_time) / 1000
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds:.0f} s"


def usage_snippet(repo_id: str, fmt: str | None, image_tokens: int) -> str:
    setup = {"smolvlm": ("# pip install transformers num2words torchvision   (SmolVLMProcessor needs both, as for any "
                         "SmolVLM)", "", ""),
             "remote": ("# pip install transformers pillow   (the model's code comes with the repository)", "",
                        ", trust_remote_code=True")}
    install, extra_import, kwargs = setup.get(fmt or "", (
        "# pip install nanovlm-lab (this project): importing nanovlm registers its transformers classes",
        "import nanovlm  # noqa: F401\n", ""))
    return f"""```python
{install}
{extra_import}from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

processor = AutoProcessor.from_pretrained("{repo_id}"{kwargs})
model = AutoModelForImageTextToText.from_pretrained("{repo_id}"{kwargs})
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What colour is the shape?"}}]}}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
inputs = processor(text=[prompt], images=[[Image.open("image.png")]], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=32)
print(processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0])
```
Put the image first in the first user message: the model was trained with its {image_tokens} image tokens
in front of the question."""


def model_card(checkpoint: str | Path, record: RunRecord, repo_id: str, fmt: str | None = None,
               license: str = "apache-2.0", harness: dict[str, str] | None = None,
               preset_defaults: dict[str, str] | None = None) -> str:
    """README.md text for the repository `repo_id` holding `checkpoint` (or its export in format `fmt`)."""
    checkpoint = Path(checkpoint)
    stored = _nanovlm_config(checkpoint)
    counts = parameter_counts(checkpoint)
    p, m, t = record.params, record.metrics, record.tags
    model_cfg = stored.get("model", {})
    export_info = _read(checkpoint / "nanovlm_export.json")
    image_tokens = export_info.get("image_tokens") or model_cfg.get("image_tokens") or p.get("model.image_tokens")
    front = ["---", f"license: {license}", "library_name: transformers" if fmt else "library_name: nanovlm-lab",
             "pipeline_tag: image-text-to-text"]
    bases = _base_models(record, stored)
    if bases:
        front += ["base_model:", *[f"- {b}" for b in bases]]
    front += ["tags:", "- nanovlm", "- vision-language-model"] + ([f"- {fmt}"] if fmt else [])
    if t.get("dataset") and HUB_ID.match(t["dataset"]):
        front += ["datasets:", f"- {t['dataset']}"]
    front.append("---")

    vision = t.get("vision_encoder") or stored.get("sources", {}).get("vision", NOT_RECORDED)
    language = t.get("language_model") or stored.get("sources", {}).get("language", NOT_RECORDED)
    lines = [f"# {repo_id.split('/')[-1]}", "",
             f"A small vision-language model trained with nanovlm-lab: {vision} (vision) -> pixel shuffle + linear "
             f"-> {language} (language)." + (f" Exported to transformers' `{fmt}` classes; loads with "
                                               f"transformers alone." if fmt else ""), "",
             "## Architecture", "",
             "| part | parameters |", "|---|---|"]
    lines += [f"| {k} | {v:,} |" for k, v in counts.items()]
    lines += ["", f"Image tokens per image: {image_tokens or NOT_RECORDED}; preset: `{p.get('preset') or t.get('preset') or NOT_RECORDED}`.", ""]
    if export_info:
        lines += [f"Export check: largest |logit difference| to the training checkpoint "
                  f"{export_info.get('max_abs_logit_difference_fp32', NOT_RECORDED):.3g} (float32), stored as "
                  f"{export_info.get('dtype', 'float32')}.", ""]

    steps = p.get("train.max_steps", NOT_RECORDED)
    lines += ["## Training", "",
              f"- data: `{t.get('dataset', p.get('data.dataset', NOT_RECORDED))}` "
              f"(fingerprint `{t.get('dataset_fingerprint', NOT_RECORDED)}`), {p.get('data.train_samples', NOT_RECORDED)} "
              f"training samples, {p.get('data.val_samples', NOT_RECORDED)} held out",
              f"- steps: {steps}, batch size {p.get('train.batch_size', NOT_RECORDED)} "
              f"(x {p.get('train.gradient_accumulation_steps', '1')} accumulation), learning rates projector "
              f"{p.get('train.lr_projector', p.get('train.lr_mp', NOT_RECORDED))} "  # lr_mp: runs before the rename
              f"/ backbones {p.get('train.lr_backbones', NOT_RECORDED)}",
              f"- final train loss {_metric(m, 'train/loss')}, validation loss {_metric(m, 'val/loss')} "
              f"(best {_metric(m, 'val/best_loss')})",
              f"- hardware: {t.get('device', NOT_RECORDED)}; wall time {_duration(record)}; "
              f"throughput {_metric(m, 'train/samples_per_s')} samples/s",
              f"- software: torch {t.get('torch', NOT_RECORDED)}, transformers {t.get('transformers', NOT_RECORDED)}, "
              f"python {t.get('python', NOT_RECORDED)}; nanovlm-lab commit `{t.get('git_sha', NOT_RECORDED)}`",
              f"- MLflow run: `{record.run_id or NOT_RECORDED}` (status {record.status or NOT_RECORDED})", ""]

    rows = eval_rows(m)
    lines += ["## Evaluation", ""]
    if rows:
        harness_line = (f"Harness: {harness.get('name')} {harness.get('version')} (scoring rules: "
                        f"{harness.get('rules', NOT_RECORDED)})." if harness else f"Harness: {NOT_RECORDED}.")
        lines += [harness_line, "", "| task | score | value | standard error |", "|---|---|---|---|"]
        lines += [f"| {task} | {score} | {value} | {err or '-'} |" for task, score, value, err in rows]
        lines += ["", "`synthetic_blind` is the same questions without the image (a control)." if any(
            r[0] == "synthetic_blind" for r in rows) else "", ""]
    else:
        lines += ["No evaluation scores recorded.", ""]

    lines += ["## Reproduce", "", "```bash", reproduce_command(record, preset_defaults), "```", "",
              "## Use", "", usage_snippet(repo_id, fmt, int(image_tokens) if image_tokens else 0), "",
              f"<sub>Card generated {datetime.now(timezone.utc):%Y-%m-%d} by `python -m experiments.publish`.</sub>", ""]
    return "\n".join(front) + "\n\n" + "\n".join(lines)


def _metric(metrics: dict[str, float], name: str) -> str:
    return _fmt_number(metrics[name]) if name in metrics else NOT_RECORDED


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _nanovlm_config(checkpoint: Path) -> dict[str, Any]:
    """The nanovlm config (a checkpoint's config.json); an export keeps its source's in nanovlm_export.json."""
    stored = _read(checkpoint / "config.json")
    if stored.get("model_type") == "nanovlm":
        return stored
    source = _read(checkpoint / "nanovlm_export.json").get("source")
    return _read(Path(source) / "config.json") if source else {}
