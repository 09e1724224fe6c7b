"""HellaSwag, the number reported for GPT-2-sized models: pick the right ending of a sentence out of four.

    gptlab eval RUN --hellaswag=hellaswag_val.jsonl        # acc and acc_norm over the file
    gptlab train ... --trainer.hellaswag=hellaswag_val.jsonl  # also at every eval, into metrics.jsonl

The file is the official `hellaswag_val.jsonl` (one JSON object a line: ctx, endings (4), label, and ind,
activity_label, split... which are not needed). Scored as llm.c's dev/data/hellaswag.py and build-nanogpt's
hellaswag.py score it ("completion style"): each ending's tokens are those of " " + ending after the context's,
and the model's cross-entropy is taken over the ending's tokens only. acc picks the ending of least summed loss,
acc_norm the ending of least mean loss (per token: long endings are not penalized for their length). Their
figure for OpenAI's GPT-2 124M over the 10,042 examples: acc 0.2859, acc_norm 0.2955.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import distributed
from .data import DataError


@dataclass
class Example:
    """One HellaSwag item as tokens: the context, the four endings (each with its leading space), the answer."""

    context: list[int]
    endings: list[list[int]]
    label: int


def read_hellaswag(path: str | Path) -> list[dict[str, Any]]:
    """The items of a HellaSwag .jsonl file, checked: DataError naming the line of a malformed one."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"HellaSwag file not found: {path}; pass the official hellaswag_val.jsonl") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a HellaSwag .jsonl file ({type(e).__name__}); pass hellaswag_val.jsonl"
                        ) from None
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {n} is not JSON ({e.msg}); one HellaSwag item a line expected") from None
        ok = (isinstance(item, dict) and isinstance(item.get("ctx"), str) and isinstance(item.get("endings"), list)
              and len(item["endings"]) == 4 and all(isinstance(e, str) for e in item["endings"])
              and isinstance(item.get("label"), int) and 0 <= item["label"] < 4)
        if not ok:
            raise DataError(f"{path} line {n} is not a HellaSwag item: it needs 'ctx' (a string), 'endings' (4 "
                            "strings) and 'label' (0-3)")
        items.append(item)
    if not items:
        raise DataError(f"{path} holds no HellaSwag items")
    return items


def tokenize(items: list[dict[str, Any]], tokenizer: Any) -> list[Example]:
    """The items as tokens (" " + ending: GPT-2's tokens for a word after a space include the space)."""
    try:
        return [Example(tokenizer.encode(item["ctx"]), [tokenizer.encode(" " + e) for e in item["endings"]],
                        item["label"]) for item in items]
    except ValueError as e:  # a char model: letters it never saw
        raise DataError(f"HellaSwag needs a tokenizer for English text (GPT-2's): {e}") from None


def load(path: str | Path, tokenizer: Any) -> list[Example]:
    """read_hellaswag + tokenize."""
    return tokenize(read_hellaswag(path), tokenizer)


@torch.no_grad()
def ending_losses(model: Any, examples: list[Example], batch_examples: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed loss, number of tokens) of each ending, both (len(examples), 4): the cross-entropy of its tokens
    given the context and the ending's earlier tokens, several examples (4 rows each) per forward pass. Rows are
    right-padded (a causal model's earlier positions never see the padding); a row longer than the model's
    block_size keeps its last block_size tokens (contexts are cut from the left, as a sliding window would)."""
    device = next(model.parameters()).device
    block = model.config.block_size
    sums, counts = torch.zeros(len(examples), 4, dtype=torch.float64), torch.zeros(len(examples), 4, dtype=torch.long)
    for first in range(0, len(examples), batch_examples):
        group = examples[first : first + batch_examples]
        rows = [(ex.context + end)[-block:] for ex in group for end in ex.endings]
        n_end = [min(len(end), block) for ex in group for end in ex.endings]
        width = max(map(len, rows))
        tokens = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)  # the ending's tokens
        for i, (row, n) in enumerate(zip(rows, n_end, strict=True)):
            tokens[i, : len(row)] = torch.tensor(row)
            mask[i, len(row) - n : len(row)] = True
        logits, _ = model(tokens.to(device))
        # Position p predicts token p + 1: the loss of token p + 1 is scored where that token is in the ending.
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten().to(device),
                               reduction="none").view(len(rows), width - 1).cpu().double()
        scored = mask[:, 1:]
        sums[first : first + len(group)] = (loss * scored).sum(1).view(len(group), 4)
        counts[first : first + len(group)] = scored.sum(1).view(len(group), 4)
    return sums, counts


def score(sums: torch.Tensor, counts: torch.Tensor, labels: list[int]) -> tuple[int, int]:
    """(examples where the least summed loss is the label's: acc, ... the least mean loss: acc_norm)."""
    label = torch.tensor(labels, dtype=torch.long)
    correct = int((sums.argmin(1) == label).sum())
    correct_norm = int(((sums / counts.clamp(min=1)).argmin(1) == label).sum())
    return correct, correct_norm


def evaluate(model: Any, examples: list[Example], rank: int = 0, world_size: int = 1) -> dict[str, float | int]:
    """{"acc", "acc_norm", "n"} over `examples`. Each of `world_size` processes scores every world_size-th example
    and the counts are summed over them (pass world_size 1 where every process must run the same forwards: FSDP)."""
    was_training = model.training
    model.eval()
    mine = examples[rank::world_size]
    correct, correct_norm = score(*ending_losses(model, mine), [ex.label for ex in mine]) if mine else (0, 0)
    model.train(was_training)
    if world_size > 1:
        counts = distributed.gather_objects((correct, correct_norm))
        correct, correct_norm = sum(c for c, _ in counts), sum(c for _, c in counts)
    n = len(examples)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n}
