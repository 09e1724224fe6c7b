"""Attention kernels beyond plain causal SDPA: sliding-window attention and its naive reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def window_mask(n_q: int, n_k: int, window: int | None, q_offset: int = 0, device=None) -> torch.Tensor:
    """Boolean (n_q, n_k) mask, True where key j is visible to query i (query i sits at position q_offset + i).

    Causal, and with a window: i - window < j <= i (the convention of HF Mistral).
    """
    i = torch.arange(q_offset, q_offset + n_q, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    mask = j <= i
    if window is not None:
        mask &= j > i - window
    return mask


def naive_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """The textbook formula softmax(q k^T / sqrt(d) + mask) v, in fp32: the reference the fast paths are tested against.

    q: (B, H, T, D); k, v: (B, Hkv, T, D) with H a multiple of Hkv (query head h uses K/V head h // (H/Hkv)).
    """
    groups = q.size(1) // k.size(1)
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    T = q.size(-2)
    scores = (q.float() @ k.float().transpose(-2, -1)) / (q.size(-1) ** 0.5)
    scores = scores.masked_fill(~window_mask(T, k.size(-2), window, device=q.device), float("-inf"))
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def sliding_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dropout_p: float = 0.0
) -> torch.Tensor:
    """Causal attention where query i sees keys i - window < j <= i.

    q: (B, H, T, D); k, v: (B, Hkv, T, D).
    """
    T = q.size(-2)
    mask = window_mask(T, T, window, device=q.device)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, enable_gqa=k.size(1) != q.size(1)
    )
