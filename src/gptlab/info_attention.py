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


# --- multi-head latent attention (MLA) -------------------------------------------------------------------------


def attention_widths(c: GPTConfig) -> tuple[int, int]:
    """(channels of all heads' q·k, of all heads' values): n_head x head_dim twice, or MLA's per-head sizes."""
    if c.kv_lora_rank is None:
        return c.n_head * c.head_dim, c.n_head * c.head_dim
    return c.n_head * (c.qk_nope_head_dim + c.qk_rope_head_dim), c.n_head * c.v_head_dim


def kv_numbers_per_token(c: GPTConfig) -> int:
    """Numbers one position costs a layer's KV cache: a key and a value per K/V head, or MLA's latent + RoPE key."""
    if c.kv_lora_rank is None:
        return 2 * c.n_kv_head * c.head_dim
    return c.kv_lora_rank + c.qk_rope_head_dim


def mla_params(c: GPTConfig) -> dict[str, int]:
    """One layer's MLA parameters as info's components: q (q_proj, or q_a_proj and q_b_proj), k (kv_a_proj, the
    down-projection into the latent and the RoPE key, and the key rows of kv_b_proj), v (kv_b_proj's value rows),
    the output, and the two latents' RMSNorm gains."""
    d, b, ql, R = c.n_embd, int(c.bias), c.q_lora_rank, c.kv_lora_rank
    qk, v = attention_widths(c)
    q = d * qk + b * qk if ql is None else d * ql + b * ql + ql * qk
    down = d * (R + c.qk_rope_head_dim) + b * (R + c.qk_rope_head_dim)
    return {"q": q, "k": down + R * c.n_kv_head * c.qk_nope_head_dim, "v": R * c.n_kv_head * c.v_head_dim,
            "attn_out": v * d + b * d, "norms": R + (ql or 0)}


def mla_decode_flops(c: GPTConfig, held: list[int]) -> int:
    """FLOPs of MLA's absorbed decoding step beyond 2 x N_matmul: the up-projections are applied per query head
    (n_head, not n_kv_head, times), then each head scores rank + rope channels per cached key and sums the cached
    entries (rank + rope channels too: the RoPE ones are dropped after, see LatentAttention._absorbed)."""
    H, R = c.n_head, c.kv_lora_rank
    per_head_up = c.n_layer * (H - c.n_kv_head) * R * (c.qk_nope_head_dim + c.v_head_dim)
    return 2 * per_head_up + 2 * sum(held) * H * 2 * (R + c.qk_rope_head_dim)


def mla_activations(c: GPTConfig, batch: int, context: int, nbytes: int, window: int | None) -> int:
    """Bytes autograd saves in one MLA layer for batch x context tokens (the plain, up-projecting forward)."""
    tokens, ql, R, Hkv = batch * context, c.q_lora_rank or 0, c.kv_lora_rank, c.n_kv_head
    qk, v = attention_widths(c)
    k = Hkv * (c.qk_nope_head_dim + c.qk_rope_head_dim)
    # The norm's output (input of both down-projections); each RMSNorm of a latent saves its input (for kv_a_norm,
    # the whole [latent | RoPE key] output it is a view of), the normalized values in fp32 and an rstd, and its
    # output feeds the up-projection, which saves it.
    per_token = c.n_embd * nbytes + (R + c.qk_rope_head_dim) * nbytes + (R + 1) * FP32 + R * nbytes
    if ql:
        per_token += ql * nbytes + (ql + 1) * FP32 + ql * nbytes
    if nbytes != FP32:
        per_token += (R + ql) * FP32  # the fp32 copies of the norms' inputs
    per_token += Hkv * (c.qk_nope_head_dim + c.v_head_dim) * nbytes  # kv_b_proj's output: v is a view of it
    per_token += v * nbytes  # c_proj's input: the heads' outputs side by side
    if window is not None and window < context:  # the band kernel's own zero-padded q, k, v, output and lse
        rows, width = batch * -(-context // window) * window, max(qk, v) // c.n_head
        return tokens * per_token + rows * ((2 * c.n_head + 2 * Hkv) * width * nbytes + c.n_head * FP32)
    return tokens * (per_token + (qk + k + v) * nbytes + c.n_head * FP32)  # q, k (concatenated), output, lse
