"""Training data from token shards (gptlab.shards): several shards read as one sequence per split."""

from __future__ import annotations

import json

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


def test_val_is_a_word_in_the_name_not_any_val_in_it(tmp_path):
    for name in ("interval_000000.bin", "eval_train_000001.bin", "fineweb_val_000000.bin", "val_000000.bin",
                 "tinyshakespeare_val.bin"):
        write_shard(tmp_path / name, np.arange(5, dtype=np.uint16), 50257)
    splits = split_shards(tmp_path)
    assert [p.name for p in splits["train"]] == ["eval_train_000001.bin", "interval_000000.bin"]
    assert [p.name for p in splits["val"]] == ["fineweb_val_000000.bin", "tinyshakespeare_val.bin", "val_000000.bin"]


def test_shards_of_two_token_widths_are_refused(tmp_path):
    write_shard(tmp_path / "a_train_0.bin", np.arange(5, dtype=np.uint16), 50257)
    write_shard(tmp_path / "a_train_1.bin", np.arange(5, dtype=np.uint32), 100_000)
    with pytest.raises(DataError, match="the shards mix token widths"):
        ShardedTokens(sorted(tmp_path.glob("*.bin")))


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


def test_training_on_prepared_shards_resumes_bit_exact_and_evals_on_their_val(tmp_path, capsys):
    from gptlab import train as T
    from gptlab.cli import main
    from gptlab.data import shakespeare_text
    from gptlab.prepare import PrepareConfig, prepare

    (tmp_path / "corpus.txt").write_text(shakespeare_text()[:60_000], encoding="utf-8")
    prepare(str(tmp_path / "corpus.txt"), tmp_path / "shards",
            PrepareConfig(shard_tokens=4_000, workers=1, progress=False))
    assert len(split_shards(tmp_path / "shards")["train"]) >= 2  # batches cross shard files

    def run(name: str, iters: int, resume: bool = False) -> list[str]:
        return ["--preset=tiny", f"--data.shards={tmp_path / 'shards'}", f"--system.work_dir={tmp_path / name}",
                "--trainer.device=cpu", "--trainer.sample_tokens=0", f"--trainer.max_iters={iters}",
                "--trainer.lr_decay_iters=8", "--trainer.log_interval=1", "--trainer.eval_interval=4",
                f"--trainer.resume={resume}"]

    assert T.main(run("straight", 8)) == 0
    assert T.main(run("resumed", 4)) == 0
    assert T.main(run("resumed", 8, resume=True)) == 0
    losses = {n: [(r["iter"], r["loss"]) for r in T.read_metrics(tmp_path / n) if "loss" in r]
              for n in ("straight", "resumed")}
    assert losses["resumed"] == losses["straight"] and len(losses["straight"]) == 8
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "straight"), "--json"]) == 0  # on the shards' val split, not Shakespeare
    result = json.loads(capsys.readouterr().out)
    val = shard_dataset(tmp_path / "shards").val
    assert result["text"] == f"{tmp_path / 'shards'} (validation split)" and result["tokens"] == len(val) - 1


def test_shards_with_a_text_path_or_the_char_tokenizer_are_refused(tmp_path, capsys):
    from gptlab.cli import main

    for extra in ("--data.path=x.txt", "--data.tokenizer=char"):
        assert main(["train", f"--data.shards={tmp_path}", extra, f"--system.work_dir={tmp_path / 'r'}"]) == 2
        assert f"--data.shards holds GPT-2 tokens already: drop {extra.split('=')[0] if 'path' in extra else extra}" \
            in capsys.readouterr().err
