"""Hugging Face DeepSeek-V3 checkpoints: their multi-head latent attention (MLA) config, DeepSeek's interleaved RoPE
layout, their mixture of experts (the first first_k_dense_replace layers dense, the rest DeepSeek's MoE with its
own router), and the way back. hf.py registers the format and maps the tensors (Llama's names, plus the MLA ones in
its _LLAMA_LAYER; the experts', the router's bias and the shared experts' in hf_moe.py).

DeepSeek-V3's router is the MoE switch's with DeepSeek's settings: moe_score="sigmoid", moe_groups=n_group,
moe_topk_groups=topk_group, moe_choice_bias (e_score_correction_bias, always there), moe_scale=routed_scaling_factor,
moe_renorm=norm_topk_prob. Its shared experts are one MLP of moe_intermediate_size x n_shared_experts, as gptlab's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .checkpoint import CheckpointError
from .config import GPTConfig
from .hf_moe import hf_int


def _any(value: Any) -> bool:
    return True


# The settings of experts the format holds (hf._HOLDS), with experts on; a dense model's are inert (hf.py). Its
# router is always the sigmoid with a choice bias; transformers builds the shared MLP whatever n_shared_experts
# says (0 gives zero-width tensors), and the dense layers are the first first_k_dense_replace.
DEEPSEEK_HOLDS: dict[str, Callable[[Any], bool]] = {
    **dict.fromkeys(("expert_top_k", "expert_hidden", "moe_renorm", "moe_groups", "moe_topk_groups", "moe_scale"),
                    _any),
    "moe_score": lambda score: score == "sigmoid",
    "moe_choice_bias": lambda bias: bias is True,
    "n_shared_expert": lambda n: n >= 1,
    "moe_dense_layers": lambda dense: dense == tuple(range(len(dense))),
}


def config_deepseek(hf: dict[str, Any], rope_theta: float) -> GPTConfig:
    """The GPTConfig of a DeepSeek-V3 config.json (rope_theta already read, and RoPE scaling refused, by hf.py)."""
    keys = ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size",
            "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")
    missing = [k for k in keys if hf.get(k) is None]
    if missing:
        raise CheckpointError(f"{', '.join(missing)} missing; a deepseek_v3 config.json needs them")
    n_layer, n_head = hf["num_hidden_layers"], hf["num_attention_heads"]
    dense = hf.get("first_k_dense_replace", 3)
    if isinstance(dense, bool) or not isinstance(dense, int) or dense < 0:
        raise CheckpointError(f"first_k_dense_replace must be an integer >= 0, got {dense!r}")
    if hf.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"hidden_act {hf['hidden_act']!r} is not supported: gptlab's SwiGLU uses 'silu'")
    if hf.get("attention_bias"):
        raise CheckpointError("attention_bias=true is not supported: DeepSeek-V3 models load with bias=False")
    if hf.get("num_key_value_heads") not in (None, n_head):
        # transformers' DeepSeek-V3 up-projects a key and a value for every head whatever this says.
        raise CheckpointError(f"num_key_value_heads={hf['num_key_value_heads']} must equal num_attention_heads="
                              f"{n_head}: MLA up-projects a key and a value per head")
    config = GPTConfig(
        vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings") or 4096, n_layer=n_layer,
        n_head=n_head, n_embd=hf["hidden_size"], bias=False, tie_embeddings=bool(hf.get("tie_word_embeddings")),
        pos_emb="rope", rope_theta=rope_theta, norm="rmsnorm", norm_eps=float(hf.get("rms_norm_eps") or 1e-6),
        mlp="swiglu", mlp_hidden=hf["intermediate_size"], kv_lora_rank=hf["kv_lora_rank"],
        q_lora_rank=hf.get("q_lora_rank"), qk_nope_head_dim=hf["qk_nope_head_dim"],
        qk_rope_head_dim=hf["qk_rope_head_dim"], v_head_dim=hf["v_head_dim"],
    )
    return config if dense >= n_layer else config.replace(**_experts(hf, dense, config.mlp_hidden))


def _experts(hf: dict[str, Any], dense: int, mlp_hidden: int) -> dict[str, Any]:
    """The MoE settings of a DeepSeek-V3 config.json with experts from layer `dense` on (transformers' defaults for
    the keys it lacks)."""
    hidden = hf_int(hf, "moe_intermediate_size", 2048)
    scale = hf.get("routed_scaling_factor", 2.5)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise CheckpointError(f"routed_scaling_factor must be a number, got {scale!r}")
    return dict(
        n_expert=hf_int(hf, "n_routed_experts", 256), expert_top_k=hf_int(hf, "num_experts_per_tok", 8),
        expert_hidden=None if hidden == mlp_hidden else hidden, n_shared_expert=hf_int(hf, "n_shared_experts", 1),
        moe_dense_layers=tuple(range(dense)), moe_renorm=bool(hf.get("norm_topk_prob", True)), moe_score="sigmoid",
        moe_groups=hf_int(hf, "n_group", 8), moe_topk_groups=hf_int(hf, "topk_group", 4), moe_choice_bias=True,
        moe_scale=float(scale),
    )


def deepseek_tensors(hf: dict[str, Any], config: GPTConfig, src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """src as hf.py maps it: RoPE rows in gptlab's layout (deinterleave_rope), and without the zero-width shared
    experts transformers writes for n_shared_experts=0 (gptlab builds none)."""
    src = deinterleave_rope(hf, config, src)
    return {k: t for k, t in src.items() if not (".mlp.shared_experts." in k and t.numel() == 0)}


def deinterleave_rope(hf: dict[str, Any], config: GPTConfig, src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """src with the RoPE rows of every query head and of the shared key in gptlab's "rotate half" layout.

    With rope_interleave (DeepSeek's default), channels (0, 1), (2, 3), ... of the RoPE part are rotated pairs;
    transformers rotates them as [even channels | odd channels] in rotate-half form. Ordering the rows of the
    projections that make those channels that way (evens, then odds) gives the same numbers through gptlab's RoPE.
    """
    if not hf.get("rope_interleave", True):
        return src
    r, nope = config.qk_rope_head_dim, config.qk_nope_head_dim
    order = torch.cat([torch.arange(0, r, 2), torch.arange(1, r, 2)])
    head = torch.cat([torch.arange(nope), nope + order])  # one query head: [no-RoPE | RoPE] rows
    q_rows = torch.cat([h * (nope + r) + head for h in range(config.n_head)])
    kv_rows = torch.cat([torch.arange(config.kv_lora_rank), config.kv_lora_rank + order])  # [latent | RoPE key]
    out = dict(src)
    for name, t in src.items():
        if name.endswith(("self_attn.q_proj.weight", "self_attn.q_b_proj.weight")):
            out[name] = t[q_rows]
        elif name.endswith("self_attn.kv_a_proj_with_mqa.weight"):
            out[name] = t[kv_rows]
    return out


def hf_deepseek_config(config: GPTConfig) -> dict[str, Any]:
    """The DeepSeek-V3 config.json for an MLA GPTConfig that format holds (with experts or all layers dense), RoPE
    not interleaved (gptlab's layout; transformers reads both)."""
    special = 50256 if config.vocab_size > 50256 else None  # GPT-2's <|endoftext|>; else none
    c = config
    experts = {
        "first_k_dense_replace": len(c.moe_dense_layers), "n_routed_experts": c.n_expert,
        "num_experts_per_tok": c.expert_top_k, "moe_intermediate_size": c.expert_width,
        "n_shared_experts": c.n_shared_expert, "n_group": c.moe_groups, "topk_group": c.moe_topk_groups,
        "norm_topk_prob": c.moe_renorm, "routed_scaling_factor": c.moe_scale,
    } if c.n_expert else {
        "first_k_dense_replace": c.n_layer, "n_routed_experts": 1, "num_experts_per_tok": 1,
        "n_group": 1, "topk_group": 1, "moe_intermediate_size": 1,  # no MoE layer: placeholders transformers needs
    }
    return {
        "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
        "vocab_size": config.vocab_size, "max_position_embeddings": config.block_size,
        "hidden_size": config.n_embd, "intermediate_size": config.mlp_hidden, "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head, "num_key_value_heads": config.n_head,
        "kv_lora_rank": config.kv_lora_rank, "q_lora_rank": config.q_lora_rank,
        "qk_nope_head_dim": config.qk_nope_head_dim, "qk_rope_head_dim": config.qk_rope_head_dim,
        "v_head_dim": config.v_head_dim, "head_dim": config.qk_rope_head_dim, "rope_interleave": False, **experts,
        "hidden_act": "silu", "rms_norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta}, "attention_bias": False,
        "attention_dropout": 0.0, "tie_word_embeddings": config.tie_embeddings, "initializer_range": 0.02,
        "bos_token_id": special, "eos_token_id": special,
    }
