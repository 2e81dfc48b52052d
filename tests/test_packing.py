"""Packed rows: first-fit packing, collation, and the model's losses and gradients unchanged by packing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from conftest import model_batch, tiny_vlm
from nanovlm.data.packing import bucket, collate_rows, pack
from nanovlm.data.processors import IGNORE_INDEX, encode_conversation


def _fake(n: int, tag: int = 0) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.full((n,), tag), "labels": torch.full((n,), tag), "pixel_values": torch.zeros(0, 3, 2, 2)}


def test_first_fit_fills_rows_and_emits_when_nothing_fits():
    lengths = [6, 5, 4, 3, 7, 2, 9]
    out = list(pack([_fake(n) for n in lengths], rows=2, row_length=10))
    # 6 -> row 0, 5 -> row 1, 4 -> row 0 (10), 3 -> row 1 (8), 7 fits nowhere: batch 1 ends and 7 starts batch 2
    first, consumed, skipped = out[0]
    assert [[len(s["input_ids"]) for s in row] for row in first] == [[6, 4], [5, 3]] and (consumed, skipped) == (4, 0)
    second, consumed, _ = out[1]
    assert [[len(s["input_ids"]) for s in row] for row in second] == [[7, 2], [9]] and consumed == 3
    assert len(out) == 2


def test_skipped_samples_are_consumed_and_counted():
    out = list(pack([_fake(3), None, _fake(3), None], rows=1, row_length=10))
    assert [(c, s) for _, c, s in out] == [(4, 2)]


def test_without_packing_each_row_holds_one_sample():
    out = list(pack([_fake(2) for _ in range(5)], rows=2, row_length=10, packing=False))
    assert [[len(row) for row in rows] for rows, _, _ in out] == [[1, 1], [1, 1], [1, 0]]


def test_resuming_at_a_batch_boundary_gives_the_same_batches():
    torch.manual_seed(0)
    samples = [_fake(int(n), tag=i) for i, n in enumerate(torch.randint(1, 9, (60,)))]
    whole = list(pack(samples, rows=3, row_length=12))
    position = sum(c for _, c, _ in whole[:4])
    resumed = list(pack(samples[position:], rows=3, row_length=12))
    tags = lambda batches: [[[int(s["input_ids"][0]) for s in row] for row in rows] for rows, _, _ in batches]  # noqa: E731
    assert tags(resumed) == tags(whole[4:])


def test_bucket_sizes_waste_at_most_a_quarter():
    assert [bucket(n) for n in (0, 1, 3, 4, 5, 8, 9, 16, 17, 33, 100)] == [1, 1, 3, 4, 5, 8, 10, 16, 20, 40, 112]
    assert all(n <= bucket(n) <= 1.25 * n for n in range(1, 2000))
    assert {bucket(n) for n in range(129, 257)} == {160, 192, 224, 256}  # four shapes per doubling


def _samples(model, questions, answers):
    out = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        ids, labels = encode_conversation(model.tokenizer, [{"user": q, "assistant": a}], model.image_placeholder)
        colour = (40 * i % 255, 200, 90)
        pixels = model.arch.transform(Image.new("RGB", (40, 30), colour))[None]
        out.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixel_values": pixels})
    return out


def test_collated_rows_restart_positions_and_point_at_their_images():
    model = tiny_vlm()
    samples = _samples(model, ["What colour?", "And the shape of it?", "Where?"], ["red", "a big square", "left"])
    lengths = [len(s["input_ids"]) for s in samples]
    width = lengths[0] + lengths[1] + 3
    (rows, _, _), = list(pack(samples, rows=2, row_length=width))
    batch = collate_rows(rows, width, model.tokenizer.pad_token_id, model.image_token_id, model.arch.image_tokens)
    assert batch["position_ids"][0].tolist() == [*range(lengths[0]), *range(lengths[1]), 0, 1, 2]
    assert batch["sequence_ids"][0].tolist() == [0] * lengths[0] + [1] * lengths[1] + [2] * 3
    # image i's tokens point at features i * tokens ... (i + 1) * tokens - 1, in slot order
    slots = batch["image_slots"]
    tokens = model.arch.image_tokens
    assert slots[0][slots[0] >= 0].tolist() == list(range(2 * tokens))
    assert slots[1][slots[1] >= 0].tolist() == list(range(2 * tokens, 3 * tokens))
    assert batch["images"].shape[0] == bucket(3) and batch["stats"]["images"] == 3
    # the loss positions predict exactly the answer tokens of each sample
    n = batch["stats"]["loss_tokens"]
    expected = torch.cat([s["labels"][1:][s["labels"][1:] != IGNORE_INDEX] for s in samples])
    assert torch.equal(batch["loss_targets"][:n], expected)
    assert (batch["loss_targets"][n:] == IGNORE_INDEX).all() and len(batch["loss_targets"]) == bucket(n)
    flat = batch["input_ids"].flatten()
    assert torch.equal(flat[batch["loss_positions"][:n] + 1], expected)


def test_collated_rows_match_the_samples_token_by_token():
    # Labels on every token, images anywhere: a sample's last token must not predict the next sample's first.
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(12):
        n, k = int(torch.randint(3, 9, (1,), generator=g)), i % 3
        ids = torch.randint(10, 50, (n,), generator=g)
        ids[torch.randperm(n, generator=g)[:k]] = 7  # k image tokens: one image of 1 token each
        labels = torch.where(torch.rand(n, generator=g) < 0.3, IGNORE_INDEX, ids)
        samples.append({"input_ids": ids, "labels": labels, "pixel_values": torch.full((k, 3, 2, 2), i)})
    width = 16
    batches = list(pack(samples, rows=3, row_length=width))
    assert len(batches) > 1 and any(len(row) > 1 for rows, _, _ in batches for row in rows)
    for rows, _, _ in batches:
        batch = collate_rows(rows, width, pad_id=0, image_token_id=7, image_tokens=1)
        positions, targets, image = [], [], 0
        for r, row in enumerate(rows):
            offset = 0
            for j, sample in enumerate(row):
                ids, labels, n = sample["input_ids"], sample["labels"], len(sample["input_ids"])
                cols = slice(offset, offset + n)
                assert torch.equal(batch["input_ids"][r, cols], ids)
                assert batch["position_ids"][r, cols].tolist() == list(range(n))
                assert batch["sequence_ids"][r, cols].tolist() == [j] * n
                for t in (ids == 7).nonzero().flatten().tolist():
                    assert batch["image_slots"][r, offset + t] == image
                    assert (batch["images"][image] == sample["pixel_values"][0]).all()
                    image += 1
                positions += [r * width + offset + t for t in range(n - 1) if labels[t + 1] != IGNORE_INDEX]
                targets += [int(labels[t + 1]) for t in range(n - 1) if labels[t + 1] != IGNORE_INDEX]
                offset += n
            assert (batch["input_ids"][r, offset:] == 0).all() and (batch["image_slots"][r, offset:] == -1).all()
            assert batch["position_ids"][r, offset:].tolist() == list(range(width - offset))
            assert (batch["sequence_ids"][r, offset:] == len(row)).all()
        n = batch["stats"]["loss_tokens"]
        assert batch["loss_positions"][:n].tolist() == positions and batch["loss_targets"][:n].tolist() == targets
        assert (batch["image_slots"] >= 0).sum() == image == batch["stats"]["images"]


def test_a_sample_whose_image_slots_do_not_match_its_images_is_refused():
    good = {"input_ids": torch.tensor([5, 7, 6]), "labels": torch.tensor([5, 7, 6]), "pixel_values": torch.zeros(1, 3, 2, 2)}
    bad = {**good, "input_ids": torch.tensor([5, 7, 7])}
    with pytest.raises(ValueError, match="a sample has 2 image-token slots for 1 images x 1 tokens"):
        collate_rows([[good], [bad]], 4, pad_id=0, image_token_id=7, image_tokens=1)


def _only(inputs, keep: torch.Tensor):
    """The same batch with the loss restricted to the loss slots in `keep`."""
    targets = torch.where(keep, inputs["loss_targets"], IGNORE_INDEX)
    return {**inputs, "loss_targets": targets}


@pytest.mark.parametrize("vision,language", [("siglip", "smollm"), ("dinov2", "smollm"), ("dinov3", "gemma"),
                                             ("siglip", "gemma")])
def test_packed_rows_give_the_losses_and_gradients_of_samples_run_one_by_one(vision, language):
    torch.manual_seed(0)
    model = tiny_vlm(vision, language)
    # long prompts: the tiny Gemma's sliding window (64 tokens) must matter inside a packed row
    long_question = "Please look very carefully at the picture and describe the colour " * 3
    samples = _samples(model, [long_question, "What colour?", "Where is it?", long_question + "now?"],
                       ["red", "blue and green", "top", "a purple square"])
    assert model.lm.config.model_type != "gemma3_text" or max(len(s["input_ids"]) for s in samples) > 64
    width = sum(len(s["input_ids"]) for s in samples) // 2 + 40
    packed = model_batch(model, samples, rows=2, width=width)
    assert packed["sequence_ids"].amax(1).tolist() != [0, 0], "the samples were not packed together"
    counts = [int((s["labels"][1:] != IGNORE_INDEX).sum()) for s in samples]
    owner = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])  # loss slot -> sample (collated in order)
    owner = torch.cat([owner, torch.full((len(packed["loss_targets"]) - len(owner),), -1)])

    for k, sample in enumerate(samples):
        alone = model(**model_batch(model, [sample]))
        together = model(**_only(packed, owner == k))
        torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # the packed loss is the token-weighted mean of the samples' losses, and so are its gradients
    expected = grads(sum(model(**model_batch(model, [s])) * c for s, c in zip(samples, counts)) / sum(counts))
    actual = grads(model(**packed))
    model.zero_grad()
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_attention_does_not_cross_samples():
    model = tiny_vlm("siglip", "gemma")
    samples = _samples(model, ["What colour?", "Where is it?"], ["red", "top"])
    width = sum(len(s["input_ids"]) for s in samples)
    packed = model_batch(model, samples, rows=1, width=width)
    second = torch.arange(len(packed["loss_targets"])) >= int((samples[0]["labels"][1:] != IGNORE_INDEX).sum())
    before = model(**_only(packed, second & (packed["loss_targets"] != IGNORE_INDEX)))
    # change every token of the first sample: the second sample's loss must not move
    changed = dict(packed)
    n0 = len(samples[0]["input_ids"])
    ids = changed["input_ids"].clone()
    ids[0, :n0] = torch.where(ids[0, :n0] == model.image_token_id, ids[0, :n0], 5)
    changed["input_ids"] = ids
    after = model(**_only(changed, second & (packed["loss_targets"] != IGNORE_INDEX)))
    assert torch.equal(before, after)


@pytest.mark.parametrize("language", ["smollm", "gemma"])
def test_packed_masks_match_transformers_own_masks(language):
    """One long sample through our packed-row masks == through transformers' masks (Gemma's sliding window included)."""
    model = tiny_vlm("siglip", language)
    (sample,) = _samples(model, ["Please look very carefully at the picture and describe the colour " * 6], ["red"])
    assert len(sample["input_ids"]) > 2 * getattr(model.lm.config, "sliding_window", 0)
    ids, labels = sample["input_ids"][None], sample["labels"]
    logits = model.logits(ids, torch.ones_like(ids), sample["pixel_values"])[0, :-1]
    targets = labels[1:]
    expected = torch.nn.functional.cross_entropy(logits[targets != IGNORE_INDEX], targets[targets != IGNORE_INDEX])
    torch.testing.assert_close(model(**model_batch(model, [sample])), expected, rtol=1e-5, atol=1e-5)


def test_a_run_of_skipped_samples_yields_an_empty_batch_instead_of_reading_forever():
    endless_nones = iter(lambda: None, 0)
    rows, consumed, skipped = next(pack(endless_nones, rows=3, row_length=10))
    assert rows == [[], [], []] and consumed == skipped == 3


@pytest.mark.slow
def test_flex_attention_block_masks_give_the_sdpa_losses():
    """The CUDA default (FlexAttention BlockMask, no T x T tensor) masks packed rows as SDPA does.
    Forward only: FlexAttention has no backward on CPU (the GPU tests cover training with it)."""
    from test_step import _fresh

    model = _fresh("gemma")
    long_question = "Please look very carefully at the picture and describe the colour " * 3
    samples = _samples(model, [long_question, "Where is it?", "Shape?"], ["red", "top", "a square"])
    batch = model_batch(model, samples, rows=2, width=256)
    with torch.no_grad():
        sdpa = model(**batch)
        model.lm.set_attn_implementation("flex_attention")
        flex = model(**batch)
    torch.testing.assert_close(flex, sdpa, rtol=1e-5, atol=1e-5)
