"""The GPT model: GPT-2, with RoPE, GQA/MQA, MLA, sliding windows (local/global layers), RMSNorm, SwiGLU, QK-norm
and experts as config switches.

Read top to bottom: norms, rotary embeddings, attention, latent attention, MLP, mixture of experts, block, GPT.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import attention
from .config import GPTConfig
from .moe import expert_linear, router_stats

if TYPE_CHECKING:
    from .generate import KVCache


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021) in the "rotate half" layout used by Llama/Mistral.

    Channel c of a head is paired with channel c + head_dim/2, and each pair is rotated by the angle
    pos * theta^(-2c/head_dim): a true 2-D rotation per pair, so q·k depends only on the offset.
    """

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape (T, head_dim) for integer positions (T,)."""
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, D) by the angles behind cos/sin (T, D)."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Multi-head attention with n_kv_head K/V heads shared by groups of query heads (MHA, GQA or MQA)."""

    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.window = config.layer_window(layer)  # None on a global layer of a local/global pattern
        self.dropout = config.dropout
        # One fused projection: [q (n_head heads) | k (n_kv_head heads) | v (n_kv_head heads)].
        qkv_dim = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.c_attn = nn.Linear(config.n_embd, qkv_dim, bias=config.bias)
        self.c_proj = nn.Linear(config.n_head * config.head_dim, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        # QK-norm (Qwen3, OLMo 2): RMSNorm over each head's q and k, one weight g per channel shared by all heads, as
        # Qwen3 has it. A normalized head has norm <= sqrt(hd) * max|g|, so |q·k| / sqrt(hd) <= sqrt(hd) * max|g_q|
        # * max|g_k| however large the projections grow in training: the softmax cannot saturate on a few keys.
        self.q_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else None
        self.k_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        input_pos: int = 0,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        hd = self.head_dim
        q, k, v = self.c_attn(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=-1)
        if self.q_norm is not None:  # over each head's hd channels; before RoPE, which keeps the norm
            q = self.q_norm(q.view(B, T, self.n_head, hd)).flatten(2)
            k = self.k_norm(k.view(B, T, self.n_kv_head, hd)).flatten(2)
        # Each head keeps its own channels: (B, T, heads*hd) -> (B, heads, T, hd). Query heads are never merged.
        q = q.view(B, T, self.n_head, hd).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, hd).transpose(1, 2)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)

        k_pos = None
        if cache is not None:  # decoding: attend over everything cached so far, this chunk included
            k, v, k_pos = cache.update(k, v, input_pos)
        y = attention(q, k, v, self.window, self.dropout if self.training else 0.0, input_pos, k_pos)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * hd)
        return self.resid_dropout(self.c_proj(y))


LATENT_NORM_EPS = 1e-6  # DeepSeek's latent RMSNorms keep this eps whatever the model's norm_eps (rms_norm_eps)


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2/V3): every head's keys and values are up-projected from one latent
    c of kv_lora_rank numbers per token; a RoPE key of qk_rope_head_dim channels is shared by all heads.

    A head's score is q_nope·k_nope + q_rope·k_rope over sqrt(qk_nope_head_dim + qk_rope_head_dim). The KV cache
    keeps only [c | k_rope], and decoding never up-projects it: q_nope·(W_uk c) = (W_uk^T q_nope)·c, and the
    weighted sum of values W_uv c is W_uv times the weighted sum of c (the DeepSeek-V2 paper's weight absorption).
    """

    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        c = config
        self.n_head, self.n_kv_head, self.window, self.dropout = c.n_head, c.n_kv_head, c.layer_window(layer), c.dropout
        self.rank, self.nope, self.rope = c.kv_lora_rank, c.qk_nope_head_dim, c.qk_rope_head_dim
        self.v_dim, self.low_rank_q = c.v_head_dim, c.q_lora_rank is not None
        q_dim = c.n_head * (self.nope + self.rope)
        if not self.low_rank_q:
            self.q_proj = nn.Linear(c.n_embd, q_dim, bias=c.bias)
        else:  # a low-rank query through its own RMSNorm, as DeepSeek's
            self.q_a_proj = nn.Linear(c.n_embd, c.q_lora_rank, bias=c.bias)
            self.q_a_norm = nn.RMSNorm(c.q_lora_rank, eps=LATENT_NORM_EPS)
            self.q_b_proj = nn.Linear(c.q_lora_rank, q_dim, bias=False)
        self.kv_a_proj = nn.Linear(c.n_embd, self.rank + self.rope, bias=c.bias)  # [latent | RoPE key]
        self.kv_a_norm = nn.RMSNorm(self.rank, eps=LATENT_NORM_EPS)
        # No bias, as DeepSeek's: the up-projection of the latent is what decoding folds into q and the output.
        self.kv_b_proj = nn.Linear(self.rank, c.n_kv_head * (self.nope + self.v_dim), bias=False)
        self.c_proj = nn.Linear(c.n_head * self.v_dim, c.n_embd, bias=c.bias)
        self.resid_dropout = nn.Dropout(c.dropout)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None, cache: KVCache | None = None,
        input_pos: int = 0,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, Hkv, nope = self.n_head, self.n_kv_head, self.nope
        q_nope, q_rope, latent, k_rope = self.project(x, rope)
        dropout = self.dropout if self.training else 0.0
        if cache is None:  # a whole sequence: up-project every head's keys and values
            k_nope, v = self.kv_b_proj(latent).view(B, T, Hkv, nope + self.v_dim).transpose(1, 2).split(
                [nope, self.v_dim], dim=-1)
            k = torch.cat([k_nope, k_rope.expand(B, Hkv, T, self.rope)], dim=-1)
            y = attention(torch.cat([q_nope, q_rope], dim=-1), k, v, self.window, dropout)
        else:
            y = self._absorbed(q_nope, q_rope, torch.cat([latent, k_rope], dim=-1), cache, input_pos, dropout)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, H * self.v_dim)))

    def project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, ...]:
        """q_nope (B, H, T, nope), q_rope (B, H, T, rope), the normalized latent (B, 1, T, rank) and the RoPE key
        (B, 1, T, rope) of x (B, T, C): what a token contributes before any up-projection of the latent."""
        B, T, _ = x.shape
        q = self.q_b_proj(self.q_a_norm(self.q_a_proj(x))) if self.low_rank_q else self.q_proj(x)
        q_nope, q_rope = q.view(B, T, self.n_head, self.nope + self.rope).transpose(1, 2).split(
            [self.nope, self.rope], dim=-1)
        latent, k_rope = self.kv_a_proj(x).split([self.rank, self.rope], dim=-1)
        latent, k_rope = self.kv_a_norm(latent).unsqueeze(1), k_rope.unsqueeze(1)  # (B, 1, T, .): one "head"
        if rope:  # (cos, sin) with RoPE; with learned positions the shared key part is simply not rotated
            q_rope, k_rope = apply_rotary(q_rope, *rope), apply_rotary(k_rope, *rope)
        return q_nope, q_rope, latent, k_rope

    def _absorbed(
        self, q_nope: torch.Tensor, q_rope: torch.Tensor, entry: torch.Tensor, cache: KVCache, input_pos: int,
        dropout: float,
    ) -> torch.Tensor:
        """Attention over the cached [latent | RoPE key] without up-projecting it: per head (B, H, T, v_dim)."""
        B, H, T, _ = q_nope.shape
        Hkv, G = self.n_kv_head, self.n_head // self.n_kv_head  # G query heads per up-projected K/V head
        W = self.kv_b_proj.weight.view(Hkv, self.nope + self.v_dim, self.rank)
        W_uk, W_uv = W[:, : self.nope], W[:, self.nope :]  # (Hkv, nope, rank), (Hkv, v_dim, rank)
        q_latent = (q_nope.view(B, Hkv, G, T, self.nope) @ W_uk[:, None]).view(B, H, T, self.rank)
        keys, _, k_pos = cache.update(entry, entry[..., :0], input_pos)  # keys (B, 1, N, rank + rope)
        scale = (self.nope + self.rope) ** -0.5  # the plain forward's: its q·k has nope + rope channels
        # The values are the latents themselves: the cached entries whole (contiguous, as wide as the keys, which
        # SDPA's flash kernel wants; a strided slice of them took its slower path) with the RoPE channels dropped.
        y = attention(torch.cat([q_latent, q_rope], dim=-1), keys, keys, self.window, dropout, input_pos, k_pos,
                      scale=scale)[..., : self.rank]
        return (y.reshape(B, Hkv, G, T, self.rank) @ W_uv.transpose(1, 2)[:, None]).view(B, H, T, self.v_dim)


def activate(h: torch.Tensor, swiglu: bool) -> torch.Tensor:
    """GPT-2's tanh GELU, or SwiGLU's silu(gate) * up for h = [gate | up]."""
    if not swiglu:
        return F.gelu(h, approximate="tanh")
    if torch.compiler.is_compiling():
        # The formula: the compiler fuses its backward itself, and Dynamo cannot trace _SwiGLU's writes into the
        # halves of one tensor (torch 2.13: a graph break at every SwiGLU MLP).
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    return _SwiGLU.apply(h)


class _SwiGLU(torch.autograd.Function):
    """silu(gate) * up for h = [gate | up], whose backward writes both halves of h's gradient in place, where
    autograd's would write them apart and concatenate them (one more pass over the largest activation)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, h: torch.Tensor) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)
        s = F.silu(gate)
        ctx.save_for_backward(h, s)
        return s * up

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        h, s = ctx.saved_tensors
        gate, up = h.chunk(2, dim=-1)
        grad_h = torch.empty_like(h)
        grad_gate, grad_up = grad_h.chunk(2, dim=-1)
        torch.mul(grad, s, out=grad_up)  # d/d up = silu(gate)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=grad_gate)  # d/d gate = up * silu'(gate)
        return grad_h


class MLP(nn.Module):
    """GPT-2's GELU MLP, or SwiGLU: silu(x W_gate) * (x W_up), projected back."""

    def __init__(self, config: GPTConfig, hidden: int | None = None) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        hidden = hidden or config.mlp_hidden
        # For SwiGLU, c_fc holds [W_gate | W_up] fused into one matmul.
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if self.swiglu else hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(activate(self.c_fc(x), self.swiglu)))


class ExpertLinear(nn.Module):
    """n Linear layers of one shape in one tensor: weight (n, out, in), bias (n, out)."""

    def __init__(self, n: int, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))
        self.bias = nn.Parameter(torch.empty(n, out_features)) if bias else None

    def forward(self, x: torch.Tensor, counts: list[int]) -> torch.Tensor:
        """Linear i applied to the i-th slice of x's rows (sorted by expert: counts[i] rows for expert i)."""
        return expert_linear(x, self.weight, self.bias, counts)

    def extra_repr(self) -> str:
        n, out_features, in_features = self.weight.shape
        return f"{n} x (in_features={in_features}, out_features={out_features}), bias={self.bias is not None}"


class _Permute(torch.autograd.Function):
    """x[order // k] for a permutation `order` of the n * k rows of x repeated k times (row p is x's row p // k): with
    k > 1, each token's row once per expert it chose, without first copying x k times. Its backward gathers by the
    inverse permutation and sums each token's k rows: indexing's own backward scatter-adds, many times slower on CPU."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, order: torch.Tensor,
                inverse: torch.Tensor, k: int = 1) -> torch.Tensor:
        ctx.save_for_backward(inverse)
        ctx.k = k
        return x.index_select(0, order // k if k > 1 else order)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inverse,) = ctx.saved_tensors
        grad = grad.index_select(0, inverse)
        return (grad.view(-1, ctx.k, grad.shape[-1]).sum(dim=1) if ctx.k > 1 else grad), None, None, None


class MoE(nn.Module):
    """Mixture of experts (docs/moe.md): n_expert MLPs of the model's kind; each token runs through the top k by the
    router's scores (softmax, or DeepSeek-V3's sigmoid), weighted by their scores (rescaled to sum to 1 with
    moe_renorm, times moe_scale), plus any shared experts, which every token runs through unweighted. DeepSeek-V3's
    choice: a bias per expert added to the scores, and only the experts of a token's best moe_topk_groups groups."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        n, d, hidden = config.n_expert, config.n_embd, config.expert_width
        self.n_expert, self.top_k, self.renorm = n, config.expert_top_k, config.moe_renorm
        self.sigmoid, self.scale = config.moe_score == "sigmoid", config.moe_scale
        self.groups, self.topk_groups = config.moe_groups, config.moe_topk_groups
        self.swiglu = config.mlp == "swiglu"
        self.router = nn.Linear(d, n, bias=False)
        # A buffer, not a parameter: no gradient moves it, the balancing rule does (moe.balance_choice_bias).
        self.choice_bias = nn.Buffer(torch.zeros(n)) if config.moe_choice_bias else None
        self.routed = None  # experts' routing slots summed over the training forwards since the bias last moved
        self.c_fc = ExpertLinear(n, d, 2 * hidden if self.swiglu else hidden, config.bias)  # [gate | up] per expert
        self.c_proj = ExpertLinear(n, hidden, d, config.bias)
        # DeepSeek's shared experts are one MLP as wide as all of them together.
        self.shared = MLP(config, config.n_shared_expert * hidden) if config.n_shared_expert else None
        self.dropout = nn.Dropout(config.dropout)
        self.stats = None  # the RouterStats of the last training forward (moe.py: the aux loss, metrics)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # N tokens, routed independently
        # DeepSeek-V3's sigmoid router runs in fp32 whatever the model's dtype, as transformers' does: logits rounded
        # to bf16 swap near-equal scores, and so experts. Its weight stays fp32 too (keeps_fp32); .float() covers a
        # model.to(bf16). (Mixtral's and Qwen3-MoE's run in the model's dtype.)
        logits = F.linear(x.float(), self.router.weight.float()) if self.sigmoid else self.router(x)
        scores = logits.float().sigmoid() if self.sigmoid else logits.float().softmax(dim=-1)
        experts = self.choose(scores)  # (N, k)
        weights = scores.gather(1, experts)  # the scores themselves, never the bias: it only chooses
        if self.renorm:  # DeepSeek's 1e-20 guards sigmoid scores that are all tiny; a softmax's sum is >= k / E
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        if self.scale != 1:
            weights = weights * self.scale
        tally = experts.flatten().bincount(minlength=self.n_expert)
        if self.training:
            # The aux loss wants a distribution over experts: sigmoid scores normalised per token (DeepSeek-V3).
            probs = scores / scores.sum(dim=-1, keepdim=True) if self.sigmoid else scores
            self.stats = router_stats(logits, probs, experts)
            if self.choice_bias is not None:
                self.routed = tally if self.routed is None else self.routed + tally
        # Dispatch: the N * k (token, choice) pairs, sorted by expert, so that each expert's tokens are one slice and
        # each expert one matmul over it (one per expert, or one grouped matmul: moe.expert_linear; never a loop
        # over tokens). Empty slices still run: every expert gets a gradient, as DDP wants.
        n, k = experts.shape
        order = experts.flatten().argsort(stable=True)  # pair p is token p // k's choice p % k
        inverse = order.argsort()
        counts = tally.tolist()
        pairs = _Permute.apply(x, order, inverse, k)  # token p // k's row for pair p, in expert order
        hidden = activate(self.c_fc(pairs, counts), self.swiglu)
        out = _Permute.apply(self.c_proj(hidden, counts), inverse, order).view(n, k, -1)  # back to pair order
        # Combine: each token's k outputs, weighted by the router.
        y = (out * weights.to(out.dtype).unsqueeze(-1)).sum(dim=1).to(x.dtype)
        if self.shared is not None:
            y = y + self.shared(x)
        return self.dropout(y.view(shape))

    @torch.no_grad()
    def choose(self, scores: torch.Tensor) -> torch.Tensor:
        """The k experts (N, k) of each token: its top k of scores + choice_bias, among the experts of its best
        topk_groups groups (a group scored by the sum of its top 2). No gradient: the weights carry the router's."""
        choice = scores if self.choice_bias is None else scores + self.choice_bias
        if self.groups > 1:
            n, e = choice.shape
            grouped = choice.view(n, self.groups, e // self.groups)
            best = grouped.topk(2, dim=-1).values.sum(dim=-1).topk(self.topk_groups, dim=-1).indices
            keep = torch.zeros(n, self.groups, dtype=torch.bool, device=choice.device).scatter_(1, best, True)
            choice = grouped.masked_fill(~keep.unsqueeze(-1), float("-inf")).view(n, e)
        return choice.topk(self.top_k, dim=-1).indices


def keeps_fp32(config: GPTConfig, name: str) -> bool:
    """Whether state-dict tensor `name` stays fp32 when the rest of the model is loaded or cast to bf16 (hf.py's loading
    with a dtype, generate.cast_weights): what DeepSeek-V3's router chooses by, as transformers keeps it
    (_keep_in_fp32_modules_strict): the experts' choice bias and a sigmoid router's weight. Rounded to bf16 they
    choose other experts (an fp32 checkpoint's router weight: tens of 20k tokens). Softmax routers (Mixtral's,
    Qwen3-MoE's) follow the model, as in transformers; model.to(dtype) casts everything, as transformers' does."""
    return name.endswith(".mlp.choice_bias") or (config.moe_score == "sigmoid" and name.endswith(".mlp.router.weight"))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)) (the MLP: dense, or experts)."""

    def __init__(self, config: GPTConfig, layer: int = 0) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        attn = CausalSelfAttention if config.kv_lora_rank is None else LatentAttention
        self.attn = attn(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MoE(config) if layer in config.moe_layers else MLP(config)

    def forward(self, x: torch.Tensor, rope=None, cache: KVCache | None = None, input_pos: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache, input_pos)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A decoder-only transformer. With the default GPTConfig it is exactly GPT-2 (124M)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
                ln_f=make_norm(config),
            )
        )
        if config.pos_emb == "learned":
            self.transformer.wpe = nn.Embedding(config.block_size, config.n_embd)
        else:
            self.rotary = Rotary(config.rotary_dim, config.rope_theta)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2*n_layer), since each layer adds two of them.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding, ExpertLinear)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, (nn.Linear, ExpertLinear)) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, tied weights counted once; non_embedding drops token and position tables. The experts' choice
        biases count too: learned numbers (by the balancing rule, not by gradient) that the model stores."""
        n = sum(p.numel() for p in self.parameters())
        n += sum(b.numel() for name, b in self.named_buffers() if name.endswith(".choice_bias"))
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if "wpe" in self.transformer:
                n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        cache: list[KVCache] | None = None,
        input_pos: int = 0,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and the mean cross-entropy against targets (ignore index -1), or None.

        With a KV cache (see generate.py), idx holds the tokens at positions input_pos.. and the cache
        supplies the earlier ones. last_only computes logits for the last position only (sampling).
        """
        B, T = idx.shape
        end = input_pos + T
        if self.config.pos_emb == "learned" and end > self.config.block_size:
            raise ValueError(
                f"sequence reaches position {end}, past block_size={self.config.block_size} of this "
                "learned-position model; shorten the input (learned positions cannot extrapolate)"
            )
        pos = torch.arange(input_pos, end, device=idx.device)
        x = self.transformer.wte(idx)
        rope = None
        if self.config.pos_emb == "learned":
            x = x + self.transformer.wpe(pos)
        else:
            rope = self.rotary(pos)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, rope, cache[i] if cache is not None else None, input_pos)
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue idx (B, T) by max_new_tokens tokens with a KV cache; temperature 0 is greedy."""
        from .generate import generate

        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, generator=generator)

    @classmethod
    def from_pretrained(
        cls, path_or_name: str | Path, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> GPT:
        """Load a Hugging Face GPT-2 / Llama / Mistral / Qwen3 checkpoint, or a gptlab directory (see hf.py), in eval
        mode, on `device` (default CPU) in `dtype` (default float32)."""
        from .hf import load_pretrained

        return load_pretrained(path_or_name, device=device, dtype=dtype)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write safetensors + config.json, in HF GPT-2, Llama, Mistral or Qwen3 format where one holds the config."""
        from .hf import save_pretrained

        save_pretrained(self, directory)
