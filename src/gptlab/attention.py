"""Attention kernels beyond plain causal SDPA: sliding-window attention (SWA) and its naive reference.

SWA lets query i see keys i - window < j <= i. A mask over full attention still costs O(T^2); the paths here
cost O(T * window):

* CPU (fp32/bf16/fp16, no dropout), through the CPU flash kernels. Forward: blocks of bq queries (w if
  smaller), each against the bq + w keys its band can reach, as overlapping strided views (no copies) with one
  shared mask: one kernel call per chunk of rows, (bq + w) / w of the ideal work. Backward: chunks of c = w/2
  rows, or w. Query r of chunk g sees chunk g at offsets <= r (causal), chunk
  g-1 entirely (dense), and chunk g-2 at offsets > r (a strict upper triangle, which becomes causal once queries
  and keys are reversed); with c = w, chunk g causal and chunk g-1 at offsets > r.
  The flash backward of each part, fed the full output and log-sum-exp (the ring-attention trick), gives that
  part's exact share of the gradient; the shares are summed. Which bq (16, 32, 64) and c are fastest depends on
  the CPU, so they are measured per shape at first use, against the banded SDPA below (autotune.py).
* CUDA: flex_attention with a block mask, compiled.
* Anything else (other devices, dropout): banded SDPA, blocks of `window` queries against 2 * window keys.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from . import autotune


def visible(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """What a query may see: keys at or before its position and, with a window, within the last `window`
    positions (i - window < j <= i, the convention of HF Mistral). Positions broadcast against each other.

    The one rule of attention here: every path's mask comes from it (whole sequences, the band kernels, flex on
    CUDA, the KV caches), so a new attention variant is one change in this function.
    """
    seen = k_pos <= q_pos
    if window is not None:
        seen = seen & (k_pos > q_pos - window)
    return seen


def window_mask(n_q: int, n_k: int, window: int | None, q_offset: int = 0, device=None) -> torch.Tensor:
    """Boolean (n_q, n_k) mask, True where key j is visible to query i (query i sits at position q_offset + i)."""
    i = torch.arange(q_offset, q_offset + n_q, device=device)[:, None]
    j = torch.arange(n_k, device=device)[None, :]
    return visible(i, j, window)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int | None = None, dropout_p: float = 0.0,
    q_start: int = 0, k_pos: torch.Tensor | None = None, scale: float | None = None,
) -> torch.Tensor:
    """Attention of q (B, H, T, D) over k (B, Hkv, N, D), v (B, Hkv, N, Dv) under `visible`, by the fastest exact
    path; scores scaled by `scale` (default 1/sqrt(D)).

    Without k_pos, the keys are the queries' own positions 0..T-1 (a whole sequence): SDPA's causal kernel, or the
    O(T * window) paths below. With k_pos (N,), from a KV cache in slot order, the queries sit at q_start.. and SDPA
    gets the mask `visible` gives; a single query needs none, as a cache keeps only what the next token sees.
    """
    gqa = k.size(1) != q.size(1)
    if k_pos is not None:
        (B, H, T, D), Hkv = q.shape, k.size(1)
        mask = None
        if T > 1:
            mask = visible(torch.arange(q_start, q_start + T, device=q.device)[:, None], k_pos[None, :], window)
            mask = mask.repeat(H // Hkv, 1)
        # The H / Hkv query heads of each K/V head as one head's queries: one product over the cache per K/V head
        # (SDPA's enable_gqa took ~40x longer for 12 heads against 4k cached keys of one K/V head on CPU).
        y = F.scaled_dot_product_attention(q.reshape(B, Hkv, H // Hkv * T, D), k, v, attn_mask=mask,
                                           dropout_p=dropout_p, scale=scale)
        return y.view(B, H, T, -1)
    if window is not None and window < q.size(2):
        D, Dv = q.size(-1), v.size(-1)
        if Dv == D and scale is None:
            return sliding_window_attention(q, k, v, window, dropout_p)
        # The band kernels take one head width and scale by its 1/sqrt: zero channels change no dot product and
        # no weighted sum, and the scale goes into q.
        width = max(D, Dv)
        q = q * ((scale or D**-0.5) * width**0.5)
        q, k, v = (F.pad(x, (0, width - x.size(-1))) for x in (q, k, v))
        return sliding_window_attention(q, k, v, window, dropout_p)[..., :Dv]
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and 4 * q[..., 0].numel() * q.size(2) <= _MATMUL_SCORES:
        return _cpu_bf16_causal_attention(q, k, v, dropout_p, scale)
    # enable_gqa lets SDPA map query head h to K/V head h // (n_head / n_kv_head) without copies.
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=gqa, scale=scale)


# --- CPU, bf16: full causal attention as bf16 matmuls ----------------------------------------------------------------

# The most fp32 scores (B x H x T x T x 4 bytes) matmul_causal_attention may hold per layer: its memory beyond
# SDPA's (what `gptlab info` estimates) stays under 1.5x this per layer (the scores, and their bf16 copy).
_MATMUL_SCORES = 32 << 20


def matmul_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0,
                            scale: float | None = None) -> torch.Tensor:
    """Causal attention as two batched matmuls in the inputs' dtype around an fp32 softmax (transformers' eager
    attention in bf16), the T x T scores in memory. q (B, H, T, D); k, v (B, Hkv, T, D or Dv): each K/V head's
    H / Hkv query heads go through as one head's rows."""
    B, H, T, D = q.shape
    group = H // k.size(1)
    scores = (q.reshape(B, k.size(1), group * T, D) @ k.transpose(-1, -2)).float().mul_(scale or D**-0.5)
    hidden = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1).repeat(group, 1)
    probs = scores.masked_fill_(hidden, float("-inf")).softmax(dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p)
    return (probs.to(v.dtype) @ v).view(B, H, T, v.size(-1))


def _sdpa_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, scale: float | None
                 ) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p,
                                          enable_gqa=k.size(1) != q.size(1), scale=scale)


_BF16_CAUSAL_PATHS = {autotune.PLAIN: _sdpa_causal, "matmul": matmul_causal_attention}


def _cpu_bf16_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float,
                               scale: float | None) -> torch.Tensor:
    """bf16 causal attention on CPU by SDPA (the plain op) or matmul_causal_attention, whichever measured faster
    for this shape. SDPA's CPU flash kernel computes in fp32 whatever its inputs (18-19 ms forward + backward for
    a char-small layer in bf16 and fp32 alike on an AVX512-BF16 EPYC), where bf16 matmuls run at the CPU's bf16
    rate: 11 ms there, once the allocator keeps the freed scores (hardware.keep_freed_memory; 19-35 ms when each
    step page-faults them in again). So the candidates are timed by their median, not their best run. Only bf16
    is a candidate: in fp32 the two tie, and an untimed op keeps every fp32 run's kernels the same everywhere."""
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    key = (*q.shape, k.size(1), v.size(-1), grad, dropout_p > 0, torch.get_num_threads())
    best = autotune.choice("cpu bf16 causal attention", key)
    if best not in _BF16_CAUSAL_PATHS:
        best = autotune.choose_path("cpu bf16 causal attention", key, _BF16_CAUSAL_PATHS, (q, k, v), grad,
                                    dropout_p, scale, timer=autotune.median_time)
    return _BF16_CAUSAL_PATHS[best](q, k, v, dropout_p, scale)


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
    """Causal attention where query i sees keys i - window < j <= i, in O(T * window) time and memory.

    q: (B, H, T, D); k, v: (B, Hkv, T, D) with H a multiple of Hkv. Picks the fastest exact path for the device.
    """
    T = q.size(-2)
    gqa = k.size(1) != q.size(1)
    if window >= T:  # the window hides nothing: plain causal attention
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p, enable_gqa=gqa)
    if dropout_p == 0.0 and q.device.type == "cpu" and q.dtype in _FLASH_CPU_DTYPES:
        return _cpu_sliding_window_attention(q, k, v, window)
    if dropout_p == 0.0 and q.device.type == "cuda":
        return flex_sliding_window_attention(q, k, v, window)
    return banded_sliding_window_attention(q, k, v, window, dropout_p)


# --- CPU: flash kernels on a band of query blocks ------------------------------------------------------------------

_FLASH_CPU_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_BAND_QUERIES = (16, 32, 64)  # queries per band block in the forward, measured: the kernel computes w + bq keys each
_CHUNK_ROWS = 1024  # query rows per kernel call: bounds the temporaries, so memory stays O(T * D) plus a constant
_HALF_CHUNKS_FROM = 64  # direct calls: backward in chunks of w/2 for even windows from this size (else measured)
_MASKED_UP_TO = 2048  # the O(T^2) masked SDPA is a candidate up to this length (its mask is T^2 bytes)


def _cpu_sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """SWA on CPU by the path measured fastest for this shape (autotune.py): the banded SDPA fallback (the plain
    op), masked SDPA on short sequences, or the flash band kernel with each block size and backward chunking.

    Timed on random inputs of the same shape, forward and (when autograd will need it) backward. All paths are
    exact; they differ in rounding, which is why a training run pins its choices for resume (train.py).
    """
    B, H, T, D = q.shape
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    paths = _cpu_paths(T, window, grad)
    key = (B, H, k.size(1), T, D, window, str(q.dtype), grad, torch.get_num_threads())
    best = autotune.choice("cpu sliding window", key)
    if best not in paths:
        best = autotune.choose_path("cpu sliding window", key, paths, (q, k, v), grad, window)
    return paths[best](q, k, v, window)


@functools.lru_cache(maxsize=64)
def _cpu_paths(T: int, window: int, grad: bool) -> dict[str, Callable[..., torch.Tensor]]:
    """The candidates for one shape: banded SDPA (the plain op), masked SDPA up to _MASKED_UP_TO, and the flash
    band kernel per block size and (with a backward to run) per backward chunking."""
    paths: dict[str, Callable[..., torch.Tensor]] = {autotune.PLAIN: banded_sliding_window_attention}
    if T <= _MASKED_UP_TO:
        paths["masked sdpa"] = _masked_sliding_window_attention
    halves = (False, True) if grad and window % 2 == 0 and window >= 4 else (False,)
    for bq in sorted({min(b, window) for b in _BAND_QUERIES}):
        for half in halves:
            paths[f"flash bq={bq}" + (" half" * half)] = functools.partial(_flash_swa, bq=bq, half=half)
    return paths


def _masked_sliding_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int) -> torch.Tensor:
    """SWA as full attention with a window mask: O(T^2), which can still win on short sequences."""
    mask = window_mask(q.size(-2), k.size(-2), window, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.size(1) != q.size(1))


def _flash_swa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, bq: int, half: bool) -> torch.Tensor:
    return _SlidingWindowFlashCPU.apply(q, k, v, window, bq, half)


def _flash(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flash attention on CPU; returns (out, logsumexp (B, H, T) in fp32). Out has (B, T, H, D) memory order."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, attn_mask=mask)


def _flash_backward(
    g: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    causal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv) of flash attention on CPU, from its out and logsumexp; (B, T, H, D) memory order."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(g, q, k, v, out, lse, 0.0, causal)


def _rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, H, T, D) -> contiguous (B * n, H, D) rows in (B, T, H, D) order, zero-padded to n positions.

    That order is what the model's projections produce, so without padding this is usually a free view.
    """
    B, H, T, D = x.shape
    x = x.transpose(1, 2)
    if n != T:
        x = F.pad(x, (0, 0, 0, 0, 0, n - T))
    return x.reshape(B * n, H, D).contiguous()


def _blocks(x: torch.Tensor, w: int) -> torch.Tensor:
    """Rows (N, H, D) -> (N / w, H, w, D): every block of w positions is one batch entry of the flash kernel."""
    N, H, D = x.shape
    return x.view(N // w, w, H, D).transpose(1, 2)


def _unblock(x: torch.Tensor) -> torch.Tensor:
    """(n, H, w, D) flash output -> rows (n * w, H, D); a view, since the kernel writes (n, w, H, D) order."""
    n, H, w, D = x.shape
    return x.transpose(1, 2).reshape(n * w, H, D)


def _band_forward(
    qr: torch.Tensor, kr: torch.Tensor, vr: torch.Tensor, B: int, w: int, bq: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of SWA on rows (B * Tp, heads, D): out rows and lse rows (B * Tp, H).

    Blocks of Bq queries, as strided views that overlap in keys: block g holds queries at rows w + g Bq + r and
    keys at rows g Bq + n (n < Bq + w), visible when r < n <= r + w: one mask shared by every block. Keys
    that cross from one sequence of the batch into the next only reach the first w - 1 queries of a sequence,
    which a plain causal call over the first w positions (where the window hides nothing) then overwrites.
    """
    N, H, D = qr.shape
    Tp, Bq = N // B, min(bq, w)
    if kr.size(1) != H:  # the kernel would expand GQA heads itself, but on the overlapping views: expand first
        kr, vr = (x.repeat_interleave(H // x.size(1), dim=1) for x in (kr, vr))
    mask = window_mask(Bq, Bq + w, w, q_offset=w, device=qr.device)
    mask = torch.zeros(mask.shape, dtype=qr.dtype, device=qr.device).masked_fill_(~mask, float("-inf"))
    out = torch.empty_like(qr)
    lse = torch.empty(N, H, dtype=torch.float32, device=qr.device)

    def band(start: int, n: int) -> None:  # n blocks whose queries start at row `start`
        strides = (Bq * H * D, D, H * D, 1)
        q = qr.as_strided((n, H, Bq, D), strides, start * H * D)
        k, v = (x.as_strided((n, H, Bq + w, D), strides, (start - w) * H * D) for x in (kr, vr))
        o, lse_ = _flash(q, k, v, causal=False, mask=mask)
        out[start : start + n * Bq] = _unblock(o)
        lse[start : start + n * Bq] = lse_.transpose(1, 2).reshape(-1, H)

    n_blocks, per_call = (N - w) // Bq, max(1, _CHUNK_ROWS // Bq)
    for first in range(0, n_blocks, per_call):
        band(w + first * Bq, min(per_call, n_blocks - first))
    if w + n_blocks * Bq < N:  # the last few rows: one more block, ending at the last row
        band(N - Bq, 1)
    o, lse_ = _flash(*(x.view(B, Tp, -1, D)[:, :w].transpose(1, 2) for x in (qr, kr, vr)))
    out.view(B, Tp, H, D)[:, :w] = o.transpose(1, 2)
    lse.view(B, Tp, H)[:, :w] = lse_.transpose(1, 2)
    return out, lse


def _upper_rows(B: int, n: int, c: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices that pose "query r of chunk g sees key s > r of chunk g-k" as a causal (c-1) x (c-1) problem.

    Reversing both orders (r' = c-2-r, s' = c-1-s) turns s > r into s' <= r': causal. Query c-1 sees nothing
    there and key 0 is seen by nobody, so both are left out. One gather of these rows slices and reverses.
    B sequences of n chunks of c rows; chunks g < k of a sequence have no chunk g-k.
    """
    rev = torch.arange(c - 2, -1, -1, device=device)
    chunks = torch.arange(B, device=device)[:, None] * n + torch.arange(k, n, device=device)  # (B, n-k)
    q_rows = (chunks[..., None] * c + rev).reshape(-1)  # rows c-2 .. 0 of chunk g
    return q_rows, q_rows - (k * c - 1)  # rows c-1 .. 1 of chunk g-k


class _SlidingWindowFlashCPU(torch.autograd.Function):
    """Exact O(T * window) sliding-window attention from CPU flash kernels (see the module docstring)."""

    @staticmethod
    def forward(
        ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, bq: int = 32, half: bool | None = None
    ) -> torch.Tensor:
        """bq: queries per forward block; half: backward in chunks of window/2 (None: for even windows >= 64)."""
        B, H, T, D = q.shape
        Tp = -(-T // window) * window  # padded to whole blocks of `window`, the layout backward works in
        qr, kr, vr = (_rows(x, Tp) for x in (q, k, v))
        out, lse = _band_forward(qr, kr, vr, B, window, bq)
        ctx.save_for_backward(qr, kr, vr, out, lse)
        if half is None:
            half = window >= _HALF_CHUNKS_FROM
        ctx.shape = (B, T, window, half and window % 2 == 0 and window >= 2)
        return out.view(B, Tp, H, D)[:, :T].transpose(1, 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        qr, kr, vr, out, lse = ctx.saved_tensors
        B, T, w, half = ctx.shape
        N, H, D = qr.shape
        gr = _rows(grad, N // B)
        # Chunks of c = w/2 rows: query r of chunk g sees keys s <= r of chunk g (causal), all of chunk g-1, and
        # s > r of chunk g-2. The kernel computes whole tiles below 512 keys, so this does 6 tiles of (w/2)^2 per
        # w queries (1.5 w^2) where chunks of w would do 2 of w^2. The flash backward of each part, fed the full out and
        # lse, gives that part's exact share of the gradient (the ring-attention trick); the shares add up.
        c = w // 2 if half else w
        n, k = N // B // c, w // c  # chunks per sequence; chunk g-k is the one the window only partly covers
        lse_h = lse.view(N // c, c, H).transpose(1, 2)
        dq, dk, dv = (_unblock(x) for x in _flash_backward(*(_blocks(x, c) for x in (gr, qr, kr, vr, out)), lse_h))
        if k == 2:  # chunk g-1, dense: query chunk j (from the second on) against chunk j-1 of the rows
            per_call = max(1, _CHUNK_ROWS // c)  # chunks per kernel call: bounds the temporaries
            for j in range(1, N // c, per_call):
                m = min(per_call, N // c - j)
                qs, ks = slice(j * c, (j + m) * c), slice((j - 1) * c, (j + m - 1) * c)
                g = gr[qs]
                firsts = [i for i in range(j, j + m) if i % n == 0]
                if firsts:  # a sequence's first chunk follows another sequence's last: with zero gradient on
                    g = g.clone()  # those queries, their pairs contribute exactly nothing
                    for i in firsts:
                        g[(i - j) * c : (i - j + 1) * c] = 0
                parts = (_blocks(x, c) for x in (g, qr[qs], kr[ks], vr[ks], out[qs]))
                dq_, dk_, dv_ = _flash_backward(*parts, lse_h[j : j + m], causal=False)
                dq[qs] += _unblock(dq_)
                dk[ks] += _unblock(dk_)
                dv[ks] += _unblock(dv_)
        if c > 1 and n > k:  # chunk g-k, at s > r: causal after reversal (window 1: each query sees only itself)
            all_q_rows, all_k_rows = _upper_rows(B, n, c, k, qr.device)
            per_call = max(1, _CHUNK_ROWS // c) * (c - 1)  # whole chunks per kernel call
            for q_rows, k_rows in zip(all_q_rows.split(per_call), all_k_rows.split(per_call), strict=True):
                g2, q2, o2 = (x.index_select(0, q_rows) for x in (gr, qr, out))
                k2, v2 = kr.index_select(0, k_rows), vr.index_select(0, k_rows)
                l2 = lse.index_select(0, q_rows).view(-1, c - 1, H).transpose(1, 2)
                dq2, dk2, dv2 = _flash_backward(*(_blocks(x, c - 1) for x in (g2, q2, k2, v2, o2)), l2)
                dq.index_add_(0, q_rows, _unblock(dq2))
                dk.index_add_(0, k_rows, _unblock(dk2))
                dv.index_add_(0, k_rows, _unblock(dv2))
        dq, dk, dv = (x.view(B, N // B, x.size(1), D)[:, :T].transpose(1, 2) for x in (dq, dk, dv))
        return dq, dk, dv, None, None, None


# --- CUDA: flex_attention with a block mask ----------------------------------------------------------------------


_FLEX_BLOCK = 128  # flex_attention's default block size


@functools.lru_cache(maxsize=32)
def _flex_block_mask(T: int, window: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    def swa(b, h, q_idx, kv_idx):
        return visible(q_idx, kv_idx, window)

    return create_block_mask(swa, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    compiled = torch.compile(flex_attention, dynamic=False)

    def run(*args, **kwargs):
        if torch.compiler.is_compiling():  # inside a compiled model: traced into its graph
            return flex_attention(*args, **kwargs)
        # One kernel per (T, dtype, grad mode, heads): a run evaluating at several lengths needs more than
        # dynamo's default 8, past which flex would silently run its eager, O(T^2) reference.
        with torch._dynamo.config.patch(recompile_limit=64):
            return compiled(*args, **kwargs)

    return run


def flex_sliding_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, compiled: bool = True
) -> torch.Tensor:
    """SWA through flex_attention: only the blocks inside the band are computed. compiled=False runs its eager
    reference (any device, slow), which the tests use to check the mask on CPU."""
    from torch.nn.attention.flex_attention import flex_attention

    # Padded to whole blocks of 128: compiled flex gave wrong rows (even NaN) at lengths that are not a multiple
    # of its block size (seen on CPU with AVX2, torch 2.13; pytorch#159247 reports it on CUDA too). The padded
    # keys come after every real query, so the causal mask hides them; the padded queries are dropped.
    T = q.size(-2)
    Tp = -(-T // _FLEX_BLOCK) * _FLEX_BLOCK
    block_mask = _flex_block_mask(Tp, window, str(q.device))
    fn = _compiled_flex() if compiled else flex_attention
    # Contiguous inputs: the model's q, k, v are strided views of one fused projection, and compiled flex inside
    # a compiled model gave wrong results on such views (seen on CPU; cheap insurance on CUDA). F.pad copies too.
    q, k, v = (F.pad(x, (0, 0, 0, Tp - T)) if Tp != T else x.contiguous() for x in (q, k, v))
    return fn(q, k, v, block_mask=block_mask, enable_gqa=k.size(1) != q.size(1))[..., :T, :]


# --- Fallback: banded SDPA -----------------------------------------------------------------------------------------


def banded_sliding_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, window: int, dropout_p: float = 0.0
) -> torch.Tensor:
    """SWA for any device and dropout: each block of `window` queries attends to its own and the previous block
    of keys through SDPA with a (window, 2 * window) mask. O(T * window), though twice the ideal work."""
    B, H, T, D = q.shape
    w, nb = window, -(-T // window)
    # Keys of block b-1 and b side by side; a zero block stands before the first, masked out below.
    kb, vb = (F.pad(_rows(x, nb * w).view(B, nb, w, -1, D), (0, 0, 0, 0, 0, 0, 1, 0)) for x in (k, v))
    kb, vb = (torch.cat([x[:, :-1], x[:, 1:]], dim=2) for x in (kb, vb))
    mask = window_mask(w, 2 * w, window, q_offset=w, device=q.device).expand(nb, 1, w, 2 * w).clone()
    mask[0, :, :, :w] = False
    y = F.scaled_dot_product_attention(
        _rows(q, nb * w).view(B, nb, w, H, D).transpose(2, 3), kb.transpose(2, 3), vb.transpose(2, 3), attn_mask=mask,
        dropout_p=dropout_p, enable_gqa=k.size(1) != H,
    )  # (B, nb, H, w, D)
    return y.transpose(2, 3).reshape(B, nb * w, H, D)[:, :T].transpose(1, 2)
