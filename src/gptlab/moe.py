"""Mixture of experts, the training side: what a routing yields, and the losses and metrics built from it.

The MoE layer itself is `MoE` in model.py. Each time it routes in training mode it keeps a `RouterStats`
(`router_stats` below); the trainer reads them after the forward pass:

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

from . import distributed
from .config import GPTConfig

FP32, INT64 = 4, 8

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
