"""The fast decoder (preallocated KV cache, rolling buffer, one-row GEMV) against the plain uncached forward."""

from __future__ import annotations

import itertools
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import with_switches

from gptlab import GPT, GPTConfig, autotune
from gptlab.generate import (
    KVCache,
    _decode_linears,
    _gemv_linear,
    cast_weights,
    filter_logits,
    generate,
    make_caches,
)


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=32)
    return GPTConfig(**{**base, **kw})


def model_of(cfg: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).eval()


@torch.no_grad()
def greedy_uncached(model: GPT, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The reference: the whole sequence through the plain forward for every new token, no cache."""
    for _ in range(n):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


# Every switch, each combined with the others at least once; windows shorter than the generation.
COMBOS = [
    dict(),
    dict(pos_emb="rope"),
    dict(n_kv_head=2, pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False),
    dict(n_kv_head=1, window=6),
    dict(n_kv_head=2, window=5, pos_emb="rope"),
    dict(n_kv_head=1, window=3, pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False),
    dict(window=1, mlp="swiglu"),
    dict(window=8, pos_emb="rope", tie_embeddings=False),
    dict(head_dim=12, n_kv_head=2, window=5, pos_emb="rope"),  # heads of 12 channels in a 32-dim model (Qwen3)
]


@pytest.mark.parametrize("kw", COMBOS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "gpt2")
def test_greedy_fast_equals_uncached(kw):
    m = model_of(tiny(**kw))
    idx = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    n = 30  # far past every window: the rolling buffer wraps several times
    assert torch.equal(generate(m, idx, n, temperature=0), greedy_uncached(m, idx, n))


def test_greedy_fast_equals_uncached_for_each_switch(switch):
    # Each variant of config.SWITCHES alone, and all of them (tests/conftest.py); the window (block_size / 4 = 16)
    # is shorter than the 37 positions generated.
    m = model_of(with_switches(tiny(), switch))
    idx = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(generate(m, idx, 30, temperature=0), greedy_uncached(m, idx, 30))


def test_windowed_rope_decodes_past_block_size_like_uncached():
    m = model_of(tiny(pos_emb="rope", window=6, block_size=16, n_kv_head=2))
    idx = torch.randint(0, 97, (1, 4), generator=torch.Generator().manual_seed(2))
    assert torch.equal(m.generate(idx, 40, temperature=0), greedy_uncached(m, idx, 40))


@pytest.mark.parametrize("kw", [dict(n_kv_head=1, window=6), dict(n_kv_head=2), dict(window=100)])
def test_kv_cache_holds_kv_heads_and_window_slots(kw):
    cfg = tiny(**kw)
    caches = make_caches(model_of(cfg), batch=3, max_len=50)
    slots = min(cfg.window or 50, 50)
    assert len(caches) == cfg.n_layer
    for c in caches:
        assert c.k.shape == c.v.shape == (3, cfg.n_kv_head, slots, cfg.head_dim)
        assert c.rolling == (slots < 50)


@pytest.mark.parametrize("out_features,bias,shape", [(50, True, (1, 1)), (97, False, (1,)), (40, True, ())])
def test_gemv_linear_matches_f_linear(out_features, bias, shape, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # force the split path, with a tail of rows
    layer = nn.Linear(24, out_features, bias=bias)
    x = torch.randn(*shape, 24)
    with torch.no_grad():
        y = _gemv_linear(layer, x)
    assert y.shape == (*shape, out_features)
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=1e-5)


def test_gemv_linear_leaves_batches_and_autograd_to_f_linear():
    layer = nn.Linear(8, 16)
    x = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(_gemv_linear(layer, x), F.linear(x, layer.weight, layer.bias))
    y = _gemv_linear(layer, torch.randn(1, 8))
    assert y.requires_grad  # autograd on: the ordinary path, so training is untouched


def test_gemv_patch_is_undone_even_on_error(monkeypatch):
    autotune.reset()  # measured as a win for the split path, so the layers are patched inside the block
    monkeypatch.setattr(autotune, "fastest_time", lambda name, fn: 0.5 if name == "gemv" else 1.0)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    m = model_of(tiny())
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    with pytest.raises(RuntimeError), _decode_linears(m):
        assert all("forward" in mod.__dict__ for mod in linears)
        raise RuntimeError
    assert not any("forward" in mod.__dict__ for mod in linears)
    m.generate(torch.zeros(1, 2, dtype=torch.long), 3, temperature=0)
    autotune.reset()
    assert not any("forward" in mod.__dict__ for mod in linears)


def test_sampled_generation_is_reproducible_and_shape():
    m = model_of(tiny(n_kv_head=2, window=4, pos_emb="rope"))
    idx = torch.zeros(2, 3, dtype=torch.long)
    runs = [m.generate(idx, 12, top_k=5, top_p=0.9, generator=torch.Generator().manual_seed(0)) for _ in range(2)]
    assert runs[0].shape == (2, 15) and torch.equal(*runs)
    m.train()
    m.generate(idx, 2)
    assert m.training  # generate switches to eval for decoding and back


@pytest.mark.parametrize("B,T", list(itertools.product([1, 3], [1, 5])))
def test_batched_greedy_rows_are_independent(B, T):
    m = model_of(tiny(n_kv_head=2, window=5, pos_emb="rope"))
    idx = torch.randint(0, 97, (B, T), generator=torch.Generator().manual_seed(3))
    full = m.generate(idx, 10, temperature=0)
    for b in range(B):
        assert torch.equal(full[b : b + 1], m.generate(idx[b : b + 1], 10, temperature=0))


@pytest.mark.parametrize("top_k, top_p", [(None, 0.5), (None, 0.9), (None, 0.75), (None, 0.01), (5, None), (1, None),
                                          (5, 0.8), (3, 0.5)])
def test_top_k_top_p_keep_what_transformers_keeps(top_k: int | None, top_p: float | None) -> None:
    """The same tokens survive as with transformers' TopKLogitsWarper then TopPLogitsWarper; on exact ties at
    the cut the same number survive (which of the tied tokens is arbitrary in both)."""
    lp = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(0)
    smooth = torch.randn(16, 50, generator=g) * 3
    ties = [torch.zeros(2, 4), torch.tensor([[2.0, 2.0, 1.0, 1.0, 0.0]]),
            torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()]
    for logits in [smooth, *ties]:
        ref = logits.clone()
        if top_k is not None:
            ref = lp.TopKLogitsWarper(top_k)(None, ref)
        if top_p is not None:
            ref = lp.TopPLogitsWarper(top_p)(None, ref)
        ours = filter_logits(logits, top_k, top_p)
        if logits is smooth:
            assert torch.equal(ours.isinf(), ref.isinf())
        else:
            assert torch.equal(ours.isfinite().sum(-1), ref.isfinite().sum(-1)), (logits, top_k, top_p)


@pytest.mark.parametrize("window,max_len", [(None, 40), (5, 40), (1, 40), (7, 7), (40, 30)])
def test_cache_returns_every_position_a_query_of_the_chunk_sees(window, max_len):
    """The cache only stores; whatever the chunking, it must hand each query every key `visible` allows it,
    once, with the right position (keys here are their own positions)."""
    from gptlab.attention import visible

    rng = random.Random(window or 0)
    cache = KVCache(1, 1, 1, max_len, window)
    pos = 0
    while pos < max_len:
        T = min(rng.choice([1, 1, 2, 3, 9]), max_len - pos)
        x = torch.arange(pos, pos + T, dtype=torch.float32).view(1, 1, T, 1)
        keys, values, k_pos = cache.update(x, x, pos)
        assert torch.equal(keys[0, 0, :, 0].long(), k_pos) and torch.equal(values, keys)
        assert len(set(k_pos.tolist())) == len(k_pos)  # no position twice
        assert (k_pos >= 0).all()  # only slots that hold a position
        for q in range(pos, pos + T):
            needed = {j for j in range(q + 1) if visible(torch.tensor(q), torch.tensor(j), window)}
            assert needed <= set(k_pos.tolist()), (q, needed - set(k_pos.tolist()))
        if T == 1:  # attention skips the mask for one query: the cache must hand it exactly what it sees
            assert set(k_pos.tolist()) == needed
        pos += T


def test_a_full_cache_refuses_positions_past_its_end():
    cache = KVCache(1, 1, 1, max_len=4, window=None)
    x = torch.zeros(1, 1, 4, 1)
    cache.update(x, x, 0)
    with pytest.raises(ValueError, match="the cache holds 4 positions; positions 4..4 do not fit"):
        cache.update(x[:, :, :1], x[:, :, :1], 4)


def test_cast_weights_keeps_rope_frequencies_and_ties(switch):
    # Every variant alone and "modern": the model runs in bf16 weights (MoE routing, MLA's latent cache and all),
    # its caches follow the weights, RoPE's frequencies stay fp32, and a decode in bf16 stays near fp32's logits.
    m = model_of(with_switches(tiny(), switch))
    idx = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, _ = m(idx)
        cast_weights(m, torch.bfloat16)
        out, _ = m(idx)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    if hasattr(m, "rotary"):
        assert m.rotary.inv_freq.dtype == torch.float32
    if m.config.tie_embeddings:
        assert m.lm_head.weight is m.transformer.wte.weight
    assert {c.k.dtype for c in make_caches(m, 1, 16)} == {torch.bfloat16}
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)
    # Decoding in bf16: each token the cached steps picked is the best (up to bf16 rounding) under the bf16
    # model's own full forward over the sequence they produced.
    seq = generate(m, idx, 12, temperature=0)
    with torch.no_grad():
        full = m(seq[:, :-1])[0][:, idx.size(1) - 1 :].float()
    picked = full.gather(-1, seq[:, idx.size(1) :, None]).squeeze(-1)
    torch.testing.assert_close(picked, full.max(-1).values, atol=0.05, rtol=0)


def test_cast_weights_keeps_deepseeks_router_fp32():
    # DeepSeek-V3's choice bias (a buffer) and sigmoid router weight choose experts: like the loader (hf.py) and
    # transformers, casting the weights leaves them fp32 and to the bit, where rounded to bf16 they would choose other
    # experts. A softmax router (Mixtral's, Qwen3-MoE's) is cast with the rest, as in transformers.
    m = model_of(tiny(n_expert=4, expert_top_k=2, moe_score="sigmoid", moe_choice_bias=True))
    for block in m.transformer.h:
        block.mlp.choice_bias.copy_(torch.linspace(-0.3, 0.3001, 4))
    routers = [b.mlp.router.weight.clone() for b in m.transformer.h]
    cast_weights(m, torch.bfloat16)
    assert all(torch.equal(b.mlp.choice_bias, torch.linspace(-0.3, 0.3001, 4)) for b in m.transformer.h)
    assert all(torch.equal(b.mlp.router.weight, r) for b, r in zip(m.transformer.h, routers, strict=True))
    assert {p.dtype for name, p in m.named_parameters() if ".router." not in name} == {torch.bfloat16}
    assert generate(m, torch.zeros(1, 2, dtype=torch.long), 3).shape == (1, 5)
    softmax = cast_weights(model_of(tiny(n_expert=4, expert_top_k=2)), torch.bfloat16)
    assert {p.dtype for p in softmax.parameters()} == {torch.bfloat16}


def test_generated_ids_are_ordinary_tensors_autograd_can_use():
    # generate runs under inference_mode; what it returns must still feed a training step (embedding's backward
    # saves its indices, which an inference tensor refuses).
    m = model_of(tiny())
    out = generate(m, torch.zeros(1, 3, dtype=torch.long), 5, temperature=0)
    assert not out.is_inference()
    m.train()
    _, loss = m(out[:, :-1], out[:, 1:])
    loss.backward()
    assert m.transformer.wte.weight.grad is not None
