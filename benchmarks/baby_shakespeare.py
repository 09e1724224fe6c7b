"""nanoGPT's CPU "baby" Shakespeare run, with gptlab: final val loss, iterations, tokens/s.

nanoGPT's README trains this on tinyshakespeare on a CPU and reports val loss ~1.88 after 2000 iterations:

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 \
        --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 \
        --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

gptlab's `--preset=baby` is the same run: 4 layers, 4 heads, 128 dims, block 64, batch 12, 2000 iterations,
AdamW (beta2 0.99, weight decay 0.1, clip 1.0), lr 1e-3 with 100 warmup steps and cosine decay to 1e-4,
dropout 0, no biases, char tokenizer, first 90% train / last 10% val. --arch picks the architecture at that
size and budget:

    gpt2     nanoGPT's model exactly: learned positions, LayerNorm, GELU MLP
    rope     the same with rotary position embeddings (--model.rope=True)   [default]
    modern   RoPE + RMSNorm + SwiGLU (the Llama switches)

Usage (from the repository root; any `gptlab train` flag can be added):

    .venv/bin/python benchmarks/baby_shakespeare.py ../shared/data/tinyshakespeare.txt
    .venv/bin/python benchmarks/baby_shakespeare.py ../shared/data/tinyshakespeare.txt --arch=gpt2
    .venv/bin/python benchmarks/baby_shakespeare.py FILE --trainer.warmup_iters=0

It prints the val loss two ways: nanoGPT's estimate at the last iteration (20 random val batches of
12 x 64 tokens, a noisy number), and the loss over the whole val split (every token once, in windows of
64), which is the number to compare. Not a test: it takes minutes on a CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from gptlab import train as T
from gptlab.cli import evaluate_tokens
from gptlab.data import prepare_dataset
from gptlab.model import GPT

ROOT = Path(__file__).resolve().parents[1]
ARCHS = {
    "gpt2": [],
    "rope": ["--model.pos_emb=rope"],
    "modern": ["--model.pos_emb=rope", "--model.norm=rmsnorm", "--model.mlp=swiglu"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("text", help="a UTF-8 text file, e.g. ../shared/data/tinyshakespeare.txt")
    parser.add_argument("--arch", choices=ARCHS, default="rope")
    parser.add_argument("--work_dir", default=None, help="default: benchmarks/_scratch/baby-ARCH")
    args, train_flags = parser.parse_known_args()
    args.work_dir = args.work_dir or str(ROOT / "benchmarks" / "_scratch" / f"baby-{args.arch}")

    flags = [
        "--preset=baby", f"--data.path={args.text}", "--data.tokenizer=char", f"--system.work_dir={args.work_dir}",
        "--system.overwrite=True", "--trainer.device=cpu", "--trainer.sample_tokens=0",
        f"--data.cache_dir={ROOT / 'benchmarks' / '_scratch' / 'cache'}", *ARCHS[args.arch], *train_flags,
    ]
    cfg = T.parse_train_args(flags)
    start = time.perf_counter()
    code = T.train(cfg)
    wall = time.perf_counter() - start
    if code != 0:
        return code

    rows = T.read_metrics(args.work_dir)
    steps = [r for r in rows if "tokens_per_s" in r]
    last_eval = [r for r in rows if "val_loss" in r][-1]
    # Training throughput: tokens over the time spent in steps (the log rows measure between logs, evals excluded).
    tokens_per_s = float(np.mean([r["tokens_per_s"] for r in steps]))
    model = GPT.from_pretrained(Path(args.work_dir) / "last")
    data = prepare_dataset(args.text, "char", ROOT / "benchmarks" / "_scratch" / "cache", model.config.block_size)
    nats, n = evaluate_tokens(model, np.asarray(data.val, dtype=np.int64), batch_size=64)
    result = {
        "text": str(args.text),
        "arch": args.arch,
        "model": {k: v for k, v in model.config.to_dict().items() if k in ("pos_emb", "norm", "mlp", "bias")},
        "parameters": model.num_params(),
        "iterations": last_eval["iter"],
        "val_loss_full_split": round(nats / n, 4),
        "val_loss_20_batches": round(last_eval["val_loss"], 4),
        "train_loss_20_batches": round(last_eval["train_loss"], 4),
        "val_tokens": n,
        "tokens_per_s": round(tokens_per_s),
        "wall_s": round(wall, 1),
        "nanogpt_reference_val_loss": 1.88,
    }
    print(json.dumps(result, indent=1))
    print(
        f"{args.arch}: val loss {result['val_loss_full_split']:.4f} (whole val split; nanoGPT reports ~1.88), "
        f"{result['val_loss_20_batches']:.4f} (nanoGPT's 20-batch estimate), {result['iterations']} iterations, "
        f"{result['tokens_per_s']:,} tokens/s training, {wall / 60:.1f} min wall",
        file=sys.stderr,
    )
    return 0 if math.isfinite(result["val_loss_full_split"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
