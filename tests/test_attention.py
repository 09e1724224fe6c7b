"""Every sliding-window attention path is exact against the naive masked softmax: values and gradients, fp32."""

from __future__ import annotations

import random
import shutil
import warnings

import pytest
import torch

from gptlab import autotune
from gptlab.attention import (
    _SlidingWindowFlashCPU,
    attention,
    banded_sliding_window_attention,
    flex_sliding_window_attention,
    matmul_causal_attention,
    naive_attention,
    sliding_window_attention,
    window_mask,
)

# (batch, heads, kv heads, T, head dim, window): T not a multiple of the window, window > T, window = T,
# window = 1, window = T - 1, a window of one 32-query band block, MQA and GQA, batches whose rows meet.
CASES = [
    (1, 2, 2, 16, 8, 4),
    (2, 4, 2, 37, 8, 5),
    (2, 6, 1, 33, 16, 1),
    (1, 2, 2, 10, 8, 9),
    (1, 2, 1, 5, 4, 30),
    (1, 2, 2, 12, 4, 12),
    (3, 2, 1, 50, 8, 3),
    (2, 4, 4, 70, 8, 32),
    (2, 4, 2, 100, 8, 40),
    (1, 3, 3, 129, 8, 64),
    (2, 2, 2, 65, 8, 2),
    (2, 4, 2, 200, 8, 64),
    (3, 2, 1, 150, 4, 66),
]


def _random_cases(n: int, seed: int = 0) -> list[tuple[int, ...]]:
    """A seeded sweep in the spirit of hypothesis: random shapes, windows from 1 to past T."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        kv = rng.choice([1, 2, 3])
        heads = kv * rng.choice([1, 2])
        T = rng.randint(2, 90)
        cases.append((rng.randint(1, 3), heads, kv, T, rng.choice([4, 8, 16]), rng.randint(1, T + 3)))
    return cases


def _inputs(B, H, Hkv, T, D, seed=0, bthd=True):
    g = torch.Generator().manual_seed(seed)
    if bthd:  # the memory order the model's projections produce
        q = torch.randn(B, T, H, D, generator=g).transpose(1, 2)
    else:
        q = torch.randn(B, H, T, D, generator=g)
    k = torch.randn(B, Hkv, T, D, generator=g)
    v = torch.randn(B, Hkv, T, D, generator=g)
    return [x.requires_grad_() for x in (q, k, v)], torch.randn(B, H, T, D, generator=g)


def _check_exact(fn, case, bthd=True, tol=1e-5):
    B, H, Hkv, T, D, w = case
    (q, k, v), grad_out = _inputs(B, H, Hkv, T, D, bthd=bthd)
    ref = naive_attention(q, k, v, w)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad_out)
    y = fn(q, k, v, w)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, atol=tol, rtol=tol)
    for got, want in zip(torch.autograd.grad(y, (q, k, v), grad_out), ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("case", CASES + _random_cases(25))
def test_cpu_flash_swa_exact_values_and_grads(case):
    _check_exact(_SlidingWindowFlashCPU.apply, case)


@pytest.mark.parametrize("case", CASES[:6])
def test_cpu_flash_swa_exact_on_head_major_layout(case):
    _check_exact(_SlidingWindowFlashCPU.apply, case, bthd=False)


@pytest.mark.parametrize("case", CASES)
def test_dispatch_exact(case):
    _check_exact(sliding_window_attention, case)


@pytest.mark.parametrize("case", CASES + _random_cases(10, seed=1))
def test_banded_fallback_exact(case):
    _check_exact(banded_sliding_window_attention, case)


@pytest.mark.parametrize("case", CASES[:6])
def test_flex_block_mask_matches_naive(case):
    # The CUDA path's mask, run through flex_attention's eager reference on CPU (forward only there).
    B, H, Hkv, T, D, w = case
    (q, k, v), _ = _inputs(B, H, Hkv, T, D)
    q, k, v = q.detach(), k.detach(), v.detach()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile": intended here
        y = flex_sliding_window_attention(q, k, v, w, compiled=False)
    torch.testing.assert_close(y, naive_attention(q, k, v, w), atol=1e-5, rtol=1e-5)


def test_bf16_cpu_path_close_to_fp32_reference():
    (q, k, v), grad_out = _inputs(2, 4, 2, 70, 16)
    w = 16
    ref = naive_attention(q.float(), k.float(), v.float(), w)
    qb, kb, vb = (x.detach().bfloat16().requires_grad_() for x in (q, k, v))
    y = sliding_window_attention(qb, kb, vb, w)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, atol=3e-2, rtol=3e-2)
    y.backward(grad_out.bfloat16())
    assert all(torch.isfinite(x.grad).all() for x in (qb, kb, vb))


def test_dropout_routes_to_banded_path_and_keeps_the_window():
    # With dropout the output is random, but the value of a token outside every window must not leak in.
    torch.manual_seed(0)
    B, H, T, D, w = 1, 2, 24, 8, 4
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    v2 = v.clone()
    v2[:, :, 0] += 100.0  # position 0 is only visible to queries 0 .. w-1
    torch.manual_seed(1)
    a = sliding_window_attention(q, k, v, w, dropout_p=0.3)
    torch.manual_seed(1)
    b = sliding_window_attention(q, k, v2, w, dropout_p=0.3)
    torch.testing.assert_close(a[:, :, w:], b[:, :, w:])


def test_banded_dropout_drops_and_rescales_attention_weights():
    # Query 0 sees key 0 alone (weight 1): with dropout its output is v_0 / (1 - p) or exactly 0, never v_0.
    torch.manual_seed(0)
    B, H, T, D, w, p = 4, 8, 24, 8, 4, 0.5
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    y = sliding_window_attention(q, k, v, w, dropout_p=p)[:, :, 0]
    kept = torch.isclose(y, v[:, :, 0] / (1 - p)).all(-1)
    dropped = (y == 0).all(-1)
    assert (kept | dropped).all() and kept.any() and dropped.any()


def test_window_mask_convention():
    m = window_mask(5, 5, 2)
    assert m.tolist()[3] == [False, False, True, True, False]


@pytest.mark.parametrize(
    "case", [(2, 4, 2, 100, 8, 8), (1, 2, 1, 77, 4, 5), (3, 2, 2, 40, 4, 3), (2, 2, 1, 300, 4, 64)]
)
def test_cpu_flash_swa_exact_when_work_is_split_into_many_kernel_calls(case, monkeypatch):
    import gptlab.attention as attention

    monkeypatch.setattr(attention, "_CHUNK_ROWS", 16)  # long sequences run in chunks; force it on short ones
    _check_exact(_SlidingWindowFlashCPU.apply, case)


@pytest.mark.parametrize("case", CASES + _random_cases(15, seed=2))
def test_cpu_flash_swa_exact_with_half_window_chunks_in_backward(case, monkeypatch):
    import gptlab.attention as attention

    monkeypatch.setattr(attention, "_HALF_CHUNKS_FROM", 2)  # the w/2 decomposition for every even window
    _check_exact(_SlidingWindowFlashCPU.apply, case)


@pytest.mark.parametrize("case", [(3, 2, 1, 61, 4, 6), (2, 4, 2, 90, 8, 10), (3, 2, 2, 100, 4, 8)])
@pytest.mark.parametrize("chunk_rows", [6, 13, 40])
def test_cpu_flash_swa_exact_with_half_chunks_split_over_calls(case, chunk_rows, monkeypatch):
    import gptlab.attention as attention

    # The dense part of the w/2 backward, split into calls of a few chunks, some starting a new sequence.
    monkeypatch.setattr(attention, "_HALF_CHUNKS_FROM", 2)
    monkeypatch.setattr(attention, "_CHUNK_ROWS", chunk_rows)
    _check_exact(_SlidingWindowFlashCPU.apply, case)


@pytest.mark.skipif(not (shutil.which("gcc") or shutil.which("cc")), reason="torch.compile on CPU needs a C compiler")
def test_compiled_flex_keeps_compiling_past_dynamos_default_budget() -> None:
    """A kernel per padded sequence length: the 9th length must still be compiled, not run through flex's eager
    O(T^2) reference (dynamo's default recompile limit is 8). Lengths are not multiples of flex's block size."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    with torch.no_grad():
        for T in range(40, 40 + 9 * 128, 128):
            q, k, v = (torch.randn(1, 2, T, 16) for _ in range(3))
            y = flex_sliding_window_attention(q, k, v, 16)
            torch.testing.assert_close(y, naive_attention(q, k, v, 16), atol=1e-5, rtol=1e-5)
    assert counters["frames"]["ok"] == 9 and not counters["unimplemented"]  # no "recompile limit exceeded"


# --- full causal attention in bf16 on CPU: SDPA or bf16 matmuls, by measurement --------------------------------------


@pytest.mark.parametrize("case", [(2, 4, 2, 37, 8), (1, 6, 6, 64, 16), (2, 6, 1, 33, 16), (3, 2, 2, 5, 4)])
def test_matmul_causal_attention_exact_in_fp32(case):
    # The same function in fp32 against the naive reference, values and gradients (GQA and MQA included).
    B, H, Hkv, T, D = case
    _check_exact(lambda q, k, v, w: matmul_causal_attention(q, k, v), (B, H, Hkv, T, D, T))


def test_matmul_causal_attention_scale_and_value_width():
    (q, k, v), _ = _inputs(2, 4, 2, 21, 8)
    v = torch.randn(2, 2, 21, 12)  # MLA: values of another width than the keys
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True)
    torch.testing.assert_close(matmul_causal_attention(q, k, v, scale=0.3), want, atol=1e-5, rtol=1e-5)


def test_matmul_causal_attention_dropout_drops_and_rescales():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    assert not torch.equal(matmul_causal_attention(q, k, v, dropout_p=0.5), matmul_causal_attention(q, k, v))
    v = torch.ones_like(v)  # every output is a sum of kept weights / (1 - p): their mean stays 1
    assert matmul_causal_attention(q, k, v, dropout_p=0.5).mean().item() == pytest.approx(1.0, abs=0.1)


@pytest.mark.parametrize("winner", ["plain", "matmul"])
def test_bf16_causal_attention_is_chosen_by_median_timing_only_in_bf16(monkeypatch, winner):
    calls: list[str] = []
    times = {"plain": 1.0, "matmul": 0.5 if winner == "matmul" else 2.0}
    monkeypatch.setattr(autotune, "median_time", lambda name, fn: (calls.append(name), times[name])[1])
    monkeypatch.setattr(autotune, "fastest_time", lambda name, fn: pytest.fail("timed by its best run"))
    autotune.reset()
    try:
        (q, k, v), grad_out = _inputs(2, 4, 2, 40, 8)
        ref = naive_attention(q, k, v, None)
        attention(q, k, v)  # fp32: SDPA, never timed
        assert calls == []
        qb, kb, vb = (x.detach().bfloat16().requires_grad_() for x in (q, k, v))
        y = attention(qb, kb, vb)
        assert sorted(calls) == ["matmul", "plain"]
        assert [(op, best) for op, _, best, _ in autotune.choices()] == [("cpu bf16 causal attention", winner)]
        torch.testing.assert_close(y.float(), ref, atol=3e-2, rtol=3e-2)
        y.backward(grad_out.bfloat16())
        assert all(torch.isfinite(x.grad).all() for x in (qb, kb, vb))
        attention(qb, kb, vb)
        assert len(calls) == 2  # remembered for the shape
    finally:
        autotune.reset()


def test_bf16_training_step_through_either_attention_path(monkeypatch):
    # Under bf16 autocast the model reaches the bf16 path (its attention inputs are bf16), and the step's loss and
    # gradients agree between the two paths to bf16 rounding.
    from gptlab import GPT, GPTConfig

    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=2, n_head=4, n_embd=32, n_kv_head=2,
                          pos_emb="rope"))
    x = torch.randint(0, 50, (2, 32), generator=torch.Generator().manual_seed(0))
    results = []
    for winner in ("plain", "matmul"):
        autotune.reset()
        monkeypatch.setattr(autotune, "median_time", lambda name, fn, w=winner: 0.5 if name == w else 1.0)
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x, x)[1]
        loss.backward()
        assert [best for op, _, best, _ in autotune.choices() if op == "cpu bf16 causal attention"] == [winner]
        results.append((loss.item(), model.transformer.wte.weight.grad.clone()))
    autotune.reset()
    assert results[0][0] == pytest.approx(results[1][0], abs=2e-2)
    torch.testing.assert_close(results[0][1], results[1][1], atol=2e-2, rtol=0.1)
