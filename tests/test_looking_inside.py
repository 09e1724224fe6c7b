"""Looking inside a model: gptlab eval --by-position (loss by position in the context) and gptlab attention
(attention maps per layer and head)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gptlab import cli
from gptlab import train as T
from gptlab.attention import window_mask
from gptlab.attention_maps import attention_maps
from gptlab.config import GPTConfig
from gptlab.data import shakespeare_text
from gptlab.model import GPT


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny runs (block_size 32): learned positions, and RoPE with a window of 8 and 2 K/V heads."""
    root = tmp_path_factory.mktemp("inside")
    text = root / "input.txt"
    text.write_text(shakespeare_text()[:20_000], encoding="utf-8")
    argv = ["--preset=tiny", f"--data.path={text}", f"--data.cache_dir={root / 'cache'}", "--trainer.device=cpu",
            "--trainer.max_iters=6", "--trainer.eval_interval=6", "--trainer.sample_tokens=0", "--trainer.quiet=True"]
    assert T.main([*argv, f"--system.work_dir={root / 'learned'}"]) == 0
    assert T.main([*argv, f"--system.work_dir={root / 'swa'}", "--model.rope=True", "--model.window=8",
                   "--model.n_kv_head=2"]) == 0
    return root


# --------------------------------------------------------------------------------------------------------
# gptlab eval --by-position
# --------------------------------------------------------------------------------------------------------


def _naive_position_losses(model: GPT, ids: torch.Tensor, T: int) -> tuple[list[float], list[int]]:
    """Window by window, one forward each: the per-position sums and counts, the slow obvious way."""
    sums, counts = [0.0] * T, [0] * T
    with torch.no_grad():
        for s in range(0, len(ids) - 1, T):
            x, y = ids[s : s + T], ids[s + 1 : s + T + 1]
            x = x[: len(y)]
            losses = F.cross_entropy(model(x[None])[0][0], y, reduction="none")
            for p, loss in enumerate(losses.tolist()):
                sums[p] += loss
                counts[p] += 1
    return sums, counts


@pytest.mark.parametrize("context", [None, 20])
def test_position_losses_match_one_window_at_a_time(context: int | None) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, pos_emb="rope")).eval()
    ids = torch.randint(0, 50, (16 * 7 + 5,))  # 7 whole windows of 16 and a tail (or 5 windows of 20 and 17)
    T = context or 16
    sums, counts = cli.position_losses(model, ids, batch_size=3, context=context)  # batches that split windows
    want_sums, want_counts = _naive_position_losses(model, ids, T)
    assert counts.tolist() == want_counts and sum(want_counts) == len(ids) - 1
    assert sums.tolist() == pytest.approx(want_sums, rel=1e-5)
    total, n = cli.evaluate_tokens(model, ids, 3, context)
    assert n == len(ids) - 1 and total == pytest.approx(sum(want_sums), rel=1e-6)


def test_eval_by_position_json_text_and_plot(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["eval", str(root / "learned"), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    png = tmp_path / "pos.png"
    assert cli.main(["eval", str(root / "learned"), "--by-position", "--json", f"--plot={png}"]) == 0
    result = json.loads(capsys.readouterr().out)
    by_pos = result["by_position"]
    assert len(by_pos["loss"]) == len(by_pos["windows"]) == 32 == result["context"]
    # 1999 predicted tokens: 62 windows of 32 and a tail of 15, so positions 0..14 have one window more.
    assert by_pos["windows"] == [63] * 15 + [62] * 17
    weighted = sum(x * k for x, k in zip(by_pos["loss"], by_pos["windows"], strict=True)) / result["tokens"]
    assert weighted == pytest.approx(result["loss"], rel=1e-9) and result["loss"] == pytest.approx(plain["loss"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert cli.main(["eval", str(root / "learned"), "--by-position"]) == 0
    out = capsys.readouterr().out
    assert "loss by position in the context (mean over 63 windows of 32 tokens" in out
    table = out.split("positions  loss\n")[1].splitlines()
    first = (by_pos["loss"][0] + by_pos["loss"][1]) / 2  # positions 0 and 1: both over 63 windows
    assert len(table) == 16 and table[0].split() == ["0-1", f"{first:.4f}"]


def test_eval_context_past_training_only_for_rope(root: Path, capsys: pytest.CaptureFixture) -> None:
    # RoPE with a window: every position past the window sees as many keys as in training (length extrapolation).
    assert cli.main(["eval", str(root / "swa"), "--by-position", "--context=64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["context"] == 64 and len(result["by_position"]["loss"]) == 64
    assert all(math.isfinite(x) for x in result["by_position"]["loss"])
    assert cli.main(["eval", str(root / "learned"), "--context=64"]) == 2
    assert "past block_size=32" in capsys.readouterr().err


def test_positions_no_window_reaches_are_null(root: Path, capsys: pytest.CaptureFixture) -> None:
    # 10 tokens, a context of 32: positions 0..8 are measured once, 9..31 never (null, not a made-up number).
    assert cli.main(["eval", str(root / "learned"), "--by-position", "--max_tokens=10", "--json"]) == 0
    by_pos = json.loads(capsys.readouterr().out)["by_position"]
    assert by_pos["windows"] == [1] * 9 + [0] * 23
    assert all(x is not None for x in by_pos["loss"][:9]) and by_pos["loss"][9:] == [None] * 23
    assert cli.main(["eval", str(root / "learned"), "--by-position", "--max_tokens=10"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("30-31  -")


@pytest.mark.parametrize("argv, message", [
    (["--plot=x.png"], "add --by-position"),
    (["--by-position", "--plot=x.txt"], "ending in .png"),
    (["--by-position", "--plot=/no/such/dir/x.png"], "does not exist"),
    (["--context=0"], "--context must be >= 1"),
])
def test_eval_by_position_errors(root: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert cli.main(["eval", str(root / "learned"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab: error: ") and message in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------------------
# gptlab attention
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [
    dict(),  # GPT-2: learned positions, full causal attention
    dict(pos_emb="rope", n_kv_head=2, window=3),  # RoPE, GQA, a window
    dict(pos_emb="rope", n_kv_head=1, norm="rmsnorm", mlp="swiglu", bias=False),  # MQA, Llama-style
    dict(pos_emb="rope", window=3, layer_pattern="LG"),  # local/global layers: a window on layer 0 only
    dict(pos_emb="rope", n_kv_head=2, kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6),  # MLA
])
def test_attention_maps_are_the_layers_own_attention(fields: dict) -> None:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=4, n_embd=32, **fields)
    model = GPT(config).eval()
    idx = torch.randint(0, 40, (2, 11))
    inputs, outputs = [], []

    def record(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        inputs.append(args[0])
        outputs.append(out)

    hooks = [block.attn.register_forward_hook(record) for block in model.transformer.h]
    maps = attention_maps(model, idx)
    for h in hooks:
        h.remove()
    T = idx.size(1)
    assert len(maps) == len(outputs) == config.n_layer
    for layer, (attn_map, block) in enumerate(zip(maps, model.transformer.h, strict=True)):
        visible = window_mask(T, T, config.layer_window(layer))
        assert attn_map.shape == (2, config.n_head, T, T)
        assert torch.allclose(attn_map.sum(-1), torch.ones(2, config.n_head, T))  # each row a distribution
        assert (attn_map[..., ~visible] == 0).all() and (attn_map[..., visible] > 0).all()  # the model's mask
        # maps x v, through the layer's output projection, is the layer's output: the maps are what it computed.
        attn, x = block.attn, inputs[layer]
        hd = config.head_dim
        if config.kv_lora_rank is None:
            v = attn.c_attn(x)[..., (config.n_head + config.n_kv_head) * hd :]
        else:  # MLA: the value rows of the latent's up-projection
            hd, latent = config.v_head_dim, attn.kv_a_norm(attn.kv_a_proj(x)[..., : config.kv_lora_rank])
            v = attn.kv_b_proj(latent).view(2, T, config.n_kv_head, -1)[..., config.qk_nope_head_dim :]
        group = config.n_head // config.n_kv_head
        v = v.reshape(2, T, config.n_kv_head, hd).transpose(1, 2).repeat_interleave(group, 1)
        y = (attn_map @ v).transpose(1, 2).reshape(2, T, config.n_head * hd)
        assert torch.allclose(attn.c_proj(y), outputs[layer], atol=1e-5)
    if config.window:  # layer 0 slides in each of these
        assert (maps[0][..., 5, :3] == 0).all() and (maps[0][..., 5, 3:6] > 0).all()  # query 5 sees 3, 4, 5 only


def test_attention_maps_differ_from_plain_causal_for_rope() -> None:
    # The maps must use RoPE: dropping the rotation changes them (a recomputation that forgot it would pass
    # the checks above only if the output check were missing).
    from gptlab.attention_maps import layer_attention

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16, pos_emb="rope")).eval()
    x = torch.randn(1, 9, 16)
    rope = model.rotary(torch.arange(9))
    assert not torch.allclose(layer_attention(model.transformer.h[0].attn, x, rope),
                              layer_attention(model.transformer.h[0].attn, x, None), atol=1e-3)


def test_attention_command_draws_every_layer_and_head(root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
                                                      ) -> None:
    import matplotlib.image

    out = tmp_path / "attn.png"
    assert cli.main(["attention", str(root / "swa"), "--prompt=ROMEO: But soft, what light", f"--out={out}"]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"wrote {out}: 2 layers x 4 heads, 27 tokens") and "window 8" in said
    img = matplotlib.image.imread(out)
    assert img.shape[0] > 300 and img.shape[1] > 600 and img[..., :3].std() > 0.05
    assert cli.main(["attention", str(root / "learned"), "--prompt=ROMEO:", "--layers=1", f"--out={out}"]) == 0
    assert "1 layers x 4 heads, 6 tokens (learned positions, causal)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    ([], "--prompt is required"),
    (["--prompt=" + "a" * 40], "give 1 to 32 (the limit is block_size=32"),
    (["--prompt=ROMEO", "--layers=2"], "the model has layers 0..1"),
    (["--prompt=ROMEO", "--layers=x"], "comma-separated layer numbers"),
    (["--prompt=ROMEO", "--out=attn.txt"], "ending in .png"),
    (["--prompt=Romeü"], "--prompt: character(s) 'ü' not in"),
])
def test_attention_command_errors(root: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str) -> None:
    assert cli.main(["attention", str(root / "learned"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab: error: ") and message in err and err.count("\n") == 1
