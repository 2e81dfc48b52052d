"""linear_cross_entropy (nanovlm/model/loss.py): the chunked path against the full-logits reference, its memory bound,
its traceability by torch.compile, and (on a GPU) Liger-Kernel. Run: `python -m pytest -q tests/test_loss.py`."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from nanovlm.data.processors import IGNORE_INDEX
from nanovlm.model import loss as loss_fns
from nanovlm.model.loss import BACKENDS, linear_cross_entropy, pick_backend


def make(n: int, v: int, d: int, ignored: float = 0.3, dtype=torch.float64, device="cpu", seed: int = 0):
    """hidden (n, d) and weight (v, d) leaves that require grad, targets (n,) with a share of IGNORE_INDEX."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, d, generator=g, dtype=dtype).to(device).requires_grad_()
    weight = (torch.randn(v, d, generator=g, dtype=dtype) / d**0.5).to(device).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g)
    targets[torch.rand(n, generator=g) < ignored] = IGNORE_INDEX
    return hidden, weight, targets.to(device)


def loss_and_grads(backend: str, hidden, weight, targets, scale: float = 1.0, **kw):
    """Loss and the gradients of scale * loss w.r.t. whichever of hidden/weight require grad (None otherwise)."""
    loss = linear_cross_entropy(hidden, weight, targets, backend=backend, **kw)
    inputs = [x for x in (hidden, weight) if x.requires_grad]
    grads = iter(torch.autograd.grad(loss * scale, inputs))
    return loss, *(next(grads) if x.requires_grad else None for x in (hidden, weight))


def assert_matches(got, want, **tol):
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("n, v, d, chunk", [(37, 50, 8, 8),  # N not divisible by the chunk
                                            (10, 50, 8, 64),  # one chunk larger than N
                                            (64, 40, 16, 16),  # N divisible
                                            (1, 7, 3, 1024)])
@pytest.mark.parametrize("softcap", [None, 2.0])  # a small cap, so tanh is far from linear
@pytest.mark.parametrize("ignored", [0.0, 0.3])
def test_chunked_matches_plain_float64(n, v, d, chunk, softcap, ignored):
    hidden, weight, targets = make(n, v, d, ignored)
    want = loss_and_grads("plain", hidden, weight, targets, scale=3.0, softcap=softcap)
    got = loss_and_grads("chunked", hidden, weight, targets, scale=3.0, softcap=softcap, chunk_size=chunk)
    assert got[0].shape == ()
    assert_matches(got, want, rtol=1e-10, atol=1e-12)


def test_chunked_matches_plain_float32():
    hidden, weight, targets = make(300, 1000, 32, dtype=torch.float32)
    want = loss_and_grads("plain", hidden, weight, targets, softcap=30.0)
    got = loss_and_grads("chunked", hidden, weight, targets, softcap=30.0, chunk_size=128)
    assert got[0].dtype == torch.float32
    assert_matches(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", ["chunked", "plain"])
@pytest.mark.parametrize("softcap", [None, 2.0])
def test_all_targets_ignored_gives_exact_zero(backend, softcap):
    hidden, weight, targets = make(20, 30, 4, ignored=1.0)
    loss, grad_h, grad_w = loss_and_grads(backend, hidden, weight, targets, softcap=softcap, chunk_size=8)
    assert loss.item() == 0.0
    assert torch.count_nonzero(grad_h) == 0 and torch.count_nonzero(grad_w) == 0


def test_tied_embedding_accumulates_both_uses():
    def run(backend):
        torch.manual_seed(0)
        embed = torch.nn.Embedding(30, 8, dtype=torch.float64)
        mix = torch.nn.Linear(8, 8, dtype=torch.float64)
        ids = torch.randint(0, 30, (25,))
        targets = torch.roll(ids, -1).masked_fill(torch.arange(25) % 4 == 0, IGNORE_INDEX)
        hidden = torch.tanh(mix(embed(ids)))  # the same Parameter is the input embedding ...
        linear_cross_entropy(hidden, embed.weight, targets, softcap=5.0, backend=backend, chunk_size=7).backward()
        return embed.weight.grad, mix.weight.grad  # ... and the head: its grad sums both uses

    assert_matches(run("chunked"), run("plain"), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("frozen", ["weight", "hidden", "both"])
def test_frozen_inputs(frozen):
    hidden, weight, targets = make(33, 40, 8)
    hidden.requires_grad_(frozen == "weight")
    weight.requires_grad_(frozen == "hidden")
    if frozen == "both":
        with torch.no_grad():
            want = linear_cross_entropy(hidden, weight, targets, backend="plain")
            got = linear_cross_entropy(hidden, weight, targets, backend="chunked", chunk_size=8)
        assert not got.requires_grad
        torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
        return
    want = loss_and_grads("plain", hidden, weight, targets, softcap=3.0)
    got = loss_and_grads("chunked", hidden, weight, targets, softcap=3.0, chunk_size=8)
    assert_matches(got, want, rtol=1e-10, atol=1e-12)


def test_mixed_dtypes_promote_and_return_grads_in_input_dtypes():
    hidden, weight, targets = make(40, 64, 16, dtype=torch.float32)
    hidden_bf16 = hidden.detach().bfloat16().requires_grad_()
    got = loss_and_grads("chunked", hidden_bf16, weight, targets, chunk_size=16)
    # The reference upcasts by hand; the gradient w.r.t. hidden then comes back through the cast, in bfloat16.
    loss = linear_cross_entropy(hidden_bf16.float(), weight, targets, backend="plain")
    want = (loss, *torch.autograd.grad(loss, (hidden_bf16, weight)))
    assert got[1].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    assert_matches(got, want, rtol=1e-2, atol=1e-4)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def test_autocast_matches_the_plain_head_under_autocast():
    hidden, weight, targets = make(70, 300, 32, dtype=torch.float32)
    exact = loss_and_grads("plain", hidden, weight, targets)  # float32 throughout
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden, weight)  # what the model's head does: a bf16 matmul, then a float32 softmax
        assert logits.dtype == torch.bfloat16
        ref = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX)
        got = loss_and_grads("chunked", hidden, weight, targets, chunk_size=32)
    want = (ref, *torch.autograd.grad(ref, (hidden, weight)))
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.float32  # float32 loss, grads in param dtype
    for a, b, c in zip(got, want, exact):
        # As close to the autocast reference as bf16 rounding allows (chunked sums dW over chunks in float32) ...
        assert relative_error(a, b) < 1e-2
    # ... and the matmuls really ran in bf16: the gradients are off float32's by bf16-sized errors.
    assert relative_error(got[1], exact[1]) > 1e-4 and relative_error(got[2], exact[2]) > 1e-4


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an aten op returns (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.numel = max([self.numel] + [x.numel() for x in tree_leaves(out) if isinstance(x, torch.Tensor)])
        return out


def largest_tensor(backend: str, n: int, v: int, d: int, chunk: int, device: str, softcap: float | None = 30.0) -> int:
    if device == "meta":  # shape-only tensors: nothing is computed or allocated
        hidden = torch.empty(n, d, device="meta", requires_grad=True)
        weight = torch.empty(v, d, device="meta", requires_grad=True)
        targets = torch.empty(n, dtype=torch.long, device="meta")
    else:
        hidden, weight, targets = make(n, v, d, dtype=torch.float32, device=device)
    with LargestTensor() as mode:
        linear_cross_entropy(hidden, weight, targets, softcap=softcap, backend=backend, chunk_size=chunk).backward()
    assert hidden.grad.shape == hidden.shape and weight.grad.shape == weight.shape
    return mode.numel


def test_chunked_never_creates_n_by_v_logits():
    # Every tensor any op creates, in forward and backward, is seen by the dispatch mode: none is bigger than one
    # chunk of logits (chunk x V), though the same call with full logits would create N x V.
    assert largest_tensor("chunked", 2048, 50_000, 16, 256, "cpu", softcap=None) == 256 * 50_000  # ~1 s
    assert largest_tensor("plain", 2048, 50_000, 16, 256, "meta") >= 2048 * 50_000  # the detector does see them
    # Gemma 3's vocabulary, on meta tensors: the bound holds at real size too.
    assert largest_tensor("chunked", 8192, 262_144, 640, 1024, "meta") == 1024 * 262_144


def test_chunked_traces_without_graph_breaks():
    hidden, weight, targets = make(37, 50, 8, dtype=torch.float32)
    for backend in ("chunked", "auto"):  # "auto" picks "chunked" here: pick_backend must not break the graph
        explanation = torch._dynamo.explain(lambda h, w, t: linear_cross_entropy(h, w, t, backend=backend))(
            hidden, weight, targets)
        assert explanation.graph_break_count == 0, explanation.break_reasons
    # And a fullgraph compile (aot_eager: AOT autograd without inductor's slow codegen) gives eager's numbers.
    compiled = torch.compile(lambda h, w, t: linear_cross_entropy(h, w, t, softcap=5.0, backend="chunked",
                                                                  chunk_size=16), backend="aot_eager", fullgraph=True)
    got = loss_and_grads("plain", hidden, weight, targets, softcap=5.0)  # warm: no compile in the comparison
    loss = compiled(hidden, weight, targets)
    assert_matches((loss, *torch.autograd.grad(loss, (hidden, weight))), got, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("softcap", [None, 2.0])
@pytest.mark.parametrize("ignored", [0.0, 0.3, 1.0])
def test_compiled_matches_plain(softcap, ignored):
    # "chunked" with each chunk's math compiled by inductor (C++ here, Triton on a GPU): the same numbers.
    hidden, weight, targets = make(37, 50, 8, ignored)  # N = 4 chunks of 8 and one of 5
    want = loss_and_grads("plain", hidden, weight, targets, scale=3.0, softcap=softcap)
    got = loss_and_grads("compiled", hidden, weight, targets, scale=3.0, softcap=softcap, chunk_size=8)
    assert_matches(got, want, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # validation: no gradients computed
        assert_matches([linear_cross_entropy(hidden, weight, targets, softcap=softcap, backend="compiled")], want[:1],
                       rtol=1e-10, atol=1e-12)


def test_compiled_under_autocast_matches_chunked_and_does_not_recompile_per_row_count():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for n in (500, 250, 170, 90):  # chunks of 256 rows, of 244, 250, 170 and 90: one dynamic graph serves them all
        hidden, weight, targets = make(n, 320, 32, dtype=torch.float32, seed=n)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 logits into the compiled chunk, as on a GPU
            want = loss_and_grads("chunked", hidden, weight, targets, chunk_size=256)
            got = loss_and_grads("compiled", hidden, weight, targets, chunk_size=256)
        assert_matches(got, want, rtol=1e-5, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_unknown_backend_names_the_valid_ones():
    hidden, weight, targets = make(4, 5, 3)
    with pytest.raises(ValueError, match="'plain', 'chunked', 'compiled', 'liger'"):
        linear_cross_entropy(hidden, weight, targets, backend="fused")
    assert set(BACKENDS) == {"plain", "chunked", "compiled", "liger"}


def test_pick_backend(monkeypatch):
    assert pick_backend(torch.device("cpu")) == "chunked"
    monkeypatch.setattr(loss_fns, "liger_available", lambda: True)
    assert pick_backend(torch.device("cuda")) == "liger"
    assert pick_backend(torch.device("cpu")) == "chunked"
    monkeypatch.setattr(loss_fns, "liger_available", lambda: False)
    assert pick_backend(torch.device("cuda")) == "chunked"


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["chunked", "compiled", "liger"])
@pytest.mark.parametrize("softcap", [None, 30.0])
@pytest.mark.parametrize("ignored", [0.3, 1.0])
def test_cuda_backends_match_plain(backend, softcap, ignored):
    if backend == "liger":
        pytest.importorskip("liger_kernel")
    hidden, weight, targets = make(1000, 4096, 64, ignored, dtype=torch.float32, device="cuda")
    want = loss_and_grads("plain", hidden, weight, targets, scale=2.0, softcap=softcap)
    got = loss_and_grads(backend, hidden, weight, targets, scale=2.0, softcap=softcap, chunk_size=256)
    assert_matches(got, want, rtol=1e-4, atol=1e-6)
    if ignored == 1.0:
        assert got[0].item() == 0.0
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want = loss_and_grads("plain", hidden, weight, targets, softcap=softcap)
        got = loss_and_grads(backend, hidden, weight, targets, softcap=softcap, chunk_size=256)
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and (relative_error(a, b) < 1e-2 if b.any() else not a.any())


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["chunked", "compiled"])
def test_chunked_makes_no_host_sync_on_cuda(backend):
    hidden, weight, targets = make(1000, 4096, 64, dtype=torch.float32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):  # warm up cuBLAS, and compile, outside the check
        loss_and_grads(backend, hidden, weight, targets, softcap=30.0, chunk_size=256)
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = linear_cross_entropy(hidden, weight, targets, softcap=30.0, backend=backend, chunk_size=256)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
