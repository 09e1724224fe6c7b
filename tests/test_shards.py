"""Training data from token shards (gptlab.shards): several shards read as one sequence per split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptlab.data import DataError
from gptlab.shards import ShardedTokens, shard_dataset, split_shards, write_shard


def _shards(tmp_path, sizes, prefix="fineweb_train", vocab=50257, seed=0):
    rng = np.random.default_rng(seed)
    tokens = [rng.integers(0, vocab, n).astype(np.uint16) for n in sizes]
    paths = [write_shard(tmp_path / f"{prefix}_{i:06d}.bin", t, vocab) for i, t in enumerate(tokens)]
    return paths, np.concatenate(tokens)


def test_windows_across_shard_boundaries_equal_the_concatenation(tmp_path):
    paths, whole = _shards(tmp_path, [7, 1, 0, 30, 12])
    tokens = ShardedTokens(paths)
    assert len(tokens) == len(whole) == 50
    idx = np.arange(len(whole) - 9)[:, None] + np.arange(10)  # every window of 10, many crossing shards
    assert np.array_equal(tokens[idx], whole[idx])
    assert np.array_equal(tokens[3:45:4], whole[3:45:4])
    assert np.array_equal(np.asarray(tokens), whole)


def test_batches_from_shards_equal_batches_from_the_same_tokens(tmp_path):
    from gptlab.data import TokenData

    _, train = _shards(tmp_path, [40, 25, 60])
    _, val = _shards(tmp_path, [33], prefix="fineweb_val", seed=1)
    data = shard_dataset(tmp_path)
    ref = TokenData(train=train, val=val, tokenizer=data.tokenizer, path=tmp_path)
    for split in ("train", "val"):
        a = data.get_batch(split, 6, 16, torch.Generator().manual_seed(3))
        b = ref.get_batch(split, 6, 16, torch.Generator().manual_seed(3))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert data.tokenizer.name == "gpt2" and data.path == tmp_path


def test_splits_by_name_from_a_folder_or_a_glob(tmp_path):
    _shards(tmp_path, [5, 5])
    _shards(tmp_path, [5], prefix="fineweb_val")
    (tmp_path / "manifest.json").write_text("{}")
    by_folder = split_shards(tmp_path)
    by_glob = split_shards(str(tmp_path / "fineweb_*.bin"))
    assert by_folder == by_glob
    assert [p.name for p in by_folder["train"]] == ["fineweb_train_000000.bin", "fineweb_train_000001.bin"]
    assert [p.name for p in by_folder["val"]] == ["fineweb_val_000000.bin"]


@pytest.mark.parametrize("case", ["empty", "no val", "uint32", "past vocab"])
def test_bad_shard_sets_are_one_line_errors(tmp_path, case):
    if case == "no val":
        _shards(tmp_path, [5])
    elif case == "uint32":
        _shards(tmp_path, [5], vocab=100_000)
        _shards(tmp_path, [5], prefix="x_val", vocab=100_000)
    elif case == "past vocab":
        _shards(tmp_path, [5], vocab=60_000)
        write_shard(tmp_path / "x_val_0.bin", np.array([1, 2, 59_000], dtype=np.uint16), 60_000)
    message = {"empty": "no .bin shards there", "no val": "no val shard among 1 files", "uint32": "uint32 tokens",
               "past vocab": "holds token id 59000, past GPT-2's vocabulary"}[case]
    with pytest.raises(DataError, match=message):
        shard_dataset(tmp_path)
