"""Hugging Face interop: GPT-2 (both key layouts), Llama, Mistral loading; GPT-2 / gptlab export; bad checkpoints."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import sys
import time
import types

import pytest
import torch
from conftest import with_switches

import gptlab.hf
from gptlab import GPT, GPTConfig
from gptlab.config import SWITCHES, Switch, Variant
from gptlab.hf import (
    HF_FORMATS,
    SUPPORTED_MODEL_TYPES,
    CheckpointError,
    config_from_hf,
    export_blockers,
    export_format,
    hf_gpt2_config,
    is_hf_gpt2_compatible,
    load_pretrained,
    save_pretrained,
    why_gptlab_format,
)

transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

transformers.logging.set_verbosity_error()


def hf_logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits


def our_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)[0]


def hf_generate(model, idx: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=n, min_new_tokens=n,
            pad_token_id=0,
        )


def hf_greedy_uncached(model, idx: torch.Tensor, n: int) -> torch.Tensor:
    """Greedy continuation by re-running the full (uncached) forward each step: the reference semantics."""
    with torch.no_grad():
        for _ in range(n):
            nxt = model(idx, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    return idx


# ------------------------------------------------------------------------------------------ 124M GPT-2


@pytest.fixture(scope="module")
def gpt2_124m(tmp_path_factory):
    """A random-init HF GPT-2 (124M), saved by transformers and in the hub's original layouts, plus references."""
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config()).eval()
    root = tmp_path_factory.mktemp("gpt2_124m")
    dirs = {name: root / name for name in ("hf", "hub_bin", "hub_st")}
    hf.save_pretrained(dirs["hf"])
    # The hub's original files: no "transformer." prefix, causal-mask buffers, no lm_head (tied).
    sd = load_file(dirs["hf"] / "model.safetensors")
    hub = {k.removeprefix("transformer."): v for k, v in sd.items() if k != "lm_head.weight"}
    for i in range(12):
        hub[f"h.{i}.attn.bias"] = torch.ones(1, 1, 1024, 1024, dtype=torch.bool).tril()
        hub[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    for name in ("hub_bin", "hub_st"):
        dirs[name].mkdir()
        shutil.copy(dirs["hf"] / "config.json", dirs[name] / "config.json")
    torch.save(hub, dirs["hub_bin"] / "pytorch_model.bin")
    save_file(hub, dirs["hub_st"] / "model.safetensors", metadata={"format": "pt"})
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 50257, (2, 64), generator=g)
    prompt = idx[:, :16]
    return dict(
        hf=hf, dirs=dirs, idx=idx, logits=hf_logits(hf, idx), prompt=prompt, gen=hf_generate(hf, prompt, 32)
    )


@pytest.mark.parametrize("layout", ["hf", "hub_bin", "hub_st"])
def test_gpt2_124m_matches_hf(gpt2_124m, layout):
    model = GPT.from_pretrained(gpt2_124m["dirs"][layout])
    assert model.num_params() == 124_439_808
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not model.training
    diff = (our_logits(model, gpt2_124m["idx"]) - gpt2_124m["logits"]).abs().max().item()
    assert diff <= 1e-4, diff
    out = model.generate(gpt2_124m["prompt"], 32, temperature=0)
    assert torch.equal(out, gpt2_124m["gen"])


def test_gpt2_124m_export_round_trip(gpt2_124m, tmp_path):
    model = load_pretrained(gpt2_124m["dirs"]["hf"])
    model.save_pretrained(tmp_path / "out")
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["model_type"] == "gpt2" and cfg["architectures"] == ["GPT2LMHeadModel"] and "gptlab" not in cfg
    keys = load_file(tmp_path / "out" / "model.safetensors").keys()
    assert "lm_head.weight" not in keys and all(k.startswith("transformer.") for k in keys)
    del model
    hf2 = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(hf_logits(hf2, gpt2_124m["idx"]), gpt2_124m["logits"])


# ------------------------------------------------------------------------------------ small GPT-2 export


def tiny_gpt2_config(**kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=64), **kw})


def test_small_gpt2_export_loads_in_transformers(tmp_path):
    torch.manual_seed(0)
    model = GPT(tiny_gpt2_config()).eval()
    for p in model.parameters():  # non-trivial biases and norms, so a wrong mapping shows
        p.data.add_(0.1 * torch.randn_like(p))
    assert is_hf_gpt2_compatible(model.config)
    save_pretrained(model, tmp_path / "a" / "b")  # creates parents
    assert not [p for p in (tmp_path / "a" / "b").iterdir() if p.name.startswith(".")]  # no temp files left
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "a" / "b").eval()
    idx = torch.randint(0, 96, (2, 32))
    ours = our_logits(model, idx)
    assert (hf_logits(hf, idx) - ours).abs().max().item() <= 1e-5
    back = GPT.from_pretrained(tmp_path / "a" / "b")
    assert back.config == model.config
    assert torch.equal(our_logits(back, idx), ours)


@pytest.mark.parametrize(
    "changes",
    [
        dict(pos_emb="rope", n_kv_head=2, window=8, norm="layernorm", mlp="swiglu", bias=False,
             tie_embeddings=False, rope_theta=5000.0),
        dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=True),
        dict(n_kv_head=1, mlp_hidden=100),
        # One switch away from GPT-2 or from Llama: each alone is a mixture neither format holds.
        dict(window=8), dict(pos_emb="rope"), dict(norm="rmsnorm"), dict(mlp="swiglu"),
        dict(norm="rmsnorm", mlp="swiglu", bias=False), dict(pos_emb="rope", norm="rmsnorm", bias=False),
    ],
    ids=["modern-layernorm", "llama-with-bias", "mqa", "gpt2-window", "gpt2-rope", "gpt2-rmsnorm",
         "gpt2-swiglu", "llama-learned", "llama-gelu"],
)
def test_gptlab_format_round_trip(tmp_path, changes):
    # Mixtures that no Hugging Face architecture holds go to gptlab's own format.
    torch.manual_seed(0)
    model = GPT(tiny_gpt2_config(**changes)).eval()
    assert not is_hf_gpt2_compatible(model.config) and export_format(model.config) == "gptlab"
    with pytest.raises(ValueError, match="not a GPT-2 config"):
        hf_gpt2_config(model.config)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "gptlab"
    keys = set(load_file(tmp_path / "model.safetensors"))
    assert ("lm_head.weight" in keys) == (not model.config.tie_embeddings)
    back = GPT.from_pretrained(tmp_path)
    assert back.config == model.config
    if model.config.tie_embeddings:
        assert back.lm_head.weight is back.transformer.wte.weight
    idx = torch.randint(0, 96, (2, 24))
    assert torch.equal(our_logits(back, idx), our_logits(model, idx))
    assert torch.equal(back.generate(idx[:, :4], 12, temperature=0), model.generate(idx[:, :4], 12, temperature=0))


@pytest.mark.parametrize(
    "kind, changes",
    [
        ("gpt2", dict(tie_embeddings=False, mlp_hidden=100, norm_eps=1e-6)),
        ("llama", dict(n_kv_head=2, rope_theta=5000.0, norm_eps=1e-5, mlp_hidden=120)),
        ("llama", dict(n_kv_head=1, tie_embeddings=False)),
        ("mistral", dict(n_kv_head=2, window=8, tie_embeddings=False, rope_theta=20000.0)),
    ],
    ids=["gpt2-untied-n_inner", "llama-gqa-tied", "llama-mqa-untied", "mistral-window"],
)
def test_export_to_hugging_face_architectures(tmp_path, kind, changes):
    # The saved directory loads in transformers' own class and gives the same logits and greedy tokens.
    base = dict(bias=True) if kind == "gpt2" else dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    torch.manual_seed(0)
    model = GPT(tiny_gpt2_config(**base, **changes)).eval()
    for p in model.parameters():  # non-trivial norms and biases, so a wrong mapping shows
        p.data.add_(0.05 * torch.randn_like(p))
    assert export_format(model.config) == kind
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == kind
    assert cfg["eos_token_id"] is None and cfg["bos_token_id"] is None  # 96 tokens: no GPT-2 <|endoftext|>
    cls = {"gpt2": transformers.GPT2LMHeadModel, "llama": transformers.LlamaForCausalLM,
           "mistral": transformers.MistralForCausalLM}[kind]
    hf = cls.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert (hf.lm_head.weight is hf.get_input_embeddings().weight) == model.config.tie_embeddings
    idx = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))  # 24 > the window of 8
    diff = (hf_logits(hf, idx) - our_logits(model, idx)).abs().max().item()
    assert diff <= 1e-5, diff
    assert torch.equal(hf_greedy_uncached(hf, idx[:, :6], 10), model.generate(idx[:, :6], 10, temperature=0))
    back = GPT.from_pretrained(tmp_path)  # and back: the same config, the same numbers
    assert back.config == model.config.replace(dropout=0.0)
    assert torch.equal(our_logits(back, idx), our_logits(model, idx))


def test_every_mixture_exports_to_a_format_that_holds_it(tmp_path, switches):
    # Every mixture of config.SWITCHES (tests/conftest.py): a Hugging Face format that export claims loads in
    # transformers with the same logits; the rest go to gptlab's format and come back exactly.
    cfg = with_switches(tiny_gpt2_config(block_size=24), switches, bias=False)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    for p in model.parameters():  # non-trivial norms, so a wrong mapping shows
        p.data.add_(0.05 * torch.randn_like(p))
    kind = export_format(cfg)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == kind
    idx = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    if kind != "gptlab":  # the class the file names, as AutoModelForCausalLM picks it
        cls = getattr(transformers, saved["architectures"][0])
        hf = cls.from_pretrained(tmp_path, attn_implementation="eager").eval()
        assert (hf_logits(hf, idx) - our_logits(model, idx)).abs().max().item() <= 1e-5
    else:
        assert all(export_blockers(cfg, fmt) for fmt in HF_FORMATS)
    assert torch.equal(our_logits(GPT.from_pretrained(tmp_path), idx), our_logits(model, idx))


def test_every_format_the_table_names_is_exported_and_loaded():
    assert SUPPORTED_MODEL_TYPES == (*HF_FORMATS, "gptlab")
    for s in SWITCHES:
        assert set(s.hf_gpt2) | set(s.hf_modern) <= set(HF_FORMATS), s.field


@dataclasses.dataclass
class ConfigWithSoftcap(GPTConfig):
    """GPTConfig with a switch no format knows about (Gemma 2's logit soft-capping, say)."""

    softcap: float | None = None


def test_export_is_deny_by_default(monkeypatch, tmp_path):
    sizes = dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=64)
    llama = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    gpt2_like, llama_like = ConfigWithSoftcap(**sizes), ConfigWithSoftcap(**sizes, **llama)
    on = [dataclasses.replace(c, softcap=30.0) for c in (gpt2_like, llama_like)]
    # A field no table entry names: held only at GPT-2's value, by every format.
    assert (export_format(gpt2_like), export_format(llama_like)) == ("gpt2", "llama")
    for c in on:
        assert export_format(c) == "gptlab"
        assert all("softcap=30.0" in export_blockers(c, fmt) for fmt in HF_FORMATS)
    # A new table entry that declares which formats hold GPT-2's value but none for its modern value.
    softcap = Switch(
        field="softcap", gpt2="`None`", modern="a float", summary="tanh-capped logits", doc="softcap.md",
        title="Logit soft-capping", variants=(Variant("softcap", "+softcap", lambda c: {"softcap": 30.0}),),
        describe=lambda c: f"softcap {c.softcap}", hf_gpt2=HF_FORMATS,
    )
    monkeypatch.setattr(gptlab.hf, "SWITCHES", (*SWITCHES, softcap))
    assert (export_format(gpt2_like), export_format(llama_like)) == ("gpt2", "llama")
    for c in on:
        assert export_format(c) == "gptlab"
        assert why_gptlab_format(c).count("softcap=30.0") == len(HF_FORMATS)
        save_pretrained(GPT(c), tmp_path)
        assert json.loads((tmp_path / "config.json").read_text())["gptlab"]["softcap"] == 30.0
    # An entry that names no format at all: not even GPT-2's value is held.
    monkeypatch.setattr(gptlab.hf, "SWITCHES", (*SWITCHES, dataclasses.replace(softcap, hf_gpt2=())))
    assert export_format(gpt2_like) == export_format(llama_like) == "gptlab"


def test_export_names_the_settings_that_keep_a_config_in_gptlab_format(tmp_path, capsys):
    from gptlab import cli

    GPT(tiny_gpt2_config(window=8)).save_pretrained(tmp_path / "swa")
    assert cli.main(["export", str(tmp_path / "swa"), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "gptlab format (no Hugging Face format holds this mixture of switches: gpt2 cannot hold window=8;" in out
    assert "llama cannot hold bias=True, pos_emb='learned', window=8, norm='layernorm', mlp='gelu';" in out


def test_bias_free_gpt2_exports_as_gpt2_with_zero_biases(tmp_path):
    # The `baby` preset and compare's baseline train GPT-2 without biases: GPT-2 with zero biases, the same model
    # (issue 16: it used to stay in gptlab's format, which AutoModelForCausalLM cannot load).
    torch.manual_seed(0)
    model = GPT(tiny_gpt2_config(bias=False, tie_embeddings=False)).eval()
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    assert is_hf_gpt2_compatible(model.config) and export_format(model.config) == "gpt2"
    model.save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    biases = {n: p for n, p in hf.named_parameters() if n.endswith(".bias")}
    assert len(biases) == 2 * (2 + 4) + 1  # per layer 2 norms and 4 linears, then ln_f
    assert all(torch.all(b == 0) for b in biases.values())
    idx = torch.randint(0, 96, (2, 32), generator=torch.Generator().manual_seed(1))
    assert (hf_logits(hf, idx) - our_logits(model, idx)).abs().max().item() <= 1e-5
    assert torch.equal(hf_greedy_uncached(hf, idx[:, :6], 10), model.generate(idx[:, :6], 10, temperature=0))
    # Loading it back gives GPT-2 with those zero biases (documented in save_pretrained): the same function.
    back = GPT.from_pretrained(tmp_path)
    assert back.config == model.config.replace(bias=True)
    assert all(torch.all(p == 0) for n, p in back.named_parameters() if n.endswith(".bias"))
    torch.testing.assert_close(our_logits(back, idx), our_logits(model, idx), atol=1e-6, rtol=0)


def test_dtype_and_device(tmp_path):
    model = GPT(tiny_gpt2_config(pos_emb="rope", norm="rmsnorm")).eval()
    model.save_pretrained(tmp_path)
    back = load_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in back.parameters()} == {torch.bfloat16}
    assert back.rotary.inv_freq.dtype == torch.float32  # RoPE frequencies stay fp32


# ---------------------------------------------------------------------------------------- Llama/Mistral


def tiny_hf(kind: str):
    common = dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=176,
        vocab_size=128, tie_word_embeddings=False, initializer_range=0.1, attn_implementation="eager",
        bos_token_id=0, eos_token_id=None, pad_token_id=0,
    )
    torch.manual_seed(0)
    if kind == "llama":
        cfg = transformers.LlamaConfig(rope_theta=500000.0, max_position_embeddings=256, **common)
        return transformers.LlamaForCausalLM(cfg).eval()
    cfg = transformers.MistralConfig(rope_theta=5000.0, sliding_window=8, **common)
    return transformers.MistralForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("llama")
    tiny_hf("llama").save_pretrained(d)
    return d


@pytest.mark.parametrize("kind", ["llama", "mistral"])
def test_llama_mistral_match_hf(tmp_path, kind):
    hf = tiny_hf(kind)
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    c = model.config
    assert (c.pos_emb, c.norm, c.mlp, c.bias, c.n_kv_head, c.mlp_hidden) == ("rope", "rmsnorm", "swiglu", False, 2, 176)
    assert c.rope_theta == (500000.0 if kind == "llama" else 5000.0)
    assert c.window == (None if kind == "llama" else 8)
    assert not c.tie_embeddings
    idx = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(2))
    diff = (our_logits(model, idx) - hf_logits(hf, idx)).abs().max().item()
    assert diff <= 1e-4, diff
    prompt = idx[:, :12]  # mistral: 12 + 16 = 28 positions, far past the window of 8
    ours = model.generate(prompt, 16, temperature=0)
    assert torch.equal(ours, hf_greedy_uncached(hf, prompt, 16))
    assert torch.equal(ours, hf_generate(hf, prompt, 16))


def test_llama_with_its_own_head_dim_matches_hf(tmp_path):
    # head_dim set apart from hidden_size / num_attention_heads (4 heads of 24 in a 64-dim model), as Qwen3 and
    # Gemma do: loads with equal logits, and exports back to transformers' Llama.
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                   num_hidden_layers=2, intermediate_size=96, vocab_size=128, initializer_range=0.1,
                                   attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = GPT.from_pretrained(tmp_path / "hf")
    assert (model.config.head_dim, model.config.n_embd, model.config.n_head) == (24, 64, 4)
    idx = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(4))
    assert (our_logits(model, idx) - hf_logits(hf, idx)).abs().max().item() <= 1e-4
    assert export_format(model.config) == "llama"
    model.save_pretrained(tmp_path / "back")
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    assert torch.equal(hf_logits(again, idx), hf_logits(hf, idx))


def test_mistral_window_applies_as_transformers_applies_it(tmp_path):
    # Some Mistral configs carry Qwen2's use_sliding_window: false; transformers' Mistral ignores it and
    # slides (gptlab once dropped the window: logits off by ~3).
    hf = tiny_hf("mistral")
    hf.config.use_sliding_window = False
    hf.save_pretrained(tmp_path)
    model = GPT.from_pretrained(tmp_path)
    assert model.config.window == 8
    idx = torch.randint(0, 128, (1, 24), generator=torch.Generator().manual_seed(3))
    assert (our_logits(model, idx) - hf_logits(hf, idx)).abs().max().item() <= 1e-4


def test_config_from_hf_rope_layouts():
    base = dict(
        model_type="llama", hidden_size=64, num_attention_heads=4, num_hidden_layers=1, intermediate_size=96,
        vocab_size=50, max_position_embeddings=128,
    )
    assert config_from_hf({**base, "rope_theta": 1234.0}).rope_theta == 1234.0  # transformers 4
    assert config_from_hf({**base, "rope_theta": 1.0, "rope_scaling": None}).rope_theta == 1.0
    v5 = {**base, "rope_parameters": {"rope_theta": 777.0, "rope_type": "default"}}
    assert config_from_hf(v5).rope_theta == 777.0  # transformers 5
    c = config_from_hf(base)
    assert (c.rope_theta, c.n_kv_head, c.window, c.block_size, c.tie_embeddings) == (10000.0, 4, None, 128, False)
    assert c.norm_eps == transformers.LlamaConfig().rms_norm_eps  # transformers' default when the key is absent
    assert config_from_hf({**base, "model_type": "mistral", "sliding_window": None}).window is None
    assert config_from_hf({**base, "model_type": "mistral", "sliding_window": 16}).window == 16
    assert config_from_hf({**base, "sliding_window": 16}).window is None  # llama has no window
    assert config_from_hf({**base, "model_type": "mistral"}).window == transformers.MistralConfig().sliding_window
    assert config_from_hf({"model_type": "gpt2"}) == GPTConfig()


# ---------------------------------------------------------------------------------------- bad checkpoints


def write_config(d, cfg) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))


def mutate(src, dst, change) -> None:
    """Copy a checkpoint directory, editing its tensors with change(dict)."""
    shutil.copytree(src, dst)
    sd = load_file(dst / "model.safetensors")
    change(sd)
    save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def gptlab_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("gptlab")
    GPT(tiny_gpt2_config(pos_emb="rope")).save_pretrained(d)
    return d


def test_missing_dir_and_file_path(tmp_path, gptlab_dir):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_pretrained(gptlab_dir / "model.safetensors")


def test_bad_config(tmp_path, llama_dir):
    d = tmp_path / "c"
    d.mkdir()
    with pytest.raises(CheckpointError, match="has no config.json"):
        load_pretrained(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON"):
        load_pretrained(d)
    write_config(d, {"model_type": "bert"})
    with pytest.raises(CheckpointError, match=f"unknown model_type 'bert'.*{', '.join(SUPPORTED_MODEL_TYPES)}$"):
        load_pretrained(d)
    write_config(d, {"model_type": "gpt2", "activation_function": "relu"})
    with pytest.raises(CheckpointError, match="activation_function 'relu'"):
        load_pretrained(d)
    write_config(d, {"model_type": "gpt2", "n_embd": 100, "n_head": 12})
    with pytest.raises(CheckpointError, match="n_embd"):
        load_pretrained(d)
    hf = json.loads((llama_dir / "config.json").read_text())
    bad = {
        "rope_type 'llama3'": {**hf, "rope_parameters": {"rope_theta": 1e4, "rope_type": "llama3", "factor": 8.0}},
        "rope_type 'linear'": {**hf, "rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 2.0}},
        "attention_bias=true": {**hf, "attention_bias": True},
        "mlp_bias=true": {**hf, "mlp_bias": True},
        "hidden_act 'gelu'": {**hf, "hidden_act": "gelu"},
    }
    for msg, cfg in bad.items():
        write_config(d, cfg)
        with pytest.raises(CheckpointError, match=msg):
            load_pretrained(d)
    # A head_dim the weights were not made with: the first tensor that does not fit is named.
    shutil.copy(llama_dir / "model.safetensors", d / "model.safetensors")
    write_config(d, {**hf, "head_dim": 32})
    with pytest.raises(CheckpointError, match=r"q_proj.weight' .* has shape \(64, 64\), expected \(128, 64\)"):
        load_pretrained(d)


def test_no_weights_file(tmp_path, gptlab_dir):
    shutil.copy(gptlab_dir / "config.json", tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="no weights file.*model.safetensors"):
        load_pretrained(tmp_path)


def test_corrupt_safetensors(tmp_path, gptlab_dir):
    data = (gptlab_dir / "model.safetensors").read_bytes()
    for name, blob in [("truncated", data[: len(data) // 2]), ("header", data[:8] + b"x" * 200), ("empty", b"")]:
        d = tmp_path / name
        shutil.copytree(gptlab_dir, d)
        (d / "model.safetensors").write_bytes(blob)
        with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors file"):
            load_pretrained(d)


class Payload:
    """Unpickling this creates the marker file: a stand-in for arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_bin_with_code_payload_is_refused(tmp_path, gptlab_dir):
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(Payload(str(live))))  # the payload is real: plain unpickling runs it
    assert live.exists()
    marker = tmp_path / "pwned"
    sd = load_file(gptlab_dir / "model.safetensors")
    for name, save in [
        ("zip", lambda obj, f: torch.save(obj, f)),
        ("legacy", lambda obj, f: torch.save(obj, f, _use_new_zipfile_serialization=False)),
        ("raw", lambda obj, f: f.write_bytes(pickle.dumps(obj, protocol=2))),
    ]:
        d = tmp_path / name
        shutil.copytree(gptlab_dir, d, ignore=shutil.ignore_patterns("*.safetensors"))
        save({**sd, "evil": Payload(str(marker))}, d / "pytorch_model.bin")
        with pytest.raises(CheckpointError, match=r"pytorch_model.bin cannot be loaded safely.*weights_only"):
            load_pretrained(d)
        assert not marker.exists()


def test_bin_state_dict_loads_and_non_dict_refused(tmp_path, gptlab_dir):
    d = tmp_path / "ok"
    shutil.copytree(gptlab_dir, d, ignore=shutil.ignore_patterns("*.safetensors"))
    torch.save(load_file(gptlab_dir / "model.safetensors"), d / "pytorch_model.bin")
    assert load_pretrained(d).config == load_pretrained(gptlab_dir).config
    torch.save({"model": load_file(gptlab_dir / "model.safetensors")}, d / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="flat state dict"):
        load_pretrained(d)


def test_sharded_safetensors(tmp_path, llama_dir):
    sd = load_file(llama_dir / "model.safetensors")
    names = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    shutil.copy(llama_dir / "config.json", tmp_path / "config.json")
    for fname, keys in shards.items():
        save_file({k: sd[k] for k in keys}, tmp_path / fname, metadata={"format": "pt"})
    index = {"weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    idx = torch.randint(0, 128, (1, 10))
    assert torch.equal(our_logits(load_pretrained(tmp_path), idx), our_logits(load_pretrained(llama_dir), idx))
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00002.safetensors is missing"):
        load_pretrained(tmp_path)


def test_missing_wrong_shape_unexpected_tensor(tmp_path, llama_dir):
    up = "model.layers.1.mlp.up_proj.weight"
    mutate(llama_dir, tmp_path / "missing", lambda sd: sd.pop(up))
    with pytest.raises(CheckpointError, match=rf"has no tensor '{up}'"):
        load_pretrained(tmp_path / "missing")

    def reshape(sd):
        sd["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)

    mutate(llama_dir, tmp_path / "shape", reshape)
    with pytest.raises(
        CheckpointError, match=r"'model.layers.0.self_attn.k_proj.weight'.*shape \(64, 64\), expected \(32, 64\)"
    ):
        load_pretrained(tmp_path / "shape")

    def extra(sd):
        sd["model.layers.0.self_attn.q_norm.weight"] = torch.ones(16)
        sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # ignorable

    mutate(llama_dir, tmp_path / "extra", extra)
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) \['model.layers.0.self_attn.q_norm.weight'\]"):
        load_pretrained(tmp_path / "extra")


def test_gpt2_missing_lm_head_ok_and_untied_needs_it(tmp_path):
    model = GPT(tiny_gpt2_config()).eval()
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has no tensor 'lm_head.weight'"):
        load_pretrained(tmp_path)


# --------------------------------------------------------------------------------------------- hub ids


def test_hub_id_offline_fails_fast(monkeypatch, tmp_path):
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    t0 = time.perf_counter()
    for name in ("gpt2", "openai-community/gpt2"):
        with pytest.raises(CheckpointError, match="pass a local directory containing config.json"):
            GPT.from_pretrained(name)
    assert time.perf_counter() - t0 < 5


def test_hub_id_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(CheckpointError, match="huggingface_hub is not installed.*local directory"):
        load_pretrained("gpt2-medium")


def test_hub_id_downloads_with_snapshot_download(monkeypatch, gptlab_dir):
    hub = pytest.importorskip("huggingface_hub")
    calls = []

    def fake(repo_id, **kw):
        calls.append((repo_id, kw))
        return str(gptlab_dir)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "snapshot_download", fake)
    model = load_pretrained("someone/tiny")
    assert model.config == GPTConfig.from_dict(json.loads((gptlab_dir / "config.json").read_text())["gptlab"])
    assert calls[0][0] == "someone/tiny"
    assert "config.json" in calls[0][1]["allow_patterns"]
    assert any(p.endswith(".safetensors") for p in calls[0][1]["allow_patterns"])


@pytest.mark.parametrize("error, reason", [
    ("LocalEntryNotFoundError", "the Hub could not be reached and it is not in the local cache"),
    ("RepositoryNotFoundError", "no such repository, or a private one"),
    ("GatedRepoError", "gated: accept its terms"),
])
def test_hub_failures_are_one_short_line(monkeypatch, tmp_path, error, reason):
    """A name that is no local directory and that the Hub cannot give: one short line, the cause named."""
    monkeypatch.chdir(tmp_path)
    hub = pytest.importorskip("huggingface_hub")
    cls = getattr(hub.errors, error)
    response = types.SimpleNamespace(headers={}, status_code=404, request=None)  # what the error reads of one

    def fake(repo_id, **kw):
        raise cls("An error happened while trying to locate the files on the Hub. " * 5, **(
            {} if error == "LocalEntryNotFoundError" else {"response": response}))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "snapshot_download", fake)
    with pytest.raises(CheckpointError) as info:
        load_pretrained("out/demoo")
    message = str(info.value)
    assert message.startswith("no local directory 'out/demoo'") and reason in message and "check the path" in message
    assert "An error happened" not in message and len(message) < 250


def test_missing_child_of_a_local_folder_is_not_looked_up_on_the_hub(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    hub = pytest.importorskip("huggingface_hub")
    monkeypatch.setattr(hub, "snapshot_download", lambda *a, **k: pytest.fail("went to the Hub"))
    with pytest.raises(CheckpointError, match="checkpoint directory out/demoo does not exist"):
        load_pretrained("out/demoo")


def test_saved_files_are_ordinary_files(tmp_path):
    """Written through private temp files, published readable like any other file (0644), not owner-only."""
    from gptlab.tokenizer import CharTokenizer, save_tokenizer

    GPT(GPTConfig.from_preset("tiny", vocab_size=16)).save_pretrained(tmp_path / "m")
    save_tokenizer(CharTokenizer.from_text("abc"), tmp_path / "m" / "tokenizer.json")
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (tmp_path / "m" / f).stat().st_mode & 0o777 == 0o644, f
