"""--init: a training run that starts from a pretrained model (a gptlab run or checkpoint, a Hugging Face
directory or hub id, which checkpoint.load_model loads with its tokenizer): the config changes fine-tuning allows,
and cropping a learned position table to a smaller block_size (nanoGPT's crop_block_size)."""

from __future__ import annotations

from typing import Any

import torch

from .config import GPTConfig
from .options import UsageError


def finetune_config(base: GPTConfig, model_flags: dict[str, Any]) -> GPTConfig:
    """The pretrained config with the changes fine-tuning allows: dropout, and a smaller block_size."""
    changes = {k: v for k, v in model_flags.items() if k != "preset" and getattr(base, k, None) != v}
    bad = sorted(set(changes) - {"dropout", "block_size"})
    if bad:
        raise UsageError(
            f"--model.{bad[0]}={changes[bad[0]]} changes the architecture of the pretrained model "
            f"({bad[0]}={getattr(base, bad[0])}); fine-tuning can only change dropout and lower block_size"
        )
    if changes.get("block_size", base.block_size) > base.block_size and base.pos_emb == "learned":
        raise UsageError(
            f"--model.block_size={changes['block_size']} is past the pretrained model's {base.block_size} "
            "learned positions; use a smaller block_size"
        )
    return base.replace(**changes)


def crop_state(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Keep the first block_size rows of a learned position table (nanoGPT's crop_block_size)."""
    if "transformer.wpe.weight" in state:
        state = {**state, "transformer.wpe.weight": state["transformer.wpe.weight"][: config.block_size]}
    return state
