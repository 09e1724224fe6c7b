"""The MoE training step against transformers' MixtralForCausalLM at the same small config, side by side in one process
(run_all.py's row `moe`; run alone: python benchmarks/moe_train.py [REPEATS]).

Both models hold the same weights (gptlab's, exported to Mixtral's format and loaded by transformers), see the same
batch, add the load-balancing loss at the same coefficient (transformers: output_router_logits) and step torch's
AdamW, fused, as `gptlab train` and transformers' Trainer (its default optim for torch >= 2.8) both run it. gptlab
groups the tokens by expert with one sort and runs each expert's matmuls as one grouped matmul or one matmul per
expert, whichever measured faster; transformers' experts default sorts by expert and calls torch's grouped matmul;
its "eager" experts (the loop of transformers 4.x) find each expert's tokens with a one-hot mask and torch.where.
The row times both.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import torch

from gptlab import GPT, GPTConfig
from gptlab.moe import router_penalty

# Two small configs: n_embd 256 (the matmuls dominate) and n_embd 64 with 16 experts (the dispatch dominates).
CONFIGS = {
    "d256-8x512-top2": dict(vocab_size=65, block_size=128, n_layer=2, n_head=8, n_kv_head=4, n_embd=256,
                            pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
                            n_expert=8, expert_top_k=2, mlp_hidden=512),
    "d64-16x128-top2": dict(vocab_size=65, block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                            pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False,
                            n_expert=16, expert_top_k=2, mlp_hidden=128),
}
MOE_BATCH = 8
AUX = 0.01


def _alternate(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each fn, run in turn after one warm-up each (as run_all.alternate)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


# transformers' two ways to run the experts: its default since 5.x (sort by expert, torch's grouped matmul) and
# "eager", the loop over experts with a one-hot mask and torch.where that the 4.x releases ran.
HF_EXPERTS = ("grouped_mm", "eager")


def moe_steps(config: dict) -> tuple[dict[str, Callable[[], None]], float]:
    """Training-step closures of gptlab and of transformers with each of HF_EXPERTS, and the largest logit
    difference between gptlab and transformers."""
    from transformers import MixtralForCausalLM

    torch.manual_seed(0)
    ours = GPT(GPTConfig(**config)).train()
    with tempfile.TemporaryDirectory() as d:
        ours.save_pretrained(d)  # Mixtral's format: transformers loads the same weights
        hfs = {impl: MixtralForCausalLM.from_pretrained(d, attn_implementation="sdpa", output_router_logits=True,
                                                        router_aux_loss_coef=AUX, experts_implementation=impl).train()
               for impl in HF_EXPERTS}
    x = torch.randint(0, config["vocab_size"], (MOE_BATCH, config["block_size"]))
    y = torch.randint(0, config["vocab_size"], (MOE_BATCH, config["block_size"]))
    with torch.no_grad():
        diff = max((ours(x)[0] - hf(input_ids=x).logits).abs().max().item() for hf in hfs.values())
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=3e-4, weight_decay=0.1, fused=True)

    def step_ours() -> None:
        _, loss = ours(x, y)
        (loss + router_penalty(ours, AUX, 0.0)).backward()
        opt_ours.step()
        opt_ours.zero_grad(set_to_none=True)

    def step_hf(hf: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        hf(input_ids=x, labels=y).loss.backward()  # its loss includes router_aux_loss_coef * aux
        opt.step()
        opt.zero_grad(set_to_none=True)

    steps = {"ours": step_ours}
    for impl, hf in hfs.items():
        opt = torch.optim.AdamW(hf.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
        steps[impl] = lambda hf=hf, opt=opt: step_hf(hf, opt)
    return steps, diff


def row_moe(repeats: int, device: str = "cpu") -> str:
    """The markdown section of the row (CPU: the comparison is about the experts' dispatch)."""
    cells, diffs = [], []
    for name, config in CONFIGS.items():
        steps, diff = moe_steps(config)
        t = _alternate(steps, 3 * repeats)  # steps of tens of ms: more of them, for the same noise as other rows
        tokens = MOE_BATCH * config["block_size"]
        diffs.append(diff)
        cells.append([f"`{name}`", f"{t['ours'] * 1e3:.0f}", f"{tokens / t['ours']:,.0f}"]
                     + [f"{t[impl] * 1e3:.0f} (**{t[impl] / t['ours']:.2f}x**)" for impl in HF_EXPERTS])
    configs = "; ".join(f"`{name}`: {config}" for name, config in CONFIGS.items())
    return "\n".join([
        f"## MoE training step (forward + backward + AdamW) vs transformers' Mixtral, fp32, {device}",
        "",
        f"Configs: {configs}; batch {MOE_BATCH}. `transformers.MixtralForCausalLM` (SDPA attention) with the same "
        f"weights (logits within {max(diffs):.1e}), data, aux-loss coefficient ({AUX}) and optimizer (torch's fused "
        "AdamW, which `gptlab train` and transformers' Trainer run by default), with each of its experts "
        "implementations: `grouped_mm` (its default: tokens sorted by expert, torch's grouped matmul; gptlab sorts "
        "alike and times a grouped matmul against one matmul per expert) and `eager` (a loop over experts with one-hot "
        f"masks). Target: >= 1.5x the expert loop. Medians of {3 * repeats} alternating steps.",
        "",
        "| config | gptlab step (ms) | gptlab tokens/s | transformers grouped_mm step (ms) (gptlab's speed-up) "
        "| transformers eager step (ms) (gptlab's speed-up) |",
        "|---|---|---|---|---|",
        *["| " + " | ".join(row) + " |" for row in cells],
    ])


if __name__ == "__main__":
    print(row_moe(int(sys.argv[1]) if len(sys.argv) > 1 else 7))
