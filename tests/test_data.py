"""Data: the_cauldron-schema loading (local parquet / save_to_disk), processing, collation, sampler."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from conftest import tiny_vlm
from nanovlm.config import ConfigError, DataConfig
from nanovlm.data import synthetic
from nanovlm.data.collate import Collator, ResumableSampler
from nanovlm.data.datasets import SampleProcessor, VQADataset, load_splits


def _processor(max_length=128):
    return SampleProcessor.for_model(tiny_vlm(), max_length)


def test_synthetic_splits_are_disjoint_and_sized():
    splits = load_splits(DataConfig(train_samples=40, val_samples=10), seed=0)
    assert (len(splits.train), len(splits.val)) == (40, 10)
    key = lambda r: (r["images"][0].tobytes(), r["texts"][0]["user"])  # noqa: E731
    assert not {key(r) for r in splits.train} & {key(r) for r in splits.val}


@pytest.mark.parametrize("layout", ["parquet_file", "parquet_dir", "save_to_disk"])
def test_local_datasets_load_in_cauldron_schema(tmp_path, layout):
    records = synthetic.generate(30, seed=1)
    if layout == "parquet_file":
        path = tmp_path / "data.parquet"
        synthetic.save_parquet(records, path)
    elif layout == "parquet_dir":
        (tmp_path / "d").mkdir()
        synthetic.save_parquet(records, tmp_path / "d" / "part-0.parquet")
        path = tmp_path / "d"
    else:
        path = tmp_path / "disk"
        synthetic.to_dataset(records).save_to_disk(str(path))
    splits = load_splits(DataConfig(dataset=str(path), train_samples=0, val_samples=5), seed=0)
    assert (len(splits.train), len(splits.val)) == (25, 5)
    sample = VQADataset(splits.train, _processor())[0]
    assert sample["pixel_values"].shape == (1, 3, 64, 64)
    assert (sample["labels"] != -100).sum() > 0


def test_missing_column_is_named(tmp_path):
    import datasets

    path = tmp_path / "bad.parquet"
    datasets.Dataset.from_list([{"image": b"", "question": "q", "answer": "a"}] * 5).to_parquet(str(path))
    with pytest.raises(ConfigError, match=r"missing column\(s\) \['images', 'texts'\]"):
        load_splits(DataConfig(dataset=str(path), val_samples=1), seed=0)


def test_corrupt_image_is_skipped_not_fatal(tmp_path):
    import datasets

    good = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(good, format="PNG")
    rows = [{"images": [{"bytes": good.getvalue(), "path": None}], "texts": [{"user": "q?", "assistant": "red"}]},
            {"images": [{"bytes": b"not a png at all", "path": None}], "texts": [{"user": "q?", "assistant": "red"}]},
            {"images": [{"bytes": good.getvalue()[:40], "path": None}], "texts": [{"user": "q?", "assistant": "x"}]}]
    features = datasets.Features({"images": datasets.List(datasets.Image()),
                                  "texts": datasets.List({"user": datasets.Value("string"), "assistant": datasets.Value("string")})})
    path = tmp_path / "corrupt.parquet"
    datasets.Dataset.from_list(rows * 2, features=features).to_parquet(str(path))
    splits = load_splits(DataConfig(dataset=str(path), val_samples=1, train_samples=0), seed=0)
    ds = VQADataset(splits.train, _processor())
    batch = Collator(0)([ds[i] for i in range(len(ds))])
    assert batch["skipped"] + batch["size"] == 5
    assert batch["size"] in (1, 2) and batch["skipped"] >= 3


def test_too_long_sample_is_skipped():
    record = synthetic.generate(1)[0]
    assert _processor(max_length=8)(record) is None
    assert _processor(max_length=128)(record) is not None


def test_collator_pads_and_masks():
    proc = _processor()
    samples = [proc(r) for r in synthetic.generate(3, seed=2)]
    samples[1]["input_ids"] = samples[1]["input_ids"][:-2]  # make lengths differ
    samples[1]["labels"] = samples[1]["labels"][:-2]
    batch = Collator(pad_id=7)(samples + [None])
    assert batch["skipped"] == 1 and batch["images"].shape == (3, 3, 64, 64)
    lengths = [len(s["input_ids"]) for s in samples]
    assert batch["input_ids"].shape[1] == max(lengths)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    n = lengths[1]
    assert (batch["input_ids"][1, n:] == 7).all() and (batch["labels"][1, n:] == -100).all()
    assert torch.equal(batch["input_ids"][1, :n], samples[1]["input_ids"])
    left = Collator(pad_id=7, padding_side="left")(samples)
    assert (left["attention_mask"][1, :2] == 0).all() and left["attention_mask"][:, -1].all()


def test_sampler_resumes_mid_epoch_and_shards():
    full = ResumableSampler(10, seed=3)
    stream = [i for _, i in zip(range(25), iter(full))]
    assert sorted(stream[:10]) == list(range(10)) and stream[:10] != stream[10:20]  # reshuffled epochs
    resumed = ResumableSampler(10, seed=3, start=13)
    assert [i for _, i in zip(range(12), iter(resumed))] == stream[13:25]
    ranks = [ResumableSampler(10, seed=3, rank=r, world_size=2) for r in (0, 1)]
    shards = [[i for _, i in zip(range(5), iter(s))] for s in ranks]
    assert sorted(shards[0] + shards[1]) == list(range(10))


def test_streamed_dataset_holds_out_validation_and_resumes_by_position(tmp_path):
    from nanovlm.data.datasets import StreamingVQA

    path = tmp_path / "data.parquet"
    synthetic.save_parquet(synthetic.generate(20, seed=4), path)
    splits = load_splits(DataConfig(dataset=str(path), streaming=True, train_samples=0, val_samples=4), seed=0)
    assert len(splits.val) == 4
    held_out = {r["texts"][0]["user"] + str(hash(r["images"][0]["bytes"])) for r in splits.val}
    stream = StreamingVQA(splits.train, _processor(), seed=0, buffer_size=8)
    first = [s["input_ids"].tolist() for _, s in zip(range(40), iter(stream))]  # 2.5 epochs of 16
    assert len(first) == 40 and first[:16] != first[16:32]  # reshuffled each epoch
    again = [s["input_ids"].tolist() for _, s in zip(range(15), iter(stream.resume(25, 0, 1)))]
    assert again == first[25:40]
    shards = [[s["input_ids"].tolist() for _, s in zip(range(8), iter(stream.resume(0, r, 2)))] for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 8
    train_keys = {r["texts"][0]["user"] + str(hash(r["images"][0]["bytes"])) for r in splits.train}
    assert not held_out & train_keys


def _read(stream, n, start=0, rank=0, world_size=1):
    return [x for _, x in zip(range(n), iter(stream.resume(start, rank, world_size)))]


@pytest.mark.parametrize("num_shards", [4, 3])  # 4: each rank reads whole shards; 3: every other row
def test_streamed_ranks_read_disjoint_parts_and_resume_exactly(num_shards):
    import datasets

    from nanovlm.data.datasets import StreamingVQA

    stream = datasets.Dataset.from_dict({"id": list(range(40))}).to_iterable_dataset(num_shards=num_shards)
    base = StreamingVQA(stream, lambda record: record["id"], seed=1, buffer_size=8)
    reads = [_read(base, 50, rank=r, world_size=2) for r in (0, 1)]  # 2.5 epochs of 20 rows per rank
    for epoch in (slice(0, 20), slice(20, 40)):
        parts = [read[epoch] for read in reads]
        assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == list(range(40))
    assert reads[0][:20] != reads[0][20:40]  # reshuffled each epoch
    if num_shards == 4:  # no rank reads the other's shards (rows 10*i .. 10*i+9 are shard i)
        assert all(len({x // 10 for x in read[:20]}) == 2 for read in reads)
    for k in (7, 20, 23):  # within the first epoch, at its end, in the next
        for r in (0, 1):
            assert _read(base, 50 - k, start=k, rank=r, world_size=2) == reads[r][k:]


def test_streamed_folder_holds_out_validation_on_every_rank(tmp_path):
    from nanovlm.data.datasets import StreamingVQA, row_key
    from nanovlm.data.sources import load_source, undecoded_images

    records = synthetic.generate(24, seed=5)
    for i in range(4):  # 4 files = 4 shards: each of 2 ranks reads 2 files
        synthetic.save_parquet(records[6 * i: 6 * i + 6], tmp_path / f"part-{i}.parquet")
    splits = load_splits(DataConfig(dataset=str(tmp_path), streaming=True, train_samples=0, val_samples=4), seed=0)
    assert splits.train.num_shards == 4
    held_out = {row_key(r) for r in splits.val}
    stream = StreamingVQA(splits.train, _processor(), seed=0, buffer_size=8)
    parts = [[row_key(r) for r in stream.resume(0, rank, 2).epoch(0)] for rank in (0, 1)]
    everything = {row_key(r) for r in undecoded_images(load_source(str(tmp_path), streaming=True), ["images"])}
    assert len(held_out) == 4 and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(everything - held_out)


def test_unreachable_hub_names_the_option_for_a_local_copy():
    # tests run with HF_HUB_OFFLINE=1; training and the benchmarks share this loader and message
    with pytest.raises(ConfigError, match="from the Hugging Face hub.*Pass --dataset with a local copy"):
        load_splits(DataConfig(dataset="nobody/no-such-dataset", val_samples=1), seed=0)


def test_a_save_to_disk_folder_of_several_splits_needs_the_right_one(tmp_path):
    import datasets

    from nanovlm.data.sources import DataSourceError, load_source

    ds = synthetic.to_dataset(synthetic.generate(6, seed=6))
    datasets.DatasetDict({"val": ds, "test": ds.select(range(2))}).save_to_disk(str(tmp_path / "dd"))
    assert len(load_source(str(tmp_path / "dd"), split="test")) == 2
    with pytest.raises(DataSourceError, match=r"holds splits \['val', 'test'\], not 'train'"):
        load_splits(DataConfig(dataset=str(tmp_path / "dd"), val_samples=1), seed=0)


def test_a_question_quoting_the_image_token_gets_no_extra_image_slots():
    from conftest import tiny_vlm
    from nanovlm.data.processors import encode_prompt

    model = tiny_vlm()
    token = model.arch.cfg.image_token
    plain = encode_prompt(model.tokenizer, "What is this?", model.image_placeholder, token)
    quoted = encode_prompt(model.tokenizer, f"What is {token}this?", model.image_placeholder, token)
    assert quoted == plain and plain.count(model.image_token_id) == model.arch.image_tokens


def test_workers_deliver_the_same_samples_in_order_as_the_main_process():
    """Workers send each chunk as one tensor per field (and unreadable samples as None, in place)."""
    from nanovlm.train import sample_stream

    records = synthetic.generate(40, seed=4)
    records[5] = {"images": [b"not an image"], "texts": records[5]["texts"]}  # unreadable: None, counted later
    dataset = VQADataset(records, SampleProcessor.for_model(tiny_vlm(), 128, uint8_pixels=True))
    order = list(range(40))[::-1]
    here, there = list(sample_stream(dataset, order, 0)), list(sample_stream(dataset, order, 2))
    assert len(here) == len(there) == 40 and here[34] is None and there[34] is None
    for a, b in zip(here, there):
        assert (a is None) == (b is None)
        assert a is None or all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_uint8_images_are_normalised_by_the_model_exactly_as_by_the_processor():
    from conftest import model_batch

    model = tiny_vlm()
    records = synthetic.generate(3, seed=5)
    floats = [SampleProcessor.for_model(model, 128)(r) for r in records]
    uint8 = [SampleProcessor.for_model(model, 128, uint8_pixels=True)(r) for r in records]
    assert uint8[0]["pixel_values"].dtype == torch.uint8 and floats[0]["pixel_values"].dtype == torch.float32
    assert uint8[0]["pixel_values"].element_size() * 4 == floats[0]["pixel_values"].element_size()
    with torch.no_grad():
        assert torch.equal(model(**model_batch(model, uint8, rows=1, width=300)),
                           model(**model_batch(model, floats, rows=1, width=300)))
