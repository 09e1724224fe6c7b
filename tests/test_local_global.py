"""Local/global layers (GPTConfig.layer_pattern): per-layer windows through every attention path, per-layer KV
caches, and Qwen3's layer_types both ways against transformers."""

from __future__ import annotations

import json

import pytest
import torch
from test_qk_norm import greedy_uncached, logits

import gptlab.model
from gptlab import GPT, GPTConfig
from gptlab.attention import naive_attention
from gptlab.generate import make_caches
from gptlab.hf import CheckpointError, export_blockers, export_format, why_gptlab_format

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=97, block_size=64, n_layer=4, n_head=4, n_embd=32, window=5, layer_pattern="LG")
    return GPTConfig(**{**base, **kw})


def test_pattern_repeats_over_the_layers_as_gemma_and_qwen3_write_it():
    # Gemma 3 (transformers): layer i slides unless (i + 1) % 6 == 0, i.e. 5 local layers, then a global one.
    c = tiny(n_layer=26, window=512, layer_pattern="LLLLLG")
    gemma3 = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(26)]
    assert [c.layer_window(i) is None for i in range(26)] == [t == "full_attention" for t in gemma3]
    assert {c.layer_window(i) for i in range(26)} == {512, None}
    # Qwen3's max_window_layers=2 on 4 layers: full attention below layer 2, sliding from it on.
    c = tiny(layer_pattern="GGLL")
    assert [c.layer_window(i) for i in range(4)] == [None, None, 5, 5]
    assert [tiny(layer_pattern=None).layer_window(i) for i in range(4)] == [5] * 4  # no pattern: every layer


@pytest.mark.parametrize("changes,message", [
    (dict(layer_pattern="LX"), "layer_pattern must be None or letters L"),
    (dict(layer_pattern=""), "layer_pattern must be None or letters L"),
    (dict(layer_pattern="LL"), "must mix L and G"),
    (dict(layer_pattern="GG"), "must mix L and G"),
    (dict(window=None), "needs window"),
])
def test_bad_patterns_are_refused_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message) as e:
        tiny(**changes)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("pattern", ["LG", "GL", "LLLG"])
def test_each_layer_attends_with_its_own_window_through_the_fast_paths(pattern, monkeypatch):
    # T = 23 > window = 5: the local layers take the O(T*w) CPU kernel, the global ones SDPA's causal kernel.
    # Every call's output must be the textbook formula with that layer's window, and the windows in layer order.
    seen = []

    def checked(q, k, v, window=None, *args, **kwargs):
        y = attention(q, k, v, window, *args, **kwargs)
        torch.testing.assert_close(y, naive_attention(q, k, v, window).to(y.dtype), atol=1e-5, rtol=1e-5)
        seen.append(window)
        return y

    attention = gptlab.model.attention
    monkeypatch.setattr(gptlab.model, "attention", checked)
    cfg = tiny(layer_pattern=pattern, pos_emb="rope", n_kv_head=2)
    torch.manual_seed(0)
    with torch.no_grad():
        GPT(cfg).eval()(torch.randint(0, 97, (2, 23)))
    assert seen == [5 if pattern[i % len(pattern)] == "L" else None for i in range(4)]


def test_local_layers_get_rolling_caches_and_global_layers_full_ones():
    torch.manual_seed(0)
    m = GPT(tiny(layer_pattern="LLG", n_layer=3, pos_emb="rope")).eval()
    caches = make_caches(m, 1, 40)
    assert [(c.size, c.rolling) for c in caches] == [(5, True), (5, True), (40, False)]
    # Decoding one token at a time past the window: each layer's cache keeps what its queries see, and the
    # logits are those of the full forward (the cross-cutting test does every mixture; this one decodes long).
    idx = torch.randint(0, 97, (1, 40))
    with torch.no_grad():
        full = m(idx)[0]
        steps = [m(idx[:, p : p + 1], cache=caches, input_pos=p)[0] for p in range(40)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    assert sorted(caches[0].pos.tolist()) == list(range(35, 40)) and caches[2].pos.tolist() == list(range(40))


# ------------------------------------------------------------------------------------------------ Qwen3


def qwen3(directory, **kw):
    """A random tiny Qwen3ForCausalLM with 4 layers, saved by transformers; norms moved off 1."""
    cfg = dict(vocab_size=128, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
               num_hidden_layers=4, intermediate_size=96, rope_theta=5000.0, tie_word_embeddings=False,
               initializer_range=0.1, use_sliding_window=True, sliding_window=6, bos_token_id=0, eos_token_id=None,
               pad_token_id=0)
    torch.manual_seed(0)
    return saved_with_norms_moved(transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**{**cfg, **kw})), directory)


def saved_with_norms_moved(hf, directory):
    """hf with its norm gains moved off 1 (so a mapping mistake shows), saved to directory; eager attention."""
    hf.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    hf.save_pretrained(directory)
    return hf.eval()


@pytest.mark.parametrize("kw,pattern", [
    (dict(layer_types=["sliding_attention", "full_attention"] * 2), "LG"),
    (dict(layer_types=["full_attention", "sliding_attention", "sliding_attention", "sliding_attention"]), "GLLL"),
    (dict(max_window_layers=2), "GGLL"),  # no layer_types: Qwen3 slides from layer max_window_layers on
], ids=["alternating", "explicit", "max_window_layers"])
def test_qwen3_local_global_loads_with_parity_and_exports_back(tmp_path, kw, pattern):
    hf = qwen3(tmp_path / "hf", **kw)
    model = GPT.from_pretrained(tmp_path / "hf")
    assert (model.config.window, model.config.layer_pattern) == (6, pattern)
    idx = torch.randint(0, 128, (2, 20), generator=torch.Generator().manual_seed(1))  # past the window
    assert (logits(model, idx) - logits(hf, idx)).abs().max().item() <= 1e-4
    assert torch.equal(model.generate(idx[:, :5], 15, temperature=0), greedy_uncached(hf, idx[:, :5], 15))
    # And back: Qwen3 with the same layer_types, which transformers loads with the same numbers.
    assert export_format(model.config) == "qwen3"
    model.save_pretrained(tmp_path / "back")
    saved = json.loads((tmp_path / "back" / "config.json").read_text())
    assert saved["layer_types"] == hf.config.layer_types and saved["sliding_window"] == 6
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    assert torch.equal(logits(again, idx), logits(hf, idx))
    assert GPT.from_pretrained(tmp_path / "back").config == model.config


def test_qwen3_layer_types_it_cannot_hold_are_refused_in_one_line(tmp_path):
    qwen3(tmp_path, layer_types=["sliding_attention", "full_attention"] * 2)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "layer_types": ["sliding_attention"] * 3}))
    with pytest.raises(CheckpointError, match="for each of the 4 layers") as e:
        GPT.from_pretrained(tmp_path)
    assert "\n" not in str(e.value)


def test_mistral_cannot_hold_a_pattern_so_export_says_so():
    # Mistral has one sliding_window for every layer: a pattern is Qwen3's (with QK-norm) or gptlab's own.
    llama_like = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    c = tiny(**llama_like)
    assert "layer_pattern='LG'" in export_blockers(c, "mistral")
    assert export_format(c) == "gptlab" and "mistral cannot hold layer_pattern='LG'" in why_gptlab_format(c)
    assert export_format(c.replace(layer_pattern=None)) == "mistral"
    assert export_format(c.replace(qk_norm=True)) == "qwen3"
