"""QK-norm (config.qk_norm) against a naive formula and against transformers' Qwen3ForCausalLM, in both directions."""

from __future__ import annotations

import json

import pytest
import torch

from gptlab import GPT, GPTConfig
from gptlab.attention import naive_attention
from gptlab.hf import CheckpointError, export_format, load_pretrained

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def tiny(**kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=32, qk_norm=True), **kw})


def model_of(cfg: GPTConfig) -> GPT:
    torch.manual_seed(0)
    m = GPT(cfg).eval()
    with torch.no_grad():  # norm weights away from 1, so a weight applied in the wrong place shows
        for name, p in m.named_parameters():
            if "norm" in name or "ln_" in name:
                p.add_(0.3 * torch.randn_like(p))
    return m


def rms(x: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps) * g


def rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE as complex multiplication on (B, H, T, D): channels c and c + D/2 form one complex number."""
    d, t = x.size(-1), torch.arange(x.size(-2), dtype=torch.float64)
    z = torch.complex(x[..., : d // 2].double(), x[..., d // 2 :].double())
    angles = t[:, None] * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    z = z * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


@pytest.mark.parametrize(
    "kw", [dict(), dict(pos_emb="rope", n_kv_head=2), dict(pos_emb="rope", head_dim=12, n_kv_head=1)],
    ids=["learned-mha", "rope-gqa", "rope-mqa-head_dim-12"],
)
def test_qk_norm_attention_matches_naive_formula(kw):
    # q and k: each head's channels divided by their RMS and scaled by one weight per channel (shared by the heads),
    # then rotated; v untouched; scores scaled by 1/sqrt(head_dim).
    cfg = tiny(**kw)
    m = model_of(cfg)
    attn = m.transformer.h[0].attn
    B, T, H, Hkv, hd = 2, 11, cfg.n_head, cfg.n_kv_head, cfg.head_dim
    x = torch.randn(B, T, cfg.n_embd)
    out = x @ attn.c_attn.weight.T + attn.c_attn.bias
    heads = lambda z, n: z.reshape(B, T, n, hd).transpose(1, 2)  # noqa: E731
    q = rms(heads(out[..., : H * hd], H), attn.q_norm.weight, cfg.norm_eps)
    k = rms(heads(out[..., H * hd : (H + Hkv) * hd], Hkv), attn.k_norm.weight, cfg.norm_eps)
    v = heads(out[..., (H + Hkv) * hd :], Hkv)
    rope = None
    if cfg.pos_emb == "rope":
        q, k, rope = rotate(q, cfg.rope_theta), rotate(k, cfg.rope_theta), m.rotary(torch.arange(T))
    y = naive_attention(q, k, v).transpose(1, 2).reshape(B, T, H * hd) @ attn.c_proj.weight.T + attn.c_proj.bias
    torch.testing.assert_close(attn(x, rope), y, atol=1e-5, rtol=1e-5)


def largest_score(m: GPT, monkeypatch) -> float:
    """The largest |q·k| / sqrt(hd) that the first layer's attention sees, caught on its way into SDPA."""
    sdpa, seen = torch.nn.functional.scaled_dot_product_attention, []

    def spy(q, k, v, **kw):
        seen.append(((q @ k.transpose(-1, -2)) / q.size(-1) ** 0.5).abs().max().item())
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        m.transformer.h[0].attn(torch.randn(1, 16, 32), m.rotary(torch.arange(16)))
    monkeypatch.undo()
    return seen[0]


def test_qk_norm_bounds_the_attention_logits(monkeypatch):
    # Blow the q/k projections up 1000x: without QK-norm the scores grow a million-fold; with it, no score passes
    # sqrt(hd) * max|g_q| * max|g_k| (a normalized head has norm <= sqrt(hd) * max|g|).
    scores = {}
    for qk_norm in (False, True):
        m = model_of(tiny(qk_norm=qk_norm, pos_emb="rope"))
        attn = m.transformer.h[0].attn
        with torch.no_grad():
            attn.c_attn.weight[: 2 * 4 * 8].mul_(1000.0)  # the q and k rows (4 heads of 8 each)
        scores[qk_norm] = largest_score(m, monkeypatch)
    attn = m.transformer.h[0].attn
    bound = 8**0.5 * attn.q_norm.weight.abs().max().item() * attn.k_norm.weight.abs().max().item()
    assert scores[True] <= bound * (1 + 1e-5)
    assert scores[False] > 1e4 * scores[True]


def test_qk_norm_adds_two_weights_of_head_dim_per_layer():
    off, on = GPT(tiny(qk_norm=False, head_dim=12)), GPT(tiny(head_dim=12))
    assert on.num_params() - off.num_params() == 2 * 2 * 12
    names = [n for n, _ in on.named_parameters() if "_norm" in n]
    assert names == [f"transformer.h.{i}.attn.{w}_norm.weight" for i in (0, 1) for w in ("q", "k")]


# ------------------------------------------------------------------------------------------------ Qwen3


def qwen3(tmp_path, **kw):
    """A random tiny Qwen3ForCausalLM (heads of 24 channels in a 64-dim model), saved by transformers."""
    cfg = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
               num_hidden_layers=2, intermediate_size=96, rope_theta=5000.0, tie_word_embeddings=False,
               initializer_range=0.1, attn_implementation="eager", bos_token_id=0, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(0)
    hf = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**{**cfg, **kw})).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:  # transformers initializes them to 1: move them, so a mapping mistake shows
                p.add_(0.3 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    return hf


def logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return out[0] if isinstance(out, tuple) else out.logits


def greedy_uncached(hf, idx: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(n):
            idx = torch.cat([idx, hf(idx, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_qwen3_loads_with_logit_parity_and_exports_back(tmp_path, tied):
    hf = qwen3(tmp_path / "hf", tie_word_embeddings=tied)
    model = GPT.from_pretrained(tmp_path / "hf")
    c = model.config
    assert (c.qk_norm, c.head_dim, c.n_embd, c.n_head, c.n_kv_head, c.tie_embeddings) == (True, 24, 64, 4, 2, tied)
    assert (c.pos_emb, c.norm, c.mlp, c.bias, c.window, c.rope_theta) == ("rope", "rmsnorm", "swiglu", False, None, 5e3)
    idx = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(1))
    assert (logits(model, idx) - logits(hf, idx)).abs().max().item() <= 1e-4
    prompt = idx[:, :8]
    ours = model.generate(prompt, 16, temperature=0)
    assert torch.equal(ours, greedy_uncached(hf, prompt, 16))
    # And back: Qwen3's format, which AutoModelForCausalLM loads as Qwen3ForCausalLM with the same numbers.
    assert export_format(c) == "qwen3"
    model.save_pretrained(tmp_path / "back")
    saved = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (saved["model_type"], saved["architectures"], saved["head_dim"]) == ("qwen3", ["Qwen3ForCausalLM"], 24)
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    assert type(again).__name__ == "Qwen3ForCausalLM"
    assert torch.equal(logits(again, idx), logits(hf, idx))
    assert GPT.from_pretrained(tmp_path / "back").config == c


def test_qwen3_sliding_in_every_layer_loads_as_a_window(tmp_path):
    # use_sliding_window with max_window_layers=0: every layer slides, which gptlab's window is.
    hf = qwen3(tmp_path, use_sliding_window=True, sliding_window=6, max_window_layers=0)
    model = GPT.from_pretrained(tmp_path)
    assert model.config.window == 6
    idx = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(2))  # past the window
    assert (logits(model, idx) - logits(hf, idx)).abs().max().item() <= 1e-4
    assert torch.equal(model.generate(idx[:, :5], 12, temperature=0), greedy_uncached(hf, idx[:, :5], 12))


def assert_refused_in_one_line(tmp_path, ok, cases: dict) -> None:
    """Each case {name: (config.json, message)} with the weights of the checkpoint `ok` fails to load with a
    one-line CheckpointError matching its message."""
    for name, (cfg, message) in cases.items():
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps(cfg))
        (d / "model.safetensors").write_bytes((ok / "model.safetensors").read_bytes())
        with pytest.raises(CheckpointError, match=message) as e:
            load_pretrained(d)
        assert "\n" not in str(e.value)


def test_qwen3_configs_gptlab_cannot_hold_are_refused_in_one_line(tmp_path):
    qwen3(tmp_path / "ok")
    base = json.loads((tmp_path / "ok" / "config.json").read_text())
    cases = {  # (layer_types that mix sliding and full attention load as local/global layers: test_local_global)
        "layer_types": ({**base, "use_sliding_window": True, "sliding_window": 6,
                         "layer_types": ["full_attention", "chunked_attention"]}, "layer_types must name"),
        "attention_bias": ({**base, "attention_bias": True}, "attention_bias=true is not supported"),
    }
    assert_refused_in_one_line(tmp_path, tmp_path / "ok", cases)
    # Sliding switched off (transformers' default), or a window every layer ignores: full attention.
    for cfg in ({**base, "use_sliding_window": False, "sliding_window": 6, "layer_types": None},
                {**base, "sliding_window": None, "layer_types": ["sliding_attention"] * 2}):
        (tmp_path / "ok" / "config.json").write_text(json.dumps(cfg))
        assert load_pretrained(tmp_path / "ok").config.window is None
