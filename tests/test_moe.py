"""Mixture of experts: the layer against a naive per-token reference, the router losses against their formulas,
training (the penalty for backprop only, the metrics, balancing), Mixtral and Qwen3-MoE both ways, the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_train import flags, text_file  # noqa: F401  (a fixture)

from gptlab import GPT, GPTConfig
from gptlab import train as T
from gptlab.hf import CheckpointError, export_blockers, export_format, load_pretrained
from gptlab.model import MoE
from gptlab.moe import RouterLog, router_penalty, router_stats

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def small(**kw) -> GPTConfig:
    return GPTConfig(**{**dict(vocab_size=96, block_size=32, n_layer=2, n_head=4, n_embd=32, n_expert=4), **kw})


def naive_moe(layer: MoE, x: torch.Tensor) -> torch.Tensor:
    """The layer's definition, one token at a time: softmax over experts, top k, (renormalised) weighted sum of the
    chosen experts' MLPs, plus the shared MLP."""
    out = []
    for token in x.reshape(-1, x.shape[-1]):
        probs = torch.softmax(token @ layer.router.weight.t(), dim=-1)
        chosen = sorted(range(layer.n_expert), key=lambda e: -probs[e].item())[: layer.top_k]
        total = sum(probs[e] for e in chosen) if layer.renorm else 1.0
        y = torch.zeros_like(token)
        for e in chosen:
            h = token @ layer.c_fc.weight[e].t()
            h = h + (layer.c_fc.bias[e] if layer.c_fc.bias is not None else 0)
            if layer.swiglu:
                gate, up = h.chunk(2)
                h = F.silu(gate) * up
            else:
                h = F.gelu(h, approximate="tanh")
            h = h @ layer.c_proj.weight[e].t() + (layer.c_proj.bias[e] if layer.c_proj.bias is not None else 0)
            y = y + probs[e] / total * h
        out.append(y + (layer.shared(token) if layer.shared is not None else 0))
    return torch.stack(out).view(x.shape)


LAYERS = {
    "gelu-bias-top2": {},
    "swiglu-top1-softmax": dict(mlp="swiglu", bias=False, expert_top_k=1, moe_renorm=False),
    "shared-experts": dict(n_shared_expert=2, expert_hidden=24),
    "all-experts": dict(expert_top_k=4, moe_renorm=False, mlp="swiglu"),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_equals_the_naive_per_token_reference(name):
    torch.manual_seed(0)
    layer = MoE(small(**LAYERS[name]))
    for p in layer.parameters():  # biases and all away from zero, so a wrong term shows
        p.data.normal_(0.0, 0.3)
    x = torch.randn(3, 7, 32, requires_grad=True)
    ours, ref = layer(x), naive_moe(layer, x)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # And the gradients, of the input and of every weight (the router's through the weights of its choices).
    g = torch.randn_like(ours)
    grads = torch.autograd.grad((ours * g).sum(), [x, *layer.parameters()])
    ref_grads = torch.autograd.grad((ref * g).sum(), [x, *layer.parameters()])
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


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


@pytest.mark.parametrize("kw,dense", [
    (dict(mlp_only_layers=[0], norm_topk_prob=True), (0,)),
    (dict(decoder_sparse_step=2, norm_topk_prob=False), (0, 2)),  # experts in layers 1 and 3
])
def test_qwen3_moe_loads_with_logit_parity_and_exports_back(tmp_path, kw, dense):
    hf = qwen3_moe(tmp_path / "hf", **kw)
    c = check_both_ways(hf, tmp_path / "hf", "qwen3_moe", tmp_path).config
    assert (c.n_expert, c.expert_top_k, c.expert_hidden, c.mlp_hidden, c.qk_norm) == (6, 2, 24, 48, True)
    assert c.moe_dense_layers == dense and c.moe_renorm == kw["norm_topk_prob"]


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
