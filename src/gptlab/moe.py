"""Mixture of experts beside the layer itself (`MoE` in model.py): the experts' matmuls, what a routing yields in
training, and the losses and metrics built from it.

The experts' matmuls (`expert_linear`): the layer sorts its (token, expert) pairs by expert, so each expert's rows
are one slice, and runs each expert's Linear on its slice: one F.linear per expert, or one call of torch's grouped
matmul (F.grouped_mm, offsets marking the slices). Both compute the same products; which is faster depends on the CPU
and the shape (grouped: 1.1-1.6x on an AVX-512 Xeon at the MoE benchmark's shapes), so on CPU it is timed
(autotune op "experts matmul") wherever the grouped matmul takes the shape (grouped_fits).

Each time the layer routes in training mode it keeps a `RouterStats` (`router_stats` below); the trainer reads them
after the forward pass:

  load-balancing loss   aux = n_expert * sum_i f_i * P_i       (Switch Transformer; Mixtral's router_aux_loss)
                        f_i: the fraction of the N * k routing slots (token, choice) that went to expert i,
                        P_i: the router's probability for expert i, averaged over the N tokens; with sigmoid
                        scores (DeepSeek-V3), the token's scores normalised to sum to 1, as DeepSeek-V3's
                        sequence-wise balance loss normalises them (here over the batch's N tokens, not per sequence).
                        f carries no gradient (it counts); P does, and aux is smallest (1) when both are uniform.
  router z-loss         z = mean over tokens of logsumexp(router logits)^2      (ST-MoE, Zoph et al. 2022)

Both are averaged over the MoE layers; `router_penalty` is what the trainer adds to the cross-entropy for
backprop (the loss it logs stays the pure cross-entropy, so runs compare), and `RouterLog` turns the stats into
metrics.jsonl's `moe_aux_loss`, `moe_z_loss` and `moe_load` (f per expert, averaged over MoE layers and steps).
(Hugging Face's Mixtral counts f_i over the N tokens rather than the N * k slots: its aux is k times this one.)

DeepSeek-V3's auxiliary-loss-free balancing (`--trainer.moe_bias_update=GAMMA`, `balance_choice_bias`) needs no loss:
after each optimizer step, every expert's choice bias moves by GAMMA towards an even load,
b_i += GAMMA * sign(mean_j c_j - c_i) with c_i the routing slots expert i got in the step (all micro-batches and
ranks). The bias only chooses experts (model.MoE.choose), so the weights, and the gradients, never see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from . import autotune, distributed
from .config import GPTConfig

FP32, INT64 = 4, 8


# --- the experts' matmuls ------------------------------------------------------------------------------------------


def looped_experts(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   counts: list[int]) -> torch.Tensor:
    """Expert i's Linear (weight[i], bias[i]) on its counts[i] rows of x, one F.linear per expert. The weight is
    unbound once: the backward stacks n gradients, where indexing it per expert would build n zero-padded copies."""
    biases = bias.unbind(0) if bias is not None else [None] * len(counts)
    parts = zip(x.split(counts), weight.unbind(0), biases, strict=True)
    return torch.cat([F.linear(rows, w, b) for rows, w, b in parts])


def grouped_experts(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                    counts: list[int]) -> torch.Tensor:
    """The same as one call of torch's grouped matmul: offs[i] is where expert i's rows end."""
    sizes = torch.tensor(counts, device=x.device)
    if torch.is_autocast_enabled(x.device.type):  # grouped_mm is not autocast-aware; F.linear would run in its dtype
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight, bias = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
    y = F.grouped_mm(x, weight.transpose(-2, -1), offs=sizes.cumsum(0, dtype=torch.int32))
    if bias is not None:
        y = y + bias.repeat_interleave(sizes, dim=0, output_size=x.shape[0])
    return y


EXPERT_PATHS = {autotune.PLAIN: looped_experts, "grouped": grouped_experts}


def grouped_fits(weight: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the grouped matmul takes these experts in `dtype`: torch's (2.13, CPU) raises unless every row of its
    operands, forward and backward, is a multiple of 16 bytes, so in_features and out_features must be."""
    return all(n * dtype.itemsize % 16 == 0 for n in weight.shape[1:])


def expert_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  counts: list[int]) -> torch.Tensor:
    """Each expert's Linear on its slice of x (rows sorted by expert, counts[i] for expert i), by the path that
    measured fastest for the shape on CPU. Elsewhere, and under torch.compile, one F.linear per expert."""
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return looped_experts(x, weight, bias, counts)
    grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if not grouped_fits(weight, dtype):  # nothing to time: only the loop can run
        return looped_experts(x, weight, bias, counts)
    rows = 1 << max(x.shape[0] - 1, 0).bit_length()  # timed once per power of two of rows: prompts vary in length
    key = (*weight.shape, rows, str(dtype), grad, torch.get_num_threads())
    best = autotune.choice("experts matmul", key)
    if best not in EXPERT_PATHS:  # none yet, or a checkpoint pinned a path this code lacks
        # Timed on `rows` rows shared evenly by the experts; the median of 9: the two paths are often within 10% of
        # each other, closer than one run's noise.
        n = weight.shape[0]
        even = [rows // n + (i < rows % n) for i in range(n)]
        best = autotune.choose_path("experts matmul", key, EXPERT_PATHS, (x.new_empty(rows, x.shape[1]), weight, bias),
                                    grad, even, timer=lambda name, fn: autotune.median_time(name, fn, repeats=9))
    return EXPERT_PATHS[best](x, weight, bias, counts)


@dataclass
class RouterStats:
    """One MoE layer's routing of N tokens (training mode)."""

    aux: torch.Tensor  # load-balancing loss, with gradient
    z: torch.Tensor  # router z-loss, with gradient
    load: torch.Tensor  # f: (n_expert,) fraction of the routing slots per expert, sums to 1; no gradient


def router_stats(logits: torch.Tensor, probs: torch.Tensor, experts: torch.Tensor) -> RouterStats:
    """The statistics of routing N tokens: router logits (N, E), each token's distribution over the experts (N, E:
    the softmax, or the sigmoid scores normalised) and the chosen experts (N, k)."""
    n_expert = probs.shape[-1]
    load = torch.bincount(experts.flatten(), minlength=n_expert).float() / experts.numel()  # f_i
    importance = probs.mean(dim=0)  # P_i
    aux = n_expert * (load * importance).sum()
    z = torch.logsumexp(logits.float(), dim=-1).square().mean()
    return RouterStats(aux, z, load)


def last_stats(model: torch.nn.Module) -> list[RouterStats]:
    """The RouterStats of every MoE layer from the model's last training forward (none for a dense model)."""
    return [s for m in model.modules() if isinstance(s := getattr(m, "stats", None), RouterStats)]


def router_penalty(model: torch.nn.Module, aux_coef: float, z_coef: float) -> torch.Tensor | float:
    """aux_coef * aux + z_coef * z, each averaged over the MoE layers of the last forward: 0.0 for a dense model."""
    stats = last_stats(model)
    if not stats:
        return 0.0
    aux = torch.stack([s.aux for s in stats]).mean()
    z = torch.stack([s.z for s in stats]).mean()
    return aux_coef * aux + z_coef * z


@torch.no_grad()
def balance_choice_bias(model: torch.nn.Module, gamma: float) -> None:
    """After an optimizer step: move every MoE layer's choice bias by gamma towards an even load (DeepSeek-V3's
    auxiliary-loss-free balancing; gamma 0 moves nothing), from the routing slots its training forwards counted since
    the last call (summed over the ranks), which it then forgets."""
    for m in model.modules():
        routed = getattr(m, "routed", None)
        if routed is None:  # a dense MLP, experts without a choice bias, or no training forward since
            continue
        m.routed = None
        if gamma:
            load = distributed.all_reduce_mean(routed.float())  # every rank moves its copy of the bias alike
            m.choice_bias += gamma * torch.sign(load.mean() - load)


class RouterLog:
    """Sums the router statistics of the steps since the last metrics.jsonl row; `row()` gives their means."""

    def __init__(self) -> None:
        self.sums: list[torch.Tensor] | None = None
        self.n = 0

    def add(self, model: torch.nn.Module) -> None:
        stats = last_stats(model)
        if not stats:
            return
        parts = [torch.stack([s.aux.detach() for s in stats]).mean().reshape(1),
                 torch.stack([s.z.detach() for s in stats]).mean().reshape(1),
                 torch.stack([s.load for s in stats]).mean(dim=0)]
        self.sums = parts if self.sums is None else [a + b for a, b in zip(self.sums, parts, strict=True)]
        self.n += 1

    def row(self) -> dict[str, Any]:
        """{"moe_aux_loss", "moe_z_loss", "moe_load": [f_0, ..., f_E-1]} averaged over the steps, then reset."""
        if self.sums is None:
            return {}
        aux, z, load = (t.float().cpu() / self.n for t in self.sums)
        self.sums, self.n = None, 0
        return {"moe_aux_loss": round(aux.item(), 5), "moe_z_loss": round(z.item(), 5),
                "moe_load": [round(f, 4) for f in load.tolist()]}


# --- what experts cost, for `gptlab info` (info.py) ---------------------------------------------------------------


def mlp_units(c: GPTConfig, active: bool = False) -> tuple[int, int]:
    """(hidden units, MLPs) of all layers: each dense layer's MLP, each MoE layer's experts (the top-k a token runs
    through if active) and its shared experts (one MLP)."""
    moe = len(c.moe_layers)
    experts = c.expert_top_k if active else c.n_expert
    hidden = (c.n_layer - moe) * c.mlp_hidden + moe * (experts + c.n_shared_expert) * c.expert_width
    return hidden, c.n_layer - moe + moe * (experts + (c.n_shared_expert > 0))


def mlp_params(c: GPTConfig, hidden: int, mlps: int) -> int:
    """Weights and biases of `mlps` MLPs of `hidden` units in all."""
    fc = 2 if c.mlp == "swiglu" else 1  # SwiGLU: gate and up
    return (fc + 1) * c.n_embd * hidden + int(c.bias) * (fc * hidden + c.n_embd * mlps)


def routing_bytes(c: GPTConfig, tokens: int, nbytes: int) -> int:
    """Bytes autograd saves to route `tokens` tokens through every MoE layer (model.MoE), besides the experts'
    hidden units: per token the fp32 router logits and softmax and the log-sum-exp of the z-loss; per (token,
    expert) pair its expert id and its places in and out of the sort (int64), its weight, and two rows of n_embd
    (the experts' sorted input, their outputs in pair order); the top-k weights and their sum when renormalised;
    per layer the load f. (DeepSeek's choice runs without gradient: its groups and bias save nothing.)"""
    k, e = c.expert_top_k, c.n_expert
    per_token = 2 * e * FP32 + FP32 + k * (3 * INT64 + nbytes + 2 * c.n_embd * nbytes) + c.moe_renorm * (k + 1) * FP32
    per_token += FP32 * (c.moe_score == "sigmoid")  # the sum that normalises the scores for the aux loss
    return len(c.moe_layers) * (tokens * per_token + e * FP32)
