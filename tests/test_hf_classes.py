"""Checkpoints as transformers models: the Auto classes, the remote-code export, older checkpoints (~60 s).

    python -m pytest -q tests/test_hf_classes.py

Every check compares with the project's own model on the same tiny checkpoint (projector scaled up so
the image matters): the processor gives our exact ids and pixels, logits agree within 1e-5 (fp32),
greedy generation is identical, and each cached decoding step gives the logits of the full sequence.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from experiments import export as export_cli
from nanovlm.data.processors import encode_prompt
from nanovlm.model.vlm import VisionLanguageModel
from tests.conftest import tiny_vlm

ATOL = 1e-5
QUESTIONS = ["what colour is the shape?", "how many shapes are there in this image?"]
FAMILIES = [(v, lang) for v in ("siglip", "dinov2", "dinov3") for lang in ("smollm", "gemma")]


def _images():
    return [Image.new("RGB", (50, 70), (200, 10, 30)), Image.new("RGB", (64, 40), (10, 180, 250))]


def _checkpoint(tmp_path, vision, language):
    model = copy.deepcopy(tiny_vlm(vision, language))
    with torch.no_grad():  # a random projector barely moves the LM; make the image matter
        model.projector.proj.weight.mul_(50)
    return model, model.save_pretrained(tmp_path / "ckpt", meta={"run_id": None, "preset": "tiny"})


def _messages(question):
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]


@pytest.mark.parametrize("vision,language", FAMILIES)
def test_checkpoints_load_through_the_auto_classes(tmp_path, vision, language):
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor

    model, ckpt = _checkpoint(tmp_path, vision, language)
    assert type(AutoConfig.from_pretrained(ckpt)).__name__ == "NanoVLMConfig"
    hf = AutoModelForImageTextToText.from_pretrained(ckpt).eval()
    processor = AutoProcessor.from_pretrained(ckpt)
    assert (type(hf).__name__, type(processor).__name__) == ("NanoVLMForConditionalGeneration", "NanoVLMProcessor")
    assert type(AutoImageProcessor.from_pretrained(ckpt)).__name__ == "NanoVLMImageProcessor"

    # The processor: our prompt ids (chat template with list contents, image token expanded) and pixels.
    prompts = [processor.apply_chat_template(_messages(q), add_generation_prompt=True, tokenize=False) for q in QUESTIONS]
    assert prompts[0] == processor.prompt(QUESTIONS[0])
    inputs = processor(images=[[im] for im in _images()], text=prompts)
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    ours = [encode_prompt(model.tokenizer, q, model.image_placeholder) for q in QUESTIONS]
    assert [row[m.bool()].tolist() for row, m in zip(ids, mask)] == ours
    assert mask[:, -1].all() and not mask.all()  # left-padded, as generation needs
    pixels = torch.stack([model.arch.transform(im) for im in _images()])
    assert torch.equal(inputs["pixel_values"], pixels)

    with torch.no_grad():
        expected = model.logits(ids, mask, pixels)
        got = hf(**inputs).logits
    assert (expected - got)[mask.bool()].abs().max().item() <= ATOL
    assert (expected[:, -1] - expected[1:, -1].mean()).abs().max() > 1e-3  # the images change the output

    # transformers' generate on the model's own generation config == the project's generate.
    new_ours = model.generate(ids, mask, pixels, max_new_tokens=8)
    out = hf.generate(**inputs, max_new_tokens=8, return_dict_in_generate=True, output_logits=True)
    new_hf = out.sequences[:, ids.shape[1]:]
    assert torch.equal(new_hf, new_ours[:, :new_hf.shape[1]])
    # Each cached step gives the logits of the whole sequence recomputed (KV cache, positions, masks).
    full = out.sequences[:, :-1]
    full_mask = torch.cat([mask, torch.ones_like(new_hf[:, :-1])], 1)
    with torch.no_grad():
        recomputed = model.logits(full, full_mask, pixels)[:, ids.shape[1] - 1:]
    assert (torch.stack(out.logits, 1) - recomputed).abs().max().item() <= 1e-4


# Loads an export in a process that never imports the project (it would win over the copied code), and
# prints the greedy continuation of the prompts built by the export's own processor.
_REMOTE_CHILD = """
import json, sys
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
path, questions = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
images = [Image.new("RGB", (50, 70), (200, 10, 30)), Image.new("RGB", (64, 40), (10, 180, 250))]
prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                                         add_generation_prompt=True, tokenize=False) for q in questions]
inputs = processor(images=images, text=prompts)
out = model.generate(**inputs, max_new_tokens=8)[:, inputs["input_ids"].shape[1]:]
assert not [m for m in sys.modules if m == "nanovlm" or m.startswith("nanovlm.")]
print(json.dumps({"ids": inputs["input_ids"].tolist(), "mask": inputs["attention_mask"].tolist(), "new": out.tolist(),
                  "model": type(model).__module__}))
"""


@pytest.mark.parametrize("vision,language", [("siglip", "gemma"), ("dinov2", "smollm"), ("dinov3", "gemma")])
def test_remote_code_export_runs_without_the_project(tmp_path, vision, language):
    model, ckpt = _checkpoint(tmp_path, vision, language)
    out = tmp_path / "remote"
    assert export_cli.main([str(ckpt), str(out), "--format", "remote"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForImageTextToText"] == "modeling_nanovlm.NanoVLMForConditionalGeneration"
    assert {"configuration_nanovlm.py", "modeling_nanovlm.py", "processing_nanovlm.py", "embedding.py", "projector.py",
            "vision.py"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "nanovlm_export.json").read_text())["max_abs_logit_difference_fp32"] <= 1e-4

    done = subprocess.run([sys.executable, "-c", _REMOTE_CHILD, str(out), json.dumps(QUESTIONS)], cwd=tmp_path,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model"].startswith("transformers_modules.")
    ids, mask = torch.tensor(result["ids"]), torch.tensor(result["mask"])
    assert [row[m.bool()].tolist() for row, m in zip(ids, mask)] == [
        encode_prompt(model.tokenizer, q, model.image_placeholder) for q in QUESTIONS]
    pixels = torch.stack([model.arch.transform(im) for im in _images()])
    ours = model.generate(ids, mask, pixels, max_new_tokens=8)
    assert result["new"] == ours[:, :len(result["new"][0])].tolist()


def test_a_broken_remote_export_is_not_written(tmp_path, monkeypatch):
    from nanovlm.export import remote

    model, ckpt = _checkpoint(tmp_path, "dinov2", "smollm")
    real = remote.code_files
    monkeypatch.setattr(remote, "code_files", lambda: [f for f in real() if f.name != "projector.py"])
    assert export_cli.main([str(ckpt), str(tmp_path / "out"), "--format", "remote"]) == 2
    assert not (tmp_path / "out").exists()


def test_checkpoints_from_before_the_auto_classes_load_and_convert(tmp_path):
    """The earlier layout: config.json with "language_config", no processor files."""
    from transformers import AutoModelForImageTextToText

    model, ckpt = _checkpoint(tmp_path, "siglip", "gemma")
    stored = json.loads((ckpt / "config.json").read_text())
    old = {"model_type": "nanovlm", "model": stored["model"], "vision_config": stored["vision_config"],
           "language_config": stored["text_config"], "sources": stored["sources"]}
    (ckpt / "config.json").write_text(json.dumps(old))
    image_processor = json.loads((ckpt / "preprocessor_config.json").read_text())
    (ckpt / "preprocessor_config.json").write_text(json.dumps({k: v for k, v in image_processor.items()
                                                               if k != "image_processor_type"}))
    for name in ("processor_config.json", "generation_config.json"):
        (ckpt / name).unlink()

    loaded = VisionLanguageModel.from_pretrained(ckpt)
    ids = torch.tensor([encode_prompt(model.tokenizer, QUESTIONS[0], model.image_placeholder)])
    pixels = torch.stack([model.arch.transform(_images()[0])])
    with torch.no_grad():
        expected = model.logits(ids, torch.ones_like(ids), pixels)
        assert torch.equal(loaded.logits(ids, torch.ones_like(ids), pixels), expected)

    assert export_cli.main([str(ckpt), str(tmp_path / "new"), "--format", "nanovlm"]) == 0
    hf = AutoModelForImageTextToText.from_pretrained(tmp_path / "new").eval()
    with torch.no_grad():
        assert (hf(input_ids=ids, pixel_values=pixels).logits - expected).abs().max().item() <= ATOL
    assert json.loads((tmp_path / "new" / "meta.json").read_text())["preset"] == "tiny"
