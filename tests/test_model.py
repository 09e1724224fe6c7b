"""The model's switches proven against independent references: naive formulas, not shapes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import with_switches

from gptlab import GPT, GPTConfig
from gptlab.attention import naive_attention
from gptlab.generate import make_caches, sample
from gptlab.model import Rotary, activate, apply_rotary


@pytest.fixture(autouse=True)
def _no_grad():
    # Scoped to this module's tests: a module-level set_grad_enabled(False) would leak into every test file.
    with torch.no_grad():
        yield


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=32)
    base.update(kw)
    return GPTConfig(**base)


def model_of(cfg: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(cfg).eval()
    # Non-trivial norm parameters, so a norm applied in the wrong place shows up.
    for name, p in m.named_parameters():
        if "ln_" in name:
            p.add_(0.1 * torch.randn_like(p))
    return m


def qkv_of(attn, x, rope=None):
    """q, k, v of a CausalSelfAttention for input x, computed by hand from its weights (independent path)."""
    B, T, _ = x.shape
    hd, H, Hkv = attn.head_dim, attn.n_head, attn.n_kv_head
    W, b = attn.c_attn.weight, attn.c_attn.bias
    out = x @ W.T + (b if b is not None else 0)
    q = out[..., : H * hd].reshape(B, T, H, hd).permute(0, 2, 1, 3)
    k = out[..., H * hd : (H + Hkv) * hd].reshape(B, T, Hkv, hd).permute(0, 2, 1, 3)
    v = out[..., (H + Hkv) * hd :].reshape(B, T, Hkv, hd).permute(0, 2, 1, 3)
    return q, k, v


# --- RoPE -------------------------------------------------------------------------------------------------


def complex_rope(x: torch.Tensor, pos: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as complex multiplication: channels c and c + d/2 form z = a + ib, rotated by e^{i pos theta^(-2c/d)}."""
    d = x.size(-1)
    freqs = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double())
    z = z * torch.polar(torch.ones_like(freqs), pos.double()[:, None] * freqs)
    return torch.cat([z.real, z.imag], dim=-1).float()


def test_rope_equals_complex_rotation():
    rot = Rotary(16, 10000.0)
    x = torch.randn(2, 3, 10, 16)
    pos = torch.arange(5, 15)
    cos, sin = rot(pos)
    torch.testing.assert_close(apply_rotary(x, cos, sin), complex_rope(x, pos, 10000.0), atol=1e-5, rtol=1e-5)


def test_rope_is_a_rotation_per_head_and_scores_depend_only_on_offset():
    rot = Rotary(32, 500.0)
    q, k = torch.randn(32), torch.randn(32)

    def rotated(v, p):
        cos, sin = rot(torch.tensor([p]))
        return apply_rotary(v.view(1, 1, 1, -1), cos, sin).view(-1)

    # A rotation keeps the norm...
    for p in (0, 1, 7, 1000):
        assert torch.allclose(rotated(q, p).norm(), q.norm(), atol=1e-4)
    # ...and q_m . k_n depends only on m - n.
    for offset in (0, 1, 5, 31):
        scores = [rotated(q, m + offset) @ rotated(k, m) for m in (0, 3, 17, 200, 999)]
        for s in scores[1:]:
            assert abs(s - scores[0]) < 1e-3, (offset, scores)
    # Different offsets give different scores (the rotation is not trivial).
    assert abs(rotated(q, 5) @ rotated(k, 0) - rotated(q, 0) @ rotated(k, 0)) > 1e-3


def test_rope_model_attention_matches_naive_with_rotated_heads():
    cfg = tiny(pos_emb="rope", n_kv_head=2, rope_theta=777.0)
    m = model_of(cfg)
    attn = m.transformer.h[0].attn
    x = torch.randn(2, 12, cfg.n_embd)
    pos = torch.arange(12)
    q, k, v = qkv_of(attn, x)
    q, k = complex_rope(q, pos, 777.0), complex_rope(k, pos, 777.0)
    y = naive_attention(q, k, v).transpose(1, 2).reshape(2, 12, -1) @ attn.c_proj.weight.T + attn.c_proj.bias
    torch.testing.assert_close(attn(x, m.rotary(pos)), y, atol=1e-5, rtol=1e-5)


# --- GQA / MQA --------------------------------------------------------------------------------------------


def test_mha_attention_matches_naive_formula():
    cfg = tiny()
    m = model_of(cfg)
    attn = m.transformer.h[0].attn
    x = torch.randn(2, 9, cfg.n_embd)
    q, k, v = qkv_of(attn, x)
    y = naive_attention(q, k, v).transpose(1, 2).reshape(2, 9, -1) @ attn.c_proj.weight.T + attn.c_proj.bias
    torch.testing.assert_close(attn(x), y, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_head_dim_set_apart_from_n_embd_matches_naive_formula(pos_emb):
    # Qwen3's layout: 4 heads of 12 channels (q is 48 wide) in a 32-dim model; c_proj maps 48 back to 32, and the
    # scores are scaled by 1/sqrt(12), the head's width.
    cfg = tiny(head_dim=12, n_kv_head=2, pos_emb=pos_emb)
    m = model_of(cfg)
    attn = m.transformer.h[0].attn
    assert attn.c_attn.weight.shape == ((4 + 2 * 2) * 12, 32) and attn.c_proj.weight.shape == (32, 48)
    x = torch.randn(2, 9, cfg.n_embd)
    pos = torch.arange(9)
    q, k, v = qkv_of(attn, x)
    if pos_emb == "rope":
        q, k = complex_rope(q, pos, cfg.rope_theta), complex_rope(k, pos, cfg.rope_theta)
    y = naive_attention(q, k, v).transpose(1, 2).reshape(2, 9, 48) @ attn.c_proj.weight.T + attn.c_proj.bias
    rope = m.rotary(pos) if pos_emb == "rope" else None
    torch.testing.assert_close(attn(x, rope), y, atol=1e-5, rtol=1e-5)
    full = m(torch.randint(0, 97, (1, 20)))[0]
    assert full.shape == (1, 20, 97)


def mha_with_duplicated_kv(gqa: GPT) -> GPT:
    """An MHA model whose K/V heads are copies: query head h gets K/V head h // (n_head / n_kv_head)."""
    c = gqa.config
    mha = GPT(c.replace(n_kv_head=c.n_head)).eval()
    sd = gqa.state_dict()
    hd, H, Hkv = c.head_dim, c.n_head, c.n_kv_head
    for name, t in list(sd.items()):
        if name.endswith("attn.c_attn.weight") or name.endswith("attn.c_attn.bias"):
            q, k, v = t.split([H * hd, Hkv * hd, Hkv * hd], dim=0)
            rest = t.shape[1:]
            dup = lambda z: z.reshape(Hkv, hd, *rest).repeat_interleave(H // Hkv, dim=0).reshape(H * hd, *rest)  # noqa: B023
            sd[name] = torch.cat([q, dup(k), dup(v)], dim=0)
    mha.load_state_dict(sd)
    return mha


@pytest.mark.parametrize("n_kv_head", [1, 2])
@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_gqa_equals_mha_with_duplicated_kv_heads(n_kv_head, pos_emb):
    gqa = model_of(tiny(n_kv_head=n_kv_head, pos_emb=pos_emb))
    mha = mha_with_duplicated_kv(gqa)
    idx = torch.randint(0, 97, (2, 20))
    torch.testing.assert_close(gqa(idx)[0], mha(idx)[0], atol=1e-5, rtol=1e-5)


def test_gqa_with_n_kv_head_equal_n_head_is_mha():
    cfg = tiny(n_kv_head=4)
    assert cfg.n_kv_head == cfg.n_head == tiny().n_kv_head
    a, b = model_of(cfg), model_of(tiny())
    idx = torch.randint(0, 97, (1, 16))
    torch.testing.assert_close(a(idx)[0], b(idx)[0])


def test_gqa_does_not_merge_query_heads():
    # Distinct query heads sharing one K/V head must still give distinct outputs per head.
    m = model_of(tiny(n_kv_head=1))
    attn = m.transformer.h[0].attn
    x = torch.randn(1, 10, 32)
    q, k, v = qkv_of(attn, x)
    per_head = naive_attention(q, k, v)  # (1, H, T, hd)
    assert not torch.allclose(per_head[:, 0], per_head[:, 1])
    y = per_head.transpose(1, 2).reshape(1, 10, -1) @ attn.c_proj.weight.T + attn.c_proj.bias
    torch.testing.assert_close(attn(x), y, atol=1e-5, rtol=1e-5)


# --- Sliding window ---------------------------------------------------------------------------------------


def naive_window_reference(q, k, v, window):
    """Per-query loop: softmax over exactly the keys i - window < j <= i. Shares no code with the model."""
    groups = q.size(1) // k.size(1)
    T = q.size(2)
    out = torch.empty_like(q)
    for i in range(T):
        lo = max(0, i - window + 1)
        for h in range(q.size(1)):
            kk, vv = k[:, h // groups, lo : i + 1], v[:, h // groups, lo : i + 1]
            w = torch.softmax((kk @ q[:, h, i, :, None]).squeeze(-1) / math.sqrt(q.size(-1)), dim=-1)
            out[:, h, i] = (w[:, :, None] * vv).sum(1)
    return out


@pytest.mark.parametrize("window", [1, 3, 8, 25, 100])
@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_window_attention_equals_naive_masked_softmax(window, n_kv_head):
    cfg = tiny(window=window, n_kv_head=n_kv_head, pos_emb="rope")
    m = model_of(cfg)
    attn = m.transformer.h[0].attn
    T = 25
    x = torch.randn(2, T, cfg.n_embd)
    q, k, v = qkv_of(attn, x)
    rope = m.rotary(torch.arange(T))
    q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    y = naive_window_reference(q, k, v, window).transpose(1, 2).reshape(2, T, -1)
    y = y @ attn.c_proj.weight.T + attn.c_proj.bias
    torch.testing.assert_close(attn(x, rope), y, atol=1e-5, rtol=1e-5)


def test_window_at_least_T_equals_causal():
    base = model_of(tiny())
    idx = torch.randint(0, 97, (2, 30))
    for w in (30, 31, 64, 1000):
        m = GPT(tiny(window=w)).eval()
        m.load_state_dict(base.state_dict())
        torch.testing.assert_close(m(idx)[0], base(idx)[0])


def test_window_locality_one_layer():
    w = 5
    m = model_of(tiny(n_layer=1, window=w, pos_emb="rope"))
    idx = torch.randint(0, 97, (1, 20))
    i = 15
    ref = m(idx)[0][0, i]
    for j in range(0, i - w + 1):  # w or more positions back: invisible
        changed = idx.clone()
        changed[0, j] = (changed[0, j] + 1) % 97
        torch.testing.assert_close(m(changed)[0][0, i], ref)
    changed = idx.clone()
    changed[0, i - w + 1] = (changed[0, i - w + 1] + 1) % 97  # the oldest visible key
    assert not torch.allclose(m(changed)[0][0, i], ref)


# --- Dropout ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, 4])
def test_eval_mode_applies_no_attention_dropout(window):
    # A config with dropout, in eval mode: exactly the naive formula (SDPA path without a window, SWA path with one).
    cfg = tiny(dropout=0.5, window=window, n_kv_head=2)
    m = model_of(cfg)
    attn = m.transformer.h[0].attn
    x = torch.randn(2, 12, cfg.n_embd)
    q, k, v = qkv_of(attn, x)
    y = naive_window_reference(q, k, v, window or 12).transpose(1, 2).reshape(2, 12, -1)
    torch.testing.assert_close(attn(x), y @ attn.c_proj.weight.T + attn.c_proj.bias, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 4])
def test_training_mode_attention_dropout_is_random_and_unbiased(window):
    # Inverted dropout on the attention weights: each call differs, the mean over calls is the naive formula
    # (with a window, training takes the banded path, as dropout rules out the flash kernels).
    cfg = tiny(dropout=0.3, window=window, n_layer=1)
    m = model_of(cfg)
    attn = m.transformer.h[0].attn
    attn.resid_dropout = torch.nn.Identity()  # only the dropout inside attention is left
    attn.c_attn.weight.normal_(0.0, cfg.n_embd**-0.5)  # O(1) head outputs, read directly through c_proj = I
    attn.c_proj.weight.copy_(torch.eye(cfg.n_embd))
    attn.c_proj.bias.zero_()
    x = torch.randn(1, 12, cfg.n_embd)
    q, k, v = qkv_of(attn, x)
    ref = naive_window_reference(q, k, v, window or 12).transpose(1, 2).reshape(1, 12, -1)
    attn.train()
    torch.manual_seed(0)
    draws = torch.stack([attn(x) for _ in range(2000)])
    assert not torch.allclose(draws[0], draws[1])
    assert (draws[0] - ref).abs().max() > 0.1
    torch.testing.assert_close(draws.mean(0), ref, atol=0.15, rtol=0)  # ~4.5 standard errors


# --- KV cache ---------------------------------------------------------------------------------------------

def test_kv_cache_incremental_equals_full(switches):
    # Every mixture of the switches (tests/conftest.py builds them from config.SWITCHES); biases with GELU only.
    cfg = with_switches(tiny(), switches, bias="swiglu" not in switches)
    if cfg.window is not None:
        cfg = cfg.replace(window=6)  # a fifth of T, so the rolling buffer wraps around several times
    m = model_of(cfg)
    T = 30  # five times the window: the rolling buffer wraps around
    idx = torch.randint(0, 97, (2, T))
    full = m(idx)[0]
    caches = make_caches(m, 2, T)
    # A prompt chunk, then single tokens, then another chunk that crosses the window boundary.
    pieces, pos = [], 0
    for n in (7, 1, 1, 1, 9, 1, 1, 1, 1, 1, 6):
        pieces.append(m(idx[:, pos : pos + n], cache=caches, input_pos=pos)[0])
        pos += n
    assert pos == T
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv_head", [4, 1])
def test_kv_cache_single_tokens_from_the_start_equals_full(n_kv_head):
    # Decoding from a prompt shorter than the window: the rolling buffer is not full yet (its empty slots must
    # stay unseen), then wraps. Logits, not argmax tokens, so a small error shows.
    cfg = tiny(pos_emb="rope", n_kv_head=n_kv_head, window=6, norm="rmsnorm", mlp="swiglu", bias=False)
    m = model_of(cfg)
    T = 16
    idx = torch.randint(0, 97, (2, T))
    full = m(idx)[0]
    caches = make_caches(m, 2, T)
    assert caches[0].rolling
    pieces, pos = [], 0
    for n in (1, 1, 2, 1, 1, 1, 1, 1, 3, 1, 1, 1, 1):
        pieces.append(m(idx[:, pos : pos + n], cache=caches, input_pos=pos)[0])
        pos += n
    assert pos == T
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_kv_cache_holds_kv_heads_and_window_slots():
    m = model_of(tiny(n_kv_head=1, window=6, pos_emb="rope"))
    caches = make_caches(m, 3, 500)
    assert caches[0].k.shape == (3, 1, 6, 8)  # MQA: one head; rolling buffer: `window` slots
    m2 = model_of(tiny(n_kv_head=2))
    assert make_caches(m2, 3, 50)[0].k.shape == (3, 2, 50, 8)


def test_windowed_rope_generates_past_block_size():
    m = model_of(tiny(pos_emb="rope", window=8, block_size=16))
    out = m.generate(torch.zeros(1, 4, dtype=torch.long), 60, temperature=0)
    assert out.shape == (1, 64)
    # Greedy with the cache equals greedy by full recomputation.
    ref = torch.zeros(1, 4, dtype=torch.long)
    for _ in range(60):
        ref = torch.cat([ref, m(ref)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("cfg", [tiny(), tiny(pos_emb="rope", n_kv_head=1, window=4, norm="rmsnorm", mlp="swiglu")])
def test_greedy_generation_equals_uncached(cfg):
    m = model_of(cfg, seed=3)
    idx = torch.randint(0, 97, (2, 5))
    out = m.generate(idx, 20, temperature=0)
    ref = idx
    for _ in range(20):
        ref = torch.cat([ref, m(ref)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ref)


def test_generate_learned_positions_past_block_size_is_error():
    m = model_of(tiny(block_size=16))
    with pytest.raises(ValueError, match="block_size"):
        m.generate(torch.zeros(1, 10, dtype=torch.long), 7)


@pytest.mark.parametrize("kw,match", [
    (dict(temperature=-0.5), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
])
def test_generate_rejects_bad_sampling_args(kw, match):
    m = model_of(tiny())
    with pytest.raises(ValueError, match=match):
        m.generate(torch.zeros(1, 2, dtype=torch.long), 3, **kw)


# --- Sampling ---------------------------------------------------------------------------------------------


def test_sampling_top_k_and_top_p_keep_only_allowed_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    draws = lambda **kw: {sample(logits, generator=g, **kw).item() for _ in range(300)}
    assert draws(top_k=2) == {0, 1}
    assert draws(top_p=0.75) == {0, 1}  # 0.5 < 0.75, 0.5 + 0.3 >= 0.75: the third token is dropped
    assert draws(top_p=0.4) == {0}
    assert draws(temperature=0) == {0}
    assert draws() == {0, 1, 2, 3}


@pytest.mark.parametrize("temperature,top_p", [(0.5, None), (2.0, None), (2.0, 0.75)])
def test_sampling_temperature_follows_the_formula(temperature, top_p):
    # Draws follow p^(1/T) renormalised (softmax(log p / T)); top_p cuts the nucleus of those tempered
    # probabilities (as transformers: temperature first). Frequencies of 20k draws, within 5 sigma.
    p = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64)
    want = p ** (1 / temperature)
    want /= want.sum()
    if top_p is not None:  # p is sorted: keep a token while the ones before it hold less than top_p
        want[(want.cumsum(0) - want) >= top_p] = 0
        want /= want.sum()
    n = 20000
    draws = sample(p.log().float().expand(n, 4), temperature, top_p=top_p, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(draws.view(-1), minlength=4).double() / n
    assert (freq - want).abs().max() < 0.018, (freq, want)


def test_sampling_is_reproducible_with_a_seed():
    m = model_of(tiny())
    idx = torch.zeros(1, 1, dtype=torch.long)
    a = m.generate(idx, 20, top_k=10, generator=torch.Generator().manual_seed(1))
    b = m.generate(idx, 20, top_k=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


# --- Init, loss, config -----------------------------------------------------------------------------------


def test_gpt2_size_and_init():
    torch.manual_seed(0)
    m = GPT(GPTConfig.from_preset("gpt2"))
    assert m.num_params() == 124_439_808
    assert m.lm_head.weight is m.transformer.wte.weight
    assert abs(m.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 1e-3
    assert abs(m.transformer.h[0].attn.c_proj.weight.std().item() - 0.02 / math.sqrt(24)) < 1e-3


def test_loss_is_cross_entropy_and_ignores_minus_one():
    m = model_of(tiny())
    idx = torch.randint(0, 97, (2, 8))
    targets = torch.randint(0, 97, (2, 8))
    targets[0, :3] = -1
    logits, loss = m(idx, targets)
    keep = targets != -1
    assert torch.allclose(loss, F.cross_entropy(logits[keep], targets[keep]))
    assert m(idx)[1] is None


def test_learned_positions_reject_long_sequences():
    m = model_of(tiny(block_size=8))
    with pytest.raises(ValueError, match="block_size=8"):
        m(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.parametrize("kw,field", [
    (dict(n_head=5), "n_head"),
    (dict(n_kv_head=3), "n_kv_head"),
    (dict(n_kv_head=0), "n_kv_head"),
    (dict(pos_emb="rope", n_embd=36, n_head=4), "even head dim"),
    (dict(pos_emb="alibi"), "pos_emb"),
    (dict(window=0), "window"),
    (dict(window=-3), "window"),
    (dict(norm="batchnorm"), "norm"),
    (dict(mlp="relu"), "mlp"),
    (dict(dropout=1.0), "dropout"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(block_size=2.5), "block_size"),
    (dict(rope_theta=0.0, pos_emb="rope"), "rope_theta"),
    (dict(norm_eps=0.0), "norm_eps"),
    (dict(head_dim=0), "head_dim"),
    (dict(n_embd=30, n_head=4), "n_embd .30. must be divisible by n_head"),
])
def test_invalid_configs_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        tiny(**kw)


def test_presets_and_unknowns():
    modern = GPTConfig.from_preset("gpt2-modern")
    assert (modern.pos_emb, modern.norm, modern.mlp, modern.n_kv_head) == ("rope", "rmsnorm", "swiglu", 4)
    assert modern.mlp_hidden == 2048  # SwiGLU sized to a 4x GELU MLP's parameters
    assert GPTConfig(n_embd=128, n_head=4, mlp="swiglu").mlp_hidden == 384  # 8 * 128 / 3 = 341, rounded up to 64s
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "tiny", "baby", "char-small"):
        GPTConfig.from_preset(name)
    with pytest.raises(ValueError, match="allowed presets"):
        GPTConfig.from_preset("gpt5")
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        GPTConfig.from_dict({"n_heads": 3})
    assert GPTConfig.from_dict(modern.to_dict()) == modern


def test_config_replace_recomputes_derived_defaults():
    gpt2 = GPTConfig()
    assert gpt2.replace(mlp="swiglu").mlp_hidden == GPTConfig(mlp="swiglu").mlp_hidden == 2048
    assert gpt2.replace(n_embd=256, n_head=4).mlp_hidden == 4 * 256
    assert gpt2.replace(mlp="swiglu", mlp_hidden=100).mlp_hidden == 100  # an explicit size stays
    assert gpt2.replace(n_head=8).n_kv_head == 8  # MHA stays MHA
    assert gpt2.replace(n_kv_head=4).replace(n_head=8).n_kv_head == 4  # a chosen GQA stays
    assert gpt2.head_dim == 64 and gpt2.replace(n_head=16).head_dim == 48  # derived: follows n_embd / n_head
    assert gpt2.replace(head_dim=32).replace(n_head=16).head_dim == 32  # a chosen head_dim stays
    assert GPTConfig(n_embd=100, n_head=3, head_dim=32).head_dim == 32  # set apart, n_embd need not divide


def test_swiglu_matches_formula():
    m = model_of(tiny(mlp="swiglu", bias=False))
    mlp = m.transformer.h[0].mlp
    x = torch.randn(3, 32)
    gate, up = mlp.c_fc.weight.chunk(2, dim=0)
    ref = (F.silu(x @ gate.T) * (x @ up.T)) @ mlp.c_proj.weight.T
    torch.testing.assert_close(mlp(x), ref)



@pytest.mark.parametrize("grad_layout", ["contiguous", "transposed"])
def test_swiglu_gradient_equals_autograds_of_the_formula(grad_layout):
    # activate's SwiGLU writes both halves of the gradient in place; autograd of the formula is the reference.
    torch.set_grad_enabled(True)  # this module's tests run under no_grad (its fixture restores it)
    h = torch.randn(7, 2 * 12, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(7, 12, dtype=torch.float64)
    if grad_layout == "transposed":  # a gradient with other strides must work as well
        grad = torch.randn(12, 7, dtype=torch.float64).t()
    gate, up = h.chunk(2, dim=-1)
    ref = F.silu(gate) * up
    ours = activate(h, swiglu=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    (g_ours,) = torch.autograd.grad(ours, h, grad)
    (g_ref,) = torch.autograd.grad(ref, h, grad)
    torch.testing.assert_close(g_ours, g_ref, rtol=0, atol=1e-15)
    assert torch.autograd.gradcheck(lambda t: activate(t, swiglu=True), (h.detach().requires_grad_(),))


def test_compiled_swiglu_traces_whole_with_autograds_gradient():
    # --trainer.compile: torch.compile must trace SwiGLU's forward and backward into the model's one graph (fullgraph
    # refuses a graph break). The in-place backward's out= into half of a tensor breaks Dynamo's graph (torch 2.13):
    # once per SwiGLU MLP, with the activation left to eager outside the compiler's fusion.
    m = model_of(tiny(mlp="swiglu", bias=False))
    torch.set_grad_enabled(True)  # this module's tests run under no_grad (its fixture restores it)
    torch._dynamo.reset()
    x = torch.randn(2, 5, 32, requires_grad=True)
    mlp = m.transformer.h[0].mlp
    ours = torch.compile(mlp, backend="aot_eager", fullgraph=True)(x)
    ref = mlp(x)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(ours, [x, *mlp.parameters()], g),
                    torch.autograd.grad(ref, [x, *mlp.parameters()], g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_formula_with_config_eps_and_bias(bias):
    eps = 0.1  # large, so an epsilon that is not the config's shows
    m = model_of(tiny(norm_eps=eps, bias=bias))
    ln = m.transformer.ln_f
    x = torch.randn(4, 32) * 0.5 + 1
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    ref = (x - mu) / torch.sqrt(var + eps) * ln.weight
    if bias:
        ref = ref + ln.bias
    torch.testing.assert_close(ln(x), ref)


@pytest.mark.parametrize("kw", [
    dict(),
    dict(bias=False, n_kv_head=2),
    dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=1),
    dict(norm="rmsnorm", mlp_hidden=50, window=4),
    dict(head_dim=12, n_kv_head=2),
])
def test_num_params_matches_formula(kw):
    c = tiny(**kw)
    V, C, L, hd, hidden = c.vocab_size, c.n_embd, c.n_layer, c.head_dim, c.mlp_hidden
    qkv = (c.n_head + 2 * c.n_kv_head) * hd
    n_fc = 2 * hidden if c.mlp == "swiglu" else hidden
    attn = C * qkv + c.n_head * hd * C + (qkv + C if c.bias else 0)
    mlp = C * n_fc + hidden * C + (n_fc + C if c.bias else 0)
    norm = C + (C if c.norm == "layernorm" and c.bias else 0)  # weight, and a bias only for a biased LayerNorm
    tables = V * C + (c.block_size * C if c.pos_emb == "learned" else 0)
    head = 0 if c.tie_embeddings else V * C
    m = GPT(c)
    assert m.num_params() == tables + L * (attn + mlp + 2 * norm) + norm + head
    assert m.num_params(non_embedding=True) == L * (attn + mlp + 2 * norm) + norm + head


def test_rmsnorm_matches_formula():
    m = model_of(tiny(norm="rmsnorm"))
    ln = m.transformer.ln_f
    x = torch.randn(4, 32) * 3 + 1
    ref = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * ln.weight
    torch.testing.assert_close(ln(x), ref)
