"""Multi-head latent attention (GPTConfig.kv_lora_rank): the textbook formula, decoding from the latent cache with
absorbed weights, and DeepSeek-V3 both ways against transformers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_local_global import saved_with_norms_moved
from test_qk_norm import assert_refused_in_one_line, greedy_uncached, logits
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gptlab import GPT, GPTConfig
from gptlab.config import SWITCHES
from gptlab.generate import make_caches
from gptlab.hf import export_format
from gptlab.info import model_stats
from gptlab.model import Rotary, apply_rotary

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

MLA = dict(kv_lora_rank=20, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6)


def tiny(**kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=32, **MLA), **kw})


def model_of(cfg: GPTConfig) -> GPT:
    torch.manual_seed(0)
    m = GPT(cfg).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "norm" in name or "ln_" in name:  # off 1, so a norm in the wrong place shows
                p.add_(0.3 * torch.randn_like(p))
    return m


def naive_mla(attn, x: torch.Tensor, rope_on: bool, theta: float) -> torch.Tensor:
    """DeepSeek's MLA written out per head and per query, from the layer's weights: up-project every key and
    value, softmax over the visible keys at 1/sqrt(nope + rope)."""
    B, T, _ = x.shape
    H, Hkv, nope, r, dv = attn.n_head, attn.n_kv_head, attn.nope, attn.rope, attn.v_dim
    q = attn.q_b_proj(attn.q_a_norm(attn.q_a_proj(x))) if attn.low_rank_q else attn.q_proj(x)
    q = q.view(B, T, H, nope + r)
    down = attn.kv_a_proj(x)
    c, k_rope = attn.kv_a_norm(down[..., : attn.rank]), down[..., attn.rank :]
    kv = (c @ attn.kv_b_proj.weight.T).view(B, T, Hkv, nope + dv)
    q_rope = q[..., nope:]
    if rope_on:
        cos, sin = Rotary(r, theta)(torch.arange(T))
        q_rope = apply_rotary(q_rope.transpose(1, 2), cos, sin).transpose(1, 2)
        k_rope = apply_rotary(k_rope[:, None], cos, sin)[:, 0]
    out = torch.zeros(B, T, H, dv)
    for h in range(H):
        g = h // (H // Hkv)
        for i in range(T):
            s = (torch.einsum("bd,bjd->bj", q[:, i, h, :nope], kv[:, : i + 1, g, :nope])
                 + torch.einsum("bd,bjd->bj", q_rope[:, i, h], k_rope[:, : i + 1]))
            p = (s / math.sqrt(nope + r)).softmax(-1)
            out[:, i, h] = torch.einsum("bj,bjd->bd", p, kv[:, : i + 1, g, nope:])
    return attn.c_proj(out.reshape(B, T, H * dv))


@pytest.mark.parametrize("kw", [{}, dict(pos_emb="rope"), dict(pos_emb="rope", q_lora_rank=12, n_kv_head=2),
                                dict(v_head_dim=16, n_kv_head=1)], ids=["learned", "rope", "qlora-gqa", "wide-v"])
def test_layer_equals_the_textbook_formula(kw):
    cfg = tiny(**kw)
    attn = model_of(cfg).transformer.h[0].attn
    x = torch.randn(2, 11, 32)
    rope = Rotary(cfg.rotary_dim, cfg.rope_theta)(torch.arange(11)) if cfg.pos_emb == "rope" else None
    with torch.no_grad():
        torch.testing.assert_close(attn(x, rope), naive_mla(attn, x, rope is not None, cfg.rope_theta),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", [dict(pos_emb="rope"), dict(pos_emb="rope", q_lora_rank=12, n_kv_head=2),
                                dict(window=5), dict(pos_emb="rope", window=5, layer_pattern="LG")],
                         ids=["rope", "qlora-gqa", "window", "local-global"])
def test_absorbed_decode_from_the_latent_cache_equals_the_plain_forward(kw, monkeypatch):
    m = model_of(tiny(**kw))
    idx = torch.randint(0, 97, (2, 30))
    with torch.no_grad():
        full = m(idx)[0]
        caches = make_caches(m, 2, 30)
        # Decoding never up-projects the cache: kv_b_proj's weight is read, the layer is never run.
        for block in m.transformer.h:
            monkeypatch.setattr(block.attn.kv_b_proj, "forward", lambda *a: pytest.fail("kv_b_proj was run"))
        steps, pos = [], 0
        for n in (6, 1, 1, 1, 8, 1, 1, 1, 1, 1, 1, 7):  # a prompt, single tokens, a chunk past the window
            steps.append(m(idx[:, pos : pos + n], cache=caches, input_pos=pos)[0])
            pos += n
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_the_cache_holds_the_latent_and_the_rope_key_whatever_the_heads():
    for n_head in (2, 4, 8):
        m = GPT(tiny(n_head=n_head, pos_emb="rope"))
        caches = make_caches(m, 3, 40)
        assert [tuple(c.k.shape) for c in caches] == [(3, 1, 40, 20 + 4)] * 2  # kv_lora_rank + qk_rope_head_dim
        assert all(c.v.numel() == 0 for c in caches)  # the values are the latents: nothing else is kept
        assert model_stats(m.config, context=40).kv_bytes_per_token == 2 * 24 * 4


@pytest.mark.parametrize("kw", [{}, dict(pos_emb="rope", q_lora_rank=12, n_kv_head=2), dict(window=8)],
                         ids=["mha", "qlora-gqa", "window"])
def test_decode_flops_match_the_flop_counter(kw):
    # gptlab info's "generating token T with a KV cache" for the absorbed step, against torch's count of it.
    cfg, T = tiny(**kw), 20
    m = model_of(cfg)
    caches = make_caches(m, 1, T)
    with torch.no_grad():
        m(torch.randint(0, 97, (1, T - 1)), cache=caches)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:  # SDPA as counted matmuls
            m(torch.randint(0, 97, (1, 1)), cache=caches, input_pos=T - 1)
    assert counter.get_total_flops() == model_stats(cfg, context=T).flops_decode_per_token


def test_compare_variant_caches_no_more_than_gqa_with_two_kv_heads():
    base = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)
    mla = next(v for s in SWITCHES for v in s.variants if v.name == "mla")
    gqa = model_stats(base.replace(n_kv_head=2)).kv_bytes_per_token
    assert model_stats(base.replace(**mla.changes(base))).kv_bytes_per_token <= gqa


@pytest.mark.parametrize("changes,message", [
    (dict(kv_lora_rank=None), "only apply to multi-head latent attention"),
    (dict(qk_rope_head_dim=3), "qk_rope_head_dim must be even"),
    (dict(v_head_dim=None), "v_head_dim must be a positive integer"),
    (dict(q_lora_rank=0), "q_lora_rank must be None"),
    (dict(qk_norm=True), "qk_norm cannot go with kv_lora_rank"),
])
def test_bad_mla_configs_are_refused_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message) as e:
        tiny(**changes)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ DeepSeek-V3


def deepseek(directory, **kw):
    """A random tiny DeepseekV3ForCausalLM whose layers are all dense, saved by transformers; norms moved off 1."""
    cfg = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16,
               v_head_dim=12, first_k_dense_replace=2, tie_word_embeddings=False, initializer_range=0.1,
               bos_token_id=0, eos_token_id=None, pad_token_id=0, n_routed_experts=4, num_experts_per_tok=2,
               n_group=1, topk_group=1, moe_intermediate_size=16, rope_theta=5000.0)
    torch.manual_seed(0)
    return saved_with_norms_moved(transformers.DeepseekV3ForCausalLM(transformers.DeepseekV3Config(**{**cfg, **kw})),
                                  directory)


@pytest.mark.parametrize("kw", [dict(rope_interleave=True), dict(rope_interleave=False),
                                dict(q_lora_rank=24, tie_word_embeddings=True)],
                         ids=["interleaved", "rotate-half", "qlora-tied"])
def test_deepseek_v3_loads_with_parity_and_exports_back(tmp_path, kw):
    hf = deepseek(tmp_path / "hf", **kw)
    model = GPT.from_pretrained(tmp_path / "hf")
    c = model.config
    assert (c.kv_lora_rank, c.q_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim) == (
        32, kw.get("q_lora_rank"), 16, 8, 12)
    idx = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(1))
    assert (logits(model, idx) - logits(hf, idx)).abs().max().item() <= 1e-4
    assert torch.equal(model.generate(idx[:, :5], 15, temperature=0), greedy_uncached(hf, idx[:, :5], 15))
    assert export_format(c) == "deepseek_v3"
    model.save_pretrained(tmp_path / "back")
    saved = json.loads((tmp_path / "back" / "config.json").read_text())
    assert saved["model_type"] == "deepseek_v3" and saved["first_k_dense_replace"] == 2
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    assert type(again).__name__ == "DeepseekV3ForCausalLM"
    assert (logits(again, idx) - logits(hf, idx)).abs().max().item() <= 1e-5
    assert GPT.from_pretrained(tmp_path / "back").config == c


def test_deepseek_v3_configs_gptlab_cannot_hold_are_refused_in_one_line(tmp_path):
    deepseek(tmp_path / "ok")
    base = json.loads((tmp_path / "ok" / "config.json").read_text())
    cases = {
        "dense_layers": ({**base, "first_k_dense_replace": None}, "first_k_dense_replace must be an integer >= 0"),
        "yarn": ({**base, "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 5000.0}},
                 "only 'default' RoPE is supported"),
        "kv_heads": ({**base, "num_key_value_heads": 2}, "must equal num_attention_heads"),
    }
    assert_refused_in_one_line(tmp_path, tmp_path / "ok", cases)
