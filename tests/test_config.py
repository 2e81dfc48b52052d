"""nanovlm.config: the one saved shape round-trips, old field names (ALIASES) are read everywhere
a name is read, and the shared parsers (true/false, NAME=VALUE, did-you-mean) behave.

    python -m pytest -q tests/test_config.py
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments.cli import config_from_args, parse
from experiments.presets import PRESETS, get_preset
from experiments.run import build_parser
from nanovlm.config import (ALIASES, ConfigError, DataConfig, ExperimentConfig, ModelConfig, TrainConfig, canonical,
                            field_index, flatten, from_dict, override, parse_assignments, parse_bool, read_config,
                            suggest, to_dict, write_config)
from sweeps import space as search_space


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_saved_shape_round_trips_to_an_equal_config(preset, tmp_path):
    from reports.measure import config_json  # the profiling worker's input file

    cfg = override(get_preset(preset), {"run_name": "r", "lr_vision": 0.0, "eval_tasks": "synthetic,mmstar"})
    write_config(tmp_path / "config.json", cfg)  # a run's config.json
    assert read_config(tmp_path / "config.json") == cfg
    assert from_dict(ExperimentConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg  # trainer_state.json
    assert from_dict(ModelConfig, json.loads(json.dumps(to_dict(cfg.model)))) == cfg.model  # checkpoint "model"
    assert from_dict(ExperimentConfig, json.loads(config_json(cfg))) == cfg


def _with_old_names(data: dict) -> dict:
    """A saved config as a version before the renames wrote it."""
    old = {new: old for old, new in ALIASES.items() if old in ("lr_mp", "eval_interval", "dinov3_model")}
    return {old.get(k, k): _with_old_names(v) if isinstance(v, dict) else v for k, v in data.items()}


def test_configs_saved_with_the_old_field_names_still_load():
    cfg = override(get_preset("dinov3b_smollm"), {"lr_projector": 0.02, "best_checkpoint_steps": 7})
    saved = _with_old_names(to_dict(cfg))
    assert saved["train"]["lr_mp"] == 0.02 and saved["train"]["eval_interval"] == 7
    assert saved["model"]["dinov3_model"] == "vitb16" and "dinov3_size" not in saved["model"]
    assert from_dict(ExperimentConfig, saved) == cfg
    assert from_dict(ModelConfig, saved["model"]) == cfg.model
    with pytest.raises(ConfigError, match="unknown fields.*'lr_typo'"):
        from_dict(TrainConfig, {**saved["train"], "lr_typo": 1.0})


def test_alias_table_points_at_real_fields_and_shadows_none():
    fields = {f.name for c in (ModelConfig, DataConfig, TrainConfig, ExperimentConfig) for f in dataclasses.fields(c)}
    assert set(ALIASES.values()) <= fields
    assert not set(ALIASES) & fields
    assert canonical("train.lr_mp") == "train.lr_projector" and canonical("dinov3_model") == "dinov3_size"
    assert canonical("seed") == "seed" and field_index()["model.dinov3_model"] == "model.dinov3_size"


def test_old_names_work_as_flags_in_set_and_in_override():
    parser = build_parser()
    args = parse(parser, ["--lr_mp", "0.03", "--eval-interval", "4", "--dinov3_model", "vitl16",
                          "--set", "train.max_training_steps=9", "--set", "grad_accum=3"])
    cfg = config_from_args(args, "tiny")
    assert (cfg.train.lr_projector, cfg.train.best_checkpoint_steps, cfg.model.dinov3_size) == (0.03, 4, "vitl16")
    assert (cfg.train.max_steps, cfg.train.gradient_accumulation_steps) == (9, 3)
    assert override(cfg, {"train.lr_mp": "0.5"}).train.lr_projector == 0.5
    assert "train.lr_projector" in flatten(cfg) and "train.lr_mp" not in flatten(cfg)  # MLflow params: new names


def test_old_names_work_as_sweep_parameters():
    space, fixed = search_space.apply_specs(search_space.default_space(), ["lr_mp=1e-3:1e-2", "lr-backbones=1e-4"])
    assert space["lr_projector"] == search_space.LogRange(1e-3, 1e-2) and fixed == {"lr_backbones": 1e-4}
    params = search_space.check_params(space, search_space.parse_params("lr_mp=0.005,freeze_vision_encoder=yes"), "--enqueue")
    assert params == {"lr_projector": 0.005, "freeze_vision_encoder": True}
    with pytest.raises(ConfigError, match="unknown search parameter 'lr_backbone'. Did you mean lr_backbones"):
        search_space.parse_spec("lr_backbone=1e-6:1e-3")


@pytest.mark.parametrize("text,value", [("true", True), (" Yes", True), ("ON", True), ("1", True),
                                        ("false", False), ("no", False), ("Off ", False), ("0", False)])
def test_parse_bool(text, value):
    assert parse_bool(text, "x") is value


def test_parse_bool_rejects_anything_else_naming_the_field():
    with pytest.raises(ConfigError, match="train.packing: expected true or false, got 'maybe'"):
        parse_bool("maybe", "train.packing")
    with pytest.raises(ConfigError, match="freeze_vision_encoder: expected true or false"):
        search_space.parse_value("freeze_vision_encoder", "2")


def test_parse_assignments():
    assert parse_assignments(["train.seed=7", " data.subsets = a,b ", "x=a=b"]) == {
        "train.seed": "7", "data.subsets": "a,b", "x": "a=b"}
    with pytest.raises(ConfigError, match=r"--set expects SECTION.FIELD=VALUE, got 'train.seed'"):
        parse_assignments(["train.seed"])
    with pytest.raises(ConfigError, match="--enqueue expects NAME=VALUE"):
        search_space.parse_params("lr_mp=0.01,lr_backbones")
    with pytest.raises(ConfigError, match="--space expects NAME=LOW:HIGH"):
        search_space.parse_spec("=1")


def test_suggest():
    assert suggest("lr_backbone", ["lr_backbones", "lr_vision", "seed"]) == "Did you mean lr_backbones?"
    assert suggest("mmstr", ["mmstar", "mme", "textvqa"], n=1) == "Did you mean mmstar?"
    assert suggest("zzz", ["mmstar"]) == ""
    with pytest.raises(ConfigError, match="unknown config field 'lr_mpp'. Did you mean lr_mp"):
        override(ExperimentConfig(), {"lr_mpp": 1})
    with pytest.raises(ConfigError, match="unknown config field 'zzz'. Valid: data.dataset"):
        override(ExperimentConfig(), {"zzz": 1})
