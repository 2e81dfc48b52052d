"""Configuration: frozen dataclasses for the model, data, training and the whole experiment.

Each field carries its help text in `metadata["help"]`; the command line (`experiments/run.py`) is
generated from these fields, so a field is declared once, here. Change a config with `override`:

    cfg = override(cfg, {"train.lr_projector": 1e-3, "model.language_model": "gemma"})
    cfg = override(cfg, parse_assignments(["train.seed=7"]))     # the `--set` flag's parser
    write_config(run_dir / "config.json", cfg); read_config(run_dir / "config.json") == cfg

Field names are unique across sections, so the short form `override(cfg, {"lr_projector": 1e-3})` works
too. ALIASES keeps the old names (the upstream nanoVLM flags, e.g. `lr_mp`) working everywhere a
name is read: flags, `--set`, sweep parameters and saved configs.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from nanovlm.files import read_json, write_json


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass(frozen=True)
class ModelConfig:
    vision_encoder: str = _f("siglip", "vision encoder: a registry key (see --list), hub id or local path",
                              nonempty=True)
    dinov3_size: str = _f("vits16plus", "DINOv3 size when vision_encoder=dinov3: vits16, vits16plus, vitb16, vitl16",
                            nonempty=True)
    language_model: str = _f("smollm", "language model: a registry key (see --list), hub id or local path",
                              nonempty=True)
    image_size: int = _f(0, "input resolution in pixels; 0 = the encoder's own (from its preprocessor config)",
                         min=0)
    pixel_shuffle_factor: int = _f(0, "projector pixel-shuffle factor; 0 = derived from image_tokens", min=0)
    image_tokens: int = _f(64, "image tokens per image after the projector (used when pixel_shuffle_factor=0)",
                           min=1)
    image_token: str = _f("<|image|>", "placeholder token added to the LM vocabulary, repeated image_tokens times",
                          nonempty=True)
    random_init: bool = _f(False, "random weights at real size from the bundled hub configs: no download")
    tiny: bool = _f(False, "use the tiny offline stand-in of each backbone family (built locally on first use)")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = _f("synthetic", "'synthetic', a hub id (the_cauldron/FineVision schema) or a local path",
                       nonempty=True)
    subsets: str = _f("", "comma-separated dataset subsets (hub configs), '' = the default one")
    streaming: bool = _f(False, "stream a hub dataset instead of downloading it")
    train_samples: int = _f(2000, "synthetic: number of training examples; others: cap (0 = all)", min=0)
    val_samples: int = _f(200, "held-out validation examples", min=1)
    max_length: int = _f(512, "max tokens per sample and per packed row (longer samples are skipped and counted)",
                        min=16)
    num_workers: int = _f(-1, "DataLoader worker processes decoding images; -1 = 4 on CUDA, 0 on CPU",
                         min=-1)
    max_skip_fraction: float = _f(0.1, "stop with an error when more than this fraction of samples is unreadable",
                                  min=0, max=1)


@dataclass(frozen=True)
class TrainConfig:
    lr_projector: float = _f(0.00512, "learning rate of the modality projector (trained from scratch, so high)", min=0)
    lr_backbones: float = _f(5e-05, "learning rate of both backbones; 0 freezes them", min=0)
    lr_vision: float = _f(-1.0, "vision encoder learning rate; -1 = lr_backbones, 0 = frozen", min=0,
                         special_values=(-1,), special="or -1 = lr_backbones")
    lr_language: float = _f(-1.0, "language model learning rate; -1 = lr_backbones, 0 = frozen", min=0,
                           special_values=(-1,), special="or -1 = lr_backbones")
    freeze_vision_encoder: bool = _f(False, "freeze the vision encoder (Locked-image Text tuning)")
    batch_size: int = _f(2, "rows per device per micro-step (a row is one sample, or several when packing)", min=1)
    packing: bool = _f(True, "pack samples first-fit into rows of max_length tokens (attention stays per sample)")
    gradient_accumulation_steps: int = _f(32, "micro-steps per optimizer step", min=1)
    max_steps: int = _f(5000, "optimizer steps", min=1)
    warmup_ratio: float = _f(0.03, "fraction of max_steps of linear warmup before the cosine decay", min=0, max=1)
    weight_decay: float = _f(0.0, "AdamW weight decay", min=0)
    max_grad_norm: float = _f(1.0, "gradient clipping norm; 0 disables clipping", min=0)
    validation_steps: int = _f(500, "compute the validation loss every N steps", min=1)
    best_checkpoint_steps: int = _f(500, "every N steps, validate and keep the checkpoint with the best "
                                         "validation loss", min=1)
    save_checkpoint_steps: int = _f(1000, "write a resumable checkpoint every N steps", min=1)
    keep_checkpoints: int = _f(2, "resumable checkpoints to keep (plus the best)", min=1)
    compile: str = _f("auto", "torch.compile each transformer block: auto (on CUDA), true or false",
                      choices=("auto", "true", "false"))
    cuda_graphs: bool = _f(False, "replay each micro-step's forward + backward as a CUDA graph (one per input shape): "
                                  "no kernel launches from Python; CUDA and one process only")
    fused_kernels: str = _f("auto", "Liger-Kernel's RMSNorm / SwiGLU or GeGLU / RoPE in the LM on CUDA, when "
                                    "installed: auto (only in blocks that are not compiled: compiled blocks fuse "
                                    "these ops themselves), true (also in compiled blocks) or false (never)",
                            choices=("auto", "true", "false"))
    attention: str = _f("auto", "attention kernel of the LM while training: auto (flex_attention on CUDA: packed rows "
                                "without a T x T mask; sdpa on CPU), sdpa, flex_attention or eager",
                        choices=("auto", "sdpa", "flex_attention", "eager"))
    loss_kernel: str = _f("auto", "answer-token loss without (tokens x vocab) logits: auto (compiled when the step is "
                                  "compiled; else liger on CUDA when installed; else chunked), compiled (chunked, "
                                  "each chunk one fused kernel, no host sync), liger (Liger-Kernel's, one host sync "
                                  "per micro-step), chunked (eager PyTorch) or plain (full logits)",
                          choices=("auto", "compiled", "liger", "chunked", "plain"))
    eval_tasks: str = _f("", "benchmarks evaluated while training, comma-separated: synthetic, mmstar, textvqa, ...")
    eval_steps: int = _f(0, "evaluate eval_tasks every N steps (and always at the last step); 0 = last step only")
    eval_limit: int = _f(0, "evaluate the first N items of each task (the same ones every time); 0 = all")
    eval_data_dir: str = _f("", "folder of <task>.parquet files for eval_tasks (python -m evals.fixtures makes "
                                "offline ones); '' = each task's hub dataset")
    eval_async: bool = _f(False, "score the benchmarks of a saved checkpoint in another process (on another GPU at "
                                 "once, else after training) instead of pausing training")
    best_metric: str = _f("val/loss", "metric that picks the best checkpoint: val/loss (lower is better) or an "
                                      "eval/<task>/<score> of eval_tasks (higher is better)")
    log_interval: int = _f(10, "read the step's numbers back from the device and log them every N steps",
                         min=1)
    seed: int = _f(0, "random seed (weights of new parts, data order)", min=0)
    device: str = _f("auto", "auto, cpu or cuda")


@dataclass(frozen=True)
class ExperimentConfig:
    preset: str = _f("default", "name of the preset this config came from")
    run_name: str = _f("", "MLflow run name and output folder name; '' = derived from preset and overrides")
    experiment: str = _f("nanovlm", "MLflow experiment name", nonempty=True)
    output_dir: str = _f("runs", "where run folders (checkpoints, results) are written", nonempty=True)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = ("model", "data", "train")

# Old field name -> its field's name now. Upstream nanoVLM users type these, and saved configs
# (checkpoints' config.json, trainer_state.json) hold them.
ALIASES: dict[str, str] = {
    "lr_mp": "lr_projector",
    "eval_interval": "best_checkpoint_steps",  # it never ran benchmarks (eval_steps does)
    "dinov3_model": "dinov3_size",
    "grad_accum": "gradient_accumulation_steps",
    "max_training_steps": "max_steps",
}


class ConfigError(ValueError):
    """A bad configuration value or name; the message says how to fix it."""


def _leaf_fields(cfg: ExperimentConfig) -> dict[str, tuple[str | None, dataclasses.Field]]:
    """Every settable field: dotted name -> (section or None, Field)."""
    out: dict[str, tuple[str | None, dataclasses.Field]] = {}
    for f in dataclasses.fields(cfg):
        if f.name in SECTIONS:
            for sub in dataclasses.fields(getattr(cfg, f.name)):
                out[f"{f.name}.{sub.name}"] = (f.name, sub)
        else:
            out[f.name] = (None, f)
    return out


def aliases_of(name: str) -> list[str]:
    """The old names of field `name` (short form)."""
    return [old for old, new in ALIASES.items() if new == name]


def field_index(cfg: ExperimentConfig | None = None) -> dict[str, str]:
    """Every accepted key (dotted and short, current and old) -> its dotted name."""
    cfg = cfg or ExperimentConfig()
    index: dict[str, str] = {}
    for dotted, (section, f) in _leaf_fields(cfg).items():
        for name in (f.name, *aliases_of(f.name)):
            index[name] = dotted
            index[f"{section}.{name}" if section else name] = dotted
    return index


def canonical(name: str) -> str:
    """A parameter name with an old (aliased) field name replaced by the current one; others unchanged."""
    section, dot, short = name.rpartition(".")
    return f"{section}{dot}{ALIASES.get(short, short)}"


def parse_bool(value: str, name: str) -> bool:
    """'true'/'yes'/'on'/'1' -> True, 'false'/'no'/'off'/'0' -> False (any case); else a ConfigError."""
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def parse_assignments(items: Iterable[str], flag: str = "--set", form: str = "SECTION.FIELD=VALUE") -> dict[str, str]:
    """`["train.seed=7", ...]` (the `--set` flag, repeated) -> {"train.seed": "7", ...}; values are parsed
    later, by `override`. `flag` and `form` name what the user typed, for the error."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects {form}, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _coerce(value: Any, typ: Any, name: str) -> Any:
    """Parse `value` (often a command-line string) into the field's declared type."""
    typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ, typ)
    if isinstance(value, str) and typ is not str:
        if typ is bool:
            return parse_bool(value, name)
        try:
            return typ(value)
        except ValueError:
            raise ConfigError(f"{name}: expected {typ.__name__}, got {value!r}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ in (int, float, bool, str) and not isinstance(value, typ):
        raise ConfigError(f"{name}: expected {typ.__name__}, got {value!r}")
    if typ is int and isinstance(value, bool):
        raise ConfigError(f"{name}: expected int, got {value!r}")
    return value


def suggest(name: str, valid: Iterable[str], n: int = 3, cutoff: float = 0.6) -> str:
    """'Did you mean a or b?' naming the entries of `valid` closest to a mistyped `name`; '' if none is close.

    Callers append it to their own message: f"unknown task {name!r}. {suggest(name, TASKS)}".
    """
    close = difflib.get_close_matches(name, list(valid), n=n, cutoff=cutoff)
    return f"Did you mean {' or '.join(close)}?" if close else ""


def unknown_key_error(key: str, cfg: ExperimentConfig | None = None) -> ConfigError:
    """Suggests any accepted name (an old one too: the user may know that); lists only current ones."""
    hint = suggest(key, field_index(cfg)) or f"Valid: {', '.join(sorted(_leaf_fields(cfg or ExperimentConfig())))}"
    return ConfigError(f"unknown config field {key!r}. {hint}")


def override(cfg: ExperimentConfig, changes: dict[str, Any]) -> ExperimentConfig:
    """A copy of `cfg` with `changes` applied; keys are dotted (`train.lr_projector`), short or old names."""
    index = field_index(cfg)
    leaves = _leaf_fields(cfg)
    per_section: dict[str | None, dict[str, Any]] = {}
    for key, value in changes.items():
        if key not in index:
            raise unknown_key_error(key, cfg)
        dotted = index[key]
        section, f = leaves[dotted]
        choices = f.metadata.get("choices")
        value = _coerce(str(value).lower() if choices and isinstance(value, bool) else value, f.type, dotted)
        if choices and str(value).lower() not in choices:
            raise ConfigError(f"{dotted}: expected one of {', '.join(choices)}, got {value!r}")
        per_section.setdefault(section, {})[f.name] = str(value).lower() if choices else value
    top = per_section.pop(None, {})
    for section, values in per_section.items():
        top[section] = dataclasses.replace(getattr(cfg, section), **values)
    return dataclasses.replace(cfg, **top)


def flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dataclass -> {"train.lr_projector": 0.00512, ...} (for MLflow params and diffs)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flatten(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """The one saved shape of a config: nested sections (`{"train": {"lr_projector": ...}}`); see from_dict."""
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Inverse of `to_dict`. Old field names (ALIASES) are read as their new ones; other unknown keys are
    an error (a config from another version)."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    data = {ALIASES[k] if k in ALIASES and ALIASES[k] in names and ALIASES[k] not in data else k: v
            for k, v in data.items()}
    unknown = set(data) - set(names)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)} (config from another version?)")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_type(names[name].type)
        kwargs[name] = from_dict(sub, value) if sub and isinstance(value, dict) else value
    return cls(**kwargs)


def write_config(path: str | Path, cfg: Any) -> None:
    """Save a config as JSON in the to_dict shape (a run's config.json, a profiling worker's input)."""
    write_json(path, to_dict(cfg))


def read_config(path: str | Path, cls: type = ExperimentConfig) -> Any:
    """A config saved by `write_config` (old field names included)."""
    return from_dict(cls, read_json(path))


def _dataclass_type(typ: Any) -> type | None:
    typ = {"ModelConfig": ModelConfig, "DataConfig": DataConfig, "TrainConfig": TrainConfig}.get(typ, typ)
    return typ if isinstance(typ, type) and dataclasses.is_dataclass(typ) else None


def diff(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ: name -> (a's value, b's value)."""
    fa, fb = flatten(a), flatten(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}
