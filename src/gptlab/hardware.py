"""What this machine is: the CPU, its vector ISA, whether it has native bf16 matmuls, and which fast paths were
chosen on it. Read through torch, so it agrees with the kernels torch will run.

The CPUs these runs meet differ in what pays: Intel Xeons with AMX multiply bf16 matrices ~7x faster than fp32,
AMD EPYCs before Zen 4 have no bf16 instructions at all (autocast there is slower than fp32).
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

from . import autotune
from .attention import sliding_window_attention
from .config import GPTConfig
from .model import GPT


def cpu_model() -> str:
    """The CPU's marketing name ('AMD EPYC', 'Intel(R) Xeon(R) Platinum 8481C'), from /proc/cpuinfo on Linux."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        return re.search(r"model name\s*:\s*(.*)", text).group(1).strip()
    except (OSError, AttributeError):
        return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The widest matrix/vector ISA torch's CPU kernels use here: AMX, AVX-512, AVX2, or torch's own name."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_supported():
        return "AVX-512"
    if torch.cpu._is_avx2_supported():
        return "AVX2"
    return torch.backends.cpu.get_cpu_capability()


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AMX or AVX512-BF16): only there does bf16 autocast
    speed training up; elsewhere bf16 is emulated and slower than fp32. GPTLAB_NATIVE_BF16=0 or 1 overrides the
    detection (the test suite sets 0, so its fp32 references hold on every CPU)."""
    forced = os.environ.get("GPTLAB_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def bf16_autocast_pays(device: torch.device) -> bool:
    """What --trainer.dtype=auto picks: bf16 autocast on CUDA GPUs that support it and on CPUs with native bf16."""
    if device.type == "cuda":  # natively (Ampere and later), not emulated as on a T4 or V100
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and native_bf16_cpu()


# Dense bf16 tensor-core peaks (FLOP/s, no sparsity) from NVIDIA's datasheets, by the name torch.cuda reports; the
# first match wins, so the specific names come before the general ones. H100 SXM: 989 (llm.c's mfu.h gets the same
# from Hopper's 756 at 456 tensor cores and 1620 MHz scaled to the SXM's 528 cores and 1830 MHz).
GPU_BF16_PEAK: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12),
    ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12), ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
)


def gpu_bf16_peak(name: str) -> float | None:
    """The bf16 peak FLOP/s of a GPU by its name ('NVIDIA H100 80GB HBM3': 989e12), None for one not in the table."""
    return next((peak for key, peak in GPU_BF16_PEAK if key in name), None)


def training_peak_flops(device: torch.device, bf16: bool) -> float | None:
    """The peak FLOP/s that MFU divides by for training on `device`: a known CUDA GPU's bf16 peak under bf16
    autocast; None elsewhere (CPUs, unknown GPUs, fp32: no honest peak to compare with)."""
    if device.type != "cuda" or not bf16:
        return None
    return gpu_bf16_peak(torch.cuda.get_device_name(device))


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float, processes: int = 1) -> float:
    """Model FLOPs utilization: the FLOP/s the model's own arithmetic needs at this speed (training: 3 x forward,
    6N + attention, as `gptlab info` counts it) over what the processes' GPUs can do at peak."""
    return tokens_per_s * flops_per_token / (peak_flops * processes)


def machine_kind(threads: int | None = None) -> str:
    """A file-name-safe name for this kind of machine: CPU model, ISA and threads ('amd-epyc-avx2-2t')."""
    threads = threads or torch.get_num_threads()
    # Trademarks, clock speed and filler words say nothing of the kind:
    # 'Intel(R) Xeon(R) Processor @ 2.60GHz' -> 'intel-xeon'.
    model = re.sub(r"\((r|tm)\)|@.*$|\b(processor|cpu)\b", " ", cpu_model().lower())
    return re.sub(r"[^a-z0-9]+", "-", f"{model} {cpu_isa()} {threads}t".lower()).strip("-")


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep the memory a training step frees (trim threshold 2 GB, 1 GB of top padding)
    instead of handing it back to the OS: every step frees and allocates the same large temporaries again, and
    memory returned to the OS page-faults back in on each reuse. Measured on an AVX512-BF16 EPYC (one thread):
    the char-small bf16 step 636 -> 544 ms with attention as bf16 matmuls, whose T x T scores are such
    temporaries. Process-wide; the resident size then stays near its peak, as a training process's does anyway.
    False where there is no glibc (macOS, musl): nothing changes."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad = -1, -2  # malloc.h
    return bool(libc.mallopt(m_trim_threshold, 2**31 - 1)) and bool(libc.mallopt(m_top_pad, 1 << 30))


def describe() -> str:
    """`gptlab info --hardware`: the machine, and every fast path chosen by measurement so far in this process."""
    bf16 = "native (bf16 autocast pays)" if native_bf16_cpu() else "not native (fp32 is faster)"
    lines = [
        f"CPU: {cpu_model()}, {cpu_isa()}, {torch.get_num_threads()} threads (torch {torch.__version__})",
        f"bf16 matmul: {bf16}; --trainer.dtype=auto trains in {'bf16' if native_bf16_cpu() else 'fp32'} here",
    ]
    if torch.cuda.is_available():
        native = bf16_autocast_pays(torch.device("cuda"))
        lines.append(f"GPU: {torch.cuda.get_device_name()} (native bf16: {native}; auto trains in bf16 if so)")
    made = autotune.choices()
    lines.append("fast paths chosen by measurement:" if made else "fast paths chosen by measurement: none yet")
    for op, key, best, times in made:
        timing = ", ".join(f"{name} {t * 1e3:.2f} ms" for name, t in times.items())
        lines.append(f"  {op} {key}: {best}" + (f" ({timing})" if timing else " (pinned)"))
    return "\n".join(lines)


def measure_fast_paths(config: GPTConfig, context: int) -> None:
    """Make the choices a run of this model makes on this machine: decode's matrix-vector products and, with a
    window shorter than the context, sliding-window attention over one sequence, forward and backward."""
    torch.manual_seed(0)
    model = GPT(config).eval()
    model.generate(torch.zeros(1, 1, dtype=torch.long), 2, temperature=0)
    if config.window is not None and config.window < context:
        q = torch.randn(1, config.n_head, context, config.head_dim, requires_grad=True)
        k, v = (torch.randn(1, config.n_kv_head, context, config.head_dim, requires_grad=True) for _ in range(2))
        sliding_window_attention(q, k, v, config.window).sum().backward()
