"""bf16 against fp32 on this machine: what `--trainer.dtype=auto` and `gptlab sample --dtype=auto` pick, and why
(run_all.py's row `bf16`; run alone: python benchmarks/bf16.py [REPEATS]).

Training: the char-small step (the `train` row's model and batch) in fp32 and under bf16 autocast, as the trainer
runs it, gptlab and transformers' GPT-2, all four alternating in one process; then where the bf16 step's time goes
(torch.profiler, self time per op). Decoding: GPT-2 124M greedy with fp32 weights and with bf16 weights (what
`--dtype=auto` measures and picks), and transformers' GPT-2 in bf16 (its own random weights: every greedy run
decodes the same number of tokens, so the work is the same). On a CPU without native bf16
(AVX2) bf16 is emulated: the row shows what auto avoids there.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from run_all import TRAIN, TRAIN_BATCH, _hf_gpt2, alternate, table  # noqa: E402

from gptlab import GPT, GPTConfig, autotune, hardware  # noqa: E402
from gptlab.generate import cast_weights, decode_dtype  # noqa: E402


def _steps() -> dict[str, object]:
    """Training-step closures: gptlab and transformers, fp32 and bf16 autocast (each model's two from one init),
    the same data and AdamW."""
    torch.manual_seed(0)
    cfg = GPTConfig(**TRAIN)
    x, y = (torch.randint(0, cfg.vocab_size, (TRAIN_BATCH, cfg.block_size)) for _ in range(2))
    models = {"gptlab": GPT(cfg), "transformers": _hf_gpt2(cfg)}
    fns = {}
    for name, model in models.items():
        for dtype in ("fp32", "bf16"):
            m = copy.deepcopy(model)
            opt = torch.optim.AdamW(m.parameters(), lr=3e-4, weight_decay=0.1)

            def step(m=m, opt=opt, bf16=dtype == "bf16", hf=name == "transformers") -> None:
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = m(input_ids=x, labels=y).loss if hf else m(x, y)[1]
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            fns[f"{name} {dtype}"] = step
    return fns


def _profile(step, steps: int = 3, rows: int = 8) -> str:
    """Where one step's time goes: the ops of largest self CPU time, over `steps` steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return table(["op", "self ms / step", "share"], [
        [f"`{e.key[:60]}`", f"{e.self_cpu_time_total / 1e3 / steps:.1f}", f"{e.self_cpu_time_total / total:.0%}"]
        for e in events[:rows]
    ])


def row_train_bf16(repeats: int) -> str:
    """The four training steps alternating, and the profile of gptlab's bf16 step."""
    fns = _steps()
    t = alternate(fns, repeats)
    tokens = TRAIN_BATCH * TRAIN["block_size"]
    rows = [[name, f"{s * 1e3:.0f}", f"{tokens / s:,.0f}",
             f"**{t[name.split()[0] + ' fp32'] / s:.2f}x**" if name.endswith("bf16") else "1.00x"]
            for name, s in t.items()]
    return "\n".join([
        "### Training step, char-small, fp32 vs bf16 autocast",
        "",
        f"Config: {TRAIN}, batch {TRAIN_BATCH}; forward + backward + torch AdamW; bf16: `torch.autocast('cpu', "
        "torch.bfloat16)` around the forward, fp32 weights and optimizer (what `--trainer.dtype=auto` does where "
        "bf16 is native). Target on AMX: bf16 >= 3x the fp32 step. Medians of alternating steps.",
        "",
        table(["model", "step (ms)", "tokens/s", "bf16 / fp32 of the same model"], rows),
        "",
        "Where gptlab's bf16 step spends its time (torch.profiler, self CPU time):",
        "",
        _profile(fns["gptlab bf16"]),
    ])


def row_decode_bf16(repeats: int, new_tokens: int = 128, prompt: int = 16) -> str:
    """gptlab's decode with fp32 and bf16 weights, and transformers' with bf16 weights, alternating."""
    torch.manual_seed(0)
    cfg = GPTConfig()  # GPT-2 124M
    fp32 = GPT(cfg).eval()
    chosen = decode_dtype(fp32)
    bf16 = cast_weights(copy.deepcopy(fp32), torch.bfloat16)
    hf = _hf_gpt2(cfg).eval()
    hf = hf.to(torch.bfloat16)  # its own random weights: timings do not depend on them
    idx = torch.randint(0, cfg.vocab_size, (1, prompt))
    mask = torch.ones_like(idx)

    @torch.no_grad()
    def run_hf() -> None:
        hf.generate(idx, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                    pad_token_id=0)

    t = alternate({
        "gptlab fp32 weights": lambda: fp32.generate(idx, new_tokens, temperature=0),
        "gptlab bf16 weights": lambda: bf16.generate(idx, new_tokens, temperature=0),
        "transformers bf16 weights": run_hf,
    }, repeats)
    base = t["gptlab fp32 weights"]
    return "\n".join([
        f"### Greedy decode, GPT-2 124M, batch 1, {prompt}-token prompt + {new_tokens} new tokens",
        "",
        f"`gptlab sample --dtype=auto` picks **{str(chosen).removeprefix('torch.')}** here.",
        "",
        table(["model", "tokens/s", "vs gptlab fp32"],
              [[name, f"{new_tokens / s:.1f}", f"**{base / s:.2f}x**"] for name, s in t.items()]),
        "",
        _auto_measurement(),
    ])


def _auto_measurement() -> str:
    """The timing behind sample's --dtype=auto; none where bf16 is not native (auto keeps fp32 untimed there)."""
    rows = [[f"{times['plain'] * 1e3:.2f}", f"{times['bfloat16'] * 1e3:.2f}", best]
            for op, _, best, times in autotune.choices() if op == "decode dtype" and times]
    if not rows:
        return "Auto timed nothing: bf16 is not native here, so it keeps fp32."
    return "\n".join(["The measurement behind auto (one token's pass through every linear layer, timed in both "
                      "dtypes, each with its fastest kernel; fastest of 3):", "",
                      table(["fp32 weights (ms)", "bf16 weights (ms)", "chosen"], rows)])


def row_bf16(repeats: int, new_tokens: int = 128) -> str:
    """run_all.py's row `bf16`: training and decoding, fp32 against bf16."""
    native = "yes" if hardware.native_bf16_cpu() else "no (emulated: auto stays in fp32 here)"
    return "\n\n".join([
        f"## bf16 vs fp32 on this CPU ({hardware.cpu_isa()}; native bf16 matmul: {native})",
        row_train_bf16(repeats),
        row_decode_bf16(repeats, new_tokens),
    ])


if __name__ == "__main__":
    hardware.keep_freed_memory()  # as gptlab train and run_all.py do
    print(row_bf16(int(sys.argv[1]) if len(sys.argv) > 1 else 7, int(sys.argv[2]) if len(sys.argv) > 2 else 128))
