"""KV cache, sampling and the decoding loop.

The cache holds n_kv_head heads per layer (GQA/MQA shrink it), preallocated once. With a sliding window it is
a rolling buffer of `window` slots (on every layer, or on the local layers of a local/global pattern): position p
lives in slot p % window, so memory stays flat however long
the generation. The cache records each slot's position and attention masks by positions (attention.visible),
so slot order never matters; RoPE is applied before keys are cached, so each cached key carries its own
position.

Decoding one token at a time is bound by reading the weights once per token; see _gemv_linear for how the
CPU path keeps that at memory bandwidth where the plain product does not (chosen by measurement: autotune.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import autotune

if TYPE_CHECKING:
    from .model import GPT


class KVCache(nn.Module):
    """Keys and values of one attention layer for all past positions (or the last `window` of them), and the
    position each slot holds. It only stores: what a query may see is attention.visible's to decide."""

    def __init__(
        self, batch: int, n_kv_head: int, head_dim: int, max_len: int, window: int | None,
        dtype: torch.dtype = torch.float32, device: torch.device | str | None = None, v_dim: int | None = None,
    ) -> None:
        """v_dim: channels of a value (default head_dim); MLA caches its latent and RoPE key as the keys and reads
        its values from them, so it keeps no values (0)."""
        super().__init__()
        self.size = max_len if window is None else min(window, max_len)
        self.rolling = self.size < max_len  # only a window shorter than the generation needs to wrap around
        shape = (batch, n_kv_head, self.size, head_dim)
        v_shape = (*shape[:3], head_dim if v_dim is None else v_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(v_shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("pos", torch.full((self.size,), -1, dtype=torch.long, device=device), persistent=False)

    def update(self, k: torch.Tensor, v: torch.Tensor, pos: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store k, v (B, Hkv, T, D) of positions pos..pos+T-1 (position p in slot p % size). Returns the keys,
        values and positions (N,) a query of this chunk may need, in slot order: what is cached and the chunk."""
        T, end = k.size(2), pos + k.size(2)
        if not self.rolling and end > self.size:
            raise ValueError(f"the cache holds {self.size} positions; positions {pos}..{end - 1} do not fit")
        if end <= self.size or T == 1:
            # In place: nothing is evicted that a query of the chunk still sees (one token evicts the position
            # `size` back, which is out of its window). A slice, not an integer index: torch.compile then keeps
            # one graph for every slot.
            slot = pos % self.size
            self.k[:, :, slot : slot + T] = k
            self.v[:, :, slot : slot + T] = v
            self.pos[slot : slot + T] = torch.arange(pos, end, device=self.pos.device)
            n = min(end, self.size)
            return self.k[:, :, :n], self.v[:, :, :n], self.pos[:n]
        # A chunk that wraps the rolling buffer around: its first queries still need what its last tokens would
        # evict, so they attend over the cache and the chunk side by side; then the chunk's last tokens are kept.
        n = min(pos, self.size)
        positions = torch.arange(pos, end, device=self.pos.device)
        keys, values = torch.cat([self.k[:, :, :n], k], 2), torch.cat([self.v[:, :, :n], v], 2)
        key_pos = torch.cat([self.pos[:n], positions])
        keep = min(T, self.size)  # only the last `size` positions are kept
        slots = positions[T - keep :] % self.size
        self.k.index_copy_(2, slots, k[:, :, T - keep :])
        self.v.index_copy_(2, slots, v[:, :, T - keep :])
        self.pos.index_copy_(0, slots, positions[T - keep :])
        return keys, values, key_pos


def make_caches(model: GPT, batch: int, max_len: int) -> list[KVCache]:
    """One preallocated cache per layer, in the model's dtype and device: rolling on a layer that slides, full on
    one that attends globally."""
    c = model.config
    p = next(model.parameters())
    if c.kv_lora_rank is not None:  # MLA: one latent and one RoPE key per position, whatever the heads
        return [KVCache(batch, 1, c.kv_lora_rank + c.qk_rope_head_dim, max_len, c.layer_window(i), p.dtype, p.device,
                        v_dim=0) for i in range(c.n_layer)]
    return [
        KVCache(batch, c.n_kv_head, c.head_dim, max_len, c.layer_window(i), dtype=p.dtype, device=p.device)
        for i in range(c.n_layer)
    ]


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")


def sample(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B, 1) from last-position logits (B, vocab)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Logits (B, vocab) with the tokens outside the top_k and the top_p nucleus set to -inf (as transformers'
    TopKLogitsWarper and TopPLogitsWarper: ties at the k-th logit stay, the most likely token always stays)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token once the tokens ranked above it hold top_p of the mass (the first always stays).
        drop = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return logits


def _gemv_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) for a single row x, as a batch of matrix-vector products over row blocks of the weight.

    Some BLAS builds run a lone (1, in) @ (in, out) product with the (out, in) weight on one core, at about half
    of the machine's memory bandwidth (MKL on AMD EPYC); bmm over blocks of rows spreads it over the threads.
    Others do better with the plain product (oneDNN with AMX): _gemv_linears measures which. Same weights, no copy.
    Anything but a single row, or with autograd on, goes to the ordinary F.linear.
    """
    W, k = layer.weight, torch.get_num_threads()
    if x.numel() != x.size(-1) or k < 2 or W.size(0) < 4 * k or torch.is_grad_enabled():
        return F.linear(x, W, layer.bias)
    n = W.size(0) // k * k
    # x as a column with strides (.., 1, in): the layout bmm hands to BLAS without a copy.
    y = torch.bmm(W[:n].view(k, n // k, -1), x.reshape(1, -1).T.expand(k, -1, 1)).view(n)
    if n < W.size(0):
        y = torch.cat([y, W[n:] @ x.reshape(-1)])
    if layer.bias is not None:
        y += layer.bias
    return y.view(*x.shape[:-1], -1)


def _gemv_pays(layers: list[nn.Linear]) -> bool:
    """Whether _gemv_linear beats F.linear on one row for these same-shaped layers, on this machine.

    Timed as decoding reads them: one row through every layer of the group in turn, so the weights come from
    memory rather than cache, as they do once per generated token.
    """
    W = layers[0].weight
    if torch.get_num_threads() < 2:  # _gemv_linear is F.linear then
        return False
    key = (tuple(W.shape), str(W.dtype), len(layers), torch.get_num_threads())
    chosen = autotune.choice("decode linear", key)
    if chosen is not None:
        return chosen == "gemv"
    # A private generator: sampling during training must not move the dropout RNG a checkpoint saves.
    x = torch.randn(1, W.size(1), dtype=W.dtype, generator=torch.Generator().manual_seed(0))
    candidates = {
        autotune.PLAIN: lambda: [F.linear(x, m.weight, m.bias) for m in layers],
        "gemv": lambda: [_gemv_linear(m, x) for m in layers],
    }
    return autotune.choose("decode linear", key, candidates) == "gemv"


@contextmanager
def _gemv_linears(model: nn.Module) -> Iterator[None]:
    """Within the block, the model's CPU nn.Linear layers run single rows through _gemv_linear, for the weight
    shapes where that was measured faster than F.linear (on the first generation in the process)."""
    groups: dict[tuple, list[nn.Linear]] = {}
    for m in model.modules():
        if type(m) is nn.Linear and m.weight.device.type == "cpu":
            groups.setdefault((tuple(m.weight.shape), m.weight.dtype), []).append(m)
    with torch.no_grad():
        layers = [m for group in groups.values() if _gemv_pays(group) for m in group]
    for m in layers:
        m.forward = functools.partial(_gemv_linear, m)  # an instance attribute shadows nn.Linear.forward
    try:
        yield
    finally:
        for m in layers:
            del m.forward


@torch.no_grad()
def generate(
    model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
    top_p: float | None = None, generator: torch.Generator | None = None, compile: bool = False,
) -> torch.Tensor:
    """Prompt idx (B, T) followed by max_new_tokens sampled tokens, (B, T + max_new_tokens).

    compile=True compiles the one-token step with torch.compile on CUDA (ignored elsewhere).
    """
    check_sampling_args(temperature, top_k, top_p)
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(f"the prompt must be a (batch, length >= 1) tensor of token ids, got shape {tuple(idx.shape)}")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    B, T = idx.shape
    total = T + max_new_tokens
    cfg = model.config
    if cfg.pos_emb == "learned" and total > cfg.block_size:
        raise ValueError(
            f"prompt ({T}) + max_new_tokens ({max_new_tokens}) = {total} is past block_size={cfg.block_size}, "
            "the last position a learned-position model has; ask for fewer tokens"
        )
    was_training = model.training
    model.eval()
    out = torch.empty(B, total, dtype=idx.dtype, device=idx.device)
    out[:, :T] = idx
    compiled = compile and idx.device.type == "cuda"
    # A compiled step is specialised to the cache's size: rounded up, other lengths reuse its graph.
    caches = make_caches(model, B, -(-total // 256) * 256 if compiled else total)
    step = torch.compile(model, dynamic=True) if compiled else model
    try:
        with _gemv_linears(model):
            logits, _ = model(idx, cache=caches, input_pos=0, last_only=True)
            for pos in range(T, total):
                nxt = sample(logits[:, -1], temperature, top_k, top_p, generator)
                out[:, pos : pos + 1] = nxt
                if pos + 1 < total:
                    logits, _ = step(nxt, cache=caches, input_pos=pos, last_only=True)
    finally:
        model.train(was_training)
    return out
