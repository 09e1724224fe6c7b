"""Hugging Face checkpoints: load GPT-2, Llama, Mistral, Qwen3 and DeepSeek-V3 weights into GPT, and save them in
those formats.

Loading reads a directory holding config.json and model.safetensors (or a sharded
model.safetensors.index.json, or pytorch_model.bin read with torch.load(weights_only=True), which is
designed not to run code). config.json's model_type picks the key mapping:

  gpt2            HF GPT2LMHeadModel, with or without the "transformer." prefix (the hub's original files
                  have none). Its Conv1D weights are stored (in, out) and are transposed into nn.Linear.
  llama, mistral  q/k/v projections fused into attn.c_attn, gate/up into mlp.c_fc. HF's files store RoPE in
                  the "rotate half" layout we use (its converter permuted q/k rows from Meta's adjacent-pairs
                  layout), so they load as they are; Meta's original consolidated.*.pth files are not read.
  qwen3           Llama's layout plus QK-norm (self_attn.q_norm / k_norm: one weight per head channel) and a
                  head_dim of its own; a window on every layer or, with layer_types, on some (local/global).
  mixtral,        Mistral's and Qwen3's layouts with a mixture of experts in place of the MLP: their config keys
  qwen3_moe       and expert tensors are in hf_moe.py.
  deepseek_v3     DeepSeek-V3: Llama's layout with multi-head latent attention and, after its first dense layers,
                  DeepSeek's experts and router (hf_deepseek.py: its config, and interleaved RoPE rows reordered
                  into rotate-half when loading; the expert tensors as Qwen3-MoE's, in hf_moe.py).
  gptlab          our own state dict, written by save_pretrained for mixtures no HF architecture holds.

Saving runs the same mapping backwards. save_pretrained picks the format from the config (export_format),
deny-by-default: a Hugging Face format holds a config only if it holds every setting that differs from GPT-2's,
as the switch table (config.SWITCHES) and _HOLDS below declare; anything else is written in gptlab's format.

Loading is strict: every parameter must be present with the right shape, and unknown tensors are an
error. Every problem with a checkpoint raises CheckpointError (a ValueError) with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, config_from_json  # CheckpointError: importable from gptlab.hf as before
from .config import MOE_ONLY_FIELDS, SIZE_FIELDS, SWITCHES, GPTConfig, gpt2_reference
from .hf_deepseek import DEEPSEEK_HOLDS, config_deepseek, deepseek_tensors, hf_deepseek_config
from .hf_files import CONFIG_NAME, HF_TOKENIZER_FILES, SAFETENSORS_NAME, load_weights, one_line, read_config, resolve
from .hf_moe import MOE_ARCHITECTURES, MOE_FORMATS, MOE_HOLDS, expert_sources, hf_moe_fields, moe_config
from .model import GPT, keeps_fp32

__all__ = [
    "CheckpointError",
    "HF_FORMATS",
    "SUPPORTED_MODEL_TYPES",
    "config_from_hf",
    "export_blockers",
    "export_format",
    "hf_gpt2_config",
    "hf_llama_config",
    "is_hf_gpt2_compatible",
    "load_pretrained",
    "save_pretrained",
    "why_gptlab_format",
]

HF_FORMATS = ("gpt2", "llama", "mistral", "qwen3", *MOE_FORMATS, "deepseek_v3")  # loaded and exported, in this order
SUPPORTED_MODEL_TYPES = (*HF_FORMATS, "gptlab")
# HF GPT-2 stores these as Conv1D, weight shape (in, out): the transpose of nn.Linear's (out, in).
_CONV1D = re.compile(r"h\.\d+\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight")
# Buffers that old checkpoints carry and that hold no learned state.
_IGNORABLE = {
    "gpt2": re.compile(r"(.*\.)?h\.\d+\.attn\.(bias|masked_bias)"),
    "llama": re.compile(r".*rotary_emb\.inv_freq"),
    "mistral": re.compile(r".*rotary_emb\.inv_freq"),
    "qwen3": re.compile(r".*rotary_emb\.inv_freq"),
    **{fmt: re.compile(r".*rotary_emb\.inv_freq") for fmt in MOE_FORMATS},
    "deepseek_v3": re.compile(r".*rotary_emb\.inv_freq"),
    "gptlab": re.compile(r"(?!)"),
}


# ----------------------------------------------------------------------------------------------- config


def _get(hf: dict[str, Any], key: str, default: Any = None) -> Any:
    value = hf.get(key, default)
    return default if value is None else value


def _rope_theta(hf: dict[str, Any]) -> float:
    """rope_theta from transformers 4 (top-level rope_theta, rope_scaling) or 5 (rope_parameters)."""
    params = hf.get("rope_parameters")
    scaling = hf.get("rope_scaling")
    theta = hf.get("rope_theta")
    for block_name, block in (("rope_parameters", params), ("rope_scaling", scaling)):
        if block is None:
            continue
        if not isinstance(block, dict):
            raise CheckpointError(f"{block_name} must be an object or null, got {block!r}")
        rope_type = block.get("rope_type", block.get("type", "default"))
        if rope_type != "default":
            raise CheckpointError(
                f"{block_name} has rope_type {rope_type!r}: only 'default' RoPE is supported (no scaled "
                "variants such as linear, dynamic, yarn, llama3); use a checkpoint without RoPE scaling"
            )
        if block.get("rope_theta") is not None:
            theta = block["rope_theta"]
    return float(10000.0 if theta is None else theta)


def _config_gpt2(hf: dict[str, Any]) -> GPTConfig:
    act = _get(hf, "activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise CheckpointError(
            f"activation_function {act!r} is not supported: gptlab's GPT-2 MLP uses the tanh GELU "
            "('gelu_new' or 'gelu_pytorch_tanh')"
        )
    if not _get(hf, "scale_attn_weights", True) or _get(hf, "scale_attn_by_inverse_layer_idx", False):
        raise CheckpointError(
            "scale_attn_weights=false / scale_attn_by_inverse_layer_idx=true are not supported: "
            "gptlab scales attention by 1/sqrt(head_dim) only"
        )
    if _get(hf, "add_cross_attention", False):
        raise CheckpointError("add_cross_attention=true is not supported: gptlab is decoder-only")
    n_embd = _get(hf, "n_embd", 768)
    return GPTConfig(
        vocab_size=_get(hf, "vocab_size", 50257),
        block_size=_get(hf, "n_positions", 1024),
        n_layer=_get(hf, "n_layer", 12),
        n_head=_get(hf, "n_head", 12),
        n_embd=n_embd,
        bias=True,
        tie_embeddings=bool(_get(hf, "tie_word_embeddings", True)),
        pos_emb="learned",
        norm="layernorm",
        norm_eps=float(_get(hf, "layer_norm_epsilon", 1e-5)),
        mlp="gelu",
        mlp_hidden=_get(hf, "n_inner", 4 * n_embd),
    )


def _config_llama(hf: dict[str, Any], model_type: str) -> GPTConfig:
    act = _get(hf, "hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"hidden_act {act!r} is not supported: gptlab's SwiGLU uses 'silu'")
    for key in ("attention_bias", "mlp_bias"):
        if _get(hf, key, False):
            raise CheckpointError(f"{key}=true is not supported: Llama/Mistral/Qwen3 models load with bias=False")
    for key in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"):
        if key not in hf:
            raise CheckpointError(f"{key} is missing; a {model_type} config.json needs it")
    n_embd, n_head = hf["hidden_size"], hf["num_attention_heads"]
    # transformers' Mistral slides whenever sliding_window is not null (it has no use_sliding_window switch),
    # by 4096 when the key is absent.
    window, pattern = (hf.get("sliding_window", 4096) if model_type == "mistral" else None), None
    if model_type == "qwen3":
        window, pattern = _qwen3_windows(hf)
    elif model_type in MOE_FORMATS:  # Mixtral: a window if sliding_window is set; Qwen3-MoE: on every layer
        window = hf.get("sliding_window") if _get(hf, "use_sliding_window", model_type == "mixtral") else None
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=_get(hf, "max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_head=n_head,
        n_embd=n_embd,
        n_kv_head=_get(hf, "num_key_value_heads", n_head),
        head_dim=hf.get("head_dim"),  # None: hidden_size / num_attention_heads
        bias=False,
        tie_embeddings=bool(_get(hf, "tie_word_embeddings", False)),
        pos_emb="rope",
        rope_theta=_rope_theta(hf),
        window=window,
        layer_pattern=pattern,
        norm="rmsnorm",
        norm_eps=float(_get(hf, "rms_norm_eps", 1e-6)),
        mlp="swiglu",
        mlp_hidden=hf["intermediate_size"],
        qk_norm=model_type in ("qwen3", "qwen3_moe"),
    )


def _qwen3_windows(hf: dict[str, Any]) -> tuple[int | None, str | None]:
    """(window, layer_pattern) of a Qwen3 config, as transformers reads it: the sliding layers' window (None: none
    slides) and, where layer_types mix sliding and full attention, its shortest repeating pattern of L and G."""
    # Qwen3Config: sliding_window counts only with use_sliding_window; without layer_types, layers from
    # max_window_layers on slide.
    window = hf.get("sliding_window", 4096) if _get(hf, "use_sliding_window", False) else None
    n_layer, first_sliding = hf["num_hidden_layers"], _get(hf, "max_window_layers", 28)
    types = hf.get("layer_types") or [
        "sliding_attention" if window is not None and i >= first_sliding else "full_attention" for i in range(n_layer)
    ]
    if len(types) != n_layer or set(types) - {"sliding_attention", "full_attention"}:
        raise CheckpointError(f"layer_types must name 'sliding_attention' or 'full_attention' for each of the "
                              f"{n_layer} layers, got {types!r}")
    pattern = "".join("L" if t == "sliding_attention" and window is not None else "G" for t in types)
    if "L" not in pattern or "G" not in pattern:
        return (window if "L" in pattern else None), None
    period = next(n for n in range(1, n_layer + 1) if all(c == pattern[i % n] for i, c in enumerate(pattern)))
    return window, pattern[:period]


def config_from_hf(hf_config: dict[str, Any]) -> GPTConfig:
    """The GPTConfig for a Hugging Face config.json (gpt2, llama, mistral, qwen3) or a gptlab one.

    Raises CheckpointError naming the field for anything gptlab cannot represent.
    """
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"the config must be a JSON object, got {type(hf_config).__name__}")
    model_type = hf_config.get("model_type")
    try:
        if model_type == "gpt2":
            return _config_gpt2(hf_config)
        if model_type in ("llama", "mistral", "qwen3"):
            return _config_llama(hf_config, model_type)
        if model_type in MOE_FORMATS:
            return moe_config(hf_config, model_type, _config_llama(hf_config, model_type))
        if model_type == "deepseek_v3":
            return config_deepseek(hf_config, _rope_theta(hf_config))
        if model_type == "gptlab":
            fields = hf_config.get("gptlab")
            if not isinstance(fields, dict):
                raise CheckpointError('a gptlab config.json needs a "gptlab" object of GPTConfig fields')
            return GPTConfig.from_dict(fields)
    except CheckpointError:
        raise
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"the {model_type} config does not give a valid GPTConfig: {one_line(e)}") from None
    raise CheckpointError(
        f"unknown model_type {model_type!r}; supported model types: {', '.join(SUPPORTED_MODEL_TYPES)}"
    )


# ----------------------------------------------------------------------------------------- export formats

def _any(value: Any) -> bool:
    return True


# The fields that are not switches, with the values each format holds; a switch's formats are in its entry of
# config.SWITCHES. Deny by default: a field named neither there nor here is held only at GPT-2's value, so a new
# field keeps its models in gptlab's format until a format says it holds it. Sizes are held by every format, and so
# is dropout, a training setting: the saved model computes the same function without it.
_HOLDS: dict[str, dict[str, Callable[[Any], bool]]] = {
    # bias=False: GPT-2 without biases is GPT-2 with zero biases, and is written so (save_pretrained).
    "gpt2": {"bias": _any, "tie_embeddings": _any, "norm_eps": _any, "mlp_hidden": _any},
    "llama": {"bias": lambda bias: bias is False, "tie_embeddings": _any, "norm_eps": _any, "mlp_hidden": _any,
              "rope_theta": _any, "head_dim": _any},
}
_HOLDS["mistral"] = _HOLDS["qwen3"] = _HOLDS["llama"]
_HOLDS.update({fmt: {**_HOLDS["llama"], **holds} for fmt, holds in MOE_HOLDS.items()})
# DeepSeek-V3: MLA's sizes; head_dim (which MLA does not use) only as derived, as loading derives it; its experts.
_HOLDS["deepseek_v3"] = {**{k: v for k, v in _HOLDS["llama"].items() if k != "head_dim"}, **dict.fromkeys(
    ("q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"), _any), **DEEPSEEK_HOLDS}
_HELD_BY_EVERY_FORMAT = (*SIZE_FIELDS, "dropout")


def export_blockers(config: GPTConfig, fmt: str) -> list[str]:
    """The settings of config that the Hugging Face format fmt cannot hold, as "field=value" (none: it holds it)."""
    switches = {s.field: s for s in SWITCHES}
    gpt2 = gpt2_reference(config)
    blockers = []
    for f in dataclasses.fields(config):
        name, value = f.name, getattr(config, f.name)
        if name in _HELD_BY_EVERY_FORMAT or (name in MOE_ONLY_FIELDS and not config.n_expert):
            continue  # without experts, their settings are their defaults (validated) and do nothing
        if name in switches:
            s = switches[name]
            held = fmt in (s.hf_modern if s.is_on(config) else s.hf_gpt2)
        elif name in _HOLDS[fmt]:
            held = _HOLDS[fmt][name](value)
        else:
            held = value == getattr(gpt2, name)
        if not held:
            blockers.append(f"{name}={value!r}")
    return blockers


def export_format(config: GPTConfig) -> str:
    """The format save_pretrained writes a config in: the first of HF_FORMATS that holds every setting, else
    "gptlab" (our own) for the mixtures no Hugging Face architecture holds."""
    return next((fmt for fmt in HF_FORMATS if not export_blockers(config, fmt)), "gptlab")


def why_gptlab_format(config: GPTConfig) -> str:
    """Which settings keep config out of each Hugging Face format, in one line ("" if one holds it)."""
    if export_format(config) != "gptlab":
        return ""
    blocked = "; ".join(f"{fmt} cannot hold {', '.join(export_blockers(config, fmt))}" for fmt in HF_FORMATS)
    return f"no Hugging Face format holds this mixture of switches: {blocked}"


def is_hf_gpt2_compatible(config: GPTConfig) -> bool:
    """Whether the HF GPT-2 format (GPT2LMHeadModel) holds config exactly."""
    return not export_blockers(config, "gpt2")


def hf_llama_config(config: GPTConfig, kind: str | None = None) -> dict[str, Any]:
    """The HF Llama config.json for a Llama-shaped GPTConfig; Mistral's with a window, Qwen3's with QK-norm; with
    experts, kind is mixtral or qwen3_moe."""
    kind = kind or ("qwen3" if config.qk_norm else "llama" if config.window is None else "mistral")
    bad = export_blockers(config, kind)
    if bad:
        raise ValueError(f"not a Llama config, HF {kind} format cannot hold it: {', '.join(bad)}")
    special = 50256 if config.vocab_size > 50256 else None  # GPT-2's <|endoftext|>; else none (not Llama's 1, 2)
    architecture = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen3": "Qwen3ForCausalLM",
                    **MOE_ARCHITECTURES}
    hf = {
        "architectures": [architecture[kind]],
        "model_type": kind,
        "vocab_size": config.vocab_size,
        "max_position_embeddings": config.block_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.mlp_hidden,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_kv_head,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.norm_eps,
        "rope_theta": config.rope_theta,  # transformers 4; 5 reads rope_parameters
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
        "attention_dropout": 0.0,  # Llama has dropout on attention weights only, gptlab also on residuals: none
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": 0.02,
        "bos_token_id": special,
        "eos_token_id": special,
    }
    if kind == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    elif kind in ("mistral", "mixtral"):
        hf["sliding_window"] = config.window
    elif kind == "qwen3_moe":  # a window on every layer, with use_sliding_window
        hf.update(attention_bias=False, use_sliding_window=config.window is not None, sliding_window=config.window)
    else:  # Qwen3 slides only with use_sliding_window, in the layers layer_types names (local/global layers)
        types = ["full_attention" if config.layer_window(i) is None else "sliding_attention"
                 for i in range(config.n_layer)]
        hf.update(attention_bias=False, use_sliding_window=config.window is not None, sliding_window=config.window,
                  max_window_layers=0 if config.window else config.n_layer, layer_types=types)
    return {**hf, **hf_moe_fields(kind, config)} if kind in MOE_FORMATS else hf


def hf_gpt2_config(config: GPTConfig) -> dict[str, Any]:
    """The HF GPT-2 config.json for a plain GPT-2 GPTConfig (ValueError for any other)."""
    bad = export_blockers(config, "gpt2")
    if bad:
        raise ValueError(f"not a GPT-2 config, HF GPT-2 format cannot hold it: {', '.join(bad)}")
    special = 50256 if config.vocab_size > 50256 else None  # <|endoftext|> of the GPT-2 tokenizer
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None if config.mlp_hidden == 4 * config.n_embd else config.mlp_hidden,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.norm_eps,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": special,
        "eos_token_id": special,
    }


# ---------------------------------------------------------------------------------------------- loading
# One source tensor: its name in the checkpoint and the shape it must have.
_Source = tuple[str, tuple[int, ...]]
# How one of our tensors is made: its sources and the function that combines them.
_Plan = tuple[list[_Source], Callable[[list[torch.Tensor]], torch.Tensor]]


def _single(t: list[torch.Tensor]) -> torch.Tensor:
    return t[0]


def _transpose(t: list[torch.Tensor]) -> torch.Tensor:
    return t[0].t()


def _concat(t: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(t, dim=0)


def _plan_gpt2(key: str, shape: tuple[int, ...], prefix: str, config: GPTConfig) -> _Plan:
    if key == "lm_head.weight":
        return [("lm_head.weight", shape)], _single
    name = prefix + key.removeprefix("transformer.")
    if _CONV1D.fullmatch(key.removeprefix("transformer.")):
        return [(name, shape[::-1])], _transpose
    return [(name, shape)], _single


_LLAMA_SIMPLE = {
    "transformer.wte.weight": "model.embed_tokens.weight",
    "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight",
}
_LLAMA_LAYER = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "attn.q_norm.weight": "self_attn.q_norm.weight",  # Qwen3's QK-norm
    "attn.k_norm.weight": "self_attn.k_norm.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
    **{f"attn.{ours}.weight": f"self_attn.{theirs}.weight" for ours, theirs in (  # DeepSeek's MLA
        ("q_proj", "q_proj"), ("q_a_proj", "q_a_proj"), ("q_a_norm", "q_a_layernorm"), ("q_b_proj", "q_b_proj"),
        ("kv_a_proj", "kv_a_proj_with_mqa"), ("kv_a_norm", "kv_a_layernorm"), ("kv_b_proj", "kv_b_proj"))},
}


def _plan_llama(key: str, shape: tuple[int, ...], prefix: str, config: GPTConfig) -> _Plan:
    if key in _LLAMA_SIMPLE:
        return [(_LLAMA_SIMPLE[key], shape)], _single
    m = re.fullmatch(r"transformer\.h\.(\d+)\.(.+)", key)
    if m is None:
        raise CheckpointError(f"internal: no Llama tensor maps to {key}")  # a model change this file misses
    layer, rest = f"model.layers.{m.group(1)}.", m.group(2)
    if rest in _LLAMA_LAYER:
        return [(layer + _LLAMA_LAYER[rest], shape)], _single
    C, hd = config.n_embd, config.head_dim
    if rest == "attn.c_attn.weight":
        q, kv = (config.n_head * hd, C), (config.n_kv_head * hd, C)
        return [(layer + "self_attn.q_proj.weight", q), (layer + "self_attn.k_proj.weight", kv),
                (layer + "self_attn.v_proj.weight", kv)], _concat
    if rest == "mlp.c_fc.weight":
        h = (config.mlp_hidden, C)
        return [(layer + "mlp.gate_proj.weight", h), (layer + "mlp.up_proj.weight", h)], _concat
    raise CheckpointError(f"internal: no Llama tensor maps to {key}")


def _plan_gptlab(key: str, shape: tuple[int, ...], prefix: str, config: GPTConfig) -> _Plan:
    return [(key, shape)], _single


def _plan_moe(kind: str) -> Callable[..., _Plan]:
    """Mixtral's or Qwen3-MoE's plan: the experts' tensors from hf_moe.py, concatenated; the rest as Llama's."""
    def plan(key: str, shape: tuple[int, ...], prefix: str, config: GPTConfig) -> _Plan:
        sources = expert_sources(kind, key, config)
        if sources is None:
            return _plan_llama(key, shape, prefix, config)
        return sources, _single if len(sources) == 1 else _concat
    return plan


_PLANS = {"gpt2": _plan_gpt2, "llama": _plan_llama, "mistral": _plan_llama, "qwen3": _plan_llama,
          **{fmt: _plan_moe(fmt) for fmt in (*MOE_FORMATS, "deepseek_v3")}, "gptlab": _plan_gptlab}


def _convert(
    model_type: str, config: GPTConfig, expected: dict[str, tuple[int, ...]], src: dict[str, torch.Tensor],
    file: Path, dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Our state dict from the checkpoint's tensors, strictly: all present, right shapes, nothing left over."""
    prefix = ""
    if model_type == "gpt2":
        prefix = "" if "wte.weight" in src and "transformer.wte.weight" not in src else "transformer."
    plan = _PLANS[model_type]
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for key, shape in expected.items():
        sources, combine = plan(key, shape, prefix, config)
        parts = []
        for name, want in sources:
            if name not in src:
                raise CheckpointError(
                    f"{file} has no tensor {name!r} (needed for {key}); the checkpoint is incomplete or "
                    f"does not match {CONFIG_NAME}"
                )
            got = tuple(src[name].shape)
            if got != tuple(want):
                raise CheckpointError(
                    f"tensor {name!r} in {file} has shape {got}, expected {tuple(want)} from {CONFIG_NAME}; "
                    "the weights do not match the config"
                )
            parts.append(src[name])
            used.add(name)
        t = combine(parts).reshape(shape)  # experts: concatenated sources, then stacked (n_expert, out, in)
        # DeepSeek-V3's router (its weight and the choice bias) stays fp32, as transformers keeps it (keeps_fp32).
        t = (t.to(torch.float32 if keeps_fp32(config, key) else dtype) if t.is_floating_point() else t).contiguous()
        # A view into the file's buffer can sit off the 64-byte alignment of torch's own memory, where matmul kernels
        # round differently (experts' small matmuls show it): a copy computes bit for bit what the saved model did.
        out[key] = t.clone() if t.data_ptr() % 64 else t
    ignorable = _IGNORABLE[model_type]
    leftover = sorted(
        n for n in src
        if n not in used and not ignorable.fullmatch(n) and not (config.tie_embeddings and n == "lm_head.weight")
    )
    if leftover:
        more = f" and {len(leftover) - 5} more" if len(leftover) > 5 else ""
        raise CheckpointError(
            f"{file} has unexpected tensor(s) {leftover[:5]}{more} that a {model_type} model with this "
            f"{CONFIG_NAME} does not use; the weights do not match the config"
        )
    return out


def _build(config: GPTConfig, state: dict[str, torch.Tensor]) -> GPT:
    """GPT holding `state`, without spending time on a random init that would be overwritten."""
    with torch.device("meta"):
        model = GPT(config)
    if config.tie_embeddings:
        state = {**state, "lm_head.weight": state["transformer.wte.weight"]}
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    if config.pos_emb == "rope" and hasattr(model, "rotary"):
        model.rotary = type(model.rotary)(config.rotary_dim, config.rope_theta)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        # Some non-persistent buffer we do not know how to rebuild: take the slow path.
        model = GPT(config)
        model.load_state_dict({k: v for k, v in state.items()}, strict=True)
    return model


def load_pretrained(
    path_or_name: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> GPT:
    """A GPT from a checkpoint directory or a Hugging Face Hub id, in eval mode.

    path_or_name: a directory with config.json and model.safetensors (or model.safetensors.index.json,
    or pytorch_model.bin), or a Hub id such as "gpt2" (downloaded with huggingface_hub when online).
    dtype: floating dtype of the parameters (default: torch's default dtype, float32). device: where to
    put the model (default: CPU).
    """
    directory = resolve(path_or_name)
    hf = read_config(directory)
    config = config_from_json(hf, directory / CONFIG_NAME)  # the one reading of a config.json (checkpoint.py)
    model_type = hf.get("model_type", "gptlab")  # GPTConfig.save's bare fields: gptlab's own tensor names
    src, file = load_weights(directory)
    if model_type == "deepseek_v3":
        src = deepseek_tensors(hf, config, src)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(config).state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight", None)
    state = _convert(model_type, config, expected, src, file, dtype or torch.get_default_dtype())
    del src
    model = _build(config, state)
    if device is not None:
        model = model.to(device)
    return model.eval()


# ----------------------------------------------------------------------------------------------- saving


def copy_hf_tokenizer(source: str | Path, dst: Path) -> list[str]:
    """Copy the tokenizer files of a local Hugging Face directory (a Llama's, say) into dst; their names."""
    src = Path(source).expanduser()
    files = [src / n for n in HF_TOKENIZER_FILES if (src / n).is_file()] if src.is_dir() else []
    for f in files:
        shutil.copyfile(f, dst / f.name)
    return [f.name for f in files]


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """write(tmp) to a temporary file next to path, then rename it over path: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp and safetensors make it private; a checkpoint is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _export_tensors(model_type: str, config: GPTConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors for our state dict: the loading plans of _PLANS run backwards."""
    prefix = "transformer." if model_type == "gpt2" else ""  # what transformers itself writes
    out: dict[str, torch.Tensor] = {}
    for key, t in state.items():
        sources, combine = _PLANS[model_type](key, tuple(t.shape), prefix, config)
        t = t.detach().cpu()
        if combine is _transpose:
            parts = [t.t()]
        elif combine is _concat:  # experts' (n_expert, out, in) tensors as their rows first
            parts = list(t.reshape(-1, t.shape[-1]).split([shape[0] for _, shape in sources], dim=0))
        else:
            parts = [t]
        for (name, _), part in zip(sources, parts, strict=True):
            out[name] = part.contiguous().clone()
    return out


def _with_zero_biases(config: GPTConfig, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """state plus a zero tensor for every bias that GPT(config) has and state lacks."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT(config).state_dict().items() if k.endswith(".bias")}
    dtype = state["transformer.wte.weight"].dtype
    return {**state, **{k: torch.zeros(shape, dtype=dtype) for k, shape in shapes.items() if k not in state}}


def save_pretrained(model: GPT, directory: str | Path) -> None:
    """Write config.json and model.safetensors to directory (created if needed).

    In the Hugging Face format that holds the architecture exactly, so transformers loads it: GPT-2
    (GPT2LMHeadModel; without biases, with zero biases), Llama (RoPE + RMSNorm + SwiGLU, no biases), Mistral
    (Llama with a sliding window) or Qwen3 (Llama with QK-norm); anything else in gptlab format: our own tensor
    names and {"model_type": "gptlab", "gptlab": {...}}. A tied lm_head is not stored. Dropout, a training setting,
    is kept only by the gptlab format. A bias-free GPT-2 loads back with bias=True and these zero biases.
    """
    from safetensors.torch import save_file

    config = model.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    if config.tie_embeddings:
        state.pop("lm_head.weight", None)
    kind = export_format(config)
    if kind == "gpt2" and not config.bias:
        # GPT2LMHeadModel always has biases; zeros make it compute what the bias-free model computes. Loading
        # it back gives bias=True with these zero biases: the same function, with biases that training can move.
        config = config.replace(bias=True)
        state = _with_zero_biases(config, state)
    if kind == "gpt2":
        hf_config = hf_gpt2_config(config)
    elif kind in ("llama", "mistral", "qwen3", *MOE_FORMATS):
        hf_config = hf_llama_config(config, kind)
    elif kind == "deepseek_v3":
        hf_config = hf_deepseek_config(config)
    else:
        hf_config = {"model_type": "gptlab", "architectures": ["GPT"], "gptlab": config.to_dict()}
    tensors = _export_tensors(kind, config, state)
    # The model's dtype, as transformers writes it: DeepSeek-V3's router, fp32 in a bf16 model (keeps_fp32), aside.
    dtypes = {t.dtype for k, t in state.items() if t.is_floating_point() and not keeps_fp32(config, k)}
    if len(dtypes) == 1:
        hf_config["dtype"] = str(dtypes.pop()).removeprefix("torch.")
    _atomic_write(directory / SAFETENSORS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    text = json.dumps(hf_config, indent=2) + "\n"
    _atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
