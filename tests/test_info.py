"""`gptlab info`: every analytic number checked against a real model, cache, optimizer or FLOP counter."""

from __future__ import annotations

import json
from unittest import mock

import pytest
import torch
from conftest import single_switches, switch_changes, with_switches
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gptlab import GPT, GPTConfig, autotune
from gptlab.attention import window_mask
from gptlab.autotune import PLAIN
from gptlab.generate import make_caches
from gptlab.info import format_compare, format_report, keys_per_query, main, model_stats

MLA = dict(kv_lora_rank=56, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=12)
DEEPSEEK_ROUTER = dict(n_expert=8, expert_top_k=3, moe_score="sigmoid", moe_groups=4, moe_topk_groups=2,
                       moe_choice_bias=True, moe_scale=2.5)
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def small(**kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_embd=64), **kw})


CONFIGS = {
    "gpt2": GPTConfig.from_preset("gpt2"),
    "gpt2-modern": GPTConfig.from_preset("gpt2-modern"),
    "gpt2-untied": GPTConfig.from_preset("gpt2", tie_embeddings=False),
    "tiny-window-mqa": GPTConfig.from_preset("tiny", window=8, n_kv_head=1, pos_emb="rope"),
    "tiny-swiglu-bias-layernorm": GPTConfig.from_preset("tiny", mlp="swiglu", n_kv_head=2),
    "tiny-rmsnorm-gelu-nobias-untied": GPTConfig.from_preset("tiny", norm="rmsnorm", bias=False, tie_embeddings=False),
    "tiny-head_dim-apart": GPTConfig.from_preset("tiny", head_dim=24, n_kv_head=2, pos_emb="rope"),  # Qwen3's layout
    "tiny-local-global-5to1": GPTConfig.from_preset("tiny", n_layer=7, window=8, layer_pattern="LLLLLG"),
    "tiny-moe-swiglu-shared-dense": GPTConfig.from_preset("tiny", n_expert=4, expert_top_k=1, n_shared_expert=2,
                                                          moe_dense_layers=(0,), mlp="swiglu", expert_hidden=40),
    "tiny-moe-deepseek-router": GPTConfig.from_preset("tiny", **DEEPSEEK_ROUTER, n_shared_expert=1,
                                                      moe_dense_layers=(0,), mlp="swiglu", bias=False),
    # Each switch of config.SWITCHES alone and all together (tests/conftest.py), on a small model.
    **{f"small+{'+'.join(names)}": with_switches(small(), names) for names in single_switches()},
}


def meta_model(cfg: GPTConfig) -> GPT:
    with torch.device("meta"):  # shapes only: a 124M model in milliseconds
        return GPT(cfg)


def real_param_table(model: GPT) -> dict[str, int]:
    """Parameters per component, summed over named_parameters() (which lists a tied weight once) and the experts'
    choice biases (buffers that the balancing rule learns)."""
    c = model.config
    hd = c.head_dim
    out = dict.fromkeys(("wte", "wpe", "q", "k", "v", "attn_out", "mlp_gate", "mlp_up", "mlp_down", "router",
                         "norms", "lm_head"), 0)
    biases = [(name, b) for name, b in model.named_buffers() if name.endswith(".choice_bias")]
    assert len(biases) == len(c.moe_layers) * c.moe_choice_bias
    for name, p in [*model.named_parameters(), *biases]:
        if name == "transformer.wte.weight":
            out["wte"] += p.numel()
        elif name == "transformer.wpe.weight":
            out["wpe"] += p.numel()
        elif ".attn.c_attn." in name:  # rows: [q | k | v]
            rows = p.shape[0]
            per_row = p.numel() // rows
            q_rows, kv_rows = c.n_head * hd, c.n_kv_head * hd
            assert rows == q_rows + 2 * kv_rows
            out["q"] += q_rows * per_row
            out["k"] += kv_rows * per_row
            out["v"] += kv_rows * per_row
        elif ".attn.q_proj." in name or ".attn.q_a_proj." in name or ".attn.q_b_proj." in name:  # MLA's query
            out["q"] += p.numel()
        elif ".attn.kv_a_proj." in name:  # MLA's down-projection into [latent | RoPE key]: counted with K
            out["k"] += p.numel()
        elif ".attn.kv_b_proj." in name:  # rows per K/V head: [key (no RoPE) | value]
            per_head = p.view(c.n_kv_head, c.qk_nope_head_dim + c.v_head_dim, -1)
            out["k"] += per_head[:, : c.qk_nope_head_dim].numel()
            out["v"] += per_head[:, c.qk_nope_head_dim :].numel()
        elif ".attn.c_proj." in name:
            out["attn_out"] += p.numel()
        elif ".mlp.c_fc." in name or ".mlp.shared.c_fc." in name:  # SwiGLU: rows [gate | up] (of each expert)
            if c.mlp == "swiglu":
                out["mlp_gate"] += p.numel() // 2
                out["mlp_up"] += p.numel() // 2
            else:
                out["mlp_up"] += p.numel()
        elif ".mlp.c_proj." in name or ".mlp.shared.c_proj." in name:
            out["mlp_down"] += p.numel()
        elif ".mlp.router." in name or name.endswith(".mlp.choice_bias"):
            out["router"] += p.numel()
        elif ".ln_" in name or any(f".attn.{n}." in name for n in ("q_norm", "k_norm", "q_a_norm", "kv_a_norm")):
            out["norms"] += p.numel()
        elif name == "lm_head.weight":
            out["lm_head"] += p.numel()
        else:
            raise AssertionError(f"parameter {name} is in no component of the table")
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_table_matches_instantiated_model(name):
    cfg = CONFIGS[name]
    model = meta_model(cfg)
    s = model_stats(cfg)
    assert s.params == real_param_table(model)
    assert s.total_params == model.num_params()
    assert s.non_embedding_params == model.num_params(non_embedding=True)
    if cfg.tie_embeddings:
        assert s.params["lm_head"] == 0


@pytest.mark.parametrize("kw", [dict(n_expert=4, expert_top_k=2), dict(n_expert=8, expert_top_k=3, n_shared_expert=1,
                                                                       moe_dense_layers=(0,), mlp="swiglu"),
                                DEEPSEEK_ROUTER])
def test_active_params_are_those_one_token_moves(kw):
    # One token's gradient reaches its top-k experts and no other (an unused expert's gradient is exactly zero):
    # the active count is the total less the experts whose gradient stays zero.
    cfg = small(**kw)
    torch.manual_seed(0)
    model = GPT(cfg)
    model(torch.tensor([[5]]), torch.tensor([[7]]))[1].backward()
    unused = 0
    for block in model.transformer.h:
        if hasattr(block.mlp, "router"):
            tensors = [t for m in (block.mlp.c_fc, block.mlp.c_proj) for t in (m.weight, m.bias) if t is not None]
            for e in range(cfg.n_expert):
                if all(not t.grad[e].any() for t in tensors):
                    unused += sum(t[e].numel() for t in tensors)
    s = model_stats(cfg)
    assert s.active_params == s.total_params - unused < s.total_params


def test_gpt2_numbers():
    s = model_stats(GPTConfig.from_preset("gpt2"))
    assert s.total_params == 124_439_808
    assert s.kv_bytes_per_token == 2 * 12 * 12 * 64 * 4  # 72 KiB per token in fp32


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("batch,context", [(1, 64), (3, 5)])
def test_kv_cache_bytes_match_allocated_caches(name, dtype, batch, context):
    cfg = CONFIGS[name]
    model = meta_model(cfg).to(TORCH_DTYPES[dtype])
    caches = make_caches(model, batch, context)
    allocated = sum(cache.k.nbytes + cache.v.nbytes for cache in caches)  # keys and values (not the slot positions)
    s = model_stats(cfg, context=context, batch=batch, dtype=dtype)
    assert s.kv_cache_bytes == allocated
    positions = sum(cache.k.shape[2] for cache in caches) / len(caches)  # local/global: per layer, mean
    assert s.kv_cache_positions == positions
    assert s.kv_bytes_per_token == allocated / (batch * positions)
    if cfg.window is None:
        assert s.kv_bytes_per_token == allocated / (batch * context)


def test_gqa_and_mqa_shrink_the_cache_by_the_group_size():
    mha = model_stats(GPTConfig.from_preset("gpt2"))
    for n_kv_head in (1, 2, 3, 4, 6, 12):
        gqa = model_stats(GPTConfig.from_preset("gpt2", n_kv_head=n_kv_head))
        assert mha.kv_cache_bytes == gqa.kv_cache_bytes * 12 // n_kv_head


@pytest.mark.parametrize("T", [1, 7, 64])
@pytest.mark.parametrize("window", [None, 1, 4, 7, 100])
def test_keys_per_query_counts_the_visible_keys_of_the_mask(T, window):
    visible = window_mask(T, T, window).sum().item()
    assert keys_per_query(T, window) == pytest.approx(visible / T)
    s = model_stats(small(window=window), context=T)
    assert s.flops_attention_per_token == pytest.approx(4 * 2 * 64 * visible / T)


def counted_flops(model: GPT, idx: torch.Tensor, backward: bool) -> tuple[int, int]:
    """(matmul FLOPs, attention FLOPs) that torch's FlopCounterMode counts; SDPA runs as explicit matmuls, and
    experts as one matmul each: the counter counts no grouped matmul (torch 2.13), and it would count the runs that
    time the two paths on first use."""
    choice = autotune.choice
    with (sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter,
          mock.patch.object(autotune, "choice", lambda op, key: PLAIN if op == "experts matmul" else choice(op, key))):
        _, loss = model(idx, idx)
        if backward:
            loss.backward()
    by_module = counter.get_flop_counts()
    total = counter.get_total_flops()
    # The math SDPA path is two bmm per layer; every Linear is an mm or addmm.
    ops = by_module["Global"]
    bmm = sum(n for op, n in ops.items() if "bmm" in str(op))
    assert sum(ops.values()) == total
    return total - bmm, bmm


@pytest.mark.parametrize("cfg", [
    small(),
    small(pos_emb="rope", n_kv_head=2, norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False),
    small(n_kv_head=1, mlp_hidden=100),
    small(head_dim=24, n_kv_head=2, pos_emb="rope"),  # q is 96 wide in a 64-dim model
    small(n_expert=4, expert_top_k=3, n_shared_expert=1, moe_dense_layers=(1,), mlp="swiglu", bias=False),
    small(**DEEPSEEK_ROUTER),  # DeepSeek's choice (groups, bias) is no matmul
])
def test_flops_match_torch_flop_counter(cfg):
    torch.manual_seed(0)
    model = GPT(cfg)
    B, T = 2, 16
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    s = model_stats(cfg, context=T, batch=B)
    matmul, attention = counted_flops(model, idx, backward=False)
    assert matmul == B * T * s.flops_matmul_per_token
    # The math kernel computes the full T x T score matrix and masks it: T keys per query, not T_eff.
    qk_width = v_width = cfg.n_head * cfg.head_dim  # scores over q·k channels, then a sum of value channels
    if cfg.kv_lora_rank is not None:  # MLA
        qk_width, v_width = cfg.n_head * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim), cfg.n_head * cfg.v_head_dim
    assert attention == B * T * 2 * cfg.n_layer * T * (qk_width + v_width)
    assert s.flops_attention_per_token == pytest.approx(2 * cfg.n_layer * (qk_width + v_width) * (T + 1) / 2)
    # A training step is 3 x forward: the backward pass does two products for every forward product.
    train_matmul, train_attention = counted_flops(model, idx, backward=True)
    assert train_matmul == 3 * matmul
    assert train_attention == 3 * attention
    assert s.flops_train_per_token == 3 * s.flops_forward_per_token


def test_flops_match_torch_flop_counter_for_each_switch(switch):
    # Each switch of config.SWITCHES alone and all together (tests/conftest.py); the window is 16 = T.
    test_flops_match_torch_flop_counter(with_switches(small(), switch))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("kw", [{}, DEEPSEEK_ROUTER], ids=["dense", "deepseek-router"])
def test_adamw_memory_matches_a_real_optimizer_step(dtype, kw):
    cfg = small(pos_emb="rope", n_kv_head=2, mlp="swiglu", **kw)
    torch.manual_seed(0)
    model = GPT(cfg).to(TORCH_DTYPES[dtype])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 97, (2, 16))
    model(idx, idx)[1].backward()
    opt.step()
    params = list(model.parameters())  # tied weights once
    s = model_stats(cfg, context=16, batch=2, dtype=dtype)
    # The weights include the choice biases (stored, without gradient or moments).
    biases = [b for name, b in model.named_buffers() if name.endswith(".choice_bias")]
    assert len(biases) == 2 * cfg.moe_choice_bias
    assert s.weights_bytes == sum(p.nbytes for p in params) + sum(b.nbytes for b in biases)
    assert s.grads_bytes == sum(p.grad.nbytes for p in params)
    moments = sum(st[k].nbytes for st in opt.state.values() for k in ("exp_avg", "exp_avg_sq"))
    assert s.adamw_bytes == moments


def saved_activation_bytes(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for backward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, targets)
    return sum(seen.values())


ACTIVATION_CASES = [
    (kw, dtype)
    for kw in (
        {},
        dict(pos_emb="rope", n_kv_head=2),
        dict(norm="rmsnorm", mlp="swiglu", bias=False),
        dict(pos_emb="rope", n_kv_head=1, norm="rmsnorm", mlp="swiglu", tie_embeddings=False),
    )
    for dtype in ("fp32", "bf16")
] + [
    (dict(window=8, pos_emb="rope"), "fp32"),  # the sliding-window kernel saves its own q, k, v, out, lse
    (dict(window=8, pos_emb="rope"), "bf16"),
    (dict(window=7, n_kv_head=2), "fp32"),  # 32 tokens in blocks of 7: padded to 35
    (dict(head_dim=24, n_kv_head=2, pos_emb="rope"), "fp32"),  # q and the attention output are 96 wide
    (dict(head_dim=24, window=8, pos_emb="rope"), "fp32"),
    (dict(n_expert=4, expert_top_k=2, n_shared_expert=2, moe_dense_layers=(0,)), "fp32"),  # experts: moe.py
    (dict(n_expert=4, expert_top_k=1, moe_renorm=False, mlp="swiglu", bias=False), "bf16"),
    (dict(DEEPSEEK_ROUTER, n_shared_expert=1, mlp="swiglu", bias=False), "fp32"),  # sigmoid, groups, bias, scale
] + [  # MLA: flash SDPA, its math path (GQA, or 16 bits, with keys and values of different widths), the band kernel
    (dict(MLA, **kw), dtype) for kw, dtype in (
        (dict(n_kv_head=2, q_lora_rank=24), "fp32"), (dict(pos_emb="rope"), "bf16"), (dict(window=8), "fp32"))
]


@pytest.mark.parametrize("kw,dtype", ACTIVATION_CASES)
def test_activation_estimate_matches_tensors_saved_for_backward(kw, dtype, monkeypatch):
    # The estimate describes the flash band kernel: make it the sliding-window path measured fastest; and SDPA for
    # bf16 causal attention (the bf16 matmul path also holds the T x T scores: attention._MATMUL_SCORES bounds them).
    autotune.reset()
    monkeypatch.setattr(autotune, "fastest_time", lambda name, fn: 0.1 if name.startswith("flash") else 1.0)
    monkeypatch.setattr(autotune, "median_time", lambda name, fn, repeats=5: 0.1 if name == "plain" else 1.0)
    cfg = small(**kw)
    torch.manual_seed(0)
    model = GPT(cfg).to(TORCH_DTYPES[dtype]).train()
    B, T = 2, 32
    idx, targets = torch.randint(0, 97, (B, T)), torch.randint(0, 97, (B, T))
    measured = saved_activation_bytes(model, idx, targets)
    estimate = model_stats(cfg, context=T, batch=B, dtype=dtype).activation_bytes
    assert abs(estimate - measured) <= 0.02 * measured, (estimate, measured)


def test_activation_estimate_for_each_switch(switch, monkeypatch):
    # Each switch of config.SWITCHES alone and all together (the window, 16, is shorter than the 32 tokens).
    test_activation_estimate_matches_tensors_saved_for_backward(switch_changes(small(), switch), "fp32", monkeypatch)


# --- the report and the command line ---------------------------------------------------------------------


def test_report_names_every_section():
    s = model_stats(GPTConfig.from_preset("gpt2-modern"), batch=4, dtype="bf16")
    text = format_report(s, "gpt2-modern")
    for needle in ("4 KV heads (GQA", "RoPE", "RMSNorm", "SwiGLU", "non-embedding", "114,114,048",
                   "training step (3 x forward)", "KV cache, bf16", "AdamW moments", "activations saved"):
        assert needle in text


def test_compare_gqa_divides_the_kv_cache():
    a = model_stats(GPTConfig.from_preset("gpt2"))
    b = model_stats(GPTConfig.from_preset("gpt2", n_kv_head=3))
    text = format_compare(a, b, "gpt2", "gpt2 GQA")
    kv_rows = [line for line in text.splitlines() if "per token: 2 x n_layer" in line]
    assert kv_rows and kv_rows[0].rstrip().endswith("÷4.00")


def test_compare_names_each_formula_where_they_differ():
    # MHA's cache is 2 x n_layer x n_kv_head x head_dim per token, MLA's the latent and the RoPE key: a side-by-side
    # report must not label B's number with A's formula.
    a = model_stats(GPTConfig.from_preset("tiny"))
    b = model_stats(GPTConfig.from_preset("tiny", **MLA))
    lines = format_compare(a, b, "mha", "mla").splitlines()
    i = next(i for i, line in enumerate(lines) if "per token: 2 x n_layer x n_kv_head x head_dim" in line)
    assert lines[i].lstrip().split(" x 4 B")[0].endswith("head_dim") and "(A)" in lines[i]
    assert lines[i + 1].strip() == "per token: n_layer x (latent + RoPE key) x 4 B (B)"
    same = format_compare(a, a, "mha", "mha")
    assert "(A)" not in same and "(B)" not in same


def test_main_single_and_compare(capsys):
    assert main(["--model.preset=gpt2-modern", "--context", "256", "--batch=2", "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpt2-modern: 12 layers") and "2 x 256 tokens" in out and "bf16" in out
    assert main(["--model.preset=gpt2", "--compare", "--model.preset=gpt2-modern"]) == 0
    out = capsys.readouterr().out
    assert "A = gpt2:" in out and "B = gpt2-modern:" in out and "÷3.00" in out


def test_main_json_and_flags(capsys):
    argv = ["--model.preset=tiny", "--model.n_kv_head=1", "--model.window=16", "--json", "--context=32"]
    assert main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["config"]["n_kv_head"] == 1 and d["config"]["window"] == 16 and d["context"] == 32
    assert d["kv_cache_positions"] == 16


@pytest.mark.parametrize("argv,message", [
    (["--compare"], "--compare needs a second configuration"),
    (["--dtype", "fp8"], "dtype"),
    (["--context", "0"], "--context"),
    (["--batch"], "--batch needs a value"),
    (["--frobnicate"], "unknown option"),
    (["--model.preset=gpt5"], "gpt5"),
    (["--model.n_kv_head=5"], "n_kv_head"),
    (["no/such/dir"], "config.json"),
])
def test_main_errors_name_the_problem(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptlab: error:") and message in err


def test_flags_describe_the_model_not_a_training_run(capsys):
    assert main(["--model.preset=gpt2", "--json"]) == 0  # no training defaults (block_size) leak in
    assert json.loads(capsys.readouterr().out)["total_params"] == 124_439_808
    assert main(["--json"]) == 0  # no flags at all: GPT-2 124M
    assert json.loads(capsys.readouterr().out)["config"] == GPTConfig().to_dict()


def test_options_aliases_when_gptlab_options_is_there(capsys):
    pytest.importorskip("gptlab.options")
    assert main(["--model.preset=gpt2", "--model.n_query_head=8", "--model.rope=True", "--json"]) == 0
    c = json.loads(capsys.readouterr().out)["config"]
    assert (c["n_head"], c["n_kv_head"], c["pos_emb"], c["block_size"]) == (8, 8, "rope", 1024)


def test_main_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--compare SPEC" in out and "gpt2-modern" in out


def test_main_reads_checkpoint_directories(tmp_path, capsys):
    gptlab_dir, hf_dir = tmp_path / "ours", tmp_path / "hf"
    gptlab_dir.mkdir()
    hf_dir.mkdir()
    modern = GPTConfig.from_preset("gpt2-modern", window=128)
    (gptlab_dir / "config.json").write_text(json.dumps({"model_type": "gptlab", "gptlab": modern.to_dict()}))
    from gptlab.hf import hf_gpt2_config

    (hf_dir / "config.json").write_text(json.dumps(hf_gpt2_config(GPTConfig.from_preset("gpt2"))))
    assert main([str(hf_dir), "--compare", str(gptlab_dir), "--json"]) == 0
    a, b = json.loads(capsys.readouterr().out)
    assert a["total_params"] == 124_439_808
    assert GPTConfig.from_dict(b["config"]) == modern
    assert main([str(gptlab_dir), "--model.n_layer=3", "--json"]) == 0  # a checkpoint with a field changed
    d = json.loads(capsys.readouterr().out)
    assert GPTConfig.from_dict(d["config"]) == modern.replace(n_layer=3)
    run = tmp_path / "run"  # a gptlab train run directory: the checkpoint is in best/ or last/
    (run / "last").mkdir(parents=True)
    (run / "last" / "config.json").write_text((gptlab_dir / "config.json").read_text())
    assert main([str(run), "--json"]) == 0
    assert GPTConfig.from_dict(json.loads(capsys.readouterr().out)["config"]) == modern
    assert main([str(gptlab_dir), str(hf_dir)]) == 2
    assert "at most one checkpoint" in capsys.readouterr().err


def test_info_of_a_run_preset_is_the_model_train_builds(tmp_path, capsys, monkeypatch):
    # `gptlab info --model.preset=baby` (biases, vocab 65) is not what `gptlab train --preset=baby` trains (no
    # biases, the data's characters): info --preset=baby describes the trained model, to the parameter.
    from gptlab.data import shakespeare_text
    from gptlab.model import GPT
    from gptlab.train import main as train_main

    text = tmp_path / "text.txt"
    text.write_text(shakespeare_text()[:30_000].lower(), encoding="utf-8")  # fewer characters than Shakespeare's
    data = [f"--data.path={text}", f"--data.cache_dir={tmp_path / 'cache'}"]
    assert main(["--preset=baby", *data, "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    run = ["--trainer.max_iters=1", "--trainer.eval_iters=1", "--trainer.sample_tokens=0", "--trainer.device=cpu",
           f"--system.work_dir={tmp_path / 'run'}"]
    assert train_main(["--preset=baby", *data, *run]) == 0
    capsys.readouterr()
    trained = GPT.from_pretrained(tmp_path / "run" / "last")
    assert described["total_params"] == sum(p.numel() for p in trained.parameters())
    assert GPTConfig.from_dict(described["config"]) == trained.config
    # Without --data.path: the default data, Shakespeare, whose characters set the vocabulary.
    monkeypatch.setenv("GPTLAB_CACHE", str(tmp_path / "default-cache"))
    assert main(["--preset", "baby", "--json"]) == 0
    config = json.loads(capsys.readouterr().out)["config"]
    assert config["vocab_size"] == len(set(shakespeare_text())) and config["bias"] is False
    # The model preset of the same name is another model, and says where the trained one is.
    assert main(["--model.preset=baby"]) == 0
    out = capsys.readouterr().out
    assert "biases, tied embeddings, vocab 65" in out and "gptlab info --preset=baby shows it" in out


def test_info_reads_what_every_command_reads(tmp_path, capsys):
    # The one path from a name to a config (checkpoint.model_config): a hub id of GPT-2 is known offline, and
    # `--init=DIR` and a positional DIR are the same model, changed by the same flags.
    assert main(["gpt2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == 124_439_808
    config = GPTConfig.from_preset("tiny", window=8)
    config.save(tmp_path / "config.json")
    for spec in ([str(tmp_path)], [f"--init={tmp_path}"], [f"--model.pretrained_folder={tmp_path}"]):
        assert main([*spec, "--model.n_layer=1", "--json"]) == 0
        assert GPTConfig.from_dict(json.loads(capsys.readouterr().out)["config"]) == config.replace(n_layer=1), spec
