"""What attention costs, layer by layer, for `gptlab info` (info.py): the numbers that differ between layers (a
local/global pattern slides on some layers only) or between attention kinds. Arithmetic on the config alone."""

from __future__ import annotations

from .config import GPTConfig

FP32 = 4  # bytes of the statistics kept in fp32 whatever the dtype (log-sum-exp, log-probabilities, RMSNorm)


def layer_windows(c: GPTConfig) -> list[int | None]:
    """Each layer's window (None: full causal attention)."""
    return [c.layer_window(i) for i in range(c.n_layer)]


def positions_held(c: GPTConfig, context: int) -> list[int]:
    """Positions each layer's KV cache holds for `context` tokens: a rolling buffer of the window, or all."""
    return [context if w is None else min(w, context) for w in layer_windows(c)]


def attention_activations(c: GPTConfig, batch: int, context: int, nbytes: int, window: int | None) -> int:
    """Bytes autograd saves in one attention layer (with the given window) for batch x context tokens."""
    q, kv, tokens = c.n_head * c.head_dim, c.n_kv_head * c.head_dim, batch * context
    attn = tokens * c.n_embd * nbytes  # input of the fused q/k/v projection (the norm's output)
    per_head = c.n_head * FP32  # the log-sum-exp of every query head, kept for the backward pass
    windowed = window is not None and window < context
    if windowed:
        # The sliding-window kernel saves its own copies of q, k, v and the output, padded to whole blocks.
        rows = batch * -(-context // window) * window
        attn += rows * ((2 * q + 2 * kv) * nbytes + per_head)
        if rows != tokens:  # the output cut back to the sequence is a new tensor, c_proj's input
            attn += tokens * q * nbytes
    else:
        attn += tokens * (q + 2 * kv) * nbytes  # q, k, v: views of the projection's output
        if c.pos_emb == "rope":
            attn += tokens * (q + kv) * nbytes  # the rotated q and k
        attn += tokens * (q * nbytes + per_head)  # attention output (= c_proj input) and its log-sum-exp
    if c.qk_norm:
        # RMSNorm over each head of q and k saves its input in fp32, the normalized heads in fp32 and an rstd per head.
        attn += tokens * (q + kv + c.n_head + c.n_kv_head) * FP32
        if nbytes != FP32:
            attn += tokens * (q + kv) * FP32  # the fp32 copy of its input
        elif windowed:  # its input is a view of the projection's output, which nothing else keeps in this path
            attn += tokens * (q + 2 * kv) * nbytes
        if not windowed and c.pos_emb == "learned":  # attention's q, k: the normalized heads, not projection views
            attn += tokens * (q + kv) * nbytes
    return attn
