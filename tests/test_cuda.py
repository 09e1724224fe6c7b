"""The CUDA-only paths (flex_attention SWA, torch.compile of the model and of the decode step), each against an
independent path. Skipped without a GPU; on one, `pytest tests/test_cuda.py` is the first thing to run."""

from __future__ import annotations

import pytest
import torch

from gptlab import GPT, GPTConfig
from gptlab.attention import naive_attention, sliding_window_attention
from gptlab.generate import generate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _model_layout(B: int, T: int, H: int, Hkv: int, D: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """q, k, v as the model makes them: strided views of one fused projection output (and that output)."""
    fused = torch.randn(B, T, (H + 2 * Hkv) * D, device="cuda", dtype=dtype, requires_grad=True)
    q, k, v = fused.split([H * D, Hkv * D, Hkv * D], dim=-1)
    q, k, v = (x.view(B, T, -1, D).transpose(1, 2) for x in (q, k, v))
    return fused, q, k, v


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_flex_swa_matches_the_naive_reference(dtype: torch.dtype, tol: float, n_kv_head: int) -> None:
    torch.manual_seed(0)
    fused, q, k, v = _model_layout(2, 300, 4, n_kv_head, 64, dtype)  # T not a multiple of the 128 blocks
    y = sliding_window_attention(q, k, v, 64)
    ref = naive_attention(q, k, v, 64)
    g = torch.randn_like(y)
    (dy,) = torch.autograd.grad(y, fused, g)
    (dref,) = torch.autograd.grad(ref, fused, g)
    assert (y.float() - ref.float()).abs().max() < tol
    assert (dy.float() - dref.float()).abs().max() < tol * 10


def test_compiled_windowed_model_matches_the_cpu_kernel() -> None:
    """--trainer.compile=True with RoPE + window + GQA: compiled flex inside a compiled model, against the CPU
    flash-band kernel on the same weights."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=65, block_size=256, n_layer=2, n_head=4, n_embd=128, pos_emb="rope", window=32,
                    n_kv_head=2)
    model = GPT(cfg)
    x = torch.randint(0, 65, (4, 256))
    loss_cpu = model(x, x)[1]
    (grad_cpu,) = torch.autograd.grad(loss_cpu, model.lm_head.weight)
    model.cuda()
    loss = torch.compile(model)(x.cuda(), x.cuda())[1]
    (grad,) = torch.autograd.grad(loss, model.lm_head.weight)
    assert abs(loss.item() - loss_cpu.item()) < 1e-4
    assert (grad.cpu() - grad_cpu).abs().max() < 1e-4


@pytest.mark.parametrize("window", [None, 8])
def test_compiled_decode_step_equals_eager_and_compiles_few_graphs(window: int | None) -> None:
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=65, block_size=128, n_layer=2, n_head=4, n_embd=64, n_kv_head=2,
                    pos_emb="rope" if window else "learned", window=window)
    model = GPT(cfg).cuda().eval()
    idx = torch.randint(0, 65, (1, 5), device="cuda")
    torch._dynamo.reset()
    counters.clear()
    for n in (40, 44):  # caches are sized in steps of 256 when compiled: a new length reuses the graphs
        out = generate(model, idx, n, temperature=0, compile=True)
        assert torch.equal(out, generate(model, idx, n, temperature=0))
    # Until the rolling buffer is full the visible length varies; after that one graph serves every slot.
    assert counters["stats"]["unique_graphs"] <= 4


def test_sample_dtype_auto_decodes_in_bf16_on_a_gpu_that_has_it() -> None:
    """gptlab sample --dtype=auto: bf16 weights on a GPU with native bf16; each token the cached decode picks is
    the best (to bf16 rounding) under the bf16 model's own full forward."""
    from gptlab.generate import cast_weights, decode_dtype

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=128, n_layer=2, n_head=4, n_embd=64, n_kv_head=2,
                          pos_emb="rope")).cuda().eval()
    assert decode_dtype(model) == (torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False)
                                   else torch.float32)
    cast_weights(model, torch.bfloat16)
    idx = torch.randint(0, 65, (2, 5), device="cuda")
    seq = generate(model, idx, 20, temperature=0)
    with torch.no_grad():
        full = model(seq[:, :-1])[0][:, 4:].float()
    picked = full.gather(-1, seq[:, 5:, None]).squeeze(-1)
    torch.testing.assert_close(picked, full.max(-1).values, atol=0.05, rtol=0)
