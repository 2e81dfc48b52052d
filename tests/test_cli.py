"""The experiments.run command line: flags generated from the config, dry run, errors."""

from __future__ import annotations

import json

import pytest

from experiments.run import build_parser, main
from nanovlm.config import ExperimentConfig, flatten


def test_every_config_field_has_exactly_one_flag():
    parser = build_parser()
    dests = [a.dest for a in parser._actions if a.dest.startswith("cfg:")]
    fields = [k for k in flatten(ExperimentConfig()) if k != "preset"]
    assert sorted(d.split(":", 1)[1] for d in dests) == sorted(fields)
    help_text = parser.format_help()
    assert "learning rate of the modality projector" in help_text and "--max_training_steps" in help_text


def test_dry_run_json_has_counts_and_applies_flags(capsys):
    assert main(["original_small", "--dry_run", "--json", "--freeze-vision-encoder", "--lr_mp", "0.01",
                 "--set", "train.seed=7", "--max_training_steps", "9"]) == 0
    info = json.loads(capsys.readouterr().out)
    params = info["parameters"]
    assert params["trainable"] == params["projector"] + params["language"]  # vision frozen
    assert info["config"]["train.lr_projector"] == 0.01 and info["config"]["train.seed"] == 7
    assert info["config"]["train.max_steps"] == 9
    assert info["architecture"]["image_tokens"] == 49


def test_lr_zero_freezes_backbones_in_dry_run(capsys):
    assert main(["dinov3_gemma", "--dry_run", "--json", "--lr_backbones", "0"]) == 0
    params = json.loads(capsys.readouterr().out)["parameters"]
    assert params["trainable"] == params["projector"]


def test_list_prints_presets_and_backbones(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for name in ("original_small", "dinov3_gemma", "tiny", "google/siglip2-base-patch16-512", "vitl16"):
        assert name in out


@pytest.mark.parametrize("argv,message", [
    (["nope", "--dry_run"], "Valid presets: default, original_small"),
    (["--vision_encoder", "clip", "--dry_run"], "Valid names: siglip"),
    (["--dinov3_model", "vitl14", "--vision_encoder", "dinov3", "--dry_run"], "use 'vitl16'"),
    (["--set", "train.nope=1", "--dry_run"], "unknown config field"),
])
def test_bad_input_exits_2_with_a_message(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_unknown_flag_suggests_close_matches(capsys):
    with pytest.raises(SystemExit):
        main(["tiny", "--lr-mpp", "1"])
    err = capsys.readouterr().err
    assert "Did you mean" in err and "--lr_mp" in err  # the old name, still accepted
