"""Export to transformers' SmolVLM classes and publishing, on tiny checkpoints (offline, ~30 s).

    python -m pytest -q tests/test_export.py

The export must compute the same function: logits within 1e-4 (fp32) of VisionLanguageModel.logits on
the same image and prompt, identical greedy generations from left-padded prompts, and the exported
tokenizer + image processor give our exact input ids and pixels. Publishing is tested up to the hub
calls (HfApi monkeypatched): the hub is unreachable here.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from PIL import Image

from experiments import export as export_cli
from experiments import publish as publish_cli
from nanovlm.data.processors import encode_prompt
from nanovlm.export.smolvlm import smolvlm_patch_positions
from tests.conftest import tiny_vlm

ATOL = 1e-4
QUESTIONS = ["what colour is the shape?", "how many shapes are there in this image?"]


def _images(size):
    return [Image.new("RGB", (50, 70), (200, 10, 30)), Image.new("RGB", (64, 40), (10, 180, 250))]


def _checkpoint(tmp_path, language):
    model = copy.deepcopy(tiny_vlm("siglip", language))
    with torch.no_grad():  # a random projector barely moves the LM; make the image matter
        model.projector.proj.weight.mul_(50)
    return model, model.save_pretrained(tmp_path / "ckpt", meta={"run_id": None, "preset": "tiny"})


@pytest.mark.parametrize("language", ["smollm", "gemma"])
def test_smolvlm_export_computes_the_same_function(tmp_path, language, capsys):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer
    from transformers.models.smolvlm.processing_smolvlm import get_image_prompt_string

    model, ckpt = _checkpoint(tmp_path, language)
    assert export_cli.main([str(ckpt), str(tmp_path / "out"), "--format", "smolvlm"]) == 0
    out = tmp_path / "out"
    hf = AutoModelForImageTextToText.from_pretrained(out).eval()
    assert type(hf).__name__ == "SmolVLMForConditionalGeneration"
    assert hf.config.text_config.model_type == {"smollm": "llama", "gemma": "gemma3_text"}[language]
    tok = AutoTokenizer.from_pretrained(out)
    image_processor = AutoImageProcessor.from_pretrained(out)

    # The processor's pieces (tokenizer attributes, chat template, SmolVLM's own expansion) give our ids.
    images = _images(model.arch.transform.size)
    ours = [encode_prompt(model.tokenizer, q, model.image_placeholder) for q in QUESTIONS]
    for question, ids in zip(QUESTIONS, ours):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        expanded = get_image_prompt_string(0, 0, json.loads((out / "processor_config.json").read_text())["image_seq_len"],
                                           tok.fake_image_token, tok.image_token, tok.global_image_token)
        assert tok(text.replace(tok.image_token, expanded), add_special_tokens=False)["input_ids"] == ids
    pixels = image_processor(images=[[im] for im in images], return_tensors="pt")["pixel_values"]  # (B, 1, 3, H, W)
    our_pixels = torch.stack([model.arch.transform(im) for im in images])
    assert torch.equal(pixels[:, 0], our_pixels)

    # Left-padded batch: logits and greedy generation.
    width = max(map(len, ours))
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(x)) + x for x in ours])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ours])
    with torch.no_grad():
        expected = model.logits(ids, mask, our_pixels)
        got = hf(input_ids=ids, attention_mask=mask, pixel_values=pixels).logits
    real = mask.bool()
    diff = (expected - got)[real].abs().max().item()
    assert diff <= ATOL, diff
    assert (expected[:, -1] - expected[1:, -1].mean()).abs().max() > 1e-3  # the images change the output
    new_ours = model.generate(ids, mask, our_pixels, max_new_tokens=8)
    new_theirs = hf.generate(input_ids=ids, attention_mask=mask, pixel_values=pixels, max_new_tokens=8,
                             do_sample=False)[:, ids.shape[1]:]
    n = new_ours.shape[1]
    assert torch.equal(new_theirs[:, :n], new_ours), (new_ours, new_theirs)
    info = json.loads((out / "nanovlm_export.json").read_text())
    assert info["max_abs_logit_difference_fp32"] <= ATOL


def test_processor_loads_where_its_dependencies_are_installed(tmp_path):
    pytest.importorskip("num2words")
    pytest.importorskip("torchvision")
    from transformers import AutoProcessor

    model, ckpt = _checkpoint(tmp_path, "smollm")
    assert export_cli.main([str(ckpt), str(tmp_path / "out")]) == 0
    processor = AutoProcessor.from_pretrained(tmp_path / "out")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTIONS[0]}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    batch = processor(text=[prompt], images=[[_images(64)[0]]], return_tensors="pt")
    assert batch["input_ids"][0].tolist() == encode_prompt(model.tokenizer, QUESTIONS[0], model.image_placeholder)


def test_unsupported_combinations_fail_with_one_line_before_writing(tmp_path, capsys):
    model = tiny_vlm("dinov2", "smollm")
    ckpt = model.save_pretrained(tmp_path / "dino")
    capsys.readouterr()  # the tiny backbones' loading bars
    assert export_cli.main([str(ckpt), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'dinov2'" in err and "--format remote exports every combination" in err
    assert not (tmp_path / "out").exists()
    _, ckpt = _checkpoint(tmp_path, "smollm")
    assert export_cli.main([str(ckpt), str(tmp_path / "out"), "--format", "idefics3"]) == 2
    assert "<global-img>" in capsys.readouterr().err
    assert export_cli.main([str(tmp_path / "missing"), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_smolvlm_patch_positions_are_checked():
    assert torch.equal(smolvlm_patch_positions(8), torch.arange(64))
    assert torch.equal(smolvlm_patch_positions(32), torch.arange(32 * 32))  # SigLIP2-512/16
    assert len(set(smolvlm_patch_positions(19).tolist())) < 19 * 19  # refused grid


def test_publish_card_from_a_tiny_run_and_hub_calls(tmp_path, monkeypatch, capsys):
    from experiments.presets import get_preset
    from experiments.runner import run_experiment
    from nanovlm.config import override

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = override(get_preset("tiny"), {"max_steps": 2, "validation_steps": 2, "eval_interval": 2, "batch_size": 2,
                                        "train_samples": 16, "val_samples": 4, "output_dir": str(tmp_path / "runs"),
                                        "run_name": "pub"})
    result = run_experiment(cfg, tracking_uri=uri)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.log_metric(result.run_id, "eval/mmstar/average", 0.25)  # a benchmark score with its standard error
    client.log_metric(result.run_id, "eval/mmstar/average_stderr", 0.0125)
    run = client.get_run(result.run_id)

    calls = []

    class FakeApi:
        def create_repo(self, **kw):
            calls.append(("create_repo", kw))

        def create_branch(self, **kw):
            calls.append(("create_branch", kw))

        def upload_folder(self, **kw):
            from pathlib import Path

            calls.append(("upload_folder", {**kw, "files": sorted(p.name for p in Path(kw["folder_path"]).iterdir()),
                                            "card": (Path(kw["folder_path"]) / "README.md").read_text()}))
            return type("Info", (), {"commit_url": "https://huggingface.co/me/tiny/commit/abc"})()

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    code = publish_cli.main([str(result.checkpoint), "me/tiny", "--export", "smolvlm", "--private",
                             "--revision", "v1", "--tracking_uri", uri])
    assert code == 0, capsys.readouterr().err
    names = [c[0] for c in calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0][1] == {"repo_id": "me/tiny", "repo_type": "model", "private": True, "exist_ok": True}
    assert calls[1][1]["branch"] == "v1" and calls[2][1]["revision"] == "v1"
    upload = calls[2][1]
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "preprocessor_config.json", "processor_config.json", "generation_config.json",
            "video_preprocessor_config.json", "meta.json"} <= set(upload["files"])
    card = upload["card"]
    front = card.split("---")[1]
    assert "library_name: transformers" in front and "pipeline_tag: image-text-to-text" in front
    assert "license: apache-2.0" in front
    m, t = run.data.metrics, run.data.tags
    assert f"{m['val/loss']:.4g}" in card and result.run_id in card
    assert t["dataset_fingerprint"] in card and t["git_sha"] in card and t["device"] in card
    assert "| mmstar | average | 0.25 | 0.0125 |" in card
    assert f"| synthetic | colour | {m['eval/synthetic/colour']:.4g} |" in card
    assert "python -m experiments.run tiny" in card and "--set train.max_steps=2" in card
    assert "AutoModelForImageTextToText.from_pretrained(\"me/tiny\")" in card
    assert "nanovlm-lab evals" in card

    # Without --export: the checkpoint's model files only (no optimizer state), the project's snippet.
    calls.clear()
    assert publish_cli.main([str(result.checkpoint), "me/raw", "--tracking_uri", uri]) == 0
    files = set(calls[-1][1]["files"])
    assert "model.safetensors" in files and not any("optim" in f or "rng" in f or "trainer" in f for f in files)
    card = calls[-1][1]["card"]
    assert "import nanovlm" in card and 'AutoModelForImageTextToText.from_pretrained("me/raw")' in card
    assert "library_name: nanovlm-lab" in calls[-1][1]["card"]
    assert publish_cli.main([str(result.checkpoint), "not-a-repo-id"]) == 2
