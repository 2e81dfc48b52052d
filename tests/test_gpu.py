"""CUDA paths: the packed, compiled, sync-free training step with bf16 autocast, FlexAttention and the
fused loss; real-size memory. Skipped (with a reason) on machines without a GPU; run on one with
`python -m pytest -q -m gpu tests/test_gpu.py tests/test_loss.py tests/test_reports.py` (or scripts/gpu_check.sh)."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import model_batch
from experiments.presets import get_preset
from experiments.runner import run_experiment
from nanovlm import metrics as metric_names
from nanovlm.config import TrainConfig, override
from nanovlm.data.packing import collate_rows, model_inputs, pack
from nanovlm.optim import build_optimizer
from nanovlm.step import autocast_for, prepare, train_step

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda")


def test_tiny_run_on_cuda_packed_compiled_and_flex(tmp_path):
    cfg = override(get_preset("tiny"), {"max_steps": 20, "validation_steps": 10, "eval_interval": 10,
                                        "save_checkpoint_steps": 10, "train_samples": 400, "val_samples": 32,
                                        "device": "cuda", "output_dir": str(tmp_path)})  # compile/attention: auto
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = run_experiment(cfg, tracking_uri=uri)
    assert math.isfinite(result.metrics[metric_names.VAL_LOSS])
    assert result.metrics[metric_names.TRAIN_LOSS] < 6.0
    from mlflow import MlflowClient

    from nanovlm.flops import peak_tflops

    mfu = [m.value for m in MlflowClient(uri).get_metric_history(result.run_id, metric_names.MFU)]
    known = peak_tflops(torch.cuda.get_device_name()) is not None
    assert len(mfu) == (2 if known else 0) and all(0 < v < 1 for v in mfu)  # every log_interval (10 steps)


def _model(language: str):
    from test_step import _fresh

    return _fresh(language).to(CUDA)


@pytest.mark.parametrize("language", ["smollm", "gemma"])
def test_packed_flex_rows_match_one_by_one_on_cuda(language, monkeypatch):
    from test_packing import _samples

    # One row width for every call, as training has: FlexAttention compiled for a dynamic length found no
    # kernel for these 16-wide heads (H200, torch 2.11), a shape training never produces.
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "automatic_dynamic_shapes", False)
    model = _model(language)
    model.lm.set_attn_implementation("flex_attention")
    long_question = "Please look very carefully at the picture and describe the colour " * 3
    samples = _samples(model.cpu(), [long_question, "What colour?", "Where?"], ["red", "blue", "top"])
    model.to(CUDA)
    to_cuda = lambda b: {k: v.to(CUDA) for k, v in b.items()}  # noqa: E731
    width = sum(len(s["input_ids"]) for s in samples)
    packed = to_cuda(model_batch(model, samples, rows=1, width=width))
    counts = [int((s["labels"][1:] != -100).sum()) for s in samples]
    # bf16 autocast, as training runs it; each sample alone in a row of the same width (the rest is padding)
    with autocast_for(CUDA):
        alone = sum(model(**to_cuda(model_batch(model, [s], width=width))) * c
                    for s, c in zip(samples, counts)) / sum(counts)
        together = model(**packed)
    torch.testing.assert_close(together, alone, rtol=1e-2, atol=1e-2)  # fp32 exactness: tests/test_packing.py


def _batches(model, n_steps: int, seed: int):
    from test_step import _stream

    grouped = pack(_stream(model, seed, 40 * n_steps, 256), 4, 256)
    for rows, _, _ in list(grouped)[:n_steps]:
        batch = collate_rows(rows, 256, model.tokenizer.pad_token_id, model.image_token_id, model.arch.image_tokens)
        yield {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}


@pytest.mark.parametrize("language", ["smollm", "gemma"])
def test_compiled_step_is_sync_free_and_does_not_recompile(language):
    torch._dynamo.reset()
    model = _model(language)
    tc = TrainConfig(compile="true", attention="flex_attention")
    optimizer = build_optimizer(model, tc)
    step_model = prepare(model, tc, CUDA)
    assert model.loss_backend == "compiled"  # the default of a compiled step: Liger's loss would sync
    warm = list(_batches(model, 6, seed=1))
    for batch in warm:
        train_step(step_model, model, optimizer, [model_inputs(batch, CUDA)], autocast_for(CUDA), 1.0)
    torch.cuda.synchronize()
    torch._dynamo.config.error_on_recompile = True
    torch.cuda.set_sync_debug_mode("error")  # any device->host sync in the step raises
    try:
        outs = [train_step(step_model, model, optimizer, [model_inputs(b, CUDA)], autocast_for(CUDA), 1.0)
                for b in warm[::-1]]  # the same bucket shapes, other data order
    finally:
        torch.cuda.set_sync_debug_mode(0)
        torch._dynamo.config.error_on_recompile = False
    values = torch.stack(outs).tolist()
    assert all(math.isfinite(loss) and skipped == 0 for loss, _, skipped in values)


def test_cuda_graph_steps_match_the_eager_steps():
    from nanovlm.step import cuda_graphs_for

    batches = list(_batches(_model("smollm"), 6, seed=2))
    steps = [batches[0:3], batches[3:6], batches[2::-1], batches[3:6]]  # every batch twice: eager, then a graph
    results = {}
    for graphed in (False, True):
        torch._dynamo.reset()
        model = _model("smollm")  # the same initial weights each time
        tc = TrainConfig(compile="true", attention="flex_attention", cuda_graphs=graphed)
        optimizer = build_optimizer(model, tc)
        step_model = prepare(model, tc, CUDA)  # the compiled loss for both
        graphs = cuda_graphs_for(step_model, tc, CUDA)
        assert (graphs is not None) == graphed
        outs = [train_step(step_model, model, optimizer, [model_inputs(b, CUDA) for b in step], autocast_for(CUDA),
                           1.0, graphs=graphs) for step in steps]
        results[graphed] = torch.stack(outs).cpu()
        if graphed:
            keys = {tuple((k, tuple(v.shape)) for k, v in model_inputs(b, CUDA).items() if v is not None)
                    for b in batches}
            assert len(graphs.graphs) == len(keys)  # one graph per input shape, each replayed
    eager, replayed = results[False], results[True]
    assert replayed[:, 2].sum() == 0  # no step skipped
    # Loss and gradient norm of every step: the same gradients, and (steps 2-4) the same weights after AdamW.
    # Not bitwise: CUDA's index_add backward adds with atomics. Weights are not compared one by one: AdamW's
    # first steps move a weight by about lr x sign(gradient), which atomics' rounding can flip for a ~0 gradient.
    torch.testing.assert_close(replayed[:, :2], eager[:, :2], rtol=1e-3, atol=1e-4)


def test_fused_loss_backend_matches_plain_in_a_step():
    from nanovlm.model.loss import pick_backend

    model = _model("gemma")
    batch = model_inputs(next(_batches(model, 1, seed=3)), CUDA)
    losses = {}
    for backend in {"plain", "chunked", "compiled", pick_backend(CUDA)}:
        model.loss_backend = backend
        model.zero_grad()
        with autocast_for(CUDA):
            loss = model(**batch)
        loss.backward()
        losses[backend] = (loss.detach(), model.projector.proj.weight.grad.clone())
    for backend, (loss, grad) in losses.items():
        torch.testing.assert_close(loss, losses["plain"][0], rtol=2e-2, atol=2e-2, msg=backend)
        torch.testing.assert_close(grad, losses["plain"][1], rtol=5e-2, atol=1e-3, msg=backend)


@pytest.mark.parametrize("language", ["smollm", "gemma"])
def test_liger_kernels_match_the_plain_modules_in_a_step(language):
    pytest.importorskip("liger_kernel", reason="the [gpu] extra (liger-kernel) is not installed")
    from nanovlm.step import apply_fused_kernels

    model = _model(language)
    batch = model_inputs(next(_batches(model, 1, seed=4)), CUDA)
    results = []
    for patch in (False, True):
        if patch:
            assert apply_fused_kernels(model, CUDA) == [f"liger:{model.lm.config.model_type}"]
        model.zero_grad()
        with autocast_for(CUDA):
            loss = model(**batch)
        loss.backward()
        results.append((loss.detach(), model.projector.proj.weight.grad.clone()))
    (plain_loss, plain_grad), (liger_loss, liger_grad) = results
    torch.testing.assert_close(liger_loss, plain_loss, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(liger_grad, plain_grad, rtol=5e-2, atol=1e-3)


def test_real_size_step_fits_and_reports_memory():
    from nanovlm.model.vlm import build_vlm
    from nanovlm.optim import apply_freezing

    cfg = override(get_preset("dinov3_gemma"), {"random_init": True})
    model = build_vlm(cfg.model).to(CUDA).train()
    apply_freezing(model, cfg.train)
    optimizer = build_optimizer(model, cfg.train)
    assert optimizer.defaults.get("fused")
    tokens = model.arch.image_tokens
    size = model.arch.transform.size
    sample = {"input_ids": torch.tensor([model.image_token_id] * tokens + [5, 6, 7, 8]),
              "labels": torch.tensor([-100] * (tokens + 1) + [6, 7, 8]), "pixel_values": torch.randn(1, 3, size, size)}
    batch = model_inputs(collate_rows([[sample]], tokens + 4, 0, model.image_token_id, tokens), CUDA)
    torch.cuda.reset_peak_memory_stats()
    loss, _, skipped = train_step(model, model, optimizer, [batch], autocast_for(CUDA), 1.0).tolist()
    peak_gb = torch.cuda.max_memory_allocated() / 2**30
    print(f"dinov3_gemma batch 1 step: loss {loss:.3f}, peak {peak_gb:.2f} GiB")
    assert math.isfinite(loss) and skipped == 0 and peak_gb < 20
