"""Hugging Face Mixtral and Qwen3-MoE checkpoints: their experts' config keys and tensor names (hf.py registers them).

Both are Llama-shaped (hf.py maps attention, norms and embeddings; Qwen3-MoE adds QK-norm) with a mixture of
experts in place of the MLP:

  mixtral     every layer: block_sparse_moe.gate (the router) and experts.{j}.w1 / w3 / w2 (gate / up / down);
              the top-2 weights always renormalised; sliding_window (null or a window for every layer).
  qwen3_moe   mlp.gate and mlp.experts.{j}.gate_proj / up_proj / down_proj of moe_intermediate_size; norm_topk_prob
              says whether to renormalise; layers in mlp_only_layers, or off the decoder_sparse_step, keep a dense
              mlp of intermediate_size (gptlab's moe_dense_layers).

gptlab fuses each expert's gate and up rows into c_fc, as the dense SwiGLU does, and stacks the experts:
c_fc.weight (n_expert, 2 * hidden, n_embd) is [gate_0; up_0; gate_1; up_1; ...] reshaped, c_proj.weight
(n_expert, n_embd, hidden) is [down_0; down_1; ...] (hf.py concatenates the sources and reshapes).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .checkpoint import CheckpointError
from .config import MOE_FORMATS, GPTConfig

__all__ = ["MOE_ARCHITECTURES", "MOE_FORMATS", "MOE_HOLDS", "expert_sources", "hf_int", "hf_moe_fields", "moe_config"]

MOE_ARCHITECTURES = {"mixtral": "MixtralForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM"}


def _any(value: Any) -> bool:
    return True


# The non-switch fields each format holds beyond Llama's (hf._HOLDS); the switch n_expert itself is in the table.
# Mixtral has no dense layers, no shared experts and always renormalises; its one intermediate_size is the
# experts' (mlp_hidden, used by no layer, is held as any value).
MOE_HOLDS: dict[str, dict[str, Callable[[Any], bool]]] = {
    "mixtral": {"expert_top_k": _any, "expert_hidden": _any, "moe_renorm": lambda renorm: renorm is True},
    "qwen3_moe": {"expert_top_k": _any, "expert_hidden": _any, "moe_renorm": _any, "moe_dense_layers": _any},
}
_NAMES = {  # (the MoE module, the router, gate, up, down) in each format
    "mixtral": ("block_sparse_moe", "gate", "w1", "w3", "w2"),
    "qwen3_moe": ("mlp", "gate", "gate_proj", "up_proj", "down_proj"),
    "deepseek_v3": ("mlp", "gate", "gate_proj", "up_proj", "down_proj"),  # + shared_experts, the router's bias
}


def hf_int(hf: dict[str, Any], key: str, default: int) -> int:
    """config.json's integer `key` (default when absent or null); CheckpointError for anything else."""
    value = hf.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"{key} must be an integer, got {value!r}")
    return value


def moe_config(hf: dict[str, Any], model_type: str, base: GPTConfig) -> GPTConfig:
    """The GPTConfig of a Mixtral or Qwen3-MoE config.json, given the Llama part that hf.py read (base)."""
    n_expert = hf_int(hf, "num_local_experts", hf_int(hf, "num_experts", 8 if model_type == "mixtral" else 128))
    top_k = hf_int(hf, "num_experts_per_tok", 2 if model_type == "mixtral" else 8)
    if model_type == "mixtral":
        return base.replace(n_expert=n_expert, expert_top_k=top_k)
    if n_expert == 0:  # transformers builds no expert anywhere: a dense Qwen3
        return base
    step = hf_int(hf, "decoder_sparse_step", 1)
    only = hf.get("mlp_only_layers") or []
    if step < 1 or not isinstance(only, list):
        raise CheckpointError(f"decoder_sparse_step must be >= 1 and mlp_only_layers a list, got {step!r}, {only!r}")
    # transformers' Qwen3MoeDecoderLayer: experts where the layer is not in mlp_only_layers and (i + 1) % step == 0.
    dense = tuple(i for i in range(base.n_layer) if i in only or (i + 1) % step)
    hidden = hf_int(hf, "moe_intermediate_size", base.mlp_hidden)
    return base.replace(n_expert=n_expert, expert_top_k=top_k, moe_renorm=bool(hf.get("norm_topk_prob", False)),
                        expert_hidden=None if hidden == base.mlp_hidden else hidden, moe_dense_layers=dense)


def hf_moe_fields(kind: str, config: GPTConfig) -> dict[str, Any]:
    """The config.json keys of experts in format kind, for a config that format holds."""
    fields: dict[str, Any] = {"num_local_experts": config.n_expert, "num_experts_per_tok": config.expert_top_k,
                              "router_aux_loss_coef": 0.0, "output_router_logits": False}
    if kind == "mixtral":  # one intermediate_size: the experts'
        return {**fields, "intermediate_size": config.expert_width, "router_jitter_noise": 0.0}
    return {**fields, "num_experts": config.n_expert, "moe_intermediate_size": config.expert_width,
            "norm_topk_prob": config.moe_renorm, "decoder_sparse_step": 1,
            "mlp_only_layers": list(config.moe_dense_layers)}


def expert_sources(kind: str, key: str, config: GPTConfig) -> list[tuple[str, tuple[int, ...]]] | None:
    """The checkpoint tensors (name, shape) that make our expert tensor `key`, in the order hf.py concatenates them;
    None for a tensor that is not an expert's or the router's (hf.py maps it as Llama's)."""
    m = re.fullmatch(r"transformer\.h\.(\d+)\.mlp\.(router\.weight|c_fc\.weight|c_proj\.weight|choice_bias|"
                     r"shared\.c_fc\.weight|shared\.c_proj\.weight)", key)
    if m is None or int(m.group(1)) not in config.moe_layers:
        return None
    module, router, gate, up, down = _NAMES[kind]
    prefix = f"model.layers.{m.group(1)}.{module}."
    d, hidden, n, part = config.n_embd, config.expert_width, config.n_expert, m.group(2)
    shared = config.n_shared_expert * hidden  # DeepSeek's shared experts: one MLP as wide as all of them
    sources = {
        "router.weight": [(prefix + f"{router}.weight", (n, d))],
        "choice_bias": [(prefix + f"{router}.e_score_correction_bias", (n,))],  # DeepSeek's, in its router
        "c_fc.weight": [(prefix + f"experts.{j}.{name}.weight", (hidden, d)) for j in range(n) for name in (gate, up)],
        "c_proj.weight": [(prefix + f"experts.{j}.{down}.weight", (d, hidden)) for j in range(n)],
        "shared.c_fc.weight": [(prefix + f"shared_experts.{gate}.weight", (shared, d)),
                               (prefix + f"shared_experts.{up}.weight", (shared, d))],
        "shared.c_proj.weight": [(prefix + f"shared_experts.{down}.weight", (d, shared))],
    }
    return sources[part]
