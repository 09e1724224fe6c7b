"""Mixture of experts: the layer against a naive per-token reference (DeepSeek-V3's router included), the router
losses against their formulas, training (the penalty for backprop only, the metrics, balancing by loss and by the
choice bias), Mixtral, Qwen3-MoE and DeepSeek-V3 both ways, the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_train import flags, text_file  # noqa: F401  (a fixture)

from gptlab import GPT, GPTConfig, autotune
from gptlab import train as T
from gptlab.generate import cast_weights
from gptlab.hf import CheckpointError, export_blockers, export_format, load_pretrained
from gptlab.model import MoE
from gptlab.moe import (
    EXPERT_PATHS,
    RouterLog,
    balance_choice_bias,
    grouped_experts,
    looped_experts,
    router_penalty,
    router_stats,
)

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def small(**kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32, n_expert=4), **kw})


def naive_route(layer: MoE, token: torch.Tensor) -> dict[int, torch.Tensor]:
    """The router's definition for one token, by sorting Python lists: {expert: weight}. Scores: softmax, or sigmoid
    (DeepSeek-V3); choice: the scores plus the choice bias, among the experts of the best topk_groups groups (a group
    scored by the sum of its two best); weights: the chosen scores (not the bias), renormalised, times the scale."""
    logits = token @ layer.router.weight.t()
    scores = torch.sigmoid(logits) if layer.sigmoid else torch.softmax(logits, dim=-1)
    E, size = layer.n_expert, layer.n_expert // layer.groups
    bias = layer.choice_bias.tolist() if layer.choice_bias is not None else [0.0] * E
    choice = [scores[e].item() + bias[e] for e in range(E)]
    group_score = [sum(sorted(choice[g * size:(g + 1) * size], reverse=True)[:2]) for g in range(layer.groups)]
    best = sorted(range(layer.groups), key=lambda g: -group_score[g])[: layer.topk_groups]
    chosen = sorted((e for e in range(E) if e // size in best), key=lambda e: -choice[e])[: layer.top_k]
    total = sum(scores[e] for e in chosen) if layer.renorm else 1.0
    return {e: scores[e] / total * layer.scale for e in chosen}


def naive_moe(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """The layer's definition, one token at a time: the router's weights of its chosen experts (naive_route), the
    weighted sum of their MLPs, plus the shared MLP."""
    out = []
    for token in x.reshape(-1, x.shape[-1]):
        weights = naive_route(layer, token)
        y = torch.zeros_like(token)
        for e, weight in weights.items():
            h = token @ layer.c_fc.weight[e].t()
            h = h + (layer.c_fc.bias[e] if layer.c_fc.bias is not None else 0)
            if layer.swiglu:
                gate, up = h.chunk(2)
                h = F.silu(gate) * up
            else:
                h = F.gelu(h, approximate="tanh")
            h = h @ layer.c_proj.weight[e].t() + (layer.c_proj.bias[e] if layer.c_proj.bias is not None else 0)
            y = y + weight * h
        out.append(y + (layer.shared(token) if layer.shared is not None else 0))
    return torch.stack(out).view(x.shape)


DEEPSEEK = dict(n_expert=8, expert_top_k=3, moe_score="sigmoid", moe_groups=4, moe_topk_groups=2,
                moe_choice_bias=True, moe_scale=2.5)  # DeepSeek-V3's router, small
LAYERS = {
    "gelu-bias-top2": {},
    "swiglu-top1-softmax": dict(mlp="swiglu", bias=False, expert_top_k=1, moe_renorm=False),
    "shared-experts": dict(n_shared_expert=2, expert_hidden=24),
    "all-experts": dict(expert_top_k=4, moe_renorm=False, mlp="swiglu"),
    "deepseek-v3": dict(DEEPSEEK, mlp="swiglu", bias=False, n_shared_expert=1),
    "sigmoid-raw-one-group": dict(DEEPSEEK, moe_renorm=False, moe_topk_groups=1, expert_top_k=2),
    "softmax-bias-scale": dict(moe_choice_bias=True, moe_scale=0.5),
}


def randomised(layer: MoE) -> MoE:
    """Every weight, bias and the choice bias away from zero, so a wrong term shows."""
    for t in (*layer.parameters(), *layer.buffers()):
        t.data.normal_(0.0, 0.3)
    return layer


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_equals_the_naive_per_token_reference(name):
    torch.manual_seed(0)
    layer = randomised(MoE(small(**LAYERS[name])))
    x = torch.randn(3, 7, 32, requires_grad=True)
    ours, ref = layer(x), naive_moe(layer, x)
    tol = 1e-5 * max(1.0, ref.abs().max().item())  # fp32 rounding, relative to the outputs (moe_scale enlarges them)
    torch.testing.assert_close(ours, ref, atol=tol, rtol=1e-5)
    # And the gradients, of the input and of every weight (the router's through the weights of its choices).
    g = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * g).sum(), [x, *layer.parameters()])
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, *layer.parameters()])
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=1e-5)


@pytest.mark.parametrize("setting", ["choice_bias", "groups", "scale", "sigmoid", "renorm"])
def test_each_deepseek_router_setting_changes_the_layer(setting):
    # So the reference test above cannot pass with a setting ignored: each one, undone alone, changes the output.
    torch.manual_seed(0)
    layer = randomised(MoE(small(**LAYERS["deepseek-v3"])))
    x = torch.randn(3, 7, 32)
    before = layer(x)
    if setting == "choice_bias":
        layer.choice_bias.zero_()
    else:
        setattr(layer, setting, {"groups": 1, "scale": 1.0, "sigmoid": False, "renorm": False}[setting])
    assert (layer(x) - before).abs().max().item() > 1e-3


def test_the_choice_bias_chooses_and_never_weighs():
    # A large bias on one expert puts it in every token's choice; a larger one chooses the same and gives the very
    # same output (the weights are the scores); the gradient reaches the router but never the bias (a buffer).
    torch.manual_seed(0)
    layer = randomised(MoE(small(**dict(DEEPSEEK, moe_groups=1, moe_topk_groups=1, moe_renorm=False)))).train()
    layer.choice_bias.zero_()
    x = torch.randn(20, 32)
    unbiased = layer.choose(torch.sigmoid(layer.router(x)))
    assert not (unbiased == 5).any(dim=-1).all()
    layer.choice_bias[5] = 50.0
    assert (layer.choose(torch.sigmoid(layer.router(x))) == 5).any(dim=-1).all()
    out = layer(x)
    layer.choice_bias[5] = 100.0
    assert torch.equal(layer(x), out)
    layer(x).sum().backward()
    assert layer.router.weight.grad.abs().sum() > 0 and not layer.choice_bias.requires_grad
    assert "choice_bias" in layer.state_dict() and "choice_bias" not in dict(layer.named_parameters())


def test_router_losses_match_their_formulas():
    torch.manual_seed(0)
    logits = torch.randn(50, 6)
    probs = logits.softmax(-1)
    experts = probs.topk(2, dim=-1).indices
    s = router_stats(logits, probs, experts)
    f = torch.tensor([(experts == e).sum().item() / 100 for e in range(6)])  # of the 50 x 2 routing slots
    P = torch.tensor([probs[:, e].mean().item() for e in range(6)])
    assert torch.allclose(s.load, f) and s.load.sum().item() == pytest.approx(1.0)
    assert s.aux.item() == pytest.approx(6 * (f * P).sum().item(), rel=1e-6)
    z = sum(torch.log(torch.exp(row).sum()).item() ** 2 for row in logits) / 50
    assert s.z.item() == pytest.approx(z, rel=1e-5)
    # Perfectly balanced, uniform routing: aux is exactly 1.
    even = torch.arange(6).repeat(5).view(15, 2)
    assert router_stats(torch.zeros(15, 6), torch.full((15, 6), 1 / 6), even).aux.item() == pytest.approx(1.0)


def test_sigmoid_aux_loss_normalises_each_tokens_scores():
    # DeepSeek-V3's balance loss: P_i averages each token's sigmoid scores divided by their sum; f counts the choices
    # that the bias and the groups made.
    torch.manual_seed(0)
    layer = randomised(MoE(small(**DEEPSEEK))).train()
    x = torch.randn(40, 32)
    layer(x)
    scores = torch.sigmoid(x @ layer.router.weight.t())
    P = (scores / scores.sum(dim=-1, keepdim=True)).mean(dim=0)
    chosen = [naive_route(layer, token) for token in x]
    f = torch.tensor([sum(e in c for c in chosen) for e in range(8)]) / (40 * 3)
    torch.testing.assert_close(layer.stats.load, f)
    assert layer.stats.aux.item() == pytest.approx(8 * (f * P).sum().item(), rel=1e-5)
    assert layer.stats.aux.item() != pytest.approx(8 * (f * scores.mean(dim=0)).sum().item(), rel=1e-2)


def test_choice_bias_updates_balance_a_skewed_router_without_gradients():
    # DeepSeek-V3's auxiliary-loss-free balancing: the bias alone, moved by gamma * sign(mean load - load) after each
    # step, spreads a router that sends nearly every token to expert 0; the router itself does not move.
    torch.manual_seed(0)
    layer = MoE(small(n_expert=4, expert_top_k=1, moe_score="sigmoid", moe_choice_bias=True)).train()
    with torch.no_grad():
        layer.router.weight[0] += 2.0 * torch.ones(32) / 4
    router = layer.router.weight.detach().clone()
    x = torch.randn(512, 32).abs()
    layer(x)
    assert layer.stats.load.max().item() > 0.9 and layer.routed.sum().item() == 512
    balance_choice_bias(layer, 0.0)  # gamma 0: the counts are dropped, the bias stays
    assert layer.routed is None and not layer.choice_bias.any()
    layer(x), layer(x)  # two micro-batches: their counts add up
    assert layer.routed.sum().item() == 1024
    balance_choice_bias(layer, 0.01)
    assert layer.choice_bias.tolist() == pytest.approx([-0.01, 0.01, 0.01, 0.01])
    for _ in range(150):
        layer(x)
        balance_choice_bias(layer, 0.01)
    layer(x)
    assert layer.stats.load.max().item() < 0.4 and torch.equal(layer.router.weight, router)
    layer.eval()(x)  # evaluation and sampling do not count
    balance_choice_bias(layer.train(), 0.0)
    layer.eval()(x)
    assert layer.routed is None


def test_penalty_averages_the_moe_layers_and_is_zero_without_experts():
    torch.manual_seed(0)
    model = GPT(small(n_layer=3, moe_dense_layers=(1,)))
    idx = torch.randint(0, 96, (2, 16))
    model(idx)
    layers = [b.mlp for b in model.transformer.h if isinstance(b.mlp, MoE)]
    assert len(layers) == 2
    expected = sum(0.01 * m.stats.aux + 0.001 * m.stats.z for m in layers) / 2
    assert router_penalty(model, 0.01, 0.001).item() == pytest.approx(expected.item())
    assert router_penalty(GPT(small(n_expert=0)), 0.01, 0.001) == 0.0
    log = RouterLog()
    log.add(model)
    row = log.row()
    assert set(row) == {"moe_aux_loss", "moe_z_loss", "moe_load"} and len(row["moe_load"]) == 4
    assert sum(row["moe_load"]) == pytest.approx(1.0, abs=1e-3) and log.row() == {}


def test_aux_loss_balances_a_skewed_router():
    # A router that sends nearly every token to expert 0; descending the aux loss alone spreads the load.
    torch.manual_seed(0)
    router = torch.nn.Linear(16, 4, bias=False)
    with torch.no_grad():
        router.weight[0] += 2.0 * torch.ones(16) / 4
    x = torch.randn(512, 16).abs()
    opt = torch.optim.Adam(router.parameters(), lr=0.05)

    def stats():
        logits = router(x)
        probs = logits.softmax(-1)
        return router_stats(logits, probs, probs.topk(1, dim=-1).indices)

    assert stats().load.max().item() > 0.9
    for _ in range(100):
        opt.zero_grad()
        stats().aux.backward()
        opt.step()
    assert stats().load.max().item() < 0.4  # 0.25 each when even


def test_training_logs_the_cross_entropy_and_the_router(tmp_path: Path, text_file: Path):  # noqa: F811
    # The logged loss is the cross-entropy alone: the first step (before any update) logs the same loss whatever
    # the aux coefficient, and the coefficient changes the training from the second step on.
    runs = {}
    for coef in (0.0, 5.0):
        work = f"coef{coef}"
        argv = flags(tmp_path, text_file, work, model__n_expert=4, model__expert_top_k=2, trainer__max_iters=3,
                     trainer__log_interval=1, trainer__eval_interval=3, trainer__eval_iters=1,
                     trainer__moe_aux_coef=coef, trainer__moe_z_coef=0.001)
        assert T.main(argv) == 0
        runs[coef] = [r for r in T.read_metrics(tmp_path / work) if "loss" in r]
    a, b = runs[0.0], runs[5.0]
    assert a[0]["loss"] == b[0]["loss"] and a[1]["loss"] != b[1]["loss"]
    for row in a + b:
        assert len(row["moe_load"]) == 4 and sum(row["moe_load"]) == pytest.approx(1.0, abs=1e-3)
        assert row["moe_aux_loss"] >= 1.0 - 1e-3 and row["moe_z_loss"] > 0  # aux is 1 when balanced, else more


def test_resume_with_experts_is_bit_identical(tmp_path: Path, text_file: Path):  # noqa: F811
    common = dict(model__n_expert=4, model__expert_top_k=2, trainer__log_interval=1, trainer__eval_interval=3,
                  trainer__eval_iters=1, trainer__lr_decay_iters=6, trainer__moe_z_coef=0.001)
    assert T.main(flags(tmp_path, text_file, "straight", trainer__max_iters=6, **common)) == 0
    assert T.main(flags(tmp_path, text_file, "resumed", trainer__max_iters=3, **common)) == 0
    assert T.main(flags(tmp_path, text_file, "resumed", trainer__max_iters=6, trainer__resume=True, **common)) == 0
    rows = [[(r["iter"], r["loss"], r["moe_aux_loss"]) for r in T.read_metrics(tmp_path / d) if "loss" in r]
            for d in ("straight", "resumed")]
    assert len(rows[0]) == 6 and rows[0] == rows[1]


def test_sigmoid_router_with_bias_updates_resumes_bit_identically(tmp_path: Path, text_file: Path):  # noqa: F811
    # DeepSeek-V3's router trained with its aux loss and the bias updates: 3 steps + resume + 3 steps equal 6 steps,
    # the biases (buffers in the checkpoint) included; they moved.
    common = dict(model__n_expert=4, model__expert_top_k=2, model__moe_score="sigmoid", model__moe_groups=2,
                  model__moe_topk_groups=1, model__moe_choice_bias=True, model__moe_scale=2.0,
                  trainer__moe_bias_update=0.01, trainer__log_interval=1, trainer__eval_interval=3,
                  trainer__eval_iters=1, trainer__lr_decay_iters=6)
    assert T.main(flags(tmp_path, text_file, "straight", trainer__max_iters=6, **common)) == 0
    assert T.main(flags(tmp_path, text_file, "resumed", trainer__max_iters=3, **common)) == 0
    assert T.main(flags(tmp_path, text_file, "resumed", trainer__max_iters=6, trainer__resume=True, **common)) == 0
    rows = [[(r["iter"], r["loss"], r["moe_aux_loss"], r["moe_load"]) for r in T.read_metrics(tmp_path / d)
             if "loss" in r] for d in ("straight", "resumed")]
    assert len(rows[0]) == 6 and rows[0] == rows[1]
    biases = [[b.mlp.choice_bias for b in GPT.from_pretrained(tmp_path / d / "last").transformer.h]
              for d in ("straight", "resumed")]
    assert all(torch.equal(a, b) for a, b in zip(*biases, strict=True))
    assert any(b.abs().sum().item() > 0 for b in biases[0])  # (at init, gamma moves them back and forth)
    with pytest.raises(T.UsageError, match="moe_bias_update=0.01 moves the experts' choice biases"):
        T.main(flags(tmp_path, text_file, "refused", model__n_expert=4, trainer__moe_bias_update=0.01))


def test_expert_biases_are_not_decayed():
    model = GPT(small())
    opt = T.make_optimizer(model, T.TrainerConfig(), fused=False)
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    moe = model.transformer.h[0].mlp
    assert id(moe.c_fc.weight) in decayed and id(moe.router.weight) in decayed
    assert id(moe.c_fc.bias) not in decayed and id(moe.c_proj.bias) not in decayed


@pytest.mark.parametrize("changes,message", [
    (dict(n_expert=0, expert_top_k=1), r"expert_top_k: settings of experts, which need n_expert > 0"),
    (dict(expert_top_k=5), "expert_top_k must be in 1..n_expert"),
    (dict(moe_dense_layers=(2,)), "moe_dense_layers must list distinct layers in 0..1"),
    (dict(n_expert=-1), "n_expert must be 0"),
    (dict(n_shared_expert=True), "n_shared_expert"),
    (dict(n_expert=0, moe_score="sigmoid", moe_choice_bias=True), "moe_score, moe_choice_bias: settings of experts"),
    (dict(moe_score="relu"), "moe_score must be one of"),
    (dict(moe_groups=3), r"moe_groups must split n_expert \(4\).*allowed moe_groups: \[1, 2\]"),
    (dict(moe_groups=4), r"groups of at least 2 \(a group scores by its top 2\)"),
    (dict(moe_groups=2, moe_topk_groups=3), r"moe_topk_groups must be in 1..moe_groups \(2\)"),
    (dict(moe_groups=2, expert_top_k=3), r"expert_top_k \(3\) must be at most the experts of moe_topk_groups"),
    (dict(moe_scale=0.0), "moe_scale must be a number > 0"),
    (dict(moe_choice_bias=1), "moe_choice_bias must be True or False"),
])
def test_bad_settings_are_refused_naming_the_field(changes, message):
    with pytest.raises(ValueError, match=message):
        small(**changes)


# --- Hugging Face Mixtral and Qwen3-MoE ---------------------------------------------------------------------------


def _perturbed(hf):
    with torch.no_grad():  # norms and all away from their init, so a wrong mapping shows
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return hf.eval()


def mixtral(directory: Path, **kw):
    cfg = transformers.MixtralConfig(**{**dict(
        vocab_size=96, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
        rope_theta=5e3), **kw})
    torch.manual_seed(0)
    hf = _perturbed(transformers.MixtralForCausalLM(cfg))
    hf.save_pretrained(directory)
    return hf


def qwen3_moe(directory: Path, **kw):
    cfg = transformers.Qwen3MoeConfig(**{**dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=24, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=6, num_experts_per_tok=2,
        max_position_embeddings=64), **kw})
    torch.manual_seed(0)
    hf = _perturbed(transformers.Qwen3MoeForCausalLM(cfg))
    hf.save_pretrained(directory)
    return hf


def hf_logits(model, idx):
    with torch.no_grad():
        return model(idx).logits if not isinstance(model, GPT) else model(idx)[0]


def greedy_uncached(hf, idx: torch.Tensor, n: int) -> torch.Tensor:
    with torch.no_grad():
        for _ in range(n):
            idx = torch.cat([idx, hf(idx, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def check_both_ways(hf, directory: Path, kind: str, tmp_path: Path) -> GPT:
    """Logits within 1e-4 and equal greedy tokens; then exported back, transformers loads the same numbers."""
    model = GPT.from_pretrained(directory)
    idx = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    assert (hf_logits(model, idx) - hf_logits(hf, idx)).abs().max().item() <= 1e-4
    assert torch.equal(model.generate(idx[:, :6], 12, temperature=0), greedy_uncached(hf, idx[:, :6], 12))
    assert export_format(model.config) == kind
    model.save_pretrained(tmp_path / "back")
    saved = json.loads((tmp_path / "back" / "config.json").read_text())
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back", attn_implementation="eager").eval()
    assert saved["model_type"] == kind and type(again) is type(hf)
    assert (hf_logits(again, idx) - hf_logits(hf, idx)).abs().max().item() <= 1e-5
    assert GPT.from_pretrained(tmp_path / "back").config == model.config
    return model


@pytest.mark.parametrize("window", [None, 6])
def test_mixtral_loads_with_logit_parity_and_exports_back(tmp_path, window):
    hf = mixtral(tmp_path / "hf", sliding_window=window)
    c = check_both_ways(hf, tmp_path / "hf", "mixtral", tmp_path).config
    assert (c.n_expert, c.expert_top_k, c.expert_width, c.moe_renorm, c.moe_dense_layers) == (4, 2, 40, True, ())
    assert (c.window, c.qk_norm, c.mlp, c.n_kv_head) == (window, False, "swiglu", 2)


def test_softmax_routers_follow_the_models_dtype(tmp_path):
    # Mixtral's and Qwen3-MoE's routers run in the model's dtype: transformers keeps no tensor of theirs fp32.
    mixtral(tmp_path / "mixtral")
    qwen3_moe(tmp_path / "qwen3_moe", mlp_only_layers=[0])
    for kind in ("mixtral", "qwen3_moe"):
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / kind, dtype=torch.bfloat16)
        assert theirs.model.layers[1].mlp.gate.weight.dtype == torch.bfloat16, kind
        loaded = GPT.from_pretrained(tmp_path / kind, dtype=torch.bfloat16)
        cast = cast_weights(GPT.from_pretrained(tmp_path / kind), torch.bfloat16)
        assert {p.dtype for m in (loaded, cast) for p in m.parameters()} == {torch.bfloat16}, kind


@pytest.mark.parametrize("kw,dense", [
    (dict(mlp_only_layers=[0], norm_topk_prob=True), (0,)),
    (dict(decoder_sparse_step=2, norm_topk_prob=False), (0, 2)),  # experts in layers 1 and 3
])
def test_qwen3_moe_loads_with_logit_parity_and_exports_back(tmp_path, kw, dense):
    hf = qwen3_moe(tmp_path / "hf", **kw)
    c = check_both_ways(hf, tmp_path / "hf", "qwen3_moe", tmp_path).config
    assert (c.n_expert, c.expert_top_k, c.expert_hidden, c.mlp_hidden, c.qk_norm) == (6, 2, 24, 48, True)
    assert c.moe_dense_layers == dense and c.moe_renorm == kw["norm_topk_prob"]


def deepseek_moe(directory: Path, **kw):
    """A random tiny DeepseekV3ForCausalLM: a dense first layer, then experts with DeepSeek's router (sigmoid, 4
    groups of which the best 2 are eligible, routed_scaling_factor 2.5), saved by transformers; every weight moved
    off its init and the score-correction bias set after init (transformers zeroes it), so that it matters."""
    cfg = transformers.DeepseekV3Config(**{**dict(
        vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4, qk_nope_head_dim=8,
        v_head_dim=6, first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
        moe_intermediate_size=16, n_shared_experts=2, routed_scaling_factor=2.5, norm_topk_prob=True,
        max_position_embeddings=64, rope_theta=5000.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=None,
        pad_token_id=0), **kw})
    torch.manual_seed(0)
    hf = _perturbed(transformers.DeepseekV3ForCausalLM(cfg))
    with torch.no_grad():
        biases = [b for name, b in hf.named_buffers() if name.endswith("mlp.gate.e_score_correction_bias")]
        assert len(biases) == cfg.num_hidden_layers - cfg.first_k_dense_replace
        for b in biases:
            b.normal_(0.0, 0.3)
    hf.save_pretrained(directory)
    return hf


@pytest.mark.parametrize("kw", [
    {},
    dict(first_k_dense_replace=0, norm_topk_prob=False, n_group=2, topk_group=1, n_shared_experts=1,
         routed_scaling_factor=0.7, q_lora_rank=12, rope_interleave=False),
], ids=["dense-first-renormalised", "all-experts-raw-qlora"])
def test_deepseek_v3_with_experts_loads_with_logit_parity_and_exports_back(tmp_path, kw):
    hf = deepseek_moe(tmp_path / "hf", **kw)
    model = check_both_ways(hf, tmp_path / "hf", "deepseek_v3", tmp_path)
    c, hc = model.config, hf.config
    assert (c.n_expert, c.expert_top_k, c.expert_hidden, c.mlp_hidden, c.moe_score, c.moe_choice_bias) == (
        8, 3, 16, 48, "sigmoid", True)
    assert (c.moe_groups, c.moe_topk_groups, c.moe_scale, c.moe_renorm, c.n_shared_expert, c.moe_dense_layers) == (
        hc.n_group, hc.topk_group, hc.routed_scaling_factor, hc.norm_topk_prob, hc.n_shared_experts,
        tuple(range(hc.first_k_dense_replace)))
    # The parity is not by luck: undo the bias, the groups or the scale alone, and the logits are far from theirs.
    idx = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(1))
    for undo in ("choice_bias", "groups", "scale"):
        changed = GPT.from_pretrained(tmp_path / "hf")
        for layer in (b.mlp for b in changed.transformer.h if isinstance(b.mlp, MoE)):
            if undo == "choice_bias":
                layer.choice_bias.zero_()
            else:
                setattr(layer, undo, 1)
        assert (hf_logits(changed, idx) - hf_logits(hf, idx)).abs().max().item() > 1e-2, undo


@pytest.mark.parametrize("router", ["fp32", "bf16-values"])
def test_deepseek_v3_in_bf16_chooses_the_experts_transformers_chooses(tmp_path, monkeypatch, router):
    # transformers keeps DeepSeek-V3's router weight and choice bias fp32 in a bf16 model (_keep_in_fp32_modules_strict)
    # and computes the logits in fp32. An fp32 checkpoint loaded in bf16, or an fp32 model cast to bf16 for decoding
    # (generate.cast_weights, `gptlab sample --dtype=bfloat16`), must choose the very experts it chooses: a router
    # weight rounded to bf16 chose others for tens of 20k tokens. "bf16-values": router weights as DeepSeek-V3's
    # checkpoint stores them, which rounding leaves as they are.
    hf = deepseek_moe(tmp_path / "fp32")
    if router == "bf16-values":
        with torch.no_grad():
            for layer in hf.model.layers[hf.config.first_k_dense_replace :]:
                layer.mlp.gate.weight.copy_(layer.mlp.gate.weight.to(torch.bfloat16).float())
        hf.save_pretrained(tmp_path / "fp32")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", dtype=torch.bfloat16).eval()
    loaded = GPT.from_pretrained(tmp_path / "fp32", dtype=torch.bfloat16)
    cast = cast_weights(GPT.from_pretrained(tmp_path / "fp32"), torch.bfloat16)
    chosen = []
    monkeypatch.setattr(MoE, "choose", lambda self, scores, choose=MoE.choose: chosen.append(choose(self, scores))
                        or chosen[-1])
    x = torch.randn(20_000, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    for i in (1, 2):
        assert theirs.model.layers[i].mlp.gate.weight.dtype == torch.float32  # what transformers keeps
        with torch.no_grad():
            _, _, expected = theirs.model.layers[i].mlp.gate(x)
            for ours in (loaded, cast):
                layer = ours.transformer.h[i].mlp
                assert layer.router.weight.dtype == layer.choice_bias.dtype == torch.float32
                assert layer.c_fc.weight.dtype == torch.bfloat16
                assert layer(x).dtype == torch.bfloat16
                assert torch.equal(chosen[-1].sort(dim=-1).values, expected.sort(dim=-1).values), (i, ours is cast)
    # Exported, a bf16 model writes what transformers' own save of its bf16 model writes: the same tensors in the same
    # dtypes, the router's fp32 and equal (the RoPE rows of q and kv_a are in rotate-half order: rope_interleave=False),
    # and "dtype": "bfloat16" in config.json.
    for model, directory in ((loaded, "ours"), (cast, "cast"), (theirs, "theirs")):
        model.save_pretrained(tmp_path / directory)
    expected = load_file(tmp_path / "theirs" / "model.safetensors")
    for directory in ("ours", "cast"):
        tensors = load_file(tmp_path / directory / "model.safetensors")
        assert {k: t.dtype for k, t in tensors.items()} == {k: t.dtype for k, t in expected.items()}, directory
        router = [k for k in tensors if ".mlp.gate." in k]
        assert len(router) == 4 and all(torch.equal(tensors[k], expected[k]) for k in router), directory
        assert json.loads((tmp_path / directory / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # transformers' zero-width shared MLP
def test_deepseek_v3_format_holds_its_router_and_nothing_else(tmp_path):
    ds = small(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, kv_lora_rank=16, qk_rope_head_dim=4,
               qk_nope_head_dim=8, v_head_dim=6, **DEEPSEEK, n_shared_expert=1, moe_dense_layers=(0,))
    assert export_format(ds) == "deepseek_v3"
    # transformers' DeepSeek-V3 routes by the sigmoid with a bias, builds its shared MLP always, keeps the first
    # layers dense; Mixtral and Qwen3-MoE route by the softmax alone.
    for change, blocker in ((dict(moe_score="softmax"), "moe_score='softmax'"),
                            (dict(moe_choice_bias=False), "moe_choice_bias=False"),
                            (dict(n_shared_expert=0), "n_shared_expert=0"),
                            (dict(moe_dense_layers=(1,)), "moe_dense_layers=(1,)")):
        c = ds.replace(**change)
        assert export_format(c) == "gptlab" and blocker in export_blockers(c, "deepseek_v3"), change
    qwen = small(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, qk_norm=True)
    for change in (dict(moe_score="sigmoid"), dict(moe_choice_bias=True), dict(moe_scale=2.0),
                   dict(n_expert=8, moe_groups=2)):
        assert export_format(qwen) == "qwen3_moe" and export_format(qwen.replace(**change)) == "gptlab", change
    # n_shared_experts=0: transformers writes zero-width shared tensors, which gptlab (no shared MLP) leaves out.
    hf = deepseek_moe(tmp_path / "none", n_shared_experts=0)
    model = GPT.from_pretrained(tmp_path / "none")
    idx = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    assert model.config.n_shared_expert == 0 and model.transformer.h[1].mlp.shared is None
    assert (hf_logits(model, idx) - hf_logits(hf, idx)).abs().max().item() <= 1e-4
    # The router (its weight and the bias) stays fp32 in a bf16 model, as transformers keeps it: rounded, it would
    # choose other experts (test_deepseek_v3_in_bf16_chooses_the_experts_transformers_chooses).
    bf16 = GPT.from_pretrained(tmp_path / "none", dtype=torch.bfloat16)
    layer = bf16.transformer.h[1].mlp
    assert layer.choice_bias.dtype == layer.router.weight.dtype == torch.float32
    assert layer.c_fc.weight.dtype == bf16.transformer.wte.weight.dtype == torch.bfloat16
    base = json.loads((tmp_path / "none" / "config.json").read_text())
    for cfg, message in (({**base, "first_k_dense_replace": -1}, "first_k_dense_replace must be an integer >= 0"),
                         ({**base, "n_group": 3}, "moe_groups must split n_expert"),
                         ({**base, "topk_group": 1, "num_experts_per_tok": 3}, "expert_top_k .3. must be at most")):
        (tmp_path / "none" / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=message) as e:
            load_pretrained(tmp_path / "none")
        assert "\n" not in str(e.value)


def test_formats_hold_what_they_have_and_refuse_the_rest(tmp_path):
    llama = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False)
    assert export_format(small(**llama)) == "mixtral"
    assert export_format(small(**llama, qk_norm=True, moe_renorm=False, moe_dense_layers=(0,))) == "qwen3_moe"
    # Shared experts: neither format has them; Mixtral has no dense layers and always renormalises.
    shared = small(**llama, n_shared_expert=1)
    assert export_format(shared) == "gptlab"
    assert "n_shared_expert=1" in export_blockers(shared, "mixtral")
    assert "moe_renorm=False" in export_blockers(small(**llama, moe_renorm=False), "mixtral")
    assert "n_expert=4" in export_blockers(small(**llama), "llama")
    qwen3_moe(tmp_path / "ok")
    base = json.loads((tmp_path / "ok" / "config.json").read_text())
    for cfg, message in (({**base, "decoder_sparse_step": 0}, "decoder_sparse_step must be >= 1"),
                         ({**base, "num_experts_per_tok": 9}, "expert_top_k must be in 1..n_expert")):
        (tmp_path / "ok" / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(CheckpointError, match=message) as e:
            load_pretrained(tmp_path / "ok")
        assert "\n" not in str(e.value)


# --- the experts' matmuls: one per expert, or one grouped matmul ---------------------------------------------------


@pytest.fixture(params=list(EXPERT_PATHS))
def expert_path(request, monkeypatch):
    """Every MoE layer in the test runs its experts' matmuls by this path, whatever a timing would pick."""
    choice = autotune.choice
    monkeypatch.setattr(autotune, "choice",
                        lambda op, key: request.param if op == "experts matmul" else choice(op, key))
    return request.param


@pytest.mark.parametrize("name", ["gelu-bias-top2", "deepseek-v3"])
def test_layer_equals_the_reference_by_either_matmul_path(name, expert_path):
    test_layer_equals_the_naive_per_token_reference(name)


def test_cached_decode_equals_the_uncached_forward_by_either_matmul_path(expert_path):
    # Decoding routes one token per sequence at a time: a few (token, expert) pairs, most experts empty, under
    # inference_mode (no autograd: other timing keys). Greedy tokens through the KV cache equal those of the whole
    # sequence run again for every token.
    torch.manual_seed(0)
    model = GPT(small(n_expert=4, expert_top_k=2, mlp="swiglu", n_layer=2)).eval()
    for block in model.transformer.h:
        randomised(block.mlp)
    idx = torch.randint(0, 96, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        cached = model.generate(idx, 10, temperature=0)
        uncached = idx
        for _ in range(10):
            uncached = torch.cat([uncached, model(uncached)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("bias", [False, True])
def test_grouped_matmul_equals_one_matmul_per_expert(bias):
    torch.manual_seed(0)
    counts = [5, 0, 9, 1, 0, 7]  # empty experts too: their weights still get a (zero) gradient
    x = torch.randn(sum(counts), 12, requires_grad=True)
    w = torch.randn(len(counts), 20, 12, requires_grad=True)
    b = torch.randn(len(counts), 20, requires_grad=True) if bias else None
    g = torch.randn(sum(counts), 20)
    outs = {}
    for name, path in EXPERT_PATHS.items():
        y = path(x, w, b, counts)
        outs[name] = (y, *torch.autograd.grad((y * g).sum(), [x, w] + ([b] if bias else [])))
    for a, c in zip(outs["plain"], outs["grouped"], strict=True):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
    assert outs["grouped"][2][1].abs().sum() == 0  # expert 1 had no rows


def test_grouped_matmul_follows_autocast_as_linear_does():
    torch.manual_seed(0)
    counts = [3, 4, 2]
    x, w, b = torch.randn(9, 16), torch.randn(3, 8, 16), torch.randn(3, 8)
    with torch.autocast("cpu", torch.bfloat16):
        looped, grouped = looped_experts(x, w, b, counts), grouped_experts(x, w, b, counts)
    assert looped.dtype == grouped.dtype == torch.bfloat16
    exact = looped_experts(x, w, b, counts)  # fp32; the bf16 paths round at different points (the bias), so both
    torch.testing.assert_close(grouped.float(), exact, atol=0.05, rtol=0.02)  # are held to bf16's precision
    torch.testing.assert_close(looped.float(), exact, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("winner", ["plain", "grouped"])
def test_the_experts_run_by_the_path_measured_faster(monkeypatch, winner):
    autotune.reset()
    times = {"plain": 1.0, "grouped": 0.5 if winner == "grouped" else 2.0}
    timed: list[str] = []
    monkeypatch.setattr(autotune, "median_time", lambda name, fn, repeats: timed.append(name) or times[name])
    ran: list[str] = []
    for name in EXPERT_PATHS:
        monkeypatch.setitem(EXPERT_PATHS, name,
                            lambda *a, path=EXPERT_PATHS[name], name=name: ran.append(name) or path(*a))
    torch.manual_seed(0)
    layer = MoE(small(n_expert=4, expert_top_k=2))
    layer(torch.randn(2, 3, 32)).sum().backward()  # 6 tokens, 12 pairs: timed at 16 rows
    layer(torch.randn(2, 4, 32)).sum().backward()  # 16 pairs: the same timing
    assert sorted(timed) == ["grouped", "grouped", "plain", "plain"]  # c_fc and c_proj, once each
    assert ran == [winner] * 4  # c_fc and c_proj, in each of two forwards
    assert layer.c_fc.weight.grad is not None and all(p.grad is not None for p in layer.parameters())
    keys = [key for op, key, _, _ in autotune.choices() if op == "experts matmul"]
    assert len(keys) == 2 and all(", 16, 'torch.float32', True," in key for key in keys)
    autotune.reset()


def test_the_timing_leaves_no_gradient_and_no_rng_behind():
    autotune.reset()
    torch.manual_seed(0)
    layer = MoE(small(n_expert=4, expert_top_k=2))
    x = torch.randn(2, 3, 32)
    state = torch.random.get_rng_state()
    layer(x)  # the first call times both paths, forward and backward, on copies
    assert all(p.grad is None for p in layer.parameters())
    assert torch.equal(torch.random.get_rng_state(), state)
    assert any(op == "experts matmul" for op, *_ in autotune.choices())
    autotune.reset()


@pytest.mark.parametrize("kw, autocast", [
    (dict(n_embd=18, n_head=2), False),  # rows of 72 bytes into c_fc, out of c_proj
    (dict(expert_hidden=18), False),  # an expert's hidden units: out of c_fc, into c_proj
    (dict(n_embd=36), True),  # 36 bf16 numbers: 72 bytes
])
def test_experts_of_any_width_run(kw, autocast, monkeypatch):
    # torch's grouped matmul takes only rows of a multiple of 16 bytes (torch 2.13 on CPU: 4 fp32 numbers, 8 bf16) and
    # raises otherwise: at other widths the experts run one matmul each, untimed (timing the grouped one raised).
    autotune.reset()
    torch.manual_seed(0)
    layer = randomised(MoE(small(**kw)))
    x = torch.randn(3, 7, layer.router.weight.shape[1], requires_grad=True)

    def run() -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            y = layer(x)
            return y, torch.autograd.grad(y.float().square().sum(), [x, *layer.parameters()])

    ours, grads = run()
    assert not [op for op, *_ in autotune.choices() if op == "experts matmul"]
    if autocast:  # the reference: the loop in bf16, to which other tests hold the grouped matmul
        monkeypatch.setattr(autotune, "choice", lambda op, key: autotune.PLAIN)
        (ref, ref_grads), tol = run(), 0.0
    else:
        ref = naive_moe(layer, x)
        ref_grads = torch.autograd.grad(ref.square().sum(), [x, *layer.parameters()])
        tol = 1e-5 * max(1.0, ref.abs().max().item())
    torch.testing.assert_close(ours, ref, atol=tol, rtol=tol and 1e-5)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=100 * tol, rtol=tol and 1e-4)
    autotune.reset()


def test_a_pinned_choice_of_an_unknown_path_is_timed_again():
    # A checkpoint's pinned choices (train.py, for a bit-exact resume) may name a path this code lacks (a later
    # version's): as attention's dispatchers do, the experts time their paths again rather than fail the resume.
    autotune.reset()
    torch.manual_seed(0)
    layer = randomised(MoE(small(n_expert=4, expert_top_k=2)))
    x = torch.randn(2, 3, 32)
    expected = layer(x)
    autotune.pin([[op, key, "a-later-path"] for op, key, _ in autotune.pinned()])
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=1e-6)  # either path: their rounding differs
    assert {best for op, _, best, _ in autotune.choices() if op == "experts matmul"} <= set(EXPERT_PATHS)
    autotune.reset()


@pytest.mark.parametrize("grad", [True, False])
def test_the_timing_runs_what_the_layer_runs(monkeypatch, grad):
    # Each path is timed on its rows shared evenly by the experts and, when autograd will need it, through the
    # backward into everything the layer's own backward reaches, the bias included: a timing of less would flatter a
    # path whose backward is the slow part (the grouped matmul's bias gradient is a scatter-add of its rows).
    autotune.reset()
    runs: list[dict] = []
    for name, path in list(EXPERT_PATHS.items()):
        def spy(x, w, b, counts, path=path, name=name):
            y = path(x, w, b, counts)
            run = dict(name=name, counts=list(counts), grads=[t.requires_grad for t in (x, w, b)], backward=False)
            runs.append(run)
            if y.requires_grad:
                y.register_hook(lambda g, run=run: run.update(backward=True))
            return y
        monkeypatch.setitem(EXPERT_PATHS, name, spy)
    monkeypatch.setattr(autotune, "median_time", lambda name, fn, repeats=5: fn() or 1.0)
    torch.manual_seed(0)
    layer = randomised(MoE(small(n_expert=4, expert_top_k=2)))  # with biases
    with torch.set_grad_enabled(grad):
        layer(torch.randn(2, 3, 32))  # 12 pairs: timed on 16 rows
    timed = [r for r in runs if sum(r["counts"]) == 16]
    assert sorted(r["name"] for r in timed) == ["grouped", "grouped", "plain", "plain"]  # c_fc and c_proj
    assert all(r["counts"] == [4, 4, 4, 4] for r in timed)
    assert all(r["grads"] == [grad] * 3 and r["backward"] == grad for r in timed), timed
    autotune.reset()


def test_a_compiled_model_runs_the_experts_loop_whatever_eager_chose(monkeypatch):
    # torch.compile cannot trace torch's grouped matmul in fp32 (torch 2.13: its fake kernel takes bf16 only), so a
    # compiled model runs one matmul per expert even where eager forwards of the process (or a checkpoint's pinned
    # choices) chose the grouped one. Compiled (aot_eager traces the backward too), a training step of SwiGLU experts
    # gives eager's loss and gradients.
    choice = autotune.choice
    monkeypatch.setattr(autotune, "choice", lambda op, key: "grouped" if op == "experts matmul" else choice(op, key))
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(small(n_expert=4, expert_top_k=2, mlp="swiglu", n_layer=1)).train()
    idx = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())

    def step(m: torch.nn.Module) -> tuple[torch.Tensor, ...]:
        loss = m(idx, idx)[1]
        return (loss, *torch.autograd.grad(loss, params))

    for eager, compiled in zip(step(model), step(torch.compile(model, backend="aot_eager")), strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-7)
