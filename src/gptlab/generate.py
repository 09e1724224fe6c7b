"""KV cache, sampling and the decoding loop.

The cache holds n_kv_head heads per layer (GQA/MQA shrink it), preallocated once. With a sliding window it is
a rolling buffer of `window` slots (on every layer, or on the local layers of a local/global pattern): position p
lives in slot p % window, so memory stays flat however long
the generation. The cache records each slot's position and attention masks by positions (attention.visible),
so slot order never matters; RoPE is applied before keys are cached, so each cached key carries its own
position.

Decoding one token at a time is bound by reading the weights once per token; see _decode_kernel for how the
CPU path keeps that at memory bandwidth where the plain product does not (chosen by measurement: autotune.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import autotune, hardware
from .model import GPT, keeps_fp32


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
    Others do better with the plain product (oneDNN with AMX): _decode_kernel measures which. Same weights, no copy.
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


# The ways to run one row through a Linear while decoding; autotune picks one per weight shape and dtype.
DECODE_KERNELS = {autotune.PLAIN: nn.Linear.forward, "gemv": _gemv_linear}


def _decode_kernel(layers: list[nn.Linear]) -> Callable[[nn.Linear, torch.Tensor], torch.Tensor]:
    """The fastest of DECODE_KERNELS for one row through these same-shaped layers, on this machine.

    Timed as decoding runs them: a (1, 1, in) row through every layer of the group in turn, so the weights come
    from memory rather than cache, as they do once per generated token.
    """
    W = layers[0].weight
    if torch.get_num_threads() < 2:  # _gemv_linear is F.linear then
        return nn.Linear.forward
    key = (tuple(W.shape), str(W.dtype), len(layers), torch.get_num_threads())
    chosen = autotune.choice("decode linear", key)
    if chosen is None:
        # A private generator: sampling during training must not move the dropout RNG a checkpoint saves.
        x = torch.randn(1, 1, W.size(1), dtype=W.dtype, generator=torch.Generator().manual_seed(0))
        candidates = {n: (lambda f=f: [f(m, x) for m in layers]) for n, f in DECODE_KERNELS.items()}
        chosen = autotune.choose("decode linear", key, candidates)
    return DECODE_KERNELS[chosen]


def _linear_groups(model: nn.Module) -> list[list[nn.Linear]]:
    """The model's CPU nn.Linear layers, grouped by weight shape and dtype (a decode step reads each once)."""
    groups: dict[tuple, list[nn.Linear]] = {}
    for m in model.modules():
        if type(m) is nn.Linear and m.weight.device.type == "cpu":
            groups.setdefault((tuple(m.weight.shape), m.weight.dtype), []).append(m)
    return list(groups.values())


@contextmanager
def _decode_linears(model: nn.Module) -> Iterator[None]:
    """Within the block, the model's CPU nn.Linear layers run single rows through the kernel measured fastest for
    their weight shape and dtype (_decode_kernel; measured on the first generation in the process)."""
    with torch.no_grad():
        kernels = {m: k for group in _linear_groups(model) if (k := _decode_kernel(group)) is not nn.Linear.forward
                   for m in group}
    for m, kernel in kernels.items():
        m.forward = functools.partial(kernel, m)  # an instance attribute shadows nn.Linear.forward
    try:
        yield
    finally:
        for m in kernels:
            del m.forward


def decode_dtype(model: nn.Module) -> torch.dtype:
    """The dtype to decode in: bfloat16 where it is faster, else float32 (`gptlab sample --dtype=auto`).

    Decoding one token reads every weight once, so bf16 weights could halve its time; but only hardware with
    native bf16 multiplies them fast (emulated, bf16 decoding ran 0.55x fp32 on an AVX2 EPYC). On CUDA that is
    torch's bf16 support; on a CPU with native bf16 (AMX or AVX512-BF16) one token's pass through every linear
    layer is timed in both (fp32 with its own fastest kernel per shape) and bf16 must win by autotune's margin.
    """
    p = next(model.parameters())
    if p.dtype != torch.float32:  # loaded in a lower precision already: nothing to gain by casting up
        return p.dtype
    if p.device.type != "cpu":
        return torch.bfloat16 if p.device.type == "cuda" and hardware.bf16_autocast_pays(p.device) else torch.float32
    if not hardware.native_bf16_cpu():
        return torch.float32
    groups = _linear_groups(model)
    if not groups:  # nothing to time: two empty passes would differ by noise alone
        return torch.float32
    key = (sorted((tuple(g[0].weight.shape), len(g)) for g in groups), torch.get_num_threads())
    chosen = autotune.choice("decode dtype", key)
    if chosen is None:
        with torch.no_grad():
            gen = torch.Generator().manual_seed(0)  # not torch's RNG: see _decode_kernel
            passes = {autotune.PLAIN: _token_pass(groups, torch.float32, gen),
                      "bfloat16": _token_pass(groups, torch.bfloat16, gen)}
            chosen = autotune.choose("decode dtype", key, passes)
    return torch.bfloat16 if chosen == "bfloat16" else torch.float32


def _token_pass(groups: list[list[nn.Linear]], dtype: torch.dtype, gen: torch.Generator) -> Callable[[], object]:
    """One row through every layer of the groups with weights in dtype (copies unless fp32), each group by its own
    fastest kernel in that dtype: what decoding one token reads."""
    runs = []
    for group in groups:
        layers = group if dtype == torch.float32 else [_linear_copy(m, dtype) for m in group]
        x = torch.randn(1, 1, group[0].in_features, generator=gen).to(dtype)
        runs += [(_decode_kernel(layers), m, x) for m in layers]
    return lambda: [kernel(m, x) for kernel, m, x in runs]


def _linear_copy(layer: nn.Linear, dtype: torch.dtype) -> nn.Linear:
    """A copy of layer with its weights in dtype (decode_dtype times these, then drops them)."""
    copy = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta")
    copy.weight = nn.Parameter(layer.weight.detach().to(dtype), requires_grad=False)
    if layer.bias is not None:
        copy.bias = nn.Parameter(layer.bias.detach().to(dtype), requires_grad=False)
    return copy


def cast_weights(model: GPT, dtype: torch.dtype) -> GPT:
    """The model with its parameters in `dtype`, in place; unlike model.to(dtype), RoPE's frequencies stay fp32
    (rounded to bf16 they would misplace far positions), and so do DeepSeek-V3's router weight and choice bias
    (keeps_fp32: rounded, they choose other experts), as loading in a dtype keeps them. Caches made afterwards
    follow the parameters."""
    for name, param in model.named_parameters():
        param.data = param.data.to(torch.float32 if keeps_fp32(model.config, name) else dtype)
    return model


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
    out = torch.empty(B, total, dtype=idx.dtype, device=idx.device)  # an ordinary tensor: autograd may take it
    out[:, :T] = idx
    compiled = compile and idx.device.type == "cuda"
    step = torch.compile(model, dynamic=True) if compiled else model
    try:
        # inference_mode, not no_grad: no version counters or views to track, ~0.5 ms less per token of 12 layers.
        with torch.inference_mode(), _decode_linears(model):
            # A compiled step is specialised to the cache's size: rounded up, other lengths reuse its graph.
            caches = make_caches(model, B, -(-total // 256) * 256 if compiled else total)
            logits, _ = model(idx, cache=caches, input_pos=0, last_only=True)
            for pos in range(T, total):
                nxt = sample(logits[:, -1], temperature, top_k, top_p, generator)
                out[:, pos : pos + 1] = nxt
                if pos + 1 < total:
                    logits, _ = step(nxt, cache=caches, input_pos=pos, last_only=True)
    finally:
        model.train(was_training)
    return out
