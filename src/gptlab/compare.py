"""gptlab compare / gptlab convert: measure what each architecture change does; turn MHA into GQA.

    gptlab compare --preset=cpu --out=reports/cpu            # 8 variants x 2 seeds on Shakespeare, report.md
    gptlab compare --preset=cpu --grid=baseline,rope --seeds=1
    gptlab compare --grid=my_grid.yaml                       # {name: {model field: value}} changes to baseline
    gptlab convert --to-gqa 2 out/baby out/baby-gqa2         # mean-pool K/V heads (Ainslie et al. 2023, §2)
    gptlab train --init=out/baby-gqa2 ...                    # then uptrain it

Every run goes through the real trainer (`gptlab.train.main`) with the same data, token budget, batch,
schedule and seeds; only the model flags differ. Each run directory gets a `result.json` once it is
evaluated, and a run that has one is skipped, so an interrupted comparison continues where it stopped (a
run cut in the middle resumes from its last checkpoint). The report is `OUT/report.md` + PNG figures +
`results.json`; run directories live in `OUT/runs/` (checkpoints: keep them out of git).
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import hardware
from .config import SWITCHES, GPTConfig, modern_changes, switch_variants
from .model import GPT

# ========================================================================================================
# MHA -> GQA conversion
# ========================================================================================================


def convert_to_gqa(model: GPT, n_kv_head: int) -> GPT:
    """A copy of `model` with n_kv_head K/V heads, each the mean of its group of K/V heads (weights and biases).

    Query head h uses K/V head h // (n_head / n_kv_head) (as SDPA's enable_gqa), so group g pools the
    consecutive source heads g*r .. g*r+r-1, r = n_kv_head_src / n_kv_head. n_kv_head = current is a copy.
    """
    c = model.config
    src_kv = c.n_kv_head
    if n_kv_head < 1 or src_kv % n_kv_head:
        raise ValueError(
            f"--to-gqa {n_kv_head}: must divide the model's {src_kv} K/V heads; allowed: "
            f"{[d for d in range(1, src_kv + 1) if src_kv % d == 0]}"
        )
    new_config = c.replace(n_kv_head=n_kv_head)
    r, hd = src_kv // n_kv_head, c.head_dim
    q_dim = c.n_head * hd

    def pool(t: torch.Tensor) -> torch.Tensor:
        """t: (src_kv*hd, ...) rows of K or V -> (n_kv_head*hd, ...), each group of r heads averaged."""
        rest = t.shape[1:]
        return t.reshape(n_kv_head, r, hd, *rest).mean(dim=1).reshape(n_kv_head * hd, *rest)

    state = {}
    for key, t in model.state_dict().items():
        if key.endswith("attn.c_attn.weight") or key.endswith("attn.c_attn.bias"):
            q, k, v = t.split([q_dim, src_kv * hd, src_kv * hd], dim=0)
            t = torch.cat([q, pool(k), pool(v)], dim=0)
        state[key] = t.detach().clone()
    out = GPT(new_config)
    out.load_state_dict(state)
    if new_config.tie_embeddings:
        out.lm_head.weight = out.transformer.wte.weight
    return out.to(next(model.parameters()).device).eval()


CONVERT_USAGE = """usage: gptlab convert --to-gqa N SRC DST

Turn a multi-head (or GQA) checkpoint into grouped-query attention with N K/V heads by mean-pooling each
group's key and value heads (Ainslie et al. 2023, section 2). SRC: a gptlab run or checkpoint directory, a
Hugging Face GPT-2/Llama/Mistral directory, or a hub id (gpt2). DST: a new model directory (Llama/Mistral
format where SRC is one, else gptlab's, with a char model's tokenizer); uptrain it with
`gptlab train --init=DST`."""


def convert_main(argv: list[str] | None = None) -> int:
    """`gptlab convert --to-gqa N SRC DST`; returns the exit code."""
    from . import checkpoint as ckpt
    from .options import UsageError
    from .tokenizer import save_tokenizer
    from .train import command, load_pretrained

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or "-h" in argv or "--help" in argv:
        print(CONVERT_USAGE)
        return 0 if argv else 2
    n: int | None = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("--to-gqa") or a.startswith("--to_gqa"):
            value = a.partition("=")[2]
            if not value:
                i += 1
                value = argv[i] if i < len(argv) else ""
            try:
                n = int(value)
            except ValueError:
                raise UsageError(f"--to-gqa expects an integer number of K/V heads, got {value!r}") from None
        elif a.startswith("--"):
            raise UsageError(f"unknown flag {a}; see gptlab convert --help")
        else:
            rest.append(a)
        i += 1
    if n is None or len(rest) != 2:
        raise UsageError("expected --to-gqa N SRC DST; see gptlab convert --help")
    src, dst = rest
    if Path(dst).exists() and (not Path(dst).is_dir() or any(Path(dst).iterdir())):
        raise UsageError(f"{dst} exists and is not empty; convert writes a new model directory: pick a new DST")
    model, tokenizer = load_pretrained(src, need_tokenizer=False)
    try:
        out = convert_to_gqa(model, n)
    except ValueError as e:
        raise UsageError(str(e)) from None
    out.save_pretrained(dst)
    if tokenizer is not None and getattr(tokenizer, "name", "") == "char":
        save_tokenizer(tokenizer, Path(dst) / "tokenizer.json")
    # The source run's data goes with the model: `gptlab eval DST` measures it on the same val split.
    src_path = Path(src).expanduser()
    data = ckpt.data_reference(ckpt.find_checkpoint(src_path)) if src_path.exists() else None
    if data is not None:
        (Path(dst) / ckpt.DATA_REF_NAME).write_text(json.dumps({**data, "converted_from": src}, indent=1) + "\n")
    c0, c1 = model.config, out.config
    if tokenizer is None:  # a Llama with its own tokenizer: transformers can uptrain it, gptlab cannot
        from .hf import copy_hf_tokenizer

        copied = copy_hf_tokenizer(src, Path(dst))
        nxt = (f"copied its tokenizer files ({', '.join(copied) or 'none found'}); gptlab has no tokenizer for "
               "this vocabulary: uptrain it with transformers")
    else:  # on the source's data (a char model knows only its characters), in a new work dir
        data_flags = [f"--{k}={v}" for k, v in (data or {}).items() if v is not None and k != "data.tokenizer"]
        work_dir = f"--system.work_dir={Path(dst)}-uptrain"
        nxt = "uptrain with: " + command("train", f"--init={dst}", *data_flags, work_dir)
    print(
        f"converted {src}: {c0.n_head} query heads, {c0.n_kv_head} -> {c1.n_kv_head} K/V heads "
        f"({model.num_params() / 1e6:.2f}M -> {out.num_params() / 1e6:.2f}M params); wrote {dst}\n{nxt}"
    )
    return 0


# ========================================================================================================
# The grid and the presets
# ========================================================================================================


def default_grid(config: GPTConfig) -> dict[str, dict[str, Any]]:
    """Each variant of every switch (config.SWITCHES) against the GPT-2 baseline, plus the modern ones together."""
    return {"baseline": {}, **switch_variants(config), "modern": modern_changes(config)}


LABELS = {
    "baseline": "baseline (GPT-2)",
    **{v.name: v.label for s in SWITCHES for v in s.variants},
    "modern": "modern (all)",
}

# Compare presets: the baseline model and the train flags shared by every run.
PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: tests.
    "micro": {
        "model": {"preset": "tiny", "block_size": 32, "bias": False, "dropout": 0.0},
        "trainer": {"max_iters": 8, "batch_size": 4, "warmup_iters": 2, "eval_interval": 4, "eval_iters": 1,
                    "log_interval": 2, "learning_rate": 1e-3},
        "eval_batches": 1, "decode_tokens": 8,
    },
    # nanoGPT's CPU "baby" model (4 layers, 4 heads, 128 dims, block 64, batch 12) for 1200 of its 2000 steps:
    # 8 variants x 2 seeds + the uptraining runs in about 25 minutes on 2 quiet CPU cores.
    "cpu": {
        "model": {"preset": "baby", "block_size": 64, "bias": False, "dropout": 0.0},
        "trainer": {"max_iters": 1200, "batch_size": 12, "warmup_iters": 100, "eval_interval": 100,
                    "eval_iters": 10, "log_interval": 20, "learning_rate": 1e-3, "min_lr": 1e-4},
        "eval_batches": 20, "decode_tokens": 128,
    },
    # A GPU: nanoGPT's shakespeare-char size.
    "gpu": {
        "model": {"preset": "char-small", "block_size": 256, "bias": False, "dropout": 0.0},
        "trainer": {"max_iters": 2000, "batch_size": 64, "warmup_iters": 100, "eval_interval": 250,
                    "eval_iters": 50, "log_interval": 25, "learning_rate": 1e-3, "min_lr": 1e-4},
        "eval_batches": 50, "decode_tokens": 256,
    },
}


def run_device(preset: dict[str, Any]) -> torch.device:
    """The device the runs train on (--trainer.device, auto: cuda if there is one), where they are measured too."""
    from .distributed import resolve_device

    return resolve_device(str(preset["trainer"].get("device", "auto")))


def device_name(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else device.type


def parse_grid(spec: str | None, base: GPTConfig) -> dict[str, dict[str, Any]]:
    """The grid: all defaults (None), a comma list of default names, or a YAML/JSON file {name: {field: v}}."""
    from .options import UsageError

    grid = default_grid(base)
    if spec is None:
        return grid
    if Path(spec).suffix in (".yaml", ".yml", ".json"):
        import yaml

        if not Path(spec).is_file():
            raise UsageError(f"--grid {spec}: file not found; check the path")
        try:
            data = yaml.safe_load(Path(spec).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise UsageError(f"--grid {spec}: {' '.join(str(e).split())}") from None
        if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
            raise UsageError(f"--grid {spec} must map variant names to {{model field: value}} changes")
        out = {str(k): dict(v or {}) for k, v in data.items()}
    else:
        names = [n.strip() for n in spec.split(",") if n.strip()]
        unknown = [n for n in names if n not in grid]
        if unknown:
            raise UsageError(f"--grid: unknown variant(s) {unknown}; choose from {', '.join(grid)} or a YAML file")
        out = {n: grid[n] for n in names}
    for name, changes in out.items():
        try:
            base.replace(**changes)
        except (ValueError, TypeError) as e:
            raise UsageError(f"--grid variant {name!r}: {e}") from None
    return out


# ========================================================================================================
# Running and measuring one variant
# ========================================================================================================


def _train_flags(preset: dict[str, Any], changes: dict[str, Any], seed: int, work_dir: Path,
                 extra: list[str]) -> list[str]:
    # Quiet: the comparison's log is one line per run (compare prints it), not every run's progress.
    flags = [f"--system.work_dir={work_dir}", f"--system.seed={seed}", "--trainer.sample_tokens=0",
             "--trainer.quiet=True"]
    model = {**preset["model"], **changes}
    flags += [f"--model.{k}={v}" for k, v in model.items()]
    flags += [f"--trainer.{k}={v}" for k, v in preset["trainer"].items()]
    return flags + list(extra)


def _settings_path(out: Path) -> Path:
    return out / "runs" / "settings.json"


def read_settings(out: Path) -> dict[str, Any]:
    """OUT/runs/settings.json: the command of the comparison, its grid, and the train flags of every run started."""
    path = _settings_path(out)
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_settings(out: Path, settings: dict[str, Any]) -> None:
    path = _settings_path(out)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=1) + "\n")
    os.replace(tmp, path)


def _run_key_flags(flags: list[str]) -> list[str]:
    """The flags that make a run what it is: not where it lives, its data cache or how often it prints."""
    bookkeeping = ("--system.work_dir=", "--data.cache_dir=", "--trainer.log_interval=", "--trainer.quiet=")
    return [f for f in flags if not f.startswith(bookkeeping)]


def record_run_flags(out: Path, run: str, flags: list[str]) -> None:
    """Remember the settings a run was started with, so a later command cannot reuse it under others."""
    settings = read_settings(out)
    settings.setdefault("runs", {})[run] = _run_key_flags(flags)
    _write_settings(out, settings)


# The uptraining experiment's files: one unit, recorded under "uptrain", redone together.
UPTRAIN_PATHS = ("uptrain.json", "converted-gqa", "uptrained-gqa", "scratch-gqa-s0")


def check_run_flags(out: Path, planned: dict[str, list[str]]) -> None:
    """Refuse, before anything trains, to reuse runs (complete or interrupted) started with other settings."""
    saved = read_settings(out).get("runs", {})
    stale = []
    for run, flags in planned.items():
        paths = [out / "runs" / p for p in (UPTRAIN_PATHS if run == "uptrain" else (run,))]
        before = saved.get(run)
        if before is None or not any(p.exists() for p in paths):
            continue
        was = dict(f.partition("=")[::2] for f in before)
        now = dict(f.partition("=")[::2] for f in _run_key_flags(flags))
        if was != now:
            changed = [f"{k}={now.get(k, '(unset)')} (was {was.get(k, '(unset)')})"
                       for k in sorted(was.keys() | now.keys()) if was.get(k) != now.get(k)]
            stale.append((shlex.join(str(p) for p in paths if p.exists()), changed))  # the rm below works as printed
    if stale:
        from .options import UsageError

        raise UsageError(
            f"{len(stale)} run(s) in {out / 'runs'} were trained with other settings ({', '.join(stale[0][1])}); "
            f"use another --out, or delete them to train them again: rm -r {' '.join(p for p, _ in stale)}"
        )


def run_train(flags: list[str], work_dir: Path) -> int | None:
    """Train through `gptlab train`, resuming a run that stopped in the middle; returns the iteration it resumed
    from (None: a new run)."""
    from . import checkpoint as ckpt
    from . import train

    resumed_at = None
    if (work_dir / "last").is_dir():
        resumed_at = ckpt.checkpoint_iter(work_dir / "last")
        flags = [*flags, "--trainer.resume=True"]
    elif work_dir.exists():
        flags = [*flags, "--system.overwrite=True"]
    code = train.main(flags)
    if code != 0:
        raise RuntimeError(f"training in {work_dir} failed (exit code {code})")
    want = int(next(f for f in reversed(flags) if f.startswith("--trainer.max_iters=")).partition("=")[2])
    state = json.loads((work_dir / "last" / "state.json").read_text())
    if state["iter"] < want:  # stopped by a signal: the trainer saved and returned 0, but the run is not done
        raise SystemExit(f"[compare] {work_dir} stopped at iter {state['iter']} of {want}; rerun this gptlab compare "
                         "command to continue the whole comparison")
    return resumed_at


@torch.no_grad()
def eval_loss(model: GPT, data: Any, context: int, batches: int, batch_size: int, seed: int = 0) -> float | None:
    """Mean val loss on fixed random windows of `context` tokens; None where the model cannot see that far."""
    c = model.config
    if c.pos_emb == "learned" and context > c.block_size:
        return None
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(batches):
        x, y = data.get_batch("val", batch_size, context, gen, device)
        total += model(x, y)[1].item()
    return total / batches


@torch.no_grad()
def decode_tokens_per_s(model: GPT, n: int) -> float:
    """Tokens/s generating n tokens (batch 1, KV cache, greedy) after a one-token prompt."""
    c = model.config
    n = min(n, c.block_size - 1) if c.pos_emb == "learned" else n
    device = next(model.parameters()).device
    idx = torch.zeros((1, 1), dtype=torch.long, device=device)
    model.generate(idx, min(n, 8), temperature=0.0)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(idx, n, temperature=0.0)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def measure(work_dir: Path, data: Any, eval_batches: int, decode_tokens: int, batch_size: int,
            peak_mem: int | None, device: torch.device) -> dict[str, Any]:
    """result.json of a finished run: losses, extrapolation, speeds, sizes."""
    from . import checkpoint as ckpt
    from .info import model_stats
    from .train import read_metrics

    loaded = ckpt.load_checkpoint(work_dir / "last", with_optimizer=False)
    model = GPT(loaded.config)
    model.load_state_dict(loaded.model_state)
    model.to(device).eval()
    c = model.config
    rows = read_metrics(work_dir)
    evals = [(r["iter"], r["val_loss"]) for r in rows if "val_loss" in r]
    speed = [(r["elapsed_s"], r["tokens_per_s"]) for r in rows if "tokens_per_s" in r]
    stats = model_stats(c, batch=batch_size)
    extrap = {
        f"{m}x": eval_loss(model, data, m * c.block_size, eval_batches, max(1, batch_size // m)) for m in (1, 2, 4)
    }
    return {
        "config": c.to_dict(),
        "iters": loaded.state.get("iter"),
        "final_val_loss": evals[-1][1] if evals else None,
        # How each loss was measured: the trainer's last eval averages eval_iters batches; the extrapolation
        # columns average eval_batches batches of other windows. Neither is the whole split (`gptlab eval`).
        "eval_iters": loaded.state.get("train_config", {}).get("trainer.eval_iters"),
        "eval_batches": eval_batches,
        "val_curve": evals,
        "tokens_per_s_curve": speed,
        "train_tokens_per_s": statistics.median(s for _, s in speed) if speed else None,
        "decode_tokens_per_s": decode_tokens_per_s(model, decode_tokens),
        "params": stats.total_params,
        "non_embedding_params": stats.non_embedding_params,
        "kv_bytes_per_token": stats.kv_bytes_per_token,
        "flops_per_token": stats.flops_forward_per_token,
        "peak_memory_bytes": peak_mem,
        "est_train_memory_bytes": stats.train_memory_bytes,
        "extrapolation": extrap,
    }


def run_variant(out: Path, name: str, changes: dict[str, Any], seed: int, preset: dict[str, Any], data: Any,
                extra: list[str], device: torch.device, say: Callable[[str], None]) -> dict[str, Any]:
    """Train (or skip, or resume) one variant/seed and return its result.json."""
    work_dir = out / "runs" / f"{name}-s{seed}"
    result_path = work_dir / "result.json"
    if result_path.is_file():
        say(f"[compare] {name} seed {seed}: complete, skipped")
        return json.loads(result_path.read_text())
    peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    flags = _train_flags(preset, changes, seed, work_dir, extra)
    record_run_flags(out, work_dir.name, flags)
    start = time.perf_counter()
    resumed_at = run_train(flags, work_dir)
    minutes = (time.perf_counter() - start) / 60
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
    result = measure(work_dir, data, preset["eval_batches"], preset["decode_tokens"],
                     preset["trainer"]["batch_size"], peak, device)
    result.update(name=name, seed=seed, changes=changes)
    result_path.write_text(json.dumps(result, indent=1) + "\n")
    resumed = "" if resumed_at is None else f" (resuming at iter {resumed_at})"
    say(f"[compare] {name} seed {seed}{resumed}: final val loss {result['final_val_loss']:.4f} "
        f"({result['eval_iters']}-batch estimate) at iter {result['iters']}, {minutes:.1f} min, "
        f"{result['train_tokens_per_s'] or 0:,.0f} train tokens/s, in {work_dir}")
    return result


# ========================================================================================================
# Speed, side by side: every variant in one process, alternating, median of several rounds
# ========================================================================================================


def measure_speeds(out: Path, grid: dict[str, dict[str, Any]], preset: dict[str, Any], device: torch.device,
                   rounds: int = 9, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train-step and decode tokens/s of every variant (seed 0's trained weights), measured round-robin.

    Each run's own tokens/s is logged while the machine does whatever else it does; a speed compared across
    variants must be measured under the same conditions, so every round times each variant once, in turn,
    and the report takes the median over rounds. Training: forward + backward + AdamW on one batch of the
    preset's shape, on a copy of the weights. Decoding: greedy with the KV cache from a one-token prompt.
    """
    from .train import TrainerConfig, make_optimizer

    batch, tokens = int(preset["trainer"]["batch_size"]), int(preset["decode_tokens"])
    # The step in the dtype the runs trained in (what --trainer.dtype=auto picks on this device, or as given).
    dtype = str(preset["trainer"].get("dtype", "auto"))
    bf16 = dtype == "bfloat16" or (dtype == "auto" and hardware.bf16_autocast_pays(device))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    lasts = {name: out / "runs" / f"{name}-s0" / "last" for name in grid}
    trained = {name: GPT.from_pretrained(last).to(device).eval() for name, last in lasts.items() if last.is_dir()}
    # One decode length for all: learned positions stop at block_size.
    n = min([tokens] + [m.config.block_size - 1 for m in trained.values() if m.config.pos_emb == "learned"])
    prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    steps: dict[str, Callable[[], None]] = {}
    decodes: dict[str, Callable[[], None]] = {}
    train_tokens: dict[str, int] = {}
    for name, model in trained.items():
        c = model.config
        learner = copy.deepcopy(model).train()
        opt = make_optimizer(learner, TrainerConfig(), fused=True)  # as the trainer does
        gen = torch.Generator().manual_seed(0)
        x, y = (torch.randint(0, c.vocab_size, (batch, c.block_size), generator=gen).to(device) for _ in range(2))

        def step(m: GPT = learner, o: torch.optim.Optimizer = opt, x: torch.Tensor = x, y: torch.Tensor = y) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = m(x, y)[1]
            loss.backward()
            o.step()
            o.zero_grad(set_to_none=True)

        steps[name], train_tokens[name] = step, batch * c.block_size
        decodes[name] = lambda m=model: m.generate(prompt, n, temperature=0.0)
    if not steps:
        return {}
    say(f"[compare] speed: {len(steps)} variants side by side, {rounds} rounds")
    times: dict[str, dict[str, list[float]]] = {name: {"train": [], "decode": []} for name in steps}
    for fns in (steps, decodes):  # warm-up: allocator, thread pools, first-call kernel choices
        for f in fns.values():
            f()
    for _ in range(rounds):
        for name in steps:
            for kind, f in (("train", steps[name]), ("decode", decodes[name])):
                sync()
                t0 = time.perf_counter()
                f()
                sync()
                times[name][kind].append(time.perf_counter() - t0)
    result = {}
    for name, t in times.items():
        result[name] = {
            "train_tokens_per_s": train_tokens[name] / statistics.median(t["train"]),
            "decode_tokens_per_s": n / statistics.median(t["decode"]),
            "train_tokens_per_step": train_tokens[name], "decode_tokens": n,
        }
    return {"rounds": rounds, "load_average": list(os.getloadavg()), "threads": torch.get_num_threads(),
            "device": device_name(device) + (", bf16 autocast" if bf16 else ""), "variants": result}


# ========================================================================================================
# Uptraining experiment: MHA -> GQA (convert + ~5% of the steps) vs GQA from scratch
# ========================================================================================================


def uptrain_experiment(out: Path, preset: dict[str, Any], data: Any, extra: list[str],
                       say: Callable[[str], None]) -> dict[str, Any]:
    """Convert baseline seed 0 to GQA, uptrain it for 5% of the steps; train GQA from scratch for the total."""
    from .tokenizer import save_tokenizer
    from .train import load_pretrained

    path = out / "runs" / "uptrain.json"
    if path.is_file():
        say("[compare] uptraining experiment: complete, skipped")
        return json.loads(path.read_text())
    record_run_flags(out, "uptrain", _train_flags(preset, {}, 0, Path(), extra))
    base_dir = out / "runs" / "baseline-s0"
    iters = int(preset["trainer"]["max_iters"])
    up_iters = max(1, round(0.05 * iters))
    eb = preset["eval_batches"]
    bs = preset["trainer"]["batch_size"]
    mha, tok = load_pretrained(str(base_dir / "last"))
    n_kv = max(1, mha.config.n_head // 2)
    gqa = convert_to_gqa(mha, n_kv)
    conv_dir = out / "runs" / "converted-gqa"
    gqa.save_pretrained(conv_dir)
    save_tokenizer(tok, conv_dir / "tokenizer.json")
    ctx = mha.config.block_size
    loss_mha = eval_loss(mha, data, ctx, eb, bs)
    loss_conv = eval_loss(gqa, data, ctx, eb, bs)
    # Uptrain: the converted weights, a short warmup, the preset's learning rate decayed over up_iters.
    up_dir = out / "runs" / "uptrained-gqa"
    # A warmup shorter than the run (a 1-step uptraining has none): it must reach the peak learning rate.
    t = {**preset["trainer"], "max_iters": up_iters, "warmup_iters": up_iters // 5,
         "eval_interval": up_iters, "lr_decay_iters": up_iters}
    flags = [f"--init={conv_dir}", f"--system.work_dir={up_dir}", "--system.seed=0", "--trainer.sample_tokens=0",
             "--trainer.quiet=True"]
    flags += [f"--trainer.{k}={v}" for k, v in t.items()] + list(extra)
    run_train(flags, up_dir)
    up_model, _ = load_pretrained(str(up_dir / "last"))
    loss_up = eval_loss(up_model, data, ctx, eb, bs)
    # GQA from scratch for the same total steps (iters + up_iters).
    scratch_dir = out / "runs" / "scratch-gqa-s0"
    trainer = {**preset["trainer"], "max_iters": iters + up_iters}
    run_train(_train_flags({**preset, "trainer": trainer}, {"n_kv_head": n_kv}, 0, scratch_dir, extra), scratch_dir)
    scratch, _ = load_pretrained(str(scratch_dir / "last"))
    loss_scratch = eval_loss(scratch, data, ctx, eb, bs)
    result = {"n_head": mha.config.n_head, "n_kv_head": n_kv, "iters": iters, "uptrain_iters": up_iters,
              "mha": loss_mha, "converted": loss_conv, "uptrained": loss_up, "scratch": loss_scratch}
    path.write_text(json.dumps(result, indent=1) + "\n")
    say(f"[compare] uptraining experiment: val loss MHA {loss_mha:.4f}, converted to {n_kv} K/V heads "
        f"{loss_conv:.4f}, uptrained {up_iters} steps {loss_up:.4f}, GQA from scratch {loss_scratch:.4f} "
        f"({eb}-batch estimates)")
    return result


# ========================================================================================================
# The report
# ========================================================================================================


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _fig(path: Path, draw: Callable[[Any], None]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=90, bbox_inches="tight")


def plot_curves(results: dict[str, list[dict[str, Any]]], out: Path) -> None:
    """val_loss.png (mean with a min-max band over seeds) and tokens_per_s.png (over wall time)."""

    def val(ax: Any) -> None:
        tops: list[float] = []
        for i, (name, runs) in enumerate(results.items()):
            iters = [it for it, _ in runs[0]["val_curve"]]
            curves = [[v for _, v in r["val_curve"]] for r in runs]
            n = min(len(c) for c in curves)
            mean = [statistics.fmean(c[j] for c in curves) for j in range(n)]
            lo = [min(c[j] for c in curves) for j in range(n)]
            hi = [max(c[j] for c in curves) for j in range(n)]
            ax.plot(iters[:n], mean, color=f"C{i}", label=LABELS.get(name, name))
            ax.fill_between(iters[:n], lo, hi, color=f"C{i}", alpha=0.2)
            if n > 2:
                tops.append(hi[min(2, n - 1)])
        if tops:  # zoom past the first evals, where all variants start near ln(vocab)
            ax.set_ylim(top=max(tops) + 0.05)
        ax.set_xlabel("iteration")
        ax.set_ylabel("val loss (nats/token)")
        ax.set_title("val loss: mean over seeds, band = min..max")

    def speed(ax: Any) -> None:
        for i, (name, runs) in enumerate(results.items()):
            curve = runs[0]["tokens_per_s_curve"]
            if curve:
                ax.plot(*zip(*curve, strict=True), color=f"C{i}", label=LABELS.get(name, name))
        ax.set_xlabel("training wall time (s), seed 0")
        ax.set_ylabel("train tokens/s")
        ax.set_title("training throughput")

    _fig(out / "val_loss.png", val)
    _fig(out / "tokens_per_s.png", speed)


def _mb(n: float | None) -> str:
    return "–" if n is None else f"{n / 2**20:.1f} MiB"


def summarize(results: dict[str, list[dict[str, Any]]], speeds: dict[str, Any] | None = None
              ) -> dict[str, dict[str, Any]]:
    """Per variant: the sizes of seed 0, mean/std of the measured numbers over seeds, and the side-by-side
    speeds where measured (else the mean of what each run logged)."""
    out = {}
    side = (speeds or {}).get("variants", {})
    for name, runs in results.items():
        r0 = runs[0]
        loss_m, loss_s = _mean_std([r["final_val_loss"] for r in runs])
        extrap = {}
        for k in r0["extrapolation"]:
            vals = [r["extrapolation"][k] for r in runs]
            extrap[k] = None if any(v is None for v in vals) else _mean_std(vals)
        peaks = [r["peak_memory_bytes"] for r in runs if r["peak_memory_bytes"] is not None]
        out[name] = {
            "seeds": len(runs), "params": r0["params"], "non_embedding_params": r0["non_embedding_params"],
            "kv_bytes_per_token": r0["kv_bytes_per_token"], "flops_per_token": r0["flops_per_token"],
            "train_tokens_per_s": side[name]["train_tokens_per_s"] if name in side
            else statistics.fmean(r["train_tokens_per_s"] for r in runs),
            "decode_tokens_per_s": side[name]["decode_tokens_per_s"] if name in side
            else statistics.fmean(r["decode_tokens_per_s"] for r in runs),
            "speed_side_by_side": name in side,
            "peak_memory_bytes": max(peaks) if peaks else None,
            "est_train_memory_bytes": r0["est_train_memory_bytes"],
            "val_loss": (loss_m, loss_s), "extrapolation": extrap, "config": r0["config"],
            "val_loss_batches": r0.get("eval_iters"), "window_batches": r0.get("eval_batches"),
        }
    return out


def commentary(name: str, s: dict[str, Any], base: dict[str, Any] | None) -> str:
    """One paragraph about a variant, from the measured numbers (vs the baseline)."""
    if base is None or name == "baseline":
        return ""
    m, sd = s["val_loss"]
    bm, bsd = base["val_loss"]
    d = m - bm
    noise = max(2 * math.hypot(sd, bsd), 0.005)
    n = s.get("val_loss_batches")  # results of an older gptlab do not say
    what = f"final val loss ({n}-batch estimate)" if n else "final val loss"
    if s["seeds"] < 2 or base["seeds"] < 2:
        verdict = f"{what} {m:.3f} vs {bm:.3f} (Δ {d:+.3f}; one seed, so no noise estimate)"
    elif abs(d) <= noise:
        verdict = f"{what} {m:.3f} vs {bm:.3f} (Δ {d:+.3f}): within the seed noise (±{noise:.3f})"
    else:
        verdict = f"{what} {m:.3f} vs {bm:.3f} (Δ {d:+.3f}, {'better' if d < 0 else 'worse'} beyond ±{noise:.3f})"
    dp = s["params"] / base["params"] - 1
    kv = s["kv_bytes_per_token"] / base["kv_bytes_per_token"]
    tr = s["train_tokens_per_s"] / base["train_tokens_per_s"]
    dec = s["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    parts = [f"**{LABELS.get(name, name)}**: {verdict}.",
             f"Size: {s['params']:,} params ({dp:+.1%}), KV cache {kv:.2f}× the baseline's per token.",
             f"Speed: training {tr:.2f}×, decoding {dec:.2f}× the baseline's tokens/s."]
    ex = s["extrapolation"]
    if ex.get("2x") is None:
        parts.append("Pitfall: learned positions stop at block_size, so it cannot be evaluated at 2× or 4×.")
    else:
        e1, e2, e4 = ex["1x"][0], ex["2x"][0], ex["4x"][0]
        wb = s.get("window_batches")
        parts.append(f"Longer contexts{f' ({wb}-batch estimates)' if wb else ''}: val loss {e1:.3f} at 1×, "
                     f"{e2:.3f} at 2×, {e4:.3f} at 4× the training context "
                     f"({'degrades' if e4 > e1 + 0.05 else 'holds up'}).")
    if kv < 1:
        parts.append(f"The KV cache holds {1 / kv:.1f}× fewer bytes per token: that is the memory a long-context "
                     "decode saves; whether it is faster depends on the cache dominating the step (here: "
                     f"{dec:.2f}× decode speed).")
    if s["config"].get("window"):
        parts.append(f"Each query sees at most {s['config']['window']} keys, so the attention cost stops growing "
                     "with the context; information from further back must travel through the layers.")
    if s["config"].get("mlp") == "swiglu" and base["config"].get("mlp") != "swiglu":
        h, m = s["config"]["mlp_hidden"], base["config"]["mlp_hidden"]
        d_mlp = 3 * h / (2 * m) - 1  # SwiGLU's three matrices against GELU's two, at the same n_embd
        more = f"{abs(d_mlp):.1%} {'more' if d_mlp > 0 else 'fewer'} parameters than"
        parts.append(f"SwiGLU's hidden size {h} (vs GELU's {m}) gives its three matrices {more} "
                     "GPT-2's two" + (", so the loss difference is the gating, not the size."
                                                    if abs(d_mlp) < 0.01 else
                                                    "; set mlp_hidden in a YAML grid to match them."))
    return " ".join(parts)


def speed_note(speeds: dict[str, Any] | None) -> str:
    """How the tokens/s columns were measured."""
    if not speeds or not speeds.get("variants"):
        return ("Tokens/s: each run's own log (train: median over the run; decode: after training), so they "
                "carry whatever else the machine was doing at the time.")
    v = next(iter(speeds["variants"].values()))
    load = " / ".join(f"{x:.1f}" for x in speeds["load_average"])
    return (f"Tokens/s: measured side by side after training, every variant in one process, in turn, median of "
            f"{speeds['rounds']} rounds (train: forward + backward + AdamW on {v['train_tokens_per_step']:,} tokens; "
            f"decode: {v['decode_tokens']} greedy tokens, batch 1, KV cache; {speeds['threads']} threads, "
            f"{speeds['device']}, load average {load} at the end). The training-throughput figure is what each "
            "run logged while it trained.")


def write_report(out: Path, results: dict[str, list[dict[str, Any]]], uptrain: dict[str, Any] | None,
                 meta: dict[str, Any], speeds: dict[str, Any] | None = None) -> Path:
    """report.md, val_loss.png, tokens_per_s.png, results.json in `out`."""
    summary = summarize(results, speeds)
    plot_curves(results, out)

    def pm(v: tuple[float, float], seeds: int) -> str:
        """Mean ± std over the seeds completed (one has no spread); a comparison in progress says how many."""
        text = f"{v[0]:.4f} ± {v[1]:.4f}" if seeds > 1 else f"{v[0]:.4f}"
        return text if seeds >= meta["seeds"] else f"{text} ({seeds} of {meta['seeds']} seeds)"

    # Each loss says how it was measured (a few batches, never the whole split: that is `gptlab eval RUN`).
    t = meta["trainer"]
    final = f"final val loss ({t['eval_iters']}-batch estimate)"
    windows = f"{meta['eval_batches']}-batch estimate"
    base = summary.get("baseline")
    lines = [
        f"# gptlab compare: {meta['preset']} preset",
        "",
        f"- machine: {meta['machine']}; torch {meta['torch']}; {meta['threads']} threads; device {meta['device']}",
        f"- note: {meta['note']}",
        f"- model: {meta['model']}; training: {meta['trainer']}; seeds: {meta['seeds']}",
        f"- data: {meta['data']}; wall time of the whole comparison: {meta['wall_min']:.1f} min",
        "",
        "![val loss](val_loss.png)",
        "",
        "![tokens/s](tokens_per_s.png)",
        "",
        "## Variants",
        "",
        "Changes to the baseline's model: " + "; ".join(
            f"{LABELS.get(n, n)}: " + (", ".join(f"{k}={v}" for k, v in c.items()) or "none")
            for n, c in meta["grid"].items() if n in results) + ".",
        "",
        "| variant | params | non-emb params | KV bytes/token | FLOPs/token | train tok/s | decode tok/s "
        f"| peak memory | {final} | Δ vs baseline |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        m, sd = s["val_loss"]
        delta = "–" if base is None or name == "baseline" else f"{m - base['val_loss'][0]:+.3f}"
        peak = _mb(s["peak_memory_bytes"]) if s["peak_memory_bytes"] else f"{_mb(s['est_train_memory_bytes'])} (est.)"
        lines.append(
            f"| {LABELS.get(name, name)} | {s['params']:,} | {s['non_embedding_params']:,} | "
            f"{s['kv_bytes_per_token']:,} | {s['flops_per_token'] / 1e6:.2f}M | {s['train_tokens_per_s']:,.0f} | "
            f"{s['decode_tokens_per_s']:,.0f} | {peak} | {pm((m, sd), s['seeds'])} | {delta} |"
        )
    lines += [
        "",
        "KV bytes and FLOPs per token (forward, at block_size) are computed by `gptlab info` (fp32). Peak memory "
        "is measured on CUDA (`max_memory_allocated`); on CPU it is the estimate of `gptlab info` "
        "(weights + grads + AdamW + activations). Final val loss: the trainer's last eval, the mean loss of "
        f"{t['eval_iters']} batches of {t['batch_size']} x {meta['model']['block_size']} tokens (the same batches for "
        "every variant of a seed); mean ± std over the seeds completed.",
        "",
        speed_note(speeds),
        "",
        "## Length extrapolation",
        "",
        f"Val loss on windows of 1×, 2× and 4× the training context (block_size), each the mean loss of "
        f"{meta['eval_batches']} batches of fixed random windows; the 1× column is measured on other windows "
        "than the final val loss, so the two differ by that sampling. `gptlab eval RUN` gives the whole val split.",
        "",
        f"| variant | val loss at 1× ({windows}) | 2× | 4× |",
        "|---|---:|---:|---:|",
    ]
    for name, s in summary.items():
        cells = []
        for k in ("1x", "2x", "4x"):
            v = s["extrapolation"].get(k)
            cells.append("n/a: learned positions end at block_size" if v is None else pm(v, s["seeds"]))
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    lines += ["", "## What each change did (generated from the numbers above)", ""]
    for name, s in summary.items():
        text = commentary(name, s, base)
        if text:
            lines += [f"- {text}", ""]
    if uptrain:
        u = uptrain
        lines += [
            "## MHA → GQA uptraining (Ainslie et al. 2023)",
            "",
            f"The baseline (seed 0, {u['n_head']} heads) converted with `gptlab convert --to-gqa {u['n_kv_head']}` "
            f"(mean-pooled K/V heads), uptrained for {u['uptrain_iters']} step{'s' * (u['uptrain_iters'] != 1)} "
            f"({u['uptrain_iters'] / u['iters']:.0%} of {u['iters']}), against GQA trained from scratch for "
            f"{u['iters'] + u['uptrain_iters']} steps. Val loss at block_size:",
            "",
            f"| model | val loss at block_size ({windows}) |",
            "|---|---:|",
            f"| MHA ({u['iters']} steps) | {u['mha']:.4f} |",
            f"| converted to GQA, before uptraining | {u['converted']:.4f} |",
            f"| converted + uptrained {u['uptrain_iters']} steps | {u['uptrained']:.4f} |",
            f"| GQA from scratch, {u['iters'] + u['uptrain_iters']} steps | {u['scratch']:.4f} |",
            "",
            f"Mean-pooling changes the loss by {u['converted'] - u['mha']:+.3f} nats at once; {u['uptrain_iters']} "
            f"step{'s' * (u['uptrain_iters'] != 1)} of "
            f"uptraining recover to {u['uptrained']:.3f} ({u['uptrained'] - u['scratch']:+.3f} vs from scratch).",
            "",
        ]
    lines += ["Reproduce: `" + meta["command"] + "` (complete runs are skipped; interrupted ones resume).", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "uptrain": uptrain, "speeds": speeds,
                    "runs": {n: [{k: v for k, v in r.items() if k != "config"} for r in rs]
                             for n, rs in results.items()}}, indent=1) + "\n")
    return out / "report.md"


# ========================================================================================================
# The command
# ========================================================================================================

COMPARE_USAGE = f"""usage: gptlab compare [--preset=cpu|gpu|micro] [--grid=NAMES|FILE.yaml] [--seeds=N] [--out=DIR]
                      [--note=TEXT] [--no-uptrain] [--report-only] [train flags, e.g. --trainer.max_iters=100 ...]

Train a grid of architecture variants (same data, tokens, batch, schedule and seeds) through gptlab train
and write OUT/report.md with figures. Default grid: baseline (GPT-2), the switches one at a time
({", ".join(v.name for s in SWITCHES for v in s.variants)}) and modern (all).
A YAML grid maps names to model field changes against the baseline, e.g.
  rope: {{pos_emb: rope}}
  wide_kv: {{n_kv_head: 2}}
Complete runs are skipped and interrupted ones resumed, so rerunning the command continues a comparison.
--report-only writes the report from the runs complete so far (marked incomplete), training nothing; while
the comparison runs, it does not time the variants either (tokens/s: each run's own log)."""


def _scalar(text: str) -> Any:
    """A flag value as int, float, bool or None where it reads as one, else the string."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _parse_args(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(options of compare itself, train flags) from the command line."""
    from .options import UsageError

    opts = {"preset": "cpu", "grid": None, "seeds": "2", "out": None, "note": "", "uptrain": "True",
            "report_only": "False"}
    extra: list[str] = []
    for a in argv:
        key, eq, value = a.removeprefix("--").partition("=")
        key = key.replace("-", "_")
        if key == "no_uptrain":
            opts["uptrain"] = "False"
        elif key == "report_only" and not eq:
            opts["report_only"] = "True"
        elif key in opts and eq:
            opts[key] = value
        elif a.startswith("--trainer.") or a.startswith("--data.") or a.startswith("--model."):
            extra.append(a)
        else:
            raise UsageError(f"unknown argument {a!r}; see gptlab compare --help")
    return opts, extra


def _compare_lock(out: Path) -> Any:
    """The lock of a comparison in OUT/runs (a RunLock), held until it ends; refused while another holds it."""
    from . import checkpoint as ckpt
    from .options import UsageError

    try:
        return ckpt.RunLock(out / "runs").acquire()
    except UsageError:
        raise UsageError(f"another gptlab compare is running in {out} (it holds {out / 'runs' / '.lock'}); wait for "
                         f"it, or use another --out (gptlab compare --out={out} --report-only reports its runs "
                         "so far)") from None


def summary_lines(results: dict[str, list[dict[str, Any]]], seeds: int, meta: dict[str, Any]) -> list[str]:
    """The comparison's last lines in the log: each variant's final val loss over its completed seeds."""
    n = meta["trainer"]["eval_iters"]
    lines = [f"[compare] final val loss ({n}-batch estimate), mean ± std over the seeds completed:"]
    base = statistics.fmean(r["final_val_loss"] for r in results["baseline"]) if "baseline" in results else None
    for name, runs in results.items():
        m, sd = _mean_std([r["final_val_loss"] for r in runs])
        delta = "" if base is None or name == "baseline" else f"  Δ {m - base:+.4f} vs baseline"
        seeds_done = f"{len(runs)} of {seeds} seeds"
        lines.append(f"[compare]   {LABELS.get(name, name):<18} {m:.4f} ± {sd:.4f} ({seeds_done}){delta}")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`gptlab compare`; returns the exit code."""
    from . import checkpoint as ckpt
    from .data import default_data_path, prepare_dataset
    from .options import UsageError, model_config_from_dict
    from .train import default_cache_dir, parse_train_args

    argv = sys.argv[1:] if argv is None else list(argv)
    if "-h" in argv or "--help" in argv:
        print(COMPARE_USAGE)
        return 0
    opts, extra = _parse_args(argv)
    saved = read_settings(Path(opts["out"] or f"reports/{opts['preset']}"))
    if opts["report_only"] == "True":
        # The report of a comparison describes its runs: its settings come from the command that trained them.
        own = [a for a in argv if a.partition("=")[0] not in ("--out", "--preset", "--note", "--report-only",
                                                                "--report_only")]
        out_dir = opts["out"]
        if "argv" in saved:
            if own:
                raise UsageError(f"--report-only takes the comparison's settings from its runs; drop {own[0]} "
                                 "(only --out, --preset and --note go with it)")
            opts, extra = _parse_args([*saved["argv"], *(a for a in argv if a.startswith("--note=")),
                                       "--report-only"])
            opts["out"], argv = out_dir, saved["argv"]
        elif not own and (Path(out_dir or f"reports/{opts['preset']}") / "runs").is_dir():
            # Runs of an older gptlab, which did not record their settings.
            raise UsageError(f"{out_dir or 'reports/' + opts['preset']}/runs has no settings.json to say how its "
                             "runs were trained: give --report-only the flags of the gptlab compare command that "
                             "trained them")
    if opts["preset"] not in PRESETS:
        raise UsageError(f"--preset: choose from {', '.join(PRESETS)}, got {opts['preset']!r}")
    preset = json.loads(json.dumps(PRESETS[opts["preset"]]))
    for a in list(extra):  # trainer/model overrides change the shared settings (and the report says so)
        key, _, value = a.removeprefix("--").partition("=")
        section, _, field = key.partition(".")
        if section in ("trainer", "model"):
            preset[section][field] = _scalar(value)
            extra.remove(a)
    try:
        device = run_device(preset)  # the runs train there, and are measured there
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        seeds = int(opts["seeds"])
        assert seeds >= 1
    except (ValueError, AssertionError):
        raise UsageError(f"--seeds expects an integer >= 1, got {opts['seeds']!r}") from None
    out = Path(opts["out"] or f"reports/{opts['preset']}")
    base_config = model_config_from_dict(preset["model"], vocab_size=65)
    # A report reads the grid its runs were trained with (the YAML file may have changed since).
    grid = saved["grid"] if opts["report_only"] == "True" and "grid" in saved else parse_grid(opts["grid"], base_config)
    parse_train_args(_train_flags(preset, {}, 0, out / "runs" / "check", extra))  # a bad flag fails now, not later
    if opts["report_only"] == "True" and not (out / "runs").is_dir():
        raise UsageError(f"--report-only: no complete runs in {out / 'runs'}")
    if opts["report_only"] != "True":
        planned = {f"{n}-s{seed}": _train_flags(preset, c, seed, Path(), extra) for seed in range(seeds)
                   for n, c in grid.items()}
        if opts["uptrain"].lower() in ("true", "1", "yes") and "baseline" in grid:
            planned["uptrain"] = _train_flags(preset, {}, 0, Path(), extra)
        check_run_flags(out, planned)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runs").mkdir(exist_ok=True)
    (out / ".gitignore").write_text("runs/\n")  # checkpoints stay out of git
    # A comparison holds OUT/runs/.lock while it runs, so --report-only knows whether runs are training now.
    live = opts["report_only"] == "True" and ckpt.lock_held(out / "runs")
    lock = None if opts["report_only"] == "True" else _compare_lock(out)
    try:
        if opts["report_only"] != "True":
            _write_settings(out, {**read_settings(out), "argv": argv, "grid": grid})

        # Measured on the data the runs train on: the same --data.* flags the trainer gets.
        data_flags = {a.partition("=")[0].removeprefix("--data."): a.partition("=")[2] for a in extra
                      if a.startswith("--data.")}
        data_path, tok_name = data_flags.get("path"), data_flags.get("tokenizer", "char")
        cache = Path(data_flags["cache_dir"]) if data_flags.get("cache_dir") else default_cache_dir()
        data = prepare_dataset(Path(data_path) if data_path else default_data_path(cache), tok_name, cache,
                               base_config.block_size)

        def say(msg: str) -> None:
            print(msg, flush=True)

        if "baseline" not in grid:
            say("[compare] note: the grid has no 'baseline' variant, so the report compares nothing against it "
                "(add `baseline: {}` to a YAML grid) and skips the uptraining experiment")
        wall_path = out / "runs" / "wall_s.json"
        clock = [time.perf_counter()]

        def add_wall() -> None:  # the comparison's wall time sums every command that trained (interrupted ones too)
            prev = json.loads(wall_path.read_text())["s"] if wall_path.is_file() else 0.0
            now = time.perf_counter()
            wall_path.write_text(json.dumps({"s": prev + now - clock[0]}))
            clock[0] = now

        results: dict[str, list[dict[str, Any]]] = {}
        uptrain = None
        if opts["report_only"] == "True":  # whatever is complete now, training nothing (a comparison in progress)
            for name in grid:
                done = [out / "runs" / f"{name}-s{s}" / "result.json" for s in range(seeds)]
                runs = [json.loads(p.read_text()) for p in done if p.is_file()]
                if runs:
                    results[name] = runs
            if (out / "runs" / "uptrain.json").is_file():
                uptrain = json.loads((out / "runs" / "uptrain.json").read_text())
            if not results:
                raise UsageError(f"--report-only: no complete runs in {out / 'runs'}")
            missing = [f"{n} ({seeds - len(results.get(n, []))} of {seeds} seeds)" for n in grid
                       if len(results.get(n, [])) < seeds]
            if missing:
                opts["note"] = "; ".join(filter(None, [opts["note"], "INCOMPLETE comparison, missing runs: "
                                                       + ", ".join(missing)]))
        else:
            # Seed 0 of every variant first, then the uptraining experiment, then the other seeds: a comparison
            # stopped early (--report-only) still covers every variant.
            try:
                for seed in range(seeds):
                    for name, changes in grid.items():
                        result = run_variant(out, name, changes, seed, preset, data, extra, device, say)
                        results.setdefault(name, []).append(result)
                        add_wall()
                    if seed == 0 and opts["uptrain"].lower() in ("true", "1", "yes") and "baseline" in grid:
                        uptrain = uptrain_experiment(out, preset, data, extra, say)
            finally:
                add_wall()
        wall = json.loads(wall_path.read_text())["s"] if wall_path.is_file() else 0.0
        meta = {
            "preset": opts["preset"], "seeds": seeds, "grid": grid, "model": preset["model"],
            "trainer": preset["trainer"], "data": f"{data_path or 'Shakespeare'} ({tok_name})",
            "eval_batches": preset["eval_batches"],
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device_name(device),
            "note": opts["note"] or "timings on this machine as it was loaded at the time", "wall_min": wall / 60,
            "command": "gptlab compare " + " ".join(a for a in argv if not a.startswith(("--note", "--report-only"))),
        }
        # Speeds are measured once all runs are done; a report of the same runs shows those numbers again.
        speeds_path = out / "runs" / "speeds.json"
        saved_speeds = opts["report_only"] == "True" and speeds_path.is_file()
        speeds = json.loads(speeds_path.read_text()) if saved_speeds else None
        if not speeds or set(speeds.get("variants", {})) != set(results):
            if live:  # timing now would slow the runs, and their load would skew the times
                speeds = None
                meta["note"] += "; written while runs trained: tokens/s are each run's own log, not timed side by side"
                say(f"[compare] runs are training in {out / 'runs'}: the variants are not timed side by side now "
                    "(tokens/s: each run's own log); rerun --report-only when the comparison is done")
            else:
                speeds = measure_speeds(out, {n: grid[n] for n in results}, preset, device, say=say)
            if opts["report_only"] != "True" and speeds:
                speeds_path.write_text(json.dumps(speeds, indent=1) + "\n")
        path = write_report(out, results, uptrain, meta, speeds)
        for line in summary_lines(results, seeds, meta):
            say(line)
        say(f"[compare] report: {path}")
        return 0
    finally:
        if lock is not None:
            lock.release()
