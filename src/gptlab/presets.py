"""Every preset, declared once. Each kind names the one below it instead of repeating its fields:

    MODEL_PRESETS     GPTConfig fields                 --model.preset=NAME, GPTConfig.from_preset(NAME)
    RUN_PRESETS       train settings, model by name    gptlab train --preset=NAME (and gptlab info --preset=NAME)
    COMPARE_PRESETS   a run preset by name, changed    gptlab compare --preset=NAME

`gptlab info --help`, `gptlab train --help` and `gptlab compare --help` list them from here, and `gptlab info
--preset=X` resolves X through `gptlab train`'s own parser, so the two cannot disagree. Plain data: this module
imports nothing from gptlab, so config.py can read its model presets from here.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["COMPARE_PRESETS", "MODEL_PRESETS", "RUN_PRESETS", "compare_preset"]

MODEL_PRESETS: dict[str, dict[str, Any]] = {
    # The original GPT-2 family (OpenAI, 2019).
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    # GPT-2 size, with the changes that Llama/Mistral-style models made.
    "gpt2-modern": dict(
        n_layer=12, n_head=12, n_embd=768, n_kv_head=4, pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False
    ),
    # Small models for CPU work. vocab_size is set by the tokenizer when training.
    "char-small": dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    "baby": dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128),
    "tiny": dict(vocab_size=65, block_size=64, n_layer=2, n_head=4, n_embd=64),
    # minGPT's model_type names (mingpt/model.py), so `--model.model_type=gpt-mini` works verbatim.
    "openai-gpt": dict(n_layer=12, n_head=12, n_embd=768),
    "gopher-44m": dict(n_layer=8, n_head=16, n_embd=512),
    "gpt-mini": dict(n_layer=6, n_head=6, n_embd=192),
    "gpt-micro": dict(n_layer=4, n_head=4, n_embd=128),
    "gpt-nano": dict(n_layer=3, n_head=3, n_embd=48),
}

# Run presets: `gptlab train` flags (dotted keys) applied on top of the defaults, under a config file and the
# command line. `model.preset` names the model; the other model.* keys change it.
RUN_PRESETS: dict[str, dict[str, Any]] = {
    # The defaults: `make demo`.
    "demo": {},
    # nanoGPT's CPU "baby" Shakespeare config, its exact GPT-2 model (bias-free, as nanoGPT's default).
    # nanoGPT's README: val loss ~1.88 after 2000 iterations; gptlab: 1.90 (see benchmarks/baby_shakespeare.py).
    # nanoGPT's lr_decay_iters=2000 is its max_iters, so it is left unset: the decay then follows
    # --trainer.max_iters (a 400-step run decays over 400 steps, not over the first 400 of 2000).
    "baby": {
        "model.preset": "baby", "model.block_size": 64, "model.dropout": 0.0, "model.bias": False,
        "trainer.batch_size": 12, "trainer.max_iters": 2000,
        "trainer.learning_rate": 1e-3, "trainer.min_lr": 1e-4, "trainer.warmup_iters": 100,
        "trainer.eval_iters": 20, "trainer.log_interval": 10,
    },
    # nanoGPT's train_shakespeare_char.py: 6 layers x 384, block 256, dropout 0.2 (a GPU run, ~val 1.47).
    "shakespeare-char": {
        "model.preset": "char-small", "model.bias": False, "trainer.batch_size": 64, "trainer.max_iters": 5000,
        "trainer.learning_rate": 1e-3, "trainer.min_lr": 1e-4, "trainer.eval_iters": 200,
    },
    # llm.c's and build-nanogpt's GPT-2 (124M) on 10B tokens of FineWeb (README "Reproducing GPT-2 124M"): 512 x 1024
    # = 524,288 tokens a step, 64 rows a forward on each GPU (accumulation fills the rest: 8 micro-steps on 1 GPU,
    # 1 on 8), AdamW 6e-4 (betas 0.9, 0.95), 700 warmup steps, cosine to 10%, decay 0.1, clip 1.0, bf16, compiled.
    "gpt2-124m": {
        "model.preset": "gpt2", "model.dropout": 0.0, "data.tokenizer": "gpt2", "data.order": "sequential",
        "trainer.batch_size": 512, "trainer.micro_batch_size": 64, "trainer.max_tokens": 10_000_000_000,
        "trainer.learning_rate": 6e-4, "trainer.min_lr": 6e-5, "trainer.warmup_iters": 700,
        "trainer.weight_decay": 0.1, "trainer.beta1": 0.9, "trainer.beta2": 0.95, "trainer.grad_clip": 1.0,
        "trainer.dtype": "auto", "trainer.compile": True, "trainer.eval_interval": 250, "trainer.eval_iters": 20,
        "trainer.log_interval": 10,
    },
    # Seconds on a CPU: smoke tests.
    "tiny": {
        "model.preset": "tiny", "model.block_size": 32, "trainer.batch_size": 8, "trainer.max_iters": 50,
        "trainer.warmup_iters": 5, "trainer.eval_interval": 25, "trainer.eval_iters": 2, "trainer.log_interval": 5,
        "trainer.sample_tokens": 20,
    },
}

# Compare presets: a run preset's model and training, changed, shared by every run of a comparison; the
# comparison's own measurements (eval_batches per split, decode_tokens timed) besides. Dropout is 0 in all of
# them: the variants are compared on their architecture alone.
COMPARE_PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: tests.
    "micro": {
        "run": "tiny", "model": {"bias": False, "dropout": 0.0},
        "trainer": {"max_iters": 8, "batch_size": 4, "warmup_iters": 2, "eval_interval": 4, "eval_iters": 1,
                    "log_interval": 2, "learning_rate": 1e-3},
        "eval_batches": 1, "decode_tokens": 8,
    },
    # nanoGPT's CPU "baby" model (4 layers, 4 heads, 128 dims, block 64, batch 12) for 1200 of its 2000 steps:
    # 8 variants x 2 seeds + the uptraining runs in about 25 minutes on 2 quiet CPU cores.
    "cpu": {
        "run": "baby", "model": {},
        "trainer": {"max_iters": 1200, "eval_interval": 100, "eval_iters": 10, "log_interval": 20},
        "eval_batches": 20, "decode_tokens": 128,
    },
    # A GPU: nanoGPT's shakespeare-char size.
    "gpu": {
        "run": "shakespeare-char", "model": {"block_size": 256, "dropout": 0.0},
        "trainer": {"max_iters": 2000, "warmup_iters": 100, "eval_interval": 250, "eval_iters": 50,
                    "log_interval": 25},
        "eval_batches": 50, "decode_tokens": 256,
    },
}

# Settings of a run preset a comparison does not take: every run of a comparison prints no samples (its log is
# one line per run), so compare sets trainer.sample_tokens=0 itself.
_NOT_SHARED = ("trainer.sample_tokens",)


def compare_preset(name: str) -> dict[str, Any]:
    """The compare preset `name` resolved: {"model": {...}, "trainer": {...}, "eval_batches", "decode_tokens"},
    its run preset's model.* and trainer.* settings with the preset's changes. KeyError for an unknown name."""
    preset = copy.deepcopy(COMPARE_PRESETS[name])
    shared: dict[str, dict[str, Any]] = {"model": {}, "trainer": {}}
    for key, value in RUN_PRESETS[preset.pop("run")].items():
        section, _, field = key.partition(".")
        if section in shared and key not in _NOT_SHARED:
            shared[section][field] = value
    return {section: {**fields, **preset.pop(section)} for section, fields in shared.items()} | preset
