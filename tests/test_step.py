"""The training step: skips non-finite updates on the device, traces without graph breaks, and
compiled blocks do not recompile once the batch shapes have been seen."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import model_batch
from nanovlm.config import ModelConfig, TrainConfig
from nanovlm.data.datasets import SampleProcessor
from nanovlm.data.packing import collate_rows, model_inputs, pack
from nanovlm.data.synthetic import generate
from nanovlm.model.vlm import build_vlm
from nanovlm.optim import build_optimizer
from nanovlm.step import autocast_for, compile_blocks, train_step, transformer_blocks
from test_packing import _samples

CPU = autocast_for(torch.device("cpu"))  # no autocast: fp32


def _fresh(language: str = "smollm"):
    torch.manual_seed(0)
    return build_vlm(ModelConfig(language_model=language, tiny=True, image_tokens=16)).train()


def test_a_non_finite_step_leaves_weights_and_optimizer_untouched():
    model = _fresh()
    optimizer = build_optimizer(model, TrainConfig())
    batch = model_batch(model, _samples(model, ["What colour?"], ["red"]))
    out = train_step(model, model, optimizer, [batch], CPU, 1.0)
    loss, grad_norm, skipped = out.tolist()
    assert math.isfinite(loss) and grad_norm > 0 and skipped == 0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in optimizer.state.values()]

    poisoned = {**batch, "images": batch["images"] * float("nan")}
    loss, grad_norm, skipped = train_step(model, model, optimizer, [poisoned], CPU,
                                          1.0).tolist()
    assert math.isnan(loss) and skipped == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "weights moved on a NaN step"
    assert all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, optimizer.state.values()))
    assert all(int(s["step"]) == 1 for s in optimizer.state.values())

    train_step(model, model, optimizer, [batch], CPU, 1.0)  # finite again: updates
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("language, attention", [("smollm", "sdpa"), ("gemma", "sdpa"), ("gemma", "flex_attention")])
def test_the_forward_pass_has_no_graph_breaks(language, attention):
    """sdpa: the CPU's kernel; flex_attention: the CUDA default (traced without grad: it has no CPU backward),
    whose block masks for Gemma's full and sliding-window layers are built in the traced forward."""
    model = _fresh(language)  # not the shared tiny_vlm: this switches its attention kernel
    model.lm.set_attn_implementation(attention)
    samples = _samples(model, ["What colour?", "Where is it?", "Shape?"], ["red", "top", "a square"])
    with torch.set_grad_enabled(attention != "flex_attention"):
        explained = torch._dynamo.explain(model)(**model_batch(model, samples, rows=2, width=170))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
    assert explained.graph_count == 1


def test_the_backward_pass_has_no_index_put_with_accumulate():
    """Image features are scattered into their slots and the loss rows picked with index_select, so no
    gradient goes through index_put(accumulate=True): its CUDA kernel serialises repeated indices (the
    text positions of a gather, the padding of the loss slots) and took ~10% of a step on an H200."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    accumulating = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in (aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default):
                if (args[3] if len(args) > 3 else kwargs.get("accumulate", False)):
                    accumulating.append(func)
            return func(*args, **kwargs)

    model = _fresh()
    samples = _samples(model, ["What colour?", "Where is it?", "Shape?"] * 3, ["red", "top", "a square"] * 3)
    batch = model_batch(model, samples, rows=5, width=170)  # padding: blank images and ignored loss slots
    assert batch["loss_targets"].eq(-100).any() and len(batch["images"]) > len(samples)
    with Record():
        model(**batch).backward()
    assert not accumulating
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.vision.parameters())


def _stream(model, seed: int, n: int, row_length: int):
    """Synthetic samples with answers of varying length, so rows hold a varying number of samples."""
    records = generate(n, seed=seed, image_size=model.arch.transform.size)
    g = torch.Generator().manual_seed(seed)
    for r in records:
        extra = " very" * int(torch.randint(0, 30, (1,), generator=g))
        r["texts"] = [{**r["texts"][0], "assistant": r["texts"][0]["assistant"] + extra}]
    process = SampleProcessor.for_model(model, row_length)
    return (process(r) for r in records)


def test_compiled_blocks_do_not_recompile_for_shapes_seen_before():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = _fresh()
    assert compile_blocks(model, backend="eager") == len(transformer_blocks(model)) > 0
    optimizer = build_optimizer(model, TrainConfig())
    row_length, rows = 256, 3

    def batches(seed: int, n: int) -> list[dict]:
        return [collate_rows(grouped, row_length, model.tokenizer.pad_token_id, model.image_token_id,
                             model.arch.image_tokens)
                for grouped, _, _ in pack(_stream(model, seed, n, row_length), rows, row_length)][:-1]  # endless in training

    def run(batches: list[dict]) -> None:
        for batch in batches:
            train_step(model, model, optimizer, [model_inputs(batch, torch.device("cpu"))], CPU, 1.0)

    warm_up, later = batches(seed=1, n=120), batches(seed=2, n=60)
    shapes = lambda bs: {tuple(b["images"].shape) for b in bs}  # noqa: E731 - the only shape that varies
    assert len(shapes(warm_up)) >= 2 and shapes(later) <= shapes(warm_up)  # a varying stream, buckets already seen
    run(warm_up)  # compiles the vision block once per image bucket and the LM block once (fixed rows)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert graphs == 1 + len(shapes(warm_up))
    torch._dynamo.config.error_on_recompile = True
    try:
        run(later)  # different samples, packed differently: no new compilation
    finally:
        torch._dynamo.config.error_on_recompile = False
        torch._dynamo.reset()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs


def test_an_older_checkpoints_optimizer_settings_do_not_switch_off_the_fused_kernel(tmp_path):
    from nanovlm.checkpoint import TrainerState, load_training_checkpoint, save_training_checkpoint

    model = _fresh()
    old = build_optimizer(model, TrainConfig())
    for group in old.param_groups:  # unfused, as checkpoints written before fused AdamW on CPU
        group["fused"] = None
    model(**model_batch(model, _samples(model, ["What colour?"], ["red"]))).backward()
    old.step()
    path = save_training_checkpoint(tmp_path, model, old, TrainerState(step=1))
    optimizer = build_optimizer(model, TrainConfig())
    load_training_checkpoint(path, model, optimizer)
    assert all(group["fused"] for group in optimizer.param_groups)
    assert all(int(s["step"]) == 1 for s in optimizer.state.values())


@pytest.mark.parametrize(("setting", "compiled", "expected"), [
    ("auto", False, True), ("auto", True, False),  # compiled blocks fuse RMSNorm / SwiGLU / RoPE themselves
    ("true", True, True), ("false", False, False)])
def test_liger_kernels_go_only_into_blocks_that_are_not_compiled_unless_asked(setting, compiled, expected):
    from nanovlm.step import use_fused_kernels

    assert use_fused_kernels(TrainConfig(fused_kernels=setting), compiled) is expected


@pytest.mark.parametrize(("settings", "device", "liger_installed", "expected"), [
    ({}, "cpu", False, "chunked"),  # compile auto: off on the CPU
    ({"compile": "true"}, "cpu", False, "compiled"),
    ({}, "cuda", True, "compiled"),  # compile auto: on; no host sync, where Liger's loss has one
    ({"compile": "false"}, "cuda", True, "liger"),
    ({"compile": "false"}, "cuda", False, "chunked"),
    ({"compile": "false", "cuda_graphs": True}, "cuda", True, "chunked"),  # a capture forbids Liger's sync
    ({"loss_kernel": "plain"}, "cuda", True, "plain")])
def test_the_loss_kernel_of_the_training_step(settings, device, liger_installed, expected, monkeypatch):
    from nanovlm.model import loss
    from nanovlm.step import loss_kernel_for, prepare

    monkeypatch.setattr(loss, "liger_available", lambda: liger_installed)
    assert loss_kernel_for(TrainConfig(**settings), torch.device(device)) == expected
    if device == "cpu":  # prepare puts it on the model
        model = _fresh()
        prepare(model, TrainConfig(**settings, attention="sdpa"), torch.device(device))
        assert model.loss_backend == expected


def test_cuda_graphs_are_off_by_default_and_refused_off_cuda():
    from nanovlm.config import ConfigError
    from nanovlm.step import cuda_graphs_for

    model = _fresh()
    assert cuda_graphs_for(model, TrainConfig(), torch.device("cpu")) is None
    with pytest.raises(ConfigError, match="cuda_graphs=true needs a CUDA GPU"):
        cuda_graphs_for(model, TrainConfig(cuda_graphs=True), torch.device("cpu"))


def test_cuda_graph_bookkeeping_gives_the_eager_steps(monkeypatch):
    """MicroStepGraphs on the CPU, with a stand-in for the CUDA parts: a "graph" whose replay runs the
    recorded micro-step again on its static inputs, as a replayed CUDA graph reads them. Per input shape:
    eager first, then recorded and replayed; inputs copied in before each replay; gradients accumulated
    into the same .grad tensors, also after something set them to None. The steps must equal the eager ones."""
    import contextlib

    from nanovlm.graphs import MicroStepGraphs

    class Replayed:
        def __init__(self, fn):
            self.fn = fn

        def replay(self):
            self.fn()

    monkeypatch.setattr(MicroStepGraphs, "_record", lambda self, fn: Replayed(fn))
    monkeypatch.setattr(MicroStepGraphs, "_eager", MicroStepGraphs.micro_step)
    samples = _samples(_fresh(), ["What colour?", "Where is the square in this picture?", "How many?", "Which?"],
                       ["red", "top left", "two", "the blue circle on the right"])
    batches = [model_batch(_fresh(), samples[:2]), model_batch(_fresh(), samples[2:]),
               model_batch(_fresh(), samples[1:])]
    dimmed = [{**b, "images": b["images"] * 0.5} for b in batches]  # same shapes, other values
    steps = [batches[:2], [batches[1], dimmed[2]], [dimmed[0], batches[2]], dimmed[::-1]]
    results = []
    for graphed in (False, True):
        model = _fresh()
        optimizer = build_optimizer(model, TrainConfig())
        graphs = MicroStepGraphs(model, autocast=contextlib.nullcontext()) if graphed else None
        outs = []
        for i, step in enumerate(steps):
            outs.append(train_step(model, model, optimizer, step, CPU, 1.0, graphs=graphs))
            if graphed and i == 1:
                grads = [p.grad for p in model.parameters()]
                model.zero_grad(set_to_none=True)  # the graphs' tensors come back, zeroed
        if graphed:
            assert all(p.grad is g for p, g in zip(model.parameters(), grads))
            shapes = {tuple(v.shape for v in b.values() if v is not None) for b in batches}
            assert len(shapes) == 3 and len(graphs.graphs) == 3  # each shape recorded once, at its second use
        results.append((torch.stack(outs), [p.detach().clone() for p in model.parameters()]))
    (eager, eager_params), (replayed, replayed_params) = results
    assert torch.equal(replayed, eager) and eager[:, 2].sum() == 0
    assert all(torch.equal(a, b) for a, b in zip(replayed_params, eager_params))


def test_an_uncompiled_cpu_step_never_imports_inductor():
    """Inductor costs a process 2 s to import: only a compiled step (or FlexAttention's block masks) may load it,
    not the model and step of a CPU run, an evaluation or a sweep worker."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys
        from conftest import model_batch
        from nanovlm.config import TrainConfig
        from nanovlm.optim import build_optimizer
        from nanovlm.step import train_step
        from test_packing import _samples
        from test_step import CPU, _fresh

        model = _fresh("gemma")
        batch = model_batch(model, _samples(model, ["What colour?", "Where?"], ["red", "top"]))
        train_step(model, model, build_optimizer(model, TrainConfig()), [batch], CPU, 1.0).tolist()
        print("torch._inductor.compile_fx" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parent, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
